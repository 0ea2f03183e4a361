"""Datasets read from image files: ``imagefolder:PATH`` (ImageNet layout) and ``coco:IMAGES,CAPTIONS``, with
corrupt-file handling and reproducible train-time augmentation."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from maskgit.data.base import IMAGE_EXTENSIONS, SPLIT_FOLDERS, cache_dir
from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write
from maskgit.storage.images import check_image, crop_square, resize_shorter, to_rgb


def open_scaled(path: Path, size: int) -> Image.Image:
    """Decode ``path`` to RGB with its shorter side >= ``size``: JPEGs are decoded at 1/2, 1/4 or 1/8 scale in
    the DCT when that still leaves ``size`` pixels (``Image.draft``), which makes large photos cheap; other
    formats decode in full. EXIF rotation is applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))  # largest DCT scale that keeps both sides >= size
                im.load()
                out = ImageOps.exif_transpose(im)
                img = im.copy() if out is None or out is im else out
    except FileNotFoundError:
        raise MaskGITError(f"image file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MaskGITError(f"{path} is not a readable image ({e}): re-save it as PNG or JPEG") from None
    return to_rgb(img)


def u8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL (L or RGB) -> uint8 tensor (C,H,W)."""
    a = np.asarray(img, dtype=np.uint8)
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1)  # (C,H,W)


class FileImageDataset(torch.utils.data.Dataset):
    """Images decoded from files on demand. Eval: resize the shorter side to ``image_size``, centre crop.
    Train: resize the shorter side, random crop, random horizontal flip, drawn from an RNG seeded by
    (``seed``, ``epoch``, index), so every run sees the same augmentations; call ``set_epoch`` each epoch."""

    def __init__(self, name: str, image_size: int, train: bool, seed: int = 0):
        if image_size < 1:
            raise MaskGITError(f"image_size must be positive, not {image_size}")
        if seed < 0:
            raise MaskGITError(f"seed must be >= 0, not {seed}")
        self.name, self.image_size, self.train, self.seed, self.epoch = name, int(image_size), train, seed, 0
        self.paths: list[Path] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return self.item_rng(index, self.epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Float (C,H,W) in [0,1]: centre crop, or with ``rng`` a random crop + random horizontal flip."""
        return self.load_u8(index, rng).float().div_(255.0)

    def load_u8(self, index: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """uint8 (C,H,W): what ``load`` returns before scaling (the streaming loader ships these)."""
        s = self.image_size
        img = resize_shorter(open_scaled(self.paths[index], s), s)
        if rng is None:
            return u8_tensor(crop_square(img, s))
        img = crop_square(img, s, int(rng.integers(0, img.width - s + 1)), int(rng.integers(0, img.height - s + 1)))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return u8_tensor(img)

    def load_readable(self, index: int, epoch: int, augment: bool) -> tuple[torch.Tensor, int]:
        """``load_u8`` of item ``index``, or, when its file became unreadable after the dataset's scan (deleted,
        truncated, permissions), of the next readable item (with a warning naming both; ``strict`` datasets
        raise instead). Returns the image and the index it came from (whose label goes with it)."""
        for k in range(len(self)):
            j = (index + k) % len(self)
            try:
                image = self.load_u8(j, self.item_rng(j, epoch) if augment else None)
            except MaskGITError as e:
                if getattr(self, "strict", False):
                    raise
                warnings.warn(f"{self.name}: {e}; the next readable image takes its place", stacklevel=2)
                continue
            return image, j
        raise MaskGITError(f"{self.name}: none of the {len(self)} images can be read any more")

    def item_rng(self, index: int, epoch: int) -> np.random.Generator:
        """The augmentation RNG of item ``index`` in ``epoch``: the same in any process or worker."""
        return np.random.default_rng([self.seed, int(epoch), index])

    def _drop_unreadable(self, root: Path, paths: list[Path], strict: bool, verify: bool,
                         missing: list[Path] = ()) -> list[bool]:
        """Check every file (cached by size+mtime); strict: raise on the first bad one, else warn once."""
        self.strict = strict
        bad = {p: "missing" for p in missing}
        if verify:
            bad.update(_verify_images(root, [p for p in paths if p not in bad]))
        if bad and strict:
            p = next(p for p in paths if p in bad)
            raise MaskGITError(f"{p} is not a readable image ({bad[p]}): remove or replace it, or leave out "
                               "--strict (strict=False) to skip unreadable files")
        if bad:
            names = [str(p) for p in paths if p in bad]
            warnings.warn(f"{self.name}: skipped {len(names)} unreadable image(s) of {len(paths)}: "
                          + ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""), stacklevel=3)
        return [p not in bad for p in paths]


def _verify_images(root: Path, paths: list[Path]) -> dict[Path, str]:
    """{path: reason} for files that don't fully decode. Results are kept in cache_dir()/verified/ keyed by
    size and mtime, so only new or changed files are decoded again (ImageNet takes a while the first time)."""
    index = cache_dir() / "verified" / (hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16] + ".json")
    try:
        old = json.loads(index.read_text())
    except (OSError, ValueError):
        old = {}
    keys = {p: os.path.relpath(p, root) for p in paths}
    stats = {keys[p]: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}
    todo = [p for p in paths if old.get(keys[p], [None, None])[:2] != stats[keys[p]]]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as ex:  # decoding releases the GIL
        fresh = dict(zip((keys[p] for p in todo), ex.map(check_image, todo)))
    new = {k: st + [fresh[k] if k in fresh else old[k][2]] for k, st in stats.items()}
    if new != old:
        try:
            atomic_write(index, lambda f: f.write(json.dumps(new).encode()))
        except OSError:
            pass  # a read-only cache only costs time
    return {p: new[keys[p]][2] for p in paths if new[keys[p]][2]}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFolderDataset(FileImageDataset):
    """ImageNet layout: ``root[/split]/<class>/<image>``; labels follow the sorted class folder names."""

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 256, train: bool = False,
                 strict: bool = False, seed: int = 0, verify: bool = True):
        super().__init__("imagefolder", image_size, train, seed)
        root = Path(root).expanduser()
        if not root.is_dir():
            raise MaskGITError(f"image folder {root} does not exist" if not root.exists() else
                               f"{root} is not a folder: imagefolder expects PATH/<class>/<image>")
        if (root / split).is_dir():
            root = root / split
        elif found := [s for s in SPLIT_FOLDERS if (root / s).is_dir()]:
            raise MaskGITError(f"{root} has split folders {found} but no {split!r}: pass split={found[0]!r} "
                               f"(--split {found[0]})")
        self.root = root
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise MaskGITError(f"{root} has no class sub-folders: imagefolder expects PATH/<class>/<image> "
                               "(ImageNet layout), one folder per class")
        samples = [(p, label) for label, c in enumerate(self.classes) for p in _image_files(root / c)]
        if not samples:
            raise MaskGITError(f"{root} has no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in its "
                               f"{len(self.classes)} class folder(s)")
        ok = self._drop_unreadable(root, [p for p, _ in samples], strict, verify)
        samples = [s for s, good in zip(samples, ok) if good]
        if not samples:
            raise MaskGITError(f"{root}: none of the images could be read")
        self.paths = [p for p, _ in samples]
        self.targets = [label for _, label in samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self))[i]  # IndexError past the end; negative indices count from it
        image, j = self.load_readable(i, self.epoch, self.train)
        return image.float().div_(255.0), self.targets[j]


