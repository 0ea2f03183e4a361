"""Google's official MaskGIT checkpoints (JAX/Flax) -> our PyTorch models, exactly.

The release (github.com/google-research/maskgit) has four files, each ``flax.serialization.to_bytes`` of
``{"params": {...}}``: msgpack maps of maps whose leaves are arrays in msgpack extension type 1 (a nested
msgpack ``(shape, dtype name, C-order bytes)``), read here with ``msgpack`` alone (no flax, jax or pickle).

Each converted tensor is one ``Entry`` (our state-dict key <- the Flax leaves it comes from, their shapes, the
layout change), built from a config; the config is inferred from the tree's shapes, so the 256 and 512
releases (and smaller trees of the same layout) all convert. Conversion never lives in model code."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgit.config import TransformerConfig, VQGANConfig
from maskgit.errors import MaskGITError
from maskgit.storage.flax import (  # noqa: F401  (re-exported)
    OFFICIAL_FILES,
    OFFICIAL_URL,
    flatten,
    load_flax_msgpack,
    params_of,
    unflatten,
    write_flax_msgpack,
)

logger = logging.getLogger(__name__)


def _kind(params: dict) -> str | None:
    keys = set(params)
    if {"encoder", "decoder", "quantizer"} <= keys:
        return "tokenizer"
    if "Embed_0" in keys and any(k.startswith("TransformerLayer_") for k in keys):
        return "transformer"
    return None


def _expect(params: dict, want: str) -> None:
    got = _kind(params)
    if got == want:
        return
    names = {"tokenizer": "tokenizer (VQGAN)", "transformer": "MaskGIT transformer"}
    if got is not None:
        raise MaskGITError(f"this is a {names[got]} checkpoint, but a {names[want]} one is needed here "
                           f"(swap --tokenizer and --transformer?)")
    raise MaskGITError(f"not a MaskGIT {names[want]} checkpoint: its top-level keys are "
                       f"{sorted(params)[:8]} (expected e.g. {OFFICIAL_FILES[want][0]})")


# ================================================================ the mapping: our key <- Flax leaves
def _conv(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _dense(k: np.ndarray) -> np.ndarray:
    return k.T  # (in, out) -> (out, in)


def _qkv_weight(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    # 3 x (W, heads, d) -> (3W, W): rows [q; k; v], head-major inside each, as Attention's view(B,L,3,heads,d)
    return np.concatenate([x.reshape(x.shape[0], -1).T for x in (q, k, v)])


def _qkv_bias(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.concatenate([x.reshape(-1) for x in (q, k, v)])  # 3 x (heads, d) -> (3W,)


def _attn_out(k: np.ndarray) -> np.ndarray:
    return k.reshape(-1, k.shape[-1]).T  # (heads, d, W) -> (W, heads*d)


@dataclass(frozen=True)
class Entry:
    """One tensor of ours: ``fn(*leaves at paths)`` (identity when ``fn`` is None)."""

    key: str
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    fn: Callable[..., np.ndarray] | None = None


class _Mapping:
    def __init__(self):
        self.entries: list[Entry] = []

    def add(self, key: str, paths: tuple[str, ...], shapes: tuple[tuple[int, ...], ...], fn=None) -> None:
        self.entries.append(Entry(key, paths, shapes, fn))

    def conv(self, key: str, path: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
        self.add(f"{key}.weight", (f"{path}/kernel",), ((k, k, cin, cout),), _conv)
        if bias:
            self.add(f"{key}.bias", (f"{path}/bias",), ((cout,),))

    def norm(self, key: str, path: str, ch: int) -> None:
        self.add(f"{key}.weight", (f"{path}/scale",), ((ch,),))
        self.add(f"{key}.bias", (f"{path}/bias",), ((ch,),))

    def dense(self, key: str, path: str, cin: int, cout: int) -> None:
        self.add(f"{key}.weight", (f"{path}/kernel",), ((cin, cout),), _dense)
        self.add(f"{key}.bias", (f"{path}/bias",), ((cout,),))

    def resblock(self, key: str, path: str, cin: int, cout: int) -> None:
        """Flax names in call order: GroupNorm_0, Conv_0, GroupNorm_1, Conv_1, [Conv_2: 1x1 on the output]."""
        self.norm(f"{key}.norm1", f"{path}/GroupNorm_0", cin)
        self.conv(f"{key}.conv1", f"{path}/Conv_0", cin, cout, 3, bias=False)
        self.norm(f"{key}.norm2", f"{path}/GroupNorm_1", cout)
        self.conv(f"{key}.conv2", f"{path}/Conv_1", cout, cout, 3, bias=False)
        if cin != cout:
            self.conv(f"{key}.shortcut", f"{path}/Conv_2", cout, cout, 1, bias=False)


def tokenizer_mapping(cfg: VQGANConfig) -> list[Entry]:
    """Every tensor of ``VQGAN(cfg)`` and the official Flax leaves it comes from (vqgan_tokenizer.VQVAE)."""
    if cfg.num_res_blocks != 2 or not cfg.official_shortcut:
        raise MaskGITError("the official tokenizer layout has num_res_blocks=2 (= its two middle blocks) and "
                           "the output shortcut (official_shortcut=True)")
    m = _Mapping()
    widths = [cfg.filters * c for c in cfg.channel_mult]
    # encoder: Conv_0, ResBlock_0.. (levels, then the middle), GroupNorm_0, Conv_1 (1x1 to the embedding)
    m.conv("encoder.conv_in", "encoder/Conv_0", cfg.channels, cfg.filters, 3, bias=False)
    r, cin = 0, cfg.filters
    for i, w in enumerate(widths):
        for j in range(cfg.num_res_blocks):
            m.resblock(f"encoder.levels.{i}.{j}", f"encoder/ResBlock_{r}", cin, w)
            r, cin = r + 1, w
    for j in range(2):
        m.resblock(f"encoder.mid.{j}", f"encoder/ResBlock_{r}", cin, cin)
        r += 1
    m.norm("encoder.norm_out", "encoder/GroupNorm_0", cin)
    m.conv("encoder.conv_out", "encoder/Conv_1", cin, cfg.embedding_dim, 1)
    m.add("quantizer.codebook", ("quantizer/codebook",), ((cfg.codebook_size, cfg.embedding_dim),))
    # decoder: Conv_0, ResBlock_0..1 (middle), then levels from the widest, each but the last followed by an
    # upsampling conv (Conv_1, Conv_2, ... in call order), GroupNorm_0, then the output conv (the last Conv_k)
    cin = widths[-1]
    m.conv("decoder.conv_in", "decoder/Conv_0", cfg.embedding_dim, cin, 3)
    r, c = 0, 1
    for j in range(2):
        m.resblock(f"decoder.mid.{j}", f"decoder/ResBlock_{r}", cin, cin)
        r += 1
    for k, i in enumerate(reversed(range(len(widths)))):
        for j in range(cfg.num_res_blocks):
            m.resblock(f"decoder.levels.{k}.{j}", f"decoder/ResBlock_{r}", cin, widths[i])
            r, cin = r + 1, widths[i]
        if i > 0:
            m.conv(f"decoder.upconvs.{k}", f"decoder/Conv_{c}", cin, cin, 3)
            c += 1
    m.norm("decoder.norm_out", "decoder/GroupNorm_0", cin)
    m.conv("decoder.conv_out", f"decoder/Conv_{c}", cin, cfg.channels, 3)
    return m.entries


def transformer_mapping(cfg: TransformerConfig) -> list[Entry]:
    """Every tensor of ``MaskGITTransformer(cfg)`` and its official Flax leaves (maskgit_transformer.py)."""
    if cfg.arch != "maskgit" or cfg.null_class or cfg.text_dim:
        raise MaskGITError("only the official layout (arch 'maskgit', no null class, no text) converts")
    m = _Mapping()
    W, H, V = cfg.width, cfg.heads, cfg.vocab_size
    d = W // H
    m.add("tok_emb.weight", ("Embed_0/word_embeddings/embedding",), ((V, W),))
    m.add("pos_emb", ("Embed_0/position_embeddings/embedding",), ((cfg.num_tokens + 1, W),))
    m.norm("emb_ln", "Embed_0/embeddings_ln", W)
    for i in range(cfg.depth):
        p, b = f"TransformerLayer_{i}", f"blocks.{i}"
        sa = f"{p}/Attention_0/self_attention"
        m.add(f"{b}.attn.qkv.weight", tuple(f"{sa}/{n}/kernel" for n in ("query", "key", "value")),
              ((W, H, d),) * 3, _qkv_weight)
        m.add(f"{b}.attn.qkv.bias", tuple(f"{sa}/{n}/bias" for n in ("query", "key", "value")),
              ((H, d),) * 3, _qkv_bias)
        m.add(f"{b}.attn.out.weight", (f"{sa}/out/kernel",), ((H, d, W),), _attn_out)
        m.add(f"{b}.attn.out.bias", (f"{sa}/out/bias",), ((W,),))
        m.norm(f"{b}.attn_ln", f"{p}/Attention_0/attention_output_ln", W)
        m.dense(f"{b}.fc1", f"{p}/Mlp_0/intermediate_output", W, cfg.mlp_dim)
        m.dense(f"{b}.fc2", f"{p}/Mlp_0/layer_output", cfg.mlp_dim, W)
        m.norm(f"{b}.mlp_ln", f"{p}/Mlp_0/layer_output_ln", W)
    m.dense("head_dense", "MlmLayer_0/mlm_dense", W, W)
    m.norm("head_ln", "MlmLayer_0/mlm_ln", W)
    m.add("head_bias", ("MlmLayer_0/mlm_bias/bias",), ((V,),))
    return m.entries


def expected_flax_shapes(cfg: VQGANConfig | TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The official Flax parameter tree (flattened "a/b/c" paths -> shapes) that ``cfg`` corresponds to."""
    entries = tokenizer_mapping(cfg) if isinstance(cfg, VQGANConfig) else transformer_mapping(cfg)
    return {p: s for e in entries for p, s in zip(e.paths, e.shapes)}


