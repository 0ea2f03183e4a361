"""`maskgit train-tokenizer`, `maskgit reconstruct`, `maskgit tokenize`."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from maskgit.commands.common import device_arg, resolve_device
from maskgit.commands.train_setup import finetune_args, first_examples, load_sized, memory_args, report_and_check
from maskgit.config import (
    VQGAN_PRESETS,
    TokenizerTrainConfig,
    TrainConfig,
    add_dataclass_args,
    override,
    vqgan_preset,
)
from maskgit.data.loader import AUGMENT_CHOICES, default_workers, resolve_augment
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import load_model

# the tokenizer stage's own defaults (TrainConfig's are the transformer's)
TOKENIZER_TRAIN_DEFAULTS = TrainConfig(batch_size=128, lr=2e-4, warmup_steps=500, max_steps=20_000,
                                       weight_decay=0.0, beta1=0.5, beta2=0.9, grad_clip=1.0, save_every=1000,
                                       label_smoothing=0.0, cond_dropout=0.0, val_batches=4)
DEFAULT_TOKENIZER_PRESET = "fmnist-f4"


def register(sub) -> None:
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
    add_dataclass_args(p, TOKENIZER_TRAIN_DEFAULTS, skip=("label_smoothing", "mask_schedule", "loss_on_all_tokens",
                                                          "cond_dropout"))
    add_dataclass_args(p, TokenizerTrainConfig())
    p.set_defaults(func=cmd_train_tokenizer)

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
    from maskgit.config import VQGANConfig, from_dict
    from maskgit.models.features import FeatureNet  # noqa: F401  (registers the kind)
    from maskgit.models.vqgan import VQGAN
    from maskgit.storage.checkpoint import read_config
    from maskgit.training import finetune
    from maskgit.training.loop import DatasetSource, train
    from maskgit.training.losses import TokenizerTask

    device = resolve_device(args.device)
    init_dir, init_ck = finetune.resolve_init(args.init) if args.init else (None, None)
    if init_dir is not None:
        if args.preset:
            raise MaskGITError("--init decides the tokenizer's shape: leave out --preset")
        vcfg = from_dict(VQGANConfig, read_config(init_dir).get("config", {}), what=f"{init_dir}/config.json")
        preset = f"--init {args.init}"
    else:
        preset = args.preset or DEFAULT_TOKENIZER_PRESET
        vcfg = vqgan_preset(preset)
    train_ds, val_ds, size = load_sized(args.data, preset, vcfg.image_size, args.image_size, _load_images)
    channels = train_ds[0][0].shape[0]
    if channels != vcfg.channels:
        if init_dir is not None:
            raise MaskGITError(f"the --init tokenizer takes {vcfg.channels}-channel images; {args.data} has "
                               f"{channels}")
        print(f"{args.data} has {channels}-channel images: the {preset} tokenizer is built for {channels} "
              f"channels (the preset has {vcfg.channels})")
        vcfg = dataclasses.replace(vcfg, channels=channels)
    vcfg = dataclasses.replace(vcfg, image_size=size)
    tcfg = override(TOKENIZER_TRAIN_DEFAULTS, args)
    lcfg = override(TokenizerTrainConfig(), args)
    percep = None
    if args.perceptual != "none":
        if not args.perceptual.startswith("features:"):
            raise MaskGITError("--perceptual must be 'none' or 'features:PATH'")
        percep = load_model(args.perceptual.split(":", 1)[1], "features")
    torch.manual_seed(tcfg.seed)  # the CLI owns the process: the initial weights follow --seed
    task = TokenizerTask(VQGAN(vcfg), lcfg, percep)
    init_opt = None
    if init_dir is not None:
        report, opt_state = finetune.init_tokenizer(task, init_dir, init_ck)
        init_opt = finetune.optimizer_loader(opt_state)
        print(f"init from {init_dir}: {report}")
    if args.freeze:
        print(f"frozen: {', '.join(finetune.freeze(task.model, 'vqgan', args.freeze))}")
    source = DatasetSource(train_ds, workers=args.workers, augment=resolve_augment(args.augment, train_ds))
    g = vcfg.grid_shape(size)
    report_and_check(task, first_examples(source), tcfg.batch_size, device, ema=tcfg.ema > 0,
                     skip=args.skip_memory_check,
                     describe_model=f"tokenizer {preset}: {size}x{size}x{channels} images -> {g[0]}x{g[1]} tokens "
                                    f"of {vcfg.codebook_size} codes")
    out = Path(args.out)
    show = val_ds if val_ds is not None else train_ds
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

    meta = {"dataset": args.data, "preset": args.preset or DEFAULT_TOKENIZER_PRESET, "command": args.command_line,
            "perceptual": args.perceptual, "losses": dataclasses.asdict(lcfg)}
    if init_dir is not None:
        meta.update(preset=None, init=str(init_dir.resolve()))
    t0 = time.time()
    res = train(task, source, tcfg, out, val_data=DatasetSource(val_ds) if val_ds else None,
                resume=args.resume, device=device, sample_fn=sample_fn, meta=meta, init_optimizer=init_opt)
    print(json.dumps({"step": res.step, "wall_s": round(time.time() - t0, 1),
                      **{k: round(v, 5) for k, v in res.metrics.items() if isinstance(v, float)}}))
    print(f"tokenizer written to {out / 'final'}")
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
    import torch.distributed as dist

    from maskgit.data.encode import tokenize_stream
    from maskgit.data.tokenstore import model_hash
    from maskgit.distributed import init_distributed
    if args.workers < 0:
        raise MaskGITError(f"--workers must be >= 0, not {args.workers}")
    if args.batch_size < 1:
        raise MaskGITError(f"--batch-size must be >= 1, not {args.batch_size}")
    from maskgit.memory import bound_malloc
    bound_malloc()  # peak memory that does not grow with the dataset (before the model's allocations)
    rank, world, dev = init_distributed(resolve_device(args.device))
    try:
        model = load_model(args.model, "vqgan", str(dev))
        ds = _load_images(args.data, args.split, args.image_size or model.config.image_size)
        if args.text_encoder and getattr(ds, "classes", None) is not None:
            raise MaskGITError(f"--text-encoder needs a captioned dataset; {args.data} has class labels")
        meta = {"dataset": args.data, "split": args.split, "codebook_size": model.codebook_size,
                "tokenizer": str(Path(args.model).resolve()), "tokenizer_hash": model_hash(model),
                "classes": getattr(ds, "classes", None)}
        model.prepare_for_inference(channels_last=dev.type == "cpu")  # the fast CPU encoder (after the hash)
        stats = tokenize_stream(model, ds, Path(args.out), batch_size=args.batch_size, flip=args.flip,
                                resume=args.resume, workers=args.workers, device=dev, meta=meta, rank=rank,
                                world=world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return 0
    print(f"wrote {stats['rows']} token grids to {args.out}; this process encoded {stats['encoded']} images in "
          f"{stats['seconds']:.1f}s ({stats['images_per_s']:.1f} images/s)")
    if args.text_encoder:
        from maskgit.models.text import ensure_store_text
        path = ensure_store_text(args.out, args.text_encoder)
        print(f"wrote the caption embeddings {path}")
    return 0


@torch.no_grad()
def encode_all(model, images: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """uint8/float images (N,C,H,W) -> tokens (N,h,w), in batches."""
    toks = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        toks.append(model.encode(x.float() / 255 if x.dtype == torch.uint8 else x).cpu())
    return torch.cat(toks)
