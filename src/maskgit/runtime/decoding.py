"""MaskGIT decoding in numpy: the semantics of ``maskgit.sampling.decoding.decode`` without PyTorch.

Same mask schedule (official float32 arithmetic), same Gumbel-max token sampling (temperature, top-k, top-p),
same Gumbel choice noise on the model's confidence, same guidance. The uniform noise comes from numpy generators
(``seeded``) or from any object with ``uniform(shape) -> float32 array`` (a test can feed PyTorch's draws, which
then gives the same tokens as the PyTorch decoder). Nothing here imports torch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError

F32 = np.float32
SCHEDULES = ("cosine", "linear", "square", "cubic", "sqrt", "log", "exp")
ALIASES = {"square-root": "sqrt", "square_root": "sqrt", "pow2": "square", "pow3": "cubic"}


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
    if cfg.steps < 1:
        raise MaskGITError(f"steps must be >= 1, got {cfg.steps}")
    if not 0 <= cfg.start_step < cfg.steps:
        raise MaskGITError(f"start_step must lie in [0, steps), got {cfg.start_step} with steps={cfg.steps}")
    if cfg.temperature < 0 or cfg.choice_temperature < 0:
        raise MaskGITError("temperature and choice_temperature must be >= 0")
    if cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise MaskGITError(f"top_k must be >= 0 and top_p in (0, 1]; got {cfg.top_k}, {cfg.top_p}")
    if cfg.cfg_schedule not in ("constant", "linear"):
        raise MaskGITError(f"cfg_schedule must be 'constant' or 'linear', got {cfg.cfg_schedule!r}")
    name = ALIASES.get(cfg.schedule, cfg.schedule)
    if name not in SCHEDULES:
        raise MaskGITError(f"unknown mask schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if getattr(cfg, "order", "confidence") != "confidence" or getattr(cfg, "candidates", 1) != 1:
        raise MaskGITError("the ONNX runtime decodes in confidence order with one candidate per image")
    return dataclasses.replace(cfg, schedule=name)


def _f32(fn, x) -> np.ndarray:
    """A float32 elementary function, correctly rounded (float64 evaluation, one rounding)."""
    return np.asarray(fn(np.asarray(x, np.float64))).astype(F32)


def mask_ratio(name: str, step: int, steps: int, n0: np.ndarray) -> np.ndarray:
    """gamma((step+1)/steps) in float32, the log/exp schedules on each sample's N0, clipped to [1e-6, 1]."""
    ratio = F32(step + 1) / F32(steps)
    n0f = np.asarray(n0, dtype=F32)
    one = F32(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "cosine":
            g = _f32(np.cos, F32(math.pi / 2) * ratio)
        elif name == "linear":
            g = one - ratio
        elif name == "square":
            g = one - ratio * ratio
        elif name == "cubic":
            g = one - _f32(lambda r: r ** 3, ratio)
        elif name == "sqrt":
            g = one - _f32(np.sqrt, ratio)
        elif name == "log":
            g = -_f32(np.log2, ratio) / _f32(np.log2, n0f)
        else:  # exp
            g = one - _f32(np.exp2, -_f32(np.log2, n0f) * (one - ratio))
    g = np.nan_to_num(np.broadcast_to(g, n0f.shape).astype(F32), nan=1.0)
    return np.clip(g, F32(1e-6), one)


def mask_counts(cfg: SampleConfig, step: int, n0: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Tokens still masked after ``step``: floor(N0 * gamma), at least one revealed and one kept (0 if none)."""
    keep = np.floor(np.asarray(n0).astype(F32) * mask_ratio(cfg.schedule, step, cfg.steps, n0)).astype(np.int64)
    keep = np.maximum(np.minimum(keep, unknown - 1), 1)
    return np.where(unknown > 0, keep, 0)


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


def guidance_scale(cfg: SampleConfig, step: int) -> float:
    return cfg.cfg * (step + 1) / cfg.steps if cfg.cfg_schedule == "linear" else cfg.cfg


def choice_noise_scale(cfg: SampleConfig, step: int) -> float:
    ratio = F32(step + 1) / F32(cfg.steps)
    return float(F32(cfg.choice_temperature) * (F32(1) - ratio))


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
    guided = cfg.cfg != 0
    for step in range(cfg.start_step, cfg.steps):
        unknown = cur == mask_id
        if not unknown.any():
            break
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
        score = np.take_along_axis(log_softmax(logits), sampled[..., None], -1)[..., 0]  # (B, N)
        if cfg.choice_temperature > 0:
            score = score + F32(choice_noise_scale(cfg, step)) * gumbel(score.shape, noise)
        score = np.where(unknown, score, F32(np.inf))
        keep = mask_counts(cfg, step, n0, unknown.sum(1))  # (B,)
        rank = np.argsort(np.argsort(score, -1, kind="stable"), -1, kind="stable")  # 0 = least confident
        cur = np.where(rank < keep[:, None], mask_id, sampled)
        if callback:
            callback(step, cur, sampled)
    return cur
