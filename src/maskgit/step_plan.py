"""The per-step plan of a decode, without torch or numpy: which steps run the whole transformer and which reuse its
cached keys and values (``SampleConfig.cache``), and which steps pay for guidance's unconditional pass
(``SampleConfig.cfg_start`` / ``cfg_end``, and ``cfg_every``: on which guided steps it runs, the others reusing
the last guided difference). ``config.check_sample_fields`` checks both with ``check_step_plan``; the
PyTorch decoder (``sampling.decoding`` + ``sampling.cache``) and the numpy runtime read the plan from here.

Cache schedules: ``"off"`` (every step full, today's decoder), ``"everyK"`` (a full step, then K - 1 cheap ones,
repeating: ``every2`` = F C F C ..., ``every1`` = all full through the cached path) or a string of ``F`` (full) and
``C`` (cheap), one per step counted from the decode's first step, repeating when shorter than the steps. The first
step a decode runs is always full (it fills the cache)."""

from __future__ import annotations

import math
import numbers
import re

from maskgit.errors import MaskGITError

MAX_PATTERN = 256  # characters of an explicit F/C schedule
_EVERY = re.compile(r"every([1-9][0-9]{0,2})")
_PATTERN = re.compile(r"F[FC]*")


def cache_pattern(spec) -> str:
    """``SampleConfig.cache`` as its repeating F/C pattern; "" for "off". A bad value is one line naming it."""
    if isinstance(spec, str):
        if spec == "off":
            return ""
        m = _EVERY.fullmatch(spec)
        if m:
            return "F" + "C" * (int(m[1]) - 1)
        if len(spec) <= MAX_PATTERN and _PATTERN.fullmatch(spec):
            return spec
    raise MaskGITError(f"cache must be 'off', 'everyK' (K in 1..999: a full step, then K-1 cheap ones) or F/C per "
                       f"step starting with F (at most {MAX_PATTERN}, e.g. FCCFC), got {spec!r}")


def full_steps(spec: str, start_step: int, steps: int) -> list[bool]:
    """Per step index 0..steps-1: whether it runs the whole transformer (steps before ``start_step`` are not run);
    the first step run is always full. Every step is full when the cache is off."""
    pattern = cache_pattern(spec) or "F"
    plan = [True] * steps
    for s in range(start_step + 1, steps):
        plan[s] = pattern[(s - start_step) % len(pattern)] == "F"
    return plan


MAX_CFG_EVERY = 1000


def in_guidance_interval(cfg, step: int) -> bool:
    """Whether ``step`` is guided at all: the scale is not 0 and its progress step / steps lies in
    [cfg_start, cfg_end). The defaults (0, 1) cover every step."""
    return cfg.cfg != 0 and cfg.cfg_start <= step / cfg.steps < cfg.cfg_end


def guided_step(cfg, step: int) -> bool:
    """Whether the unconditional pass runs at ``step``: a step of the guidance interval and, with ``cfg_every`` K,
    the first of every K guided steps the decode runs (counted from ``start_step``). K = 1: every guided step."""
    if not in_guidance_interval(cfg, step):
        return False
    k = cfg.cfg_every
    return k == 1 or sum(in_guidance_interval(cfg, s) for s in range(cfg.start_step, step)) % k == 0


def reused_step(cfg, step: int) -> bool:
    """Whether ``step`` is guided without its own unconditional pass: it reuses the guided difference
    (conditional - unconditional logits) of the last step that ran one (``cfg_every`` > 1)."""
    return in_guidance_interval(cfg, step) and not guided_step(cfg, step)


def check_step_plan(cfg) -> None:
    """The cache schedule and the guidance interval of a SampleConfig, or one line naming the field."""
    lo, hi = cfg.cfg_start, cfg.cfg_end
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) for v in (lo, hi)) \
            or not 0 <= lo <= hi <= 1:
        raise MaskGITError(f"cfg_start and cfg_end must be numbers with 0 <= cfg_start <= cfg_end <= 1 (guidance "
                           f"runs on the steps whose progress t/T lies in [cfg_start, cfg_end)), got {lo!r}, {hi!r}")
    k = cfg.cfg_every
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= MAX_CFG_EVERY:
        raise MaskGITError(f"cfg_every must be an integer in 1..{MAX_CFG_EVERY} (the unconditional pass on every "
                           f"K-th guided step, the difference reused between), got {k!r}")
    if cache_pattern(cfg.cache) and cfg.sampler != "maskgit":
        raise MaskGITError(f"cached decoding (cache={cfg.cache!r}) runs with the maskgit sampler, not "
                           f"{cfg.sampler!r}: use cache='off'")
