"""A procedural compositional dataset for text-to-image binding, and a checker that reads scenes back from pixels.

Each 32x32 RGB image holds two objects of different colours, one in each half (left/right or top/bottom):
colours {red, green, blue, yellow} x shapes {circle, square, triangle} x sizes {small, large}, related by
{left of, right of, above, below}; captioned "a small red circle left of a large blue square". Item ``i`` of a
split is a pure function of (split, i): no files, no global RNG.

Splits: ``train`` and ``test`` draw from scenes whose objects avoid the HELDOUT (colour, shape) pairs; ``heldout``
draws scenes in which at least one object is a held-out pair, so it measures composition of attributes that were
each seen in training but never together. ``check_binding`` segments the pixels by the nearest palette colour,
keeps each colour's largest blob, and classifies shape by the fill ratio of its bounding box (square ~1,
circle ~pi/4, triangle ~1/2), size by the box's longer side, and the relation by the boxes' centres."""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskgit.data.base import ArrayDataset
from maskgit.errors import MaskGITError

IMAGE_SIZE = 32
BACKGROUND = (0, 0, 0)
COLOURS = {"red": (225, 35, 35), "green": (40, 175, 60), "blue": (45, 85, 235), "yellow": (240, 215, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 8, "large": 14}  # side of the object's bounding box in pixels
RELATIONS = ("left of", "right of", "above", "below")
HELDOUT = frozenset({("red", "triangle"), ("green", "square"), ("blue", "circle")})
SPLIT_SIZES = {"train": 20000, "test": 2000, "heldout": 2000}
SPLIT_SEEDS = {"train": 1, "test": 2, "heldout": 3}
SEED = 20240611
CROSS_JITTER = 3  # the centres' offset across the relation's axis, at most (keeps the relation unambiguous)
LARGE_MIN_SIDE = 11  # checker: a blob whose longer box side reaches this is "large"
MIN_BLOB = 6  # checker: smaller blobs are noise


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """``a`` stands ``relation`` ``b`` ("a small red circle left of a large blue square")."""

    a: Obj
    relation: str
    b: Obj

    @property
    def caption(self) -> str:
        return f"a {self.a.phrase} {self.relation} a {self.b.phrase}"

    @property
    def heldout(self) -> bool:
        return any((o.colour, o.shape) in HELDOUT for o in (self.a, self.b))


_WORDS = (f"(?P<{{p}}size>{'|'.join(SIZES)}) (?P<{{p}}colour>{'|'.join(COLOURS)}) "
          f"(?P<{{p}}shape>{'|'.join(SHAPES)})")
_CAPTION = re.compile(rf"^a {_WORDS.format(p='a')} (?P<rel>{'|'.join(RELATIONS)}) a {_WORDS.format(p='b')}$")


def parse_caption(caption: str) -> Scene:
    """The inverse of ``Scene.caption``."""
    m = _CAPTION.match(" ".join(str(caption).lower().split()))
    if not m:
        raise MaskGITError(f"not a shapes caption: {caption!r}; expected e.g. "
                           f"'a small red circle left of a large blue square'")
    if m["acolour"] == m["bcolour"]:
        raise MaskGITError(f"{caption!r}: the two objects must have different colours")
    g = m.groupdict()
    return Scene(Obj(g["acolour"], g["ashape"], g["asize"]), g["rel"], Obj(g["bcolour"], g["bshape"], g["bsize"]))


@cache
def all_scenes() -> tuple[Scene, ...]:
    """Every scene of the grammar (two objects of different colours): 24 * 18 * 4 = 1728, in a fixed order."""
    objs = [Obj(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]
    return tuple(Scene(a, r, b) for a, b in itertools.product(objs, objs) if a.colour != b.colour
                 for r in RELATIONS)


@cache
def scenes_of(split: str) -> tuple[Scene, ...]:
    """The scenes a split draws from (uniformly): train/test avoid HELDOUT pairs, heldout has one in each."""
    _check_split(split)
    held = split == "heldout"
    return tuple(s for s in all_scenes() if s.heldout == held)


def _check_split(split: str) -> None:
    if split not in SPLIT_SIZES:
        raise MaskGITError(f"shapes has splits {', '.join(SPLIT_SIZES)}, not {split!r}")


def _rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SEED, SPLIT_SEEDS[split], index])


def scene_at(split: str, index: int) -> tuple[Scene, np.random.Generator]:
    """The scene of item ``index`` and the generator (already advanced past that choice) that places it."""
    pool = scenes_of(split)
    rng = _rng(split, index)
    return pool[int(rng.integers(len(pool)))], rng


