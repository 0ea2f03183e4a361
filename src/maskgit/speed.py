"""`maskgit bench speed`: sampling speed at a given transformer configuration with random weights, as seconds
per image and achieved GFLOP/s against a matmul peak measured in the same run; the VQGAN decoder separately."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .autoregressive import ARTransformer
from .config import SampleConfig, transformer_preset, vqgan_preset
from .sampling import decode
from .transformer import MaskGITTransformer
from .vqgan import VQGAN


def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n x n matrix product over ``repeats`` runs (after 3 warm-ups): a peak, so the
    fastest run counts, as for the workloads it is compared with."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def run_speed(args, command: str) -> int:
    from .commands.common import parse_ints, resolve_device
    from .evaluation import append_results, markdown_table
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = transformer_preset(args.config)
    peak = matmul_peak(device)
    print(f"matmul peak: {peak:.1f} GFLOP/s")
    model = MaskGITTransformer(cfg).to(device).eval()
    rows = []
    for b in parse_ints(args.batches, "--batches"):
        labels = torch.randint(0, cfg.num_classes, (b,), device=device)
        start = torch.full((b, cfg.num_tokens), cfg.mask_id, device=device)
        fwd_flops = flops_of(lambda: model(start, labels))
        for steps in (8, 12):
            sc = SampleConfig(steps=steps)

            def run():
                decode(lambda t, g: model(t, labels), start, sc, cfg.mask_id, torch.Generator().manual_seed(0))
            sec = _median_time(run, args.repeats)
            rows.append(_row(f"MaskGIT transformer, {steps} steps", b, sec, steps * fwd_flops, peak))
            print(rows[-1])
    # the VQGAN decoder with the official layout at 256 px
    vq = VQGAN(vqgan_preset("imagenet-f16")).to(device).eval()
    for b in parse_ints(args.batches, "--batches"):
        toks = torch.randint(0, 1024, (b, 16, 16), device=device)
        fl = flops_of(lambda: vq.decode(toks))
        sec = _median_time(lambda: vq.decode(toks), args.repeats)
        rows.append(_row("VQGAN decoder 256 px", b, sec, fl, peak))
        print(rows[-1])
    # the AR baseline of the same size: 256 sequential steps
    ar = ARTransformer(cfg).to(device).eval()
    sc = SampleConfig()
    for cache in (True, False):
        if not cache and args.no_ar_nocache:
            continue
        lab = torch.randint(0, cfg.num_classes, (1,), device=device)
        fl = flops_of(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache))
        sec = _median_time(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache),
                           1 if not cache else args.repeats)
        rows.append(_row(f"AR, {cfg.num_tokens} steps, {'KV cache' if cache else 'no cache'}", 1, sec, fl, peak))
        print(rows[-1])
    cols = ["what", "batch", "s/image", "images/s", "GFLOP/s", "% of peak"]
    table = markdown_table(rows, cols)
    print(table)
    append_results(args.results, f"Sampling speed, {args.config} (random weights, fp32)", command, table,
                   notes=f"Matmul peak measured in the same run: {peak:.1f} GFLOP/s (2048^3 fp32).")
    return 0


def _row(what: str, batch: int, sec: float, flops: int, peak: float) -> dict:
    gf = flops / sec / 1e9
    return {"what": what, "batch": batch, "s/image": sec / batch, "images/s": batch / sec, "GFLOP/s": gf,
            "% of peak": 100 * gf / peak}
