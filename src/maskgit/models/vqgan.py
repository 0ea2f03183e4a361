"""The MaskGIT tokenizer (VQGAN): images in [0,1] <-> grids of discrete tokens.

Layout follows the official release so its weights load exactly (see convert.py): conv encoder with 2x2
average pooling between levels, vector quantizer, mirrored decoder with nearest upsampling + conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import VQGANConfig
from maskgit.errors import MaskGITError

DECODE_CHUNK_BYTES = 32 * 2 ** 20


def _norm(cfg: VQGANConfig, ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.num_groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (no biases), plus a shortcut.

    Where the width changes, the released weights add ``conv1x1(out)`` to the block's OUTPUT (the input is
    dropped); ``official_shortcut=False`` gives the textbook ``out + conv1x1(in)``."""

    def __init__(self, cfg: VQGANConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin if not cfg.official_shortcut else cout, cout, 1, bias=False) \
            if cin != cout else None
        self.official = cfg.official_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without autograd, work in the buffers each op has just made: a fresh 256 px activation costs more to
        # allocate (page faults) than SiLU or the residual add cost to compute
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        if self.shortcut is None:
            return h.add_(x) if inplace else x + h
        s = self.shortcut(h if self.official else x)
        return s.add_(h) if inplace else h + s


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.filters * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.channels, cfg.filters, 3, padding=1, bias=False)
        cin = cfg.filters
        self.levels = nn.ModuleList()
        for w in widths:
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.append(ResBlock(cfg, cin, w))
                cin = w
            self.levels.append(level)
        self.mid = nn.ModuleList([ResBlock(cfg, cin, cin) for _ in range(2)])
        self.norm_out = _norm(cfg, cin)
        self.conv_out = nn.Conv2d(cin, cfg.embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.levels):
            for block in level:
                x = block(x)
            if i < len(self.levels) - 1:
                x = F.avg_pool2d(x, 2)
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def _phase_kernels(w: torch.Tensor) -> torch.Tensor:
    """(O,I,3,3) kernel of a conv applied after 2x nearest upsampling -> (4*O,I,2,2) kernels, one per output phase.

    Output row 2i of the upsampled conv reads upsampled rows 2i-1, 2i, 2i+1, i.e. input rows i-1, i, i: so its
    2-tap row kernel is (k0, k1 + k2) over rows (i-1, i). Row 2i+1 reads input rows i, i, i+1: (k0 + k1, k2) over
    rows (i, i+1). Columns work the same way; phase (a, b) is block 2a+b of the output channels."""
    taps = w.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # (phase, 2 taps, 3 taps)
    k = torch.einsum("ary,oiyz,bqz->aboirq", taps, w, taps)
    return k.reshape(4 * w.shape[0], w.shape[1], 2, 2)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, subpixel: bool | None = None) -> torch.Tensor:
    """``conv(nearest_upsample_2x(x))`` for a 3x3, padding-1 ``conv``.

    The sub-pixel form (default without autograd) computes it exactly (up to float rounding) as one 2x2 conv over
    the un-upsampled input with 4x the output channels, one block per output phase, then interleaves the phases:
    16 instead of 36 multiply-adds per output value, and no upsampled copy of the input. With autograd (the
    default ``subpixel=None`` then means False) the plain form runs, so training sees the textbook graph. The phase
    kernels are derived from the weight on every call (a few MFLOP, nothing to keep in sync with the weight)."""
    if subpixel is None:
        subpixel = not torch.is_grad_enabled()
    if not subpixel:
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    B, _, H, W = x.shape
    O = conv.out_channels
    k = _phase_kernels(conv.weight.detach())
    if x.is_contiguous(memory_format=torch.channels_last):
        k = k.contiguous(memory_format=torch.channels_last)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    # window (i', j') of the padded input covers input rows i'-1, i': phase a of output row i sits at i' = i + a
    y4 = F.conv2d(x, k.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=1)  # (B, 4O, H+1, W+1)
    if torch.onnx.is_in_onnx_export():  # the interleave as ops every ONNX runtime has (no strided writes)
        y = torch.stack([y4[:, p * O:(p + 1) * O, p // 2:p // 2 + H, p % 2:p % 2 + W] for p in range(4)], 2)
        return F.pixel_shuffle(y.reshape(B, 4 * O, H, W), 2)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    y = torch.empty(B, O, 2 * H, 2 * W, dtype=y4.dtype, device=y4.device, memory_format=fmt)
    for a in (0, 1):
        for b in (0, 1):
            p = 2 * a + b
            y[:, :, a::2, b::2] = y4[:, p * O:(p + 1) * O, a:a + H, b:b + W]
    return y


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.filters * m for m in cfg.channel_mult]
        cin = widths[-1]
        self.conv_in = nn.Conv2d(cfg.embedding_dim, cin, 3, padding=1)
        self.mid = nn.ModuleList([ResBlock(cfg, cin, cin) for _ in range(2)])
        self.levels = nn.ModuleList()
        self.upconvs = nn.ModuleList()
        for i in reversed(range(len(widths))):
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.append(ResBlock(cfg, cin, widths[i]))
                cin = widths[i]
            self.levels.append(level)
            if i > 0:
                self.upconvs.append(nn.Conv2d(cin, cin, 3, padding=1))
        self.norm_out = _norm(cfg, cin)
        self.conv_out = nn.Conv2d(cin, cfg.channels, 3, padding=1)
        # inference form of "nearest 2x upsample -> 3x3 conv" (used only without autograd; see upsample_conv).
        # False computes the official layout's plain form (the speed benchmark counts its FLOPs that way).
        self.subpixel = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        for i, level in enumerate(self.levels):
            for block in level:
                x = block(x)
            if i < len(self.upconvs):
                x = upsample_conv(x, self.upconvs[i], subpixel=self.subpixel and not torch.is_grad_enabled())
        return self.conv_out(F.silu(self.norm_out(x), inplace=not torch.is_grad_enabled()))

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight


class VectorQuantizer(nn.Module):
    """Nearest code by squared L2, straight-through gradients, commitment loss, optional entropy loss."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Parameter(torch.empty(cfg.codebook_size, cfg.embedding_dim))
        nn.init.uniform_(self.codebook, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """z (M, D) -> squared distances (M, K), always in fp32 (bf16 would pick wrong codes)."""
        with torch.autocast(z.device.type, enabled=False):
            z, cb = z.float(), self.codebook.float()
            return z.pow(2).sum(1, keepdim=True) - 2 * z @ cb.t() + cb.pow(2).sum(1)[None]

    def forward(self, z: torch.Tensor):
        """z (B,D,h,w) -> (quantized (B,D,h,w), tokens (B,h,w), losses dict)."""
        z = z.float()
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        d = self.distances(flat)
        idx = d.argmin(1)
        q = self.codebook[idx].view(B, h, w, D).permute(0, 3, 1, 2)
        losses = {}
        if self.training or torch.is_grad_enabled():
            commit = F.mse_loss(z, q.detach())
            codebook = F.mse_loss(q, z.detach())
            losses["vq"] = codebook + self.cfg.commitment_cost * commit
            if self.cfg.entropy_loss_weight > 0:
                probs = torch.softmax(-d, dim=1)
                sample_ent = -(probs * torch.log(probs + 1e-8)).sum(1).mean()
                avg = probs.mean(0)
                avg_ent = -(avg * torch.log(avg + 1e-8)).sum()
                losses["entropy"] = self.cfg.entropy_loss_weight * (sample_ent - avg_ent)
        q = z + (q - z).detach()  # straight-through
        return q, idx.view(B, h, w), losses

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,h,w) -> (B,D,h,w)."""
        return self.codebook[tokens].permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    """Images (B,C,H,W) in [0,1] <-> token grids (B,h,w) int64 (the network sees [0,1] directly, as the
    official one does). Implements the tokenizer interface used by the
    transformer, sampler and pipeline: ``encode``, ``decode``, ``codebook_size``, ``grid_shape``."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config)
        self.decoder = Decoder(config)
        self.channels_last = False  # set by prepare_for_inference

    def prepare_for_inference(self, channels_last: bool = True, subpixel: bool = True) -> VQGAN:
        """Eval mode, and the CPU's fast forms (same results up to float rounding): channels_last convolutions in
        the encoder and decoder (~2.5x faster on CPU) and sub-pixel upsampling convs. Per instance; training is
        unaffected."""
        self.eval()
        self.channels_last = channels_last
        self.decoder.subpixel = subpixel
        if channels_last:
            self.decoder.to(memory_format=torch.channels_last)
            self.encoder.to(memory_format=torch.channels_last)
        return self

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def channels(self) -> int:
        return self.config.channels

    def grid_shape(self, image_size: int | None = None) -> tuple[int, int]:
        return self.config.grid_shape(image_size)

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.channels:
            raise MaskGITError(f"tokenizer expects images (B,{self.config.channels},H,W), got {tuple(images.shape)}")
        if images.shape[-1] % self.config.downsample or images.shape[-2] % self.config.downsample:
            raise MaskGITError(f"image size {tuple(images.shape[-2:])} is not a multiple of the tokenizer's "
                               f"downsampling factor {self.config.downsample}")

    def forward(self, images: torch.Tensor):
        """Training pass: (reconstruction, tokens, losses)."""
        q, tokens, losses = self.quantizer(self.encoder(images))
        return self.decoder(q), tokens, losses

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) in [0,1] -> token grid (B,h,w) int64."""
        self._check(images)
        if self.channels_last and images.device.type == "cpu" and not self.training:
            images = images.contiguous(memory_format=torch.channels_last)
        z = self.encoder(images)
        B, D, h, w = z.shape
        return self.quantizer.distances(z.permute(0, 2, 3, 1).reshape(-1, D)).argmin(1).view(B, h, w)

    def decode_chunk(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
        """Images per decoder call when ``decode`` gets token grids of ``shape`` (B,h,w): on CPU (inference), chunks
        of about DECODE_CHUNK_BYTES of full-resolution activations (one image at 256 px). Batching shares little
        work here (the weights are small) while a large batch of activations spills the caches; every image comes
        out the same up to float rounding. Elsewhere the whole batch."""
        if torch.device(device).type != "cpu" or self.training:
            return max(shape[0], 1)
        H, W = shape[1] * self.config.downsample, shape[2] * self.config.downsample
        return max(1, DECODE_CHUNK_BYTES // (4 * self.config.filters * self.config.channel_mult[0] * H * W))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """token grid (B,h,w) -> images (B,C,H,W) in [0,1] (clipped unless ``clip=False``)."""
        if tokens.ndim != 3:
            raise MaskGITError(f"decode expects a token grid (B,h,w), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise MaskGITError(f"token ids must lie in [0, {self.codebook_size}); got "
                               f"[{int(tokens.min())}, {int(tokens.max())}]")
        z = self.quantizer.embed(tokens)
        n = self.decode_chunk(tokens.shape, tokens.device)  # images per decoder call
        if self.channels_last and z.device.type == "cpu" and not self.training:
            z = z.contiguous(memory_format=torch.channels_last)
        x = torch.cat([self.decoder(z[i:i + n]).contiguous() for i in range(0, len(z), n)]) if len(z) > n \
            else self.decoder(z).contiguous()
        return x.clamp(0, 1) if clip else x
