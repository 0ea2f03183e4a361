"""Image files and pictures: decode any common file to RGB, tensors <-> uint8 arrays, PNG grids with labels.

Shared by the datasets, the CLI (``maskgit data show``, ``sample``, ``edit``) and the server."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from maskgit.errors import MaskGITError
from maskgit.outputs import as_output, check_output, uint8_images
from maskgit.storage.files import atomic_write

WHITE = (255, 255, 255)


# ---------------------------------------------------------------- conversions

def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images (B,C,H,W) or (C,H,W) in [0,1] -> uint8 numpy (B,H,W,C) or (H,W,C), rounded half up: the one
    float -> uint8 conversion of the package (outputs, files, metrics, the server)."""
    if x.dim() not in (3, 4):
        raise MaskGITError(f"expected images shaped (B,C,H,W) or (C,H,W), got {tuple(x.shape)}")
    return uint8_images(x.detach().float().cpu().numpy())


def _as_nhwc(images) -> np.ndarray:
    """uint8 (N,H,W,C)/(N,H,W) arrays, float or uint8 tensors (N,C,H,W), or a list of PIL images -> (N,H,W,C)."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        images = np.stack([np.asarray(to_rgb(im)) for im in images])
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images[None]
        images = to_uint8(images) if images.is_floating_point() else images.movedim(1, -1).cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]  # (N,H,W) grey
    if images.ndim != 4 or images.dtype != np.uint8:
        raise MaskGITError(f"expected uint8 images (N,H,W,C), got {images.dtype} {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha is composited on white, 16/32-bit grey is scaled (not clipped) to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif img.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = np.clip(a, 0, 65535) / 257.0  # 16-bit range -> 8-bit range
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (EXIF rotation applied); MaskGITError naming the file if it can't."""
    path = Path(path)
    if not path.is_file():
        raise MaskGITError(f"image file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency": handled by to_rgb
            with Image.open(path) as im:
                im.load()
                out = ImageOps.exif_transpose(im)
                return im.copy() if out is None or out is im else out  # still usable once the file closes
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MaskGITError(f"{path} is not a readable image ({e}): re-save it as PNG or JPEG") from None


def check_image(path: str | Path) -> str | None:
    """None when ``path`` is a readable image (header check plus a full decode), else the reason."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize (bicubic, antialiased) so the shorter side is ``size``, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    s = size / min(w, h)
    return img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)


def crop_square(img: Image.Image, size: int, left: int | None = None, top: int | None = None) -> Image.Image:
    """A ``size`` x ``size`` crop; centred unless ``left``/``top`` are given."""
    w, h = img.size
    left = (w - size) // 2 if left is None else left
    top = (h - size) // 2 if top is None else top
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL (L or RGB) -> float tensor (C,H,W) in [0,1]."""
    a = np.asarray(img, dtype=np.uint8)
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)  # (C,H,W)


def load_image(path: str | Path, channels: int = 3, size: int | None = None) -> torch.Tensor:
    """Read an image file as a float tensor (C,H,W) in [0,1]; ``size``: resize shorter side + centre crop."""
    if channels not in (1, 3):
        raise MaskGITError(f"channels must be 1 (grey) or 3 (RGB), not {channels}")
    img = to_rgb(open_image(path))
    if size is not None:
        img = crop_square(resize_shorter(img, size), size)
    return pil_to_tensor(img.convert("L") if channels == 1 else img)


