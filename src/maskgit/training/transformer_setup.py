"""The transformer stage before its first step: the token stores (with their caption embeddings), the model (a
preset fitted to the store, the run's own model on resume, or an --init model fitted to the store's classes) and
LoRA adapters on it. Error messages name the `maskgit train` flags, the library arguments of the same names."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch import nn

from maskgit.config import TransformerConfig, from_dict, transformer_preset
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import read_config

log = logging.getLogger(__name__)

Text = tuple[int, int] | None  # (dim, len) of a store's caption embeddings; None: class-conditional


def open_stores(tokens: str | Path, val_tokens: str | Path | None, tokenizer_hash: str | None,
                text_encoder: str | None):
    """(training store, validation store or None); with ``text_encoder``, the captions it has not embedded yet
    are embedded into the stores first."""
    from maskgit.data.tokenstore import TokenStore
    from maskgit.models.text import encoder_name
    if text_encoder:
        from maskgit.models.text import ensure_store_text, load_text_encoder, store_cache_path
        encoder = None
        for path in (tokens, val_tokens):
            if path and not store_cache_path(path, encoder_name(text_encoder)).exists():
                encoder = encoder or load_text_encoder(text_encoder)
                log.info(f"embedding the captions of {path} with {encoder.name}")
                ensure_store_text(path, text_encoder, encoder)
        name = encoder_name(text_encoder)
        store = TokenStore(tokens, tokenizer_hash, text_encoder=name)
        val = TokenStore(val_tokens, tokenizer_hash, text_encoder=name) if val_tokens else None
    else:
        store = TokenStore(tokens, tokenizer_hash)
        val = TokenStore(val_tokens, tokenizer_hash) if val_tokens else None
    text = store.text
    if text is None and not text_encoder:
        from maskgit.models.text import store_caches
        if len(store_caches(tokens)) > 1:
            raise MaskGITError(f"{tokens} has caption embeddings of several encoders: pick one with "
                               f"--text-encoder")
    if text is not None:
        log.info(f"text-conditioned: {store.text_encoder} caption embeddings {text.max_len} x {text.dim}")
    if val is not None and text is not None and val.text_encoder != store.text_encoder:
        raise MaskGITError(f"{val_tokens} has no {store.text_encoder} caption embeddings: pass --text-encoder")
    return store, val


def store_classes(store) -> tuple[list[str] | None, int]:
    """(class names or None, number of classes) of a token store (0 classes: unlabelled)."""
    classes = store.meta.get("classes")
    num_classes = int(store.labels.max()) + 1 if store.labels is not None else 0
    if classes:
        num_classes = len(classes)
    return classes, num_classes


def _model_class(arch: str):
    from maskgit.models.autoregressive import ARTransformer
    from maskgit.models.transformer import MaskGITTransformer
    return ARTransformer if arch == "ar" else MaskGITTransformer


def build_model(preset: str, arch: str, store_meta: dict, num_classes: int | None, text: Text = None,
                text_mode: str | None = None):
    """The preset fitted to the store; ``text`` = (dim, len) of caption embeddings for a text-conditioned model
    (no classes, no "no class" id: the null text is CFG's unconditional input)."""
    cfg = transformer_preset(preset)
    grid = store_meta["grid"]
    changes = {"arch": arch, "codebook_size": store_meta["codebook_size"], "grid_size": grid[0]}
    if grid[0] != grid[1]:
        raise MaskGITError(f"token grids must be square, the store has {grid}")
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if text is not None:
        if arch == "ar":
            raise MaskGITError("the AR baseline is class-conditional only: train it without --text-encoder")
        changes.update(text_dim=text[0], text_len=text[1], num_classes=0, null_class=False)
        if text_mode:
            changes["text_mode"] = text_mode
    elif text_mode:
        raise MaskGITError("--text-mode is for text-to-image training: add --text-encoder")
    elif cfg.text_dim:
        raise MaskGITError(f"preset {preset} is text-conditioned: train it on a captioned token store with "
                           f"--text-encoder (e.g. minilm)")
    cfg = dataclasses.replace(cfg, **changes)
    return _model_class(arch)(cfg)


def model_from_run(ck: Path, out: Path, arch: str, preset: str | None, text_mode: str | None, store_meta: dict,
                   num_classes: int, text: Text):
    """Resume: the model as the run built it (the config saved in its latest checkpoint ``ck``), not as the preset
    reads today; an explicit preset/text_mode/arch or a store that disagrees with the run is an error. Returns
    (model, preset name)."""
    doc = read_config(ck)
    kind = "ar" if arch == "ar" else "transformer"
    if doc.get("kind") != kind:
        raise MaskGITError(f"{out} holds a {doc.get('kind')!r} model: resume it with the --arch it started with")
    cfg = from_dict(TransformerConfig, doc.get("config", {}), what=f"{ck}/config.json")
    saved = (doc.get("meta") or {}).get("preset")
    if preset and saved and preset != saved:
        raise MaskGITError(f"{out} was started with --preset {saved}: resume it without --preset (or with "
                           f"--preset {saved}), or train the new preset in a new --out directory")
    if text_mode and text_mode != cfg.text_mode:
        raise MaskGITError(f"{out} was started with --text-mode {cfg.text_mode}: resume it without --text-mode, "
                           f"or train {text_mode} in a new --out directory")
    found = {"codebook_size": cfg.codebook_size, "grid_size": cfg.grid_size, "text_dim": cfg.text_dim,
             "num_classes": cfg.num_classes}
    want = {"codebook_size": store_meta["codebook_size"], "grid_size": store_meta["grid"][0],
            "text_dim": text[0] if text else 0, "num_classes": 0 if text else num_classes}
    diff = {k: (found[k], want[k]) for k in found if found[k] != want[k]}
    if diff:
        raise MaskGITError(f"{out} was trained on a different token store: (run, this store) = {diff}")
    return _model_class(arch)(cfg), saved or preset


def model_from_init(init: str | Path, arch: str, store_meta: dict, num_classes: int, text: Text):
    """--init DIR: the model in DIR fitted to this store's classes (see training.finetune.adapt_classes).
    Returns (model, its preset name, the resolved DIR)."""
    from maskgit.training.finetune import init_transformer, resolve_init
    init_dir, _ = resolve_init(init)
    doc = read_config(init_dir)
    if doc.get("kind") not in ("transformer", "ar"):
        raise MaskGITError(f"--init {init} holds a {doc.get('kind')!r} model, not a transformer")
    cfg = from_dict(TransformerConfig, doc.get("config", {}), what=f"{init_dir}/config.json")
    grid = store_meta["grid"]
    if (cfg.codebook_size, cfg.grid_size) != (store_meta["codebook_size"], grid[0]):
        raise MaskGITError(f"--init {init} reads {cfg.grid_size}x{cfg.grid_size} grids of {cfg.codebook_size} "
                           f"codes, the store has {grid[0]}x{grid[1]} of {store_meta['codebook_size']}: tokenize "
                           "the images with the tokenizer that model was trained with")
    if bool(cfg.text_dim) != (text is not None):
        raise MaskGITError("--init: a text-conditioned model needs a captioned store (and a class model a labelled "
                           "one)")
    if not text:
        cfg = dataclasses.replace(cfg, num_classes=num_classes)
    model = _model_class(arch)(cfg)
    report = init_transformer(model, init_dir)
    log.info(f"init from {init_dir}: {report}")
    return model, (doc.get("meta") or {}).get("preset"), init_dir


def setup_lora(model: nn.Module, ck: Path | None, init_dir: Path | None, out: Path, *, rank: int | None,
               alpha: float | None, targets: tuple[str, ...] | None, freeze: str,
               grad_checkpointing: bool) -> dict | None:
    """LoRA adapters of ``rank`` on the project's transformer (on resume: as the run's checkpoint has them;
    ``targets`` None: the default layers), then gradient checkpointing. Returns the LoRA settings for the run's
    metadata (None without LoRA)."""
    from maskgit.training.lora import DEFAULT_TARGETS, add_lora, trainable_parameters
    saved = ((read_config(ck).get("meta") or {}).get("lora") if ck is not None else None)
    cfg = None
    if rank is not None:
        cfg = {"rank": rank, "alpha": float(rank if alpha is None else alpha),
               "targets": list(DEFAULT_TARGETS if targets is None else targets),
               "base": str(init_dir) if init_dir else None}
    elif alpha is not None or targets is not None:
        raise MaskGITError("--lora-alpha and --lora-targets go with --lora RANK")
    if ck is not None:
        if cfg is not None and saved is None:
            raise MaskGITError(f"{out} was not trained with --lora: resume it without --lora, or train the "
                               "adapters in a new --out directory")
        if saved is not None and cfg is not None and {k: cfg[k] for k in ("rank", "alpha", "targets")} != \
                {k: saved.get(k) for k in ("rank", "alpha", "targets")}:
            raise MaskGITError(f"{out} was trained with LoRA {saved}: resume it with the same --lora settings")
        cfg = saved
    elif cfg is not None and init_dir is None:
        raise MaskGITError("--lora trains adapters on a trained model: add --init DIR (the model to adapt)")
    if cfg is not None:
        if freeze:
            raise MaskGITError("--lora freezes the whole model already: leave out --freeze")
        names = add_lora(model, cfg["rank"], cfg["alpha"], tuple(cfg["targets"]))
        log.info(f"LoRA rank {cfg['rank']}, alpha {cfg['alpha']:g} on {len(names)} layers: "
                 f"{trainable_parameters(model):,} trainable parameters")
    if grad_checkpointing:
        from maskgit.training.grad_checkpoint import enable_grad_checkpointing
        log.info(enable_grad_checkpointing(model))
    return cfg
