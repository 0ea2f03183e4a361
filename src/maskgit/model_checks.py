"""Model configs checked when made (``VQGANConfig``, ``TransformerConfig``, ``FeatureNetConfig``): every size an
integer within range, so a ``config.json`` saying ``channels: -5`` or ``heads: 0`` is one line naming the field
instead of a traceback from deep inside a layer. (Whether a config describes its weights file is checked against
the safetensors header in ``storage.checkpoint.load_model``.)"""

from __future__ import annotations

import math
import numbers
from typing import Any

from maskgit.errors import MaskGITError

MAX_SIZE = 2 ** 31 - 1  # above any width, depth or count a model on one machine could hold


def check_fields(cfg: Any, **lows: float) -> None:
    """Each named field an integer (or, where its low bound is a float, a finite number) in [low, MAX_SIZE]."""
    for name, lo in lows.items():
        v = getattr(cfg, name)
        integer = isinstance(lo, int)
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or not lo <= v <= MAX_SIZE:
            want = "an integer" if integer else "a finite number"
            raise MaskGITError(f"{type(cfg).__name__}.{name} must be {want} in [{lo}, {MAX_SIZE}], got {v!r}")


def check_model_config(cfg: Any) -> None:
    name = type(cfg).__name__
    if name == "VQGANConfig":
        check_fields(cfg, channels=1, filters=1, num_res_blocks=0, embedding_dim=1, codebook_size=1, num_groups=1,
                     image_size=1, commitment_cost=0.0, entropy_loss_weight=0.0)
        mult = cfg.channel_mult
        if not 1 <= len(mult) <= 12 or not all(isinstance(m, int) and 1 <= m <= 64 for m in mult):
            raise MaskGITError(f"VQGANConfig.channel_mult must be 1 to 12 integers in [1, 64], got {list(mult)}")
        if any(cfg.filters * m % cfg.num_groups for m in mult):
            raise MaskGITError(f"VQGANConfig.num_groups ({cfg.num_groups}) must divide every level's width "
                               f"(filters {cfg.filters} x channel_mult {list(mult)})")
    elif name == "TransformerConfig":
        check_fields(cfg, codebook_size=1, num_classes=0, grid_size=1, width=1, depth=1, heads=1, mlp_dim=1,
                     text_dim=0, text_len=0, dropout=0.0)
        if cfg.width % cfg.heads:
            raise MaskGITError(f"TransformerConfig.heads ({cfg.heads}) must divide width ({cfg.width})")
        if not cfg.dropout < 1:
            raise MaskGITError(f"TransformerConfig.dropout must be in [0, 1), got {cfg.dropout}")
        if cfg.arch not in ("maskgit", "ar"):
            raise MaskGITError(f"TransformerConfig.arch must be 'maskgit' or 'ar', not {cfg.arch!r}")
        if cfg.text_mode not in ("cross", "prefix"):
            raise MaskGITError(f"text_mode must be 'cross' or 'prefix', not {cfg.text_mode!r}")
    elif name == "FeatureNetConfig":
        check_fields(cfg, channels=1, image_size=8, num_classes=1, width=1, feature_dim=1)
