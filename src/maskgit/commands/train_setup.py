"""The flags `train` and `train-tokenizer` share (--skip-memory-check, --init/--freeze, LoRA) and the reading of
a command line's settings for the library calls (maskgit.train), which do what the flags ask."""

from __future__ import annotations

import argparse
import dataclasses


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


def lora_targets(args, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """--lora-targets as a tuple of names, or ``default`` when it is not given."""
    if not args.lora_targets:
        return default
    return tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())


def given_settings(args, *classes: type, skip: tuple[str, ...] = ()) -> dict:
    """The fields of the config ``classes`` given on the command line (flags left out are None: the library's
    defaults stay), as keywords for maskgit.train's calls."""
    return {f.name: v for cls in classes for f in dataclasses.fields(cls)
            if f.name not in skip and (v := getattr(args, f.name, None)) is not None}