def layout(scene: Scene, rng: np.random.Generator) -> list[tuple[Obj, int, int]]:
    """(object, left, top) for both objects: ``a`` in the half its relation names, ``b`` in the other, each at a
    random offset along the relation's axis (inside its half) and at most CROSS_JITTER px off-centre across it."""
    horizontal = scene.relation in ("left of", "right of")
    a_first = scene.relation in ("left of", "above")  # a sits in the left / top half
    placed = []
    for obj, first in ((scene.a, a_first), (scene.b, not a_first)):
        s = SIZES[obj.size]
        along = (0 if first else IMAGE_SIZE // 2) + int(rng.integers(0, IMAGE_SIZE // 2 - s + 1))
        across = IMAGE_SIZE // 2 - s // 2 + int(rng.integers(-CROSS_JITTER, CROSS_JITTER + 1))
        placed.append((obj, along, across) if horizontal else (obj, across, along))
    return placed


def draw(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """uint8 (32,32,3): the scene drawn without anti-aliasing (every pixel is a palette colour)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    d = ImageDraw.Draw(img)
    for obj, x, y in layout(scene, rng):
        s, c = SIZES[obj.size], COLOURS[obj.colour]
        box = (x, y, x + s - 1, y + s - 1)
        if obj.shape == "square":
            d.rectangle(box, fill=c)
        elif obj.shape == "circle":
            d.ellipse(box, fill=c)
        else:  # an upright isosceles triangle filling the box
            d.polygon([(x, y + s - 1), (x + s - 1, y + s - 1), (x + (s - 1) / 2, y)], fill=c)
    return np.asarray(img)


def render(split: str, index: int) -> tuple[np.ndarray, Scene]:
    scene, rng = scene_at(split, index)
    return draw(scene, rng), scene


def render_split(split: str, n: int | None = None) -> tuple[np.ndarray, list[Scene]]:
    """The first ``n`` items (default: the split's size) as uint8 (n,32,32,3) and their scenes."""
    _check_split(split)
    n = SPLIT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise MaskGITError(f"shapes: the number of items must be >= 1, not {n}")
    items = [render(split, i) for i in range(n)]
    return np.stack([im for im, _ in items]), [s for _, s in items]


def load_shapes(split: str = "train", image_size: int | None = None, n: int | None = None):
    """The shapes dataset as an in-memory ``ArrayDataset`` of (image, caption)."""
    if image_size not in (None, IMAGE_SIZE):
        raise MaskGITError(f"shapes is drawn at {IMAGE_SIZE}x{IMAGE_SIZE} only, not {image_size}")
    images, scenes = render_split(split, n)
    ds = ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes],
                      None, "shapes")
    ds.scenes = scenes
    return ds


# ---------------------------------------------------------------- reading a scene back from pixels
def _palette() -> tuple[list[str], np.ndarray]:
    names = ["background", *COLOURS]
    return names, np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)


def segment(image: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) -> (H,W) int: 0 = background, 1.. = the index of the nearest palette colour in COLOURS."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise MaskGITError(f"check_binding needs a uint8 (H,W,3) image, got {img.dtype} {img.shape}")
    _, pal = _palette()
    d = ((img[..., None, :].astype(np.float32) - pal) ** 2).sum(-1)  # (H, W, 1+colours)
    return d.argmin(-1)


def largest_blob(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected component of a bool (H,W) mask (None if it has fewer than MIN_BLOB pixels)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    H, W = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    if len(best) < MIN_BLOB:
        return None
    out = np.zeros_like(mask, dtype=bool)
    ys, xs = zip(*best)
    out[list(ys), list(xs)] = True
    return out


@dataclass(frozen=True)
class Blob:
    colour: str
    shape: str
    size: str
    cx: float  # bounding-box centre
    cy: float
    area: int
    fill: float


def classify(colour: str, blob: np.ndarray) -> Blob:
    ys, xs = np.nonzero(blob)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / float(h * w)
    shape = "square" if fill >= 0.88 else ("circle" if fill >= 0.66 else "triangle")
    size = "large" if max(h, w) >= LARGE_MIN_SIDE else "small"
    return Blob(colour, shape, size, (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, len(ys), fill)


def find_objects(image: np.ndarray) -> dict[str, Blob]:
    """Each palette colour present (as a blob of >= MIN_BLOB pixels) -> its largest blob, classified."""
    labels = segment(image)
    out = {}
    for k, name in enumerate(COLOURS, start=1):
        blob = largest_blob(labels == k)
        if blob is not None:
            out[name] = classify(name, blob)
    return out


def relation_between(a: Blob, b: Blob) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which their centres differ most."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def check_binding(image: np.ndarray, spec: str | Scene) -> dict[str, bool]:
    """Whether the image shows ``spec`` (a caption or a Scene): per attribute, and ``all_ok`` for everything.

    colour_ok: blobs of exactly the two named colours; shape_ok / size_ok: each colour's blob has the shape / size
    named with that colour; relation_ok: the blobs stand in the named relation."""
    scene = parse_caption(spec) if isinstance(spec, str) else spec
    found = find_objects(image)
    want = (scene.a, scene.b)
    got = [found.get(o.colour) for o in want]
    colour_ok = all(g is not None for g in got) and set(found) == {o.colour for o in want}
    shape_ok = all(g is not None and g.shape == o.shape for g, o in zip(got, want))
    size_ok = all(g is not None and g.size == o.size for g, o in zip(got, want))
    relation_ok = got[0] is not None and got[1] is not None and relation_between(got[0], got[1]) == scene.relation
    return {"colour_ok": colour_ok, "shape_ok": shape_ok, "size_ok": size_ok, "relation_ok": relation_ok,
            "all_ok": colour_ok and shape_ok and size_ok and relation_ok}


def binding_accuracy(images: np.ndarray, specs: list[str | Scene]) -> dict[str, float]:
    """Mean of each ``check_binding`` field over uint8 (N,H,W,3) images."""
    if len(images) != len(specs):
        raise MaskGITError(f"{len(images)} images but {len(specs)} captions")
    rows = [check_binding(im, s) for im, s in zip(images, specs)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
