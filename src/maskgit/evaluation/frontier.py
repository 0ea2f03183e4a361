"""`maskgit bench frontier`: quality against cost for plain step counts, cached decoding, guidance intervals and
guidance reused between unconditional passes (``cfg_every``).

Quality: every setting on a trained model (the shipped one by default), n images per seed over several seeds,
FD in the model's own feature space and in the independent one (``weights/eval``) and class agreement, as mean and
seed-to-seed spread (max - min). Cost: seconds per image of the same settings on that model, and, on the ImageNet
transformer configurations with random weights (speed does not depend on the weights), seconds per token decode
and the matmul GFLOP each setting spends, counted from the rows every forward ran (a cheap step's P queries cost
P/N of a full step's linear layers and P x (N+1) attention products)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import torch

# Around the shipped model's own sampler (Halton order, CFG 1): plain T, cached schedules, guidance intervals, and
# the unconditional pass on every K-th step only.
SETTINGS: dict[str, dict] = {
    "plain T=4": dict(steps=4),
    "plain T=6": dict(steps=6),
    "plain T=8": dict(steps=8),
    "plain T=12": dict(steps=12),
    "T=8, cache every2": dict(steps=8, cache="every2"),
    "T=8, cache every3": dict(steps=8, cache="every3"),
    "T=8, cache every4": dict(steps=8, cache="every4"),
    "T=12, cache every3": dict(steps=12, cache="every3"),
    "T=12, cache every4": dict(steps=12, cache="every4"),
    "T=8, CFG on [0.25, 1)": dict(steps=8, cfg_start=0.25),
    "T=8, CFG on [0, 0.5)": dict(steps=8, cfg_end=0.5),
    "T=8, cache every2, CFG on [0.25, 1)": dict(steps=8, cache="every2", cfg_start=0.25),
    "T=8, CFG pass every 2": dict(steps=8, cfg_every=2),
    "T=8, CFG pass every 4": dict(steps=8, cfg_every=4),
    "T=12, CFG pass every 3": dict(steps=12, cfg_every=3),
    "T=8, cache every2, CFG pass every 2": dict(steps=8, cache="every2", cfg_every=2),
}
BASE = dict(order="halton", cfg=1.0)


@dataclass
class FrontierSpec:
    """What one frontier run measures (``bench frontier``'s arguments, as a value)."""

    settings: dict[str, dict] = field(default_factory=lambda: dict(SETTINGS))
    base: dict = field(default_factory=lambda: dict(BASE))
    num: int = 1000
    seeds: tuple[int, ...] = (1, 2, 3)
    batch_size: int = 100
    configs: tuple[str, ...] = ("maskgit-imagenet256",)
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 1
    precision: str = "auto"


def cheap_flops(cfg, positions: int) -> float:
    """Matmul FLOPs of one cheap step's row: ``positions`` queries against N + 1 keys, and the head on them."""
    W, M, L = cfg.width, cfg.mlp_dim, cfg.num_tokens + 1
    per_layer = 2 * positions * (4 * W * W + 2 * W * M) + 2 * 2 * positions * L * W
    return float(cfg.depth * per_layer + 2 * positions * (W * W + W * cfg.codebook_size))


class FlopCounter:
    """Wraps a logits_fn and adds up the matmul FLOPs of the forwards it runs (full or cheap)."""

    def __init__(self, fn, cfg):
        self.fn, self.cfg, self.flops = fn, cfg, 0.0

    def __call__(self, tokens, guided, **kw):
        from maskgit.models.transformer import count_flops
        rows = len(tokens) * (2 if guided else 1)
        pos = kw.get("positions")
        self.flops += rows * (count_flops(self.cfg) if pos is None else cheap_flops(self.cfg, pos.shape[1]))
        return self.fn(tokens, guided, **kw)


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (max(values) - min(values)) if len(values) > 1 else 0.0


def quality_rows(pipe, ev, spec: FrontierSpec, say=lambda _: None) -> list[dict]:
    """Per setting: mean and spread over ``spec.seeds`` of FD (own, independent) and class agreement, and the
    model's seconds per image (the generation's wall time over its images, decoding included)."""
    from maskgit.evaluation.samples import generate, uniform_labels
    labels = uniform_labels(spec.num, pipe.transformer.config.num_classes)
    rows = []
    for name, kw in spec.settings.items():
        got: dict[str, list[float]] = {"fd": [], "fd_indep": [], "agree": [], "sec": []}
        for seed in spec.seeds:
            images, sec = generate(pipe, labels, "maskgit", {**spec.base, **kw}, seed, spec.batch_size)
            m = ev(images, labels)
            got["fd"].append(m["fd_featurenet"])
            got["fd_indep"].append(m.get("fd_independent", float("nan")))
            got["agree"].append(m.get("class_accuracy", float("nan")))
            got["sec"].append(sec / len(labels))
        row = {"setting": name, "seeds": list(spec.seeds)}
        for k in ("fd", "fd_indep", "agree"):
            row[k], row[k + "_spread"] = _spread(got[k])
            row[k + "_seeds"] = got[k]
        row["s_per_image"] = statistics.median(got["sec"])
        rows.append(row)
        per_seed = "; ".join(f"seed {s}: {a:.3f} / {b:.3f} / {c:.3f}" for s, a, b, c in
                             zip(spec.seeds, got["fd"], got["fd_indep"], got["agree"]))
        say(f"{name}: FD {row['fd']:.3f} +-{row['fd_spread']:.3f}, FD(indep) {row['fd_indep']:.3f} "
            f"+-{row['fd_indep_spread']:.3f}, agreement {row['agree']:.3f} +-{row['agree_spread']:.3f}, "
            f"{row['s_per_image'] * 1e3:.2f} ms/image ({per_seed})")
    return rows


def paired_gap(row: dict, ref: dict, key: str) -> tuple[float, float] | None:
    """``row`` minus ``ref`` in ``key``, seed by seed (both drew their images from the same seeds): the mean of the
    differences and half their range; None without per-seed values of the same seeds."""
    if row.get("seeds") is None or row.get("seeds") != ref.get("seeds"):
        return None
    d = [a - b for a, b in zip(row[key + "_seeds"], ref[key + "_seeds"])]
    return statistics.fmean(d), (max(d) - min(d)) / 2


@torch.inference_mode()
def cost_rows(spec: FrontierSpec, say=lambda _: None) -> list[dict]:
    """Per ImageNet config, batch and setting: seconds per image of the token decode (median of ``repeats``
    after one warm-up), its ratio to plain T=8 of the same config and batch, and GFLOP per image."""
    from maskgit.config import transformer_preset, vqgan_preset
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.models.vqgan import VQGAN
    from maskgit.pipeline import Pipeline
    from maskgit.sampling.decoding import decode
    from maskgit.sampling.noise import seeded
    rows = []
    for preset in spec.configs:
        torch.manual_seed(0)
        tcfg = dataclasses.replace(transformer_preset(preset), null_class=True)  # CFG needs a "no class" id
        vq = VQGAN(dataclasses.replace(vqgan_preset("rgb256-f16-small"), codebook_size=tcfg.codebook_size))
        pipe = Pipeline(vq.eval(), MaskGITTransformer(tcfg).eval(), precision=spec.precision)
        for b in spec.batches:
            start, labels = torch.full((b, tcfg.num_tokens), pipe.mask_id), torch.arange(b) % tcfg.num_classes
            base_s = None
            settings = {"plain T=8": SETTINGS["plain T=8"], **spec.settings}  # the reference first, always
            for name, kw in settings.items():
                cfg = pipe.sample_config(**{**spec.base, **kw})
                counter = FlopCounter(pipe.logits_fn(labels), tcfg)
                decode(counter, start, cfg, pipe.mask_id, seeded(list(range(b)), b))  # warm-up
                counter.flops, times = 0.0, []
                for _ in range(spec.repeats):
                    t = time.perf_counter()
                    decode(counter, start, cfg, pipe.mask_id, seeded(list(range(b)), b))
                    times.append(time.perf_counter() - t)
                s = statistics.median(times) / b
                base_s = base_s or s
                rows.append({"config": preset, "batch": b, "setting": name, "s_per_image": s,
                             "vs_plain8": s / base_s, "gflop": counter.flops / spec.repeats / b / 1e9,
                             "precision": pipe.precision})
                say(f"{preset} batch {b} {name}: {s:.3f} s/image ({s / base_s:.2f}x plain T=8), "
                    f"{rows[-1]['gflop']:.0f} GFLOP/image")
    return rows


def quality_table(rows: list[dict]) -> str:
    """Mean ± spread per setting; with a plain T=8 row measured on the same seeds, each row's seed-by-seed
    difference from it (mean ± half range; FD: lower is better, agreement: higher) and whether it is of equal
    quality (``equal_quality``)."""
    ref = next((r for r in rows if r["setting"] == "plain T=8"), None)
    paired = ref is not None and all(paired_gap(r, ref, "fd") is not None for r in rows)
    head = "| setting | FD (own) | FD (independent) | class agreement | ms/image (this model, batch 100) |"
    rule = "|---|---|---|---|---:|"
    if paired:
        head += " Δ vs plain T=8, seed by seed: FD own / FD independent / agreement | as good as plain T=8 |"
        rule += "---|---|"
    lines = []
    for r in rows:
        line = (f"| {r['setting']} | {r['fd']:.3f} ± {r['fd_spread']:.3f} | {r['fd_indep']:.3f} ± "
                f"{r['fd_indep_spread']:.3f} | {r['agree']:.3f} ± {r['agree_spread']:.3f} | "
                f"{r['s_per_image'] * 1e3:.2f} |")
        if paired:
            gaps = [paired_gap(r, ref, k) for k in ("fd", "fd_indep", "agree")]
            line += (" " + " / ".join(f"{m:+.3f} ± {h:.3f}" for m, h in gaps) +
                     f" | {'yes' if equal_quality(r, ref) else 'no'} |")
        lines.append(line)
    return "\n".join([head, rule, *lines])


def cost_table(rows: list[dict]) -> str:
    head = ("| config | batch | setting | s/image | vs plain T=8 | GFLOP/image |\n"
            "|---|---:|---|---:|---:|---:|")
    lines = [f"| {r['config']} | {r['batch']} | {r['setting']} | {r['s_per_image']:.3f} | {r['vs_plain8']:.2f} | "
             f"{r['gflop']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def equal_quality(row: dict, ref: dict) -> bool:
    """``row`` as good as ``ref`` in both FDs and in class agreement: with per-seed values of the same seeds, the
    mean seed-by-seed difference is no worse than half the differences' range (``paired_gap``); otherwise ``row`` is
    within the larger seed spread of the two (or better)."""
    gaps = {k: paired_gap(row, ref, k) for k in ("fd", "fd_indep", "agree")}
    if all(g is not None for g in gaps.values()):
        ok_fd = all(gaps[k][0] <= gaps[k][1] for k in ("fd", "fd_indep") if row[k] == row[k])
        return ok_fd and -gaps["agree"][0] <= gaps["agree"][1]
    tol = lambda k: max(row[k + "_spread"], ref[k + "_spread"])  # noqa: E731
    ok_fd = all(row[k] <= ref[k] + tol(k) for k in ("fd", "fd_indep") if row[k] == row[k])
    return ok_fd and row["agree"] >= ref["agree"] - tol("agree")


def plot_frontier(path, quality: list[dict], cost: list[dict] | None = None) -> None:
    """FD in both spaces against cost: x = ImageNet-256 batch-1 seconds per image when measured, else the
    model's own seconds per image; one point per setting, labelled."""
    from maskgit.evaluation.plots import pyplot, save
    plt = pyplot()
    if plt is None:
        return
    xs = {r["setting"]: r["s_per_image"] for r in quality}
    xlabel = "s/image (this model, batch 100)"
    if cost:
        first = [r for r in cost if r["config"] == cost[0]["config"] and r["batch"] == cost[0]["batch"]]
        xs = {r["setting"]: r["s_per_image"] for r in first}
        xlabel = f"s/image ({cost[0]['config']}, batch {cost[0]['batch']}, random weights)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("fd", "fd_indep"), ("FD, own feature space", "FD, independent space")):
        for r in quality:
            if r["setting"] not in xs:
                continue
            plain = r["setting"].startswith("plain")
            ax.errorbar(xs[r["setting"]], r[key], yerr=r[key + "_spread"] / 2, fmt="o" if plain else "s",
                        color="C0" if plain else "C1", capsize=2)
            ax.annotate(r["setting"], (xs[r["setting"]], r[key]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(title)
    save(fig, path)
