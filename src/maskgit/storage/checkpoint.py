"""Weights on disk: a directory with ``config.json`` + ``model.safetensors`` (never pickle).

``config.json`` = {"format": "maskgit", "format_version": 1, "kind": ..., "config": {...}, "meta": {...}}.
Training state (optimizer, scheduler, RNG, data position) goes in ``train_state.safetensors`` +
``train_state.json`` beside it. Writes are atomic: a temporary directory renamed into place.

``manifest.json`` lists the size and SHA-256 of every file the directory was written with (and a SHA-256 of its
own list); ``load_model`` and resuming verify it, so a truncated or bit-flipped file is an error naming the file
instead of silently wrong weights. Directories written before manifests existed load unverified, except the
shipped weights, which must verify."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from maskgit.config import from_dict, to_dict
from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_dir, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"

# kind -> (module, config class, model class)
KINDS = {
    "vqgan": ("maskgit.models.vqgan", "VQGANConfig", "VQGAN"),
    "transformer": ("maskgit.models.transformer", "TransformerConfig", "MaskGITTransformer"),
    "ar": ("maskgit.models.autoregressive", "TransformerConfig", "ARTransformer"),
    "features": ("maskgit.models.features", "FeatureNetConfig", "FeatureNet"),
}


def _classes(kind: str):
    if kind not in KINDS:
        raise MaskGITError(f"unknown model kind {kind!r} in config.json; known: {', '.join(KINDS)}")
    mod_name, cfg_name, model_name = KINDS[kind]
    mod = importlib.import_module(mod_name)
    cfg_cls = getattr(mod, cfg_name, None) or getattr(importlib.import_module("maskgit.config"), cfg_name)
    return cfg_cls, getattr(mod, model_name)


def kind_of(model: torch.nn.Module) -> str:
    for kind, (mod_name, _, model_name) in KINDS.items():
        if type(model).__name__ == model_name and type(model).__module__ == mod_name:
            return kind
    raise MaskGITError(f"cannot save a {type(model).__name__}: not a known model kind")




def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """``safetensors.save_file`` with the file's mode following the umask (safetensors itself writes 0600)."""
    save_file(tensors, str(file))
    os.chmod(file, 0o666 & ~_umask())


