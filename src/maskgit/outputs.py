"""What the pipelines return, once for the PyTorch pipeline and the numpy runtime (no torch here): float images in
[0, 1] become uint8 by one rounding, and ``output`` decides the form: ``"np"`` a uint8 array (B,H,W,C), ``"pil"`` a
list of PIL images (grey as mode L); ``one`` (a single-image edit) returns the first image alone, (H,W,C) or one PIL
image, while a batch always comes back as a batch."""

from __future__ import annotations

import numpy as np

from maskgit.errors import MaskGITError

F255, F05 = np.float32(255), np.float32(0.5)
OUTPUTS = ("pil", "np")


def check_output(output: str, allowed: tuple[str, ...] = OUTPUTS) -> None:
    if output not in allowed:
        raise MaskGITError(f"output must be {', '.join(repr(o) for o in allowed[:-1])} or {allowed[-1]!r}, "
                           f"got {output!r}")


def uint8_images(images: np.ndarray) -> np.ndarray:
    """float (B,C,H,W) or (C,H,W) in [0,1] -> uint8 (B,H,W,C) or (H,W,C): clip, x 255, + 0.5, truncate, in
    float32 (the package's one float -> uint8 conversion)."""
    x = (np.clip(np.asarray(images, np.float32), 0, 1) * F255 + F05).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(x, -3, -1))


def as_output(images: np.ndarray, output: str, one: bool = False):
    """uint8 (B,H,W,C) -> the array, or a list of PIL images for ``output="pil"``; ``one``: the first image alone."""
    if output == "np":
        return images[0] if one else images
    from PIL import Image
    pils = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in images]
    return pils[0] if one else pils
