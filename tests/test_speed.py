"""Speed options: the exact ones leave results unchanged; the opt-in ones are opt-in."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.evaluation.speed import flops_of, matmul_peak
from maskgit.models.transformer import count_flops
from maskgit.pipeline import Pipeline
from maskgit.sampling.decoding import decode


def test_batched_cfg_equals_separate_passes(tiny_pipeline_dir):
    pipe = Pipeline.load(tiny_pipeline_dir)
    m = pipe.transformer
    labels = torch.tensor([0, 2, 3])
    null = torch.full_like(labels, -1)

    def separate(tokens, guided):
        return m(tokens, labels), m(tokens, null)

    start = torch.full((3, 64), pipe.mask_id)
    cfg = SampleConfig(steps=6, cfg=2.0)
    a = decode(pipe.logits_fn(labels), start, cfg, pipe.mask_id, torch.Generator().manual_seed(0))
    b = decode(separate, start, cfg, pipe.mask_id, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_channels_last_decoder_matches_contiguous(tiny_pipeline_dir):
    pipe = Pipeline.load(tiny_pipeline_dir)
    tok = pipe.tokenizer
    tokens = torch.randint(0, 32, (4, 8, 8), generator=torch.Generator().manual_seed(0))
    fast = tok.decode(tokens)  # channels_last path (CPU, eval)
    with torch.no_grad():
        plain = tok.decoder(tok.quantizer.embed(tokens).contiguous()).clamp(0, 1)
    assert torch.allclose(fast, plain, atol=1e-5)


def test_generation_is_the_same_whatever_the_batch_layout_of_labels(tiny_pipeline_dir):
    """With one seed per row, a row's image does not depend on the other rows of its batch."""
    pipe = Pipeline.load(tiny_pipeline_dir)
    batched = pipe.generate([1, 2, 0], seed=[4, 5, 6], output="tensor", steps=4)
    alone = torch.cat([pipe.generate([lab], seed=s, output="tensor", steps=4) for lab, s in ((1, 4), (2, 5), (0, 6))])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1 / 255)


def test_int8_is_opt_in_and_runs(tiny_pipeline_dir):
    exact = Pipeline.load(tiny_pipeline_dir)
    q = Pipeline.load(tiny_pipeline_dir, precision="int8")
    assert exact.precision == "fp32" and q.precision == "int8"
    assert "quantized" in type(q.transformer.blocks[0].fc1).__module__
    out = q.generate([0, 1], output="np", steps=3)
    assert out.shape == (2, 16, 16, 1)


def test_flop_counting_and_peak():
    from maskgit.config import transformer_preset
    from maskgit.models.transformer import MaskGITTransformer
    cfg = transformer_preset("tiny")
    m = MaskGITTransformer(cfg).eval()
    with torch.inference_mode():
        counted = flops_of(lambda: m(torch.zeros(2, 16, dtype=torch.long), torch.tensor([0, 1])))
    # the counter sees attention too (QK^T and AV), so it agrees exactly with the analytic count
    assert counted == 2 * count_flops(cfg)


def test_matmul_peak_is_the_fastest_repeat(monkeypatch):
    import maskgit.evaluation.speed as speed
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])  # three repeats of 0.5 s, 0.25 s and 1 s
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(ticks))
    assert matmul_peak(n=64, repeats=3, warmup=1) == pytest.approx(2 * 64 ** 3 / 0.25 / 1e9)


def test_compiled_gelu_is_the_same_tanh_gelu():
    """Under torch.compile the MLP's GELU is written with a sigmoid (the same function, vectorised faster); eager
    is ATen's tanh GELU itself. Compiled through the project's compile (the vector width named: left to torch 2.13
    a 20,001-element sigmoid was vectorised at 8 floats and stored at 16, past its buffer)."""
    import torch.nn.functional as F

    from maskgit.inference.compile import compile_frozen
    from maskgit.models.transformer import gelu_tanh
    x = torch.linspace(-10, 10, 20001)
    exact = F.gelu(x, approximate="tanh")
    assert torch.equal(gelu_tanh(x), exact)
    torch.testing.assert_close(compile_frozen(gelu_tanh)(x), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compile_frozen(torch.sigmoid)(x), torch.sigmoid(x), rtol=1e-6, atol=1e-6)


