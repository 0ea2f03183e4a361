"""The MaskGIT transformer: a bidirectional BERT-style (post-LN) encoder over [condition] + h*w tokens.

Vocabulary = K codes + C classes (+ 1 "no class" id when ``null_class``) + 1 mask id (the last).
Head: Dense -> GELU -> LayerNorm -> logits through the transposed token embedding + a learned bias;
callers see the first K logits only. The same blocks, made causal with a KV cache, form the AR baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import TransformerConfig
from maskgit.errors import MaskGITError
from maskgit.inference.kernels import attention, gelu_tanh
from maskgit.sampling.arithmetic import check_class_ids

LN_EPS = 1e-12


def mlp(fc1: nn.Module, fc2: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The blocks' MLP: fc2(gelu_tanh(fc1(x)))."""
    return fc2(gelu_tanh(fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with a fused QKV projection; optional KV cache for causal decoding."""

    attention_fn = staticmethod(attention)  # the inference backend's attention (maskgit.inference.kernels)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, causal: bool = False, cache: dict | None = None,
                key_mask: torch.Tensor | None = None, step: tuple | None = None) -> torch.Tensor:
        """``key_mask`` (B, keys) bool, True = may be attended to (prefix text padding is False). ``step``: cached
        MaskGIT decoding's (store, layer, index), see ``cached_keys``."""
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # (B,H,L,d)
        if step is not None:
            k, v = cached_keys(step, k, v)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            # with a cache, queries are the newest positions: causal within them, all past keys visible
            causal = causal and L > 1
        mask = None
        if causal and k.shape[2] != L:  # queries after the cached keys: each sees the past and itself
            mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - L)
            causal = False
        elif key_mask is not None:
            mask, causal = key_mask[:, None, None, :], False
        y = self.attention_fn(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, W))  # (B, L, W)


class CrossAttention(nn.Module):
    """Image tokens attend to (projected) text-encoder tokens."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, W = x.shape
        d = W // self.heads
        q = self.q(x).view(B, L, self.heads, d).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        # a row with no real token would give NaN: let it attend everywhere instead
        m = None if ctx_mask is None else (ctx_mask | ~ctx_mask.any(-1, keepdim=True))[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, W))


class Block(nn.Module):
    """Post-LN: x = LN(x + Drop(Attn(x))); [x = LN(x + Drop(XAttn(x, text)))]; x = LN(x + Drop(MLP(x)))."""

    mlp_fn = staticmethod(mlp)  # packed inference layers swap in a fused one (maskgit.inference.kernels)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_ln = nn.LayerNorm(cfg.width, eps=LN_EPS)
        cross = cfg.text_dim > 0 and cfg.text_mode == "cross"
        self.cross = CrossAttention(cfg) if cross else None
        self.cross_ln = nn.LayerNorm(cfg.width, eps=LN_EPS) if cross else None
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.mlp_ln = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, causal=False, cache=None, ctx=None, ctx_mask=None, key_mask=None, step=None):
        x = self.attn_ln(x + self.drop(self.attn(x, causal, cache, key_mask, step)))
        if self.cross is not None:
            x = self.cross_ln(x + self.drop(self.cross(x, ctx, ctx_mask)))
        return self.mlp_ln(x + self.drop(self.mlp_fn(self.fc1, self.fc2, x)))


def cached_keys(step: tuple, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's keys and values in cached decoding (``SampleConfig.cache``). ``step`` = (store, layer, index):
    at a full step (index None) the layer's ``k, v`` (B,H,L,d) over every sequence position are kept in ``store``
    (contiguous copies) and used as they are; at a cheap step, where the layer ran only the sequence positions
    ``index`` (B,P), the stored ones with those positions replaced by the fresh ``k, v`` (B,H,P,d), in place:
    every cheap step of a group writes the same positions, so the others keep the full step's values. A cheap step
    of B rows after a full step of 2B (unguided after guided) reads the first B: the conditional branch."""
    store, layer, index = step
    if index is None:
        store[layer] = (k.contiguous(), v.contiguous())
        return k, v
    if layer not in store:
        raise MaskGITError("cached decoding: a cheap step needs the keys and values of a full step first")
    ck, cv = store[layer]
    if ck.shape[0] != k.shape[0]:
        if ck.shape[0] != 2 * k.shape[0]:
            raise MaskGITError(f"cached decoding: {k.shape[0]} rows against a cache of {ck.shape[0]}")
        ck, cv = ck[:k.shape[0]], cv[:k.shape[0]]
    rows = torch.arange(k.shape[0], device=k.device)[:, None]
    ck.transpose(1, 2)[rows, index] = k.transpose(1, 2).to(ck.dtype)  # (B,P,H,d) rows of (B,L,H,d)
    cv.transpose(1, 2)[rows, index] = v.transpose(1, 2).to(cv.dtype)
    return ck, cv