def to_pil(image) -> Image.Image:
    """PIL, uint8 array (H,W[,C]) or float tensor (C,H,W)/(1,C,H,W) in [0,1] -> PIL image."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = to_uint8(image if image.dim() == 3 else image[0]) if image.is_floating_point() else image.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise MaskGITError(f"cannot save an array of {a.dtype} {a.shape} as an image: expected uint8 (H,W,C)")
    return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)


def png_text(text: dict[str, str] | None):
    """PNG tEXt chunks: ``text`` (e.g. {"maskgit": settings as JSON}) and "Software"; None without ``text``."""
    if not text:
        return None
    from PIL.PngImagePlugin import PngInfo

    from maskgit import __version__
    info = PngInfo()
    for key, value in {"Software": f"maskgit {__version__}", **text}.items():
        info.add_text(key, str(value))
    return info


def save_png(image, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write ``image`` (PIL, uint8 (H,W,C) array or float (C,H,W) tensor) as PNG, creating parent folders;
    ``text``: tEXt chunks to store with it (read back with ``Image.open(path).text``). The file is written beside
    ``path`` and renamed into place: a symlink at ``path`` is replaced by the new file, its target is left as it was."""
    path = Path(path)
    img = to_pil(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=png_text(text))
    try:
        atomic_write(path, lambda f: f.write(buf.getvalue()))
    except OSError as e:
        raise MaskGITError(f"cannot write {path} ({e.strerror or e}): choose a writable path") from None
    return path


# ---------------------------------------------------------------- grids

def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit_lines(text: str, font, width: int, max_lines: int) -> list[str]:
    """Word-wrap ``text`` into at most ``max_lines`` lines of ``width`` px; the last one ends in '…' if cut."""
    words, lines = text.split(), []
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and font.getlength(line + " " + words[0]) <= width:
            line += " " + words.pop(0)
        lines.append(line)
    if lines and (words or font.getlength(lines[-1]) > width):
        last = lines[-1].split()
        while len(last) > 1 and font.getlength(" ".join(last) + "…") > width:
            last.pop()  # cut between words
        last = " ".join(last)
        while last and font.getlength(last + "…") > width:  # one word wider than the cell
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def label_lines_needed(labels, width: int, font_size: int = 11, most: int = 6) -> int:
    """The lines that the longest label needs when word-wrapped to ``width`` px (at most ``most``)."""
    font = _font(font_size)
    return max(1, min(most, max((len(_fit_lines(str(t), font, width, most + 1)) for t in labels), default=1)))


def make_grid(images, labels: list[str] | None = None, ncol: int | None = None, scale: int = 1,
              pad: int = 2, label_lines: int = 1, font_size: int = 11) -> Image.Image:
    """Tile images (uint8 (N,H,W,C) or float tensors (N,C,H,W)) on white, ``ncol`` per row (default ~square),
    each enlarged ``scale`` x (nearest) with its label in small text under it (``label_lines`` lines, cut to fit).

    Size: ncol*(W*scale+pad)+pad wide, nrow*(H*scale+label_h+pad)+pad high, label_h = 0 without labels."""
    arr = _as_nhwc(images)
    n, h, w, _ = arr.shape
    if n == 0:
        raise MaskGITError("no images to put in a grid")
    if labels is not None and len(labels) != n:
        raise MaskGITError(f"{n} images but {len(labels)} labels")
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    cw, ch = w * scale, h * scale
    font = _font(font_size)
    line_h = font_size + 2
    label_h = line_h * label_lines + 2 if labels is not None else 0
    grid = Image.new("RGB", (ncol * (cw + pad) + pad, nrow * (ch + label_h + pad) + pad), WHITE)
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = pad + (i % ncol) * (cw + pad), pad + (i // ncol) * (ch + label_h + pad)
        cell = Image.fromarray(arr[i])
        grid.paste(cell.resize((cw, ch), Image.Resampling.NEAREST) if scale != 1 else cell, (x, y))
        if labels is not None:
            for j, line in enumerate(_fit_lines(str(labels[i]), font, cw, label_lines)):
                draw.text((x + cw / 2, y + ch + 1 + j * line_h), line, fill=(40, 40, 40), font=font, anchor="ma")
    grid.info["grid"] = {"n": n, "ncol": ncol, "nrow": nrow, "size": [w, h], "scale": scale, "pad": pad,
                         "label_h": label_h}  # where each cell is (grid_cell reads it back)
    return grid


def grid_cell(img: Image.Image, layout: dict, row: int, col: int) -> Image.Image:
    """Cell (``row``, ``col``) of a grid that ``make_grid`` drew with ``layout`` (its ``info["grid"]``), at the
    image's own size: the enlargement undone exactly (it was nearest-neighbour)."""
    try:
        n, ncol, nrow, (w, h) = int(layout["n"]), int(layout["ncol"]), int(layout["nrow"]), layout["size"]
        scale, pad, label_h = int(layout["scale"]), int(layout["pad"]), int(layout["label_h"])
    except (KeyError, TypeError, ValueError):
        raise MaskGITError("the grid's layout record is damaged: write single images with --out DIR/") from None
    if not (0 <= row < nrow and 0 <= col < ncol) or row * ncol + col >= n:
        raise MaskGITError(f"cell {row},{col} is not in this grid of {n} images ({nrow} rows x {ncol} columns, "
                           f"counted from 0,0)")
    x, y = pad + col * (w * scale + pad), pad + row * (h * scale + label_h + pad)
    cell = img.crop((x, y, x + w * scale, y + h * scale))
    return cell.resize((w, h), Image.Resampling.NEAREST) if scale != 1 else cell


def hstrip(images, pad: int = 2, scale: int = 1) -> Image.Image:
    """Images side by side in one row on white (e.g. input | reconstruction | edit); sizes may differ.

    ``images``: a list of PIL images, uint8 (H,W,C) arrays or float (C,H,W) tensors, or a batch (N,C,H,W)."""
    pils = [to_rgb(to_pil(im)) for im in images]
    if not pils:
        raise MaskGITError("no images to put in a strip")
    height = max(im.height for im in pils) * scale
    out = Image.new("RGB", (sum(im.width * scale + pad for im in pils) + pad, height + 2 * pad), WHITE)
    x = pad
    for im in pils:
        out.paste(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST), (x, pad))
        x += im.width * scale + pad
    return out


