"""`maskgit train-tokenizer` and `maskgit tokenize` (flags parsed into calls of ``maskgit.train``'s
train_tokenizer and tokenize_dataset), and `maskgit reconstruct`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.commands.parser import add_dataclass_args
from maskgit.commands.train_setup import finetune_args, given_settings, memory_args
from maskgit.config import VQGAN_PRESETS, TokenizerTrainConfig, TrainConfig
from maskgit.data.loader import AUGMENT_CHOICES, default_workers
from maskgit.storage.checkpoint import load_model
from maskgit.train import DEFAULT_TOKENIZER_PRESET, TOKENIZER_TRAIN_DEFAULTS, TOKENIZER_UNUSED


def register(sub) -> None:
    _register_train_tokenizer(sub)
    _register_reconstruct(sub)
    _register_tokenize(sub)


def _register_train_tokenizer(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a VQGAN tokenizer",
                       description="Train a VQGAN tokenizer (reconstruction + perceptual + VQ + adversarial losses).")
    p.add_argument("--data", required=True, help="dataset name (see `maskgit data list`)")
    p.add_argument("--image-size", type=int, default=None,
                   help="train at this size (default: the preset's; image folders are resized / cropped to it, a "
                        "dataset of another size is an error unless this is given)")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(VQGAN_PRESETS)} (default "
                                                  f"{DEFAULT_TOKENIZER_PRESET}; sizes: `maskgit presets`)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final/)")
    p.add_argument("--perceptual", default="none", help="none | features:PATH (a `maskgit train-features` model)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out that verifies (or from CHECKPOINT)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="loader processes that decode, resize and augment images (0: in this process; default: "
                        "%(default)s = min(4, CPUs))")
    p.add_argument("--augment", default="auto", choices=AUGMENT_CHOICES,
                   help="crop-flip: resize the shorter side, random square crop, random horizontal flip (the "
                        "official recipe); auto (default): crop-flip for image files (imagefolder:, coco:), none "
                        "for in-memory sets")
    finetune_args(p, "tokenizer")
    memory_args(p)
    device_arg(p)
    add_dataclass_args(p, TOKENIZER_TRAIN_DEFAULTS, skip=TOKENIZER_UNUSED)
    add_dataclass_args(p, TokenizerTrainConfig())
    p.set_defaults(func=cmd_train_tokenizer)


def _register_reconstruct(sub) -> None:
    r = sub.add_parser("reconstruct", help="encode + decode images; tokenizer metrics",
                       description="Reconstruct dataset images through a tokenizer and report PSNR, SSIM, "
                                   "codebook usage/perplexity and (with --features) reconstruction FD and accuracy.")
    r.add_argument("--model", required=True, help="tokenizer directory (config.json + model.safetensors)")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="test")
    r.add_argument("-n", type=int, default=10000, help="number of images")
    r.add_argument("--out", default=None, help="recon.png (side by side) or recon.npz (uint8 images + labels)")
    r.add_argument("--features", default=None, help="feature network directory for FD / class accuracy")
    r.add_argument("--json", default=None, help="write the metrics here")
    r.add_argument("--batch-size", type=int, default=250)
    device_arg(r)
    r.set_defaults(func=cmd_reconstruct)


def _register_tokenize(sub) -> None:
    t = sub.add_parser("tokenize", help="encode a dataset into a token store",
                       description="Encode a dataset once into a memory-mapped token store for transformer training.")
    t.add_argument("--model", required=True, help="tokenizer directory")
    t.add_argument("--data", required=True)
    t.add_argument("--split", default="train")
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--out", required=True, help="token store directory")
    t.add_argument("--batch-size", type=int, default=500, help="images per encoder call (default: %(default)s)")
    t.add_argument("--flip", action="store_true", help="also store horizontally flipped copies")
    t.add_argument("--workers", type=int, default=default_workers(),
                   help="loader processes that decode and resize images (0: in this process; default: %(default)s "
                        "= min(4, CPUs))")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run with the same arguments (its work is kept in .OUT.partial "
                        "beside --out); without it an unfinished run starts again")
    t.add_argument("--text-encoder", default=None,
                   help="captioned datasets: also cache the captions' embeddings (minilm, st:PATH, t5:PATH, "
                        "cache:FILE) for text-conditioned training")
    device_arg(t)
    t.set_defaults(func=cmd_tokenize)


def _load_images(name: str, split: str, image_size: int | None):
    from maskgit.data.datasets import load_dataset
    return load_dataset(name, split=split, image_size=image_size)


def cmd_train_tokenizer(args) -> int:
    from maskgit.train import train_tokenizer
    run = train_tokenizer(args.data, args.out, preset=args.preset, image_size=args.image_size,
                          perceptual=args.perceptual, init=args.init, freeze=args.freeze, resume=args.resume,
                          workers=args.workers, augment=args.augment, device=args.device,
                          skip_memory_check=args.skip_memory_check, command=args.command_line,
                          **given_settings(args, TrainConfig, TokenizerTrainConfig, skip=TOKENIZER_UNUSED))
    print(json.dumps(run.summary()))
    print(f"tokenizer written to {run.final}")
    return 0


# ------------------------------------------------------------------ metrics
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0,1]."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Gaussian window, channels averaged) for images in [0,1]."""
    import torch.nn.functional as F
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    g = torch.exp(-(torch.arange(window) - window // 2).float() ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None]).expand(x.shape[1], 1, window, window).to(x)
    f = lambda t: F.conv2d(t, k, groups=x.shape[1])
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, batch_size: int, device: str):
    """uint8/float images (N,C,H,W) -> (reconstructions float (N,C,H,W), tokens (N,h,w))."""
    from tqdm import tqdm
    tokens = encode_all(model, images, batch_size, device)
    starts = tqdm(range(0, len(tokens), batch_size), desc="decoding", unit="batch", disable=None, leave=False)
    recs = [model.decode(tokens[i:i + batch_size].to(device)).cpu() for i in starts]  # a bar on a terminal
    return torch.cat(recs), tokens


def cmd_reconstruct(args) -> int:
    from maskgit.storage.images import make_grid, save_png
    device = resolve_device(args.device)
    model = load_model(args.model, "vqgan", device).prepare_for_inference(channels_last=device == "cpu")
    ds = _load_images(args.data, args.split, model.config.image_size)
    n = min(args.n, len(ds))
    if hasattr(ds, "images"):
        images, labels = ds.images[:n], ds.targets[:n]
    else:
        items = [ds[i] for i in range(n)]
        images, labels = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
    t0 = time.time()
    rec, tokens = reconstruct(model, images, args.batch_size, device)
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    K = model.codebook_size
    counts = torch.bincount(tokens.flatten(), minlength=K).float()
    p = counts / counts.sum()
    metrics = {"n": n, "psnr": float(psnr(rec, x).mean()), "ssim": float(ssim(rec, x).mean()),
               "codebook_usage": float((counts > 0).float().mean()),
               "perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum())),
               "seconds": round(time.time() - t0, 2)}
    if args.features:
        from maskgit.evaluation.metrics import ProjectFeatures, extract_features, frechet_distance
        from maskgit.models.features import accuracy
        net = load_model(args.features, "features", device)
        ext = ProjectFeatures(net)
        metrics["fd_recon"] = float(frechet_distance(extract_features(ext, x), extract_features(ext, rec)))
        metrics["acc_original"] = accuracy(net, x, labels)
        metrics["acc_recon"] = accuracy(net, rec, labels)
    for k, v in metrics.items():
        print(f"{k:16s} {v:.4f}" if isinstance(v, float) else f"{k:16s} {v}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    if args.out:
        out = Path(args.out)
        if out.suffix == ".npz":
            u8 = (rec.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            np.savez(out, images=u8, labels=np.asarray(labels))
        else:
            k = min(n, 32)
            both = torch.stack([x[:k], rec[:k]], 1).flatten(0, 1)
            save_png(make_grid(both, ncol=16, scale=2), out)
        print(f"wrote {out}")
    return 0


def cmd_tokenize(args) -> int:
    """Stream the dataset through the tokenizer into the store (one store also under torchrun)."""
    from maskgit.inference.malloc import bound_malloc
    from maskgit.train import tokenize_dataset
    bound_malloc()  # peak memory that does not grow with the dataset (before the model's allocations)
    stats = tokenize_dataset(args.model, args.data, args.out, split=args.split, image_size=args.image_size,
                             batch_size=args.batch_size, flip=args.flip, workers=args.workers, resume=args.resume,
                             text_encoder=args.text_encoder, device=args.device)
    if stats["rank"] != 0:
        return 0
    print(f"wrote {stats['rows']} token grids to {args.out}; this process encoded {stats['encoded']} images in "
          f"{stats['seconds']:.1f}s ({stats['images_per_s']:.1f} images/s)")
    if args.text_encoder:
        print(f"wrote the caption embeddings {stats['captions']}")
    return 0


@torch.no_grad()
def encode_all(model, images: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """uint8/float images (N,C,H,W) -> tokens (N,h,w), in batches."""
    toks = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        toks.append(model.encode(x.float() / 255 if x.dtype == torch.uint8 else x).cpu())
    return torch.cat(toks)
