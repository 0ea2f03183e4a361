"""`maskgit train --init amused/amused-256 --data IMAGES [--lora RANK] [--sample-every N]`: aMUSEd fine-tuning on
captioned images (maskgit.families.amused_train; --sample-every: OUT/samples_STEP.png grids during the run), then
samples of the result drawn as `maskgit.load` reads it (OUT/samples.png)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from maskgit.commands.common import resolve_device
from maskgit.errors import MaskGITError


def cmd_train_amused(args) -> int:
    from maskgit.commands.parser import override
    from maskgit.commands.train_setup import lora_targets
    from maskgit.families.amused_train import AMUSED_TARGETS, finetune, train_defaults
    from maskgit.names import resolve
    from maskgit.pipeline import Pipeline
    if not args.init:
        raise MaskGITError("--data IMAGES fine-tunes aMUSEd: add --init amused/amused-256 (or a local aMUSEd "
                           "folder); the project's own models train on a token store (maskgit tokenize, --tokens)")
    given = [f for f, v in (("--tokens", args.tokens), ("--val-tokens", args.val_tokens),
                            ("--tokenizer", args.tokenizer), ("--preset", args.preset),
                            ("--text-encoder", args.text_encoder), ("--text-mode", args.text_mode),
                            ("--freeze", args.freeze), ("--arch ar", args.arch == "ar")) if v]
    if given:
        raise MaskGITError(f"aMUSEd fine-tuning takes --init AMUSED --data IMAGES: leave out {', '.join(given)}")
    root = resolve(args.init)
    if not (root / "model_index.json").is_file():
        raise MaskGITError(f"--data IMAGES is for aMUSEd folders; {args.init} is not one (no model_index.json): "
                           f"tokenize the images for it (maskgit tokenize) and train on --tokens")
    cfg = override(train_defaults(args.lora is not None), args)
    torch.manual_seed(cfg.seed)
    device = resolve_device(args.device)
    out = Path(args.out)
    t0 = time.time()
    res = finetune(root, args.data, out, cfg=cfg, lora=args.lora, lora_alpha=args.lora_alpha,
                   lora_targets=lora_targets(args, AMUSED_TARGETS), grad_checkpointing=args.grad_checkpointing,
                   resume=args.resume, device=device, skip_memory_check=args.skip_memory_check,
                   meta={"command": args.command_line, "init": str(args.init)}, pipeline_cls=Pipeline)
    final = out / "final"
    if not (res.step and final.exists()):
        return 0
    print(json.dumps({"step": res.step, "wall_s": round(time.time() - t0, 1),
                      **{k: round(v, 5) for k, v in res.metrics.items() if isinstance(v, float)}}))
    if args.lora is not None:
        print(f"LoRA adapter written to {final}: maskgit.load({str(args.init)!r}, lora={str(final)!r}), or "
              f"maskgit sample --model {args.init} --lora-weights {final} --prompt ...")
    else:
        print(f"aMUSEd folder written to {final}: maskgit.load({str(final)!r}), or maskgit sample --model {final} "
              f"--prompt ...")
    write_samples(root, final, args.lora is not None, out / "samples.png", device, cfg.seed)
    return 0


def write_samples(root: Path, final: Path, lora: bool, path: Path, device, seed: int = 0) -> Path:
    """A grid of the result's images for the first training captions, the model loaded as a user loads it (the
    prompts and layout of the --sample-every grids, OUT/samples_STEP.png)."""
    from maskgit.families.amused_train import sample_prompts, save_grid
    from maskgit.pipeline import load
    prompts = sample_prompts(json.loads((final.parent / "data" / "captions.json").read_text()))
    pipe = load(root, device, lora=final) if lora else load(final, device)
    save_grid(pipe.generate(prompts=prompts, seed=seed, output="tensor"), prompts, path)
    print(f"samples of {len(prompts)} training captions written to {path}")
    return path
