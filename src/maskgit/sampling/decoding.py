"""MaskGIT iterative parallel decoding, the one decode loop behind generation and every edit.

``decode`` never sees a model: it receives ``logits_fn(tokens (B,N), guided: bool)`` which returns logits
(B,N,K), or when ``guided`` a pair (conditional, unconditional) computed in one batched forward."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling import amused
from maskgit.sampling.arithmetic import check_sample_config, choice_noise_scale, guidance_scale  # noqa: F401
from maskgit.sampling.cache import CachedSteps
from maskgit.sampling.noise import NoiseSource, gumbel, uniform
from maskgit.sampling.orders import priority
from maskgit.sampling.schedules import decode_mask_counts
from maskgit.step_plan import cache_pattern, guided_step

LogitsFn = Callable[[torch.Tensor, bool], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, idx, sorted_logits)
    return logits


def sample_tokens(logits: torch.Tensor, cfg: SampleConfig, generator) -> torch.Tensor:
    """Draw one code per position from softmax(logits / temperature) (Gumbel-max); temperature 0 = argmax."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    z = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    return gumbel(z.shape, generator, z.device).add_(z).argmax(-1)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as MaskGIT/Muse write it: ``cond + s * (cond - uncond)``. (diffusers writes
    ``uncond + w * (cond - uncond)``: the same thing with w = 1 + s, so scale 0 here is plain conditional
    sampling.)"""
    return cond + scale * (cond - uncond)


def mask_counts(n0: torch.Tensor, unknown: torch.Tensor, cfg: SampleConfig, step: int) -> torch.Tensor:
    """How many tokens stay masked after ``step``: floor(N0 * gamma((t+1)/T)) in the official float32
    arithmetic, clamped to [1, unknown - 1] (see schedules.decode_mask_counts)."""
    return decode_mask_counts(cfg.schedule, step, cfg.steps, n0, unknown)


@torch.inference_mode()
def decode(logits_fn: LogitsFn, tokens: torch.Tensor, config: SampleConfig, mask_id: int,
           generator: NoiseSource = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Fill every ``mask_id`` in ``tokens`` (B,N) by MaskGIT decoding; known tokens never change.

    Per sample, N0 = the number of masked tokens at the start, so generation (all masked) and editing (some
    masked) are the same call. ``callback(step, tokens_after_step, sampled)`` sees every intermediate grid.
    ``generator``: one torch.Generator for the batch, or RowGenerators (one per block of rows). Guidance runs on the
    steps ``step_plan.guided_step`` names (``cfg_start`` / ``cfg_end``); with ``config.cache`` on, ``logits_fn`` is
    also called as ``logits_fn(tokens, guided, cache=store[, positions=(B,P)])`` (see sampling/cache.py)."""
    check_sample_config(config)
    if tokens.ndim != 2:
        raise MaskGITError(f"decode expects tokens (B,N), got {tuple(tokens.shape)}")
    cur = tokens.clone()
    B, N = cur.shape
    n0 = (cur == mask_id).sum(1)  # (B,)
    reference = config.sampler == "amused"  # the aMUSEd scheduler's arithmetic (sampling/amused.py)
    if reference:
        temps = amused.noise_temperatures(config).to(cur.device)
        start_ratio = (n0.float() / N)[:, None] if config.start_step == 0 else torch.ones(B, 1, device=cur.device)
    # a fixed order (halton / random) replaces the confidence ranking; None = rank by confidence
    fixed = priority(config.order, (B, N), lambda shape: uniform(shape, generator, cur.device), cur.device)
    cached = CachedSteps(config, n0) if cache_pattern(config.cache) else None
    for step in range(config.start_step, config.steps):
        unknown_map = cur == mask_id
        if not unknown_map.any():
            break
        guided = guided_step(config, step)  # cfg != 0 and t/T in [cfg_start, cfg_end)
        out = logits_fn(cur, guided) if cached is None else cached.logits(logits_fn, cur, step, guided)
        if guided:
            logits = (amused.guide if reference else guide)(*out, guidance_scale(config, step))
        else:
            logits = out
        logits = logits.float()
        if reference:
            plain = config.temperature in (0, 1) and not config.top_k and config.top_p == 1
            z = logits if plain else filter_logits(logits / config.temperature, config.top_k, config.top_p)
            sampled, probs = amused.sample(z, config.temperature == 0, generator)
        else:
            sampled = sample_tokens(logits, config, generator)
        sampled = torch.where(unknown_map, sampled, cur)
        if step == config.steps - 1:
            cur = sampled
            if callback:
                callback(step, cur, sampled)
            break
        if reference:
            count = amused.keep_masked(config, step, start_ratio, unknown_map, N)
            cur = amused.remask(sampled, probs, unknown_map, count, temps[step], uniform((B, N), generator, cur.device),
                                mask_id)
            if callback:
                callback(step, cur, sampled)
            continue
        if fixed is None:  # confidence: the model's own probability of the chosen token (unmodified logits)
            score = torch.log_softmax(logits, -1).gather(-1, sampled[..., None])[..., 0]  # (B, N)
            if config.choice_temperature > 0:
                score = score + choice_noise_scale(config, step) * gumbel(score.shape, generator, score.device)
        else:
            score = fixed
        score = torch.where(unknown_map, score, torch.full_like(score, math.inf))  # known tokens stay
        if cached is not None:
            score = cached.restrict(score, unknown_map)
        keep_masked = mask_counts(n0, unknown_map.sum(1), config, step)  # (B,)
        rank = score.argsort(-1).argsort(-1)  # 0 = lowest score: stays masked first
        if cached is not None:
            cached.plan(step, rank, unknown_map)
        remask = rank < keep_masked[:, None]
        cur = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
        if callback:
            callback(step, cur, sampled)
    return cur
