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


def _shown(p: Path) -> str:
    """A path for a message: bytes that are not UTF-8 shown as \\xNN escapes (printing them raw would fail)."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.fsdecode kept the undecodable bytes as surrogates
        return False


def _image_files(folder: Path, odd: dict[str, list[Path]] | None = None) -> list[Path]:
    """The image files under ``folder`` (hidden names skipped). Folders are walked without following symlinks (a
    symlink loop cannot recurse). What is left out or odd goes into ``odd`` by kind, for one note each."""
    odd = {} if odd is None else odd
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink():
                odd.setdefault("links", []).append(here / d)
            elif Path(d).suffix.lower() in IMAGE_EXTENSIONS:
                odd.setdefault("dirs", []).append(here / d)
        for f in filenames:
            p = here / f
            if f.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if not p.is_file():  # a symlink that loops or points nowhere
                odd.setdefault("broken", []).append(p)
                continue
            if not _utf8(f):
                odd.setdefault("names", []).append(p)
            found.append(p)
    return sorted(found)


ODD_NOTES = {
    "links": "symlinked folder(s) inside class folders are not followed (a link loop would never end): {}",
    "dirs": "folder(s) named like an image file are folders, not images (their contents are read as "
            "sub-folders): {}",
    "broken": "symlink(s) that loop or point nowhere are skipped: {}",
    "names": "file name(s) that are not valid UTF-8 are read, and shown here with \\x escapes: {}",
}


def _note_odd(name: str, odd: dict[str, list[Path]]) -> None:
    for kind, paths in odd.items():
        shown = ", ".join(_shown(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        warnings.warn(f"{name}: {len(paths)} " + ODD_NOTES[kind].format(shown), stacklevel=3)


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
        if bad := [c for c in self.classes if not _utf8(c)]:
            raise MaskGITError(f"class folder {_shown(root / bad[0])} has a name that is not valid UTF-8: rename "
                               f"it (class names go into the model's metadata and onto the web page)")
        odd: dict[str, list[Path]] = {}
        samples = [(p, label) for label, c in enumerate(self.classes) for p in _image_files(root / c, odd)]
        _note_odd(self.name, odd)
        if not samples:
            raise MaskGITError(f"{root} has no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in its "
                               f"{len(self.classes)} class folder(s)")
        ok = self._drop_unreadable(root, [p for p, _ in samples], strict, verify)
        samples = [s for s, good in zip(samples, ok) if good]
        if not samples:
            raise MaskGITError(f"{root}: none of the images could be read")
        if empty := [c for i, c in enumerate(self.classes) if i not in {label for _, label in samples}]:
            warnings.warn(f"{self.name}: {len(empty)} class folder(s) have no readable images and no image trains "
                          f"their label (the label ids still follow the folder names): "
                          + ", ".join(f"{c} (label {self.classes.index(c)})" for c in empty[:5])
                          + (", ..." if len(empty) > 5 else ""), stacklevel=2)
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


CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")  # one {"file_name": ..., "text": ...} a line


def _read_caption_lines(root: Path) -> dict[str, list[str]]:
    """{image path relative to ``root``: captions} from ``root/captions.jsonl`` (or ``metadata.jsonl``, Hugging Face
    imagefolder's name): one JSON object a line, ``file_name`` (or ``image``) and ``text`` (or ``caption``), a
    string or a list of them; a file named on several lines has all their captions."""
    f = next((root / n for n in CAPTION_FILES if (root / n).is_file()), None)
    out: dict[str, list[str]] = {}
    if f is None:
        return out
    for no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            name = doc.get("file_name", doc.get("image"))
            text = doc.get("text", doc.get("caption"))
        except (ValueError, AttributeError) as e:
            raise MaskGITError(f"{f} line {no} is not a JSON object ({e})") from None
        texts = [text] if isinstance(text, str) else text
        if not isinstance(name, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise MaskGITError(f"{f} line {no}: expected {{\"file_name\": \"a.png\", \"text\": \"a caption\"}}")
        out.setdefault(os.path.normpath(name), []).extend(t.strip() for t in texts)
    return out


class CaptionFolderDataset(FileImageDataset):
    """``captions:PATH``: the images anywhere under PATH, each captioned by a ``.txt`` beside it (``cat.png`` ->
    ``cat.txt``) or by PATH/captions.jsonl (see ``_read_caption_lines``; its captions win where both exist).
    Uncaptioned images are left out (with a warning). Yields one caption per image, as CocoCaptionsDataset."""

    def __init__(self, root: str | Path, image_size: int = 256, train: bool = False, strict: bool = False,
                 seed: int = 0, verify: bool = True):
        super().__init__("captions", image_size, train, seed)
        self.classes = None
        root = Path(root).expanduser()
        if not root.is_dir():
            raise MaskGITError(f"caption folder {root} does not exist" if not root.exists() else
                               f"{root} is not a folder: captions:PATH expects images with a .txt beside each or "
                               f"a {CAPTION_FILES[0]}")
        odd: dict[str, list[Path]] = {}
        paths = _image_files(root, odd)
        _note_odd(self.name, odd)
        listed = _read_caption_lines(root)
        caps = []
        for p in paths:
            txt = p.with_suffix(".txt")
            caps.append(listed.pop(os.path.relpath(p, root), None) or
                        ([txt.read_text(encoding="utf-8").strip()] if txt.is_file() else []))
        if listed:
            warnings.warn(f"captions: {len(listed)} file(s) named in {root}/{CAPTION_FILES[0]} are not images in "
                          f"the folder: {', '.join(sorted(listed)[:3])}", stacklevel=2)
        entries = [(p, c) for p, c in zip(paths, caps) if c]
        if len(entries) < len(paths):
            warnings.warn(f"captions: {len(paths) - len(entries)} image(s) in {root} have no caption (no .txt "
                          f"beside them, not in {CAPTION_FILES[0]}) and are left out", stacklevel=2)
        if not entries:
            raise MaskGITError(f"{root} has no captioned images: put a .txt beside each image (same name) or a "
                               f"{CAPTION_FILES[0]} with one {{\"file_name\", \"text\"}} a line")
        ok = self._drop_unreadable(root, [p for p, _ in entries], strict, verify)
        entries = [e for e, good in zip(entries, ok) if good]
        if not entries:
            raise MaskGITError(f"{root}: none of the captioned images could be read")
        self.paths = [p for p, _ in entries]
        self.captions = [c for _, c in entries]

    __getitem__ = CocoCaptionsDataset.__getitem__
