"""`maskgit bench speed`: sampling speed at a given transformer configuration with random weights, as seconds
per image and achieved GFLOP/s against a matmul peak measured in the same run; the VQGAN decoder separately."""

from __future__ import annotations

import functools
import logging
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskgit.config import SampleConfig, transformer_preset, vqgan_preset
from maskgit.inference.compile import compile_frozen
from maskgit.inference.cpu import cpu_capabilities, fp32_linear_backend, native_bf16
from maskgit.inference.precision import prepare
from maskgit.models.autoregressive import ARTransformer
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.sampling.decoding import decode

log = logging.getLogger(__name__)


def _under_bf16(model, device: str):
    """``model``'s forward under bf16 autocast (what ``Pipeline(precision="bf16")`` runs), fp32 logits out."""
    def run(tokens, labels):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return model(tokens, labels).float()
    return run


def machine_line(device: str, cfg, batch: int) -> str:
    """The CPU (or GPU) model, its bf16-relevant instruction sets, torch's version and threads, and the fp32 and
    bf16 matmul peaks: square 2048^3 and at the transformer's largest GEMM (its MLP, batch x tokens rows)."""
    shape = (batch * cfg.num_tokens, cfg.width, cfg.mlp_dim)
    peaks = {name: (matmul_peak(device, dtype=dt), matmul_peak(device, dtype=dt, shape=shape))
             for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if device == "cpu":
        c = cpu_capabilities()
        what = (f"{c['model']}, {torch.get_num_threads()} threads, AVX-512 {'yes' if c['avx512'] else 'no'}, "
                f"avx512_bf16 {'yes' if c['avx512_bf16'] else 'no'}, AMX {'yes' if c['amx_bf16'] else 'no'}, "
                f"fp32 linears on {'oneDNN' if fp32_linear_backend() == 'onednn' else 'MKL'}")
    else:
        what = torch.cuda.get_device_name(device)
    return (f"{what}; torch {torch.__version__}; matmul peak GFLOP/s, 2048^3 / {shape[0]}x{shape[1]}x{shape[2]}: "
            + ", ".join(f"{k} {a:.0f} / {b:.0f}" for k, (a, b) in peaks.items()))

def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 10, warmup: int = 3,
                dtype: torch.dtype = torch.float32, shape: tuple[int, int, int] | None = None) -> float:
    """Best GFLOP/s of an n x n x n matrix product (or an (m,k) x (k,n) one for ``shape=(m, k, n)``) in ``dtype``
    over ``repeats`` runs (after ``warmup`` runs): a peak, so the fastest run counts, as for the workloads it is
    compared with."""
    m, k, n = shape or (n, n, n)
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)

    def product():
        torch.mm(a, b, out=out)
    if device == "cpu" and dtype == torch.float32 and fp32_linear_backend() == "onednn":
        # the library the fp32 linears run on here (a linear layer's product: x @ W^T with W pre-packed)
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)

        def product():
            torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    for _ in range(warmup):
        product()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        product()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / min(times) / 1e9


def flops_of(fn) -> int:
    """FLOPs of ``fn()`` as torch's counter sees them, with attention run through the math backend: the fused CPU
    attention kernel is invisible to the counter, which would leave QK^T and AV (5% of a 257-token forward) out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _official_flops(fn, decoder) -> int:
    """FLOPs of ``fn()`` with the decoder's upsampling convs in their plain (official-layout) form."""
    saved, decoder.subpixel = decoder.subpixel, False
    try:
        return flops_of(fn)
    finally:
        decoder.subpixel = saved


def between_probes(fn, flops: float, calls: int = 1) -> tuple[float, float]:
    """One reading of an interleaved A/B (benchmarks/*_ab.py) on the CPU: seconds per call of ``fn()`` over
    ``calls`` calls, and its % of the fp32 matmul peak probed just before and just after them (their mean), for
    ``flops`` per call."""
    p0 = matmul_peak(repeats=3, warmup=1)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = (time.perf_counter() - t) / calls
    p1 = matmul_peak(repeats=3, warmup=1)
    return dt, 100 * flops / dt / 1e9 / ((p0 + p1) / 2)


