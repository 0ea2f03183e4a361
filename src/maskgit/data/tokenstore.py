"""The token store: a dataset encoded once by a tokenizer, memory-mapped for fast stage-2 training.

Layout of the directory: ``tokens.u16`` (or ``.i32`` when K > 65536) raw (N,h,w) array, ``labels.npy`` (int64)
or ``captions.json``, ``meta.json`` (shape, dtype, codebook size, dataset, the tokenizer's hash), and for
captioned stores optionally ``text_<encoder>.safetensors``: the captions' embeddings by a frozen text encoder
(``maskgit.models.text.CaptionTable``; written by ``maskgit tokenize/train --text-encoder``)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import atomic_dir
from maskgit.storage.files import sha256_file

log = logging.getLogger(__name__)


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over the model's state (names, dtypes, shapes, bytes): identifies a tokenizer exactly."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def write_store(path: str | Path, tokens: np.ndarray, labels: np.ndarray | None = None,
                captions: list[str] | None = None, meta: dict | None = None) -> Path:
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 3:
        raise MaskGITError(f"token store expects tokens (N,h,w), got {tokens.shape}")
    dtype = np.uint16 if tokens.max(initial=0) < 65536 else np.int32
    with atomic_dir(path) as tmp:
        tokens.astype(dtype).tofile(tmp / token_file_name(dtype))
        write_sidecars(tmp, tokens.shape, dtype, labels, captions, meta)
    return path


def token_file_name(dtype) -> str:
    return "tokens.u16" if np.dtype(dtype) == np.uint16 else "tokens.i32"


def write_sidecars(folder: Path, shape: tuple[int, ...], dtype, labels: np.ndarray | None = None,
                   captions: list[str] | None = None, meta: dict | None = None) -> None:
    """Everything of a store but its token file: labels.npy or captions.json, and meta.json."""
    if labels is not None:
        np.save(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    if captions is not None:
        (folder / "captions.json").write_text(json.dumps(list(captions)))
    m = {"count": int(shape[0]), "grid": list(shape[1:]), "dtype": np.dtype(dtype).name, **(meta or {})}
    (folder / "meta.json").write_text(json.dumps(m, indent=1) + "\n")
    files = [n for n in (token_file_name(dtype), "labels.npy", "captions.json", "meta.json") if (folder / n).is_file()]
    (folder / MANIFEST).write_text(json.dumps({n: sha256_file(folder / n) for n in files}, indent=1) + "\n")


MANIFEST = "manifest.json"  # {file name: SHA-256} of the token file, labels/captions and meta.json


def _verify(path: Path) -> bool:
    """Check the files against the store's manifest (True); a store written before manifests existed gets a note
    (False)."""
    mf = path / MANIFEST
    if not mf.is_file():
        log.warning(f"note: {path} has no {MANIFEST} (written by an older maskgit): its files are not verified")
        return False
    try:
        manifest = json.loads(mf.read_text())
        assert isinstance(manifest, dict) and all(isinstance(v, str) for v in manifest.values())
    except (OSError, ValueError, AssertionError):
        raise MaskGITError(f"{mf} is not a readable manifest: re-run `maskgit tokenize`") from None
    for name, digest in manifest.items():
        f = path / Path(name).name
        if not f.is_file() or sha256_file(f) != digest:
            raise MaskGITError(f"{f} is {'missing' if not f.is_file() else 'damaged'} (its SHA-256 is not the one in "
                               f"{MANIFEST}): re-run `maskgit tokenize`")
    return True


def _read_meta(path: Path) -> dict:
    """meta.json, checked: count, grid (h, w), dtype and codebook size of the right types."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise MaskGITError(f"{path / 'meta.json'} is not readable JSON ({e}): re-run `maskgit tokenize`") from None
    def pos_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0
    ok = (isinstance(meta, dict) and pos_int(meta.get("count")) and isinstance(meta.get("grid"), list)
          and len(meta["grid"]) == 2 and all(pos_int(g) for g in meta["grid"])
          and meta.get("dtype") in ("uint16", "int32") and pos_int(meta.get("codebook_size", 1)))
    if not ok:
        raise MaskGITError(f"{path / 'meta.json'} lacks a valid count, grid [h, w], dtype (uint16/int32) or "
                           f"codebook_size: re-run `maskgit tokenize`")
    return meta


def _check_tokens(path: Path, tokens: np.ndarray, codebook_size: int | None) -> None:
    if codebook_size is None:
        return
    top, low = 0, 0
    for i in range(0, len(tokens), 65536):
        chunk = np.asarray(tokens[i:i + 65536])
        top, low = max(top, int(chunk.max(initial=0))), min(low, int(chunk.min(initial=0)))
    if top >= codebook_size or low < 0:
        raise MaskGITError(f"{path} holds token ids up to {top} (min {low}) but its codebook has {codebook_size} "
                           f"codes: the store is damaged; re-run `maskgit tokenize`")


