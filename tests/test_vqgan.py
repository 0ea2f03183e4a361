import pytest
import torch

from maskgit.config import VQGAN_PRESETS, VQGANConfig, vqgan_preset
from maskgit.models.vqgan import VQGAN, ResBlock
from maskgit.storage.checkpoint import load_model, save_model


def test_imagenet_f16_parameter_count_and_grids():
    with torch.device("meta"):
        m = VQGAN(vqgan_preset("imagenet-f16"))
        n = sum(p.numel() for p in m.parameters())
        assert abs(n - 54.5e6) <= 0.1e6, n
        for size, grid in ((256, 16), (512, 32)):
            z = m.encoder(torch.empty(1, 3, size, size))
            assert z.shape == (1, 256, grid, grid)
            assert m.decoder(z).shape == (1, 3, size, size)


@pytest.mark.parametrize("name", sorted(VQGAN_PRESETS))
def test_every_preset_builds(name):
    cfg = vqgan_preset(name)
    with torch.device("meta"):
        m = VQGAN(cfg)
        z = m.encoder(torch.empty(2, cfg.channels, cfg.image_size, cfg.image_size))
    assert z.shape[-2:] == cfg.grid_shape()


def test_encode_decode_round_trip_and_tokens_stable():
    torch.manual_seed(0)
    m = VQGAN(vqgan_preset("tiny")).eval()
    x = torch.rand(3, 1, 16, 16)
    t = m.encode(x)
    assert t.shape == (3, 8, 8) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < 32
    y = m.decode(t)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    # decoding the embedded tokens and re-quantising the encoder output give the same codes
    z = m.encoder(x)
    _, t2, _ = m.quantizer(z)
    assert torch.equal(t, t2)


def test_save_load_bit_exact(tmp_path):
    m = VQGAN(vqgan_preset("tiny"))
    save_model(m, tmp_path / "tok")
    m2 = load_model(tmp_path / "tok", "vqgan")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(m.eval().decode(m.encode(x)), m2.decode(m2.encode(x)))


def test_official_shortcut_uses_the_blocks_output():
    cfg = VQGANConfig(filters=8, num_groups=4)
    blk = ResBlock(cfg, 8, 16).eval()
    x = torch.randn(1, 8, 4, 4)
    h = blk.conv2(torch.nn.functional.silu(blk.norm2(blk.conv1(torch.nn.functional.silu(blk.norm1(x))))))
    assert torch.allclose(blk(x), h + blk.shortcut(h), atol=1e-6)
    textbook = ResBlock(VQGANConfig(filters=8, num_groups=4, official_shortcut=False), 8, 16)
    assert textbook.shortcut.in_channels == 8


def test_straight_through_gradient_reaches_encoder():
    m = VQGAN(vqgan_preset("tiny"))
    x = torch.rand(2, 1, 16, 16)
    rec, _, losses = m(x)
    (rec.pow(2).mean() + sum(losses.values())).backward()
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.quantizer.codebook.grad.abs().sum() > 0


def test_tokenizer_training_on_cpu_runs_channels_last_with_the_same_losses(tmp_path):
    """In fp32 the trainer keeps a tokenizer's conv weights NHWC on CPU (faster there); the losses and gradients are
    those of the contiguous layout to fp32 rounding, and the saved model loads back as usual."""
    from maskgit.config import TokenizerTrainConfig, TrainConfig
    from maskgit.training.loop import StepContext, train
    from maskgit.training.losses import TokenizerTask
    torch.manual_seed(0)
    cfg = vqgan_preset("tiny")
    x = torch.rand(4, cfg.channels, 16, 16)
    tasks = [TokenizerTask(VQGAN(cfg), TokenizerTrainConfig(disc_start=0)) for _ in range(2)]
    tasks[1].load_state_dict(tasks[0].state_dict())
    tasks[1].to(memory_format=torch.channels_last)
    ctx = StepContext(0, 0, 4, 0, 1, torch.device("cpu"))
    out = []
    for t in tasks:
        loss, _ = t({"images": x}, ctx)
        loss.backward()
        out.append((loss.detach(), t.model.encoder.conv_in.weight.grad.clone()))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    scale = float(out[0][1].abs().max())  # NHWC kernels sum in another order (AVX-512 oneDNN: 3e-6 of ~1e-2)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-3 * scale)

    class Images:
        def __len__(self):
            return 8

        def batch(self, idx):
            return {"images": torch.rand(len(idx), cfg.channels, 16, 16, generator=torch.Generator().manual_seed(1))}

    for amp, nhwc in (("off", True), ("bf16", False)):  # channels-last pays in fp32 only (slower under bf16)
        task = TokenizerTask(VQGAN(cfg), TokenizerTrainConfig())
        train(task, Images(), TrainConfig(batch_size=4, max_steps=2, warmup_steps=1, log_every=1, amp=amp),
              tmp_path / amp, progress=False)
        w = next(m.weight for m in task.model.encoder.modules()  # C > 1: a layout that strides can tell apart
                 if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size == (3, 3))
        assert w.is_contiguous(memory_format=torch.channels_last) == nhwc and (nhwc or w.is_contiguous())
    back = load_model(tmp_path / "bf16" / "final", "vqgan")
    assert torch.equal(back.encoder.conv_in.weight, task.model.encoder.conv_in.weight)


def test_discriminator_runs_in_fp32_under_bf16_autocast():
    """Under bf16 autocast the tokenizer's encoder and decoder run in bf16 but the discriminator sees fp32 images and
    gives fp32 logits, so its hinge losses equal an fp32 evaluation of the same reconstructions."""
    import torch.nn.functional as F

    from maskgit.config import TokenizerTrainConfig
    from maskgit.training.loop import StepContext
    from maskgit.training.losses import TokenizerTask
    torch.manual_seed(0)
    cfg = vqgan_preset("tiny")
    task = TokenizerTask(VQGAN(cfg), TokenizerTrainConfig(disc_start=0))
    task.channels_last = False
    seen, recs = [], []
    task.disc.net[0].register_forward_hook(lambda m, a, out: seen.append((a[0].dtype, out.dtype)))
    task.model.decoder.register_forward_hook(lambda m, a, out: recs.append(out.detach()))
    x = torch.rand(2, cfg.channels, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = task({"images": x}, StepContext(0, 0, 2, 0, 1, torch.device("cpu")))
    assert recs[0].dtype == torch.bfloat16  # the rest of the step is under bf16
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    with torch.no_grad():
        rec = recs[0].float()
        want = F.relu(1 - task.disc(x)).mean() + F.relu(1 + task.disc(rec)).mean()
    torch.testing.assert_close(logs["d_loss"], want, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(loss)
