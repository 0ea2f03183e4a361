"""Cached decoding, the decode loop's side (``SampleConfig.cache``; which steps are full: ``step_plan``).

A full step runs the whole transformer over all N tokens, and the model keeps every layer's keys and values in a
store it owns (``logits_fn(tokens, guided, cache=store)``). The full step also fixes its group (itself and the cheap
steps up to the next full one) and the positions R that group will decide: the masked positions the full step ranks
highest, as many as the mask schedule reveals by the group's last step (every masked one when the group ends the
decode). A cheap step runs only R (``logits_fn(tokens, guided, cache=store, positions=(B,P))``): every layer computes
queries, keys and values for R and attends to the cached keys and values of the other positions (known tokens,
tokens decided before the group, masked positions outside R) plus R's fresh ones. Only positions of R may be revealed
at a cheap step; R's tokens decided earlier in the group are recomputed, so the step sees them as decided (cached
keys of a just-decided token would still be those of a mask, and the step would repeat the full step's logits).
With the fixed orders (halton, random) R is exactly what the group reveals uncached: the same positions are
revealed and only the token values are approximate; with confidence, each cheap step re-ranks within R.

Rows of a batch may differ in how many positions they recompute (editing): each row's R is padded to the batch's
largest by repeating its first position (a repeated position computes the same keys and values, so the row's result
does not depend on the padding), and P is rounded up to a multiple of N/16 so few shapes reach the kernels. The
noise a step draws has the shape of the whole grid, as uncached, so a row draws what it draws decoded alone."""

from __future__ import annotations

import torch

from maskgit.config import SampleConfig
from maskgit.sampling.arithmetic import mask_counts
from maskgit.step_plan import full_steps, guided_step


def padded_positions(allowed: torch.Tensor) -> torch.Tensor:
    """(B,N) bool -> (B,P) long: each row's True positions in increasing order, padded by repeating the row's first
    one; P = the largest count rounded up to a multiple of N/16 (at most N, at least 1)."""
    B, N = allowed.shape
    counts = allowed.sum(1)
    unit = max(1, N // 16)
    P = min(N, max(1, -(-int(counts.max()) // unit) * unit))
    order = torch.argsort((~allowed).to(torch.uint8), dim=1, stable=True)[:, :P]
    j = torch.arange(P, device=allowed.device)[None]
    return torch.where(j < counts[:, None], order, order[:, :1])


class CachedSteps:
    """The state of one cached decode: the schedule, the model's key/value store, the current group's positions."""

    def __init__(self, config: SampleConfig, n0: torch.Tensor, ops):
        self.config, self.n0, self.ops = config, n0, ops  # ops: the decode's TorchOps (for the mask counts)
        self.full = full_steps(config.cache, config.start_step, config.steps)
        self.store: dict = {}  # the model's keys and values of the last full step
        self.index: torch.Tensor | None = None  # (B,P) the positions the group's cheap steps run; None: none
        self.allowed: torch.Tensor | None = None  # (B,N) bool, the same positions
        self.base = None  # the last full step's logits; a (conditional, unconditional) pair when its group is guided
        self.cheap = False  # whether the current step is a cheap one

    def group_end(self, step: int) -> int:
        """The last step of the group a full ``step`` begins."""
        end = step
        while end + 1 < self.config.steps and not self.full[end + 1]:
            end += 1
        return end

    def logits(self, logits_fn, cur: torch.Tensor, step: int, guided: bool):
        """This step's logits (B,N,K), or the (conditional, unconditional) pair when ``guided``. A full step of a
        group with a guided step runs both branches (the cache then holds both), whether or not it is guided."""
        self.cheap = not self.full[step] and self.index is not None
        if not self.cheap:
            both = any(guided_step(self.config, s) for s in range(step, self.group_end(step) + 1))
            self.base, self.index, self.allowed = logits_fn(cur, both, cache=self.store), None, None
            return self.base if guided or not both else self.base[0]
        part = logits_fn(cur, guided, cache=self.store, positions=self.index)  # (B,P,K) or a pair
        base = self.base if guided or not isinstance(self.base, tuple) else self.base[0]
        if not guided:
            base, part = (base,), (part,)
        idx = self.index[..., None].expand(-1, -1, base[0].shape[-1])
        out = tuple(b.clone().scatter_(1, idx, p.to(b.dtype)) for b, p in zip(base, part))
        return out if guided else out[0]

    def restrict(self, score: torch.Tensor, unknown_map: torch.Tensor) -> torch.Tensor:
        """At a cheap step the masked positions it did not run stay masked (lowest score)."""
        if not self.cheap:
            return score
        return torch.where(unknown_map & ~self.allowed, torch.full_like(score, -torch.inf), score)

    def plan(self, step: int, rank: torch.Tensor, unknown_map: torch.Tensor) -> None:
        """After a full step's ranking (0 = stays masked first): the positions its group will decide."""
        if self.cheap:
            return
        end = self.group_end(step)
        if end == step:
            return
        keep = unknown_map.sum(1)
        for s in range(step, end + 1):  # how many stay masked after the group's last step
            keep = torch.zeros_like(keep) if s == self.config.steps - 1 else mask_counts(
                self.config.schedule, s, self.config.steps, self.n0, keep, self.ops)
        self.allowed = unknown_map & (rank >= keep[:, None])
        self.index = padded_positions(self.allowed)
