"""Edits as partially masked token grids: pixel masks and boxes -> token masks, outpainting canvases, and
feathered blending of decoded pixels with the original ones. The decoding itself is sampling.decode."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from maskgit.errors import MaskGITError


def box_to_mask(box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """(x, y, w, h) in pixels -> bool mask (H, W)."""
    if len(box) != 4:
        raise MaskGITError(f"a box is x,y,w,h; got {box}")
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise MaskGITError(f"box {x},{y},{w},{h} must have positive size and lie inside the {width}x{height} image")
    m = torch.zeros(height, width, dtype=torch.bool)
    m[y:y + h, x:x + w] = True
    return m


def token_mask(pixel_mask: torch.Tensor, grid: tuple[int, int], dilate: int = 0) -> torch.Tensor:
    """Bool pixel mask (H, W) -> bool token mask (h, w): every token whose cell the mask touches, optionally
    grown by ``dilate`` tokens in each direction."""
    if pixel_mask.ndim != 2:
        raise MaskGITError(f"a mask must be one 2-D (H, W) array, got shape {tuple(pixel_mask.shape)}")
    H, W = pixel_mask.shape
    h, w = grid
    if H % h or W % w:
        raise MaskGITError(f"mask of size {W}x{H} does not match the image's {w}x{h} token grid "
                           f"(expected a multiple of the cell size)")
    m = F.max_pool2d(pixel_mask.float()[None, None], (H // h, W // w))
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    out = m[0, 0] > 0
    if not out.any():
        raise MaskGITError("the mask is empty: mark at least one pixel to edit")
    return out


def feather(token_mask_: torch.Tensor, size: tuple[int, int], radius: int) -> torch.Tensor:
    """Alpha (H, W) in [0,1]: 1 inside the masked cells, falling to 0 within ``radius`` pixels outside them;
    exactly 0 farther away, so those pixels stay untouched."""
    H, W = size
    m = F.interpolate(token_mask_.float()[None, None], size=(H, W), mode="nearest")[0, 0]
    if radius <= 0:
        return m
    k = 2 * radius + 1
    grown = F.max_pool2d(m[None, None], k, stride=1, padding=radius)  # the blended region
    soft = F.avg_pool2d(F.pad(grown, (radius,) * 4, mode="replicate"), k, stride=1)[0, 0]
    alpha = torch.where(m > 0, torch.ones_like(m), soft * grown[0, 0])
    return alpha.clamp(0, 1)


def blend(original: torch.Tensor, generated: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """original/generated (B,C,H,W) in [0,1], alpha (H,W): alpha*generated + (1-alpha)*original, with the
    original's pixels copied exactly wherever alpha is 0."""
    out = alpha * generated + (1 - alpha) * original
    return torch.where(alpha > 0, out, original)


SIDES = ("left", "right", "top", "bottom")


def check_outpaint(side, n, grid: tuple[int, int] | None = None) -> tuple[str, int]:
    """The one rule for an outpaint request (CLI, Python API, server): ``side`` one of SIDES, ``n`` an integer
    >= 1 and, given the token ``grid`` (h, w), smaller than the grid along that side."""
    if not isinstance(side, str) or side not in SIDES:
        raise MaskGITError(f"outpaint side must be one of {', '.join(SIDES)}; got {side!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise MaskGITError(f"outpaint tokens must be an integer >= 1; got {n!r}")
    n = int(n)
    if grid is not None:
        limit = grid[1] if side in ("left", "right") else grid[0]
        if n >= limit:
            raise MaskGITError(f"outpaint by {n} tokens needs a grid wider than {n}; the grid is "
                               f"{grid[0]}x{grid[1]}")
    return side, n


def parse_outpaint(spec: str) -> tuple[str, int]:
    """"right:4" -> ("right", 4)."""
    try:
        side, n = spec.split(":")
        n = int(n)
    except ValueError:
        raise MaskGITError(f"outpaint takes SIDE:TOKENS, e.g. right:4; got {spec!r}") from None
    return check_outpaint(side, n)


def shift_window(tokens: torch.Tensor, side: str, n: int, mask_id: int) -> torch.Tensor:
    """Token grid (B,h,w) -> the same-size window moved ``n`` tokens past the ``side`` edge: the kept part of
    the original plus ``n`` masked rows/columns to generate."""
    B, h, w = tokens.shape
    check_outpaint(side, n, (h, w))
    out = torch.full_like(tokens, mask_id)
    if side == "right":
        out[:, :, :w - n] = tokens[:, :, n:]
    elif side == "left":
        out[:, :, n:] = tokens[:, :, :w - n]
    elif side == "bottom":
        out[:, :h - n] = tokens[:, n:]
    else:
        out[:, n:] = tokens[:, :h - n]
    return out


def stitch(original: torch.Tensor, window: torch.Tensor, side: str, n_px: int) -> torch.Tensor:
    """Place the decoded window's new strip beside the original image: (B,C,H,W+n_px) or (B,C,H+n_px,W)."""
    if side not in SIDES or n_px < 1:
        raise MaskGITError(f"outpaint side must be one of {', '.join(SIDES)} and the strip >= 1 px; got {side!r}, "
                           f"{n_px}")
    if side == "right":
        return torch.cat([original, window[..., -n_px:]], -1)
    if side == "left":
        return torch.cat([window[..., :n_px], original], -1)
    if side == "bottom":
        return torch.cat([original, window[..., -n_px:, :]], -2)
    return torch.cat([window[..., :n_px, :], original], -2)
