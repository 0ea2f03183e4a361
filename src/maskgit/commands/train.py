"""`maskgit train`: the transformer stage (MaskGIT or the AR baseline) on a token store; the flags parsed into
a call of ``maskgit.train.train_transformer`` (aMUSEd fine-tuning with --data: commands/train_amused.py)."""

from __future__ import annotations

import json

from maskgit.commands.common import device_arg
from maskgit.commands.parser import add_dataclass_args
from maskgit.commands.train_setup import finetune_args, given_settings, lora_args, lora_targets, memory_args
from maskgit.config import TRANSFORMER_PRESETS, TrainConfig
from maskgit.errors import MaskGITError
from maskgit.train import TRANSFORMER_TRAIN_DEFAULTS


def register(sub) -> None:
    p = sub.add_parser("train", help="train the MaskGIT transformer (or the AR baseline) on a token store",
                       description="Masked-token training (MaskGIT) or next-token training (--arch ar) on a token "
                                   "store made by `maskgit tokenize`. Resumable (--resume); runs under torchrun.")
    p.add_argument("--tokens", default=None, help="token store directory (training split); required, except for "
                                                 "aMUSEd fine-tuning (--data)")
    p.add_argument("--val-tokens", default=None, help="token store for validation loss / accuracy")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory: checks the store's hash, draws samples")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(TRANSFORMER_PRESETS)} (default "
                   f"maskgit-small-8x8, or muse-small-8x8 for text conditioning)")
    p.add_argument("--text-encoder", default=None,
                   help="text-to-image: condition on the captions embedded by this frozen encoder (minilm, st:PATH, "
                        "t5:PATH, cache:FILE); computed into the token store if missing. Default: the store's "
                        "caption-embedding cache when it has one")
    p.add_argument("--text-mode", default=None, choices=["cross", "prefix"],
                   help="text-to-image: text tokens as a prefix of the self-attention sequence (the text presets' "
                        "choice: it bound attributes better, see benchmarks/RESULTS.md) or cross-attention layers "
                        "(as Muse)")
    p.add_argument("--arch", default="maskgit", choices=["maskgit", "ar"])
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out that verifies (or from CHECKPOINT)")
    finetune_args(p, "transformer")
    lora_args(p)
    memory_args(p)
    device_arg(p)
    add_dataclass_args(p, TRANSFORMER_TRAIN_DEFAULTS)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from maskgit.train import train_transformer
    if args.data:
        from maskgit.commands.train_amused import cmd_train_amused
        return cmd_train_amused(args)
    if not args.tokens:
        raise MaskGITError("train needs --tokens STORE (a token store: maskgit tokenize), or --init AMUSED --data "
                           "IMAGES to fine-tune aMUSEd on captioned images")
    run = train_transformer(args.tokens, args.out, tokenizer=args.tokenizer, val_tokens=args.val_tokens,
                            preset=args.preset, arch=args.arch, text_encoder=args.text_encoder,
                            text_mode=args.text_mode, init=args.init, freeze=args.freeze, lora=args.lora,
                            lora_alpha=args.lora_alpha, lora_targets=lora_targets(args, None),
                            grad_checkpointing=args.grad_checkpointing, resume=args.resume, device=args.device,
                            skip_memory_check=args.skip_memory_check, command=args.command_line,
                            **given_settings(args, TrainConfig))
    if run.step and run.final.exists():
        print(json.dumps(run.summary()))
        if run.lora is not None:
            print(f"LoRA adapter written to {run.final}: maskgit.load(BASE, lora={str(run.final)!r}) or "
                  f"sample --lora-weights {run.final}, BASE the pipeline of {run.lora.get('base')}")
        else:
            print(f"model written to {run.final}")
    return 0