def ab_table(columns: list[str], readings: dict, time_scale: float = 1.0, time_digits: int = 3) -> str:
    """Markdown table of an A/B's ``between_probes`` readings: per variant (its key: a cell or a tuple of cells for
    the leading ``columns``), the median time (times ``time_scale``), the median % of peak and every round's %.
    ``columns`` names all columns, the last three being those."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, v in readings.items():
        cells = list(key) if isinstance(key, tuple) else [key]
        cells += [f"{time_scale * statistics.median(x[0] for x in v):.{time_digits}f}",
                  f"{statistics.median(x[1] for x in v):.1f}", ", ".join(f"{x[1]:.0f}" for x in v)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class PeakProbe:
    """Matmul-peak readings taken in the pauses of a timed workload; the time they take is not counted.

    This VM's matmul rate drifts by +-15% within seconds, so a workload is compared with the machine's speed at
    its own moments: ``probe()`` before and after each run, and between the decode steps of a sampling run."""

    def __init__(self, device: str, dtype: torch.dtype = torch.float32):
        self.device, self.dtype, self.peaks, self.spent = device, dtype, [], 0.0

    def probe(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        self.peaks.append(matmul_peak(self.device, repeats=3, warmup=1, dtype=self.dtype))
        self.spent += time.perf_counter() - t


def timed(fn, repeats: int, device: str, flops: float, dtype: torch.dtype = torch.float32) -> dict:
    """Run ``fn(probe)`` once to warm up, then ``repeats`` times; ``fn`` may call ``probe()`` in its pauses.

    Returns the median seconds (probes excluded), the median over repeats of each repeat's mean peak, and the
    median over repeats of the achieved fraction of that repeat's own peak."""
    fn(lambda: None)
    times, peaks, fractions = [], [], []
    for _ in range(repeats):
        pp = PeakProbe(device, dtype)
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


@dataclass(frozen=True)
class SpeedSpec:
    """What one speed run measures (``bench speed``'s arguments, as a value)."""

    config: str = "maskgit-imagenet256"  # the transformer preset, with random weights
    batches: tuple[int, ...] = (1, 8)
    precisions: tuple[str, ...] = ("auto",)  # fp32, bf16; auto: fp32, plus bf16 where the hardware has it
    repeats: int = 3  # timing repeats (median)
    compile: bool = False  # also torch.compile'd transformer and decoder
    int8: bool = False  # also the transformer with int8 dynamic quantisation (CPU)
    no_ar_nocache: bool = False  # skip the slow AR run without KV cache


@dataclass(frozen=True)
class SpeedResult:
    """One speed run: its rows, their Markdown table, and the title and notes of its RESULTS section."""

    rows: list[dict]
    table: str
    title: str
    notes: str


@torch.inference_mode()
def run_speed(spec: SpeedSpec, device: str) -> SpeedResult:
    """Time the transformer (one forward, whole decodes), the VQGAN decoder and the AR baseline per batch size."""
    from maskgit.evaluation.samples import markdown_table
    torch.manual_seed(0)
    cfg = transformer_preset(spec.config)
    precisions = list(spec.precisions)
    if "auto" in precisions:
        precisions = ["fp32"] + (["bf16"] if native_bf16(device) else [])
    machine = machine_line(device, cfg, max(spec.batches))
    log.info(machine)
    model = MaskGITTransformer(cfg).to(device).eval()
    variants = _speed_variants(model, precisions, device, spec.compile, spec.int8)
    rows = _transformer_rows(model, variants, list(spec.batches), device, spec.repeats)
    dec_rows, dec_flops = _decoder_rows(list(spec.batches), device, spec.repeats, spec.compile)
    rows += dec_rows + _ar_rows(cfg, device, spec.repeats, spec.no_ar_nocache)
    cols = ["what", "batch", "s/image", "images/s", "GFLOP/s", "peak GFLOP/s", "% of peak"]
    return SpeedResult(rows, markdown_table(rows, cols),
                       f"Sampling speed, {spec.config} (random weights, {', '.join(precisions)})",
                       _speed_notes(machine, dec_flops))


def _speed_variants(model, precisions: list[str], device: str, use_compile: bool, int8: bool) -> list[tuple]:
    """(tag, forward(tokens, labels), the dtype whose peak it is compared with) per precision / compile mode."""
    variants = []
    for prec in precisions:
        if prec == "fp32":  # on the GEMM library the pipeline uses here (inference.cpu.fp32_linear_backend)
            fm = prepare(model, "fp32", device)
            variants.append(("", fm, torch.float32))
            if use_compile:
                variants.append((" (compiled)", compile_frozen(fm), torch.float32))
        elif prec == "bf16":
            bm = prepare(model, "bf16", device)
            variants.append((" (bf16)", _under_bf16(bm, device), torch.bfloat16))
            if use_compile:
                variants.append((" (bf16, compiled)", _under_bf16(compile_frozen(bm), device), torch.bfloat16))
    if int8 and device == "cpu":
        variants.append((" (int8)", prepare(model, "int8", device), torch.float32))
    return variants


def _transformer_rows(model, variants: list[tuple], batches: list[int], device: str, repeats: int) -> list[dict]:
    """One forward pass and whole decodes (8 and 12 steps; 8 for the other variants) per batch size."""
    cfg = model.config
    rows = []
    for b in batches:
        labels = torch.randint(0, cfg.num_classes, (b,), device=device)
        start = torch.full((b, cfg.num_tokens), cfg.mask_id, device=device)
        fwd_flops = flops_of(lambda: model(start, labels))
        for tag, m, dtype in variants:
            # one forward pass alone: the gap to the 8-step row is the decoding loop's own cost
            rows.append(_row(f"MaskGIT transformer, 1 forward{tag}", b, fwd_flops,
                             timed(lambda probe, m=m: m(start, labels), repeats, device, fwd_flops, dtype)))
            log.info(rows[-1])
            for steps in (8, 12) if not tag else (8,):
                sc = SampleConfig(steps=steps)

                def run(probe, m=m, labels=labels, start=start, sc=sc):
                    def logits(t, g):
                        probe()  # the machine's speed between steps (not timed)
                        return m(t, labels)
                    decode(logits, start, sc, cfg.mask_id, torch.Generator().manual_seed(0))
                rows.append(_row(f"MaskGIT transformer, {steps} steps{tag}", b, steps * fwd_flops,
                                 timed(run, repeats, device, steps * fwd_flops, dtype)))
                log.info(rows[-1])
    return rows


