"""Sampler settings of the shipped Fashion-MNIST model judged in two independent feature spaces: FD in the model's own
classifier's features (`weights/fashion-mnist/features`, which also scores class agreement and picks candidates) and
FD in a second classifier's features (`weights/eval/fashion-mnist`: another width and seed, used for nothing else),
with class agreement; n images per point against the test split, mean and spread over seeds.

    python3 benchmarks/feature_spaces.py --num 1000 --seeds 1,2,3

A setting is better than another only where both FDs agree (lower in both, within the seed spread)."""

from __future__ import annotations

import argparse
import statistics
import time

SETTINGS = {
    "confidence, CFG 0": dict(order="confidence", cfg=0.0, choice_temperature=4.5),
    "confidence, CFG 0.5": dict(order="confidence", cfg=0.5, choice_temperature=4.5),
    "confidence, CFG 1": dict(order="confidence", cfg=1.0, choice_temperature=4.5),
    "halton, CFG 0": dict(order="halton", cfg=0.0),
    "halton, CFG 0.5": dict(order="halton", cfg=0.5),
    "halton, CFG 1": dict(order="halton", cfg=1.0),
    "confidence t8, CFG 0.25": dict(order="confidence", cfg=0.25, choice_temperature=8.0),
    "confidence t8, CFG 0": dict(order="confidence", cfg=0.0, choice_temperature=8.0),
    "halton, CFG 1, cache every2": dict(order="halton", cfg=1.0, cache="every2"),
    "halton, CFG 1, cache every3": dict(order="halton", cfg=1.0, cache="every3"),
    "halton, CFG 1 on steps [0.25, 1)": dict(order="halton", cfg=1.0, cfg_start=0.25),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--settings", default=";".join(SETTINGS), help="names of SETTINGS, separated by ';'")
    args = ap.parse_args()

    from maskgit.commands.evaluate import evaluator_for
    from maskgit.evaluation.samples import generate, machine_description, uniform_labels
    from maskgit.pipeline import load

    pipe = load("fashion-mnist")
    ev = evaluator_for(pipe, None, "fashion-mnist", "test")
    assert ev.second is not None, "the independent feature network (weights/eval/fashion-mnist) is missing"
    labels = uniform_labels(args.num, pipe.transformer.config.num_classes)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine_description()}; n={args.num}, seeds {seeds}, T={args.steps}", flush=True)
    rows = []
    for name in args.settings.split(";"):
        kw = dict(SETTINGS[name], steps=args.steps)
        got = {"fd_featurenet": [], "fd_independent": [], "class_accuracy": []}
        t0 = time.perf_counter()
        for s in seeds:
            images, _ = generate(pipe, labels, "maskgit", kw, s, 100)
            m = ev(images, labels)
            for k in got:
                got[k].append(m[k])
            print(f"{name} seed {s}: FD {m['fd_featurenet']:.3f} FD(indep) {m['fd_independent']:.3f} "
                  f"agreement {m['class_accuracy']:.3f}", flush=True)
        rows.append((name, got, time.perf_counter() - t0))
    real = ev(load_train(args.num), None)
    print(f"\nreal-data floor (train split, n={args.num}): FD {real['fd_featurenet']:.3f}, "
          f"FD (independent) {real['fd_independent']:.3f}\n")
    print("| setting | FD (own features) | FD (independent features) | class agreement |")
    print("|---|---:|---:|---:|")
    for name, got, _ in rows:
        cells = [f"{statistics.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" for v in got.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(± = half the range over the seeds)")


def load_train(num: int):
    from maskgit.evaluation.samples import load_real
    return load_real("fashion-mnist", "train", 32, num)


if __name__ == "__main__":
    main()
