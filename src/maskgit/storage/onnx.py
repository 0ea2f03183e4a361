"""ONNX export: a pipeline's transformer step, VQGAN decoder and encoder as three graphs plus a model card, so that
``maskgit.runtime`` (numpy + onnxruntime) can generate and edit without PyTorch.

Graphs (batch dimension dynamic everywhere):

- ``transformer.onnx``: ``tokens`` int64 (B, N) with mask ids, ``labels`` int64 (B,) (-1 = no class)
  -> ``logits`` float32 (B, N, K). One decoding step; classifier-free guidance runs it on a doubled batch
  (conditional rows, then the same tokens with label -1), as the PyTorch pipeline does. Each block's attention is
  onnxruntime's fused ``com.microsoft.MultiHeadAttention`` op; ``portable=True`` writes standard operators only.
- ``decoder.onnx``: ``tokens`` int64 (B, h, w) -> ``images`` float32 (B, C, H, W) in [0, 1].
- ``encoder.onnx``: ``images`` float32 (B, C, H, W) in [0, 1] -> ``tokens`` int64 (B, h, w) (for editing).
- ``transformer.int8.onnx`` (optional): the transformer with onnxruntime's dynamic int8 quantisation of its
  matmuls (weights int8, activations quantised per call), the ONNX counterpart of ``--precision int8``.

``model_card.json`` records the configs, the sampling defaults, the opset, the graphs' inputs and outputs and the
SHA-256 of every file."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.errors import MaskGITError
from maskgit.inference.kernels import plain_linears, replacing_modules
from maskgit.models.transformer import Attention, MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.storage.files import atomic_write, sha256_file

# opset 20 has a GELU operator (tanh form included): onnxruntime then runs the MLP's bias + GELU as one fused op
# instead of the eight-op decomposition older opsets need
OPSET = 20
CARD = "model_card.json"
CARD_VERSION = 1


class _OrtAttention(torch.autograd.Function):
    """Self-attention of a block as onnxruntime's ``com.microsoft.MultiHeadAttention``: q, k, v (B, L, W) before
    their bias, the (3W,) bias, ``heads`` heads. Traced through ``forward`` (SDPA), exported as the one fused op."""

    @staticmethod
    def forward(ctx, q, k, v, bias, heads):
        B, L, W = q.shape
        q, k, v = q + bias[:W], k + bias[W:2 * W], v + bias[2 * W:]  # (written out: the tracer needs plain ops)

        def heads_first(t):
            return t.view(B, L, heads, W // heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v))
        return y.transpose(1, 2).reshape(B, L, W)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, bias, num_heads_i=heads).setType(q.type())


class _FusedAttention(nn.Module):
    """Stands in for a block's ``Attention`` at export (class-conditional models: no cache, no key mask): the same
    projections around ``_OrtAttention``, so the graph holds one fused attention op per block instead of ~15
    reshapes, transposes and matmuls. Shares the original's projection layers."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv, self.out, self.heads = attn.qkv, attn.out, attn.heads

    def forward(self, x: torch.Tensor, causal: bool = False, cache=None, key_mask=None, step=None) -> torch.Tensor:
        W = x.shape[-1]  # (the export traces full steps only: no cache, no cached-decoding step)
        q, k, v = F.linear(x, self.qkv.weight).split(W, -1)  # the fused projection's (3, heads, d) column layout
        return self.out(_OrtAttention.apply(q, k, v, self.qkv.bias, self.heads))


class TransformerStep(nn.Module):
    """tokens (B,N), labels (B,) -> logits (B,N,K): the transformer's forward without its Python-side checks
    (the runtime validates labels and tokens before calling the graph). ``fused``: attention as onnxruntime's
    fused MultiHeadAttention op (faster there; other runtimes need the standard-op graph, ``fused=False``)."""

    def __init__(self, model: MaskGITTransformer, fused: bool = True):
        super().__init__()
        if fused:  # a copy whose blocks' attention is _FusedAttention (the projections shared, not copied)
            model = replacing_modules(model, lambda m: isinstance(m, Attention), _FusedAttention)
        self.model = model
        c = model.config
        self.codebook_size = c.codebook_size
        self.null_id = c.codebook_size + c.num_classes if c.null_class else c.mask_id

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, self.null_id)
        cond = torch.where(labels >= 0, labels + self.codebook_size, null)  # (B,)
        ids = torch.cat([cond[:, None], tokens], 1)  # (B, 1+N)
        x = self.model.run_blocks(self.model.embed(ids))[:, 1:]  # (B, N, W)
        return self.model.head(x)  # (B, N, K)


class DecoderGraph(nn.Module):
    """tokens (B,h,w) -> images (B,C,H,W) in [0,1]."""

    def __init__(self, vqgan: VQGAN):
        super().__init__()
        self.codebook = vqgan.quantizer.codebook
        # the upsampling convs in their sub-pixel form (vqgan.upsample_conv), phases interleaved by a reshape
        self.decoder = copy.deepcopy(vqgan.decoder)
        self.decoder.subpixel = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.codebook[tokens].permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(z).clamp(0, 1)


