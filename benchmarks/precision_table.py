"""The table of ``benchmarks/precision_training.sh``: validation metrics per step of each trainer in fp32 and under
bf16 autocast (mean of the seeds, and their range), the median step time of each run (the two precisions ran side by
side, one core each) and class agreement of 1,000 samples at CFG 2.

    python benchmarks/precision_table.py RUN_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = {"tok": ("val_psnr", "val_rec", "val_perceptual", "val_usage"), "mg": ("val_loss", "val_masked_acc")}
NAMES = {"off": "fp32", "bf16": "bf16 autocast"}


def runs(root: Path, kind: str) -> dict[str, dict[str, list[dict]]]:
    """{amp: {seed: metrics lines}} of the runs of one trainer."""
    out: dict[str, dict[str, list[dict]]] = {}
    for d in sorted(root.glob(f"{kind}_*_s*")):
        amp, seed = d.name.split("_")[1], d.name.split("_s")[-1]
        lines = [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines() if s.strip()]
        out.setdefault(amp, {})[seed] = lines
    return out


def spread(values: list[float], digits: int) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(root: Path, kind: str) -> list[str]:
    data = runs(root, kind)
    if not data:
        return []
    keys = [k for k in METRICS[kind] if any(k in line for r in data.values() for ls in r.values() for line in ls)]
    rows = [f"| trainer | precision | step | {' | '.join(keys)} |", "|---|---|---:|" + "---:|" * len(keys)] \
        if keys else []  # a run without a validation split has only its step times here
    for amp, by_seed in (data.items() if keys else ()):
        steps = sorted({line["step"] for ls in by_seed.values() for line in ls if keys[0] in line})
        for step in steps:
            cells = []
            for k in keys:
                vals = [line[k] for ls in by_seed.values() for line in ls if line["step"] == step and k in line]
                cells.append(spread(vals, 2 if k in ("val_psnr", "val_loss") else 4))
            rows.append(f"| {'tokenizer' if kind == 'tok' else 'transformer'} | {NAMES.get(amp, amp)} "
                        f"({len(by_seed)} seeds) | {step} | {' | '.join(cells)} |")
    rows += [""] if keys else []
    rows.append("| trainer | precision | median step (s) per seed |")
    rows.append("|---|---|---|")
    for amp, by_seed in data.items():
        med = [f"{statistics.median(t):.3f}" if (t := [line["step_s"] for line in ls[2:] if "step_s" in line])
               else "-" for ls in by_seed.values()]  # "-": a run still in its first steps
        rows.append(f"| {'tokenizer' if kind == 'tok' else 'transformer'} | {NAMES.get(amp, amp)} | "
                    f"{', '.join(med)} |")
    return rows + [""]


def seed_table(root: Path) -> list[str]:
    """The tokenizer's validation PSNR of every run, seed by seed: a drop that the mean of a few seeds hides."""
    data = runs(root, "tok")
    steps = sorted({line["step"] for r in data.values() for ls in r.values() for line in ls if "val_psnr" in line})
    if not steps:
        return []
    rows = [f"| tokenizer run | {' | '.join(f'PSNR at {s}' for s in steps)} |", "|---|" + "---:|" * len(steps)]
    for amp, by_seed in data.items():
        for seed, ls in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
            got = {line["step"]: line["val_psnr"] for line in ls if "val_psnr" in line}
            cells = [f"{got[s]:.2f}" if s in got else "-" for s in steps]
            rows.append(f"| {NAMES.get(amp, amp)}, seed {seed} | {' | '.join(cells)} |")
    return rows + [""]


def main() -> None:
    root = Path(sys.argv[1])
    lines = table(root, "tok") + seed_table(root) + table(root, "mg")
    agree: dict[str, list[float]] = {}
    for f in sorted(root.glob("agreement_*_s*.json")):
        agree.setdefault(f.stem.split("_")[1], []).append(json.loads(f.read_text())["class_agreement"])
    if agree:
        lines += ["| transformer | class agreement at CFG 2, n = 1,000 (mean, range over seeds) |", "|---|---|"]
        lines += [f"| {NAMES.get(a, a)} | {spread(v, 3)} (seeds: {', '.join(f'{x:.3f}' for x in v)}) |"
                  for a, v in agree.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
