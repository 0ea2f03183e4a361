"""One frontier from several `maskgit bench frontier` runs: each run leaves PLOTS/frontier.json (its command, its
quality rows with per-seed values, its cost rows); this merges them (a setting measured twice must agree: the runs
are seeded), prints the quality table (with the seed-by-seed comparison against plain T=8) and the cost table, and
draws the plot: FD in both feature spaces against the cost rows' seconds per image (the first config and batch).

    python benchmarks/frontier_plot.py RUN1/frontier.json RUN2/frontier.json ... --out benchmarks/plots/frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskgit.evaluation import frontier as F


def merge(files: list[Path]) -> tuple[list[dict], list[dict], list[str]]:
    quality: dict[str, dict] = {}
    cost: list[dict] = []
    commands = []
    for f in files:
        run = json.loads(f.read_text())
        commands.append(run["command"])
        for row in run["quality"]:
            old = quality.setdefault(row["setting"], row)
            for k in ("fd_seeds", "fd_indep_seeds", "agree_seeds"):
                if [round(v, 3) for v in old[k]] != [round(v, 3) for v in row[k]]:  # logs keep 3 decimals
                    raise SystemExit(f"{row['setting']}: {k} differs between runs ({old[k]} vs {row[k]})")
        cost += run["cost"]
    return list(quality.values()), cost, commands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="frontier.json files")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/plots/frontier.png"))
    args = ap.parse_args()
    quality, cost, commands = merge(args.runs)
    order = list(F.SETTINGS)
    quality.sort(key=lambda r: order.index(r["setting"]) if r["setting"] in order else len(order))
    print("\n".join(f"- `{c}`" for c in commands))
    if quality:
        print(F.quality_table(quality))
    if cost:
        print(F.cost_table(cost))
    if quality:
        F.plot_frontier(args.out, quality, cost or None)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
