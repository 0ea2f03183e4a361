import dataclasses

import pytest
import torch

from maskgit.config import TRANSFORMER_PRESETS, TrainConfig, transformer_preset
from maskgit.errors import MaskGITError
from maskgit.models.transformer import MaskGITTransformer
from maskgit.sampling.schedules import gamma
from maskgit.training.loop import StepContext
from maskgit.training.objectives import MaskedTokenTask, mask_tokens, num_masked


def test_imagenet256_parameter_count_and_vocab():
    cfg = transformer_preset("maskgit-imagenet256")
    assert cfg.vocab_size == 2025 and cfg.mask_id == 2024 and cfg.num_tokens + 1 == 257
    with torch.device("meta"):
        n = MaskGITTransformer(cfg).num_params()
    assert abs(n - 172.5e6) <= 0.2e6, n
    assert transformer_preset("maskgit-imagenet512").num_tokens + 1 == 1025


@pytest.mark.slow
def test_imagenet256_forward_backward_batch2_cpu():
    torch.manual_seed(0)
    m = MaskGITTransformer(transformer_preset("maskgit-imagenet256"))
    tokens = torch.randint(0, 1024, (2, 256))
    tokens[:, ::3] = m.config.mask_id
    logits = m(tokens, torch.tensor([1, 207]))
    assert logits.shape == (2, 256, 1024)
    logits.logsumexp(-1).mean().backward()
    assert m.tok_emb.weight.grad is not None and torch.isfinite(m.tok_emb.weight.grad).all()


@pytest.mark.parametrize("name", sorted(TRANSFORMER_PRESETS))
def test_every_preset_builds(name):
    cfg = transformer_preset(name)
    if "imagenet" in name:  # built without memory; the forward pass is covered by the slow test
        with torch.device("meta"):
            assert MaskGITTransformer(cfg).tok_emb.weight.shape == (cfg.vocab_size, cfg.width)
        return
    m = MaskGITTransformer(cfg).eval()
    labels = torch.tensor([0]) if cfg.num_classes else None  # text presets have no classes
    text = torch.zeros(1, cfg.text_len, cfg.text_dim) if cfg.text_dim else None
    out = m(torch.zeros(1, cfg.num_tokens, dtype=torch.long), labels, text=text)
    assert out.shape == (1, cfg.num_tokens, cfg.codebook_size)


def test_class_token_and_labels_checked():
    m = MaskGITTransformer(transformer_preset("tiny"))
    c = m.config
    ids = m.cond_ids(torch.tensor([0, 3, -1]), 3, "cpu")
    assert ids.tolist() == [c.codebook_size, c.codebook_size + 3, c.codebook_size + c.num_classes]
    with pytest.raises(MaskGITError, match=r"class label\(s\) \[4\] out of range: this model has classes 0..3"):
        m.cond_ids(torch.tensor([4]), 1, "cpu")


def test_head_is_tied_to_the_token_embedding():
    m = MaskGITTransformer(transformer_preset("tiny")).eval()
    x = torch.randn(2, 5, m.config.width)
    with torch.no_grad():
        m.tok_emb.weight[:3] = 0
        m.head_bias.zero_()
        logits = m.head(x)
    assert torch.all(logits[..., :3] == 0)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square", "cubic", "sqrt", "log", "exp"])
def test_masked_count_is_ceil_gamma_n(schedule):
    N = 64
    r = torch.linspace(0.01, 0.99, 25)
    tokens = torch.zeros(25, N, dtype=torch.long)
    _, mask = mask_tokens(tokens, r, schedule, 99, torch.rand(25, N, generator=torch.Generator().manual_seed(0)))
    expect = torch.ceil(gamma(schedule, r, N) * N).long().clamp(1, N)
    assert torch.equal(mask.sum(1), expect)
    assert torch.equal(num_masked(r, N, schedule), expect)


def _task_loss(task, tokens, labels):
    ctx = StepContext(step=3, seed=0, global_batch=len(tokens), rank=0, world=1, device=torch.device("cpu"))
    return task({"tokens": tokens, "labels": labels}, ctx)[0]


def test_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    m = MaskGITTransformer(dataclasses.replace(transformer_preset("tiny"), dropout=0.0)).eval()
    task = MaskedTokenTask(m, TrainConfig(cond_dropout=0.0))
    tokens = torch.randint(0, 32, (4, 4, 4))
    labels = torch.tensor([0, 1, 2, 3])
    ctx = StepContext(3, 0, 4, 0, 1, torch.device("cpu"))
    g_r = torch.rand(4, generator=ctx.generator(1))
    g_noise = torch.rand(4, 16, generator=ctx.generator(2))
    _, mask = mask_tokens(tokens.flatten(1), g_r, "cosine", m.config.mask_id, g_noise)
    changed = tokens.flatten(1).clone()
    changed[~mask] = (changed[~mask] + 7) % 32  # only targets of unmasked (visible) positions change...
    # ...but visible tokens are also inputs, so compare against a model that cannot see them: the same input
    l1 = _task_loss(task, tokens, labels)
    l_same = _task_loss(task, tokens.clone(), labels)
    assert torch.equal(l1, l_same)
    # change only the targets at unmasked positions (inputs are kept identical by patching the forward)
    orig_forward = m.forward
    masked_inp = torch.where(mask, torch.full_like(changed, m.config.mask_id), tokens.flatten(1))
    m.forward = lambda inp, *a, **k: orig_forward(masked_inp, *a, **k)
    l2 = _task_loss(task, changed.view(4, 4, 4), labels)
    m.forward = orig_forward
    assert torch.allclose(l1, l2, atol=1e-6)
    # changing a masked target does change the loss
    changed2 = tokens.flatten(1).clone()
    changed2[mask] = (changed2[mask] + 7) % 32
    assert not torch.allclose(l1, _task_loss(task, changed2.view(4, 4, 4), labels))


