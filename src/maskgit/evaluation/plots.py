"""Benchmark plots (matplotlib, an optional dependency: without it the tables are still written)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (with a logged note) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib missing: no plot")
        return None
    return plt


def save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt
    plt.close(fig)


def line_plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
              logy: bool = False) -> None:
    """One line with markers per series {name: (xs, ys)}."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
