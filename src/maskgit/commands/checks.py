"""Checks of `maskgit sample` / `maskgit edit` values that run before any model loads or image is made: counts,
labels, and output paths (a known format, a folder that exists or can be made and is writable, no two outputs
on one file)."""

from __future__ import annotations

import os
from pathlib import Path

from maskgit.errors import MaskGITError

IMAGE_SUFFIXES = (".png",)  # a grid or an edited image is written as PNG: other suffixes are refused


def check_writable(path: str | Path, flag: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` must end in one of ``suffixes`` and lie in a folder that exists (or can be made) and is writable."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        known = ", ".join(suffixes)
        raise MaskGITError(f"{flag} {path}: unknown output format {p.suffix or '(none)'!r}; use {known}")
    if p.is_dir():
        raise MaskGITError(f"{flag} {path} is a directory")
    folder = p.parent
    while not folder.exists():  # the nearest existing folder decides whether the rest can be made
        folder = folder.parent
    if not folder.is_dir():
        raise MaskGITError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise MaskGITError(f"{flag} {path}: {folder} is not writable")
    return p


def check_count(value: int | None, flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise MaskGITError(f"{flag} must be >= {minimum}, got {value}")


def check_sample_args(args, png_folder) -> None:
    """Every `maskgit sample` value that needs no model: counts, labels' sign, --out and --show-steps."""
    check_count(args.num, "--num")
    check_count(args.batch_size, "--batch-size")
    check_count(args.scale, "--scale")
    if args.labels is not None:
        from maskgit.commands.common import int_or_none  # names are checked once the model (and its classes) loads
        bad = [v for v in (int_or_none(t.strip()) for t in args.labels.split(",")) if v is not None and v < 0]
        if bad:
            raise MaskGITError(f"--labels {args.labels}: class ids are >= 0 (got {bad[0]}); leave out --labels "
                               f"for unconditional samples")
    if args.out is not None and not png_folder(args.out):
        check_writable(args.out, "--out", (*IMAGE_SUFFIXES, ".npz"))
    if args.show_steps is not None:
        steps = check_writable(args.show_steps, "--show-steps", IMAGE_SUFFIXES)
        if args.out is not None and steps.resolve() == Path(args.out).resolve():
            raise MaskGITError("--show-steps and --out name the same file")


def check_edit_args(args) -> None:
    """`maskgit edit` values that need no model: the input image exists, --out is a writable PNG, counts >= 0."""
    if not Path(args.image).is_file():
        raise MaskGITError(f"--image {args.image} does not exist")
    if args.mask is not None and not Path(args.mask).is_file():
        raise MaskGITError(f"--mask {args.mask} does not exist")
    if args.label is not None and args.label < 0:
        raise MaskGITError(f"--label must be a class id >= 0, got {args.label}")
    check_count(args.start_step, "--start-step", 0)
    check_count(args.dilate, "--dilate", 0)
    check_count(args.feather, "--feather", 0)
    check_writable(args.out, "--out", IMAGE_SUFFIXES)
