"""The layers of aMUSEd's U-ViT (see ``maskgit.models.amused``), written channel-last: feature maps are (B, H, W, C)
so the token-wise layers (norms, linears, attention) need no permutes; only the spatial convolutions see NCHW.

Module and parameter names follow diffusers' UVit2DModel so released weights load without renaming; 1x1
convolutions stay ``nn.Conv2d`` (their (out, in, 1, 1) weights are what the checkpoint holds) but run as linears."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to a channel-last tensor: a linear over the last axis."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def nchw(fn, x: torch.Tensor) -> torch.Tensor:
    """Run a spatial op written for NCHW on a channel-last tensor (the permutes are views, conv takes channels_last)."""
    return fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis (statistics in fp32), with an optional learned scale."""

    def __init__(self, dim: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return y if self.weight is None else y * self.weight


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on (B, H, W, C): each channel is rescaled by its spatial L2 norm relative to the channel mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Attention(nn.Module):
    """Multi-head (cross-)attention with separate q/k/v projections (LoRA wraps each) and SDPA."""

    def __init__(self, dim: int, heads: int, kv_dim: int, bias: bool, out_bias: bool, dropout: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if ctx is None else ctx
        B, L, D = x.shape
        split = lambda t: t.view(B, t.shape[1], self.heads, D // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx)))
        return self.to_out[1](self.to_out[0](y.transpose(1, 2).reshape(B, L, D)))


class AdaNorm(nn.Module):
    """Norm modulated by the conditioning vector: norm(x) * (1 + scale) + shift, (scale, shift) = linear(silu(cond)).
    Takes the already-activated ``silu(cond)``: every user of the condition activates it the same way."""

    def __init__(self, dim: int, cond_dim: int, affine: bool, eps: float, bias: bool, rms: bool):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim, bias=bias)
        self.norm = RMSNorm(dim, eps, affine) if rms else nn.LayerNorm(dim, eps, elementwise_affine=affine, bias=bias)

    def forward(self, x: torch.Tensor, cond_act: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(cond_act.to(x.dtype)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None] + shift[:, None]


class GEGLU(nn.Module):
    """proj -> (value, gate) halves -> value * gelu(gate)."""

    def __init__(self, dim: int, inner: int, bias: bool):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward; ``net`` = [GEGLU, dropout, out linear] as the checkpoint indexes it."""

    def __init__(self, dim: int, inner: int, bias: bool, dropout: float):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, inner, bias), nn.Dropout(dropout), nn.Linear(inner, dim, bias=bias)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            x = m(x)
        return x


class TransformerLayer(nn.Module):
    """Pre-norm block of the middle stack: self-attention, cross-attention to the text, GEGLU MLP; every norm is
    modulated by the pooled condition (RMS for the attentions, LayerNorm for the MLP, as the reference has it)."""

    def __init__(self, dim: int, heads: int, inner: int, bias: bool, affine: bool, eps: float, dropout: float):
        super().__init__()
        self.norm1 = AdaNorm(dim, dim, affine, eps, bias, rms=True)
        self.attn1 = Attention(dim, heads, dim, bias, bias, dropout)
        self.norm2 = AdaNorm(dim, dim, affine, eps, bias, rms=True)
        self.attn2 = Attention(dim, heads, dim, bias, bias, dropout)
        self.norm3 = AdaNorm(dim, dim, affine, eps, bias, rms=False)
        self.ff = FeedForward(dim, inner, bias, dropout)

    def forward(self, x: torch.Tensor, enc: torch.Tensor, cond_act: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x, cond_act))
        x = x + self.attn2(self.norm2(x, cond_act), enc)
        return x + self.ff(self.norm3(x, cond_act))


class SkipFFTransformerBlock(nn.Module):
    """The conv stages' attention: two cross-attentions to the (mapped) text, no MLP; fixed-eps affine RMS norms."""

    def __init__(self, dim: int, heads: int, kv_dim: int, bias: bool, dropout: float):
        super().__init__()
        # the text is mapped to the stage width only when the widths differ (and then through silu first)
        self.kv_mapper = nn.Linear(kv_dim, dim, bias=bias) if kv_dim != dim else None
        self.norm1 = RMSNorm(dim, 1e-6)
        self.attn1 = Attention(dim, heads, dim, bias, bias, dropout)
        self.norm2 = RMSNorm(dim, 1e-6)
        self.attn2 = Attention(dim, heads, dim, bias, bias, dropout)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        if self.kv_mapper is not None:
            enc = self.kv_mapper(F.silu(enc))
        x = x + self.attn1(self.norm1(x), enc)
        return x + self.attn2(self.norm2(x), enc)


class ConvNextBlock(nn.Module):
    """Depthwise 3x3 -> RMS norm -> 4x MLP with GELU and GRN, residual, then a scale/shift from the condition."""

    def __init__(self, dim: int, eps: float, affine: bool, bias: bool, dropout: float, cond_dim: int, mult: int = 4):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=bias)
        self.norm = RMSNorm(dim, eps, affine)
        self.channelwise_linear_1 = nn.Linear(dim, dim * mult, bias=bias)
        self.channelwise_act = nn.GELU()
        self.channelwise_norm = GlobalResponseNorm(dim * mult)
        self.channelwise_linear_2 = nn.Linear(dim * mult, dim, bias=bias)
        self.channelwise_dropout = nn.Dropout(dropout)
        self.cond_embeds_mapper = nn.Linear(cond_dim, 2 * dim, bias=bias)

    def forward(self, x: torch.Tensor, cond_act: torch.Tensor) -> torch.Tensor:
        h = self.channelwise_act(self.channelwise_linear_1(self.norm(nchw(self.depthwise, x))))
        x = x + self.channelwise_dropout(self.channelwise_linear_2(self.channelwise_norm(h)))
        scale, shift = self.cond_embeds_mapper(cond_act).chunk(2, dim=1)
        return x * (1 + scale[:, None, None]) + shift[:, None, None]


class Resample(nn.Module):
    """RMS norm then a stride-2 2x2 conv (down, the input padded right/bottom by one) or transposed conv (up)."""

    def __init__(self, dim: int, eps: float, affine: bool, bias: bool, up: bool):
        super().__init__()
        self.up = up
        self.norm = RMSNorm(dim, eps, affine)
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(dim, dim, kernel_size=2, stride=2, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.up:
            return nchw(self.conv, x)
        return nchw(lambda t: self.conv(F.pad(t, (0, 1, 0, 1))), x)


class UVitBlock(nn.Module):
    """A conv stage: optional downsample, ``n`` x (ConvNeXt block, attention block), optional upsample."""

    def __init__(self, dim: int, n: int, cond_dim: int, dropout: float, affine: bool, eps: float, bias: bool,
                 heads: int, attn_dropout: float, down: bool, up: bool):
        super().__init__()
        self.downsample = Resample(dim, eps, affine, bias, up=False) if down else None
        self.res_blocks = nn.ModuleList([ConvNextBlock(dim, eps, affine, bias, dropout, cond_dim) for _ in range(n)])
        self.attention_blocks = nn.ModuleList([SkipFFTransformerBlock(dim, heads, cond_dim, bias, attn_dropout)
                                               for _ in range(n)])
        self.upsample = Resample(dim, eps, affine, bias, up=True) if up else None

    def forward(self, x: torch.Tensor, cond_act: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for res, attn in zip(self.res_blocks, self.attention_blocks):
            x = res(x, cond_act)
            B, H, W, C = x.shape
            x = attn(x.reshape(B, H * W, C), enc).reshape(B, H, W, C)
        if self.upsample is not None:
            x = self.upsample(x)
        return x
