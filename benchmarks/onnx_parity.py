"""Parity of the ONNX export + numpy runtime with the PyTorch pipeline.

Exports the model (``maskgit.storage.onnx``), then measures: the largest absolute difference of the transformer's
logits (onnxruntime vs torch) on partially masked grids; for --seeds seeds (one image each, per-row noise), how
many decode to identical token grids when ``maskgit.runtime.decode`` is fed the same uniform noise as the torch
decoder; and the largest pixel difference of decoded images (VQGAN decoder graph vs torch, --images random grids).

    python benchmarks/onnx_parity.py                                  # the shipped Fashion-MNIST model
    python benchmarks/onnx_parity.py --model imagenet256-random       # ImageNet-256 configuration, random weights
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maskgit import runtime
from maskgit.config import SampleConfig, transformer_preset, vqgan_preset
from maskgit.evaluation.samples import machine_description
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.outputs import uint8_images
from maskgit.pipeline import Pipeline, load
from maskgit.sampling.noise import seeded
from maskgit.storage.onnx import export_pipeline


class TorchRowNoise:
    """The uniform draws of one torch.Generator per row, as ``sampling.RowGenerators`` makes them."""

    def __init__(self, seeds: list[int]):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]

    def uniform(self, shape):
        return torch.cat([torch.rand((1, *shape[1:]), generator=g) for g in self.gens]).numpy()


def build(model: str) -> Pipeline:
    if model != "imagenet256-random":
        return load(model)
    torch.manual_seed(0)
    return Pipeline(VQGAN(vqgan_preset("imagenet-f16")).eval(),
                    MaskGITTransformer(transformer_preset("maskgit-imagenet256")).eval())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="shipped name, pipeline directory or imagenet256-random")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--batch", type=int, default=25, help="rows per decode call")
    ap.add_argument("--images", type=int, default=8, help="images decoded by both decoders")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=0.0)
    ap.add_argument("--out", default=None, help="export directory (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="use the export already in --out")
    args = ap.parse_args()
    print(f"machine: {machine_description()}")
    pipe = build(args.model)
    out = args.out or tempfile.mkdtemp(prefix="maskgit-onnx-")
    if args.reuse and (Path(out) / "model_card.json").is_file():
        print(f"reusing the export in {out} (same model: the random weights come from seed 0)")
    else:
        t0 = time.perf_counter()
        export_pipeline(pipe, out, encoder=False)
        print(f"exported to {out} in {time.perf_counter() - t0:.0f} s")
    rt = runtime.load(out)
    c = pipe.transformer.config
    N = c.num_tokens
    classes = max(c.num_classes, 1)

    # 1. logits on partially masked grids (about half masked), labels in turn (and -1 where the model has it)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, c.codebook_size, (8, N), generator=g)
    toks[torch.rand(8, N, generator=g) < 0.5] = c.mask_id
    labs = torch.tensor([i % classes if c.num_classes else -1 for i in range(8)])
    if c.null_class:
        labs[-2:] = -1
    with torch.inference_mode():
        want = pipe.transformer(toks, labs if c.num_classes or c.null_class else None).numpy()
    got = rt.session("transformer").run(None, {"tokens": toks.numpy(), "labels": labs.numpy()})[0]
    logit_diff = float(np.abs(got - want).max())

    # 2. images of --images random token grids, both decoders
    grid = torch.randint(0, c.codebook_size, (args.images, *pipe.grid), generator=g)
    x_t = pipe.to_images(grid).numpy()
    x_o = rt.to_images(grid.numpy())
    img_diff = float(np.abs(x_t - x_o).max())
    u8 = np.abs(uint8_images(x_t).astype(int) - uint8_images(x_o).astype(int)).max()
    print(f"logits max abs diff {logit_diff:.2e}; images max abs diff {img_diff:.2e}, uint8 {u8}/255", flush=True)

    # 3. tokens from the same noise, one seed per row
    cfg = dataclasses.replace(SampleConfig(), steps=args.steps, cfg=args.cfg)
    same, done, t_torch, t_ort = 0, 0, 0.0, 0.0
    for i in range(0, args.seeds, args.batch):
        seeds = list(range(i, min(i + args.batch, args.seeds)))
        lab = torch.tensor([s % classes if c.num_classes else -1 for s in seeds])
        start = torch.full((len(seeds), N), c.mask_id)
        t = time.perf_counter()
        a = pipe.decode_tokens(start, lab, cfg, None, seeded(seeds, len(seeds))).numpy()
        t_torch += time.perf_counter() - t
        t = time.perf_counter()
        b = runtime.decode(rt.logits_fn(lab.numpy()), start.numpy(), cfg, rt.mask_id, TorchRowNoise(seeds))
        t_ort += time.perf_counter() - t
        same += int((a == b).all(1).sum())
        done += len(seeds)
        print(f"  seeds {seeds[0]}..{seeds[-1]}: {int((a == b).all(1).sum())}/{len(seeds)} identical "
              f"(total {same}/{done})", flush=True)


    print(f"\n| model | logits max abs diff | tokens identical (same noise) | image max abs diff | uint8 max diff |"
          f"\n|---|---|---|---|---|"
          f"\n| {args.model} (steps {args.steps}, cfg {args.cfg:g}) | {logit_diff:.2e} | {same}/{args.seeds} | "
          f"{img_diff:.2e} ({img_diff * 255:.3f}/255) | {u8}/255 |")
    print(f"\ndecode loop time (informative only): torch {t_torch:.1f} s, onnxruntime {t_ort:.1f} s")


if __name__ == "__main__":
    main()
