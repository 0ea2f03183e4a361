"""The image loop of `maskgit sample`: chunked, resumable, and spread over torchrun processes.

Chunk c holds images c*B ... c*B+B-1 (B = --batch-size) and is decoded with ``chunk_seed(--seed, c)``, so an image
does not depend on how many processes run or which one decodes its chunk. Under torchrun rank r decodes chunks r,
r+W, r+2W, ...; the union is the 1-process output for the same seed. A run of more than one chunk keeps each
finished chunk in ``OUT.parts/`` (with the run's settings); run the same command again after a kill and finished
chunks are not redone. Rank 0 shows the progress bar, writes the output, and removes the parts folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from maskgit.errors import MaskGITError
from maskgit.sampling.noise import chunk_seed
from maskgit.storage.files import atomic_write
from maskgit.storage.images import to_uint8


def parts_dir(out: str | None, chunks: int, world: int) -> Path | None:
    """Where the chunks of this run are kept: ``OUT.parts`` for runs of several chunks or processes."""
    if out is None or (chunks <= 1 and world <= 1):
        return None
    return Path(str(out).rstrip("/\\") + ".parts")


def _settings(args, pipe, n: int, labels, prompts, kw: dict) -> dict:
    return {"model": str(args.model), "seed": args.seed, "batch_size": args.batch_size, "num": n,
            "labels": labels, "prompts": prompts, "negative_prompt": args.negative_prompt, "sample": kw,
            "arch": args.arch, "no_cache": args.no_cache, "precision": pipe.precision}


def _open_parts(parts: Path, settings: dict, rank: int) -> None:
    """Rank 0 creates the folder (or checks that the chunks there are this run's); other ranks check after it."""
    text = json.dumps(settings, sort_keys=True, default=str)
    file = parts / "settings.json"
    if rank == 0 and not file.exists():
        try:
            parts.mkdir(parents=True, exist_ok=True)
            atomic_write(file, lambda f: f.write(text.encode()))
        except OSError as e:
            raise MaskGITError(f"cannot keep the run's chunks in {parts} ({e.strerror or e})") from None
    _barrier()
    if file.read_text() != text:
        raise MaskGITError(f"{parts} holds chunks of a run with other settings: remove it, or use another --out")


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _chunk_file(parts: Path, c: int) -> Path:
    return parts / f"chunk-{c:06d}.npy"


def _load_chunk(parts: Path, c: int, rows: int) -> np.ndarray | None:
    """A finished chunk (None if missing or not whole: a kill during its write leaves no file, see atomic_write)."""
    f = _chunk_file(parts, c)
    if not f.is_file():
        return None
    try:
        a = np.load(f, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return a if len(a) == rows else None


def run(pipe, args, n: int, labels: list[int] | None, prompts: list[str] | None, kw: dict, rank: int = 0,
        world: int = 1):
    """Decode this rank's chunks. Returns (chunks, steps images or None): on rank 0 ``chunks`` yields the uint8
    (b,H,W,C) arrays of all chunks in order (read back from the parts folder when there is one); on other ranks
    it is empty."""
    from tqdm import tqdm
    B = args.batch_size
    chunks = (n + B - 1) // B
    parts = parts_dir(args.out, chunks, world)
    if parts is not None:
        _open_parts(parts, _settings(args, pipe, n, labels, prompts, kw), rank)
    mine = range(rank, chunks, world)
    kept, steps_imgs = {}, None
    bar = tqdm(total=sum(min(B, n - c * B) for c in mine), unit="img", disable=None if rank == 0 else True,
               desc="sampling", leave=False)
    for c in mine:
        i, rows = c * B, min(B, n - c * B)
        want_steps = bool(args.show_steps) and c == 0 and args.arch != "ar"
        if parts is not None and not want_steps and _load_chunk(parts, c, rows) is not None:
            bar.update(rows)  # finished by an earlier run
            continue
        call = dict(kw)
        lab = labels[i:i + rows] if labels is not None else None
        num = None if lab is not None else rows
        if prompts is not None:
            call.update(prompts=prompts[i:i + rows], negative_prompts=args.negative_prompt)
            num = None
        seed = chunk_seed(args.seed, c)
        if args.arch == "ar":
            images = pipe.generate(lab, num, seed=seed, output="tensor", arch="ar", use_cache=not args.no_cache,
                                   **call)
        elif want_steps:
            images, steps = pipe.generate(lab, num, seed=seed, output="tensor", return_steps=True, **call)
            steps_imgs = (steps, images)
        else:
            images = pipe.generate(lab, num, seed=seed, output="tensor", **call)
        u8 = to_uint8(images)  # (b,H,W,C)
        if parts is None:
            kept[c] = u8
        else:
            try:
                atomic_write(_chunk_file(parts, c), lambda f, a=u8: np.save(f, a, allow_pickle=False))
            except OSError as e:
                raise MaskGITError(f"cannot write a chunk into {parts} ({e.strerror or e})") from None
        bar.update(rows)
    bar.close()
    _barrier()
    if rank != 0:
        return iter(()), steps_imgs

    def ordered():
        for c in range(chunks):
            if parts is None:
                yield kept.pop(c)
            else:
                a = _load_chunk(parts, c, min(B, n - c * B))
                if a is None:
                    raise MaskGITError(f"chunk {c} is missing from {parts}: run the command again to redo it")
                yield a
    return ordered(), steps_imgs


def remove_parts(out: str | None, n: int, batch_size: int, world: int) -> None:
    """After the output is written: the chunks are no longer needed."""
    parts = parts_dir(out, (n + batch_size - 1) // batch_size, world)
    if parts is not None:
        shutil.rmtree(parts, ignore_errors=True)
