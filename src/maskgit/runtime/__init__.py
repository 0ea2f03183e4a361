"""Run exported MaskGIT models (``maskgit export onnx``) with numpy + onnxruntime: no PyTorch needed
(``pip install ./runtime`` from a clone: the maskgit-suite-runtime distribution). Same decoding semantics as
the PyTorch pipeline; noise from numpy seeds.

    from maskgit import runtime
    pipe = runtime.load("exported/")
    images = pipe.generate([0, 3, 7], steps=8, seed=0)     # uint8 (B, H, W, C)
"""

from maskgit.runtime.decoding import Noise, decode
from maskgit.runtime.pipeline import OnnxPipeline, load

__all__ = ["Noise", "OnnxPipeline", "decode", "load"]
