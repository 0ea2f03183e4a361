"""`maskgit bench samplers`: decoding orders and sampler settings on a trained model, by FD and class agreement.

Three sweeps, each point a full SampleConfig written out (the model's own stored defaults never leak in):
  steps   FD and class agreement vs T for each order (confidence, halton, random)
  grid    choice temperature x CFG x order at T=8; its Pareto front of (FD low, class agreement high)
  reject  classifier-guided selection among k candidates per image (cost: k decodes + k classifier passes)
With ``--points DIR`` every point is also written to a JSON file there as soon as it is measured (a long run can be
inspected, resumed, or split over processes with ``--shard I/N``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.evaluation.plots import pyplot, save
from maskgit.evaluation.samples import generate

log = logging.getLogger(__name__)

BASE = SampleConfig()  # the settings the shipped model used before it stored its own


def settings(**kw) -> dict:
    """A complete set of decoding settings: BASE with ``kw`` replaced (start_step excluded)."""
    d = dataclasses.asdict(dataclasses.replace(BASE, **kw))
    d.pop("start_step")
    return d


def pareto_front(rows: list[dict], x: str | tuple[str, ...] = "FD", y: str = "class agreement") -> list[dict]:
    """The rows no other row beats: lower on every ``x`` (one key, or several feature spaces' FDs) and higher ``y``
    (ties on all kept once), sorted by the first ``x``. Keys whose value is NaN in any row are left out."""
    xs = (x,) if isinstance(x, str) else tuple(x)
    xs = tuple(k for k in xs if all(r.get(k) == r.get(k) for r in rows)) or xs[:1]  # NaN != NaN
    key = lambda r: tuple(r[k] for k in xs) + (-r[y],)  # every coordinate: lower is better
    front = []
    for r in rows:
        dominated = any(all(a <= b for a, b in zip(key(o), key(r))) and key(o) != key(r) for o in rows)
        if not dominated and not any(key(f) == key(r) for f in front):
            front.append(r)
    return sorted(front, key=lambda r: r[xs[0]])


class Sweep:
    """Evaluates decoding settings once each (cached by value) and logs every point to ``log_path`` (JSON)."""

    def __init__(self, pipe, ev, labels: torch.Tensor, seed: int, batch_size: int, log_dir: Path | None,
                 shard: tuple[int, int] | None = None):
        """``shard`` (i, n): measure only every n-th new point, starting at the i-th (several processes share a
        sweep; each logs to its own file and a last run without a shard reads them all and writes the tables)."""
        self.pipe, self.ev, self.labels = pipe, ev, labels
        self.seed, self.batch_size, self.shard = seed, batch_size, shard
        self.done: dict[str, dict] = {}
        self.log_path = None
        self.calls = 0
        if log_dir is not None:
            for f in sorted(log_dir.glob("samplers_points*.json")):  # resume: points already measured
                for r in json.loads(f.read_text()):
                    if r.get("n") == len(labels):
                        self.done[r["key"]] = r
            self.log_path = log_dir / (f"samplers_points_{shard[0]}of{shard[1]}.json" if shard else
                                       "samplers_points.json")
            self.mine = [r for r in json.loads(self.log_path.read_text())] if self.log_path.exists() else []

    def __call__(self, kw: dict) -> dict:
        key = json.dumps(kw, sort_keys=True)
        self.calls += 1
        if key not in self.done and self.shard and (self.calls - 1) % self.shard[1] != self.shard[0]:
            return {"key": key, **kw, "FD": float("nan"), "class agreement": float("nan")}  # another shard's
        if key not in self.done:
            images, sec = generate(self.pipe, self.labels, "maskgit", kw, self.seed, self.batch_size)
            m = self.ev(images, self.labels)
            r = {"key": key, **kw, "n": len(self.labels), "FD": m["fd_featurenet"],
                 "FD (independent)": m.get("fd_independent", float("nan")),
                 "precision": m["precision_featurenet"], "recall": m["recall_featurenet"],
                 "class agreement": m.get("class_accuracy", float("nan")), "s/img": sec / len(self.labels)}
            self.done[key] = r
            log.info(f"order={kw['order']} T={kw['steps']} ct={kw['choice_temperature']} cfg={kw['cfg']} "
                     f"k={kw['candidates']}: FD {r['FD']:.3f} agreement {r['class agreement']:.3f} "
                     f"{r['s/img']:.4f} s/img")
            if self.log_path is not None:
                self.mine.append(r)
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self.log_path.write_text(json.dumps(self.mine, indent=1) + "\n")
        return dict(self.done[key])


@dataclass(frozen=True)
class SamplersSpec:
    """What one samplers run measures (``bench samplers``' arguments, as a value)."""

    steps: tuple[int, ...] = (4, 8, 12, 16)  # the T values of the steps sweep
    seed: int = 0
    batch_size: int = 100
    candidates: tuple[int, ...] = ()  # k of the classifier-guided selection sweep (none: no such sweep)
    shard: tuple[int, int] | None = None  # (i, n): measure only this share of the points (see Sweep)
    points: Path | None = None  # keep every measured point as JSON in this folder (resume, shards)
    plots: Path = Path("benchmarks/plots")


def run_samplers(spec: SamplersSpec, pipe, ev, labels, plot, real_floor: float | None) -> list[tuple[str, str]]:
    """Run the three sweeps; returns [(title, markdown table)] and draws the plots through ``plot``."""
    from maskgit.evaluation.samples import markdown_table
    shard, steps = spec.shard, list(spec.steps)
    if shard and spec.points is None:
        raise MaskGITError("--shard needs --points DIR (where the shards leave their measurements)")
    sweep = Sweep(pipe, ev, labels, spec.seed, spec.batch_size, None if spec.points is None else Path(spec.points),
                  shard)
    plots = Path(spec.plots)
    orders = ("confidence", "halton", "random")
    cols = ["order", "steps", "choice temperature", "CFG", "FD", "FD (independent)", "class agreement", "precision",
            "recall", "s/img"]

    def row(r):
        return {**r, "choice temperature": r["choice_temperature"] if r["order"] == "confidence" else "-",
                "CFG": r["cfg"]}
    grid_kw = [settings(cfg=cfg, choice_temperature=ct) for cfg in (0.0, 0.5, 1.0, 2.0) for ct in (4.5, 8.0)]
    grid_kw += [settings(cfg=cfg, order="halton") for cfg in (0.0, 0.5, 1.0, 2.0)]  # no choice noise in halton
    grid_kw += [settings(choice_temperature=2.0), settings(cfg=0.25, choice_temperature=8.0)]
    steps_kw = [settings(steps=T, order=o) for o in orders for T in steps]
    rej_kw = [settings(candidates=k, **kw) for k in spec.candidates for kw in (dict(choice_temperature=8.0),)]
    if shard:  # measure this shard's points and stop; the run without --shard writes the tables
        for kw in {json.dumps(kw, sort_keys=True): kw for kw in grid_kw + steps_kw + rej_kw}.values():
            sweep(kw)
        return []
    t0 = time.time()
    grid = [sweep(kw) for kw in grid_kw]
    by_steps = [sweep(kw) for kw in steps_kw]
    plot(plots / "samplers_fd_vs_steps.png",
         {o: (steps, [r["FD"] for r in by_steps if r["order"] == o]) for o in orders},
         "decoding steps T", "FD (project features)", "FD vs steps per decoding order")
    plot(plots / "samplers_agreement_vs_steps.png",
         {o: (steps, [r["class agreement"] for r in by_steps if r["order"] == o]) for o in orders},
         "decoding steps T", "class agreement", "class agreement vs steps per decoding order")
    front = pareto_front(grid, ("FD", "FD (independent)"))
    for r in grid:
        r["on front"] = "yes" if any(f["key"] == r["key"] for f in front) else ""
    _pareto_plot(plots / "samplers_pareto_t8.png", grid, front, real_floor)
    out = [("FD and class agreement vs decoding steps, per order", markdown_table([row(r) for r in by_steps], cols)),
           ("Choice temperature x CFG x order at T=8 (Pareto front of FD and class agreement)",
            markdown_table([row(r) for r in grid], cols + ["on front"]))]
    if rej_kw:
        base = [sweep(settings(choice_temperature=8.0))]
        rej = [{**row(r), "candidates": 1} for r in base] + [{**row(sweep(kw)), "candidates": kw["candidates"]}
                                                             for kw in rej_kw]
        out.append(("Classifier-guided selection among k candidates per image, T=8",
                    markdown_table(rej, ["candidates"] + cols)))
    log.info(f"samplers: {len(sweep.done)} points in {time.time() - t0:.0f} s")
    return out


def _pareto_plot(path: Path, grid: list[dict], front: list[dict], real_floor: float | None) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for order, marker in (("confidence", "o"), ("halton", "s")):
        pts = [r for r in grid if r["order"] == order]
        sc = ax.scatter([r["FD"] for r in pts], [r["class agreement"] for r in pts], c=[r["cfg"] for r in pts],
                        cmap="viridis", marker=marker, vmin=0, vmax=2, label=order, edgecolors="k")
        for r in pts:
            tag = f"ct{r['choice_temperature']:g}" if order == "confidence" else "H"
            ax.annotate(f"{tag},cfg{r['cfg']:g}", (r["FD"], r["class agreement"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot([r["FD"] for r in front], [r["class agreement"] for r in front], "r--", lw=1, label="Pareto front")
    if real_floor is not None:
        ax.axvline(2 * real_floor, color="grey", ls=":", lw=1, label="2x real-data FD")
    fig.colorbar(sc, ax=ax, label="CFG scale")
    ax.set_xlabel("FD (project features), lower is better")
    ax.set_ylabel("class agreement, higher is better")
    ax.set_title("T=8: choice temperature x CFG x order")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)
    log.info(f"wrote {path}")