class TokenStore:
    """A read-only view of a token store: ``batch(indices)`` -> {"tokens": (b,h,w) int64, "labels": (b,)}."""

    def __init__(self, path: str | Path, tokenizer_hash: str | None = None, text_encoder: str | None = None):
        """``text_encoder`` (an encoder name, e.g. "minilm") picks the caption-embedding cache to load into
        ``.text``; by default the store's only cache is loaded, if it has exactly one."""
        self.path = Path(path)
        meta_f = self.path / "meta.json"
        if not meta_f.exists():
            raise MaskGITError(f"{self.path} is not a token store (no meta.json); make one with `maskgit tokenize`")
        verified = _verify(self.path)
        self.meta = _read_meta(self.path)
        if tokenizer_hash is not None and self.meta.get("tokenizer_hash") != tokenizer_hash:
            raise MaskGITError(f"{self.path} was made by a different tokenizer (hash {self.meta.get('tokenizer_hash')}"
                               f", this one is {tokenizer_hash}): re-run `maskgit tokenize` with this tokenizer")
        n, (h, w) = self.meta["count"], self.meta["grid"]
        dtype = np.dtype(self.meta["dtype"])
        tf = self.path / token_file_name(dtype)
        size = tf.stat().st_size if tf.is_file() else -1
        if size != n * h * w * dtype.itemsize:
            raise MaskGITError(f"{tf} is {'missing' if size < 0 else f'{size} bytes'}, but meta.json describes "
                               f"{n}x{h}x{w} {dtype.name} ({n * h * w * dtype.itemsize} bytes): "
                               "re-run `maskgit tokenize`")
        self.tokens = np.memmap(tf, dtype=dtype, mode="r", shape=(n, h, w))
        if not verified:  # a verified token file is the one tokenize wrote: its ids fit the codebook
            _check_tokens(tf, self.tokens, self.meta.get("codebook_size"))
        self.labels = None
        if (self.path / "labels.npy").exists():
            try:
                self.labels = np.load(self.path / "labels.npy", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise MaskGITError(f"{self.path / 'labels.npy'} is not readable ({e}): re-run `maskgit tokenize`") \
                    from None
            if self.labels.shape != (n,) or self.labels.dtype.kind not in "iu" or (n and self.labels.min() < 0):
                raise MaskGITError(f"{self.path / 'labels.npy'} holds {self.labels.dtype} {self.labels.shape}, not "
                                   f"{n} class ids >= 0: re-run `maskgit tokenize`")
        cap = self.path / "captions.json"
        try:
            self.captions = json.loads(cap.read_text()) if cap.exists() else None
        except (OSError, ValueError) as e:
            raise MaskGITError(f"{cap} is not readable JSON ({e}): re-run `maskgit tokenize`") from None
        if self.captions is not None and (not isinstance(self.captions, list) or len(self.captions) != n):
            raise MaskGITError(f"{cap} does not hold {n} captions: re-run `maskgit tokenize`")
        self.text = None  # cached caption embeddings (text.CaptionTable): batches gain "text" and "text_mask"
        self.text_encoder = None
        from maskgit.models.text import store_cache_path, store_caches
        caches = [store_cache_path(self.path, text_encoder)] if text_encoder else store_caches(self.path)
        if len(caches) == 1:
            self.load_text(caches[0])

    def load_text(self, file: str | Path) -> None:
        """Load a caption-embedding cache (one row per example) into ``.text``."""
        from maskgit.models.text import CaptionTable
        table = CaptionTable.load(file)
        if table.index is None or len(table.index) != len(self.tokens):
            raise MaskGITError(f"{file} does not match {self.path} ({len(self.tokens)} examples): delete it and "
                               f"run `maskgit tokenize`/`maskgit train` with --text-encoder again")
        self.text, self.text_encoder = table, table.encoder

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices)
        out = {"tokens": torch.from_numpy(self.tokens[idx].astype(np.int64))}  # (b, h, w)
        if self.labels is not None:
            out["labels"] = torch.from_numpy(self.labels[idx])
        if self.text is not None:
            out.update(self.text.batch(idx))  # (b, L, D) float32 and (b, L) bool
        return out

    def subset(self, n: int) -> TokenStore:
        """The first n examples (for validation subsets)."""
        other = object.__new__(TokenStore)
        other.__dict__.update(self.__dict__)
        other.tokens = self.tokens[:n]
        other.labels = None if self.labels is None else self.labels[:n]
        other.captions = None if self.captions is None else self.captions[:n]
        return other
