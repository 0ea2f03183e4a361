"""``maskgit convert official``: Google's released MaskGIT checkpoints (JAX/Flax) -> a pipeline directory."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

from maskgit.storage.official import OFFICIAL_FILES, OFFICIAL_URL

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert released checkpoints to this package's format",
                              description="Convert checkpoints from other implementations into a pipeline "
                                          "directory (tokenizer/ + maskgit/) that `maskgit sample --model "
                                          "DIR` and maskgit.load(DIR) use.")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="convert_command", metavar="SOURCE")
    o = sub.add_parser("official", help="Google's JAX/Flax MaskGIT release (ImageNet 256 or 512)",
                       description=f"Convert the official MaskGIT checkpoints ({OFFICIAL_URL}<name>) "
                                   f"exactly. Pair the files of one resolution: tokenizer_imagenet256_"
                                   f"checkpoint + maskgit_imagenet256_checkpoint, or the two "
                                   f"..._imagenet512_checkpoint files. Needs the msgpack package "
                                   f"(pip install 'maskgit-suite[convert]'); flax/jax are not needed.")
    o.add_argument("--tokenizer", required=True, metavar="FILE",
                   help=f"the tokenizer file ({' or '.join(OFFICIAL_FILES['tokenizer'])})")
    o.add_argument("--transformer", required=True, metavar="FILE",
                   help=f"the transformer file ({' or '.join(OFFICIAL_FILES['transformer'])})")
    o.add_argument("--out", required=True, metavar="DIR", help="pipeline directory to write")
    o.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="storage precision (default float32 = bit-exact; models always run in float32)")
    o.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    o.set_defaults(func=cmd_official)


def cmd_official(args: argparse.Namespace) -> int:
    from maskgit.storage.official import convert_official, summary
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok, tr, out = convert_official(args.tokenizer, args.transformer, args.out, dtype=DTYPES[args.dtype],
                                        force=args.force)
    for w in caught:
        print(f"maskgit convert: warning: {w.message}", file=sys.stderr)
    print(summary(tok))
    print(summary(tr))
    print(f"wrote {out}/tokenizer and {out}/maskgit in {time.time() - t0:.1f}s; try:\n"
          f"  maskgit sample --model {out} --labels 207 --steps 8 --out samples.png")
    return 0
