"""MaskGIT iterative parallel decoding in PyTorch: the one decode loop (``arithmetic.decode_loop``, shared with the
numpy runtime) over torch tensors, behind generation and every edit.

``decode`` never sees a model: it receives ``logits_fn(tokens (B,N), guided: bool)`` which returns logits
(B,N,K), or when ``guided`` a pair (conditional, unconditional) computed in one batched forward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling import amused, arithmetic
from maskgit.sampling.arithmetic import (  # noqa: F401  (re-exported: the decoder's public names)
    choice_noise_scale,
    decode_loop,
    guidance_scale,
    guide,
)
from maskgit.sampling.cache import CachedSteps
from maskgit.sampling.noise import NoiseSource, uniform
from maskgit.step_plan import cache_pattern

LogitsFn = Callable[[torch.Tensor, bool], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


class TorchOps:
    """The decode loop's array operations (``arithmetic.ArrayOps``) on torch tensors on ``device``, with the
    decode's noise source (one torch.Generator, or RowGenerators by blocks of rows)."""

    def __init__(self, generator: NoiseSource, device):
        self.generator, self.device = generator, device

    def scalar(self, value):
        return value  # torch takes a Python float as it is

    def uniform(self, shape):
        return uniform(shape, self.generator, self.device)

    def clip_(self, x, lo, hi):
        return x.clamp_(lo, hi)

    def log_(self, x):
        return x.log_()

    def neg_(self, x):
        return x.neg_()

    def float32(self, x):
        return x.float()

    def softmax(self, x):
        return x.softmax(-1)

    def log_softmax(self, x):
        return torch.log_softmax(x, -1)

    def cumsum(self, x):
        return x.cumsum(-1)

    def kth_largest(self, x, k):
        return x.topk(k, dim=-1).values[..., -1:]

    def sort_desc(self, x):
        return x.sort(dim=-1, descending=True)

    def unsort(self, values, idx):
        return torch.empty_like(values).scatter_(-1, idx, values)

    def take(self, x, idx):
        return x.gather(-1, idx[..., None])[..., 0]

    def rank(self, x):
        return x.argsort(-1).argsort(-1)

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def fill(self, x, cond, value):
        return x.masked_fill(cond, value)

    def expand(self, x, shape):
        return x.expand(*shape)

    def to_numpy(self, x):
        return x.cpu().numpy()

    def from_numpy(self, x):
        return torch.from_numpy(x).to(self.device)


def sample_tokens(logits: torch.Tensor, cfg: SampleConfig, generator) -> torch.Tensor:
    """Draw one code per position from softmax(logits / temperature) (Gumbel-max); temperature 0 = argmax."""
    return arithmetic.sample_tokens(TorchOps(generator, logits.device), logits, cfg)


def mask_counts(n0: torch.Tensor, unknown: torch.Tensor, cfg: SampleConfig, step: int) -> torch.Tensor:
    """How many tokens stay masked after ``step``: floor(N0 * gamma((t+1)/T)) in the official float32
    arithmetic, clamped to [1, unknown - 1] (``arithmetic.mask_counts``)."""
    return arithmetic.mask_counts(cfg.schedule, step, cfg.steps, n0, unknown, TorchOps(None, unknown.device))


class AmusedSteps:
    """The aMUSEd reference scheduler as the loop's ``reference`` hook (``SampleConfig.sampler = "amused"``,
    sampling/amused.py): its guidance, multinomial token draws and remasking."""

    def __init__(self, ops: TorchOps, config: SampleConfig, n0: torch.Tensor, n: int, mask_id: int):
        self.ops, self.config, self.n, self.mask_id = ops, config, n, mask_id
        self.temps = amused.noise_temperatures(config).to(ops.device)
        # the masked fraction at the start; 1 when an edit resumes the schedule at start_step
        resumed = torch.ones(n0.shape[0], 1, device=ops.device)
        self.start_ratio = (n0.float() / n)[:, None] if config.start_step == 0 else resumed  # (B, 1)
        self.probs = None  # the last draw's softmax, which remasking ranks by

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        return amused.guide(cond, uncond, scale)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        plain = c.temperature in (0, 1) and not c.top_k and c.top_p == 1
        z = logits if plain else arithmetic.filter_logits(self.ops, logits / c.temperature, c.top_k, c.top_p)
        sampled, self.probs = amused.sample(z, c.temperature == 0, self.ops.generator)
        return sampled

    def remask(self, step: int, sampled: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        count = amused.keep_masked(self.config, step, self.start_ratio, unknown, self.n)
        return amused.remask(sampled, self.probs, unknown, count, self.temps[step],
                             self.ops.uniform(sampled.shape), self.mask_id)


@torch.inference_mode()
def decode(logits_fn: LogitsFn, tokens: torch.Tensor, config: SampleConfig, mask_id: int,
           generator: NoiseSource = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Fill every ``mask_id`` in ``tokens`` (B,N) by MaskGIT decoding; known tokens never change.

    Per sample, N0 = the number of masked tokens at the start, so generation (all masked) and editing (some
    masked) are the same call. ``callback(step, tokens_after_step, sampled)`` sees every intermediate grid.
    ``generator``: one torch.Generator for the batch, or RowGenerators (one per block of rows). Guidance runs on the
    steps ``step_plan.guided_step`` names (``cfg_start`` / ``cfg_end``); with ``config.cache`` on, ``logits_fn`` is
    also called as ``logits_fn(tokens, guided, cache=store[, positions=(B,P)])`` (see sampling/cache.py)."""
    if not isinstance(config, SampleConfig):  # a SampleConfig checked its fields when it was made
        raise MaskGITError(f"config must be a SampleConfig, got {type(config).__name__}")
    if tokens.ndim != 2:
        raise MaskGITError(f"decode expects tokens (B,N), got {tuple(tokens.shape)}")
    cur = tokens.clone()
    ops = TorchOps(generator, cur.device)
    n0 = (cur == mask_id).sum(1)  # (B,)
    reference = AmusedSteps(ops, config, n0, cur.shape[1], mask_id) if config.sampler == "amused" else None
    cached = CachedSteps(config, n0, ops) if cache_pattern(config.cache) else None
    return decode_loop(ops, logits_fn, cur, config, mask_id, callback, cached, reference)