def convert_arrays(entries: list[Entry], flat: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(our key, array in our layout) for every entry; arrays may be views of the Flax leaves."""
    for e in entries:
        leaves = [flat[p] for p in e.paths]
        yield e.key, (e.fn(*leaves) if e.fn is not None else leaves[0])


# ================================================================ config inference + checks
def _leaf(flat: dict, path: str, ndim: int, what: str) -> tuple[int, ...]:
    v = flat.get(path)
    if not isinstance(v, np.ndarray) or v.ndim != ndim:
        found = "missing" if v is None else f"shape {getattr(v, 'shape', type(v).__name__)}"
        raise MaskGITError(f"not an official MaskGIT {what} tree: {path!r} ({ndim}-d) is {found}")
    return v.shape


def _count(flat: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in flat if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0


def infer_tokenizer_config(params: dict, image_size: int = 256, num_groups: int = 32) -> VQGANConfig:
    """The VQGANConfig whose official tree has these shapes (levels, widths, codes; image size is nominal)."""
    _expect(params, "tokenizer")
    flat = flatten(params)
    kh, kw, channels, filters = _leaf(flat, "encoder/Conv_0/kernel", 4, "tokenizer")
    if (kh, kw) != (3, 3):
        raise MaskGITError(f"not an official MaskGIT tokenizer tree: its first conv is {kh}x{kw}, not 3x3")
    codes, dim = _leaf(flat, "quantizer/codebook", 2, "tokenizer")
    n_enc = _count(flat, r"encoder/ResBlock_(\d+)/")
    levels = _count(flat, r"decoder/Conv_(\d+)/") - 1  # conv_in + (levels - 1) upsampling convs + conv_out
    if levels < 1 or n_enc == 0 or n_enc % (levels + 1):
        raise MaskGITError(f"not an official MaskGIT tokenizer tree: {n_enc} encoder ResBlocks and "
                           f"{levels + 1} decoder Convs do not form levels of equal depth")
    per_level = n_enc // (levels + 1)  # the official encoder also has num_res_blocks middle blocks
    if per_level != 2:
        raise MaskGITError(f"this tokenizer has {per_level} ResBlocks per level; only the official layout "
                           f"(2 per level and 2 in the middle) converts")
    mult = []
    for i in range(levels):
        w = _leaf(flat, f"encoder/ResBlock_{i * per_level}/Conv_0/kernel", 4, "tokenizer")[3]
        if w % filters:
            raise MaskGITError(f"tokenizer level {i} has width {w}, not a multiple of {filters}")
        mult.append(w // filters)
    widths = [filters * c for c in mult]
    if any(w % num_groups for w in (*widths, filters)):
        raise MaskGITError(f"GroupNorm with {num_groups} groups needs widths divisible by it; got {widths}")
    return VQGANConfig(channels=channels, filters=filters, channel_mult=tuple(mult), num_res_blocks=per_level,
                       embedding_dim=dim, codebook_size=codes, num_groups=num_groups, official_shortcut=True,
                       image_size=image_size)


def infer_transformer_config(params: dict, codebook_size: int = 1024) -> TransformerConfig:
    """The TransformerConfig whose official tree has these shapes (vocabulary = codes + classes + mask)."""
    _expect(params, "transformer")
    flat = flatten(params)
    vocab, width = _leaf(flat, "Embed_0/word_embeddings/embedding", 2, "transformer")
    positions = _leaf(flat, "Embed_0/position_embeddings/embedding", 2, "transformer")[0]
    depth = _count(flat, r"TransformerLayer_(\d+)/")
    _, heads, head_dim = _leaf(flat, "TransformerLayer_0/Attention_0/self_attention/query/kernel", 3,
                               "transformer")
    mlp = _leaf(flat, "TransformerLayer_0/Mlp_0/intermediate_output/kernel", 2, "transformer")[1]
    grid = math.isqrt(max(positions - 1, 0))
    if grid * grid + 1 != positions:
        raise MaskGITError(f"the transformer has {positions} positions, not 1 + a square token grid")
    classes = vocab - codebook_size - 1
    if classes < 0:
        raise MaskGITError(f"the transformer's vocabulary ({vocab}) is smaller than the tokenizer's "
                           f"{codebook_size} codes + 1 mask id: these files do not belong together")
    if heads * head_dim != width:
        raise MaskGITError(f"attention of {heads} heads x {head_dim} does not match the width {width}")
    return TransformerConfig(codebook_size=codebook_size, num_classes=classes, grid_size=grid, width=width,
                             depth=depth, heads=heads, mlp_dim=mlp, dropout=0.1, null_class=False,
                             arch="maskgit")


def check_tree(flat: dict[str, Any], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Same paths and shapes, or one MaskGITError naming the first few offending paths."""
    missing = [p for p in expected if p not in flat]
    extra = sorted(p for p in flat if p not in expected)
    wrong = [f"{p} {tuple(getattr(flat[p], 'shape', ())) if isinstance(flat[p], np.ndarray) else 'non-array'}"
             f" (need {expected[p]})" for p in expected
             if p in flat and (not isinstance(flat[p], np.ndarray) or flat[p].shape != expected[p])]
    if missing or extra or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:4])}" + (", ..." if len(items) > 4 else "")
                 for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                 if items]
        raise MaskGITError(f"the {what} tree does not match the official layout: " + "; ".join(parts))


