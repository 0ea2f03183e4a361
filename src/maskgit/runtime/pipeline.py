"""An exported model (``maskgit export onnx``) run by onnxruntime: generation and editing without PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.outputs import as_output, check_output, uint8_images
from maskgit.runtime.decoding import Noise, check_config, decode
from maskgit.sampling.arithmetic import batch_rows, check_class_ids, model_sample_config
from maskgit.sampling.defaults import defaults_from_meta
from maskgit.storage.files import sha256_file

CARD = "model_card.json"



def _check_card(card, card_path: Path) -> None:
    """The model card's shape, checked once when it is opened: one line naming what is missing or wrong."""
    if not isinstance(card, dict) or card.get("format") != "maskgit-onnx":
        raise MaskGITError(f"{card_path} is not a maskgit ONNX model card this version can read")
    version = card.get("format_version", 99)
    if isinstance(version, bool) or not isinstance(version, int) or version > 1:
        raise MaskGITError(f"{card_path} is not a maskgit ONNX model card this version can read")
    for key in ("mask_id", "num_classes", "null_class", "grid"):
        if key not in card:
            raise MaskGITError(f"{card_path} lacks {key!r}: re-export with `maskgit export onnx`")
    files = card.get("files")
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise MaskGITError(f"{card_path} lists no graph files: re-export with `maskgit export onnx`")
    for name, entry in files.items():
        for key in ("path", "sha256"):
            if not isinstance(entry.get(key), str):
                raise MaskGITError(f"{card_path} gives no {key} for the {name} graph: re-export with "
                                   f"`maskgit export onnx`")

