"""Training as library calls, each the whole recipe of its command: ``train_tokenizer`` (images -> a VQGAN
tokenizer; `maskgit train-tokenizer`), ``tokenize_dataset`` (images -> a token store; `maskgit tokenize`) and
``train_transformer`` (a token store -> the MaskGIT transformer or the AR baseline; `maskgit train`), with
presets, ``init``, ``resume``, caption caches and sample grids. The commands parse their flags and call these.

Settings are the fields of ``TrainConfig`` (for the tokenizer also ``TokenizerTrainConfig``) as keywords, over
the stage's defaults (or over ``config=`` / ``losses=``). Messages go to the ``maskgit`` logger: warnings are shown,
INFO (what the commands print) with ``logging.getLogger("maskgit").setLevel("INFO")``. Error messages name the
commands' flags, whose names are these arguments' names."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from maskgit.config import TokenizerTrainConfig, TrainConfig, VQGANConfig, from_dict, vqgan_preset
from maskgit.devices import resolve_device
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import load_model, read_config
from maskgit.training.preflight import first_examples, load_sized, report_and_check
from maskgit.training.transformer_setup import (
    build_model,
    model_from_init,
    model_from_run,
    open_stores,
    setup_lora,
    store_classes,
)

log = logging.getLogger(__name__)

# the transformer stage's defaults: what `maskgit train --help` shows and what a run starts from
TRANSFORMER_TRAIN_DEFAULTS = TrainConfig()
# the tokenizer stage's own defaults (TrainConfig's are the transformer's), and the fields it has no use for
TOKENIZER_TRAIN_DEFAULTS = TrainConfig(batch_size=128, lr=2e-4, warmup_steps=500, max_steps=20_000,
                                       weight_decay=0.0, beta1=0.5, beta2=0.9, grad_clip=1.0, save_every=1000,
                                       label_smoothing=0.0, cond_dropout=0.0, val_batches=4)
TOKENIZER_UNUSED = ("label_smoothing", "mask_schedule", "loss_on_all_tokens", "cond_dropout")
DEFAULT_TOKENIZER_PRESET = "fmnist-f4"


@dataclass(frozen=True)
class TrainRun:
    """What a training call left: its run directory, the step it reached, its last metrics and its wall time."""

    out: Path
    step: int
    metrics: dict
    seconds: float
    stopped_early: bool = False  # --max-minutes ran out, or SIGTERM/SIGINT (a checkpoint is saved, no final/)
    lora: dict | None = None  # the LoRA settings of an adapter run (final/ then holds the adapter alone)

    @property
    def final(self) -> Path:
        """The trained model's directory (``maskgit.load`` reads it), once the run has finished."""
        return self.out / "final"

    def summary(self) -> dict:
        """The run's result line: step, wall seconds and the last float metrics (rounded)."""
        return {"step": self.step, "wall_s": round(self.seconds, 1),
                **{k: round(v, 5) for k, v in self.metrics.items() if isinstance(v, float)}}


# ---------------------------------------------------------------- settings
def _check_settings(what: str, settings: dict, classes: tuple[type, ...], unused: tuple[str, ...] = ()) -> None:
    known = {f.name for c in classes for f in dataclasses.fields(c)} - set(unused)
    bad = sorted(set(settings) - known)
    if bad:
        raise MaskGITError(f"{what}: unknown setting(s) {', '.join(bad)}; the settings are the fields of "
                           f"{' and '.join(c.__name__ for c in classes)}"
                           + (f" except {', '.join(unused)}" if unused else ""))


def _apply(settings: dict, *configs):
    """Each config with the settings that are its fields replaced (validated by the dataclass, in order)."""
    return tuple(dataclasses.replace(c, **{f.name: settings[f.name] for f in dataclasses.fields(c)
                                           if f.name in settings}) for c in configs)


