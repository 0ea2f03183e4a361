"""The streaming input pipeline: images are decoded, resized and augmented in ``DataLoader`` worker processes,
in an order planned ahead, and arrive as uint8 batches.

A ``Key`` names one unit of work (dataset indices, epoch, flip, augment). A plan is any iterable of keys (it may
be endless); ``GroupLoader`` loads it in order. Training plans follow ``batch_indices``: the global batch of a
step is a pure function of (step, seed), each rank loads only its rows ``[rank::world]``, and augmentation draws
come from an RNG keyed by (dataset seed, epoch, index). So the global batch and its randomness do not depend on
the number of processes or workers, and the loader's position is the step: resuming at step k rebuilds the same
stream from k. In-memory datasets (``ArrayDataset``) are sliced directly through the same interface."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from maskgit.data.base import ArrayDataset
from maskgit.errors import MaskGITError


def default_workers() -> int:
    """Loader worker processes when ``--workers`` is not given: up to 4, never more than the CPU count."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Global indices of step ``step``: epochs of a seeded permutation, the last partial batch dropped."""
    if n < batch_size:
        raise MaskGITError(f"the training set has {n} examples, fewer than the batch size {batch_size}")
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1009 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


@dataclass(frozen=True)
class Key:
    """One unit of loader work: these dataset items, in this order (flipped, or augmented with the epoch's RNG)."""

    indices: tuple[int, ...]
    epoch: int = 0
    flip: bool = False
    augment: bool = False


def in_memory(ds) -> bool:
    return isinstance(ds, ArrayDataset) or (hasattr(ds, "images") and torch.is_tensor(ds.images))


def labels_of(ds, indices: list[int]) -> torch.Tensor | None:
    """int64 class labels of ``indices`` (None for captioned datasets)."""
    if getattr(ds, "classes", None) is None:
        return None
    t = ds.targets
    if torch.is_tensor(t):
        return t[torch.as_tensor(indices, dtype=torch.long)].long()
    return torch.tensor([int(t[i]) for i in indices], dtype=torch.long)


def load_group(ds, key: Key) -> dict[str, torch.Tensor]:
    """{"images": uint8 (b,C,H,W), "labels": int64 (b,) for labelled sets} of ``key`` (float images in [0,1]
    for datasets that only offer ``ds[i]``)."""
    idx = list(key.indices)
    if in_memory(ds):
        images = ds.images[torch.as_tensor(idx, dtype=torch.long)]  # (b,C,H,W) uint8
    elif hasattr(ds, "load_readable"):  # a file unreadable since the scan: the next readable one, with its label
        loaded = [ds.load_readable(i, key.epoch, key.augment) for i in idx]
        images, idx = torch.stack([im for im, _ in loaded]), [j for _, j in loaded]
    else:
        images = torch.stack([ds[i][0] for i in idx])
    out = {"images": images.flip(-1) if key.flip else images}
    labels = labels_of(ds, idx)
    if labels is not None:
        out["labels"] = labels
    return out


def to_float(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Move a loaded batch to ``device`` (asynchronously from pinned memory) and scale uint8 images to [0,1]
    there, so only a quarter of the bytes cross the bus."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if out["images"].dtype == torch.uint8:
        out["images"] = out["images"].float().div_(255.0)
    return out


class _Groups(torch.utils.data.Dataset):
    """What the worker processes index: a key -> its loaded group."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        return load_group(self.ds, key)


class _Plan:
    """An iterable over a key iterator, for DataLoader's ``sampler`` (iterated in the main process)."""

    def __init__(self, keys: Iterable[Key]):
        self.keys = keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)


