"""The quality cost of int8: torch fp32 / torch int8 (``--precision int8``) / ONNX fp32 / ONNX int8 (onnxruntime
dynamic quantisation, ``maskgit export onnx --int8``) on the same labels and seeds, each written as an ADM file,
read back and scored as ``maskgit eval --samples`` scores it (FD in the project's feature space, class agreement)
against the Fashion-MNIST test split.

    python benchmarks/onnx_int8_quality.py --num 1000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from maskgit import runtime
from maskgit.evaluation.samples import Evaluator, load_real, machine_description
from maskgit.pipeline import load
from maskgit.storage.onnx import export_pipeline
from maskgit.storage.samples import read_samples, to_channels, write_npz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    print(f"machine: {machine_description()}")
    work = Path(tempfile.mkdtemp(prefix="maskgit-int8-"))
    pipe = load(args.model)
    export_pipeline(pipe, work / "onnx", encoder=False, int8=True)
    classes = pipe.transformer.config.num_classes
    labels = np.arange(args.num) % classes
    batches = [(i, labels[i:i + args.batch]) for i in range(0, args.num, args.batch)]

    def torch_samples(p):
        out = [p.generate(lab.tolist(), seed=list(range(i, i + len(lab))), output="np", steps=args.steps)
               for i, lab in batches]
        return np.concatenate(out)

    def onnx_samples(rt):
        return np.concatenate([rt.generate(lab, seed=list(range(i, i + len(lab))), steps=args.steps)
                               for i, lab in batches])

    variants = {"torch fp32": lambda: torch_samples(pipe),
                "torch int8": lambda: torch_samples(load(args.model, precision="int8")),
                "onnx fp32": lambda: onnx_samples(runtime.load(work / "onnx")),
                "onnx int8": lambda: onnx_samples(runtime.load(work / "onnx", int8=True))}
    ev = Evaluator(pipe.features, load_real("fashion-mnist", "test", pipe.grid[0] * pipe.tokenizer.config.downsample))
    rows, ref = [], None
    for name, make in variants.items():
        with torch.inference_mode():
            images = make()
        ref = images if ref is None else ref
        path = work / f"{name.replace(' ', '_')}.npz"
        write_npz(path, images, labels)
        back = read_samples(path)
        u8 = to_channels(back["images"], pipe.features.config.channels)
        m = ev(torch.from_numpy(u8).permute(0, 3, 1, 2), torch.from_numpy(back["labels"]))
        print(name, m, flush=True)
        same = float((images == ref).reshape(len(images), -1).all(1).mean())
        rows.append(f"| {name} | {m['fd_featurenet']:.2f} | {m['class_accuracy']:.3f} | {same:.3f} |")
    print("\n| path | FD (featurenet) | class agreement | images identical to torch fp32 |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
