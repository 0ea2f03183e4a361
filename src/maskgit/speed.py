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


def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 10, warmup: int = 3) -> float:
    """Best fp32 GFLOP/s of an n x n x n matrix product over ``repeats`` runs (after ``warmup`` runs): a peak, so
    the fastest run counts, as for the workloads it is compared with."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    for _ in range(warmup):
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


class PeakProbe:
    """Matmul-peak readings taken in the pauses of a timed workload; the time they take is not counted.

    This VM's matmul rate drifts by +-15% within seconds, so a workload is compared with the machine's speed at
    its own moments: ``probe()`` before and after each run, and between the decode steps of a sampling run."""

    def __init__(self, device: str):
        self.device, self.peaks, self.spent = device, [], 0.0

    def probe(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        self.peaks.append(matmul_peak(self.device, repeats=3, warmup=1))
        self.spent += time.perf_counter() - t


def timed(fn, repeats: int, device: str, flops: float) -> dict:
    """Run ``fn(probe)`` once to warm up, then ``repeats`` times; ``fn`` may call ``probe()`` in its pauses.

    Returns the median seconds (probes excluded), the median over repeats of each repeat's mean peak, and the
    median over repeats of the achieved fraction of that repeat's own peak."""
    fn(lambda: None)
    times, peaks, fractions = [], [], []
    for _ in range(repeats):
        pp = PeakProbe(device)
        pp.probe()
        before = pp.spent
        t = time.perf_counter()
        fn(pp.probe)
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t - (pp.spent - before)
        pp.probe()
        peak = statistics.fmean(pp.peaks)
        times.append(elapsed)
        peaks.append(peak)
        fractions.append(flops / elapsed / 1e9 / peak)
    return {"sec": statistics.median(times), "peak": statistics.median(peaks),
            "fraction": statistics.median(fractions), "probes": len(pp.peaks)}


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
            # one forward pass alone: the gap to the 8-step row is the decoding loop's own cost
            rows.append(_row(f"MaskGIT transformer, 1 forward{tag}", b, fwd_flops,
                             timed(lambda probe, m=m: m(start, labels), args.repeats, device, fwd_flops)))
            print(rows[-1])
            for steps in (8, 12) if not tag else (8,):
                sc = SampleConfig(steps=steps)

                def run(probe, m=m, labels=labels, start=start, sc=sc):
                    def logits(t, g):
                        probe()  # the machine's speed between steps (not timed)
                        return m(t, labels)
                    decode(logits, start, sc, cfg.mask_id, torch.Generator().manual_seed(0))
                rows.append(_row(f"MaskGIT transformer, {steps} steps{tag}", b, steps * fwd_flops,
                                 timed(run, args.repeats, device, steps * fwd_flops)))
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
            rows.append(_row(f"VQGAN decoder 256 px{tag}", b, fl,
                             timed(lambda probe, fn=fn: fn(toks), args.repeats, device, fl)))
            print(rows[-1])
    # the AR baseline of the same size: 256 sequential steps
    ar = ARTransformer(cfg).to(device).eval()
    sc = SampleConfig()
    for cache in (True, False):
        if not cache and args.no_ar_nocache:
            continue
        lab = torch.randint(0, cfg.num_classes, (1,), device=device)
        fl = flops_of(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache))
        t = timed(lambda probe: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache),
                  1 if not cache else args.repeats, device, fl)
        rows.append(_row(f"AR, {cfg.num_tokens} steps, {'KV cache' if cache else 'no cache'}", 1, fl, t))
        print(rows[-1])
    cols = ["what", "batch", "s/image", "images/s", "GFLOP/s", "peak GFLOP/s", "% of peak"]
    table = markdown_table(rows, cols)
    print(table)
    append_results(args.results, f"Sampling speed, {args.config} (random weights, fp32)", command, table,
                   notes="s/image: median of the repeats, with the peak probes taken out. peak: the fp32 2048^3 matmul "
                         "rate (best of 3) probed before and after each repeat and, for the MaskGIT transformer, "
                         "between its decode steps; a repeat's peak is the mean of its probes (median over "
                         "repeats shown). % of peak: median over repeats of each repeat's achieved GFLOP/s over its "
                         "own peak. FLOPs: torch's counter with attention included.")
    return 0


def _row(what: str, batch: int, flops: float, t: dict) -> dict:
    return {"what": what, "batch": batch, "s/image": t["sec"] / batch, "images/s": batch / t["sec"],
            "GFLOP/s": flops / t["sec"] / 1e9, "peak GFLOP/s": t["peak"], "% of peak": 100 * t["fraction"]}
