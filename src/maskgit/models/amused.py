"""aMUSEd's masked-token transformer (Hugging Face ``amused/amused-256`` / ``amused-512``): a U-ViT over VQ tokens.

ids (B, h, w) -> embedding + RMS norm + 1x1 conv -> conv stage (ConvNeXt + cross-attention blocks) -> projection to
``hidden_size`` -> ``num_hidden_layers`` transformer layers (self-attention, cross-attention to the projected CLIP
hidden states, GEGLU MLP; every norm modulated by the condition) -> projection back -> a second conv stage ->
1x1 conv + RMS norm + 1x1 conv to ``codebook_size`` logits. The condition is an MLP of [pooled CLIP projection,
sinusoidal embeddings of the 5 micro-conditions (orig. width, height, crop top, left, aesthetic score)].

Parameter names are those of diffusers' ``UVit2DModel`` (``transformer/diffusion_pytorch_model.safetensors``
loads with ``load_state_dict(strict=True)``); the layers live in ``maskgit.models.amused_blocks``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from maskgit.errors import MaskGITError
from maskgit.models.amused_blocks import RMSNorm, TransformerLayer, UVitBlock, conv1x1


@dataclass(frozen=True)
class UVit2DConfig:
    """The fields of diffusers' ``transformer/config.json`` for ``UVit2DModel``, with diffusers' defaults (those of
    amused-256 except ``sample_size``, which is 16 there and 32 for amused-512)."""

    hidden_size: int = 1024  # width of the middle transformer stack
    use_bias: bool = False  # biases in every linear / conv / modulation (the released models have none)
    hidden_dropout: float = 0.0
    cond_embed_dim: int = 768  # pooled text projection
    micro_cond_encode_dim: int = 256  # sinusoidal width per micro-condition
    micro_cond_embed_dim: int = 1280  # all micro-conditions together (5 x 256)
    encoder_hidden_size: int = 768  # text encoder hidden states
    vocab_size: int = 8256  # codebook + mask token, rounded up; the mask id is vocab_size - 1
    codebook_size: int = 8192
    in_channels: int = 768  # token embedding width
    block_out_channels: int = 768  # width of the conv stages
    num_res_blocks: int = 3  # (ConvNeXt, attention) pairs per conv stage
    downsample: bool = False
    upsample: bool = False
    block_num_heads: int = 12
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    attention_dropout: float = 0.0
    intermediate_size: int = 2816  # GEGLU inner width
    layer_norm_eps: float = 1e-6
    ln_elementwise_affine: bool = True
    sample_size: int = 64  # tokens per side

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "bool" and not isinstance(v, bool):
                raise MaskGITError(f"UVit2D config: {f.name} must be true or false, got {v!r}")
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MaskGITError(f"UVit2D config: {f.name} must be a positive integer, got {v!r}")
            if f.type == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise MaskGITError(f"UVit2D config: {f.name} must be a finite number, got {v!r}")
                object.__setattr__(self, f.name, float(v))
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise MaskGITError(f"UVit2D config: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.layer_norm_eps <= 0:
            raise MaskGITError(f"UVit2D config: layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for width, heads in (("hidden_size", "num_attention_heads"), ("block_out_channels", "block_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise MaskGITError(f"UVit2D config: {heads}={getattr(self, heads)} must divide "
                                   f"{width}={getattr(self, width)}")
        if self.vocab_size <= self.codebook_size:
            raise MaskGITError(f"UVit2D config: vocab_size={self.vocab_size} must exceed codebook_size="
                               f"{self.codebook_size} (the mask token is vocab_size - 1)")
        if self.micro_cond_embed_dim % self.micro_cond_encode_dim:
            raise MaskGITError(f"UVit2D config: micro_cond_embed_dim={self.micro_cond_embed_dim} must be a multiple "
                               f"of micro_cond_encode_dim={self.micro_cond_encode_dim} (one embedding per condition)")

    @property
    def num_micro_conds(self) -> int:
        return self.micro_cond_embed_dim // self.micro_cond_encode_dim

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UVit2DConfig:
        """From a diffusers config.json dict: ``_``-prefixed keys (``_class_name``, versions) are ignored, omitted
        fields take diffusers' defaults, unknown fields are an error."""
        if not isinstance(d, Mapping):
            raise MaskGITError(f"UVit2D config must be a JSON object, got {type(d).__name__}")
        kw = {k: v for k, v in d.items() if not str(k).startswith("_")}
        unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise MaskGITError(f"UVit2D config: unknown field(s) {', '.join(map(str, unknown))}")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """diffusers-compatible ``transformer/config.json`` content."""
        return {"_class_name": "UVit2DModel", **dataclasses.asdict(self)}


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) values -> (N, dim) [cos | sin] embeddings at geometric frequencies 1 .. 1/max_period (zero-padded if
    ``dim`` is odd): diffusers' timestep embedding with flip_sin_to_cos=True and no frequency shift."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(a), torch.sin(a)], dim=-1), (0, dim % 2))


