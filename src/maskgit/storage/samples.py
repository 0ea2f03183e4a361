"""Sample files in the layouts other tools read: ADM ``.npz`` batches and folders of numbered PNGs.

ADM layout (the reference FID suite of guided-diffusion): ``arr_0`` uint8 (N,H,W,3), grey repeated to three
channels, ``arr_1`` int64 labels (-1 = none). A reference batch may instead (or also) carry ``mu`` / ``sigma``, the
mean and covariance of its features. A PNG folder holds ``000000.png``, ``000001.png``, ... and ``labels.txt``
(one label per line, in file order). Nothing here unpickles: ``.npz`` files load with ``allow_pickle=False``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from maskgit.errors import MaskGITError
from maskgit.storage.files import atomic_write

LABELS_FILE = "labels.txt"


def to_adm(images: np.ndarray) -> np.ndarray:
    """uint8 (N,H,W), (N,H,W,1) or (N,H,W,3) -> uint8 (N,H,W,3) (grey repeated to three channels)."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise MaskGITError(f"sample images must be uint8, got {a.dtype}")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise MaskGITError(f"sample images must be (N,H,W,1|3), got shape {a.shape}")
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def is_png_folder(out: str | Path) -> bool:
    """``--out`` names a PNG folder: a trailing slash, or an existing directory."""
    return str(out).endswith(("/", "\\")) or Path(out).is_dir()


def write_npz(path: str | Path, images: np.ndarray, labels=None, prompts: list[str] | None = None) -> Path:
    """Write the ADM layout (``arr_0``, ``arr_1``; ``prompts`` too for text-conditioned samples), atomically."""
    a = np.asarray(images)
    return write_npz_chunks(path, [a], len(a), labels, prompts)


def write_npz_chunks(path: str | Path, chunks, n: int, labels=None, prompts: list[str] | None = None) -> Path:
    """``write_npz`` of the images that ``chunks`` yields in order (uint8 (n_i,H,W[,C]) arrays, ``n`` in all),
    streamed: one chunk is in memory at a time. The file is what ``np.savez`` writes for the whole array."""
    import zipfile
    lab = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if len(lab) != n:
        raise MaskGITError(f"{n} images but {len(lab)} labels")
    path = Path(path)

    def entry(name):  # a fixed timestamp: the same samples give the same file, byte for byte
        return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open(entry("arr_0.npy"), "w", force_zip64=True) as e:
                seen, shape = 0, None
                for chunk in chunks:
                    a = to_adm(chunk)
                    if shape is None:
                        shape = a.shape[1:]
                        header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                                  "shape": (n, *shape)}
                        np.lib.format.write_array_header_1_0(e, header)
                    elif a.shape[1:] != shape:
                        raise MaskGITError(f"sample chunks differ in shape: {shape} then {a.shape[1:]}")
                    seen += len(a)
                    if seen > n:
                        break
                    e.write(np.ascontiguousarray(a).tobytes())
                if seen != n:
                    raise MaskGITError(f"{n} labels but {seen} images")
            with z.open(entry("arr_1.npy"), "w") as e:
                np.lib.format.write_array(e, lab)
            if prompts is not None:
                with z.open(entry("prompts.npy"), "w") as e:
                    np.lib.format.write_array(e, np.asarray(list(prompts), dtype=str))
    try:
        return atomic_write(path, write)
    except OSError as e:
        raise MaskGITError(f"cannot write {path} ({e.strerror or e}): choose a writable path") from None


