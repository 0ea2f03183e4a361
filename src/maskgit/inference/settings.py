"""The process-wide speed switches: every ``MASKGIT_*`` environment variable that changes how (not what) the
library computes, read once, on first use, into one ``Settings``.

- ``MASKGIT_FUSED_ATTENTION=0``: no oneDNN Graph fused attention kernel for bf16 CPU inference
  (``kernels.fused_cpu_attention``).
- ``MASKGIT_FP32_LINEAR=auto|mkl|onednn``: the library of the CPU's fp32 linear layers at inference
  (``cpu.fp32_linear_backend``; checked there, where it is used).
- ``MASKGIT_TUNE_MALLOC=0``: glibc's own malloc thresholds (``malloc.tune_malloc`` / ``bound_malloc``).

Changing the environment afterwards has no effect until ``reset()`` (tests set a variable, then reset)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Settings:
    fused_attention: bool = True  # MASKGIT_FUSED_ATTENTION (anything but "0" keeps it on)
    fp32_linear: str = "auto"  # MASKGIT_FP32_LINEAR, as given
    tune_malloc: bool = True  # MASKGIT_TUNE_MALLOC (anything but "0" keeps it on)


def read_settings(environ: Mapping[str, str]) -> Settings:
    """The switches as ``environ`` sets them (unset: the defaults)."""
    return Settings(fused_attention=environ.get("MASKGIT_FUSED_ATTENTION", "1") != "0",
                    fp32_linear=environ.get("MASKGIT_FP32_LINEAR", "auto"),
                    tune_malloc=environ.get("MASKGIT_TUNE_MALLOC", "1") != "0")


_current: Settings | None = None


def settings() -> Settings:
    """This process's switches, read from the environment on the first call."""
    global _current
    if _current is None:
        _current = read_settings(os.environ)
    return _current


def reset() -> None:
    """Forget the switches read, so the next ``settings()`` reads the environment again."""
    global _current
    _current = None
