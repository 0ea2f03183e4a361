"""Speed of the ONNX runtime path vs PyTorch eager vs PyTorch compiled (and int8 of both), ImageNet-256
configuration with random weights (speed does not depend on the weights), 8 decoding steps, batch 1 and 8.

Per path and batch: seconds per image of the transformer's decode loop (8 steps, one forward each) and of the VQGAN
decoder, median of --repeats timed runs after one warm-up (compiled paths compile in the warm-up). Run it on an
otherwise idle machine; every row comes from the same run.

    python benchmarks/onnx_speed.py                      # fp32: onnxruntime, torch eager, torch compiled
    python benchmarks/onnx_speed.py --int8               # also onnxruntime int8 and torch int8
    python benchmarks/onnx_speed.py --portable           # also the standard-operator graph (export --portable)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import numpy as np
import torch

from maskgit import runtime
from maskgit.config import SampleConfig, transformer_preset, vqgan_preset
from maskgit.evaluation.samples import machine_description
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.pipeline import Pipeline
from maskgit.sampling.noise import seeded
from maskgit.storage.onnx import export_pipeline


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--portable", action="store_true", help="also time the standard-operator graph")
    ap.add_argument("--paths", default="onnx,eager,compiled", help="subset of onnx,eager,compiled")
    args = ap.parse_args()
    print(f"machine: {machine_description()}")
    torch.manual_seed(0)
    make = lambda: Pipeline(VQGAN(vqgan_preset("imagenet-f16")).eval(),  # noqa: E731
                            MaskGITTransformer(transformer_preset("maskgit-imagenet256")).eval())
    pipe = make()
    tmp = tempfile.TemporaryDirectory(prefix="maskgit-onnx-speed-")  # about 1 GB of graphs, removed at exit
    out = tmp.name
    export_pipeline(pipe, out, encoder=False, int8=args.int8)
    if args.portable:
        export_pipeline(pipe, f"{out}/portable", encoder=False, portable=True)
    cfg = dataclasses.replace(SampleConfig(), steps=args.steps, choice_temperature=4.5)
    N, mask = pipe.transformer.config.num_tokens, pipe.mask_id
    paths = args.paths.split(",")

    def torch_path(p):
        def run(b):
            start, lab = torch.full((b, N), mask), torch.arange(b) % 1000
            t = lambda: p.decode_tokens(start, lab, cfg, None, seeded(0, b))  # noqa: E731
            grid = torch.randint(0, 1024, (b, 16, 16))
            return t, lambda: p.to_images(grid)
        return run

    def onnx_path(rt):
        def run(b):
            start, lab = np.full((b, N), mask, np.int64), np.arange(b) % 1000
            grid = np.random.default_rng(0).integers(0, 1024, (b, 16, 16))
            return (lambda: runtime.decode(rt.logits_fn(lab), start, cfg, mask, runtime.Noise(0)),
                    lambda: rt.to_images(grid))
        return run

    candidates = {}
    if "onnx" in paths:
        candidates["onnxruntime fp32"] = lambda: onnx_path(runtime.load(out))
        if args.portable:
            candidates["onnxruntime fp32, standard operators"] = lambda: onnx_path(runtime.load(f"{out}/portable"))
    if "eager" in paths:
        candidates["torch eager fp32"] = lambda: torch_path(pipe)
    if "compiled" in paths:
        candidates["torch compiled fp32"] = lambda: torch_path(make().compile())
    if args.int8:
        candidates["onnxruntime int8"] = lambda: onnx_path(runtime.load(out, int8=True))
        candidates["torch eager int8"] = lambda: torch_path(make().set_precision("int8"))
    rows = []
    for name, build in candidates.items():
        run = build()
        for b in (int(v) for v in args.batches.split(",")):
            transformer, decoder = run(b)
            with torch.inference_mode():
                tt = timed(transformer, args.repeats) / b
                td = timed(decoder, args.repeats) / b
            rows.append(f"| {name} | {b} | {tt:.3f} | {td:.3f} | {tt + td:.3f} |")
            print(rows[-1], flush=True)
    print(f"\n| path | batch | transformer s/image ({args.steps} steps) | VQGAN decoder s/image | total |"
          f"\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
