"""``maskgit train-features``: train the project's feature/classifier network (metrics, perceptual loss)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from maskgit.commands.parser import add_dataclass_args
    from maskgit.models.features import FeatureNetConfig

    p = subparsers.add_parser(
        "train-features", help="train the feature/classifier network used by the metrics",
        description="Train a small CNN classifier whose features replace Inception for FD/KID/precision/recall, "
                    "whose logits give class accuracy and Inception Score, and whose feature maps give the "
                    "tokenizer's perceptual loss. Prints the test accuracy.")
    p.add_argument("--data", default="fashion-mnist", help="dataset name (default fashion-mnist)")
    p.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment", action="store_true",
                   help="random +/-2 px shifts (off: they cost accuracy in short runs)")
    p.add_argument("--quiet", action="store_true", help="print only the final accuracy")
    add_dataclass_args(p, FeatureNetConfig, skip=("channels", "image_size", "num_classes"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maskgit.commands.parser import override
    from maskgit.models.features import FeatureNetConfig
    from maskgit.training.features import train_features

    metrics = train_features(dataset=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, device=args.device, augment=args.augment,
                             config=override(FeatureNetConfig(), args), image_size=args.image_size,
                             log=None if args.quiet else lambda m: print(m, flush=True))
    print(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['wall_seconds']:.0f} s); saved {args.out}")
    return 0
