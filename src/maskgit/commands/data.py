"""``maskgit data list`` (what is available here) and ``maskgit data show`` (a labelled grid of samples)."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections import Counter

import numpy as np
import torch

from maskgit.data.datasets import DATASETS, dataset_status, load_dataset
from maskgit.errors import MaskGITError
from maskgit.storage.images import label_lines_needed, make_grid, save_png

MIN_CELL_PX = 96  # small images are enlarged (nearest) until a cell is this wide, so labels fit under them


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list the datasets, or save a labelled grid of samples",
                              description="Datasets: see what is available here and look at samples.")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    lp = sub.add_parser("list", help="each dataset, its description and whether it is available here")
    lp.set_defaults(func=cmd_list)
    sp = sub.add_parser("show", help="save a PNG grid of samples labelled with class names or captions")
    sp.add_argument("name", help="dataset spec: " + ", ".join(DATASETS) + " (imagefolder:PATH, "
                    "coco:IMAGES_DIR,CAPTIONS_JSON)")
    sp.add_argument("--split", default="train", help="split to read (default: train)")
    sp.add_argument("-n", type=int, default=64, help="number of images (default: 64)")
    sp.add_argument("--image-size", type=int, default=None, help="side in pixels (default: the dataset's)")
    sp.add_argument("--seed", type=int, default=None, help="show a random sample drawn with this seed "
                    "(default: the first n items)")
    sp.add_argument("--download", action="store_true", help="fetch missing canonical files (with checksums)")
    sp.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    sp.add_argument("-o", "--out", required=True, help="PNG file to write")
    sp.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    width = max(map(len, DATASETS))
    for name, desc in DATASETS.items():
        ok, where = dataset_status(name)
        print(f"{name:<{width}}  {'yes' if ok else 'no ':<3}  {desc}")
        print(f"{'':<{width}}       {'from' if ok else 'get it'}: {where}")
    return 0


def _load(args: argparse.Namespace):
    """Load with warnings (skipped files) printed as one plain line each instead of Python's warning format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(args.name, args.split, args.image_size, download=args.download, strict=args.strict)
    for w in caught:
        print(f"maskgit data: warning: {w.message}", file=sys.stderr)
    return ds


def summary(ds) -> str:
    """Item count plus per-class counts (or caption counts)."""
    lines = [f"{ds.name} ({len(ds)} items)"]
    if ds.classes is not None:
        counts = Counter(int(t) for t in ds.targets)
        lines.append(f"{len(ds.classes)} classes: " + ", ".join(f"{c} {counts.get(i, 0)}"
                                                                for i, c in enumerate(ds.classes)))
    elif hasattr(ds, "captions"):
        lines.append(f"{sum(map(len, ds.captions))} captions for {len(ds)} images")
    else:
        lines.append(f"{len(ds)} captions ({len(set(ds.targets))} distinct)")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise MaskGITError(f"-n must be at least 1, not {args.n}")
    ds = _load(args)
    n = min(args.n, len(ds))
    if args.seed is None:
        idx = list(range(n))
    else:
        idx = sorted(np.random.default_rng(args.seed).choice(len(ds), n, replace=False).tolist())
    items = [ds[i] for i in idx]
    images = torch.stack([x for x, _ in items])  # (n,C,H,W)
    labels = [ds.classes[t] if ds.classes is not None else str(t) for _, t in items]
    scale = max(1, math.ceil(MIN_CELL_PX / images.shape[-1]))
    lines = label_lines_needed(labels, images.shape[-1] * scale)  # whole captions, wrapped between words
    grid = make_grid(images, labels, scale=scale, label_lines=lines)
    save_png(grid, args.out)
    print(f"{args.split} split of " + summary(ds))
    print(f"wrote {args.out}: {n} images, {grid.width}x{grid.height} px")
    return 0
