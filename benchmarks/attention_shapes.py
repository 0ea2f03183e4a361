"""The bf16 CPU attention under a server's mix of batch sizes: one traced oneDNN Graph kernel per batch size (kept
in a cache of ``FUSED_ATTENTION_SHAPES``, or in one that holds them all), against power-of-two chunks (at most 7
kernels per layout).

A sequence of forwards at the ImageNet-256 transformer's attention shapes (its heads, 257 tokens, the model's
strided q/k/v views), each forward = one attention call per block; the rows of each forward are 2 x b (a batch of b
images under classifier-free guidance), b drawn uniformly from 1..--max-batch with a fixed seed. Each variant runs in
its own process (--rounds processes per variant, taking turns), from an empty kernel cache after one unrelated trace
(so none pays the process's one-off start-up), and runs the sequence 1 + --passes times: the first pass traces what
it needs, the later ones show what a running server keeps paying. Prints the first pass's seconds, the later passes'
median, kernels traced, the later passes' time per attention row, and how much the process's resident memory grew
(glibc's default malloc thresholds; compiled kernels keep scratch memory that grows with their batch size).

    python benchmarks/attention_shapes.py [--forwards 48] [--max-batch 32] [--passes 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch

from maskgit.config import transformer_preset
from maskgit.evaluation.samples import machine_description
from maskgit.inference import kernels

VARIANTS = ("one kernel per batch size", "one kernel per batch size, cache holding all",
            "power-of-two chunks (the model's)")


def rss_mib() -> float:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(args, which: int) -> str:
    """One variant in this process, every pass; its readings as JSON. glibc's default malloc thresholds (no
    ``tune_malloc``), so the memory reading is the kernels' and not freed blocks kept for reuse."""
    cfg = transformer_preset(args.config)
    H, L, d, depth = cfg.heads, cfg.num_tokens + 1, cfg.width // cfg.heads, cfg.depth
    rows = batch_rows(args)
    torch.manual_seed(0)
    qkv = torch.randn(max(rows), L, 3, H, d).to(torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B,H,L,d) strided views, as the model's
    traced = []
    trace = kernels._trace_fused_attention

    def counting_trace(*a):
        traced.append(a[0].shape[0])
        return trace(*a)
    kernels._trace_fused_attention = counting_trace
    fn = kernels.fused_cpu_attention if which == 2 else kernels._fused_kernel
    if which == 1:
        kernels.FUSED_ATTENTION_SHAPES = len(set(rows))
    with torch.inference_mode():
        warm = torch.randn(1, L - 1, 3, H, d).to(torch.bfloat16).permute(2, 0, 3, 1, 4)
        if kernels.fused_cpu_attention(*warm) is None:
            raise SystemExit("this torch build has no oneDNN Graph fusion")
        kernels._fused_attention.clear()
        base = rss_mib()
        cells = []
        for _ in range(1 + args.passes):
            traced.clear()
            t = time.perf_counter()
            for r in rows:
                for _ in range(depth):
                    fn(q[:r], k[:r], v[:r])
            cells.append((time.perf_counter() - t, len(traced)))
    return json.dumps({"first": cells[0], "later": cells[1:], "rows": depth * sum(rows), "mib": rss_mib() - base,
                       "kept": kernels.FUSED_ATTENTION_SHAPES})


def batch_rows(args) -> list[int]:
    draw = random.Random(args.seed)
    return [2 * draw.randint(1, args.max_batch) for _ in range(args.forwards)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forwards", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=32, help="images per batch (rows = 2x, guidance)")
    ap.add_argument("--config", default="maskgit-imagenet256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=2, help="passes after the first, per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, taking turns")
    ap.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)  # one variant, in a worker
    args = ap.parse_args()
    if args.variant is not None:
        print(run_variant(args, args.variant))
        return
    print(f"machine: {machine_description()}")
    rows = batch_rows(args)
    depth = transformer_preset(args.config).depth
    print(f"{args.forwards} forwards x {depth} attention calls; rows per forward: {sorted(set(rows))}\n")
    print("| attention | kernels kept | first pass s (kernels traced) | later passes s, median (kernels traced per "
          "pass) | later ms per row | memory grown, MiB |")
    print("|---|---|---|---|---|---|")
    runs = {w: [] for w in range(len(VARIANTS))}
    for _ in range(args.rounds):  # each variant in a fresh process (its own caches and memory), taking turns
        for which in runs:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", str(which)], check=True,
                                 capture_output=True, text=True).stdout
            runs[which].append(json.loads(out.strip().splitlines()[-1]))
    for which, rs in runs.items():
        first = statistics.median(r["first"][0] for r in rs)
        first_traced = max(r["first"][1] for r in rs)
        later = statistics.median(c[0] for r in rs for c in r["later"])
        later_traced = max(c[1] for r in rs for c in r["later"])
        print(f"| {VARIANTS[which]} | {rs[0]['kept']} | {first:.2f} ({first_traced}) | {later:.2f} ({later_traced}) "
              f"| {later / rs[0]['rows'] * 1e3:.3f} | {statistics.median(r['mib'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
