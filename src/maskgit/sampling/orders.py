"""The order in which decoding reveals tokens: by the model's confidence (MaskGIT), along a fixed 2D Halton
low-discrepancy sequence over the grid (Besnier et al. 2025, "Halton Scheduler for Masked Generative Image
Transformer", arXiv 2503.17076), or in a random order drawn once per image (a control). The schedule decides how
many tokens each step reveals; the order decides which."""

from __future__ import annotations

import torch

from maskgit.sampling.arithmetic import (  # noqa: F401  (re-exported: the orders' public names)
    ORDERS,
    check_order,
    grid_of,
    halton_order,
    halton_priority,
    radical_inverse,
)


def priority(order: str, shape: tuple[int, int], rand, device) -> torch.Tensor | None:
    """Per-position priority (B, N) for the fixed orders (higher = revealed earlier), or None for ``confidence``
    (the decoder ranks by the model's confidence instead). ``rand(shape)``: the decode's uniform noise source."""
    B, N = shape
    if check_order(order) == "confidence":
        return None
    if order == "halton":
        return torch.from_numpy(halton_priority(N)).to(device)[None].expand(B, N)
    return rand((B, N))  # random: one fixed random order per image