def _python_call(name: str, **given) -> str:
    """A library call as the run's metadata records it (where a command records its command line)."""
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()
             if v is not None and v is not False and v != ""}
    return f"maskgit.{name}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _load_images(name: str, split: str, image_size: int | None):
    from maskgit.data.datasets import load_dataset
    return load_dataset(name, split=split, image_size=image_size)


# ---------------------------------------------------------------- the tokenizer
def train_tokenizer(data: str, out: str | Path, *, preset: str | None = None, image_size: int | None = None,
                    perceptual: str = "none", init: str | Path | None = None, freeze: str = "",
                    resume: bool | str | Path = False, workers: int | None = None, augment: str = "auto",
                    device: str = "auto", skip_memory_check: bool = False, config: TrainConfig | None = None,
                    losses: TokenizerTrainConfig | None = None, command: str | None = None,
                    **settings) -> TrainRun:
    """Train a VQGAN tokenizer on the dataset ``data`` (a name of `maskgit data list`) into the run directory
    ``out`` (checkpoints, metrics, reconstruction grids, final/). ``preset`` (default fmnist-f4) or ``init`` (a
    tokenizer or run to fine-tune) gives the shape; ``perceptual`` is "none" or "features:PATH"; ``workers``
    loader processes (default min(4, CPUs)); ``augment`` auto, crop-flip or none."""
    from maskgit.data.loader import DatasetSource, default_workers, resolve_augment
    from maskgit.models.features import FeatureNet  # noqa: F401  (registers the kind)
    from maskgit.models.vqgan import VQGAN
    from maskgit.training import finetune
    from maskgit.training.loop import train
    from maskgit.training.losses import TokenizerTask
    _check_settings("train_tokenizer", settings, (TrainConfig, TokenizerTrainConfig), TOKENIZER_UNUSED)
    call = command or _python_call("train_tokenizer", data=data, out=out, preset=preset, image_size=image_size,
                                   init=init, freeze=freeze, resume=resume, **settings)
    device = resolve_device(device)
    init_dir, init_ck = finetune.resolve_init(init) if init else (None, None)
    vcfg, shown = _tokenizer_shape(preset, init, init_dir)
    train_ds, val_ds, size = load_sized(data, shown, vcfg.image_size, image_size, _load_images)
    vcfg = dataclasses.replace(_fit_channels(vcfg, train_ds, data, shown, init_dir is not None), image_size=size)
    tcfg, lcfg = _apply(settings, config or TOKENIZER_TRAIN_DEFAULTS, losses or TokenizerTrainConfig())
    percep = _perceptual_net(perceptual)
    torch.manual_seed(tcfg.seed)  # the initial weights follow the seed (a run owns the RNG: the loop seeds it too)
    task = TokenizerTask(VQGAN(vcfg), lcfg, percep)
    init_opt = None
    if init_dir is not None:
        report, opt_state = finetune.init_tokenizer(task, init_dir, init_ck)
        init_opt = finetune.optimizer_loader(opt_state)
        log.info(f"init from {init_dir}: {report}")
    if freeze:
        log.info(f"frozen: {', '.join(finetune.freeze(task.model, 'vqgan', freeze))}")
    source = DatasetSource(train_ds, workers=default_workers() if workers is None else workers,
                           augment=resolve_augment(augment, train_ds))
    g = vcfg.grid_shape(size)
    report_and_check(task, first_examples(source), tcfg.batch_size, device, ema=tcfg.ema > 0,
                     skip=skip_memory_check,
                     describe_model=f"tokenizer {shown}: {size}x{size}x{vcfg.channels} images -> {g[0]}x{g[1]} "
                                    f"tokens of {vcfg.codebook_size} codes")
    out = Path(out)
    sample_fn = _reconstructions(val_ds if val_ds is not None else train_ds, out)
    meta = {"dataset": data, "preset": preset or DEFAULT_TOKENIZER_PRESET, "command": call,
            "perceptual": perceptual, "losses": dataclasses.asdict(lcfg)}
    if init_dir is not None:
        meta.update(preset=None, init=str(init_dir.resolve()))
    t0 = time.time()
    res = train(task, source, tcfg, out, val_data=DatasetSource(val_ds) if val_ds else None, resume=resume,
                device=device, sample_fn=sample_fn, meta=meta, init_optimizer=init_opt)
    return TrainRun(out, res.step, res.metrics, time.time() - t0, res.stopped_early)


