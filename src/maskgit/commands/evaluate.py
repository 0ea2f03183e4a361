"""`maskgit eval`: generate N samples and measure them against a real split (FD, KID, precision/recall, IS,
class agreement) in the project's feature space; prints a table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.commands.parser import add_dataclass_args, explicit_sample_kwargs
from maskgit.config import SampleConfig, sample_kwargs
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import load_model


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
    p.add_argument("--save-samples", default=None, help="also write the samples: X.npz (ADM layout) or DIR/ (PNGs)")
    p.add_argument("--samples", default=None,
                   help="evaluate these samples instead of generating: an ADM .npz (arr_0 uint8 (N,H,W,3), arr_1 "
                        "labels) or a folder of PNGs (+ labels.txt)")
    p.add_argument("--ref", default=None,
                   help="reference instead of --data/--split: an ADM .npz with arr_0 images and/or mu/sigma (FD "
                        "uses mu/sigma when they are in the feature network's space), or a PNG folder")
    device_arg(p)
    add_dataclass_args(p, SampleConfig, skip=("start_step",))
    p.set_defaults(func=cmd_eval)


def evaluator_for(pipe, features: str | None, data: str, split: str, num: int | None = None,
                  size: int | None = None):
    from maskgit.evaluation.samples import Evaluator, independent_features, load_real
    net = _feature_net(pipe, features)
    size = size or pipe.grid[0] * pipe.tokenizer.config.downsample
    second = independent_features(data, net.config.channels, size)
    return Evaluator(net, load_real(data, split, size, num), independent=second)


def _feature_net(pipe, features: str | None):
    net = load_model(features, "features") if features else (pipe.features if pipe is not None else None)
    if net is None:
        raise MaskGITError("no feature network: pass --features DIR (made by `maskgit train-features`)")
    return net


def _samples(args, pipe) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """uint8 samples (N,H,W,C), their labels and the seconds per image (None when read from --samples)."""
    from maskgit.evaluation.samples import generate, uniform_labels
    from maskgit.storage.samples import read_samples
    if args.samples:
        s = read_samples(args.samples)
        return s["images"], s["labels"], None
    if args.num < 2:
        raise MaskGITError("--num must be at least 2")
    kw = explicit_sample_kwargs(args)  # the model's own sampling defaults fill the rest
    labels = uniform_labels(args.num, pipe.transformer.config.num_classes)
    images, seconds = generate(pipe, labels, args.arch, kw, args.seed, args.batch_size, not args.no_cache,
                               progress=True)
    # metrics see the uint8 images a file would hold, so evaluating the saved file gives the same numbers
    from maskgit.storage.images import to_uint8
    u8 = to_uint8(images)
    return u8, labels.numpy(), seconds / args.num


def cmd_eval(args) -> int:
    from maskgit.evaluation.reference import evaluate_samples
    from maskgit.pipeline import load
    from maskgit.storage.samples import is_png_folder, read_samples, to_channels, write_npz, write_png_folder
    if args.samples and args.save_samples:
        raise MaskGITError("--save-samples writes generated samples; with --samples nothing is generated")
    ref = read_samples(args.ref, need_images=False) if args.ref else None  # bad files fail before any work
    pipe = None if (args.samples and args.features) else load(args.model, resolve_device(args.device))
    u8, labels, per_image = _samples(args, pipe)
    if len(u8) < 2:
        raise MaskGITError(f"need at least 2 samples, got {len(u8)}")
    net = _feature_net(pipe, args.features)
    if ref is not None:
        values = evaluate_samples(net, u8, labels, ref)
    else:
        ev = evaluator_for(pipe, args.features, args.data, args.split, size=u8.shape[1])
        lab = None if labels is None else torch.as_tensor(labels)
        values = ev(torch.from_numpy(to_channels(u8, net.config.channels)).permute(0, 3, 1, 2), lab)
    kw = {} if args.samples else sample_kwargs(pipe.sample_config(**explicit_sample_kwargs(args)))
    source = {"samples": str(args.samples)} if args.samples else {"arch": args.arch}
    metrics = {"num": len(u8), **source, **kw,
               **({"seconds_per_image": per_image} if per_image is not None else {}), **values}
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**metrics, "command": args.command_line},
                                              indent=1) + "\n")
    if args.save_samples:
        (write_png_folder if is_png_folder(args.save_samples) else write_npz)(args.save_samples, u8, labels)
    return 0
