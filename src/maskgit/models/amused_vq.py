"""aMUSEd's tokenizer: the VQ-GAN that Hugging Face ships as a diffusers ``VQModel`` (``vqvae/`` of amused-256/512).

Our own compact implementation of that architecture. Module and parameter names follow diffusers' layout exactly, so
a released ``diffusion_pytorch_model.safetensors`` loads with ``load_state_dict(strict=True)`` and no renaming:
``encoder`` (conv_in, down_blocks[i].resnets/downsamplers, mid_block, conv_norm_out, conv_out), ``quant_conv``,
``quantize.embedding``, ``post_quant_conv``, ``decoder`` (conv_in, mid_block, up_blocks[i].resnets/upsamplers,
conv_norm_out, conv_out). Images go in as they are, in [0,1] (the reference does not rescale to [-1,1])."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.errors import MaskGITError

DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
EPS = 1e-6  # every GroupNorm of this architecture
DECODE_CHUNK_BYTES = 64 * 2 ** 20  # CPU decoding: images per decoder call ~ this much full-resolution activation
DIST_CHUNK_ROWS = 4096  # latent vectors per distance matrix (a batch up to this size matches the reference bitwise)


@dataclass(frozen=True)
class AmusedVQConfig:
    """A diffusers ``VQModel`` config; defaults are diffusers' for fields a config file leaves out."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,)
    up_block_types: tuple[str, ...] = (UP_BLOCK,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not v:
                raise MaskGITError(f"aMUSEd VQ config: {name} must be a non-empty list, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "sample_size",
                     "num_vq_embeddings", "norm_num_groups", "vq_embed_dim"):
            v = getattr(self, name)
            if not (v is None and name == "vq_embed_dim") and not _positive_int(v):
                raise MaskGITError(f"aMUSEd VQ config: {name} must be a positive integer, got {v!r}")
        bad = [c for c in self.block_out_channels if not _positive_int(c) or c % self.norm_num_groups]
        if bad:
            raise MaskGITError(f"aMUSEd VQ config: block_out_channels must be positive multiples of norm_num_groups "
                               f"({self.norm_num_groups}), got {list(self.block_out_channels)}")
        for name, known in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            if any(t != known for t in getattr(self, name)):
                raise MaskGITError(f"aMUSEd VQ config: {name} supports only {known}, got {list(getattr(self, name))}")
        n = {len(self.down_block_types), len(self.up_block_types), len(self.block_out_channels)}
        if len(n) != 1:
            raise MaskGITError(f"aMUSEd VQ config: down_block_types, up_block_types and block_out_channels must have "
                               f"the same length, got {len(self.down_block_types)}, {len(self.up_block_types)} and "
                               f"{len(self.block_out_channels)}")
        if self.act_fn not in ("silu", "swish"):  # diffusers treats the two names as one activation
            raise MaskGITError(f"aMUSEd VQ config: act_fn must be 'silu', got {self.act_fn!r}")
        if self.norm_type != "group":
            raise MaskGITError(f"aMUSEd VQ config: only norm_type 'group' is supported, got {self.norm_type!r}")
        if isinstance(self.scaling_factor, bool) or not isinstance(self.scaling_factor, (int, float)):
            raise MaskGITError(f"aMUSEd VQ config: scaling_factor must be a number, got {self.scaling_factor!r}")
        for name in ("mid_block_add_attention", "lookup_from_codebook", "force_upcast"):
            if not isinstance(getattr(self, name), bool):
                raise MaskGITError(f"aMUSEd VQ config: {name} must be true or false, got {getattr(self, name)!r}")

    @property
    def downsample(self) -> int:
        """Pixels per token along each side: every level but the last halves the resolution."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AmusedVQConfig:
        """From a ``vqvae/config.json`` dict; keys starting with ``_`` and keys we do not know are ignored."""
        if not isinstance(d, dict):
            raise MaskGITError(f"aMUSEd VQ config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """A config.json dict diffusers' ``VQModel`` reads."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": "VQModel", **d}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=EPS)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without autograd, reuse the buffers each op has just made (the same values, fewer large allocations)
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        s = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(s) if inplace else s + h


class Downsample(nn.Module):
    """Stride-2 conv3x3 after padding one zero row/column at the bottom/right only (the reference's asymmetric pad)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x, then conv3x3."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention(nn.Module):
    """One-head self-attention over the pixels: GN -> q, k, v -> softmax(q k^T / sqrt(C)) v -> out, plus input."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = _norm(ch, groups)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])  # index 0 as in the checkpoint (index 1 was a dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (lin(h).unsqueeze(1) for lin in (self.to_q, self.to_k, self.to_v))
        a = self.to_out[0](F.scaled_dot_product_attention(q, k, v).squeeze(1))
        # (B, HW, C) read as (B, C, H, W) without a copy: the result is channels-last, as the decoder runs
        return a.transpose(1, 2).reshape(B, C, H, W) + x


class MidBlock(nn.Module):
    """resnet, (attention), resnet at the lowest resolution."""

    def __init__(self, ch: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SelfAttention(ch, groups) if attention else None])
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    """conv_in -> levels of resnets (each but the last ends in a stride-2 conv) -> mid block -> GN, SiLU, conv_out."""

    def __init__(self, c: AmusedVQConfig):
        super().__init__()
        w, g, n = c.block_out_channels, c.norm_num_groups, len(c.block_out_channels)
        self.conv_in = nn.Conv2d(c.in_channels, w[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownBlock(w[max(i - 1, 0)], w[i], c.layers_per_block, g, i < n - 1) for i in range(n)])
        self.mid_block = MidBlock(w[-1], g, c.mid_block_add_attention)
        self.conv_norm_out = _norm(w[-1], g)
        self.conv_out = nn.Conv2d(w[-1], c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.conv_norm_out(self.mid_block(x))
        return self.conv_out(F.silu(x, inplace=not torch.is_grad_enabled()))


class Decoder(nn.Module):
    """conv_in -> mid block -> levels (widest last) of layers_per_block + 1 resnets and a 2x upsampling between
    levels -> GN, SiLU, conv_out."""

    def __init__(self, c: AmusedVQConfig):
        super().__init__()
        w, g, n = c.block_out_channels[::-1], c.norm_num_groups, len(c.block_out_channels)
        self.conv_in = nn.Conv2d(c.latent_channels, w[0], 3, padding=1)
        self.mid_block = MidBlock(w[0], g, c.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [UpBlock(w[max(i - 1, 0)], w[i], c.layers_per_block + 1, g, i < n - 1) for i in range(n)])
        self.conv_norm_out = _norm(w[-1], g)
        self.conv_out = nn.Conv2d(w[-1], c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=not torch.is_grad_enabled()))