def _build(model_cls, cfg, entries: list[Entry], flat: dict[str, np.ndarray]) -> torch.nn.Module:
    """Instantiate on the meta device (no random init of ~700 MB) and assign the converted float32 tensors."""
    state = {}
    for key, arr in convert_arrays(entries, flat):
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if not a.flags.writeable:  # a view of the file's bytes: take own, writable memory
            a = a.copy()
        state[key] = torch.from_numpy(a)
    with torch.device("meta"):
        model = model_cls(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - a model change that the mapping does not know about
        raise MaskGITError(f"internal: no official weights for {left[:4]}")
    return model.eval()


def tokenizer_from_flax(tree: dict, image_size: int = 256, num_groups: int = 32):
    """Official tokenizer variables (with or without {"params": ...}) -> our ``VQGAN``."""
    from maskgit.models.vqgan import VQGAN
    params = params_of(tree)
    cfg = infer_tokenizer_config(params, image_size, num_groups)
    entries = tokenizer_mapping(cfg)
    flat = flatten(params)
    check_tree(flat, expected_flax_shapes(cfg), "tokenizer")
    return _build(VQGAN, cfg, entries, flat)


def transformer_from_flax(tree: dict, codebook_size: int = 1024):
    """Official transformer variables (with or without {"params": ...}) -> our ``MaskGITTransformer``."""
    from maskgit.models.transformer import MaskGITTransformer
    params = params_of(tree)
    cfg = infer_transformer_config(params, codebook_size)
    entries = transformer_mapping(cfg)
    flat = flatten(params)
    check_tree(flat, expected_flax_shapes(cfg), "transformer")
    return _build(MaskGITTransformer, cfg, entries, flat)


# ================================================================ the whole release -> a pipeline directory
def _resolution(name: str) -> str | None:
    m = re.search(r"(256|512)", name)
    return m.group(1) if m else None


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k labels in the standard index order (0 tench, ..., 207 golden retriever, ...)."""
    return (Path(__file__).resolve().parent.parent / "weights" / "imagenet_classes.txt").read_text().splitlines()


def convert_official(tokenizer: str | Path, transformer: str | Path, out: str | Path,
                     dtype: torch.dtype | None = None, force: bool = False,
                     log: Callable[[str], None] = logger.info, class_names: list[str] | None = None):
    """Official tokenizer + transformer files -> ``out/tokenizer`` + ``out/maskgit`` (our format), atomically.
    ``class_names``: stored in the transformer's meta; default the ImageNet labels when it has 1,000 classes.

    Returns ``(tokenizer model, transformer model, out path)``."""
    from maskgit.storage.checkpoint import atomic_dir, save_model
    tokenizer, transformer, out = Path(tokenizer), Path(transformer), Path(out)
    for p in (tokenizer, transformer):
        if not p.exists():
            load_flax_msgpack(p)  # raises the helpful "does not exist" message
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise MaskGITError(f"{out} already exists and is not empty: choose a new directory or pass --force "
                           f"to replace it")
    a, b = _resolution(tokenizer.name), _resolution(transformer.name)
    if a and b and a != b:
        warnings.warn(f"{tokenizer.name} and {transformer.name} look like different resolutions ({a} vs "
                      f"{b}); the release pairs tokenizer_imagenetN with maskgit_imagenetN", stacklevel=2)
    log(f"reading {tokenizer}")
    tok_tree = params_of(load_flax_msgpack(tokenizer))
    tok_cfg = infer_tokenizer_config(tok_tree)  # fail fast on a wrong tokenizer before the big file
    check_tree(flatten(tok_tree), expected_flax_shapes(tok_cfg), "tokenizer")
    log(f"reading {transformer}")
    tr = transformer_from_flax(load_flax_msgpack(transformer), codebook_size=tok_cfg.codebook_size)
    size = tr.config.grid_size * tok_cfg.downsample
    tok = tokenizer_from_flax(tok_tree, image_size=size)
    del tok_tree
    if class_names is None and tr.config.num_classes == 1000:
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != tr.config.num_classes:
        raise MaskGITError(f"{len(class_names)} class names for a transformer of {tr.config.num_classes} classes")
    source = {"source": "google-research/maskgit (official JAX/Flax release)", "dataset": "imagenet",
              "image_size": size}
    with atomic_dir(out) as tmp:
        save_model(tok, tmp / "tokenizer", dtype=dtype, meta={**source, "converted_from": tokenizer.name})
        save_model(tr, tmp / "maskgit", dtype=dtype,
                   meta={**source, "converted_from": transformer.name, "tokenizer": "../tokenizer",
                         "class_names": class_names})
    return tok, tr, out


def summary(model: torch.nn.Module) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters()) / 1e6
    if isinstance(c, VQGANConfig):
        g = c.grid_shape()
        return (f"tokenizer: {n:.1f}M parameters, {c.codebook_size} codes of {c.embedding_dim}, "
                f"{c.image_size} px -> {g[0]}x{g[1]} tokens")
    return (f"transformer: {n:.1f}M parameters, {c.depth} layers x {c.width}, {c.heads} heads, "
            f"{c.num_classes} classes, {c.grid_size}x{c.grid_size} tokens")


__all__ = ["OFFICIAL_FILES", "OFFICIAL_URL", "Entry", "check_tree", "convert_arrays", "convert_official",
           "expected_flax_shapes", "flatten", "imagenet_class_names", "infer_tokenizer_config",
           "infer_transformer_config", "load_flax_msgpack", "params_of", "summary", "tokenizer_from_flax",
           "tokenizer_mapping", "transformer_from_flax", "transformer_mapping", "unflatten", "write_flax_msgpack"]
