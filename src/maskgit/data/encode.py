"""Streaming tokenization: a dataset -> a token store, batch by batch, in bounded memory, resumable after a kill
and shardable across torchrun processes, always producing the same bytes.

Rows of the store are the dataset in order, then (``flip``) its mirror images. Encoder batches never straddle
the two halves, so every batch holds exactly the images an in-memory pass of the same batch size would give the
encoder; batch b is encoded by rank ``b % world``. The loader reads ahead in chunks so all workers serve every
batch. Work in progress lives in a hidden folder beside the store, ``.NAME.partial/``: the token file (written
in place at each batch's offset), ``plan.json`` (what is being made) and ``done.u8`` (one byte per finished
batch, set after its tokens are written). The store is renamed into place only when every batch is done."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from maskgit.data.loader import GroupLoader, Key, default_workers, in_memory, labels_of
from maskgit.data.tokenstore import token_file_name, write_sidecars
from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write

log = logging.getLogger(__name__)

PLAN_FILE, DONE_FILE = "plan.json", "done.u8"


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def plan_batches(n: int, batch_size: int, flip: bool) -> list[tuple[int, int, bool]]:
    """(first dataset index, count, flipped) of every encoder batch, in store order."""
    if batch_size < 1:
        raise MaskGITError(f"--batch-size must be >= 1, not {batch_size}")
    return [(s, min(batch_size, n - s), f) for f in ((False, True) if flip else (False,))
            for s in range(0, n, batch_size)]


def dataset_size(ds) -> int:
    size = getattr(ds, "image_size", None)
    if size is None:
        size = ds[0][0].shape[-1]
    return int(size)


def store_targets(ds) -> tuple[np.ndarray | None, list[str] | None]:
    """(int64 labels, None) or (None, captions) of every item, without decoding images where the dataset keeps
    its targets apart (file datasets keep paths and labels; COCO stores the first caption, as in evaluation)."""
    n = len(ds)
    labels = labels_of(ds, list(range(n)))
    if labels is not None:
        return labels.numpy(), None
    if hasattr(ds, "captions"):
        return None, [str(c[0]) for c in ds.captions]
    if in_memory(ds):
        return None, [str(t) for t in ds.targets]
    targets = [ds[i][1] for i in range(n)]
    if targets and isinstance(targets[0], str):
        return None, targets
    return np.asarray(targets, dtype=np.int64), None


def _prepare(out: Path, plan: dict, resume: bool, rank: int, world: int) -> Path:
    """Rank 0 creates (or, resuming, checks) the partial folder; the other ranks wait for it."""
    part = partial_dir(out)
    fresh = True
    if resume and (part / PLAN_FILE).is_file():  # every rank checks, so all of them stop with the same message
        try:
            old = json.loads((part / PLAN_FILE).read_text())
        except ValueError:
            old = None
        if old != plan:
            raise MaskGITError(f"{part} holds an unfinished tokenize run with other settings (dataset, "
                               "tokenizer, batch size, flip or image size differ): rerun it with the same "
                               "arguments, or leave out --resume to start again")
        fresh = False
    if rank == 0:
        if fresh:
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            itemsize = np.dtype(plan["dtype"]).itemsize
            with open(part / token_file_name(plan["dtype"]), "wb") as f:
                f.truncate(plan["count"] * plan["grid"][0] * plan["grid"][1] * itemsize)
            (part / DONE_FILE).write_bytes(bytes(plan["batches"]))
            text = (json.dumps(plan, indent=1) + "\n").encode()
            atomic_write(part / PLAN_FILE, lambda f: f.write(text))  # last: marks the folder usable
    if world > 1:
        dist.barrier()
    return part


def _chunks(start: int, count: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(chunk, start + count - s)) for s in range(start, start + count, chunk)]


@torch.no_grad()
def tokenize_stream(model, dataset, out: str | Path, *, batch_size: int, flip: bool = False, resume: bool = False,
                    workers: int | None = None, device: str | torch.device = "cpu", meta: dict | None = None,
                    rank: int = 0, world: int = 1, progress: bool | None = None,
                    on_batch: Callable[[int], None] | None = None) -> dict:
    """Encode ``dataset`` with the tokenizer ``model`` into the token store ``out`` (see the module doc).
    ``on_batch(k)`` runs after the k-th batch of this process is durable. Returns this process's counts/timing."""
    out = Path(out)
    device = torch.device(device)
    n, size, grid, dtype = _store_layout(model, dataset)
    batches = plan_batches(n, batch_size, flip)
    rows = n * (2 if flip else 1)
    plan = {"count": rows, "grid": list(grid), "dtype": dtype.name, "batch_size": batch_size, "flip": flip,
            "items": n, "image_size": size, "batches": len(batches), **(meta or {})}
    if resume and not partial_dir(out).exists() and (out / "meta.json").is_file():
        if rank == 0:
            log.info(f"{out} is complete already (no unfinished run to resume)")
        return {"encoded": 0, "rows": rows, "seconds": 0.0, "images_per_s": 0.0, "complete": True}
    part = _prepare(out, plan, resume, rank, world)
    tok_path, done_path = part / token_file_name(dtype), part / DONE_FILE
    done = np.frombuffer(done_path.read_bytes(), dtype=np.uint8)
    todo = [b for b in range(len(batches)) if b % world == rank and not done[b]]
    workers = default_workers() if workers is None else workers
    chunk = max(1, min(64, -(-batch_size // max(1, workers))))
    row_bytes = grid[0] * grid[1] * dtype.itemsize
    bar = _progress_bar(progress, rank, world, batches, done)
    stream = iter(GroupLoader(dataset, _keys(batches, todo, chunk), workers, pin_memory=device.type == "cuda"))
    fd_tok, fd_done = os.open(tok_path, os.O_WRONLY), os.open(done_path, os.O_WRONLY)
    t0, encoded = time.time(), 0
    try:
        for k, b in enumerate(todo, 1):
            start, count, f = batches[b]
            parts = [next(stream)["images"].to(device, non_blocking=True) for _ in _chunks(start, count, chunk)]
            data = _encode(model, parts, grid, size, dtype)
            os.pwrite(fd_tok, data, ((n if f else 0) + start) * row_bytes)
            os.pwrite(fd_done, b"\x01", b)  # after the tokens: a done batch always has its tokens on disk
            encoded += count
            if bar is not None:
                bar.update(min(count * world, bar.total - bar.n))
            if on_batch is not None:
                on_batch(k)
    finally:
        os.close(fd_tok)
        os.close(fd_done)
        if bar is not None:
            bar.close()
        del stream
    seconds = time.time() - t0
    _complete(out, part, dataset, plan, flip, rank, world)
    return {"encoded": encoded, "rows": rows, "seconds": seconds,
            "images_per_s": encoded / seconds if seconds > 0 else 0.0, "complete": True}


def _store_layout(model, dataset) -> tuple[int, int, tuple[int, int], np.dtype]:
    """(items, image size, token grid, token dtype) of the store ``model`` makes of ``dataset``."""
    n = len(dataset)
    if n == 0:
        raise MaskGITError("the dataset is empty: nothing to tokenize")
    size = dataset_size(dataset)
    grid = tuple(model.config.grid_shape(size))
    dtype = np.dtype(np.uint16 if model.codebook_size <= 65536 else np.int32)
    return n, size, grid, dtype


def _keys(batches: list[tuple[int, int, bool]], todo: list[int], chunk: int) -> Iterator[Key]:
    """The loader's requests: each batch still to do, in chunks of at most ``chunk`` images."""
    for b in todo:
        start, count, f = batches[b]
        for s, c in _chunks(start, count, chunk):
            yield Key(tuple(range(s, s + c)), flip=f)


def _progress_bar(progress: bool | None, rank: int, world: int, batches: list[tuple[int, int, bool]], done):
    """Rank 0's bar over the images left to encode (by default where stderr is a terminal), or None."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not (progress and rank == 0):
        return None
    from tqdm import tqdm
    left = sum(batches[b][1] for b in range(len(batches)) if not done[b])
    return tqdm(total=left, unit="img", unit_scale=True, dynamic_ncols=True, mininterval=1.0,
                desc="tokenize" + (f" ({world} processes)" if world > 1 else ""))


def _encode(model, parts: list[torch.Tensor], grid: tuple[int, int], size: int, dtype: np.dtype) -> bytes:
    """One batch's images (the loader's chunks) -> its token rows, as the bytes the store holds."""
    x = torch.cat(parts)  # (count, C, H, W)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    tokens = model.encode(x)  # (count, h, w) int64
    if tuple(tokens.shape[1:]) != grid:
        raise MaskGITError(f"the tokenizer made {tuple(tokens.shape[1:])} grids from {size} px images, "
                           f"not the expected {grid}")
    return tokens.cpu().numpy().astype(dtype).tobytes()


def _complete(out: Path, part: Path, dataset, plan: dict, flip: bool, rank: int, world: int) -> None:
    """Once every process has written its batches, rank 0 finishes the store (``_finish``) and all wait for it."""
    if world > 1:
        dist.barrier()
    if rank == 0:
        _finish(out, part, dataset, plan, flip)
    if world > 1:
        dist.barrier()


def _finish(out: Path, part: Path, dataset, plan: dict, flip: bool) -> None:
    """Check every batch is done, add labels/captions + meta.json, and rename the store into place."""
    done = np.frombuffer((part / DONE_FILE).read_bytes(), dtype=np.uint8)
    if not done.all():
        raise MaskGITError(f"{part}: {int((done == 0).sum())} batch(es) were not encoded; rerun with --resume")
    labels, captions = store_targets(dataset)
    if flip:
        labels = None if labels is None else np.concatenate([labels, labels])
        captions = None if captions is None else captions * 2
    skip = {"batch_size", "flip", "items", "image_size", "batches", "count", "grid", "dtype"}
    meta = {k: v for k, v in plan.items() if k not in skip}
    write_sidecars(part, (plan["count"], *plan["grid"]), plan["dtype"], labels, captions, meta)
    (part / PLAN_FILE).unlink()
    (part / DONE_FILE).unlink()
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
    os.replace(part, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