def as_image_batch(image, channels: int) -> torch.Tensor:
    """PIL image / uint8 HWC array / float (C,H,W) or (B,C,H,W) tensor -> float (B,C,H,W) in [0,1]."""
    from PIL import Image
    if isinstance(image, (str, Path)):
        return load_image(image, channels)[None]
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[..., None]
        if a.dtype != np.uint8:
            raise MaskGITError(f"image arrays must be uint8 (H,W[,C]); got {a.dtype}")
        t = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255
    elif torch.is_tensor(image):
        t = image.float()
    else:
        raise MaskGITError(f"cannot use a {type(image).__name__} as an image")
    if t.ndim == 3:
        t = t[None]
    if t.shape[1] != channels:
        if channels == 1 and t.shape[1] == 3:
            t = t.mean(1, keepdim=True)
        elif channels == 3 and t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        else:
            raise MaskGITError(f"image has {t.shape[1]} channels; the model needs {channels}")
    return t.clamp(0, 1)


def as_pixel_mask(mask, H: int, W: int) -> torch.Tensor:
    from PIL import Image
    if isinstance(mask, (str, Path)):
        try:
            mask = Image.open(mask)
            mask.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise MaskGITError(f"cannot read mask {mask}: {e}") from None
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L")) > 127
    m = torch.as_tensor(np.asarray(mask)).bool() if not torch.is_tensor(mask) else mask.bool()
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != (H, W):
        raise MaskGITError(f"mask is {tuple(m.shape)} but the image is ({H}, {W}): give a mask of the image's size")
    return m


def format_images(images: torch.Tensor, output: str, one: bool = False):
    """(B,C,H,W) in [0,1] -> list of PIL images / uint8 (B,H,W,C) array / the tensor; ``one``: the first image
    alone (a PIL image, (H,W,C) or (C,H,W))."""
    check_output(output, ("pil", "np", "tensor"))
    if output == "tensor":
        return images[0] if one else images
    return as_output(to_uint8(images), output, one)