class CocoCaptionsDataset(FileImageDataset):
    """COCO captions: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}. Yields one
    caption per image: the first (eval) or one drawn by the per-item RNG (train). Uncaptioned images are left out."""

    def __init__(self, images_dir: str | Path, captions_json: str | Path, image_size: int = 256,
                 train: bool = False, strict: bool = False, seed: int = 0, verify: bool = True):
        super().__init__("coco", image_size, train, seed)
        self.classes = None
        images_dir, captions_json = Path(images_dir).expanduser(), Path(captions_json).expanduser()
        if not images_dir.is_dir():
            raise MaskGITError(f"COCO image folder {images_dir} does not exist")
        if not captions_json.is_file():
            raise MaskGITError(f"COCO captions file {captions_json} does not exist")
        try:
            doc = json.loads(captions_json.read_text(encoding="utf-8"))
            caps: dict[object, list[str]] = {}
            for a in doc["annotations"]:
                caps.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
            entries = [(images_dir / im["file_name"], caps.get(im["id"], [])) for im in doc["images"]]
        except (ValueError, UnicodeDecodeError) as e:
            raise MaskGITError(f"{captions_json} is not valid JSON ({e})") from None
        except (KeyError, TypeError) as e:
            raise MaskGITError(f"{captions_json} is not in COCO captions format (expected {{\"images\": [{{\"id\", "
                               f"\"file_name\"}}], \"annotations\": [{{\"image_id\", \"caption\"}}]}}; problem: "
                               f"{type(e).__name__} {e})") from None
        uncaptioned = sum(1 for _, c in entries if not c)
        if uncaptioned:
            warnings.warn(f"coco: {uncaptioned} image(s) in {captions_json} have no caption and are left out",
                          stacklevel=2)
        entries = [e for e in entries if e[1]]
        if not entries:
            raise MaskGITError(f"{captions_json} lists no captioned images")
        paths = [p for p, _ in entries]
        ok = self._drop_unreadable(images_dir, paths, strict, verify, [p for p in paths if not p.is_file()])
        entries = [e for e, good in zip(entries, ok) if good]
        if not entries:
            raise MaskGITError(f"none of the images listed in {captions_json} could be read from {images_dir}")
        self.paths = [p for p, _ in entries]
        self.captions = [c for _, c in entries]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        i = range(len(self))[i]
        if not self.train:
            return self.load(i), self.captions[i][0]
        rng = self.rng(i)
        return self.load(i, rng), self.captions[i][int(rng.integers(len(self.captions[i])))]
