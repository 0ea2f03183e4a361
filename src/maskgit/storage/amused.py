"""aMUSEd's released folders (diffusers' layout) <-> the project's modules: ``vqvae/`` and ``transformer/``, each
``config.json`` + ``diffusion_pytorch_model.safetensors`` (or its ``.fp16`` variant). The modules use the released
parameter names, so the mapping is one to one; loading checks that it covers every tensor exactly once with the
shape the config asks for, and reads no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import load_weights, save_tensors
from maskgit.storage.files import atomic_dir

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def read_json(path: Path) -> dict:
    """A JSON object from ``path`` (the folder's config files), or one line saying why not."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MaskGITError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise MaskGITError(f"{path} is not a JSON object")
    return doc


def _config(folder: Path, class_name: str) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        raise MaskGITError(f"{folder} has no config.json: an aMUSEd {folder.name}/ folder holds config.json + "
                           f"{WEIGHT_FILES[0]}")
    doc = read_json(f)
    if doc.get("_class_name", class_name) != class_name:
        raise MaskGITError(f"{f} describes a {doc.get('_class_name')}, not the {class_name} this folder needs")
    return doc


def weight_file(folder: Path) -> Path:
    """The folder's weights: the full-precision file where both are there, else the fp16 variant."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MaskGITError(f"{folder} has no {WEIGHT_FILES[0]} (nor its .fp16 variant)")


def _load(folder: str | Path, class_name: str, build) -> torch.nn.Module:
    folder = Path(folder)
    config = _config(folder, class_name)
    with torch.device("meta"):  # no memory or init time for weights that are replaced at once
        model = build(config)
    load_weights(model, weight_file(folder), assign=True)  # every tensor once, shapes checked; fp16 -> fp32
    _reinit_buffers(model, build, config)
    return model.float().eval()


def _reinit_buffers(model: torch.nn.Module, build, config: dict) -> None:
    """Non-persistent buffers (not in the file) were made on the meta device: build them again on the CPU."""
    meta = [n for n, b in model.named_buffers() if b.is_meta]
    if meta:
        fresh = dict(build(config).named_buffers())
        for name in meta:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, fresh[name])


def _save(model: torch.nn.Module, folder: str | Path) -> Path:
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_tensors(state, tmp / WEIGHT_FILES[0])
    return folder


def load_vq(folder: str | Path):
    """``vqvae/`` -> ``models.amused_vq.AmusedVQ`` (float32, eval)."""
    from maskgit.models.amused_vq import AmusedVQ, AmusedVQConfig
    return _load(folder, "VQModel", lambda d: AmusedVQ(AmusedVQConfig.from_dict(d)))


def load_uvit(folder: str | Path):
    """``transformer/`` -> ``models.amused.UVit2D`` (float32, eval)."""
    from maskgit.models.amused import UVit2D, UVit2DConfig
    return _load(folder, "UVit2DModel", lambda d: UVit2D(UVit2DConfig.from_dict(d)))


def save_vq(vq, folder: str | Path) -> Path:
    return _save(vq, folder)


def save_uvit(uvit, folder: str | Path) -> Path:
    return _save(uvit, folder)
