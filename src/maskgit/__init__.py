"""MaskGIT in PyTorch: VQGAN tokenizer, bidirectional transformer, iterative parallel decoding and editing."""

from .config import SampleConfig, TrainConfig, TransformerConfig, VQGANConfig
from .errors import MaskGITError
from .pipeline import Pipeline, load
from .sampling import decode

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