def _decoder_rows(batches: list[int], device: str, repeats: int, use_compile: bool) -> tuple[list[dict], dict]:
    """The VQGAN decoder with the official layout at 256 px: (rows, FLOPs per image executed / official)."""
    with torch.inference_mode(False):  # ordinary weights, as a loaded pipeline has (their derived kernels cache)
        vq = VQGAN(vqgan_preset("imagenet-f16")).to(device).prepare_for_inference(channels_last=device == "cpu")
    dec_variants = [("", vq.decode)]
    if use_compile:
        dec_variants.append((" (compiled)", compile_frozen(vq.decode)))
    rows, dec_flops = [], {}
    for b in batches:
        toks = torch.randint(0, 1024, (b, 16, 16), device=device)
        # two counts: the FLOPs the decoder executes (its rate) and the official layout's (the unit of work)
        fl = flops_of(lambda: vq.decode(toks))
        official = _official_flops(lambda: vq.decode(toks), vq.decoder)
        dec_flops = {"executed": fl / b, "official": official / b}
        n = vq.decode_chunk(toks.shape, device)

        def run(probe, toks=toks, n=n, fn=None):
            # decode's own chunks (one image per decoder call at 256 px on CPU), probing the peak between them
            for i in range(0, len(toks), n):
                if i:
                    probe()
                fn(toks[i:i + n])
        for tag, fn in dec_variants:
            t = timed(functools.partial(run, fn=fn), repeats, device, fl)
            rows.append(_row(f"VQGAN decoder 256 px{tag}", b, fl, t))
            log.info(rows[-1])
            # the same timing over the official layout's FLOP count (the unit the published layout's cost is stated in)
            rows.append(_row(f"VQGAN decoder 256 px{tag}, at official-layout FLOPs", b, official,
                             {**t, "fraction": t["fraction"] * official / fl}))
            log.info(rows[-1])
    return rows, dec_flops


def _ar_rows(cfg, device: str, repeats: int, no_nocache: bool) -> list[dict]:
    """The AR baseline of the same size: one image in num_tokens sequential steps, with and without KV cache."""
    ar = ARTransformer(cfg).to(device).eval()
    sc = SampleConfig()
    rows = []
    for cache in (True, False):
        if not cache and no_nocache:
            continue
        lab = torch.randint(0, cfg.num_classes, (1,), device=device)
        fl = flops_of(lambda: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache))
        t = timed(lambda probe: ar.generate(lab, sc, torch.Generator().manual_seed(0), use_cache=cache),
                  1 if not cache else repeats, device, fl)
        rows.append(_row(f"AR, {cfg.num_tokens} steps, {'KV cache' if cache else 'no cache'}", 1, fl, t))
        log.info(rows[-1])
    return rows


def _speed_notes(machine: str, dec_flops: dict) -> str:
    return (f"Machine: {machine}. "
            "s/image: median of the repeats, with the peak probes taken out. peak: the 2048^3 matmul "
            "rate (best of 3) in the row's precision (fp32; bf16 for bf16 rows), on the library the "
            "fp32 linears use (see the machine line), probed before and "
            "after each repeat and, for the MaskGIT transformer, "
            "between its decode steps; a repeat's peak is the mean of its probes (median over "
            "repeats shown). % of peak: median over repeats of each repeat's achieved GFLOP/s over its "
            "own peak. FLOPs: torch's counter with attention included. The VQGAN decoder computes "
            "each nearest-upsample + 3x3 conv in its exact sub-pixel form (vqgan.upsample_conv): "
            f"{dec_flops.get('executed', 0) / 1e9:.1f} GFLOP per 256 px image executed, which its "
            "GFLOP/s and % of peak count, instead of the official layout's "
            f"{dec_flops.get('official', 0) / 1e9:.1f} GFLOP, which its 'at official-layout FLOPs' "
            "rows count (same timings). The decoder is timed in decode's own chunks, with the peak "
            "probed between them too.")


def _row(what: str, batch: int, flops: float, t: dict) -> dict:
    return {"what": what, "batch": batch, "s/image": t["sec"] / batch, "images/s": batch / t["sec"],
            "GFLOP/s": flops / t["sec"] / 1e9, "peak GFLOP/s": t["peak"], "% of peak": 100 * t["fraction"]}