def test_timed_compares_each_repeat_with_the_probes_taken_during_it(monkeypatch):
    """Probe time is not counted, and each repeat's peak is the mean of the probes before, during and after it."""
    import time

    import maskgit.evaluation.speed as speed
    readings = iter([100.0, 300.0, 200.0, 400.0] + [1000.0] * 8)

    def fake_peak(*args, **kwargs):
        time.sleep(0.25)
        return next(readings)
    monkeypatch.setattr(speed, "matmul_peak", fake_peak)

    def work(probe):  # two probes in the pauses of a 20 ms workload
        time.sleep(0.01)
        probe()
        probe()
        time.sleep(0.01)
    t = speed.timed(work, repeats=1, device="cpu", flops=1e9)
    assert t["probes"] == 4 and t["peak"] == 250.0  # before, two between, after
    assert 0.02 <= t["sec"] < 0.5  # the 1 s of probing (4 x 0.25 s) is taken out
    assert t["fraction"] == pytest.approx(1e9 / t["sec"] / 1e9 / 250.0)


def test_between_probes_times_each_call_against_the_probes_around_it(monkeypatch):
    from maskgit.evaluation import speed
    peaks = iter([100.0, 300.0])
    monkeypatch.setattr(speed, "matmul_peak", lambda **kw: next(peaks))
    calls = []
    sec, pct = speed.between_probes(lambda: (calls.append(1), time.sleep(0.01)), flops=2e9, calls=3)
    assert len(calls) == 3 and 0.01 <= sec < 0.5
    assert pct == pytest.approx(100 * 2e9 / sec / 1e9 / 200.0)


def test_ab_table_gives_medians_and_every_round():
    from maskgit.evaluation.speed import ab_table
    readings = {("yes", "no"): [(0.5, 80.0), (0.7, 90.4), (0.6, 70.0)], ("no", "no"): [(0.01, 50.0)]}
    assert ab_table(["a", "b", "s", "%", "rounds"], readings, time_scale=1e3, time_digits=1).split("\n") == [
        "| a | b | s | % | rounds |", "|---|---|---|---|---|",
        "| yes | no | 600.0 | 80.0 | 80, 90, 70 |", "| no | no | 10.0 | 50.0 | 50 |"]


def test_inplace_inference_decoder_equals_autograd_path():
    """Without autograd the decoder reuses buffers in place (SiLU, residual adds); the values must not change.
    (The sub-pixel upsampling, which changes float rounding, is tested on its own.)"""
    from maskgit.config import VQGANConfig
    from maskgit.models.vqgan import VQGAN
    for official in (True, False):
        vq = VQGAN(VQGANConfig(channels=3, filters=16, channel_mult=(1, 2), num_res_blocks=2, embedding_dim=8,
                               codebook_size=32, num_groups=4, image_size=16, official_shortcut=official)).eval()
        vq.decoder.subpixel = False
        z = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fast = vq.decoder(z)
        slow = vq.decoder(z)  # grad enabled: the out-of-place path
        assert slow.requires_grad and torch.equal(fast, slow.detach())


def test_decoder_chunks_give_the_same_images(tiny_pipeline_dir, monkeypatch):
    """The CPU decoder runs large batches in cache-sized chunks; an image's pixels do not depend on it beyond float
    rounding (oneDNN blocks a convolution differently for every batch size anyway), and tokens not at all."""
    import maskgit.models.vqgan as vqgan
    tok = Pipeline.load(tiny_pipeline_dir).tokenizer
    tokens = torch.randint(0, 32, (5, 8, 8), generator=torch.Generator().manual_seed(1))
    whole = tok.decode(tokens)
    monkeypatch.setattr(vqgan, "DECODE_CHUNK_BYTES", 1)  # one image per chunk
    one = tok.decode(tokens)
    monkeypatch.setattr(vqgan, "DECODE_CHUNK_BYTES", 2 * 4 * 16 * 16 * 16)  # chunks of 2, 2 and 1
    two = tok.decode(tokens)
    for x in (one, two):
        assert x.shape == whole.shape and torch.allclose(x, whole, atol=1e-5)
    assert torch.equal(one[3:4], tok.decode(tokens[3:4]))  # a chunk of one is that image decoded alone


