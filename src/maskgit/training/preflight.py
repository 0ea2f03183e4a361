"""What both training stages settle before the first step: the image size (the preset decides it; a dataset that
would change it needs an explicit image size), the one-line summary of model size, image size and expected
memory, and the refusal of a batch that would not fit."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from maskgit.errors import MaskGITError

log = logging.getLogger(__name__)

FILE_DATASETS = ("imagefolder", "coco", "captions")  # no size of their own: resized / cropped to the model's


def load_sized(data: str, preset: str, preset_size: int, explicit: int | None, loader):
    """(train dataset, validation dataset or None, image size). ``loader(spec, split, size)`` loads a dataset.

    The preset's image size is used unless --image-size says otherwise. File datasets are resized / cropped to it;
    a dataset with a size of its own (fashion-mnist, emoji, ...) that differs is an error naming both fixes."""
    name = data.partition(":")[0]
    if explicit is not None:
        if explicit < 8:
            raise MaskGITError(f"--image-size must be at least 8, not {explicit}")
        size = explicit
        train_ds = loader(data, "train", size)
    elif name in FILE_DATASETS:
        size = preset_size
        train_ds = loader(data, "train", size)
    else:
        train_ds = loader(data, "train", None)
        size = int(train_ds[0][0].shape[-1])
        if size != preset_size:
            raise MaskGITError(f"{data} images are {size} px but preset {preset} is {preset_size} px: pass "
                               f"--image-size {size} (the model runs at the data's size) or --image-size "
                               f"{preset_size} (the images are resized), or choose a {size} px preset "
                               f"(`maskgit presets`)")
    try:
        val_ds = loader(data, "test", size)
    except MaskGITError:
        val_ds = None
    return train_ds, val_ds, size


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def report_and_check(task: nn.Module, probe_batch: dict, batch_size: int, device: str, *, ema: bool,
                     skip: bool, describe_model: str) -> None:
    """Log the model size, image/token shape and expected memory of one step (rank 0); refuse a batch that
    would not fit (every rank raises the same error)."""
    from maskgit.training import memory
    est = memory.estimate(task, probe_batch, batch_size, device, ema=ema)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        model = task.model
        n_model = sum(p.numel() for p in model.parameters())
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        extra = est.params - n_model
        parts = [f"model {fmt_count(n_model)} parameters"]
        if frozen:
            parts.append(f"{fmt_count(frozen)} frozen")
        if extra:
            parts.append(f"+ {fmt_count(extra)} in the training task (discriminator, ...)")
        log.info(f"{describe_model}; {', '.join(parts)}")
        log.info(memory.describe(est))
    if not skip:
        memory.check(est, multiple=world)


def first_examples(source, n: int = 2) -> dict:
    """A probe batch: the first ``n`` examples of a loop data source."""
    n = min(n, len(source))
    return source.batch(torch.arange(n))
