"""Gradient checkpointing as a training flag (``--grad-checkpointing``): each block's activations are recomputed in
the backward pass instead of kept, trading ~30% more compute for the memory of all but one block's activations.

Models with a ``gradient_checkpointing`` switch of their own (aMUSEd's U-ViT) get it turned on; any other model
with a ``blocks`` list (the project's transformers) has each block's class swapped for a subclass whose forward
runs under ``torch.utils.checkpoint`` whenever gradients are recorded. The parameter names, the state dict and
``copy.deepcopy`` are unchanged, and the RNG state is replayed, so dropout draws the same masks: the loss and the
gradients are those of the plain model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from maskgit.errors import MaskGITError

_SUBCLASSES: dict[type, type] = {}


def _checkpointed(cls: type) -> type:
    if cls not in _SUBCLASSES:
        def forward(self, *args, **kwargs):
            run = super(sub, self).forward
            if torch.is_grad_enabled():  # (the memory probe records in eval mode: it sees the saving too)
                return checkpoint(run, *args, use_reentrant=False, **kwargs)
            return run(*args, **kwargs)
        sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": cls.__module__})
        _SUBCLASSES[cls] = sub
    return _SUBCLASSES[cls]


def enable_grad_checkpointing(model: nn.Module) -> str:
    """Turn on gradient checkpointing for ``model`` (or the module it wraps as ``.uvit``); returns what was done."""
    for m in (model, getattr(model, "uvit", None)):
        if m is not None and isinstance(getattr(m, "gradient_checkpointing", None), bool):
            m.gradient_checkpointing = True
            return f"gradient checkpointing: {type(m).__name__}'s own switch"
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or not len(blocks):
        raise MaskGITError(f"--grad-checkpointing: a {type(model).__name__} has no blocks to checkpoint")
    for blk in blocks:
        if type(blk) not in _SUBCLASSES.values():
            blk.__class__ = _checkpointed(type(blk))
    return f"gradient checkpointing: each of the {len(blocks)} blocks recomputed in backward"
