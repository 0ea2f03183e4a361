"""MaskGIT decoding in numpy: the one decode loop of ``maskgit.sampling.decoding.decode`` (``arithmetic.decode_loop``)
over numpy arrays, without PyTorch.

Same mask schedule (official float32 arithmetic), same Gumbel-max token sampling (temperature, top-k, top-p), same
Gumbel choice noise on the model's confidence, the same fixed orders (Halton, random), same guidance: the loop is
the PyTorch decoder's own, and ``NumpyOps`` gives it numpy's operations. The uniform noise comes from numpy
generators (``Noise``) or from any object with ``uniform(shape) -> float32 array`` (a test can feed PyTorch's draws,
which then gives the same tokens as the PyTorch decoder). Nothing here imports torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.arithmetic import F32, decode_loop
from maskgit.step_plan import cache_pattern


class Noise:
    """Uniform [0, 1) float32 noise: one numpy generator for the batch, or one per row (each row then draws what
    it draws decoded alone with its seed)."""

    def __init__(self, seed: int | list[int] | None = 0):
        self.per_row = isinstance(seed, (list, tuple))
        seeds = list(seed) if self.per_row else [0 if seed is None else seed]
        if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
            raise MaskGITError(f"seeds must be integers, got {seed!r}")
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        if not self.per_row:
            return self.rngs[0].random(shape, dtype=F32)
        if shape[0] != len(self.rngs):
            raise MaskGITError(f"noise for {shape[0]} rows requested from {len(self.rngs)} per-row seeds")
        return np.concatenate([g.random((1, *shape[1:]), dtype=F32) for g in self.rngs])


def check_config(cfg: SampleConfig) -> SampleConfig:
    """What the runtime can decode with (its SampleConfig checked its fields when it was made)."""
    if not isinstance(cfg, SampleConfig):
        raise MaskGITError(f"config must be a SampleConfig, got {type(cfg).__name__}")
    if cfg.candidates != 1:
        raise MaskGITError("the ONNX runtime decodes one candidate per image (candidates=1)")
    if cfg.sampler != "maskgit":
        raise MaskGITError(f"the ONNX runtime decodes with the maskgit sampler, not {cfg.sampler!r}")
    if cache_pattern(cfg.cache):
        raise MaskGITError(f"cached decoding is not in the runtime (cache={cfg.cache!r}): use cache='off'")
    return cfg


class NumpyOps:
    """The decode loop's array operations (``arithmetic.ArrayOps``) on numpy arrays, with the decode's noise."""

    def __init__(self, noise):
        self.noise = noise

    def scalar(self, value):
        return F32(value)

    def uniform(self, shape):
        return np.array(self.noise.uniform(shape), dtype=F32)  # a fresh copy: the gumbel noise is made in place

    def clip_(self, x, lo, hi):
        return np.clip(x, lo, hi, out=x)

    def log_(self, x):
        return np.log(x, out=x)

    def neg_(self, x):
        return np.negative(x, out=x)

    def float32(self, x):
        return np.asarray(x, F32)

    def softmax(self, x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def log_softmax(self, x):
        z = x - x.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def cumsum(self, x):
        return np.cumsum(x, -1)

    def kth_largest(self, x, k):
        K = x.shape[-1]
        return np.partition(x, K - k, axis=-1)[..., K - k:K - k + 1]

    def sort_desc(self, x):
        idx = np.argsort(-x, axis=-1, kind="stable")
        return np.take_along_axis(x, idx, -1), idx

    def unsort(self, values, idx):
        out = np.empty_like(values)
        np.put_along_axis(out, idx, values, -1)
        return out

    def take(self, x, idx):
        return np.take_along_axis(x, idx[..., None], -1)[..., 0]

    def rank(self, x):
        return np.argsort(np.argsort(x, -1, kind="stable"), -1, kind="stable")

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def fill(self, x, cond, value):
        return np.where(cond, x.dtype.type(value), x)

    def expand(self, x, shape):
        return np.broadcast_to(x, shape)

    def to_numpy(self, x):
        return np.asarray(x)

    def from_numpy(self, x):
        return x


LogitsFn = Callable[[np.ndarray, bool], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def decode(logits_fn: LogitsFn, tokens: np.ndarray, config: SampleConfig, mask_id: int, noise=None,
           callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """Fill every ``mask_id`` in ``tokens`` (B,N) int64; known tokens never change. ``logits_fn(tokens, guided)``
    returns logits (B,N,K), or with guidance the pair (conditional, unconditional). ``noise``: a ``Noise``
    (default seed 0) or any object with ``uniform(shape)``."""
    cfg = check_config(config)
    cur = np.array(tokens, dtype=np.int64)
    if cur.ndim != 2:
        raise MaskGITError(f"decode expects tokens (B,N), got shape {cur.shape}")
    return decode_loop(NumpyOps(Noise(0) if noise is None else noise), logits_fn, cur, cfg, mask_id, callback)
