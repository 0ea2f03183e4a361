"""Class agreement of a class-conditional model's samples: the share of samples that a classifier trained on the
real images assigns to the requested class (the shipped Fashion-MNIST classifier by default). RGB samples are
averaged to grey when the classifier reads one channel. ``--fd DATA`` also gives FD against DATA's test split in
the classifier's feature space and in the independent one (``weights/eval``).

    python3 benchmarks/class_agreement.py --model runs/model --num 1000 --cfg 1 [--fd fashion-mnist]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import maskgit
from maskgit.evaluation.samples import uniform_labels
from maskgit.storage.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--classifier", default=str(Path(maskgit.__file__).parent / "weights/fashion-mnist/features"))
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", default=None)
    p.add_argument("--fd", default=None, help="also FD in both feature spaces against this data set's test split")
    args = p.parse_args()
    pipe = maskgit.load(args.model)
    net = load_model(args.classifier, "features").eval()
    C = pipe.transformer.config.num_classes
    labels = uniform_labels(args.num, C)
    kw = {"steps": args.steps} | ({"cfg": args.cfg} if args.cfg is not None else {})
    hits, kept = 0, []
    with torch.inference_mode():
        for i in range(0, args.num, args.batch_size):
            lab = labels[i:i + args.batch_size]
            x = pipe.generate(lab.tolist(), seed=list(range(i, i + len(lab))), output="tensor", **kw)
            if x.shape[1] != net.config.channels:
                x = x.mean(1, keepdim=True).expand(-1, net.config.channels, -1, -1)
            hits += int((net(x).argmax(1) == lab).sum())
            if args.fd:
                kept.append(x)
    out = {"model": args.model, "num": args.num, "settings": kw, "class_agreement": hits / args.num}
    if args.fd:
        from maskgit.commands.evaluate import evaluator_for
        images = torch.cat(kept)
        m = evaluator_for(None, args.classifier, args.fd, "test", size=images.shape[-1])(images, labels)
        out.update(fd_classifier=m["fd_featurenet"], fd_independent=m.get("fd_independent"))
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
