"""How sampling cost grows: seconds per image of MaskGIT's decode against the token grid (16x16 = 256 px, 32x32 =
512 px at f16), the number of steps T and the batch, with the AR baseline (KV cache, one step per token) beside it.
Random weights at the ImageNet configuration; transformer only (the VQGAN decoder is timed by ``bench speed``)."""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from maskgit.config import SampleConfig, transformer_preset
from maskgit.evaluation.plots import pyplot, save
from maskgit.inference.precision import prepare, resolve_precision
from maskgit.models.autoregressive import ARTransformer
from maskgit.models.transformer import MaskGITTransformer
from maskgit.sampling.decoding import decode

logger = logging.getLogger(__name__)


def _forward(model, precision: str, device: str):
    if precision != "bf16":
        return model
    model = prepare(model, "bf16", device)  # on CPU: bf16 linears and attention, as the pipeline runs it

    def run(tokens, labels):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return model(tokens, labels).float()
    return run


def _seconds(fn, device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t


@torch.inference_mode()
def measure_scaling(config: str, grids: list[int], steps: list[int], batches: list[int], precision: str,
                    device: str, ar_batch: int = 1, max_batch_tokens: int | None = None, log=logger.info) -> list[dict]:
    """Rows {model, grid, tokens, steps, batch, precision, s/image}: one timed decode per point after one warm-up
    forward per (grid, batch). ``max_batch_tokens`` skips points whose batch x tokens exceed it (say so in the
    table's notes)."""
    precision = resolve_precision(precision, device)
    base = transformer_preset(config)
    rows = []
    for g in grids:
        torch.manual_seed(0)
        cfg = dataclasses.replace(base, grid_size=g)
        model = MaskGITTransformer(cfg).to(device).eval()
        fwd = _forward(model, precision, device)
        for b in batches:
            if max_batch_tokens and b * cfg.num_tokens > max_batch_tokens:
                continue
            labels = torch.randint(0, max(cfg.num_classes, 1), (b,), device=device)
            start = torch.full((b, cfg.num_tokens), cfg.mask_id, device=device)
            fwd(start, labels)  # warm-up
            for T in steps:
                sc = SampleConfig(steps=T)
                sec = _seconds(lambda: decode(lambda t, g_: fwd(t, labels), start, sc, cfg.mask_id,
                                              torch.Generator().manual_seed(0)), device)
                rows.append({"model": "MaskGIT", "grid": f"{g}x{g}", "tokens": cfg.num_tokens, "steps": T,
                             "batch": b, "precision": precision, "s/image": sec / b})
                log(rows[-1])
        ar = ARTransformer(cfg).to(device).eval()
        lab = torch.randint(0, max(cfg.num_classes, 1), (ar_batch,), device=device)
        sec = _seconds(lambda: ar.generate(lab, SampleConfig(), torch.Generator().manual_seed(0), use_cache=True),
                       device)
        rows.append({"model": "AR (KV cache, fp32)", "grid": f"{g}x{g}", "tokens": cfg.num_tokens,
                     "steps": cfg.num_tokens, "batch": ar_batch, "precision": "fp32", "s/image": sec / ar_batch})
        log(rows[-1])
    return rows


def plot_scaling(rows: list[dict], path) -> None:
    """s/image against decoding steps, one line per (grid, batch); the AR baseline's points at its own steps."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series = {}
    for r in rows:
        key = f"{r['model']} {r['grid']}" + (f" batch {r['batch']}" if r["model"] == "MaskGIT" else "")
        series.setdefault(key, []).append((r["steps"], r["s/image"]))
    for key, pts in series.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o" if key.startswith("MaskGIT") else "s", label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("decoding steps (MaskGIT: T; AR: one per token)")
    ax.set_ylabel("seconds per image")
    ax.set_title("sampling cost vs token grid, steps and batch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, path)