@pytest.mark.slow
def test_compiled_pipeline_matches_eager(tiny_pipeline_dir):
    """--compile (inductor, frozen weights) is opt-in and changes results by float rounding only."""
    import shutil
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    eager = Pipeline.load(tiny_pipeline_dir)
    compiled = Pipeline.load(tiny_pipeline_dir).compile()
    tokens = torch.full((3, 64), eager.mask_id)  # 3 rows: chunks of 2 and 1
    tokens[:, ::3] = 7
    tokens[1, ::5] = 9
    labels = torch.tensor([0, 3, 1])
    with torch.inference_mode():
        a = eager.transformer(tokens, labels)
        b = compiled.transformer(tokens, labels)
    assert torch.allclose(a, b, atol=1e-4)
    assert compiled.generate([1], seed=0, steps=3, output="np").shape == (1, 16, 16, 1)


@pytest.mark.parametrize("dynamic, symbolic", [(False, False), (None, True)])
def test_compile_frozen_keeps_shapes_static_per_batch_size(dynamic, symbolic):
    """A second batch size gets its own static graph (a symbolic batch dimension ran the ImageNet-size forward
    markedly slower, benchmarks/compile_ab.py); torch's default would make the second graph symbolic."""
    from maskgit.config import transformer_preset
    from maskgit.inference.compile import compile_frozen
    from maskgit.models.transformer import MaskGITTransformer
    torch._dynamo.reset()
    graphs = []

    def record(gm, example_inputs):
        graphs.append([s for x in example_inputs for s in (x.shape if isinstance(x, torch.Tensor) else [x])])
        return gm.forward

    cfg = transformer_preset("tiny")
    m = MaskGITTransformer(cfg).eval()
    fn = compile_frozen(m, backend=record, dynamic=dynamic)
    with torch.inference_mode():
        for b in (1, 3):
            tokens = torch.full((b, cfg.num_tokens), cfg.mask_id)
            torch.testing.assert_close(fn(tokens, None), m(tokens, None))
    torch._dynamo.reset()
    assert len(graphs) >= 2
    assert any(isinstance(s, torch.SymInt) for g in graphs for s in g) == symbolic


@pytest.mark.parametrize("B, sizes", [(8, [8]), (13, [8, 4, 1]), (128, [64, 64]), (150, [64, 64, 16, 4, 2])])
def test_pow2_chunks_split_the_batch_and_slice_every_batch_argument(B, sizes):
    from maskgit.inference.compile import pow2_chunks
    seen = []

    def fn(x, labels=None, other=None, text=None):
        seen.append(len(x))
        assert labels is None or len(labels) == len(x)
        assert other.shape == (3,)  # not batch-first: passed whole
        return x * 2 + (0 if labels is None else labels[:, None])

    x = torch.arange(B * 2.0).view(B, 2)
    labels = torch.arange(B)
    out = pow2_chunks(fn)(x, labels, other=torch.ones(3), text=None)
    assert seen == sizes
    assert torch.equal(out, x * 2 + labels[:, None])
    seen.clear()  # all by keyword, as a caller may pass them
    out = pow2_chunks(fn)(x=x, labels=labels, other=torch.ones(3))
    assert seen == sizes
    assert torch.equal(out, x * 2 + labels[:, None])


def test_sample_command_takes_precision_and_compile_flags(tiny_pipeline_dir, tmp_path):
    from maskgit.cli import main
    rc = main(["sample", "--model", str(tiny_pipeline_dir), "--labels", "0,1", "--steps", "2", "--precision", "int8",
               "--out", str(tmp_path / "q.npz")])
    assert rc == 0 and np.load(tmp_path / "q.npz")["arr_0"].shape == (2, 16, 16, 3)
    assert main(["sample", "--model", str(tiny_pipeline_dir), "--precision", "fp16", "--device", "cpu",
                 "--out", str(tmp_path / "x.png")]) == 2  # fp16 autocast is for GPUs: a clear error
    assert not (tmp_path / "x.png").exists()


# the three CPU kinds: AVX-512 with bf16 (AMX or avx512_bf16), AVX-512 without bf16, AVX2 only
CPU_KINDS = {"avx512_bf16": {"avx512": True, "avx512_bf16": True, "onednn_bf16": True},
             "amx": {"avx512": True, "amx_bf16": True, "onednn_bf16": True},
             "avx512": {"avx512": True, "onednn_bf16": True},
             "avx2": {"avx512": False, "onednn_bf16": False}}


