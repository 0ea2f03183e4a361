"""Stage-1 training: the tokenizer's losses (reconstruction, perceptual, VQ, adversarial with an adaptive
weight), a patch discriminator, and codebook-usage tracking with dead-code restarts."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from maskgit.config import TokenizerTrainConfig
from maskgit.models.vqgan import VQGAN
from maskgit.training.loop import StepContext


class PatchDiscriminator(nn.Module):
    """A PatchGAN: strided 4x4 convs -> one real/fake logit per patch."""

    def __init__(self, channels: int, filters: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, filters, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = filters
        for i in range(1, layers):
            nxt = filters * min(2 ** i, 8)
            mods += [nn.Conv2d(ch, nxt, 4, 2 if i < layers - 1 else 1, 1, bias=False),
                     nn.GroupNorm(min(32, nxt // 4), nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def _fp32(disc, images: torch.Tensor) -> torch.Tensor:
    """The discriminator's logits in fp32 even under bf16 autocast: the GAN's hinge losses and the adaptive weight's
    gradient ratio are computed from them, and the discriminator is a small part of a step. In fp32 training this is
    the plain call."""
    with torch.autocast(images.device.type, enabled=False):
        return disc(images.float())


class _Frozen:
    """Holds a frozen helper network outside the module tree (not trained, not checkpointed)."""

    def __init__(self, net: nn.Module | None):
        self.net = net


class TokenizerTask(nn.Module):
    """batch = {"images": (b,C,H,W) in [0,1]}; ``task.model`` is the VQGAN. On a CPU in fp32 the trainer keeps the
    convolutions' weights and the images channels-last (``channels_last``): the same losses to fp32 rounding, in
    less time (6-13% of a step, ``benchmarks/trainer_profile.py``); under bf16 autocast it stays contiguous, which
    is faster there."""

    channels_last = True

    def __init__(self, vqgan: VQGAN, cfg: TokenizerTrainConfig, perceptual_net: nn.Module | None = None):
        super().__init__()
        self.model = vqgan
        self.cfg = cfg
        self.disc = PatchDiscriminator(vqgan.config.channels, cfg.disc_filters, cfg.disc_layers) \
            if cfg.disc_weight > 0 else None
        if perceptual_net is not None:
            perceptual_net.eval().requires_grad_(False)
        self._percep = _Frozen(perceptual_net)
        self.register_buffer("code_age", torch.zeros(vqgan.config.codebook_size, dtype=torch.long))

    def forward(self, batch: dict, ctx: StepContext):
        cfg = self.cfg
        x = batch["images"]
        if self.channels_last and x.device.type == "cpu" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        vq = self.model
        z = vq.encoder(x)
        q, idx, vq_losses = vq.quantizer(z)
        rec = vq.decoder(q)
        logs: dict[str, torch.Tensor] = {}
        rec_loss = cfg.l2_weight * F.mse_loss(rec, x) + cfg.l1_weight * (rec - x).abs().mean()
        logs["rec"] = rec_loss.detach()
        nll = rec_loss
        net = self._percep.net
        if net is not None and cfg.perceptual_weight > 0:
            from maskgit.models.features import perceptual_loss
            p = perceptual_loss(net.to(x.device), rec, x)
            logs["perceptual"] = p.detach()
            nll = nll + cfg.perceptual_weight * p
        loss = nll + sum(vq_losses.values())
        if self.disc is not None and ctx.step >= cfg.disc_start:
            frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
            g_loss = -_fp32(lambda im: functional_call(self.disc, frozen, (im,)), rec).mean()
            w = cfg.disc_weight
            if self.training and torch.is_grad_enabled():
                last = vq.decoder.last_layer
                gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
                gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
                w = (gn / (gg + 1e-4)).clamp(0, 1e4).detach() * cfg.disc_weight
            d_loss = F.relu(1 - _fp32(self.disc, x)).mean() + F.relu(1 + _fp32(self.disc, rec.detach())).mean()
            loss = loss + w * g_loss + d_loss
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach())
        with torch.no_grad():
            K = vq.config.codebook_size
            counts = torch.bincount(idx.flatten(), minlength=K).float()
            probs = counts / counts.sum()
            logs["usage"] = (counts > 0).float().mean()
            logs["perplexity"] = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            logs["psnr"] = -10 * torch.log10(F.mse_loss(rec.clamp(0, 1), x).clamp_min(1e-10))
            if self.training and cfg.restart_dead_codes:
                self._restart_dead_codes(counts, z, ctx)
        return loss, logs

    @torch.no_grad()
    def _restart_dead_codes(self, counts: torch.Tensor, z: torch.Tensor, ctx: StepContext) -> None:
        """Codes unused for ``dead_code_steps`` steps are re-seeded from this batch's encoder outputs."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.code_age.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.code_age > self.cfg.dead_code_steps).nonzero().flatten()
        if dead.numel() == 0:
            return
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (M, D)
        g = ctx.generator(4)
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=g).to(flat.device)
        self.model.quantizer.codebook.data[dead] = flat[pick]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.model.quantizer.codebook.data, 0)
        self.code_age[dead] = 0
