"""MaskGIT decoding in numpy: the semantics of ``maskgit.sampling.decoding.decode`` without PyTorch.

Same mask schedule (official float32 arithmetic), same Gumbel-max token sampling (temperature, top-k, top-p), same
Gumbel choice noise on the model's confidence, the same fixed orders (Halton, random), same guidance. The uniform
noise comes from numpy generators (``seeded``) or from any object with ``uniform(shape) -> float32 array`` (a test
can feed PyTorch's draws, which then gives the same tokens as the PyTorch decoder). Nothing here imports torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.arithmetic import (
    F32,
    check_order,
    check_sample_config,
    check_schedule,
    choice_noise_scale,
    guidance_scale,
    halton_priority,
    mask_counts,
)
from maskgit.step_plan import cache_pattern, guided_step


class Noise:
    """Uniform [0, 1) float32 noise: one numpy generator for the batch, or one per row (each row then draws what
    it draws decoded alone with its seed)."""

    def __init__(self, seed: int | list[int] | None = 0):
        self.per_row = isinstance(seed, (list, tuple))
        seeds = list(seed) if self.per_row else [0 if seed is None else seed]
        if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
            raise MaskGITError(f"seeds must be integers, got {seed!r}")
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        if not self.per_row:
            return self.rngs[0].random(shape, dtype=F32)
        if shape[0] != len(self.rngs):
            raise MaskGITError(f"noise for {shape[0]} rows requested from {len(self.rngs)} per-row seeds")
        return np.concatenate([g.random((1, *shape[1:]), dtype=F32) for g in self.rngs])


def check_config(cfg: SampleConfig) -> SampleConfig:
    check_sample_config(cfg)
    if cfg.candidates != 1:
        raise MaskGITError("the ONNX runtime decodes one candidate per image (candidates=1)")
    if cfg.sampler != "maskgit":
        raise MaskGITError(f"the ONNX runtime decodes with the maskgit sampler, not {cfg.sampler!r}")
    if cache_pattern(cfg.cache):
        raise MaskGITError(f"cached decoding is not in the runtime (cache={cfg.cache!r}): use cache='off'")
    return dataclasses.replace(cfg, schedule=check_schedule(cfg.schedule))


def gumbel(shape, noise) -> np.ndarray:
    u = np.clip(noise.uniform(shape).astype(F32, copy=False), F32(1e-20), F32(1.0 - 1e-7))
    return -np.log(-np.log(u))


def filter_logits(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Logits outside the top-k / nucleus top-p set -> -inf."""
    K = logits.shape[-1]
    if top_k and top_k < K:
        kth = np.partition(logits, K - top_k, axis=-1)[..., K - top_k:K - top_k + 1]
        logits = np.where(logits < kth, F32(-np.inf), logits)
    if top_p < 1.0:
        idx = np.argsort(-logits, axis=-1, kind="stable")
        s = np.take_along_axis(logits, idx, -1)
        p = softmax(s)
        drop = np.cumsum(p, -1) - p > top_p  # keep the smallest set reaching top_p
        s = np.where(drop, F32(-np.inf), s)
        out = np.empty_like(logits)
        np.put_along_axis(out, idx, s, -1)
        logits = out
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def sample_tokens(logits: np.ndarray, cfg: SampleConfig, noise) -> np.ndarray:
    """One code per position from softmax(logits / temperature) by Gumbel-max; temperature 0 = argmax."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    z = filter_logits(logits / F32(cfg.temperature), cfg.top_k, cfg.top_p)
    return (gumbel(z.shape, noise) + z).argmax(-1)


LogitsFn = Callable[[np.ndarray, bool], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def decode(logits_fn: LogitsFn, tokens: np.ndarray, config: SampleConfig, mask_id: int, noise=None,
           callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """Fill every ``mask_id`` in ``tokens`` (B,N) int64; known tokens never change. ``logits_fn(tokens, guided)``
    returns logits (B,N,K), or with guidance the pair (conditional, unconditional). ``noise``: a ``Noise``
    (default seed 0) or any object with ``uniform(shape)``."""
    cfg = check_config(config)
    cur = np.array(tokens, dtype=np.int64)
    if cur.ndim != 2:
        raise MaskGITError(f"decode expects tokens (B,N), got shape {cur.shape}")
    noise = Noise(0) if noise is None else noise
    n0 = (cur == mask_id).sum(1)  # (B,)
    B, N = cur.shape
    # a fixed order (halton / random) replaces the confidence ranking, as in sampling.decoding
    fixed = None if check_order(cfg.order) == "confidence" else (
        np.broadcast_to(halton_priority(N), (B, N)) if cfg.order == "halton" else noise.uniform((B, N)))
    for step in range(cfg.start_step, cfg.steps):
        unknown = cur == mask_id
        if not unknown.any():
            break
        guided = guided_step(cfg, step)  # cfg != 0 and t/T in [cfg_start, cfg_end), as sampling.decoding
        out = logits_fn(cur, guided)
        if guided:
            cond, uncond = out
            logits = cond + F32(guidance_scale(cfg, step)) * (cond - uncond)
        else:
            logits = out
        logits = np.asarray(logits, F32)
        sampled = np.where(unknown, sample_tokens(logits, cfg, noise), cur)
        if step == cfg.steps - 1:
            cur = sampled
            if callback:
                callback(step, cur, sampled)
            break
        if fixed is None:  # confidence: the model's own probability of the chosen token
            score = np.take_along_axis(log_softmax(logits), sampled[..., None], -1)[..., 0]  # (B, N)
            if cfg.choice_temperature > 0:
                score = score + F32(choice_noise_scale(cfg, step)) * gumbel(score.shape, noise)
        else:
            score = fixed
        score = np.where(unknown, score, F32(np.inf))
        keep = mask_counts(cfg.schedule, step, cfg.steps, n0, unknown.sum(1))  # (B,)
        rank = np.argsort(np.argsort(score, -1, kind="stable"), -1, kind="stable")  # 0 = least confident
        cur = np.where(rank < keep[:, None], mask_id, sampled)
        if callback:
            callback(step, cur, sampled)
    return cur
