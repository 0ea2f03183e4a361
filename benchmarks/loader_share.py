"""Tokenizer training on an image folder with loader worker processes vs loading in the training process: steps/s
of each, and the share of step time spent waiting for the batch (the trainer logs ``data_s`` and ``step_s`` per
step in metrics.jsonl).

    python benchmarks/loader_share.py --data imagefolder:DIR --preset cpu32-f4 --batch-size 64 --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="imagefolder:DIR (or any dataset train-tokenizer takes)")
    ap.add_argument("--preset", default="cpu32-f4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60, help="training steps per run; the first 5 are not counted")
    ap.add_argument("--workers", default="0,2", help="comma-separated --workers values")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers.split(","):
            out = Path(tmp) / f"w{w}"
            cmd = [sys.executable, "-m", "maskgit", "train-tokenizer", "--data", args.data, "--preset", args.preset,
                   "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--log-every", "1",
                   "--save-every", "0", "--workers", w, "--device", "cpu", "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True)
            steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][5:]
            step_s = statistics.median(r["step_s"] for r in steps)
            share = sum(r["data_s"] for r in steps) / sum(r["step_s"] for r in steps)
            rows.append((w, 1 / step_s, step_s, statistics.median(r["data_s"] for r in steps), share))
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"train-tokenizer --data {args.data} --preset {args.preset} --batch-size {args.batch_size}, "
          f"steps 6-{args.steps}\n")
    print("| --workers | steps/s | median step (s) | median wait for the batch (s) | share of step time waiting |")
    print("|---:|---:|---:|---:|---:|")
    for w, sps, st, ds, share in rows:
        print(f"| {w} | {sps:.2f} | {st:.3f} | {ds:.4f} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
