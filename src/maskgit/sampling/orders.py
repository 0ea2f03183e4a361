"""The order in which decoding reveals tokens: by the model's confidence (MaskGIT), along a fixed 2D Halton
low-discrepancy sequence over the grid (Besnier et al. 2025, "Halton Scheduler for Masked Generative Image
Transformer", arXiv 2503.17076), or in a random order drawn once per image (a control). The schedule decides how
many tokens each step reveals; the order decides which."""

from __future__ import annotations

import functools
import math

import torch

from maskgit.errors import MaskGITError

ORDERS = ("confidence", "halton", "random")


def check_order(name: str) -> str:
    if name not in ORDERS:
        raise MaskGITError(f"unknown decoding order {name!r}; choose one of: {', '.join(ORDERS)}")
    return name


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


def priority(order: str, shape: tuple[int, int], rand, device) -> torch.Tensor | None:
    """Per-position priority (B, N) for the fixed orders (higher = revealed earlier), or None for ``confidence``
    (the decoder ranks by the model's confidence instead). ``rand(shape)``: the decode's uniform noise source."""
    B, N = shape
    if check_order(order) == "confidence":
        return None
    if order == "halton":
        rank = torch.empty(N, dtype=torch.float32)
        rank[list(halton_order(*grid_of(N)))] = torch.arange(N, dtype=torch.float32)
        return (-rank).to(device)[None].expand(B, N)
    return rand((B, N))  # random: one fixed random order per image
