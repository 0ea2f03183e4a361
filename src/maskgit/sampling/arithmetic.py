"""The decoder's arithmetic without PyTorch, shared by ``sampling.decoding`` and the numpy runtime: the sample
settings' checks, schedule and order names, the official float32 mask ratio, the choice-noise and guidance scales,
and the 2D Halton order."""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from maskgit.config import (
    ORDER_NAMES,
    SAMPLER_NAMES,
    SCHEDULE_ALIASES,
    SCHEDULE_NAMES,
    SampleConfig,
    check_sample_fields,
)
from maskgit.errors import MaskGITError

F32 = np.float32
SCHEDULE_NAMES = SCHEDULE_NAMES  # one list of names, defined beside the SampleConfig that checks them
ALIASES = SCHEDULE_ALIASES
ORDERS = ORDER_NAMES
SAMPLERS = SAMPLER_NAMES


def check_schedule(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCHEDULE_NAMES:
        raise MaskGITError(f"unknown mask schedule {name!r}; choose one of: {', '.join(SCHEDULE_NAMES)}")
    return name


def check_order(name: str) -> str:
    if name not in ORDERS:
        raise MaskGITError(f"unknown decoding order {name!r}; choose one of: {', '.join(ORDERS)}")
    return name


def check_sample_config(cfg: SampleConfig) -> None:
    """The config's own check (``SampleConfig.__post_init__``), again for a config built around it."""
    check_sample_fields(cfg)


def _f32(fn, x):
    """A float32 elementary function, correctly rounded: evaluated in float64 on the float32 input and rounded once
    (a float32 kernel may be an ulp off, which moves floor() at the boundaries)."""
    return np.asarray(fn(np.asarray(x, np.float64))).astype(F32)


def decode_mask_ratio(name: str, step: int, steps: int, n0) -> np.ndarray:
    """The fraction of the N0 initially unknown tokens that stays masked after ``step`` (0-based) of ``steps``,
    computed like the official JAX decoder: ``ratio = (step+1)/steps`` and every operation in float32 (IEEE
    arithmetic, correctly rounded elementary functions), the log/exp schedules on each sample's own N0
    (``total_unknown``), clipped to [1e-6, 1]. n0: (B,) ints -> (B,) float32."""
    name = check_schedule(name)
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
    g = np.nan_to_num(np.broadcast_to(g, n0f.shape).astype(F32), nan=1.0)  # log/exp, N0 <= 1: no division by 0
    return np.clip(g, F32(1e-6), one)


def mask_counts(name: str, step: int, steps: int, n0: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """How many tokens stay masked after ``step``: floor(N0 * ratio) of a float32 product, then at least one token
    revealed and one left masked, as the official decoder does (0 where nothing is unknown). n0, unknown: (B,)."""
    n0 = np.asarray(n0)
    keep = np.floor(n0.astype(F32) * decode_mask_ratio(name, step, steps, n0)).astype(np.int64)
    keep = np.maximum(np.minimum(keep, np.asarray(unknown) - 1), 1)
    return np.where(np.asarray(unknown) > 0, keep, 0)


def choice_noise_scale(cfg: SampleConfig, step: int) -> float:
    """choice_temperature * (1 - (t+1)/T), in float32 as the official decoder computes it."""
    ratio = F32(step + 1) / F32(cfg.steps)
    return float(F32(cfg.choice_temperature) * (F32(1) - ratio))


def guidance_scale(cfg: SampleConfig, step: int, total: int | None = None) -> float:
    """The CFG scale at ``step`` of ``total`` steps (default: the decode's T): constant, or growing linearly."""
    if cfg.cfg_schedule == "linear":
        return cfg.cfg * (step + 1) / (total or cfg.steps)
    return cfg.cfg


def radical_inverse(i: int, base: int) -> float:
    """The i-th element of the van der Corput sequence in ``base``: i's digits mirrored behind the point."""
    out, scale = 0.0, 1.0 / base
    while i:
        i, digit = divmod(i, base)
        out += digit * scale
        scale /= base
    return out


@functools.lru_cache(maxsize=32)
def halton_order(height: int, width: int) -> tuple[int, ...]:
    """Every cell of a height x width grid once, as row-major indices, in the order the 2D Halton sequence (base 2
    across the columns, base 3 down the rows) first lands in it. Successive prefixes spread evenly over the grid."""
    n = height * width
    seen: dict[int, None] = {}
    i = 0
    limit = 1000 * n + 1000  # the sequence is dense, so it reaches every cell long before this
    while len(seen) < n and i < limit:
        col = min(int(radical_inverse(i, 2) * width), width - 1)
        row = min(int(radical_inverse(i, 3) * height), height - 1)
        seen.setdefault(row * width + col, None)
        i += 1
    order = list(seen) + [c for c in range(n) if c not in seen]  # defensive; never needed in practice
    return tuple(order)


def grid_of(n: int) -> tuple[int, int]:
    """A square token grid of ``n`` positions (the Halton order is defined over the 2D grid)."""
    side = math.isqrt(n)
    if side * side != n:
        raise MaskGITError(f"the halton order needs a square token grid; got {n} positions")
    return side, side


def halton_priority(n: int) -> np.ndarray:
    """(n,) float32 priority of each position under the Halton order: higher = revealed earlier."""
    rank = np.empty(n, dtype=F32)
    rank[list(halton_order(*grid_of(n)))] = np.arange(n, dtype=F32)
    return -rank


# ---------------------------------------------------------------- the rows of a generate call (both pipelines)

def check_count(value, name: str) -> None:
    """None, or an integer >= 1 (not a bool, a float or a string)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise MaskGITError(f"{name} must be an integer >= 1, got {value!r}")


def class_ids(labels) -> list[int]:
    """Class ids as ints, from a list/tuple/range, a numpy or torch array, or one id; "3", 3.0 and True are
    refused rather than converted (-1 = no class)."""
    items = labels.tolist() if hasattr(labels, "tolist") else labels
    items = list(items) if isinstance(items, (list, tuple, range)) else [items]
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise MaskGITError(f"class labels must be integer class ids, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [int(v) for v in items]


def batch_rows(labels=None, num=None, prompts=None, negative_prompts=None):
    """(class ids, prompts, negative prompts) with one entry per image. ``num`` alone: that many images without
    a class; with ``labels`` or ``prompts``: ``num`` images of each, label-major (0,0,1,1,...) as the CLI's --num.
    ``negative_prompts``: one string for all, or one per prompt."""
    check_count(num, "num")
    if prompts is not None:
        if labels is not None:
            raise MaskGITError("give class labels or prompts, not both")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise MaskGITError("prompts must be a non-empty list of strings")
        if negative_prompts is not None and not isinstance(negative_prompts, str):
            if len(negative_prompts) != len(prompts):
                raise MaskGITError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts: give "
                                   "one, or one per prompt")
            negative_prompts = [p for p in negative_prompts for _ in range(num or 1)]
        prompts = [p for p in prompts for _ in range(num or 1)]
        return [-1] * len(prompts), prompts, negative_prompts
    if negative_prompts is not None:
        raise MaskGITError("negative prompts need prompts")
    if labels is None:
        if num is None:
            raise MaskGITError("give class labels or a number of samples >= 1")
        return [-1] * num, None, None
    return [v for v in class_ids(labels) for _ in range(num or 1)], None, None
