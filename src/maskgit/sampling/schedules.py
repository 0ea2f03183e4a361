"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1].

gamma(0) ~ 1 (everything masked), gamma(1) ~ 0; each is clipped to [1e-6, 1]. ``log`` and ``exp`` depend on
the sequence length N (MaskGIT paper, Table 3)."""

from __future__ import annotations

import math
from collections.abc import Callable

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