# ---------------------------------------------------------------- manifests
def _list_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(path: Path, names: list[str] | None = None) -> Path:
    """``path/manifest.json`` with the size and SHA-256 of ``names`` (default: every file in ``path``)."""
    path = Path(path)
    if names is None:
        names = (f.name for f in path.iterdir() if f.is_file() and f.name != MANIFEST and not f.name.startswith("."))
    names = sorted(names)
    files = {n: {"bytes": (path / n).stat().st_size, "sha256": sha256_file(path / n)} for n in names}
    doc = {"format": "maskgit-manifest", "version": 1, "files": files, "files_sha256": _list_digest(files)}
    (path / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
    return path / MANIFEST


def verify_manifest(path: Path, required: bool = False) -> bool:
    """Check every file listed in ``path/manifest.json``; MaskGITError naming the first file that is missing,
    truncated or altered (or the manifest itself). Returns False when there is no manifest (and not ``required``)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        if required:
            raise MaskGITError(f"{mf} is missing: these weights cannot be verified (reinstall maskgit)")
        return False
    try:
        doc = json.loads(mf.read_text())
        files = doc["files"]
        ok = (doc.get("format") == "maskgit-manifest" and isinstance(files, dict)
              and doc.get("files_sha256") == _list_digest(files)
              and all(isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
                      and "/" not in k and "\\" not in k and k not in ("", ".", "..") for k, v in files.items()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise MaskGITError(f"{mf} is corrupt (unreadable, or its file list does not match its own checksum)")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise MaskGITError(f"{f} is missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise MaskGITError(f"{f} is truncated or altered: {size} bytes, the manifest says {want['bytes']}")
        if sha256_file(f) != want["sha256"]:
            raise MaskGITError(f"{f} is corrupt: its SHA-256 does not match {MANIFEST} (a flipped or altered byte)")
    return True


def is_shipped(path: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(SHIPPED_DIR)
    except OSError:
        return False


def save_model(model: torch.nn.Module, path: str | Path, meta: dict | None = None,
               dtype: torch.dtype | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for ``model`` (which has a ``.config`` dataclass)."""
    path = Path(path)
    kind = kind_of(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    doc = {"format": "maskgit", "format_version": FORMAT_VERSION, "kind": kind,
           "config": to_dict(model.config), "meta": meta or {}}
    with atomic_dir(path) as tmp:
        save_tensors(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_manifest(tmp, ["config.json", "model.safetensors", *(extra_files or {})])
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise MaskGITError(f"model directory {path} does not exist")
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.exists():
        raise MaskGITError(f"{path} has no config.json: expected a directory with config.json + model.safetensors")
    try:
        doc = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MaskGITError(f"{cfg_file} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != "maskgit":
        raise MaskGITError(f"{cfg_file} is not a maskgit config (no \"format\": \"maskgit\")")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise MaskGITError(f"{cfg_file} has format_version {doc['format_version']}; this maskgit reads up to "
                           f"{FORMAT_VERSION}: upgrade maskgit")
    return doc


def load_model(path: str | Path, expect: str | tuple[str, ...] | None = None,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model described by ``path/config.json`` and load its weights (in eval mode, fp32). The config is
    checked against the safetensors header (names and shapes, read without the data) while the model is built on
    the meta device, so a config that does not describe the file is one line before any weight is allocated."""
    path = Path(path)
    verified = verify_manifest(path, required=is_shipped(path)) if path.is_dir() else False
    doc = read_config(path)
    kind = doc.get("kind")
    if expect is not None and kind not in ((expect,) if isinstance(expect, str) else expect):
        raise MaskGITError(f"{path} holds a {kind!r} model, but a {expect!r} model is needed here")
    cfg_cls, model_cls = _classes(kind)
    cfg = from_dict(cfg_cls, doc.get("config", {}), what=f"{path}/config.json")
    file = path / "model.safetensors"
    shapes = read_header(file)
    with torch.device("meta"), _at_most_params(len(shapes), f"{path}/config.json", file):
        model = model_cls(cfg)  # no random initialisation: every tensor comes from the file
    load_weights(model, file, assign=True, shapes=shapes)
    if not verified:
        _check_finite(model, file)
        log.warning(f"note: {path} has no {MANIFEST}: its weights are not verified (a damaged file may load as "
                    f"wrong weights)")
    model.meta = doc.get("meta", {})
    return model.to(device).eval()


def read_header(file: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in a safetensors file, from its JSON header (no tensor data is read)."""
    file = Path(file)
    if not file.exists():
        raise MaskGITError(f"{file} is missing: a model directory needs config.json + model.safetensors")
    try:
        with safe_open(str(file), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MaskGITError(f"{file} is not a readable safetensors file ({e})") from None


class _TooManyParams(Exception):
    pass


@contextlib.contextmanager
def _at_most_params(limit: int, config: str, file: Path):
    """While building a model: stop at its parameter ``limit + 1`` (a file of ``limit`` tensors cannot hold it),
    so a config claiming a depth of 10**6 fails in the first blocks instead of building a million of them."""
    seen, me = set(), threading.get_ident()

    def hook(module, name, param):
        if threading.get_ident() == me:
            seen.add((id(module), name))
            if len(seen) > limit:
                raise _TooManyParams

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        yield
    except _TooManyParams:
        raise MaskGITError(f"{config} describes a model with more parameters than the {limit} tensors in {file}: "
                           f"the config does not belong to these weights") from None
    finally:
        handle.remove()


def _check_finite(model: torch.nn.Module, file: Path) -> None:
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MaskGITError(f"{file}: {k} holds NaN or infinite values (a damaged file)")


def load_weights(model: torch.nn.Module, file: str | Path, assign: bool = False,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Load ``file`` into ``model``; names and shapes are compared (from the header) before the data is read."""
    file = Path(file)
    shapes = read_header(file) if shapes is None else shapes
    own = model.state_dict()
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    if missing or unexpected:
        raise MaskGITError(f"{file} does not match the model in config.json: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    for k, shape in shapes.items():
        if shape != tuple(own[k].shape):
            raise MaskGITError(f"{file}: {k} has shape {shape}, the config needs {tuple(own[k].shape)}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise MaskGITError(f"{file} is not a readable safetensors file ({e})") from None
    for k, v in state.items():
        state[k] = v.to(own[k].dtype)
    model.load_state_dict(state, assign=assign)


# ---------------------------------------------------------------- training state (no pickle)
def save_train_state(path: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path / "train_state.safetensors")
    (path / "train_state.json").write_text(json.dumps(info, indent=1) + "\n")


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    verify_manifest(path)
    try:
        tensors = load_file(str(path / "train_state.safetensors"))
        info = json.loads((path / "train_state.json").read_text())
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MaskGITError(f"{path}: unreadable training state ({e}); resume from an earlier checkpoint") from None
    return tensors, info


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str = "opt") -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            key = f"{prefix}.{idx}.{name}"
            if torch.is_tensor(v):
                tensors[key] = v
            else:
                scalars[key] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, info: dict, prefix: str = "opt") -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in info["scalars"].items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
