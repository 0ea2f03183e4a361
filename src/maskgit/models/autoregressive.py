"""The autoregressive baseline: the same blocks made causal, raster order, class token first, KV-cache sampling.

It exists so that "8 parallel steps instead of 256 sequential ones" is measured on the same tokens."""

from __future__ import annotations

import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.models.transformer import TokenTransformer
from maskgit.sampling.decoding import guidance_scale, guide, sample_tokens


class ARTransformer(TokenTransformer):
    """``forward(tokens (B,N), labels)`` -> logits (B,N,K): position i predicts token i from tokens < i."""

    causal = True

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        B, N = tokens.shape
        if N != self.config.num_tokens:
            raise MaskGITError(f"expected {self.config.num_tokens} tokens per sample, got {N}")
        ids = torch.cat([self.cond_ids(labels, B, tokens.device)[:, None], tokens[:, :-1]], 1)  # (B, N)
        return self.head(self.run_blocks(self.embed(ids)))

    @torch.inference_mode()
    def generate(self, labels: torch.Tensor | None, config: SampleConfig, generator: torch.Generator | None = None,
                 num: int | None = None, use_cache: bool = True) -> torch.Tensor:
        """Sample (B,N) tokens one at a time (temperature / top-k / top-p / CFG); ``use_cache=False`` recomputes
        the whole prefix at every step (the naive baseline)."""
        c = self.config
        dev = self.pos_emb.device
        if labels is None:
            if num is None:
                raise MaskGITError("give labels or num")
            labels = torch.full((num,), -1, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long, device=dev)
        B = labels.shape[0]
        guided = config.cfg != 0
        cond = self.cond_ids(labels, B, dev)
        if guided:
            cond = torch.cat([cond, self.cond_ids(None, B, dev)])
        seq = cond[:, None]  # (B or 2B, 1)
        out = torch.empty(B, c.num_tokens, dtype=torch.long, device=dev)
        caches = [dict() for _ in self.blocks] if use_cache else None
        for i in range(c.num_tokens):
            if use_cache:
                x = self.run_blocks(self.embed(seq[:, -1:], offset=i), cache=caches)
            else:
                x = self.run_blocks(self.embed(seq))
            logits = self.head(x[:, -1]).float()  # (B or 2B, K)
            if guided:
                logits = guide(logits[:B], logits[B:], guidance_scale(config, i, c.num_tokens))
            nxt = sample_tokens(logits, config, generator)
            out[:, i] = nxt
            step_tok = torch.cat([nxt, nxt]) if guided else nxt
            seq = torch.cat([seq, step_tok[:, None]], 1)
        return out
