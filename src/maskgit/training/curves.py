"""The loss curve of a run: ``metrics.jsonl`` drawn to ``loss_curve.png`` (matplotlib, when installed)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(run_dir: Path, keys: tuple[str, ...] = ("loss", "val_loss")) -> Path | None:
    """Draw the loss curve of ``metrics.jsonl`` to ``loss_curve.png`` (needs matplotlib; skipped without)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if pts:
            ax.plot(*zip(*pts), label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(run_dir.name)
    out = run_dir / "loss_curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