class GroupLoader:
    """Load a plan of keys in order with ``workers`` processes (0: in this process). Workers run up to
    ``prefetch`` keys each ahead of the consumer; ``pin_memory`` pins batches for asynchronous GPU copies.
    In-memory datasets are always sliced in this process (faster than shipping slices between processes)."""

    def __init__(self, dataset, keys: Iterable[Key], workers: int | None = None, pin_memory: bool = False,
                 prefetch: int = 2):
        workers = default_workers() if workers is None else int(workers)
        if workers < 0:
            raise MaskGITError(f"--workers must be >= 0, not {workers}")
        self.dataset, self.keys, self.pin_memory, self.prefetch = dataset, keys, pin_memory, prefetch
        self.workers = 0 if in_memory(dataset) else workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.workers == 0:
            for key in self.keys:
                batch = load_group(self.dataset, key)
                yield {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch
            return
        dl = torch.utils.data.DataLoader(_Groups(self.dataset), batch_size=None, sampler=_Plan(self.keys),
                                         num_workers=self.workers, pin_memory=self.pin_memory,
                                         prefetch_factor=self.prefetch)
        yield from dl


def step_keys(n: int, batch_size: int, seed: int, start_step: int, rank: int = 0, world: int = 1,
              augment: bool = False, stop_step: int | None = None,
              index_fn: Callable[[int, int, int, int], torch.Tensor] = batch_indices) -> Iterator[Key]:
    """The training plan from ``start_step`` on: rank ``rank``'s rows of each step's global batch."""
    if batch_size % world:
        raise MaskGITError(f"batch size {batch_size} is not divisible by the {world} processes")
    per_epoch = n // batch_size if n >= batch_size else 1
    step = start_step
    while stop_step is None or step < stop_step:
        idx = index_fn(step, n, batch_size, seed)[rank::world]
        yield Key(tuple(int(i) for i in idx), epoch=step // per_epoch, augment=augment)
        step += 1


class DatasetSource:
    """Adapts a ``maskgit.data.datasets`` dataset to the training loop. ``rank_batch(step, ...)`` is this rank's
    rows of the step's global batch, streamed by a ``GroupLoader`` that runs ahead along the step sequence (and
    restarts from any other step, e.g. after ``--resume``); ``batch(indices)`` loads given indices without
    augmentation (validation). ``augment`` (default: the dataset's ``train`` flag) turns on random crop + flip."""

    def __init__(self, dataset, workers: int | None = None, augment: bool | None = None):
        self.dataset = dataset
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise MaskGITError(f"--workers must be >= 0, not {self.workers}")
        self.augment = bool(getattr(dataset, "train", False)) if augment is None else bool(augment)
        self._stream: Iterator[dict] | None = None
        self._plan: tuple | None = None
        self._next = -1

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return to_float(load_group(self.dataset, Key(tuple(int(i) for i in indices))))

    def rank_batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        device = torch.device(device)
        n = len(self.dataset)
        if in_memory(self.dataset):
            key = next(step_keys(n, batch_size, seed, step, rank, world, self.augment))
            return to_float(load_group(self.dataset, key), device)
        plan = (batch_size, seed, rank, world, device.type)
        if self._stream is None or plan != self._plan or step != self._next:
            self.close()
            keys = step_keys(n, batch_size, seed, step, rank, world, self.augment)
            self._stream = iter(GroupLoader(self.dataset, keys, self.workers, pin_memory=device.type == "cuda"))
            self._plan = plan
        batch = next(self._stream)
        self._next = step + 1
        return to_float(batch, device)

    def close(self) -> None:
        """Stop the worker processes (they also stop when this source is garbage-collected)."""
        self._stream, self._plan, self._next = None, None, -1


AUGMENT_CHOICES = ("auto", "crop-flip", "none")


def resolve_augment(choice: str, dataset) -> bool:
    """``--augment``: crop-flip (resize the shorter side, random square crop, random horizontal flip: the official
    tokenizer recipe), none, or auto = crop-flip for datasets read from image files, none for in-memory sets."""
    if choice not in AUGMENT_CHOICES:
        raise MaskGITError(f"--augment must be one of {', '.join(AUGMENT_CHOICES)}, not {choice!r}")
    files = hasattr(dataset, "load_u8") and not in_memory(dataset)
    if choice == "crop-flip" and not files:
        raise MaskGITError("--augment crop-flip applies to datasets read from image files (imagefolder:, coco:); "
                           f"{getattr(dataset, 'name', 'this dataset')} is held in memory at its final size")
    return choice == "crop-flip" or (choice == "auto" and files)