class OnnxPipeline:
    """The graphs of an export directory behind ``generate`` / ``inpaint`` (numpy in, numpy out)."""

    def __init__(self, root: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 verify: bool = True, int8: bool = False):
        """``verify`` checks every graph against the SHA-256 in the model card; ``threads``: intra-op threads;
        ``int8``: use the int8 transformer (``maskgit export onnx --int8``)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise MaskGITError("maskgit.runtime needs onnxruntime: pip install onnxruntime (a clone's `pip install "
                               "./runtime` installs the runtime with it)") from None
        self.root = Path(root)
        card_path = self.root / CARD
        if not card_path.is_file():
            raise MaskGITError(f"{self.root} has no {CARD}: make it with `maskgit export onnx --out DIR`")
        try:
            self.card = json.loads(card_path.read_text())
        except (OSError, ValueError) as e:
            raise MaskGITError(f"{card_path} is not a readable model card ({e})") from None
        _check_card(self.card, card_path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._ort, self._opts, self._providers = ort, opts, providers or ["CPUExecutionProvider"]
        self._sessions: dict[str, object] = {}
        self.verify = verify
        c = self.card
        self.mask_id, self.num_classes, self.null_class = c["mask_id"], c["num_classes"], c["null_class"]
        self.grid = tuple(c["grid"])
        self.class_names = c.get("class_names")
        self.defaults = defaults_from_meta(c, str(card_path))  # the card's "sampling" section, as config.json's
        self.transformer_graph = "transformer_int8" if int8 else "transformer"
        if int8 and "transformer_int8" not in c.get("files", {}):
            raise MaskGITError(f"{self.root} has no int8 transformer: export with `maskgit export onnx --int8`")
        self.session(self.transformer_graph), self.session("decoder")  # fail now, not mid-generation

    def session(self, name: str):
        """The onnxruntime session of graph ``name`` (transformer, decoder, encoder), opened on first use."""
        if name not in self._sessions:
            entry = self.card.get("files", {}).get(name)
            if entry is None:
                raise MaskGITError(f"this export has no {name} graph" + (
                    " (re-export without --no-encoder to edit images)" if name == "encoder" else ""))
            path = self.root / entry["path"]
            if not path.is_file():
                raise MaskGITError(f"{path} is missing: re-run `maskgit export onnx`")
            if self.verify and sha256_file(path) != entry["sha256"]:
                raise MaskGITError(f"{path} does not match the SHA-256 in {CARD}: the file is damaged or was "
                                   f"replaced; re-export it")
            try:
                self._sessions[name] = self._ort.InferenceSession(str(path), self._opts, providers=self._providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise MaskGITError(f"onnxruntime cannot load {path} ({e})") from None
        return self._sessions[name]

    # ------------------------------------------------------------ checks
    def sample_config(self, **kw) -> SampleConfig:
        """The export's sampling defaults with ``kw`` (None = the default), checked as the PyTorch pipeline does."""
        return check_config(model_sample_config(self.defaults, kw, self.null_class))

    def check_labels(self, labels) -> np.ndarray:
        """Class ids (B,) for this export: the one rule of ``check_class_ids``, as the PyTorch pipeline."""
        ids = check_class_ids(labels, self.num_classes, self.null_class, self.class_names)
        return np.asarray(ids, dtype=np.int64).reshape(-1)

    # ------------------------------------------------------------ graphs
    def logits_fn(self, labels: np.ndarray):
        """The closure ``decode`` needs; with guidance both passes run as one batch (label -1 for the second)."""
        sess = self.session(self.transformer_graph)
        null = np.full_like(labels, -1)

        def fn(tokens: np.ndarray, guided: bool):
            if not guided:
                return sess.run(None, {"tokens": tokens, "labels": labels})[0]
            out = sess.run(None, {"tokens": np.concatenate([tokens, tokens]),
                                  "labels": np.concatenate([labels, null])})[0]  # (2B, N, K)
            return out[:len(tokens)], out[len(tokens):]

        return fn

    def to_images(self, tokens: np.ndarray) -> np.ndarray:
        """Token grids (B, h*w) or (B,h,w) -> float32 images (B,C,H,W) in [0,1]."""
        t = np.asarray(tokens, np.int64).reshape(-1, *self.grid)
        if t.size and (t.min() < 0 or t.max() >= self.card["codebook_size"]):
            raise MaskGITError(f"token ids must lie in [0, {self.card['codebook_size']})")
        return self.session("decoder").run(None, {"tokens": t})[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 images (B,C,H,W) in [0,1] -> token grids (B,h,w)."""
        return self.session("encoder").run(None, {"images": np.asarray(images, np.float32)})[0]

    # ------------------------------------------------------------ public API
    def decode_tokens(self, tokens: np.ndarray, labels, seed: int | list[int] | None = 0, noise=None,
                      callback=None, **sample_kw) -> np.ndarray:
        """(B,N) grids with mask ids -> complete grids, through the one decode loop. ``noise`` replaces ``seed``."""
        tokens = np.asarray(tokens, np.int64)
        lab = self.check_labels(labels)
        if tokens.ndim != 2 or tokens.shape != (len(lab), self.grid[0] * self.grid[1]):
            raise MaskGITError(f"tokens must be ({len(lab)}, {self.grid[0] * self.grid[1]}), got {tokens.shape}")
        noise = Noise(seed) if noise is None else noise
        return decode(self.logits_fn(lab), tokens, self.sample_config(**sample_kw), self.mask_id, noise, callback)

    def generate(self, labels=None, num: int | None = None, seed: int | list[int] | None = 0, noise=None,
                 output: str = "np", **sample_kw):
        """Class-conditional (``labels``; with ``num``: that many of each, as the CLI's --num) or unconditional
        (``num``) samples -> uint8 images (B,H,W,C), or with ``output="pil"`` a list of PIL images (the PyTorch
        pipeline's default)."""
        check_output(output)
        lab = self.check_labels(batch_rows(labels, num)[0])
        tokens = np.full((len(lab), self.grid[0] * self.grid[1]), self.mask_id, np.int64)
        images = self.to_images(self.decode_tokens(tokens, lab, seed, noise, **sample_kw))
        return as_output(uint8_images(images), output)

    def inpaint(self, image, mask=None, box=None, label: int | None = None, seed: int | None = 0,
                output: str = "np", **sample_kw):
        """Regenerate the token cells under ``mask`` (bool (H,W), True = regenerate) or ``box`` (x,y,w,h) of one
        uint8 image (H,W[,C]) or PIL image; pixels outside those cells are kept exactly. Returns one image, as
        the PyTorch pipeline's ``inpaint`` of one image does: uint8 (H,W,C), or with ``output="pil"`` a PIL
        image."""
        check_output(output)
        x = np.asarray(image)
        if x.dtype != np.uint8 or x.ndim not in (2, 3):
            raise MaskGITError(f"image must be uint8 (H,W[,C]), got {x.dtype} {x.shape}")
        x = x[..., None] if x.ndim == 2 else x
        C, size = self.card["channels"], self.card["image_size"]
        if x.shape[:2] != (size, size):
            raise MaskGITError(f"image is {x.shape[1]}x{x.shape[0]}; this model edits {size}x{size} images")
        if x.shape[-1] != C:
            if C == 1 and x.shape[-1] == 3:
                x = np.round(x.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
            elif C == 3 and x.shape[-1] == 1:
                x = np.repeat(x, 3, -1)
            else:
                raise MaskGITError(f"image has {x.shape[-1]} channels; the model needs {C}")
        pm = _pixel_mask(mask, box, size)
        h, w = self.grid
        cell = size // h
        tm = pm.reshape(h, cell, w, cell).any(axis=(1, 3))  # (h, w): every cell the mask touches
        if not tm.any():
            raise MaskGITError("the mask is empty: mark at least one pixel to edit")
        tokens = self.encode(x.transpose(2, 0, 1)[None].astype(np.float32) / 255).reshape(1, -1)
        tokens = np.where(tm.reshape(1, -1), self.mask_id, tokens)
        out = uint8_images(self.to_images(self.decode_tokens(tokens, [-1 if label is None else label], seed,
                                                         **sample_kw)))[0]
        keep = np.repeat(np.repeat(tm, cell, 0), cell, 1)[..., None]  # (H, W, 1)
        return as_output(np.where(keep, out, x)[None], output, one=True)


def _pixel_mask(mask, box, size: int) -> np.ndarray:
    if (mask is None) == (box is None):
        raise MaskGITError("give exactly one of a mask or a box")
    if box is not None:
        if len(box) != 4:
            raise MaskGITError(f"a box is x,y,w,h; got {box}")
        bx, by, bw, bh = (int(v) for v in box)
        if bw <= 0 or bh <= 0 or bx < 0 or by < 0 or bx + bw > size or by + bh > size:
            raise MaskGITError(f"box {bx},{by},{bw},{bh} must have positive size and lie inside the image")
        m = np.zeros((size, size), bool)
        m[by:by + bh, bx:bx + bw] = True
        return m
    m = np.asarray(mask).astype(bool)
    if m.shape != (size, size):
        raise MaskGITError(f"mask is {m.shape} but the image is ({size}, {size})")
    return m


def load(root: str | Path, providers: list[str] | None = None, threads: int | None = None,
         verify: bool = True, int8: bool = False) -> OnnxPipeline:
    """``maskgit.runtime.load("exported/")``: an ``OnnxPipeline`` over the graphs of ``maskgit export onnx``."""
    return OnnxPipeline(root, providers, threads, verify, int8)
