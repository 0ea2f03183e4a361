"""The bf16 CPU attention under a server's mix of batch sizes: one traced oneDNN Graph kernel per batch size (kept
in a cache of ``FUSED_ATTENTION_SHAPES``, or in one that holds them all), against power-of-two chunks (at most 7
kernels per layout).

A sequence of forwards at the ImageNet-256 transformer's attention shapes (its heads, 257 tokens, the model's
strided q/k/v views), each forward = one attention call per block; the rows of each forward are 2 x b (a batch of b
images under classifier-free guidance), b drawn uniformly from 1..--max-batch with a fixed seed. Each variant starts
from an empty kernel cache (after one unrelated trace, so neither pays the process's one-off oneDNN start-up) and
runs the sequence twice: the first pass traces what it needs, the second shows what a running server keeps paying.
Prints seconds per pass, kernels traced, and the time per attention row in the second pass.

    python benchmarks/attention_shapes.py [--forwards 48] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from maskgit import accel
from maskgit.accel import tune_malloc
from maskgit.config import transformer_preset
from maskgit.evaluation.samples import machine_description


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forwards", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=32, help="images per batch (rows = 2x, guidance)")
    ap.add_argument("--config", default="maskgit-imagenet256")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tune_malloc()
    print(f"machine: {machine_description()}")
    cfg = transformer_preset(args.config)
    H, L, d, depth = cfg.heads, cfg.num_tokens + 1, cfg.width // cfg.heads, cfg.depth
    draw = random.Random(args.seed)
    rows = [2 * draw.randint(1, args.max_batch) for _ in range(args.forwards)]
    torch.manual_seed(0)
    qkv = torch.randn(max(rows), L, 3, H, d).to(torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B,H,L,d) strided views, as the model's
    traced = []
    trace = accel._trace_fused_attention

    def counting_trace(*a):
        traced.append(a[0].shape[0])
        return trace(*a)
    accel._trace_fused_attention = counting_trace
    with torch.inference_mode():
        warm = torch.randn(1, L - 1, 3, H, d).to(torch.bfloat16).permute(2, 0, 3, 1, 4)
        if accel.fused_cpu_attention(*warm) is None:
            raise SystemExit("this torch build has no oneDNN Graph fusion")
        kept = accel.FUSED_ATTENTION_SHAPES
        variants = [("one kernel per batch size", accel._fused_kernel, kept),
                    ("one kernel per batch size, cache holding all", accel._fused_kernel, len(set(rows))),
                    ("power-of-two chunks (the model's)", accel.fused_cpu_attention, kept)]
        print(f"{args.forwards} forwards x {depth} attention calls; rows per forward: {sorted(set(rows))}\n")
        print("| attention | kernels kept | pass 1 s (kernels traced) | pass 2 s (kernels traced) "
              "| pass 2 ms per row |")
        print("|---|---|---|---|---|")
        for name, fn, cache in variants:
            accel._fused_attention.clear()
            accel.FUSED_ATTENTION_SHAPES = cache
            cells = []
            for _ in range(2):
                traced.clear()
                t = time.perf_counter()
                for r in rows:
                    for _ in range(depth):
                        fn(q[:r], k[:r], v[:r])
                cells.append((time.perf_counter() - t, len(traced)))
            per_row = cells[1][0] / (depth * sum(rows)) * 1e3
            print(f"| {name} | {cache} | {cells[0][0]:.2f} ({cells[0][1]}) | {cells[1][0]:.2f} ({cells[1][1]}) | "
                  f"{per_row:.3f} |")
        accel.FUSED_ATTENTION_SHAPES = kept


if __name__ == "__main__":
    main()
