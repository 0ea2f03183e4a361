"""Seconds per image of cached decoding and of the guidance interval, ImageNet-256 transformer configuration with
random weights (speed does not depend on the weights), T = 8, batch 1 and 8: what `maskgit sample` spends on the
token decode (no VQGAN decode): the decode loop Pipeline.decode_tokens runs, with the pipeline's logits_fn at the
CLI's precision rule (--precision auto). The preset has no "no class" id, so the timed model adds one (CFG needs
it; 1 of 2,026 embedding rows, no measurable cost).

Per setting: the median of --repeats timed decodes after one warm-up (bf16's fused attention kernels are traced for
each new shape in the warm-up), and the GFLOP per image the setting spends (matmuls, counted from the rows each
forward ran: a cheap step's P queries cost P/N of a full step's linear layers and P x (N+1) attention products).

    OMP_NUM_THREADS=2 python benchmarks/cached_decoding.py                   # the table for RESULTS.md
    python benchmarks/cached_decoding.py --batches 1 --caches off,every2 --intervals 0:1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import time

import torch

from maskgit.config import transformer_preset, vqgan_preset
from maskgit.evaluation.frontier import FlopCounter as Counter
from maskgit.evaluation.samples import machine_description
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.pipeline import Pipeline
from maskgit.sampling.decoding import decode
from maskgit.sampling.noise import seeded


def cpu_model() -> str:
    """`lscpu`'s model name (the machine the table belongs to)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.strip().startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown (no lscpu)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--caches", default="off,every2,every3", help="SampleConfig.cache values")
    ap.add_argument("--intervals", default="0:1,0.25:1", help="guidance intervals cfg_start:cfg_end")
    ap.add_argument("--cfg", type=float, default=1.0, help="guidance scale (0 times no guidance)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    args = ap.parse_args()
    print(f"lscpu model name: {cpu_model()}")
    print(f"machine: {machine_description()}")
    torch.manual_seed(0)
    tcfg = dataclasses.replace(transformer_preset("maskgit-imagenet256"), null_class=True)
    pipe = Pipeline(VQGAN(vqgan_preset("rgb256-f16-small")).eval(), MaskGITTransformer(tcfg).eval(),
                    precision=args.precision)
    print(f"precision: {pipe.precision}; T = {args.steps}; cfg {args.cfg}; order confidence; random weights")
    intervals = [tuple(float(v) for v in iv.split(":")) for iv in args.intervals.split(",")]
    rows = []
    for b in (int(v) for v in args.batches.split(",")):
        start, labels = torch.full((b, tcfg.num_tokens), pipe.mask_id), torch.arange(b) % tcfg.num_classes
        base = None
        for cache in args.caches.split(","):
            for lo, hi in intervals:
                cfg = pipe.sample_config(steps=args.steps, order="confidence", cfg=args.cfg, cfg_start=lo,
                                         cfg_end=hi, cache=cache)
                counter = Counter(pipe.logits_fn(labels), tcfg)
                def run():
                    return decode(counter, start, cfg, pipe.mask_id, seeded(list(range(b)), b))
                with torch.inference_mode():
                    run()  # warm-up
                    counter.flops, times = 0.0, []
                    for _ in range(args.repeats):
                        t = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - t)
                s = statistics.median(times) / b
                gflop = counter.flops / args.repeats / b / 1e9
                base = base or s
                rows.append(f"| {b} | {cache} | [{lo:g}, {hi:g}) | {s:.3f} | {s / base:.2f} | {gflop:.0f} |")
                print(rows[-1], flush=True)
    print("\n| batch | cache | guidance interval | s/image | vs first row of the batch | GFLOP/image |"
          "\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