def mock_cpu(monkeypatch, kind):
    """Pretend to be a CPU of ``kind``; the oneDNN packing is stubbed, so the real reorder never runs."""
    from maskgit.inference import cpu, kernels, precision
    caps = {"model": "test CPU", "vendor": "GenuineIntel", "avx512": False, "avx512_bf16": False, "amx_bf16": False,
            "torch_isa": "AVX2", "onednn_bf16": False, **CPU_KINDS[kind]}
    monkeypatch.setattr(cpu, "cpu_capabilities", lambda: caps)
    packed = []

    def fake_pack(linear):
        packed.append(linear)
        return torch.nn.Linear(linear.in_features, linear.out_features, dtype=torch.bfloat16)
    monkeypatch.setattr(kernels, "packed_bf16_linear", fake_pack)
    monkeypatch.setattr(precision, "_said", set())
    return packed


@pytest.mark.parametrize("kind,expected", [("avx512_bf16", "bf16"), ("amx", "bf16"), ("avx512", "fp32"),
                                           ("avx2", "fp32")])
def test_auto_precision_follows_the_cpus_bf16_hardware(monkeypatch, tiny_pipeline_dir, kind, expected):
    packed = mock_cpu(monkeypatch, kind)
    pipe = Pipeline.load(tiny_pipeline_dir, precision="auto")
    assert pipe.precision == expected
    linear = pipe.transformer.blocks[0].fc1
    assert linear.weight.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    assert bool(packed) == (expected == "bf16")
    assert Pipeline.load(tiny_pipeline_dir).precision == "fp32"  # the Python API's default stays the exact one


@pytest.mark.parametrize("kind,path", [("avx512_bf16", "packed"), ("avx512", "packed"), ("avx2", "plain")])
def test_explicit_bf16_runs_on_every_cpu_kind_and_says_when_it_is_slow(monkeypatch, tiny_pipeline_dir, capsys,
                                                                     kind, path):
    """An explicit bf16: packed oneDNN linears where oneDNN can pack them, plain bf16 linears elsewhere (never the
    reorder's RuntimeError); a one-line note where the CPU has no native bf16; the fp16 error does not send such a
    CPU to bf16."""
    packed = mock_cpu(monkeypatch, kind)
    pipe = Pipeline.load(tiny_pipeline_dir, precision="bf16")
    assert pipe.precision == "bf16" and bool(packed) == (path == "packed")
    assert pipe.transformer.blocks[0].fc1.weight.dtype == torch.bfloat16
    err = capsys.readouterr().err
    assert ("slower than fp32" in err) == (kind != "avx512_bf16") and err.count("\n") <= 1
    if path == "plain":
        out = pipe.generate([0, 1], output="np", steps=2)
        assert out.shape == (2, 16, 16, 1)
    with pytest.raises(MaskGITError) as e:
        Pipeline.load(tiny_pipeline_dir, precision="fp16")
    assert ("use bf16" in str(e.value)) == (kind == "avx512_bf16")


def test_amp_auto_follows_the_samplers_rule(monkeypatch):
    import maskgit.inference.precision as precision
    for kind, want in (("amx", True), ("avx512", False), ("avx2", False)):
        mock_cpu(monkeypatch, kind)
        on, why = precision.amp_choice("auto", "cpu")
        assert on == want == (precision.resolve_precision("auto", "cpu") == "bf16") and why.startswith("--amp auto")
    assert precision.amp_choice("off", "cpu")[0] is False
    on, why = precision.amp_choice("bf16", "cpu")
    assert on and "slower than fp32" in why  # still the mocked AVX2 CPU


def needs_bf16_packing():
    from maskgit.inference.cpu import cpu_capabilities
    if not cpu_capabilities()["onednn_bf16"]:
        pytest.skip("this CPU has no oneDNN bf16 kernels (needs avx_ne_convert or avx512bw/vl/dq)")


