"""What every dataset shares: the in-memory array dataset, the cache folder, image-file conventions."""

from __future__ import annotations

from pathlib import Path

import torch

from maskgit.storage.files import cache_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")


def cache_dir() -> Path:
    """Where datasets are fetched and rendered: the project's one cache folder (``$MASKGIT_HOME``)."""
    return cache_root()


class ArrayDataset(torch.utils.data.Dataset):
    """An in-memory dataset of uint8 images (N,C,H,W) with int labels (or captions)."""

    def __init__(self, images: torch.Tensor, targets, classes: list[str] | None, name: str):
        self.images = images
        self.targets = targets
        self.classes = classes
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        t = self.targets[i]
        return self.images[i].float() / 255.0, (int(t) if self.classes is not None else t)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]