def _tokenizer_shape(preset: str | None, init, init_dir: Path | None) -> tuple[VQGANConfig, str]:
    """(the tokenizer's config, the name the messages give it): the --init model's, or the preset's."""
    if init_dir is not None:
        if preset:
            raise MaskGITError("--init decides the tokenizer's shape: leave out --preset")
        cfg = from_dict(VQGANConfig, read_config(init_dir).get("config", {}), what=f"{init_dir}/config.json")
        return cfg, f"--init {init}"
    name = preset or DEFAULT_TOKENIZER_PRESET
    return vqgan_preset(name), name


def _fit_channels(vcfg: VQGANConfig, train_ds, data: str, shown: str, from_init: bool) -> VQGANConfig:
    """A preset is built for the data's number of channels (an --init tokenizer must already take them)."""
    channels = train_ds[0][0].shape[0]
    if channels == vcfg.channels:
        return vcfg
    if from_init:
        raise MaskGITError(f"the --init tokenizer takes {vcfg.channels}-channel images; {data} has {channels}")
    log.info(f"{data} has {channels}-channel images: the {shown} tokenizer is built for {channels} channels (the "
             f"preset has {vcfg.channels})")
    return dataclasses.replace(vcfg, channels=channels)


def _perceptual_net(spec: str):
    if spec == "none":
        return None
    if not spec.startswith("features:"):
        raise MaskGITError("--perceptual must be 'none' or 'features:PATH'")
    return load_model(spec.split(":", 1)[1], "features")


def _reconstructions(show, out: Path):
    """The sample callback of the tokenizer stage: 32 fixed images beside their reconstructions."""
    fixed = torch.stack([show[i][0] for i in range(min(32, len(show)))])

    def sample_fn(task, step):
        from maskgit.storage.images import make_grid, save_png
        task.model.eval()
        with torch.no_grad():
            x = fixed.to(next(task.model.parameters()).device)
            rec = task.model.decode(task.model.encode(x))
        task.model.train()
        both = torch.stack([x.cpu(), rec.cpu()], 1).flatten(0, 1)  # original, reconstruction, ...
        save_png(make_grid(both, ncol=16, scale=2), out / f"recon_{step:08d}.png")
    return sample_fn


