"""The decoder without PyTorch, shared by ``sampling.decoding`` (torch) and the numpy runtime: the sample settings'
checks, schedule and order names, the official float32 mask ratio and counts, the choice-noise and guidance scales,
the 2D Halton order, and the MaskGIT decode loop itself (``decode_loop``, with its token sampling), written once
against an array-ops seam (``ArrayOps``) that each backend implements."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from maskgit.config import (
    ORDER_NAMES,
    SAMPLER_NAMES,
    SCHEDULE_ALIASES,
    SCHEDULE_NAMES,
    SampleConfig,
)
from maskgit.errors import MaskGITError
from maskgit.step_plan import guided_step, reused_step

F32 = np.float32
SCHEDULE_NAMES = SCHEDULE_NAMES  # one list of names, defined beside the SampleConfig that checks them
ALIASES = SCHEDULE_ALIASES
ORDERS = ORDER_NAMES
SAMPLERS = SAMPLER_NAMES


def check_schedule(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCHEDULE_NAMES:
        raise MaskGITError(f"unknown mask schedule {name!r}; choose one of: {', '.join(SCHEDULE_NAMES)}")
    return name


def check_order(name: str) -> str:
    if name not in ORDERS:
        raise MaskGITError(f"unknown decoding order {name!r}; choose one of: {', '.join(ORDERS)}")
    return name


SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(SampleConfig))


def model_sample_config(defaults: SampleConfig, settings: dict, can_guide: bool) -> SampleConfig:
    """The SampleConfig a model decodes with: its ``defaults`` with ``settings`` (None = the default). Every field
    is checked where the config is born (``SampleConfig.__post_init__``); this adds the model's part, once for the
    torch and numpy pipelines: guidance needs a model trained with a "no class" id (or a text model)."""
    unknown = set(settings) - set(SAMPLE_FIELDS)
    if unknown:
        raise MaskGITError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
    cfg = dataclasses.replace(defaults, **{k: v for k, v in settings.items() if v is not None})
    if cfg.cfg != 0 and not can_guide:
        raise MaskGITError("this model was trained without a 'no class' id, so it cannot use CFG (use --cfg 0, "
                           "or cfg=0)")
    return cfg


def _f32(fn, x):
    """A float32 elementary function, correctly rounded: evaluated in float64 on the float32 input and rounded once
    (a float32 kernel may be an ulp off, which moves floor() at the boundaries)."""
    return np.asarray(fn(np.asarray(x, np.float64))).astype(F32)


def mask_ratio(name: str, r, n) -> np.ndarray:
    """gamma_name(r): the fraction of ``n`` tokens still masked at progress ``r`` in [0, 1], the one mask schedule
    of training and decoding. Computed like the official ``mask_schedule.schedule``: every operation in float32
    (IEEE arithmetic, correctly rounded elementary functions), the log/exp schedules on ``n`` (a sample's own
    number of unknown tokens), clipped to [1e-6, 1]. r, n: floats or arrays that broadcast -> float32 array."""
    name = check_schedule(name)
    ratio = np.asarray(r, dtype=F32)
    nf = np.asarray(n, dtype=F32)
    one = F32(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "cosine":
            g = _f32(np.cos, F32(math.pi / 2) * ratio)
        elif name == "linear":
            g = one - ratio
        elif name == "square":
            g = one - ratio * ratio
        elif name == "cubic":
            g = one - _f32(lambda x: x ** 3, ratio)
        elif name == "sqrt":
            g = one - _f32(np.sqrt, np.maximum(ratio, F32(0)))
        elif name == "log":
            g = -_f32(np.log2, ratio) / _f32(np.log2, nf)
        else:  # exp
            g = one - _f32(np.exp2, -_f32(np.log2, nf) * (one - ratio))
    shape = np.broadcast_shapes(ratio.shape, nf.shape)
    g = np.nan_to_num(np.broadcast_to(g, shape).astype(F32), nan=1.0)  # log/exp, n <= 1: no division by 0
    return np.clip(g, F32(1e-6), one)


def decode_mask_ratio(name: str, step: int, steps: int, n0) -> np.ndarray:
    """The fraction of the N0 initially unknown tokens that stays masked after ``step`` (0-based) of ``steps``:
    ``mask_ratio`` at ``ratio = (step+1)/steps`` (a float32 division), as the official decoder computes it.
    n0: (B,) ints -> (B,) float32."""
    return mask_ratio(name, F32(step + 1) / F32(steps), n0)


def mask_counts(name: str, step: int, steps: int, n0, unknown, ops: ArrayOps | None = None):
    """How many tokens stay masked after ``step``: floor(N0 * ratio) of a float32 product, then at least one token
    revealed and one left masked, as the official decoder does (0 where nothing is unknown). n0, unknown: (B,)
    numpy arrays, or with ``ops`` that backend's arrays (counted on the host, returned as the backend's array)."""
    n0, unknown = (np.asarray(n0), np.asarray(unknown)) if ops is None else (ops.to_numpy(n0), ops.to_numpy(unknown))
    keep = np.floor(n0.astype(F32) * decode_mask_ratio(name, step, steps, n0)).astype(np.int64)
    keep = np.where(unknown > 0, np.maximum(np.minimum(keep, unknown - 1), 1), 0)
    return keep if ops is None else ops.from_numpy(keep)


def choice_noise_scale(cfg: SampleConfig, step: int) -> float:
    """choice_temperature * (1 - (t+1)/T), in float32 as the official decoder computes it."""
    ratio = F32(step + 1) / F32(cfg.steps)
    return float(F32(cfg.choice_temperature) * (F32(1) - ratio))


def guidance_scale(cfg: SampleConfig, step: int, total: int | None = None) -> float:
    """The CFG scale at ``step`` of ``total`` steps (default: the decode's T): constant, or growing linearly."""
    if cfg.cfg_schedule == "linear":
        return cfg.cfg * (step + 1) / (total or cfg.steps)
    return cfg.cfg


def radical_inverse(i: int, base: int) -> float:
    """The i-th element of the van der Corput sequence in ``base``: i's digits mirrored behind the point."""
    out, scale = 0.0, 1.0 / base
    while i:
        i, digit = divmod(i, base)
        out += digit * scale
        scale /= base
    return out


@functools.lru_cache(maxsize=32)
def halton_order(height: int, width: int) -> tuple[int, ...]:
    """Every cell of a height x width grid once, as row-major indices, in the order the 2D Halton sequence (base 2
    across the columns, base 3 down the rows) first lands in it. Successive prefixes spread evenly over the grid."""
    n = height * width
    seen: dict[int, None] = {}
    i = 0
    limit = 1000 * n + 1000  # the sequence is dense, so it reaches every cell long before this
    while len(seen) < n and i < limit:
        col = min(int(radical_inverse(i, 2) * width), width - 1)
        row = min(int(radical_inverse(i, 3) * height), height - 1)
        seen.setdefault(row * width + col, None)
        i += 1
    order = list(seen) + [c for c in range(n) if c not in seen]  # defensive; never needed in practice
    return tuple(order)


def grid_of(n: int) -> tuple[int, int]:
    """A square token grid of ``n`` positions (the Halton order is defined over the 2D grid)."""
    side = math.isqrt(n)
    if side * side != n:
        raise MaskGITError(f"the halton order needs a square token grid; got {n} positions")
    return side, side


def halton_priority(n: int) -> np.ndarray:
    """(n,) float32 priority of each position under the Halton order: higher = revealed earlier."""
    rank = np.empty(n, dtype=F32)
    rank[list(halton_order(*grid_of(n)))] = np.arange(n, dtype=F32)
    return -rank


# ---------------------------------------------------------------- the decode loop, once for torch and numpy

class ArrayOps(Protocol):
    """The array operations the decode loop needs: ``sampling.decoding.TorchOps`` (torch tensors, a torch.Generator
    or RowGenerators) and ``runtime.decoding.NumpyOps`` (numpy arrays, numpy generators). Each method is the very
    call that backend's decoder always made, so a backend decodes bit for bit as before. The loop also uses what
    both array types share: comparisons, ``~``, ``+ - * /``, ``+=``, ``.sum(1)``, ``.any()``, ``.argmax(-1)``,
    ``.shape`` and ``[..., None]`` indexing. Arrays keep the backend's device and dtypes (float32 logits, int64
    tokens); ``*_`` methods work in place on a fresh array and return it."""

    def scalar(self, value: float) -> Any: ...  # a Python float as this backend multiplies arrays by it
    def uniform(self, shape) -> Any: ...  # a fresh float32 array of uniform [0, 1) noise from the decode's source
    def clip_(self, x, lo, hi) -> Any: ...
    def log_(self, x) -> Any: ...
    def neg_(self, x) -> Any: ...
    def float32(self, x) -> Any: ...
    def softmax(self, x) -> Any: ...  # this one and those down to rank: along the last axis
    def log_softmax(self, x) -> Any: ...
    def cumsum(self, x) -> Any: ...
    def kth_largest(self, x, k: int) -> Any: ...  # (..., 1)
    def sort_desc(self, x) -> tuple[Any, Any]: ...  # (values, indices), largest first
    def unsort(self, values, idx) -> Any: ...  # values scattered back to the positions idx names
    def take(self, x, idx) -> Any: ...  # x (..., K), idx (...) -> x[..., idx]
    def rank(self, x) -> Any: ...  # each entry's rank along the last axis, 0 = smallest
    def where(self, cond, a, b) -> Any: ...
    def fill(self, x, cond, value) -> Any: ...  # x with ``value`` where cond
    def expand(self, x, shape) -> Any: ...  # broadcast, no copy
    def to_numpy(self, x) -> np.ndarray: ...
    def from_numpy(self, x: np.ndarray) -> Any: ...


def gumbel(ops: ArrayOps, shape):
    """Gumbel(0, 1) noise -log(-log(u)), u uniform, computed in place (a fresh B x N x K buffer costs more than the
    logs)."""
    u = ops.clip_(ops.uniform(shape), ops.scalar(1e-20), ops.scalar(1.0 - 1e-7))
    return ops.neg_(ops.log_(ops.neg_(ops.log_(u))))


def filter_logits(ops: ArrayOps, logits, top_k: int = 0, top_p: float = 1.0):
    """Logits outside the top-k / nucleus top-p set -> -inf."""
    if top_k and top_k < logits.shape[-1]:
        logits = ops.fill(logits, logits < ops.kth_largest(logits, top_k), -math.inf)
    if top_p < 1.0:
        s, idx = ops.sort_desc(logits)
        p = ops.softmax(s)
        drop = ops.cumsum(p) - p > top_p  # keep the smallest set reaching top_p
        logits = ops.unsort(ops.fill(s, drop, -math.inf), idx)
    return logits


def sample_tokens(ops: ArrayOps, logits, cfg: SampleConfig):
    """One code per position from softmax(logits / temperature) by Gumbel-max; temperature 0 = argmax."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    z = filter_logits(ops, logits / ops.scalar(cfg.temperature), cfg.top_k, cfg.top_p)
    noisy = gumbel(ops, z.shape)
    noisy += z
    return noisy.argmax(-1)


def guide(cond, uncond, scale: float):
    """Classifier-free guidance as MaskGIT/Muse write it: ``cond + s * (cond - uncond)``. (diffusers writes
    ``uncond + w * (cond - uncond)``: the same thing with w = 1 + s, so scale 0 here is plain conditional
    sampling.)"""
    return cond + scale * (cond - uncond)


def fixed_priority(ops: ArrayOps, order: str, rows: int, n: int):
    """(rows, n) priority of each position for the fixed orders (higher = revealed earlier), or None for
    ``confidence`` (the loop ranks by the model's confidence instead). ``random`` draws one order per image."""
    if check_order(order) == "confidence":
        return None
    if order == "halton":
        return ops.expand(ops.from_numpy(halton_priority(n)), (rows, n))
    return ops.uniform((rows, n))


def decode_loop(ops: ArrayOps, logits_fn: Callable, cur, config: SampleConfig, mask_id: int,
                callback: Callable | None = None, cached=None, reference=None):
    """MaskGIT decoding of ``cur`` (B,N) int64, whose ``mask_id`` entries are unknown; known tokens never change.

    Per sample, N0 = the number of masked tokens at the start, so generation (all masked) and editing (some masked)
    are the same call. Each step: the logits (with guidance on the steps ``step_plan.guided_step`` names; with
    ``cfg_every`` > 1 the guided steps between reuse the last guided difference, ``reused_step``), a token
    for every unknown position, then the lowest-ranked ``mask_counts`` of them masked again, ranked by the model's
    confidence in its token (plus Gumbel choice noise) or by a fixed order. ``callback(step, tokens_after_step,
    sampled)`` sees every intermediate grid. The torch decoder adds two optional hooks: ``cached`` (cached decoding,
    sampling/cache.py: ``logits``, ``restrict``, ``plan``) and ``reference`` (another sampler's arithmetic:
    ``guide``, ``sample(logits)``, ``remask(step, sampled, unknown)``)."""
    B, N = cur.shape
    n0 = (cur == mask_id).sum(1)  # (B,)
    fixed = fixed_priority(ops, config.order, B, N)  # None = rank by confidence
    guide_fn = guide if reference is None else reference.guide
    difference = None  # cfg_every > 1: the last unconditional pass's (conditional - unconditional) logits
    for step in range(config.start_step, config.steps):
        unknown = cur == mask_id
        if not unknown.any():
            break
        guided = guided_step(config, step)  # the unconditional pass runs (step_plan: interval, cfg_every)
        out = logits_fn(cur, guided) if cached is None else cached.logits(logits_fn, cur, step, guided)
        if guided and config.cfg_every > 1:
            difference = ops.float32(out[0]) - ops.float32(out[1])
        if guided:
            out = guide_fn(*out, ops.scalar(guidance_scale(config, step)))
        elif difference is not None and reused_step(config, step):  # guided with the last pass's difference
            cond = ops.float32(out)
            out = guide_fn(cond, cond - difference, ops.scalar(guidance_scale(config, step)))
        logits = ops.float32(out)
        drawn = sample_tokens(ops, logits, config) if reference is None else reference.sample(logits)
        sampled = ops.where(unknown, drawn, cur)
        if step == config.steps - 1:
            cur = sampled
        elif reference is not None:
            cur = reference.remask(step, sampled, unknown)
        else:
            if fixed is None:  # confidence: the model's own probability of the chosen token (unmodified logits)
                score = ops.take(ops.log_softmax(logits), sampled)  # (B, N)
                if config.choice_temperature > 0:
                    score = score + ops.scalar(choice_noise_scale(config, step)) * gumbel(ops, score.shape)
            else:
                score = fixed
            score = ops.fill(score, ~unknown, math.inf)  # known tokens stay
            if cached is not None:
                score = cached.restrict(score, unknown)
            keep = mask_counts(config.schedule, step, config.steps, n0, unknown.sum(1), ops)  # (B,)
            rank = ops.rank(score)  # 0 = lowest score: stays masked first
            if cached is not None:
                cached.plan(step, rank, unknown)
            cur = ops.fill(sampled, rank < keep[:, None], mask_id)
        if callback:
            callback(step, cur, sampled)
    return cur


# ---------------------------------------------------------------- the rows of a generate call (both pipelines)

def check_count(value, name: str) -> None:
    """None, or an integer >= 1 (not a bool, a float or a string)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise MaskGITError(f"{name} must be an integer >= 1, got {value!r}")


def class_ids(labels) -> list[int]:
    """Class ids as ints, from a list/tuple/range, a numpy or torch array, or one id; "3", 3.0 and True are
    refused rather than converted (-1 = no class)."""
    items = labels.tolist() if hasattr(labels, "tolist") else labels
    items = list(items) if isinstance(items, (list, tuple, range)) else [items]
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise MaskGITError(f"class labels must be integer class ids, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [int(v) for v in items]


def check_class_ids(labels, num_classes: int, null_class: bool, class_names=None,
                    what: str = "class label") -> list[int]:
    """The one rule for class labels, shared by both pipelines, the server and the model: integer ids (as
    ``class_ids``), each a class in [0, num_classes) or -1 = no class; -1 only where the model has a "no class"
    id (a model without classes takes -1 alone). ``class_names`` are named in the message when known."""
    ids = class_ids(labels)
    bad = [v for v in ids if not -1 <= v < num_classes]
    if bad:
        if num_classes <= 0:
            raise MaskGITError(f"{what}(s) {bad} out of range: this model has no classes (leave out class labels)")
        names = f" ({', '.join(class_names)})" if class_names else ""
        raise MaskGITError(f"{what}(s) {bad} out of range: this model has classes 0..{num_classes - 1}{names}")
    if num_classes > 0 and not null_class and any(v < 0 for v in ids):
        raise MaskGITError("this model has no 'no class' id: give a class label for every sample")
    return ids


def batch_rows(labels=None, num=None, prompts=None, negative_prompts=None):
    """(class ids, prompts, negative prompts) with one entry per image. ``num`` alone: that many images without
    a class; with ``labels`` or ``prompts``: ``num`` images of each, label-major (0,0,1,1,...) as the CLI's --num.
    ``negative_prompts``: one string for all, or one per prompt."""
    check_count(num, "num")
    if prompts is not None:
        if labels is not None:
            raise MaskGITError("give class labels or prompts, not both")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise MaskGITError("prompts must be a non-empty list of strings")
        if negative_prompts is not None and not isinstance(negative_prompts, str):
            if len(negative_prompts) != len(prompts):
                raise MaskGITError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts: give "
                                   "one, or one per prompt")
            negative_prompts = [p for p in negative_prompts for _ in range(num or 1)]
        prompts = [p for p in prompts for _ in range(num or 1)]
        return [-1] * len(prompts), prompts, negative_prompts
    if negative_prompts is not None:
        raise MaskGITError("negative prompts need prompts")
    if labels is None:
        if num is None:
            raise MaskGITError("give class labels or a number of samples >= 1")
        return [-1] * num, None, None
    return [v for v in class_ids(labels) for _ in range(num or 1)], None, None
