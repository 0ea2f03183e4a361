"""Stage-2 training tasks over token grids: MaskGIT's masked-token objective and the AR next-token one.

MaskGIT: per example draw r ~ U[0,1), mask ceil(gamma(r) * N) uniformly chosen tokens, cross-entropy (label
smoothing) on the masked tokens. The loss is normalised by the masked-token count of the GLOBAL batch so that
N processes under DDP compute exactly what one process computes on the whole batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import TrainConfig
from maskgit.sampling.arithmetic import check_schedule
from maskgit.sampling.schedules import gamma
from maskgit.training.loop import StepContext


def num_masked(r: torch.Tensor, n: int, schedule: str) -> torch.Tensor:
    """ceil(gamma(r) * n) per example (a float32 product, as decoding counts), at least 1."""
    return torch.ceil(gamma(schedule, r, n) * n).long().clamp(1, n)


def mask_tokens(tokens: torch.Tensor, r: torch.Tensor, schedule: str, mask_id: int,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B,N), r (B,), noise (B,N) uniform -> (masked tokens, bool mask of the masked positions)."""
    B, N = tokens.shape
    k = num_masked(r, N, schedule).to(tokens.device)  # (B,)
    rank = noise.argsort(1).argsort(1)  # a uniform random permutation rank per position
    mask = rank < k[:, None]
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


class MaskedTokenTask(nn.Module):
    """batch = {"tokens": (b,h,w), "labels": (b,) [, "text": (b,L,D), "text_mask": (b,L)]}."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        check_schedule(cfg.mask_schedule)

    def forward(self, batch: dict, ctx: StepContext):
        cfg, mc = self.cfg, self.model.config
        tokens = batch["tokens"].long().flatten(1)  # (b, N)
        b, N = tokens.shape
        g_r = torch.rand(ctx.global_batch, generator=ctx.generator(1))
        g_noise = torch.rand(ctx.global_batch, N, generator=ctx.generator(2))
        g_drop = torch.rand(ctx.global_batch, generator=ctx.generator(3)) < cfg.cond_dropout
        inp, mask = mask_tokens(tokens, ctx.rows(g_r), cfg.mask_schedule, mc.mask_id, ctx.rows(g_noise))
        labels, text = batch.get("labels"), batch.get("text") if mc.text_dim else None
        drop = ctx.rows(g_drop) if (mc.null_class or mc.text_dim) else None
        if labels is not None and drop is not None and mc.null_class:
            labels = torch.where(drop, torch.full_like(labels, -1), labels)
        text_mask = batch.get("text_mask")
        if text is not None and drop is not None:
            null = self.model.null_text[None].expand(b, -1, -1).to(text.dtype)
            text = torch.where(drop[:, None, None], null, text)
            if text_mask is not None:
                text_mask = text_mask | drop[:, None]
        logits = self.model(inp, labels, text=text, text_mask=text_mask)  # (b, N, K)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none",
                             label_smoothing=cfg.label_smoothing).view(b, N)
        if cfg.loss_on_all_tokens:
            weight, total = torch.ones_like(ce), ctx.global_batch * N
        else:
            weight, total = mask.float(), int(num_masked(g_r, N, cfg.mask_schedule).sum())
        loss = (ce * weight).sum() * ctx.world / total
        with torch.no_grad():
            correct = (logits.argmax(-1) == tokens) & mask
            acc = correct.sum() / mask.sum().clamp_min(1)
        return loss, {"masked_acc": acc}


class NextTokenTask(nn.Module):
    """The AR baseline's objective: predict token i from the condition and tokens < i (raster order)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: dict, ctx: StepContext):
        cfg, mc = self.cfg, self.model.config
        tokens = batch["tokens"].long().flatten(1)
        b, N = tokens.shape
        labels = batch.get("labels")
        g_drop = torch.rand(ctx.global_batch, generator=ctx.generator(3)) < cfg.cond_dropout
        if labels is not None and mc.null_class:
            labels = torch.where(ctx.rows(g_drop), torch.full_like(labels, -1), labels)
        logits = self.model(tokens, labels)  # (b, N, K)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), label_smoothing=cfg.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == tokens).float().mean()
        return ce, {"next_acc": acc}