def test_cpu_bf16_pipeline_stays_close_to_fp32(tiny_pipeline_dir):
    """bf16 on CPU: linear weights stored in bf16 under autocast, fp32 logits out; the fp32 weights are untouched."""
    exact = Pipeline.load(tiny_pipeline_dir)
    fast = Pipeline.load(tiny_pipeline_dir, precision="bf16")
    c = exact.transformer.config
    tokens = torch.randint(0, c.codebook_size, (3, c.num_tokens), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    a = exact.logits_fn(labels)(tokens, False)
    b = fast.logits_fn(labels)(tokens, False)
    assert b.dtype == torch.float32 and a.shape == b.shape
    assert exact.transformer.blocks[0].fc1.weight.dtype == torch.float32
    err = (a - b).abs().max().item()
    assert 0 < err < 0.1 * a.abs().max().item()  # rounded (so bf16 really ran), but close


@pytest.mark.slow
def test_bench_speed_command_writes_its_table(tmp_path, monkeypatch):
    """`maskgit bench speed` end to end at a tiny transformer size (the decoder is the official 256 px one). The
    peak probes are shrunk (they run between every step: full-size ones took minutes on a slow CPU), and the bf16
    rows are asked for only where bf16 is native (emulated bf16 is the slowest part there)."""
    import maskgit.evaluation.speed as speed
    from maskgit.cli import main
    from maskgit.inference.cpu import native_bf16
    real_peak = speed.matmul_peak
    monkeypatch.setattr(speed, "matmul_peak", lambda device="cpu", n=2048, repeats=10, warmup=3, dtype=torch.float32,
                        shape=None: real_peak(device, 128, 2, 1, dtype, None))
    bf16 = native_bf16("cpu")
    out = tmp_path / "RESULTS.md"
    assert main(["bench", "speed", "--config", "tiny", "--batches", "1", "--repeats", "1", "--no-ar-nocache",
                 "--int8", "--precisions", "fp32,bf16" if bf16 else "fp32", "--results", str(out),
                 "--device", "cpu"]) == 0
    text = out.read_text()
    for row in ("MaskGIT transformer, 8 steps | 1", "MaskGIT transformer, 1 forward | 1",
                "MaskGIT transformer, 8 steps (int8) | 1",
                "VQGAN decoder 256 px | 1", "VQGAN decoder 256 px, at official-layout FLOPs | 1",
                "AR, 16 steps, KV cache | 1") + (("MaskGIT transformer, 8 steps (bf16) | 1",) if bf16 else ()):
        assert row in text
    assert "peak GFLOP/s" in text and "maskgit bench speed --config tiny" in text and "avx512_bf16" in text
    # the decoder's two FLOP counts, as measured: the sub-pixel form executes fewer than the official layout
    import re
    executed, official = map(float, re.search(r"([\d.]+) GFLOP per 256 px image executed.*?layout's ([\d.]+) GFLOP",
                                              text).groups())
    assert 150 < executed < official and abs(official - 186.5) < 0.5


@pytest.mark.parametrize("bias,channels_last,shape", [(True, True, (2, 8, 5, 7)), (False, False, (1, 16, 4, 4)),
                                                      (True, False, (3, 4, 1, 6))])
def test_subpixel_upsample_conv_equals_upsample_then_conv(bias, channels_last, shape):
    from maskgit.models.vqgan import upsample_conv
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 6, 3, padding=1, bias=bias)
    x = torch.randn(*shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = upsample_conv(x, conv, subpixel=False)
        fast = upsample_conv(x, conv, subpixel=True)
    assert plain.shape == fast.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)
    # the phase interleave is what makes this hold: a wrong phase order would fail it
    assert not torch.allclose(fast[:, :, 0::2], fast[:, :, 1::2], atol=1e-3)


def test_subpixel_kernels_follow_weight_changes():
    from maskgit.models.vqgan import upsample_conv
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        first = upsample_conv(x, conv)
        conv.weight.mul_(-2.0)  # in place: same storage, new version
        second = upsample_conv(x, conv)
        assert torch.allclose(second, upsample_conv(x, conv, subpixel=False), atol=1e-5)
        conv.load_state_dict({"weight": torch.randn(4, 4, 3, 3), "bias": torch.zeros(4)})
        third = upsample_conv(x, conv)
        assert torch.allclose(third, upsample_conv(x, conv, subpixel=False), atol=1e-5)
    assert not torch.allclose(first, second)


def test_training_graph_uses_the_plain_upsample():
    from maskgit.models.vqgan import upsample_conv
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    y = upsample_conv(x, conv)
    y.sum().backward()
    assert x.grad is not None
    assert y.grad_fn.name() == "ConvolutionBackward0"  # conv over the upsampled input, not the phase interleave