class UVit2DConvEmbed(nn.Module):
    """Token embedding -> RMS norm -> 1x1 conv, channel-last out (B, h, w, block_out_channels)."""

    def __init__(self, c: UVit2DConfig):
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.in_channels)
        self.layer_norm = RMSNorm(c.in_channels, c.layer_norm_eps, c.ln_elementwise_affine)
        self.conv = nn.Conv2d(c.in_channels, c.block_out_channels, kernel_size=1, bias=c.use_bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return conv1x1(self.conv, self.layer_norm(self.embeddings(ids)))


class CondEmbed(nn.Module):
    """[pooled text, micro-condition embeddings] -> linear -> SiLU -> linear (diffusers' TimestepEmbedding)."""

    def __init__(self, c: UVit2DConfig):
        super().__init__()
        self.linear_1 = nn.Linear(c.micro_cond_embed_dim + c.cond_embed_dim, c.hidden_size, bias=c.use_bias)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(c.hidden_size, c.hidden_size, bias=c.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ConvMlmLayer(nn.Module):
    """1x1 conv -> RMS norm -> 1x1 conv to codebook logits, channel-last (B, h, w, codebook_size)."""

    def __init__(self, c: UVit2DConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c.block_out_channels, c.in_channels, kernel_size=1, bias=c.use_bias)
        self.layer_norm = RMSNorm(c.in_channels, c.layer_norm_eps, c.ln_elementwise_affine)
        self.conv2 = nn.Conv2d(c.in_channels, c.codebook_size, kernel_size=1, bias=c.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(self.conv2, self.layer_norm(conv1x1(self.conv1, x)))


class UVit2D(nn.Module):
    """aMUSEd's U-ViT: ``forward(ids, hidden, pooled, micro)`` -> logits (B, codebook_size, h, w) over the codebook
    (the mask id ``vocab_size - 1`` is an input only). At amused-256's config: 603,537,664 parameters.

    Set ``gradient_checkpointing = True`` to recompute the transformer layers in backward (training memory)."""

    def __init__(self, config: UVit2DConfig):
        super().__init__()
        c = self.config = config
        self.codebook_size = c.codebook_size
        self.mask_id = c.vocab_size - 1
        b, eps, affine = c.use_bias, c.layer_norm_eps, c.ln_elementwise_affine
        self.encoder_proj = nn.Linear(c.encoder_hidden_size, c.hidden_size, bias=b)
        self.encoder_proj_layer_norm = RMSNorm(c.hidden_size, eps, affine)
        self.embed = UVit2DConvEmbed(c)
        self.cond_embed = CondEmbed(c)
        stage = dict(dim=c.block_out_channels, n=c.num_res_blocks, cond_dim=c.hidden_size, dropout=c.hidden_dropout,
                     affine=affine, eps=eps, bias=b, heads=c.block_num_heads, attn_dropout=c.attention_dropout)
        self.down_block = UVitBlock(**stage, down=c.downsample, up=False)
        self.project_to_hidden_norm = RMSNorm(c.block_out_channels, eps, affine)
        self.project_to_hidden = nn.Linear(c.block_out_channels, c.hidden_size, bias=b)
        self.transformer_layers = nn.ModuleList([
            TransformerLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, b, affine, eps,
                             c.hidden_dropout) for _ in range(c.num_hidden_layers)])
        self.project_from_hidden_norm = RMSNorm(c.hidden_size, eps, affine)
        self.project_from_hidden = nn.Linear(c.hidden_size, c.block_out_channels, bias=b)
        self.up_block = UVitBlock(**stage, down=False, up=c.upsample)
        self.mlm_layer = ConvMlmLayer(c)
        self.gradient_checkpointing = False

    def condition(self, pooled: torch.Tensor, micro: torch.Tensor) -> torch.Tensor:
        """(B, cond_embed_dim) pooled text + (B, n) micro-conditions -> (B, hidden_size) condition vector."""
        c = self.config
        if micro.ndim != 2 or micro.shape[1] != c.num_micro_conds:
            raise MaskGITError(f"UVit2D expects micro-conditions (B, {c.num_micro_conds}), got {tuple(micro.shape)}")
        emb = sinusoidal(micro.flatten(), c.micro_cond_encode_dim).reshape(micro.shape[0], -1)
        x = torch.cat([pooled, emb], dim=1)  # promotes like the reference
        return self.cond_embed(x.to(self.embed.embeddings.weight.dtype))  # the model's dtype (Linear layers may be
        # swapped for packed or quantised modules that hold no .weight)

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
                micro: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) long, hidden (B, L, encoder_hidden_size), pooled (B, cond_embed_dim), micro (B, 5)
        -> logits (B, codebook_size, h, w) (a channel-last view: ``reshape(B, K, h * w)`` does not copy)."""
        enc = self.encoder_proj_layer_norm(self.encoder_proj(hidden))
        # every user of the condition (the modulations, the ConvNeXt scale/shift) takes silu(cond): activate it once
        cond_act = F.silu(self.condition(pooled, micro).to(enc.dtype))
        x = self.down_block(self.embed(ids), cond_act, enc)  # (B, H, W, C)
        B, H, W, C = x.shape
        h = self.project_to_hidden(self.project_to_hidden_norm(x.reshape(B, H * W, C)))
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.transformer_layers:
            h = checkpoint(layer, h, enc, cond_act, use_reentrant=False) if ckpt else layer(h, enc, cond_act)
        x = self.project_from_hidden(self.project_from_hidden_norm(h)).view(B, H, W, C)
        return self.mlm_layer(self.up_block(x, cond_act, enc)).permute(0, 3, 1, 2)
