"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1], for training's masks.

gamma(0) ~ 1 (everything masked), gamma(1) ~ 0; each is clipped to [1e-6, 1]. ``log`` and ``exp`` depend on
the sequence length N (MaskGIT paper, Table 3). Decoding counts its masks with ``arithmetic.decode_mask_ratio``
instead (float32, as the official decoder, with each sample's own N0 for log/exp); ``gamma`` stays float64 on
torch because training's masks and img2img's masked fraction are drawn with it: the float32 ratio would move
``ceil(gamma * N)`` at boundaries and so change trained models and edits."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from maskgit.sampling.arithmetic import (  # noqa: F401  (check_schedule, decode_mask_ratio: used here and re-exported)
    ALIASES,
    SCHEDULE_NAMES,
    check_schedule,
    decode_mask_ratio,
)


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
assert tuple(SCHEDULES) == SCHEDULE_NAMES  # one list of names for both decoders


def gamma(name: str, r, n: int = 256) -> torch.Tensor:
    """gamma_name(r) for r a float or tensor in [0, 1]; ``n`` is the number of tokens (log/exp schedules)."""
    fn = SCHEDULES[check_schedule(name)]
    r = torch.as_tensor(r, dtype=torch.float64)
    return fn(r, max(n, 2)).clamp(1e-6, 1.0)