def test_inference_preparation_is_per_instance(tiny_pipeline_dir):
    from maskgit.models.vqgan import VQGAN
    from maskgit.storage.checkpoint import load_model
    a = load_model(Path(tiny_pipeline_dir) / "tokenizer", "vqgan")
    b = load_model(Path(tiny_pipeline_dir) / "tokenizer", "vqgan")
    assert isinstance(a, VQGAN) and not a.channels_last and a.decoder.subpixel
    a.prepare_for_inference(channels_last=True, subpixel=False)
    assert a.channels_last and not a.decoder.subpixel and not a.training
    assert a.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not b.channels_last and b.decoder.subpixel  # the other instance is untouched
    assert b.decoder.conv_in.weight.is_contiguous()


def test_decoder_subpixel_matches_official_layout(tiny_pipeline_dir):
    tok = Pipeline.load(tiny_pipeline_dir).tokenizer
    tokens = torch.randint(0, 32, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    fast = tok.decode(tokens, clip=False)
    tok.decoder.subpixel = False
    plain = tok.decode(tokens, clip=False)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert fast.abs().max() > 0.05  # not trivially zero


def test_tune_malloc_is_idempotent_and_can_be_turned_off(monkeypatch):
    import platform

    import maskgit.inference.malloc as S
    import maskgit.inference.settings as settings
    monkeypatch.setattr(S, "_malloc_tuned", None)
    monkeypatch.setenv("MASKGIT_TUNE_MALLOC", "0")
    monkeypatch.setattr(settings, "_current", None)  # read again
    assert S.tune_malloc() is False
    monkeypatch.setattr(S, "_malloc_tuned", None)
    monkeypatch.delenv("MASKGIT_TUNE_MALLOC")
    monkeypatch.setattr(settings, "_current", None)
    tuned = S.tune_malloc()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert tuned is True
    assert S.tune_malloc() is tuned


def test_onednn_fp32_linears_match_mkl_and_unpack_exactly(monkeypatch, tiny_pipeline_dir):
    """fp32 linears on oneDNN (AMD's default, forced here) compute what MKL computes, to fp32 rounding; the packed
    weights unpack bit for bit; the choice follows the CPU vendor and the override."""
    import maskgit.inference.cpu as cpu
    import maskgit.inference.settings as settings
    from maskgit.inference.kernels import OneDNNLinear, plain_linears
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("MASKGIT_FP32_LINEAR", "mkl")
    monkeypatch.setattr(settings, "_current", None)  # read again
    ref = Pipeline.load(tiny_pipeline_dir)
    assert not any(isinstance(m, OneDNNLinear) for m in ref.transformer.modules())
    monkeypatch.setenv("MASKGIT_FP32_LINEAR", "onednn")
    monkeypatch.setattr(settings, "_current", None)
    fast = Pipeline.load(tiny_pipeline_dir)
    assert fast.precision == "fp32" and isinstance(fast.transformer.blocks[0].fc1, OneDNNLinear)
    c = ref.transformer.config
    tokens = torch.randint(0, c.codebook_size, (3, c.num_tokens), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    a, b = ref.logits_fn(labels)(tokens, False), fast.logits_fn(labels)(tokens, False)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    back = plain_linears(fast.transformer)
    for (name, p), q in zip(ref.transformer.state_dict().items(), back.state_dict().values()):
        assert torch.equal(p, q), name
    packed_sd = fast.transformer.state_dict()  # a packed model's state_dict reads as the plain model's
    assert list(packed_sd) == list(ref.transformer.state_dict())
    assert all(torch.equal(packed_sd[k], v) for k, v in ref.transformer.state_dict().items())
    fc1 = fast.transformer.blocks[0].fc1
    w = torch.randn(fc1.out_features, fc1.in_features)
    fc1.load_state_dict({"weight": w, "bias": torch.zeros(fc1.out_features)})
    assert torch.equal(fc1.weight, w)
    monkeypatch.setenv("MASKGIT_FP32_LINEAR", "auto")
    monkeypatch.setattr(settings, "_current", None)
    for vendor, want in (("AuthenticAMD", "onednn"), ("GenuineIntel", "mkl")):
        monkeypatch.setattr(cpu, "cpu_capabilities", lambda v=vendor: {"vendor": v})
        assert cpu.fp32_linear_backend() == want
    monkeypatch.setenv("MASKGIT_FP32_LINEAR", "fast")
    monkeypatch.setattr(settings, "_current", None)
    with pytest.raises(MaskGITError, match="MASKGIT_FP32_LINEAR"):
        cpu.fp32_linear_backend()