class EncoderGraph(nn.Module):
    """images (B,C,H,W) in [0,1] -> tokens (B,h,w): nearest codebook entry by squared L2."""

    def __init__(self, vqgan: VQGAN):
        super().__init__()
        self.encoder = vqgan.encoder
        self.codebook = vqgan.quantizer.codebook

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images)
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(B, h * w, D)  # (B, h*w, D)
        d = (flat * flat).sum(-1, keepdim=True) - 2 * flat @ self.codebook.t() + (self.codebook ** 2).sum(1)
        return d.argmin(-1).reshape(B, h, w)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], custom_opsets: dict[str, int] | None = None) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise MaskGITError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
                          custom_opsets=custom_opsets)


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantisation: int8 weights for MatMul/Gemm, activations quantised at run time."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MaskGITError("int8 export needs onnxruntime: pip install onnxruntime") from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a pre-processing hint on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def export_pipeline(pipe, out: str | Path, encoder: bool = True, int8: bool = False, portable: bool = False) -> dict:
    """Write the graphs and ``model_card.json`` of a loaded ``Pipeline`` (fp32, CPU) to ``out``; returns the card.
    ``portable``: standard ONNX operators only (attention unfused), for runtimes other than onnxruntime."""
    tr, tok = plain_linears(pipe.transformer), pipe.tokenizer
    c = tr.config
    if c.text_dim:
        raise MaskGITError("ONNX export supports class-conditional and unconditional models; this one is "
                           "text-conditioned (its text encoder is not exported yet)")
    if not isinstance(tr, MaskGITTransformer) or pipe.precision != "fp32":
        raise MaskGITError("export a plain fp32 pipeline (load it without --precision or --compile)")
    out = Path(out)
    tr, tok = tr.float().cpu().eval(), tok.float().cpu().eval()
    h, w = pipe.grid
    size = h * tok.config.downsample
    B = 2
    tokens = torch.full((B, h * w), c.mask_id, dtype=torch.long)
    tokens[:, ::3] = 1
    labels = torch.tensor([0 if c.num_classes else -1, -1][:B])
    files = {"transformer": "transformer.onnx", "decoder": "decoder.onnx"}
    _export(TransformerStep(tr, fused=not portable), (tokens, labels), out / files["transformer"],
            ["tokens", "labels"], ["logits"], {"tokens": {0: "batch"}, "labels": {0: "batch"}, "logits": {0: "batch"}},
            None if portable else {"com.microsoft": 1})
    grid = torch.zeros(B, h, w, dtype=torch.long)
    _export(DecoderGraph(tok), (grid,), out / files["decoder"], ["tokens"], ["images"],
            {"tokens": {0: "batch"}, "images": {0: "batch"}})
    if encoder:
        files["encoder"] = "encoder.onnx"
        _export(EncoderGraph(tok), (torch.rand(B, tok.config.channels, size, size),), out / files["encoder"],
                ["images"], ["tokens"], {"images": {0: "batch"}, "tokens": {0: "batch"}})
    if int8:
        files["transformer_int8"] = "transformer.int8.onnx"
        quantize_int8(out / files["transformer"], out / files["transformer_int8"])
    card = {
        "format": "maskgit-onnx", "format_version": CARD_VERSION, "opset": OPSET,
        "operators": "standard" if portable else "standard + com.microsoft.MultiHeadAttention (onnxruntime)",
        "files": {k: {"path": v, "sha256": sha256_file(out / v)} for k, v in files.items()},
        "transformer": dataclasses.asdict(c), "tokenizer": dataclasses.asdict(tok.config),
        "mask_id": c.mask_id, "codebook_size": c.codebook_size, "num_classes": c.num_classes,
        "null_class": c.null_class, "grid": [h, w], "image_size": size, "channels": tok.config.channels,
        "class_names": pipe.class_names, "sampling": dataclasses.asdict(pipe.sample_defaults),
        "graphs": {
            "transformer": {"inputs": {"tokens": "int64 (B, N)", "labels": "int64 (B,), -1 = no class"},
                            "outputs": {"logits": "float32 (B, N, K)"},
                            "cfg": "run on 2B rows: conditional, then label -1; logits = c + s * (c - u)"},
            "decoder": {"inputs": {"tokens": "int64 (B, h, w)"}, "outputs": {"images": "float32 (B, C, H, W)"}},
            **({"encoder": {"inputs": {"images": "float32 (B, C, H, W) in [0, 1]"},
                            "outputs": {"tokens": "int64 (B, h, w)"}}} if encoder else {}),
        },
        "exported_with": {"torch": torch.__version__},
    }
    atomic_write(out / CARD, lambda f: f.write((json.dumps(card, indent=1) + "\n").encode()))
    return card
