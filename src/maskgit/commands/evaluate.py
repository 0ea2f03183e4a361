"""`maskgit eval`: generate N samples and measure them against a real split (FD, KID, precision/recall, IS,
class agreement) in the project's feature space; prints a table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maskgit.storage.checkpoint import load_model
from maskgit.config import SampleConfig, add_dataclass_args, override, sample_kwargs
from maskgit.errors import MaskGITError
from maskgit.commands.common import device_arg, resolve_device


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure sample quality (FD, KID, precision/recall, IS, class agreement)",
                       description="Generate --num samples (classes uniformly) and compare them with a real split.")
    p.add_argument("--model", default=None, help="shipped model name or pipeline directory")
    p.add_argument("--arch", default="maskgit", choices=["maskgit", "ar"])
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--data", default="fashion-mnist", help="real data to compare with")
    p.add_argument("--split", default="test")
    p.add_argument("--features", default=None, help="feature network directory (default: the model's features/)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="AR only: no KV cache")
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--save-samples", default=None, help="also write the samples as .npz (uint8 images + labels)")
    device_arg(p)
    add_dataclass_args(p, SampleConfig, skip=("start_step",))
    p.set_defaults(func=cmd_eval)


def evaluator_for(pipe, features: str | None, data: str, split: str, num: int | None = None):
    from maskgit.evaluation.samples import Evaluator, load_real
    net = load_model(features, "features") if features else pipe.features
    if net is None:
        raise MaskGITError("no feature network: pass --features DIR (made by `maskgit train-features`)")
    size = pipe.grid[0] * pipe.tokenizer.config.downsample
    return Evaluator(net, load_real(data, split, size, num))


def cmd_eval(args) -> int:
    from maskgit.evaluation.samples import generate, uniform_labels
    from maskgit.pipeline import load
    if args.num < 2:
        raise MaskGITError("--num must be at least 2")
    pipe = load(args.model, resolve_device(args.device))
    ev = evaluator_for(pipe, args.features, args.data, args.split)
    kw = sample_kwargs(override(SampleConfig(), args))
    labels = uniform_labels(args.num, pipe.transformer.config.num_classes)
    images, seconds = generate(pipe, labels, args.arch, kw, args.seed, args.batch_size, not args.no_cache)
    metrics = {"num": args.num, "arch": args.arch, **kw, "seconds_per_image": seconds / args.num,
               **ev(images, labels)}
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**metrics, "command": args.command_line},
                                              indent=1) + "\n")
    if args.save_samples:
        u8 = (images.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).numpy()
        np.savez(args.save_samples, images=u8, labels=labels.numpy())
    return 0
