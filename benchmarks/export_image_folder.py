"""Write an offline labelled data set as PNG files in the image-folder layout (OUT/train/<class>/*.png,
OUT/test/<class>/*.png), to run the "Train on your own images" recipe on data whose classes a classifier knows.

    python3 benchmarks/export_image_folder.py --data fashion-mnist --out /tmp/fmnist-folder [--limit 6000]

Class folders are named "<id>_<name>" so that their sorted order is the data set's label order. Fashion-MNIST's
28 px images are padded to 32 px (black border), as the project's models see them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image

from maskgit.data.datasets import load_dataset


def export(data: str, out: Path, limit: int | None) -> dict[str, int]:
    counts = {}
    for split in ("train", "test"):
        ds = load_dataset(data, split=split)
        if ds.classes is None:
            raise SystemExit(f"{data} has captions, not classes: the image-folder layout needs classes")
        names = [f"{i}_{re.sub(r'[^A-Za-z0-9]+', '-', c).strip('-').lower()}" for i, c in enumerate(ds.classes)]
        for name in names:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        n = len(ds) if limit is None else min(limit, len(ds))
        images = ds.images[:n].permute(0, 2, 3, 1).numpy()  # (N,H,W,C) uint8
        labels = np.asarray(ds.targets[:n])
        for i, (img, y) in enumerate(zip(images, labels)):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / split / names[y] / f"{i:06d}.png")
        counts[split] = n
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", help="an in-memory labelled set (fashion-mnist, mnist)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    args = p.parse_args()
    counts = export(args.data, args.out, args.limit)
    print(f"wrote {counts} images to {args.out} (train/ and test/, one folder per class)")


if __name__ == "__main__":
    main()