def write_png_folder(folder: str | Path, images: np.ndarray, labels=None, text=None) -> Path:
    """Numbered PNGs (grey stays one channel) plus ``labels.txt``; files already there are overwritten.
    ``text(i)``: the tEXt chunks of image i (e.g. the settings that made it), or None."""
    from PIL import Image

    from maskgit.storage.images import png_text
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise MaskGITError(f"sample images must be uint8 (N,H,W[,C]), got {a.dtype} {a.shape}")
    folder = Path(folder)
    width = max(6, len(str(len(a) - 1)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(a):
            img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", pnginfo=png_text(text(i)) if text else None)
            atomic_write(folder / f"{i:0{width}d}.png", lambda f, b=buf: f.write(b.getvalue()))
        lab = [-1] * len(a) if labels is None else [int(v) for v in np.asarray(labels).reshape(-1)]
        atomic_write(folder / LABELS_FILE, lambda f: f.write("".join(f"{v}\n" for v in lab).encode()))
    except OSError as e:
        raise MaskGITError(f"cannot write into {folder} ({e.strerror or e}): choose a writable folder") from None
    return folder


def _read_png_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from maskgit.storage.images import open_image, to_rgb
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise MaskGITError(f"{folder} holds no .png files")
    imgs = [np.asarray(to_rgb(open_image(p))) for p in files]
    if len({im.shape for im in imgs}) != 1:
        raise MaskGITError(f"the PNGs in {folder} differ in size: samples must all have one size")
    labels = None
    lf = folder / LABELS_FILE
    if lf.is_file():
        try:
            labels = np.asarray([int(v) for v in lf.read_text().split()], np.int64)
        except ValueError:
            raise MaskGITError(f"{lf} must hold one integer label per line") from None
        if len(labels) != len(files):
            raise MaskGITError(f"{lf} has {len(labels)} labels for {len(files)} images")
    return np.stack(imgs), labels


def read_samples(path: str | Path, need_images: bool = True) -> dict:
    """An ADM ``.npz`` (or a PNG folder) -> dict with ``images`` uint8 (N,H,W,3) or None, ``labels`` (N,) or None,
    and ``mu`` / ``sigma`` when the file carries feature statistics (an ADM reference batch)."""
    path = Path(path)
    if path.is_dir():
        images, labels = _read_png_folder(path)
        return {"images": images, "labels": labels}
    if not path.is_file():
        raise MaskGITError(f"sample file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            out = {"images": z["arr_0"] if "arr_0" in keys else None,
                   "labels": z["arr_1"] if "arr_1" in keys else None}
            if "mu" in keys and "sigma" in keys:
                out["mu"], out["sigma"] = z["mu"], z["sigma"]
    except (OSError, ValueError, EOFError) as e:
        raise MaskGITError(f"{path} is not a readable .npz file ({e}); write one with `maskgit sample --out "
                           f"X.npz`") from None
    if out["images"] is None and (need_images or "mu" not in out):
        found = ", ".join(sorted(keys)) or "nothing"
        raise MaskGITError(f"{path} has no 'arr_0' images (it holds {found}): expected the ADM layout, arr_0 uint8 "
                           f"(N,H,W,3) and arr_1 labels")
    if out["images"] is not None:
        out["images"] = to_adm(out["images"])
    if out["labels"] is not None:
        lab = np.asarray(out["labels"])
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise MaskGITError(f"{path}: arr_1 must be integer labels (N,), got {lab.dtype} {lab.shape}")
        if out["images"] is not None and len(lab) != len(out["images"]):
            raise MaskGITError(f"{path}: {len(out['images'])} images in arr_0 but {len(lab)} labels in arr_1")
        out["labels"] = lab.astype(np.int64)
    if "mu" in out:
        mu, sigma = np.asarray(out["mu"], np.float64), np.asarray(out["sigma"], np.float64)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise MaskGITError(f"{path}: mu must be (D,) and sigma (D,D), got {mu.shape} and {sigma.shape}")
        out["mu"], out["sigma"] = mu, sigma
    return out


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N,H,W,3) -> (N,H,W,channels): grey files (three equal channels) collapse to one channel."""
    if channels == 3 or images.shape[-1] == channels:
        return images
    if channels == 1:
        if not (np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])):
            raise MaskGITError("the samples are in colour but the feature network takes grey images: use a "
                               "feature network trained on colour data")
        return images[..., :1]
    raise MaskGITError(f"cannot turn {images.shape[-1]}-channel samples into {channels} channels")
