"""Choosing the checkpoint to resume from, and what an interrupted run leaves behind.

``--resume`` takes the newest checkpoint whose files match its SHA-256 manifest (each one skipped is named, with
the reason); ``--resume PATH`` takes that checkpoint, which must verify. A resumed run keeps the metrics rows up
to its checkpoint's step only. A run stopped by SIGTERM/SIGINT saves a checkpoint, writes no ``final/`` and raises
``TrainingInterrupted``; the CLI then exits with ``INTERRUPTED_EXIT_STATUS`` (130)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import verify_manifest
from maskgit.storage.files import atomic_write

log = logging.getLogger(__name__)

INTERRUPTED_EXIT_STATUS = 130  # `maskgit train` after SIGTERM/SIGINT: checkpoint saved, no final/


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` after SIGTERM/SIGINT, once a resumable checkpoint is saved (``final/`` is not
    written); the CLI exits with ``INTERRUPTED_EXIT_STATUS``."""


def checkpoint_problem(ck: Path) -> str | None:
    """Why ``ck`` cannot be resumed from (None: it can): no training state, or a file its manifest disowns."""
    if not (ck / "train_state.json").is_file():
        return "no train_state.json (not a resumable checkpoint)"
    try:
        verify_manifest(ck)
    except MaskGITError as e:
        return str(e)
    return None


def latest_checkpoint(run_dir: Path, skipped: list | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies; the ones passed over go to ``skipped`` as (path, why)."""
    run_dir = Path(run_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").exists() else []
    for ck in reversed(ckpts):
        why = checkpoint_problem(ck)
        if why is None:
            return ck
        if skipped is not None:
            skipped.append((ck, why))
    return None


def find_checkpoint(run_dir: Path, resume: bool | str | Path, say=log.info) -> Path | None:
    """``resume=True``: the newest checkpoint that verifies (saying which were skipped and why); a path: that
    checkpoint, which must verify (MaskGITError otherwise)."""
    if isinstance(resume, (str, Path)) and not isinstance(resume, bool):
        ck = Path(resume)
        if not ck.is_dir():
            raise MaskGITError(f"--resume {ck}: no such checkpoint directory")
        why = checkpoint_problem(ck)
        if why is not None:
            raise MaskGITError(f"--resume {ck}: {why}")
        return ck
    skipped: list = []
    ck = latest_checkpoint(Path(run_dir), skipped)
    for bad, why in skipped:
        say(f"skipping checkpoint {bad}: {why}")
    return ck


def truncate_metrics(file: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run logs the later steps again)."""
    if not file.exists():
        return
    keep = []
    for line in file.read_text().splitlines():
        try:
            if line.strip() and json.loads(line).get("step", 0) <= step:
                keep.append(line + "\n")
        except (json.JSONDecodeError, AttributeError):
            break  # a row cut by a kill: nothing after it was written by a completed step
    atomic_write(file, lambda f: f.write("".join(keep).encode()))
