"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1].

gamma(0) ~ 1 (everything masked), gamma(1) ~ 0; each is clipped to [1e-6, 1]. ``log`` and ``exp`` depend on
the sequence length N (MaskGIT paper, Table 3)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from maskgit.errors import MaskGITError


def _cosine(r, n):
    return torch.cos(r * math.pi / 2)


def _linear(r, n):
    return 1 - r


def _square(r, n):
    return 1 - r ** 2


def _cubic(r, n):
    return 1 - r ** 3


def _sqrt(r, n):
    return 1 - r.clamp_min(0) ** 0.5


def _log(r, n):
    return -torch.log2(r.clamp_min(1e-12)) / math.log2(n)


def _exp(r, n):
    return 1 - torch.exp2(-math.log2(n) * (1 - r))


SCHEDULES: dict[str, Callable] = {
    "cosine": _cosine, "linear": _linear, "square": _square, "cubic": _cubic, "sqrt": _sqrt,
    "log": _log, "exp": _exp,
}
ALIASES = {"square-root": "sqrt", "square_root": "sqrt", "pow2": "square", "pow3": "cubic"}


def check_schedule(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCHEDULES:
        raise MaskGITError(f"unknown mask schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return name


def gamma(name: str, r, n: int = 256) -> torch.Tensor:
    """gamma_name(r) for r a float or tensor in [0, 1]; ``n`` is the number of tokens (log/exp schedules)."""
    fn = SCHEDULES[check_schedule(name)]
    r = torch.as_tensor(r, dtype=torch.float64)
    return fn(r, max(n, 2)).clamp(1e-6, 1.0)


# ---------------------------------------------------------------- decoding: the official float32 arithmetic
_F32 = np.float32


def _f32(fn, x):
    """A float32 elementary function, correctly rounded: evaluated in float64 on the float32 input and rounded once
    (a float32 kernel may be an ulp off, which moves floor() at the boundaries)."""
    return fn(np.asarray(x, np.float64)).astype(_F32)


def decode_mask_ratio(name: str, step: int, steps: int, n0) -> np.ndarray:
    """The fraction of the N0 initially unknown tokens that stays masked after ``step`` (0-based) of ``steps``,
    computed like the official JAX decoder: ``ratio = (step+1)/steps`` and every operation in float32 (IEEE
    arithmetic, correctly rounded elementary functions), the log/exp schedules on each sample's own N0
    (``total_unknown``), clipped to [1e-6, 1]. n0: (B,) ints -> (B,) float32."""
    name = check_schedule(name)
    ratio = _F32(step + 1) / _F32(steps)
    n0f = np.asarray(n0, dtype=_F32)
    one = _F32(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "cosine":
            g = _f32(np.cos, _F32(math.pi / 2) * ratio)
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
    g = np.nan_to_num(np.broadcast_to(g, n0f.shape).astype(_F32), nan=1.0)  # log/exp, N0 <= 1: no division by 0
    return np.clip(g, _F32(1e-6), one)


def decode_mask_counts(name: str, step: int, steps: int, n0: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """How many tokens stay masked after ``step``: floor(N0 * ratio) of a float32 product, then at least one token
    revealed and one left masked, as the official decoder does (0 where nothing is unknown). n0, unknown: (B,)."""
    n0_np = n0.cpu().numpy()
    keep = np.floor(n0_np.astype(_F32) * decode_mask_ratio(name, step, steps, n0_np)).astype(np.int64)
    keep = torch.from_numpy(keep).to(unknown.device)
    keep = torch.minimum(keep, unknown - 1).clamp_min(1)
    return torch.where(unknown > 0, keep, torch.zeros_like(keep))
