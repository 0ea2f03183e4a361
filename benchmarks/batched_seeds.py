"""How often a request decoded in a shared batch gets exactly the images it gets alone (the server's batching).

Every request draws its noise from its own seed (``sampling.noise.RowGenerators``; here ``seed=[...]``, one per
row), so batching changes only the float rounding of the transformer's and decoder's matmuls, whose kernels depend
on the batch size. This counts, for --requests one-image requests (classes in turn, seeds 0..n-1), how many of their
token grids and images are identical alone and inside batches of --batch, and the largest pixel difference of the
others.

    python benchmarks/batched_seeds.py                     # the shipped model, 128 requests, batches of 16
    python benchmarks/batched_seeds.py --model DIR --steps 12 --cfg 2
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

import maskgit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=0.0)
    args = ap.parse_args()
    pipe = maskgit.load(args.model) if args.model else maskgit.load()
    classes = max(len(pipe.class_names or []), 1)
    labels = [i % classes for i in range(args.requests)]
    kw = {"steps": args.steps, "cfg": args.cfg}
    grid = pipe.grid[0] * pipe.grid[1]

    def tokens(labs, seed):  # seed: an int, or one per row (what the server's RowGenerators give each request)
        start = torch.full((len(labs), grid), pipe.mask_id, dtype=torch.long)
        return pipe.decode_tokens(start, pipe.check_labels(labs), pipe.sample_config(**kw), seed)

    alone_t, batched_t = [], []
    for i, lab in enumerate(labels):
        alone_t.append(tokens([lab], i))
    for a in range(0, len(labels), args.batch):
        rows = list(range(a, min(a + args.batch, len(labels))))
        batched_t.extend(tokens([labels[i] for i in rows], rows).split(1))
    alone_t, batched_t = torch.cat(alone_t), torch.cat(batched_t)
    same_tokens = (alone_t == batched_t).all(1)
    u8 = lambda t: (pipe.to_images(t).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy().astype(int)
    img_alone = np.concatenate([u8(t[None]) for t in alone_t])
    img_batched = np.concatenate([u8(batched_t[a:a + args.batch]) for a in range(0, len(labels), args.batch)])
    diff = np.abs(img_alone - img_batched).reshape(len(labels), -1).max(1)
    n = len(labels)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; steps={args.steps} cfg={args.cfg}")
    print("| requests | batch | identical token grids | identical images | max pixel diff (token-identical) |"
          " max pixel diff (others) |")
    print("|---:|---:|---:|---:|---:|---:|")
    same = same_tokens.numpy()
    print(f"| {n} | {args.batch} | {int(same.sum())}/{n} | {int((diff == 0).sum())}/{n} | "
          f"{int(diff[same].max()) if same.any() else '-'} | {int(diff[~same].max()) if (~same).any() else '-'} |")


if __name__ == "__main__":
    main()