def test_cpu_bf16_attention_matches_sdpa_on_the_qkv_views(monkeypatch):
    """The bf16 CPU inference attention's own path (one batch row at a time on the strided q/k/v views of the fused
    QKV output; the oneDNN Graph kernel turned off) computes SDPA to bf16 accuracy and hands back a view whose
    (B,L,H,d) transpose is contiguous (no copy)."""
    import maskgit.inference.settings as settings
    from maskgit.inference.kernels import cpu_bf16_attention
    monkeypatch.setenv("MASKGIT_FUSED_ATTENTION", "0")
    monkeypatch.setattr(settings, "_current", None)  # read again
    torch.manual_seed(0)
    B, L, H, d = 3, 17, 4, 8
    qkv = torch.randn(B, L, 3 * H * d).bfloat16()
    q, k, v = qkv.view(B, L, 3, H, d).permute(2, 0, 3, 1, 4)
    y = cpu_bf16_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert y.shape == (B, H, L, d) and y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() < 3e-2
    assert y.transpose(1, 2).is_contiguous()
    # each row alone gives the same numbers as in the batch
    assert torch.equal(cpu_bf16_attention(q[1:2], k[1:2], v[1:2]), y[1:2])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler, not by this code
def test_cpu_bf16_attention_under_compile_gives_the_same_product():
    """Under torch.compile the bf16 CPU attention takes its plain per-row ops (no out= writes into a strided
    buffer), which inductor compiles to the same values up to bf16 rounding, in the same (B,H,L,d) shape."""
    import shutil

    from maskgit.inference.compile import compile_frozen
    from maskgit.inference.kernels import cpu_bf16_attention
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3 * 2 * 8).bfloat16()
    q, k, v = qkv.view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    with torch.no_grad():
        eager = cpu_bf16_attention(q, k, v)
        compiled = compile_frozen(cpu_bf16_attention)(q, k, v)
    assert compiled.shape == eager.shape == (2, 2, 9, 8)
    assert (compiled.float() - eager.float()).abs().max() < 2e-2


def test_fused_cpu_attention_matches_sdpa_and_is_the_same_per_row(monkeypatch):
    """The oneDNN Graph attention (where this torch build has it) computes SDPA to bf16 accuracy on the model's
    strided q/k/v views, gives a row the same numbers alone as in a batch, and is skipped when turned off."""
    from maskgit.inference import kernels, settings
    torch.manual_seed(2)
    qkv = torch.randn(3, 17, 3, 4, 8).bfloat16()
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.fused_cpu_attention(q, k, v)
        if y is None:
            pytest.skip("no fused bf16 attention here: needs oneDNN Graph and a CPU with bf16 kernels (AVX-512 or AMX)")
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        assert y.shape == (3, 4, 17, 8) and y.dtype == torch.bfloat16
        assert (y.float() - ref).abs().max() < 3e-2
        assert torch.equal(kernels.fused_cpu_attention(q[1:2], k[1:2], v[1:2]), y[1:2])
        monkeypatch.setenv("MASKGIT_FUSED_ATTENTION", "0")
        monkeypatch.setattr(settings, "_current", None)  # read again
        assert kernels.fused_cpu_attention(q, k, v) is None


def test_fused_cpu_attention_bounds_its_kernels_with_power_of_two_chunks(monkeypatch):
    """Batch sizes other than powers of two run as power-of-two chunks written into one (B,L,H,d) buffer: the same
    numbers as each chunk alone, a (B,L,H,d)-contiguous result, and only power-of-two batch sizes traced, so sizes
    1..12 leave 4 kernels, not 12."""
    from maskgit.inference import kernels
    from maskgit.inference.compile import pow2_slices
    monkeypatch.setattr(kernels, "_fused_attention", {})
    torch.manual_seed(3)
    qkv = torch.randn(12, 9, 3, 2, 8).bfloat16()
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    with torch.inference_mode():
        if kernels.fused_cpu_attention(q[:1], k[:1], v[:1]) is None:
            pytest.skip("no fused bf16 attention here: needs oneDNN Graph and a CPU with bf16 kernels (AVX-512 or AMX)")
        y = kernels.fused_cpu_attention(q[:7], k[:7], v[:7])  # 4 + 2 + 1
        assert y.shape == (7, 2, 9, 8) and y.transpose(1, 2).is_contiguous()
        assert torch.equal(y[4:6], kernels.fused_cpu_attention(q[4:6], k[4:6], v[4:6]))
        assert torch.equal(y[6:], kernels.fused_cpu_attention(q[6:7], k[6:7], v[6:7]))
        ref = torch.nn.functional.scaled_dot_product_attention(q[:7].float(), k[:7].float(), v[:7].float())
        assert (y.float() - ref).abs().max() < 3e-2
        for b in range(1, 13):
            kernels.fused_cpu_attention(q[:b], k[:b], v[:b])
    assert sorted(key[0][0] for key in kernels._fused_attention) == [1, 2, 4, 8]
    assert pow2_slices(13) == [slice(0, 8), slice(8, 12), slice(12, 13)]
    assert [s.stop - s.start for s in pow2_slices(150)] == [64, 64, 16, 4, 2]
