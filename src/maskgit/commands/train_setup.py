"""What `train` and `train-tokenizer` share before training starts: the image size (the preset decides it; a
dataset that would change it needs an explicit --image-size), the one-line summary of model size, image size and
expected memory, and the refusal of a batch that would not fit."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from maskgit.errors import MaskGITError

FILE_DATASETS = ("imagefolder", "coco", "captions")  # no size of their own: resized / cropped to the model's


def memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the estimated memory of one step exceeds what this machine has")


def finetune_args(p: argparse.ArgumentParser, kind: str) -> None:
    """--init and --freeze (see maskgit.training.finetune)."""
    from maskgit.training.finetune import FREEZE_PARTS
    parts = ", ".join(FREEZE_PARTS["vqgan" if kind == "tokenizer" else "transformer"])
    what = ("a tokenizer: its final/ or model directory (weights only), or a run / checkpoint directory (also the "
            "discriminator and optimizer state)") if kind == "tokenizer" else \
        ("a transformer model directory (a run's final/, the shipped weights, a converted official model); another "
         "number of classes is adapted (kept by index, new ones initialised) and reported")
    p.add_argument("--init", default=None, metavar="DIR",
                   help=f"fine-tune: start from {what}. Lower the learning rate (README: Train on your own images)")
    p.add_argument("--freeze", default="", metavar="PARTS",
                   help=f"comma-separated parts that do not train: {parts}" +
                        (" (blocks:N = the first N blocks)" if kind != "tokenizer" else ""))


def load_sized(data: str, preset: str, preset_size: int, explicit: int | None, loader):
    """(train dataset, validation dataset or None, image size). ``loader(spec, split, size)`` loads a dataset.

    The preset's image size is used unless --image-size says otherwise. File datasets are resized / cropped to it;
    a dataset with a size of its own (fashion-mnist, emoji, ...) that differs is an error naming both fixes."""
    name = data.partition(":")[0]
    if explicit is not None:
        if explicit < 8:
            raise MaskGITError(f"--image-size must be at least 8, not {explicit}")
        size = explicit
        train_ds = loader(data, "train", size)
    elif name in FILE_DATASETS:
        size = preset_size
        train_ds = loader(data, "train", size)
    else:
        train_ds = loader(data, "train", None)
        size = int(train_ds[0][0].shape[-1])
        if size != preset_size:
            raise MaskGITError(f"{data} images are {size} px but preset {preset} is {preset_size} px: pass "
                               f"--image-size {size} (the model runs at the data's size) or --image-size "
                               f"{preset_size} (the images are resized), or choose a {size} px preset "
                               f"(`maskgit presets`)")
    try:
        val_ds = loader(data, "test", size)
    except MaskGITError:
        val_ds = None
    return train_ds, val_ds, size


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def report_and_check(task: nn.Module, probe_batch: dict, batch_size: int, device: str, *, ema: bool,
                     skip: bool, describe_model: str) -> None:
    """Print the model size, image/token shape and expected memory of one step (rank 0); refuse a batch that
    would not fit (every rank raises the same error)."""
    from maskgit.training import memory
    est = memory.estimate(task, probe_batch, batch_size, device, ema=ema)
    import os
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        model = task.model
        n_model = sum(p.numel() for p in model.parameters())
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        extra = est.params - n_model
        parts = [f"model {fmt_count(n_model)} parameters"]
        if frozen:
            parts.append(f"{fmt_count(frozen)} frozen")
        if extra:
            parts.append(f"+ {fmt_count(extra)} in the training task (discriminator, ...)")
        print(f"{describe_model}; {', '.join(parts)}")
        print(memory.describe(est), flush=True)
    if not skip:
        memory.check(est, multiple=world)


def first_examples(source, n: int = 2) -> dict:
    """A probe batch: the first ``n`` examples of a loop data source."""
    n = min(n, len(source))
    return source.batch(torch.arange(n))


def lora_args(p: argparse.ArgumentParser) -> None:
    """--lora RANK, --lora-alpha, --lora-targets, --grad-checkpointing and --data (aMUSEd fine-tuning)."""
    p.add_argument("--lora", type=int, default=None, metavar="RANK",
                   help="fine-tune LoRA adapters of this rank on the attention and MLP projections of the --init "
                        "model (its weights frozen); final/ holds the adapter alone: maskgit.load(BASE, "
                        "lora=OUT/final), sample --lora-weights OUT/final")
    p.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="LoRA scale: the update is multiplied by A / RANK (default: A = RANK)")
    p.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated nn.Linear names (last parts) that get adapters (default: "
                        "qkv,q,kv,out,fc1,fc2; aMUSEd: to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: less memory, ~30%% more time")
    p.add_argument("--data", default=None, metavar="IMAGES",
                   help="aMUSEd fine-tuning (with --init amused/amused-256 or a local aMUSEd folder): a folder of "
                        "images with a .txt caption beside each or a captions.jsonl; tokenized and embedded once "
                        "into OUT/data. Its defaults are the reference recipe's: batch 8, constant LR 1e-4 "
                        "(LoRA 8e-4), 1000 steps, weight decay 0.01, beta2 0.999, no label smoothing, 10%% caption "
                        "dropout")


def lora_targets(args, default: tuple[str, ...]) -> tuple[str, ...]:
    if not args.lora_targets:
        return default
    return tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())


def setup_lora(args, model: nn.Module, ck, init_dir) -> dict | None:
    """--lora on the project's transformer: adapters added (on --resume: as the run's checkpoint has them), then
    --grad-checkpointing. Returns the LoRA settings for the run's metadata (None without LoRA)."""
    from maskgit.storage.checkpoint import read_config
    from maskgit.training.lora import DEFAULT_TARGETS, add_lora, trainable_parameters
    saved = ((read_config(ck).get("meta") or {}).get("lora") if ck is not None else None)
    cfg = None
    if args.lora is not None:
        cfg = {"rank": args.lora, "alpha": float(args.lora if args.lora_alpha is None else args.lora_alpha),
               "targets": list(lora_targets(args, DEFAULT_TARGETS)), "base": str(init_dir) if init_dir else None}
    elif args.lora_alpha is not None or args.lora_targets:
        raise MaskGITError("--lora-alpha and --lora-targets go with --lora RANK")
    if ck is not None:
        if cfg is not None and saved is None:
            raise MaskGITError(f"{args.out} was not trained with --lora: resume it without --lora, or train the "
                               "adapters in a new --out directory")
        if saved is not None and cfg is not None and {k: cfg[k] for k in ("rank", "alpha", "targets")} != \
                {k: saved.get(k) for k in ("rank", "alpha", "targets")}:
            raise MaskGITError(f"{args.out} was trained with LoRA {saved}: resume it with the same --lora settings")
        cfg = saved
    elif cfg is not None and init_dir is None:
        raise MaskGITError("--lora trains adapters on a trained model: add --init DIR (the model to adapt)")
    if cfg is not None:
        if args.freeze:
            raise MaskGITError("--lora freezes the whole model already: leave out --freeze")
        names = add_lora(model, cfg["rank"], cfg["alpha"], tuple(cfg["targets"]))
        print(f"LoRA rank {cfg['rank']}, alpha {cfg['alpha']:g} on {len(names)} layers: "
              f"{trainable_parameters(model):,} trainable parameters")
    if args.grad_checkpointing:
        from maskgit.training.grad_checkpoint import enable_grad_checkpointing
        print(enable_grad_checkpointing(model))
    return cfg
