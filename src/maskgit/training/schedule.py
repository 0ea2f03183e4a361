"""The learning-rate schedule of a run, fitted to its time budget.

Without ``--max-minutes`` it is ``lr_factor``: linear warmup over ``warmup_steps``, then cosine decay to 0 at
``max_steps``. With a budget, the run measures its own step time (after 4, 8, 16, ... steps) and moves the end of
the decay to the step at which the budget will run out, shortening a warmup that would take more than a quarter of
that to a tenth of it, so warmup and decay both happen inside the budget. Every process of a torchrun job uses rank
0's estimate. Checkpoints keep the fitted schedule and the seconds spent (``state``), so a run resumed after an
interruption with the same settings continues the same schedule, and its ``--max-minutes`` counts the whole run."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from maskgit.config import TrainConfig
from maskgit.errors import MaskGITError

logger = logging.getLogger(__name__)  # the budget's estimates (the maskgit command shows INFO)

FIRST_CHECK = 4  # steps measured before the first estimate
WARMUP_MAX_SHARE = 0.25  # a warmup longer than this share of the fitted run ...
WARMUP_SHARE = 0.1  # ... is shortened to this share
TOO_FEW = 20  # fewer steps than this in the budget earns a warning
# With a step budget (no --max-minutes) the expected wall time is printed after ETA_SKIP + ETA_CHECK steps, from
# the time of the last ETA_CHECK of them: the first steps also build kernels and caches (with bf16 on a CPU they took
# twice a later step) and would make the forecast far too high.
ETA_SKIP = 8
ETA_CHECK = 16


def lr_factor(step: int, cfg: TrainConfig, warmup: int | None = None, horizon: int | None = None) -> float:
    """The LR multiplier after ``step`` steps: linear warmup, then cosine to 0 at ``horizon`` (or constant).
    ``warmup`` / ``horizon`` default to ``cfg.warmup_steps`` / ``cfg.max_steps``."""
    warmup = cfg.warmup_steps if warmup is None else warmup
    horizon = cfg.max_steps if horizon is None else horizon
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule != "cosine":
        raise MaskGITError(f"lr_schedule must be 'cosine' or 'constant', got {cfg.lr_schedule!r}")
    done = (step - warmup) / max(1, horizon - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


class BudgetSchedule:
    """``factor(step)`` for LambdaLR; ``start(step)`` when the loop starts, ``observe(step)`` after each step,
    ``over_time()`` once the budget is spent. ``clock`` returns seconds (tests pass a fake one)."""

    def __init__(self, cfg: TrainConfig, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = logger.info):
        self.cfg, self.clock, self.log = cfg, clock, log
        self.warmup, self.horizon = cfg.warmup_steps, cfg.max_steps
        self.t0, self.step0, self.next_check, self.reported = 0.0, 0, FIRST_CHECK, False
        self._restored: tuple[float, int, int] | None = None  # (seconds spent, step0, next check) from a checkpoint
        self._eta_t0: float | None = None  # the clock when the forecast's measured steps began

    def factor(self, step: int) -> float:
        return lr_factor(step, self.cfg, warmup=self.warmup, horizon=self.horizon)

    def start(self, step: int) -> None:
        """The loop starts at ``step``; a restored budget keeps its seconds spent and its check points (the time
        between a stop and the resume does not count)."""
        if self._restored is not None:
            spent, self.step0, self.next_check = self._restored
            self._restored = None
            self.t0 = self.clock() - spent
            return
        self.t0, self.step0, self.next_check = self.clock(), step, FIRST_CHECK

    def state(self) -> dict:
        """What a checkpoint keeps of the budget: the fitted warmup and horizon, the seconds spent, the checks."""
        return {"warmup": self.warmup, "horizon": self.horizon, "elapsed_s": self.elapsed(), "step0": self.step0,
                "next_check": self.next_check, "reported": self.reported, **self._settings()}

    def _settings(self) -> dict:
        c = self.cfg
        return {"max_minutes": c.max_minutes, "max_steps": c.max_steps, "warmup_steps": c.warmup_steps}

    def restore(self, state: dict | None) -> None:
        """Resume under --max-minutes: continue the saved schedule and time budget. Without a budget, or from a
        checkpoint without one (written before budgets were saved, or under other --max-minutes, --max-steps or
        --warmup-steps), the schedule follows this run's settings from the resume step, as it always did."""
        if not state or self.cfg.max_minutes <= 0 or any(state.get(k) != v for k, v in self._settings().items()):
            return
        self.warmup, self.horizon = int(state["warmup"]), int(state["horizon"])
        self.reported = bool(state.get("reported", False))
        self._restored = (float(state["elapsed_s"]), int(state["step0"]), int(state["next_check"]))

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def over_time(self) -> bool:
        return self.cfg.max_minutes > 0 and self.elapsed() / 60 > self.cfg.max_minutes

    def observe(self, step: int) -> None:
        """After ``step`` steps: at the check points, re-estimate how many steps the budget allows."""
        cfg = self.cfg
        done = step - self.step0
        if cfg.max_minutes <= 0:
            if done == ETA_SKIP:
                self._eta_t0 = self.clock()
            if done == ETA_SKIP + ETA_CHECK and self._eta_t0 is not None and step < cfg.max_steps \
                    and not self.reported and self.log is not None and _rank() == 0:
                self.reported = True
                self.log(self.eta((self.clock() - self._eta_t0) / ETA_CHECK, cfg.max_steps - step))
            return
        if done != self.next_check:
            return
        self.next_check *= 2
        elapsed = self.elapsed()
        per_step = elapsed / done
        budget_s = cfg.max_minutes * 60
        total = step + int(max(0.0, budget_s - elapsed) / max(per_step, 1e-9))
        horizon = max(step + 1, min(cfg.max_steps, total))
        warmup = cfg.warmup_steps
        if warmup > WARMUP_MAX_SHARE * horizon:
            warmup = max(1, int(WARMUP_SHARE * horizon))
        self.horizon, self.warmup = self._agree(horizon, warmup)
        if not self.reported and self.log is not None and _rank() == 0:
            self.reported = True
            self.log(self.describe(per_step, total))

    @staticmethod
    def eta(per_step: float, remaining: int) -> str:
        """The step budget's forecast, printed once the first steps are measured (the recipe's time depends on the
        machine; its quality does not)."""
        secs = per_step * remaining
        when = f"{secs / 60:.1f} min" if secs >= 90 else f"{secs:.0f} s"
        return (f"measured {per_step:.3g} s/step over steps {ETA_SKIP + 1}-{ETA_SKIP + ETA_CHECK}: the remaining "
                f"{remaining} steps take ~{when} on this machine")

    def describe(self, per_step: float, total: int) -> str:
        cfg = self.cfg
        head = (f"--max-minutes {cfg.max_minutes:g}: ~{total} steps fit at {per_step:.3g} s/step")
        if total >= cfg.max_steps:
            return f"{head}; --max-steps {cfg.max_steps} ends the run first, the LR schedule is unchanged"
        parts = [f"the LR schedule now ends at step ~{self.horizon} instead of {cfg.max_steps}"]
        if self.warmup != cfg.warmup_steps:
            parts.append(f"warmup {cfg.warmup_steps} -> {self.warmup} steps")
        text = f"{head}; " + ", ".join(parts) + " (re-estimated as the run goes)"
        if total < TOO_FEW:
            text += f". Warning: only ~{total} steps fit: too few to learn much; give more minutes"
        return text

    @staticmethod
    def _agree(horizon: int, warmup: int) -> tuple[int, int]:
        """Rank 0's numbers on every process (each measures its own clock)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([horizon, warmup], dtype=torch.int64)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, 0)
            horizon, warmup = (int(v) for v in t.cpu())
        return horizon, warmup


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
