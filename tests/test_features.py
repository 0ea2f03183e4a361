import json

import pytest
import torch

from maskgit.errors import MaskGITError
from maskgit.models.features import FeatureNet, FeatureNetConfig, perceptual_loss, shift_augment
from maskgit.storage.checkpoint import load_model, save_model
from maskgit.training.features import train_features

SMALL = FeatureNetConfig(width=8, feature_dim=16)


def small_net(seed=0, cfg=SMALL):
    torch.manual_seed(seed)
    return FeatureNet(cfg)


def test_shapes():
    net = small_net().eval()
    x = torch.rand(2, 1, 32, 32)
    assert net(x).shape == (2, 10)
    assert net.features(x).shape == (2, 16)
    maps = net.feature_maps(x)
    assert [m.shape for m in maps] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    assert torch.allclose(net(x), net.head(net.features(x)))
    rgb = FeatureNet(FeatureNetConfig(channels=3, image_size=16, num_classes=4, width=4, feature_dim=8)).eval()
    assert rgb(torch.rand(3, 3, 16, 16)).shape == (3, 4)
    with pytest.raises(MaskGITError):
        net(torch.rand(2, 3, 32, 32))


def test_default_size_is_small():
    n = sum(p.numel() for p in FeatureNet(FeatureNetConfig()).parameters())
    assert 100_000 <= n <= 300_000


def test_save_load_round_trip_is_bit_exact(tmp_path):
    net = small_net()
    net.train()
    net(torch.rand(8, 1, 32, 32))  # moves the BatchNorm running statistics off their defaults
    net.eval()
    save_model(net, tmp_path / "f", meta={"test_accuracy": 0.5})
    loaded = load_model(tmp_path / "f", expect="features")
    assert loaded.config == net.config and loaded.meta["test_accuracy"] == 0.5
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(net(x), loaded(x))


def test_perceptual_loss_zero_for_identical_and_differentiable():
    net = small_net().eval()
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    y = torch.rand(2, 1, 32, 32, requires_grad=True)
    assert perceptual_loss(net, x, x).item() == pytest.approx(0.0, abs=1e-7)
    loss = perceptual_loss(net, x, y)
    assert loss.item() > 0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())  # the network stays frozen
    with pytest.raises(MaskGITError, match="eval"):
        perceptual_loss(net.train(), x, y)


def test_shift_augment():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 4:8, 4:8] = torch.rand(16, 1, 4, 4)
    out = shift_augment(x, 2, g)
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # content moved, not lost
    assert not torch.equal(out, x)
    assert torch.equal(shift_augment(x, 0, g), x)


def test_training_smoke(tmp_path):
    try:
        metrics = train_features(out=tmp_path / "f", epochs=1, batch_size=64, lr=1e-2, max_steps=30,
                                 max_train=512, max_test=500, config=FeatureNetConfig(width=8, feature_dim=32))
    except MaskGITError as e:
        if "not found" in str(e):
            pytest.skip(str(e))
        raise
    assert metrics["steps"] == 30 and metrics["train_images"] == 512
    assert metrics["test_accuracy"] > 0.3  # chance is 0.1
    doc = json.loads((tmp_path / "f" / "config.json").read_text())
    assert doc["kind"] == "features" and doc["meta"]["test_accuracy"] == metrics["test_accuracy"]
    assert "--width 8" in doc["meta"]["command"]
    assert load_model(tmp_path / "f", expect="features").config.feature_dim == 32


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(MaskGITError, match="cuda"):
        train_features(out=tmp_path / "f", device="cuda")


def test_cli_flags_build_the_config(tmp_path, capsys):
    import argparse

    from maskgit.commands import features as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-features", "--out", str(tmp_path), "--width", "16", "--augment"])
    assert args.width == 16 and args.feature_dim is None and args.augment is True and args.epochs == 4
    if not torch.cuda.is_available():
        args = parser.parse_args(["train-features", "--out", str(tmp_path), "--device", "cuda"])
        with pytest.raises(MaskGITError, match="cuda"):
            args.func(args)
