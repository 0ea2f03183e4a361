"""Google's official checkpoints by name (``google/maskgit-imagenet256``, ``...512``): downloaded once from the
public bucket, converted by ``storage.official``, and only the converted pipeline kept.

The cache is ``$MASKGIT_HOME`` (default ``~/.cache/maskgit``): ``models/<owner>--<name>/`` holds ``tokenizer/`` +
``maskgit/`` (each with its SHA-256 manifest) and ``source.json`` (the source files' names, sizes and SHA-256 as
downloaded). A transfer writes ``downloads/<file>.part`` and continues it with an HTTP Range request after an
interruption (in the same call, or the next one); a finished file is renamed into place, converted, and deleted.
``MASKGIT_OFFICIAL_URL`` replaces the bucket (a mirror); ``MASKGIT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` never
connects. Standard library only (urllib), plus tqdm for the progress bar."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_dir, cache_root, sha256_file
from maskgit.storage.flax import OFFICIAL_URL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfficialModel:
    """One released pair of files and the ``convert_official`` keyword arguments (dtype, class_names) for it."""

    tokenizer: str
    transformer: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, str]:
        return self.tokenizer, self.transformer


# official name -> files in the bucket (module-level so that tests can add a tiny entry)
OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "google/maskgit-imagenet256": OfficialModel("tokenizer_imagenet256_checkpoint", "maskgit_imagenet256_checkpoint"),
    "google/maskgit-imagenet512": OfficialModel("tokenizer_imagenet512_checkpoint", "maskgit_imagenet512_checkpoint"),
}
RETRIES = 3  # transfers of one file in one call: each after the first continues the .part with a Range request
TIMEOUT_S = 60  # a connection that sends nothing for this long counts as interrupted
CHUNK = 1 << 20
TRUE = ("1", "true", "yes", "on")


def home() -> Path:
    """The cache root (``storage.files.cache_root``: ``$MASKGIT_HOME``, default ``~/.cache/maskgit``)."""
    return cache_root()


def official_url() -> str:
    """The base URL the file names are appended to (``MASKGIT_OFFICIAL_URL`` or Google's bucket)."""
    base = os.environ.get("MASKGIT_OFFICIAL_URL") or OFFICIAL_URL
    return base if base.endswith("/") else base + "/"


def offline_reason() -> str | None:
    """``"MASKGIT_OFFLINE=1"`` (or ``HF_HUB_OFFLINE=...``) when the environment forbids connections, else None."""
    for var in ("MASKGIT_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in TRUE:
            return f"{var}={os.environ[var]}"
    return None


def folder_name(name: str) -> str:
    return name.replace("/", "--")


def _announce(msg: str) -> None:
    """A download's progress lines: warnings, so that Python shows them by default (on stderr, beside tqdm's bar):
    ~0.9 GB come into the user's cache."""
    logger.warning(msg)


# ---------------------------------------------------------------- the name -> a converted pipeline folder
def official_pipeline(name: str, log: Callable[[str], None] = _announce) -> Path:
    """The converted pipeline of an official name: from the cache, or downloaded and converted on first use."""
    spec = OFFICIAL_MODELS[name]
    target = home() / "models" / folder_name(name)
    if _complete(target):
        return target
    downloads = home() / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaskGITError(f"cannot write the model cache {home()} ({e.strerror or e}): set MASKGIT_HOME to a "
                           f"writable folder") from None
    with _lock(downloads / f"{folder_name(name)}.lock"):
        if _complete(target):  # another process finished it while this one waited
            return target
        for pattern in (f".{target.name}.*", f"..{target.name}.*"):  # left by a killed conversion (ours to
            for stale in target.parent.glob(pattern):                   # remove: we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
        from maskgit.storage.flax import _msgpack
        _msgpack()  # the converter's one dependency, before any download
        missing = [f for f in spec.files if not (downloads / f).is_file()]
        reason = offline_reason()
        if missing and reason:
            raise MaskGITError(_instructions(name, missing, f"offline ({reason})"))
        sources = {}
        if missing:
            log(f"{name}: downloading {', '.join(missing)} from {official_url()} (once; converted into {target})")
        for f in spec.files:
            url = official_url() + f
            if f in missing:
                left = [m for m in missing if not (downloads / m).is_file()]  # this one and those after it
                sources[f] = fetch(url, downloads / f, lambda why, left=left: _instructions(name, left, why))
            else:  # a finished download from an earlier call (or put there by hand)
                path = downloads / f
                sources[f] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            sources[f] = {"name": f, "url": url, **sources[f]}
        _convert(name, spec, downloads, target, sources, log)
    return target


def _complete(target: Path) -> bool:
    return all((target / p).is_dir() for p in ("tokenizer", "maskgit")) and (target / "source.json").is_file()


def _instructions(name: str, files: list[str], why: str) -> str:
    spec = OFFICIAL_MODELS[name]
    return (f"{name} is not in the cache and cannot be downloaded: {why}. Download {' and '.join(files)} from "
            f"{official_url()} into {home() / 'downloads'}/ and run again (it converts them), or convert the pair "
            f"yourself: maskgit convert official --tokenizer {spec.tokenizer} --transformer {spec.transformer} "
            f"--out DIR, then use --model DIR")


def _convert(name: str, spec: OfficialModel, downloads: Path, target: Path, sources: dict, log) -> None:
    """The raw files -> ``target`` (atomically, with source.json); the raw files are deleted afterwards. A file
    that does not convert is deleted at once (a later call downloads it afresh)."""
    from maskgit.storage.official import convert_official
    tok, tr = downloads / spec.tokenizer, downloads / spec.transformer
    log(f"{name}: converting")
    try:
        with atomic_dir(target) as tmp:
            convert_official(tok, tr, tmp, log=lambda m: None, **spec.options)
            doc = {"name": name, "files": [sources[f] for f in spec.files],
                   "options": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                               for k, v in spec.options.items() if k != "class_names"}}
            (tmp / "source.json").write_text(json.dumps(doc, indent=1) + "\n")
    except MaskGITError as e:
        msg = str(e)
        bad = [p for p in (tok, tr) if str(p) in msg]  # the file named by the message, else its role's words
        bad = bad or [p for p, word in ((tok, "tokenizer"), (tr, "transformer")) if word in msg] or [tok, tr]
        for p in bad:
            p.unlink(missing_ok=True)
        raise MaskGITError(f"{name}: the download of {' and '.join(p.name for p in bad)} is not a usable official "
                           f"checkpoint ({msg}); removed it: run again to download it afresh") from None
    for p in (tok, tr):
        p.unlink(missing_ok=True)
    log(f"{name}: ready in {target}")


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock between processes (POSIX); elsewhere no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- one file over HTTP, resumable
class _Interrupted(Exception):
    pass


def fetch(url: str, dest: Path, unreachable: Callable[[str], str] | None = None) -> dict:
    """``url`` -> ``dest`` through ``dest.part`` (continued with a Range request after an interruption, up to
    ``RETRIES`` transfers here, and in the next call), renamed into place when complete. Returns its bytes and
    SHA-256. ``unreachable(reason)`` words the error when no connection can be made at all."""
    part = dest.with_name(dest.name + ".part")
    last = ""
    for _ in range(RETRIES):
        try:
            size, digest = _transfer(url, part)
        except _Interrupted as e:
            last = str(e)
            continue
        except urllib.error.HTTPError as e:
            raise MaskGITError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:  # refused, DNS, no route, a connect timeout
            why = f"cannot reach {url} ({e.reason})"
            raise MaskGITError(unreachable(why) if unreachable else why) from None
        except OSError as e:  # writing: a full disk, permissions
            raise MaskGITError(f"downloading {url} into {part} failed: {e}") from None
        os.replace(part, dest)
        return {"bytes": size, "sha256": digest}
    raise MaskGITError(f"the download of {url} was interrupted ({last}); {part} keeps what arrived: run the same "
                       f"command again to resume it")


def _transfer(url: str, part: Path) -> tuple[int, str]:
    """One request: the rest of ``part`` (206), or all of it (200). (size, SHA-256) when complete."""
    from tqdm import tqdm

    from maskgit import __version__
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"maskgit/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after our bytes: complete if the server's length is ours
            total = _total(e.headers.get("Content-Range", ""))
            if total == have:
                return have, sha256_file(part)
            part.unlink()
            raise _Interrupted(f"the server refused to continue at byte {have}; starting over") from None
        raise
    except urllib.error.URLError:
        raise
    except (OSError, http.client.HTTPException) as e:  # connected, then no answer (timeout, closed)
        raise _Interrupted(f"{type(e).__name__} before the response: {e}") from None
    with resp:
        start = 0
        total = None
        if resp.status == 206:
            start = _start(resp.headers.get("Content-Range", ""))
            total = _total(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Interrupted(f"the server continued at byte {start}, not {have}; starting over")
        elif resp.headers.get("Content-Length"):
            total = int(resp.headers["Content-Length"])
        h = hashlib.sha256()
        if start:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        got = start
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=part.name.removesuffix(".part"), dynamic_ncols=True) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except http.client.IncompleteRead as e:  # the connection closed early: keep what came
                    chunk = e.partial
                    _write(f, h, bar, chunk)
                    raise _Interrupted(f"connection closed at byte {got + len(chunk)} of {total}") from None
                except (OSError, http.client.HTTPException) as e:
                    raise _Interrupted(f"{type(e).__name__} at byte {got} of {total}: {e}") from None
                if not chunk:
                    break
                _write(f, h, bar, chunk)
                got += len(chunk)
    if total is not None and got != total:
        raise _Interrupted(f"connection closed at byte {got} of {total}")
    return got, h.hexdigest()


def _write(f, h, bar, chunk: bytes) -> None:
    f.write(chunk)
    f.flush()
    h.update(chunk)
    bar.update(len(chunk))


def _start(content_range: str) -> int:
    try:  # "bytes START-END/TOTAL"
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _total(content_range: str) -> int | None:
    try:  # "bytes START-END/TOTAL" or "bytes */TOTAL"
        return int(content_range.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------- `maskgit cache list / rm`
@dataclass(frozen=True)
class CacheEntry:
    name: str  # an official name, or downloads/<file> for a raw or partial download
    bytes: int
    path: Path


def cache_entries() -> list[CacheEntry]:
    """Every converted model and every raw or partial download in the cache."""
    out = []
    models, downloads = home() / "models", home() / "downloads"
    for d in sorted(models.iterdir()) if models.is_dir() else ():
        if d.is_dir() and not d.name.startswith("."):
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            out.append(CacheEntry(d.name.replace("--", "/", 1), size, d))
    for f in sorted(downloads.iterdir()) if downloads.is_dir() else ():
        if f.is_file() and f.suffix != ".lock":
            out.append(CacheEntry(f"downloads/{f.name}", f.stat().st_size, f))
    return out


def cache_remove(name: str) -> list[Path]:
    """Delete a cached model (and its raw or partial downloads) or one download; returns what was deleted."""
    entries = {e.name: e for e in cache_entries()}
    doomed = [entries[name]] if name in entries else []
    spec = OFFICIAL_MODELS.get(name)
    if spec is not None:
        doomed += [entries[k] for k in entries if k.removeprefix("downloads/").removesuffix(".part") in spec.files]
    if not doomed:
        raise MaskGITError(f"{name!r} is not in the cache ({home()}); cached: "
                           f"{', '.join(entries) or 'nothing'}")
    for e in doomed:
        if e.path.is_dir():  # renamed first: a reader never sees half a model
            trash = e.path.with_name(f".{e.path.name}.rm{uuid.uuid4().hex[:8]}")
            os.replace(e.path, trash)
            shutil.rmtree(trash)
        else:
            e.path.unlink(missing_ok=True)
    return [e.path for e in doomed]


__all__ = ["OFFICIAL_MODELS", "CacheEntry", "OfficialModel", "cache_entries", "cache_remove", "fetch", "home",
           "offline_reason", "official_pipeline", "official_url"]