class Quantizer(nn.Module):
    """The codebook; only ``embedding`` is stored."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n, 1.0 / n)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) latents -> (N,) ids of the nearest entries. The reference takes the argmin of ``torch.cdist``
        (Euclidean, via the matmul expansion for codebooks over 25 entries); the same call gives the same ids, ties
        and rounding included (a smaller matrix per call than DIST_CHUNK_ROWS rows may round differently)."""
        e = self.embedding.weight
        return torch.cat([torch.cdist(z[i:i + DIST_CHUNK_ROWS], e).argmin(1)
                          for i in range(0, len(z), DIST_CHUNK_ROWS)]) if len(z) else z.new_zeros(0, dtype=torch.long)


def _fp32_only(device: torch.device):
    """No autocast inside the tokenizer: it always computes in float32."""
    try:
        on = torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


def _contiguous_state(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook: NHWC weights come out contiguous, as safetensors and the released layout want them."""
    for k, v in state.items():
        if k.startswith(prefix) and isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) \
                and not v.is_contiguous():
            state[k] = v.contiguous()


class AmusedVQ(nn.Module):
    """images in [0,1] (B,3,H,W) <-> token grids (B, H/downsample, W/downsample) of ``codebook_size`` ids."""

    def __init__(self, config: AmusedVQConfig, channels_last: bool = False):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.embed_dim, 1)
        self.quantize = Quantizer(c.num_vq_embeddings, c.embed_dim)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)
        self.decoder = Decoder(c)
        self.channels_last = False
        self.prepare_for_inference(channels_last)
        self.register_state_dict_post_hook(_contiguous_state)

    def prepare_for_inference(self, channels_last: bool = True) -> AmusedVQ:
        """Eval mode; with ``channels_last`` the decoder's weights and activations are NHWC: ~15% less CPU time at
        amused-256 (oneDNN convs without a weight reorder per call), but other float rounding: ~6e-5 from the
        reference at the released size, where the default NCHW layout gives its images bit for bit. The encoder
        always keeps NCHW so encode gives the reference's ids exactly. ``state_dict()`` is contiguous either way."""
        self.eval()
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.post_quant_conv.to(memory_format=fmt)
        self.decoder.to(memory_format=fmt)
        return self

    @property
    def codebook_size(self) -> int:
        return self.config.num_vq_embeddings

    @property
    def channels(self) -> int:
        return self.config.in_channels

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _check_weights(self) -> torch.Tensor:
        w = self.quantize.embedding.weight
        if w.dtype != torch.float32:
            raise MaskGITError(f"the aMUSEd VQ runs in float32 (as the reference upcasts it), but its weights are "
                               f"{w.dtype}; keep it in float32 (vq.float())")
        return w

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) float in [0,1] -> token ids (B,h,w) int64, the reference's nearest codebook entries."""
        self._check_weights()
        d = self.downsample
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise MaskGITError(f"the aMUSEd VQ expects images (B,{self.channels},H,W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise MaskGITError(f"the aMUSEd VQ expects float images in [0,1], got {images.dtype}")
        if images.shape[-2] % d or images.shape[-1] % d:
            raise MaskGITError(f"image size {tuple(images.shape[-2:])} is not a multiple of the aMUSEd VQ's "
                               f"downsampling factor {d}")
        # the encoder keeps the reference's (contiguous) layout so the latents, hence the ids, agree bit for bit
        x = images.to(torch.float32).contiguous()
        with _fp32_only(x.device):
            z = self.quant_conv(self.encoder(x))
            B, D, h, w = z.shape
            return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    def decode_chunk(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
        """Images per decoder call for token grids of ``shape`` (B,h,w): on CPU about DECODE_CHUNK_BYTES of the
        widest full-resolution activation (a large batch spills the caches and shares little work); else all.
        Images decoded in separate calls agree with one batched call up to float rounding."""
        if torch.device(device).type != "cpu":
            return max(shape[0], 1)
        px = shape[1] * shape[2] * self.downsample ** 2
        return max(1, DECODE_CHUNK_BYTES // (4 * self.config.block_out_channels[0] * px))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """token ids (B,h,w) -> images (B,C,H,W) float32, clipped to [0,1] unless ``clip=False``."""
        emb = self._check_weights()
        if tokens.ndim != 3:
            raise MaskGITError(f"decode expects a token grid (B,h,w), got {tuple(tokens.shape)}")
        if tokens.is_floating_point() or tokens.is_complex():
            raise MaskGITError(f"token ids must be integers, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise MaskGITError(f"token ids must lie in [0, {self.codebook_size}); got "
                               f"[{int(tokens.min())}, {int(tokens.max())}]")
        # (B,h,w,D) -> (B,D,h,w) as a view is already NHWC; the default NCHW layout makes the reference's copy
        q = F.embedding(tokens.long(), emb).permute(0, 3, 1, 2)
        if not self.channels_last:
            q = q.contiguous()
        n = self.decode_chunk(tokens.shape, tokens.device)
        with _fp32_only(q.device):
            parts = [self.decoder(self.post_quant_conv(q[i:i + n])) for i in range(0, len(q), n)]
        x = torch.cat(parts) if len(parts) > 1 else parts[0] if parts else q.new_zeros(
            0, self.config.out_channels, tokens.shape[1] * self.downsample, tokens.shape[2] * self.downsample)
        x = x.contiguous()  # callers index pixels in (B,C,H,W) order
        return x.clamp_(0, 1) if clip else x