# ---------------------------------------------------------------- tokenizing
def tokenize_dataset(tokenizer: str | Path, data: str, out: str | Path, *, split: str = "train",
                     image_size: int | None = None, batch_size: int = 500, flip: bool = False,
                     workers: int | None = None, resume: bool = False, text_encoder: str | None = None,
                     device: str = "auto") -> dict:
    """Encode the dataset ``data`` through the tokenizer directory ``tokenizer`` into the token store ``out`` (one
    store also under torchrun; ``flip`` adds mirrored copies). With ``text_encoder`` the captions' embeddings are
    cached beside it. Returns this process's counts: rows, encoded, seconds, images_per_s, rank (and captions:
    the embeddings' file, on rank 0 with ``text_encoder``)."""
    import torch.distributed as dist

    from maskgit.data.encode import tokenize_stream
    from maskgit.data.loader import default_workers
    from maskgit.data.tokenstore import model_hash
    from maskgit.distributed import init_distributed
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise MaskGITError(f"--workers must be >= 0, not {workers}")
    if batch_size < 1:
        raise MaskGITError(f"--batch-size must be >= 1, not {batch_size}")
    rank, world, dev = init_distributed(resolve_device(device))
    try:
        model = load_model(tokenizer, "vqgan", str(dev))
        ds = _load_images(data, split, image_size or model.config.image_size)
        if text_encoder and getattr(ds, "classes", None) is not None:
            raise MaskGITError(f"--text-encoder needs a captioned dataset; {data} has class labels")
        meta = {"dataset": data, "split": split, "codebook_size": model.codebook_size,
                "tokenizer": str(Path(tokenizer).resolve()), "tokenizer_hash": model_hash(model),
                "classes": getattr(ds, "classes", None)}
        model.prepare_for_inference(channels_last=dev.type == "cpu")  # the fast CPU encoder (after the hash)
        stats = tokenize_stream(model, ds, Path(out), batch_size=batch_size, flip=flip, resume=resume,
                                workers=workers, device=dev, meta=meta, rank=rank, world=world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    stats = {**stats, "rank": rank}
    if rank == 0 and text_encoder:
        from maskgit.models.text import ensure_store_text
        stats["captions"] = ensure_store_text(out, text_encoder)
    return stats


# ---------------------------------------------------------------- the transformer
def train_transformer(tokens: str | Path, out: str | Path, *, tokenizer: str | Path | None = None,
                      val_tokens: str | Path | None = None, preset: str | None = None, arch: str = "maskgit",
                      text_encoder: str | None = None, text_mode: str | None = None, init: str | Path | None = None,
                      freeze: str = "", lora: int | None = None, lora_alpha: float | None = None,
                      lora_targets: tuple[str, ...] | None = None, grad_checkpointing: bool = False,
                      resume: bool | str | Path = False, device: str = "auto", skip_memory_check: bool = False,
                      config: TrainConfig | None = None, command: str | None = None, **settings) -> TrainRun:
    """Train the MaskGIT transformer (``arch="ar"``: the AR baseline) on the token store ``tokens`` into the run
    directory ``out``. ``tokenizer`` (the store's) checks the store's hash and draws sample grids; ``preset``
    (default maskgit-small-8x8, muse-small-8x8 with ``text_encoder``), ``init`` (a model to fine-tune) or the run
    itself (``resume``) gives the shape; ``lora`` RANK trains adapters on the ``init`` model."""
    from maskgit.data.tokenstore import model_hash
    from maskgit.training.loop import train
    from maskgit.training.objectives import MaskedTokenTask, NextTokenTask
    from maskgit.training.resume import find_checkpoint
    _check_settings("train_transformer", settings, (TrainConfig,))
    call = command or _python_call("train_transformer", tokens=tokens, out=out, tokenizer=tokenizer,
                                   val_tokens=val_tokens, preset=preset, arch=arch, text_encoder=text_encoder,
                                   text_mode=text_mode, init=init, freeze=freeze, lora=lora, resume=resume,
                                   **settings)
    device = resolve_device(device)
    vq = load_model(tokenizer, "vqgan") if tokenizer else None
    store, val = open_stores(tokens, val_tokens, model_hash(vq) if vq is not None else None, text_encoder)
    text = store.text
    classes, num_classes = store_classes(store)
    (cfg,) = _apply(settings, config or TRANSFORMER_TRAIN_DEFAULTS)
    torch.manual_seed(cfg.seed)  # the initial weights follow the seed (a run owns the RNG: the loop seeds it too)
    text_shape = None if text is None else (text.dim, text.max_len)
    out = Path(out)
    ck = find_checkpoint(out, resume) if resume else None
    model, preset, init_dir = _starting_model(ck, out, init, preset, arch, text_mode, store.meta, num_classes,
                                              text_shape)
    if freeze:
        from maskgit.training.finetune import freeze as freeze_parts
        log.info(f"frozen: {', '.join(freeze_parts(model, 'transformer', freeze))}")
    if len(store) < cfg.batch_size:
        raise MaskGITError(f"{tokens} holds {len(store)} examples, fewer than --batch-size {cfg.batch_size}")
    lora_cfg = setup_lora(model, ck, init_dir, out, rank=lora, alpha=lora_alpha, targets=lora_targets,
                          freeze=freeze, grad_checkpointing=grad_checkpointing)
    task = (NextTokenTask if arch == "ar" else MaskedTokenTask)(model, cfg)
    report_and_check(task, first_examples(store), cfg.batch_size, device, ema=cfg.ema > 0, skip=skip_memory_check,
                     describe_model=_describe(model.config, arch, preset, vq))
    meta = {"command": call, "tokens": str(Path(tokens).resolve()), "class_names": classes, "arch": arch,
            "preset": preset}
    if lora_cfg is not None:
        meta["lora"] = lora_cfg
    if init_dir is not None:
        meta["init"] = str(init_dir.resolve())
    if text is not None:
        meta["text_encoder"] = text.spec  # what Pipeline loads to embed prompts
    if tokenizer:
        meta["tokenizer"] = str(Path(tokenizer).resolve())
    t0 = time.time()
    res = train(task, store, cfg, out, val_data=val, resume=ck or resume, device=device,
                sample_fn=_sample_grids(vq, store, num_classes, arch, out), meta=meta)
    return TrainRun(out, res.step, res.metrics, time.time() - t0, res.stopped_early, lora_cfg)


def _starting_model(ck: Path | None, out: Path, init, preset: str | None, arch: str, text_mode: str | None,
                    store_meta: dict, num_classes: int, text):
    """(model, preset name, --init directory or None): the run's own model on resume, the --init model, or the
    preset fitted to the store."""
    if ck is not None:
        model, preset = model_from_run(ck, out, arch, preset, text_mode, store_meta, num_classes, text)
        return model, preset, None
    if init:
        if preset or text_mode:
            raise MaskGITError("--init decides the model's shape: leave out --preset and --text-mode")
        return model_from_init(init, arch, store_meta, num_classes, text)
    preset = preset or ("muse-small-8x8" if text is not None else "maskgit-small-8x8")
    return build_model(preset, arch, store_meta, num_classes, text, text_mode), preset, None


def _describe(mc, arch: str, preset: str | None, vq) -> str:
    size = f", {vq.config.image_size} px images" if vq is not None else ""
    cond = f"{mc.num_classes} classes" if not mc.text_dim else f"text {mc.text_len} x {mc.text_dim}"
    return f"{arch} {preset}: {mc.grid_size}x{mc.grid_size} tokens of {mc.codebook_size} codes{size}, {cond}"


def _sample_grids(vq, store, num_classes: int, arch: str, out: Path):
    """The sample callback of the transformer stage: 4 images per class (or 16 training captions), drawn
    through the tokenizer; nothing without a tokenizer or a condition."""
    text = store.text

    def sample_fn(task, step):
        if vq is None or not (num_classes or text is not None):
            return
        from maskgit.pipeline import Pipeline
        from maskgit.storage.images import make_grid, save_png
        m = task.model
        m.eval()
        labels = torch.arange(num_classes).repeat_interleave(4)
        if text is not None:  # 16 training captions, embedded from the store's cache
            from maskgit.models.text import CachedTextEncoder
            prompts = list(dict.fromkeys(store.captions))[:16]
            pipe = Pipeline(vq, m, device=next(m.parameters()).device, text_encoder=CachedTextEncoder(text))
            imgs = pipe.generate(prompts=prompts, output="tensor", cfg=1.0)
        elif arch == "ar":
            from maskgit.config import SampleConfig
            toks = m.generate(labels, SampleConfig(), torch.Generator().manual_seed(0))
            g = m.config.grid_size
            imgs = vq.to(toks.device).decode(toks.view(-1, g, g))  # (B, h, w) -> images
        else:
            imgs = Pipeline(vq, m, device=next(m.parameters()).device).generate(labels, output="tensor")
        m.train()
        save_png(make_grid(imgs.cpu(), ncol=8, scale=2), out / f"samples_{step:08d}.png")
    return sample_fn