def init_weights(module: nn.Module) -> None:
    """Truncated normal(0.02) for weights and embeddings, zeros for biases, as the official model."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


class TokenTransformer(nn.Module):
    """Shared body of the bidirectional and causal models: embeddings, blocks and the tied logits head."""

    causal = False

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.width)
        self.pos_emb = nn.Parameter(torch.zeros(c.num_tokens + 1, c.width))
        self.emb_ln = nn.LayerNorm(c.width, eps=LN_EPS)
        self.drop = nn.Dropout(c.dropout)
        self.text_proj = nn.Linear(c.text_dim, c.width) if c.text_dim > 0 else None
        self.null_text = nn.Parameter(torch.zeros(max(c.text_len, 1), c.text_dim)) if c.text_dim > 0 else None
        # prefix mode: the text tokens' own positions in the shared sequence
        self.text_pos = nn.Parameter(torch.zeros(max(c.text_len, 1), c.width)) \
            if c.text_dim > 0 and c.text_mode == "prefix" else None
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.depth)])
        self.head_dense = nn.Linear(c.width, c.width)
        self.head_ln = nn.LayerNorm(c.width, eps=LN_EPS)
        self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))
        init_weights(self)
        nn.init.trunc_normal_(self.pos_emb, std=0.02, a=-0.04, b=0.04)
        if self.text_pos is not None:
            nn.init.trunc_normal_(self.text_pos, std=0.02, a=-0.04, b=0.04)

    # ---- conditioning
    def cond_ids(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Class labels (B,) in [0, C), or -1 for "no class" -> condition token ids (B,)."""
        c = self.config
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if labels.shape != (batch,):
            raise MaskGITError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        # the pipelines checked their labels; this guards direct calls (training, tests) with one device sync
        low = -1 if c.null_class or c.num_classes <= 0 else 0
        if ((labels < low) | (labels >= c.num_classes)).any():
            names = (getattr(self, "meta", None) or {}).get("class_names")
            check_class_ids(labels.tolist(), c.num_classes, c.null_class, names)  # raises, in its wording
        null = c.codebook_size + c.num_classes if c.null_class else c.mask_id
        return torch.where(labels >= 0, c.codebook_size + labels, torch.full_like(labels, null))

    def text_context(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int):
        """Text embeddings (B,L,D) + mask (B,L) bool (True = attend) -> projected context; None = null text."""
        if self.text_proj is None:
            if text is not None:
                raise MaskGITError("this model is not text-conditioned (text_dim=0): it takes no text")
            return None, None
        if text is None:  # unconditional: the learned null-text embedding
            text = self.null_text[None].expand(batch, -1, -1)
            text_mask = None
        if text.ndim != 3 or text.shape[0] != batch or text.shape[-1] != self.config.text_dim:
            raise MaskGITError(f"text embeddings must have shape ({batch}, L, {self.config.text_dim}), "
                               f"got {tuple(text.shape)}")
        if text_mask is not None and text_mask.shape != text.shape[:2]:
            raise MaskGITError(f"text_mask must have shape {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        return self.text_proj(text), (None if text_mask is None else text_mask.bool())

    # ---- body
    def embed(self, ids: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position embeddings of ``ids`` (B,L) at positions offset.., or at ``positions`` (B,L)."""
        L = ids.shape[1]
        pos = self.pos_emb[offset:offset + L] if positions is None else self.pos_emb[positions]
        return self.drop(self.emb_ln(self.tok_emb(ids) + pos))

    def run_blocks(self, x, cache=None, ctx=None, ctx_mask=None, kv: dict | None = None, index=None):
        """Blocks over x (B, L, W). With prefix text, ctx (B, Lt, W) is prepended to the sequence (padding
        masked out as keys) and removed again from the output. ``kv``: cached decoding's store of every layer's
        keys and values, filled when ``index`` is None; with ``index`` (B,P) x holds only those sequence positions
        (after the condition token; the text prefix is then read from the store too)."""
        key_mask, cheap = None, index is not None
        if ctx is not None and self.text_pos is not None:
            Lt = ctx.shape[1]
            if Lt > self.text_pos.shape[0]:
                raise MaskGITError(f"{Lt} text tokens; this model takes at most {self.text_pos.shape[0]}")
            if cheap:
                index = index + Lt
            else:
                x = torch.cat([self.emb_ln(ctx + self.text_pos[:Lt]), x], 1)
            if ctx_mask is not None:  # (the image tokens are always keys, so no row is left empty)
                image = self.config.num_tokens + 1 if cheap else x.shape[1] - Lt
                key_mask = torch.cat([ctx_mask, ctx_mask.new_ones(x.shape[0], image)], 1)
            ctx = ctx_mask = None
            for i, blk in enumerate(self.blocks):
                x = blk(x, self.causal, None, None, None, key_mask, None if kv is None else (kv, i, index))
            return x if cheap else x[:, Lt:]
        for i, blk in enumerate(self.blocks):
            x = blk(x, self.causal, None if cache is None else cache[i], ctx, ctx_mask,
                    step=None if kv is None else (kv, i, index))
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., W) -> logits over the K codes (..., K)."""
        K = self.config.codebook_size
        h = self.head_ln(gelu_tanh(self.head_dense(x)))
        return h @ self.tok_emb.weight[:K].t() + self.head_bias[:K]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class MaskGITTransformer(TokenTransformer):
    """Bidirectional model: ``forward(tokens (B,N) with mask ids, labels (B,)) -> logits (B,N,K)``."""

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``positions`` (B,P) optionally restricts the head to those token positions: (B,P,K)."""
        return self._logits(tokens, labels, text, text_mask, positions)

    def forward_cached(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                       text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None, *, cache: dict,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
        """A step of cached decoding (``SampleConfig.cache``, sampling/cache.py), eager. ``positions`` None: a full
        step, ``forward``'s logits (B,N,K), keeping every layer's keys and values of every position in ``cache`` (a
        dict this model owns). ``positions`` (B,P): a cheap step, only those token positions run (their tokens
        taken from ``tokens``), each layer attending to the cached keys and values of every other position plus
        the fresh ones of these -> logits (B,P,K). A row's repeated position is computed twice, the same way."""
        if positions is None:
            cache.clear()
        return self._logits(tokens, labels, text, text_mask, positions, cache)

    def _logits(self, tokens, labels, text, text_mask, positions, kv=None):
        B, N = tokens.shape
        if N != self.config.num_tokens:
            raise MaskGITError(f"expected {self.config.num_tokens} tokens per sample, got {N}")
        ids = torch.cat([self.cond_ids(labels, B, tokens.device)[:, None], tokens], 1)  # (B, 1+N)
        ctx, ctx_mask = self.text_context(text, text_mask, B)
        if kv is not None and positions is not None:  # a cheap step: only the sequence positions 1 + positions
            seq = positions + 1
            return self.head(self.run_blocks(self.embed(ids.gather(1, seq), positions=seq), ctx=ctx,
                                             ctx_mask=ctx_mask, kv=kv, index=seq))  # (B, P, K)
        x = self.run_blocks(self.embed(ids), ctx=ctx, ctx_mask=ctx_mask, kv=kv)[:, 1:]  # (B, N, W)
        if positions is not None:
            x = x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))  # (B, P, W)
        return self.head(x)


def count_flops(cfg: TransformerConfig, seq: int | None = None) -> float:
    """Matmul FLOPs of one forward pass over ``seq`` positions (2 per multiply-add)."""
    L = seq or cfg.num_tokens + 1
    W, M = cfg.width, cfg.mlp_dim
    per_layer = 2 * L * (4 * W * W + 2 * W * M) + 2 * 2 * L * L * W
    head = 2 * (L - 1) * (W * W + W * cfg.codebook_size)
    return float(cfg.depth * per_layer + head)
