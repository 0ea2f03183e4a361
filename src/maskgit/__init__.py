"""MaskGIT in PyTorch: VQGAN tokenizer, bidirectional transformer, iterative parallel decoding and editing.

The public names are imported on first access (PEP 562), so ``import maskgit.runtime`` (numpy + onnxruntime)
works where PyTorch is not installed, and ``import maskgit`` itself has no side effects."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
           "MaskGITError",
           "Pipeline",
           "SampleConfig",
           "TrainConfig",
           "TransformerConfig",
           "VQGANConfig",
           "decode",
           "load",
]
__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "MaskGITError": "maskgit.errors",
    "Pipeline": "maskgit.pipeline",
    "SampleConfig": "maskgit.config",
    "TrainConfig": "maskgit.config",
    "TransformerConfig": "maskgit.config",
    "VQGANConfig": "maskgit.config",
    "decode": "maskgit.sampling.decoding",
    "load": "maskgit.pipeline",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from maskgit.config import SampleConfig, TrainConfig, TransformerConfig, VQGANConfig
    from maskgit.errors import MaskGITError
    from maskgit.pipeline import Pipeline, load
    from maskgit.sampling.decoding import decode


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'maskgit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
