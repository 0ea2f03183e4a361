"""MaskGIT in PyTorch: VQGAN tokenizer, bidirectional transformer, iterative parallel decoding and editing."""

from maskgit.config import SampleConfig, TrainConfig, TransformerConfig, VQGANConfig
from maskgit.errors import MaskGITError
from maskgit.pipeline import Pipeline, load
from maskgit.sampling.decoding import decode

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
