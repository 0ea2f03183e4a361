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

def compile_frozen(fn):
    """``torch.compile(fn)`` with inductor's weight freezing: parameters become constants, so the linear layers run
    on pre-packed MKL weights and the pointwise ops around them fuse (see `maskgit bench speed --compile`). Inference
    only: the compiled code ignores later changes to the weights. (Freezing is read when a call compiles, and
    ``torch.compile(options={"freezing": True})`` does not reach it, hence the config patch around every call.)"""
    import functools

    import torch._inductor.config as inductor_config
    compiled = torch.compile(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)
    return run


def int8_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every nn.Linear dynamically quantised to int8 (CPU; VNNI makes it fast)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


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
    """FLOPs of ``fn()`` as torch's counter sees them, with attention run through the math backend: the fused CPU
    attention kernel is invisible to the counter, which would leave QK^T and AV (5% of a 257-token forward) out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up), and the median of the matmul peaks
    measured right before and after each run (the larger of the two): this machine's speed drifts by +-15% over
    minutes, so each timing is compared with the peak of its own moment, not with one taken at the start."""
    fn()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        before = matmul_peak(device, repeats=3)
        t = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        peaks.append(max(before, matmul_peak(device, repeats=3)))
    return statistics.median(times), statistics.median(peaks)


@torch.inference_mode()
def run_speed(args, command: str) -> int:
    from .commands.common import parse_ints, resolve_device
    from .evaluation import append_results, markdown_table
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = transformer_preset(args.config)
    batches = parse_ints(args.batches, "--batches")
    print(f"matmul peak at start: {matmul_peak(device):.1f} GFLOP/s")
    model = MaskGITTransformer(cfg).to(device).eval()
    variants = [("", model)]
    if args.compile:
        variants.append((" (compiled)", compile_frozen(model)))
    if args.int8 and device == "cpu":
        variants.append((" (int8)", int8_dynamic(model)))
    rows = []
    for b in batches:
        labels = torch.randint(0, cfg.num_classes, (b,), device=device)
        start = torch.full((b, cfg.num_tokens), cfg.mask_id, device=device)
        fwd_flops = flops_of(lambda: model(start, labels))
        for tag, m in variants:
            for steps in (8, 12) if not tag else (8,):
                sc = SampleConfig(steps=steps)

                def run():
                    decode(lambda t, g: m(t, labels), start, sc, cfg.mask_id, torch.Generator().manual_seed(0))
                sec, peak = _timed(run, args.repeats, device)
                rows.append(_row(f"MaskGIT transformer, {steps} steps{tag}", b, sec, steps * fwd_flops, peak))
                print(rows[-1])
    # the VQGAN decoder with the official layout at 256 px
    vq = VQGAN(vqgan_preset("imagenet-f16")).to(device).eval()
    dec_variants = [("", vq.decode)]
    if args.compile:
        dec_variants.append((" (compiled)", compile_frozen(vq.decode)))
    for b in batches:
        toks = torch.randint(0, 1024, (b, 16, 16), device=device)
        fl = flops_of(lambda: vq.decode(toks))
        for tag, fn in dec_variants:
            sec, peak = _timed(lambda: fn(toks), args.repeats, device)
            rows.append(_row(f"VQGAN decoder 256 px{tag}", b, sec, fl, peak))
            print(rows[-1])
    # the AR baseline of the same size: 256 sequential steps
    ar = ARTransformer(cfg).to(device).eval()
    sc = SampleConfig()
    for cache in (True, False):
        if not cache and args.no_ar_nocache:
            continue
        lab = torch.randint(0, cfg.num_classes, (1,), device=device)
        fl = flops_of(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache))
        sec, peak = _timed(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache),
                           1 if not cache else args.repeats, device)
        rows.append(_row(f"AR, {cfg.num_tokens} steps, {'KV cache' if cache else 'no cache'}", 1, sec, fl, peak))
        print(rows[-1])
    cols = ["what", "batch", "s/image", "images/s", "GFLOP/s", "peak GFLOP/s", "% of peak"]
    table = markdown_table(rows, cols)
    print(table)
    append_results(args.results, f"Sampling speed, {args.config} (random weights, fp32)", command, table,
                   notes="s/image: median of the repeats. peak: the fp32 2048^3 matmul rate measured right before "
                         "and after each repeat (the larger; median over repeats); % of peak uses the peak of the "
                         "repeat's own moment. FLOPs: torch's counter with attention included.")
    return 0


def _row(what: str, batch: int, sec: float, flops: int, peak: float) -> dict:
    gf = flops / sec / 1e9
    return {"what": what, "batch": batch, "s/image": sec / batch, "images/s": batch / sec, "GFLOP/s": gf,
            "peak GFLOP/s": peak, "% of peak": 100 * gf / peak}
