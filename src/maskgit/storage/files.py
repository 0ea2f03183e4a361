"""Atomic file and folder writes (a reader never sees half a file, and files follow the umask), and the one cache
folder the project writes to."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path


def cache_root() -> Path:
    """The project's one cache folder, ``$MASKGIT_HOME`` (default ``~/.cache/maskgit``), read at each call: converted
    and downloaded models (``models/``, ``downloads/``), datasets it fetches (``fashion-mnist/``), rendered data
    (``emoji-*.npz``) and the image-verification index (``verified/``)."""
    return Path(os.environ.get("MASKGIT_HOME") or Path.home() / ".cache" / "maskgit").expanduser()


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # unlike mkstemp, honours the umask (a shared cache stays readable)
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_dir(path: Path):
    """Context manager: yields a temporary directory that replaces ``path`` on success."""

    class _Ctx:
        def __enter__(self):
            path.parent.mkdir(parents=True, exist_ok=True)
            # a plain mkdir, unlike mkdtemp (always 0700), honours the umask
            self.tmp = path.parent / f".{path.name}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}"
            self.tmp.mkdir()
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old{os.getpid()}"
                os.replace(path, old)
            os.replace(self.tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return False

    return _Ctx()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
