"""The order in which decoding reveals tokens: by the model's confidence (MaskGIT), along a fixed 2D Halton
low-discrepancy sequence over the grid (Besnier et al. 2025, "Halton Scheduler for Masked Generative Image
Transformer", arXiv 2503.17076), or in a random order drawn once per image (a control). The schedule decides how
many tokens each step reveals; the order decides which (``arithmetic.fixed_priority`` ranks the positions)."""

from __future__ import annotations

from maskgit.sampling.arithmetic import (  # noqa: F401  (re-exported: the orders' public names)
    ORDERS,
    check_order,
    grid_of,
    halton_order,
    halton_priority,
    radical_inverse,
)
