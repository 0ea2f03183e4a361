"""glibc malloc thresholds for the process (set by the CLI and server entry points and by CPU pipelines only):
large freed blocks kept for reuse while sampling, bounded for long streaming jobs. ``MASKGIT_TUNE_MALLOC=0``
(``settings``) leaves glibc's defaults."""

from __future__ import annotations

from maskgit.inference.settings import settings

MALLOC_THRESHOLD = 1 << 30  # bytes
_malloc_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep large freed blocks for reuse instead of returning them to the OS (glibc ``mallopt``; process-wide).

    glibc serves every allocation above its mmap threshold, which it never raises past 32 MiB, with a fresh
    ``mmap`` and gives it back on free; each use then pays a page fault per 4 KiB. One 256 px activation of the
    VQGAN decoder (128 channels, fp32) is 33.5 MiB, just over, so every layer there re-faulted its output: about a
    tenth of a decode's time. Raising the mmap and trim thresholds to ``MALLOC_THRESHOLD`` keeps those blocks in the
    heap. Results do not change; the process keeps up to that much freed memory for reuse. Called by the CLI and by
    CPU pipelines; ``MASKGIT_TUNE_MALLOC=0`` turns it off. Returns whether the thresholds are set (False off glibc)."""
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if not settings().tune_malloc:
        return False
    _malloc_tuned = set_malloc_thresholds(MALLOC_THRESHOLD, MALLOC_THRESHOLD)
    return _malloc_tuned


STREAM_MMAP_THRESHOLD = 4 << 20  # bytes
STREAM_TRIM_THRESHOLD = 128 << 10  # glibc's default


def bound_malloc() -> bool:
    """For long streaming jobs (``maskgit tokenize``): a fixed 4 MiB mmap threshold, so blocks above it always go
    back to the OS when freed. glibc's default raises the threshold as large blocks are freed (up to 32 MiB), and
    the 1-17 MiB activations of a 256 px encoder then fragment the heap: peak memory grew by a third from 2,000 to
    20,000 images (``benchmarks/data_scale.py``); with this it stays flat. Skipped with ``MASKGIT_TUNE_MALLOC=0``;
    process-wide, inherited by forked loader workers."""
    if not settings().tune_malloc:
        return False
    return set_malloc_thresholds(STREAM_MMAP_THRESHOLD, STREAM_TRIM_THRESHOLD)


_trim = None


def trim_malloc() -> bool:
    """glibc ``malloc_trim(0)``: give the freed memory of every arena back to the OS. The server calls it after a
    request with a large body: with ``tune_malloc``'s thresholds the body's copies (raw bytes, JSON text, base64,
    PNG chunks) would otherwise stay in the heap after the answer, so each burst of large uploads raised the
    resident memory for good. False where there is no glibc."""
    global _trim
    if _trim is None:
        import ctypes
        import ctypes.util
        try:
            _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    return bool(_trim and _trim(0) is not None)


def set_malloc_thresholds(mmap: int, trim: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, mmap)`` and ``mallopt(M_TRIM_THRESHOLD, trim)``; False where there is no
    glibc (macOS, Windows, musl) or it refuses."""
    import ctypes
    import ctypes.util
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
