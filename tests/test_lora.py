"""LoRA adapters: the start equals the base, only adapters train, save/load/merge round trip, strict refusal."""

import dataclasses

import pytest
import torch

from maskgit.config import transformer_preset
from maskgit.errors import MaskGITError
from maskgit.models.transformer import MaskGITTransformer
from maskgit.training.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoRALinear,
    add_lora,
    load_lora,
    lora_state,
    merge_lora,
    save_lora,
    trainable_parameters,
)


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(transformer_preset("tiny"), grid_size=8)
    return MaskGITTransformer(cfg).eval()


def _inputs(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = m.config.grid_size ** 2
    tokens = torch.randint(0, m.config.codebook_size, (2, n), generator=g)
    tokens[:, ::3] = m.config.mask_id
    return tokens, torch.tensor([0, 1])


def _perturb(m, seed=2, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_start_equals_base_and_only_adapters_get_gradients():
    m = _model()
    x, y = _inputs(m)
    ref = m(x, y)
    names = add_lora(m, rank=4)
    assert names and all(isinstance(m.get_submodule(n), LoRALinear) for n in names)
    assert any(n.endswith("qkv") for n in names) and any(n.endswith("fc2") for n in names)
    torch.testing.assert_close(m(x, y), ref, rtol=0, atol=0)
    m.train()
    m(x, y).float().logsumexp(-1).mean().backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert trainable_parameters(m) == sum(t.numel() for t in lora_state(m).values())
    assert trainable_parameters(m) < sum(p.numel() for p in m.parameters()) / 5


def test_save_load_merge_round_trip(tmp_path):
    m = _model()
    x, y = _inputs(m)
    add_lora(m, rank=4, alpha=8)
    _perturb(m)
    want = m(x, y)
    save_lora(m, tmp_path / "ad")
    assert (tmp_path / "ad" / CONFIG_NAME).is_file()
    assert (tmp_path / "ad" / WEIGHTS_NAME).stat().st_size < 200_000

    fresh = load_lora(_model(), tmp_path / "ad")
    torch.testing.assert_close(fresh(x, y), want, rtol=0, atol=0)
    merge_lora(fresh)
    assert not any(isinstance(mod, LoRALinear) for mod in fresh.modules())
    assert set(fresh.state_dict()) == set(_model().state_dict())
    torch.testing.assert_close(fresh(x, y), want, rtol=1e-4, atol=1e-4)
    assert not torch.equal(fresh(x, y), _model()(x, y))


def test_load_refuses_mismatches_in_one_line(tmp_path):
    m = _model()
    add_lora(m, rank=4)
    save_lora(m, tmp_path / "ad")
    other = dataclasses.replace(transformer_preset("tiny"), grid_size=8, width=2 * transformer_preset("tiny").width)
    with pytest.raises(MaskGITError) as e:
        load_lora(MaskGITTransformer(other), tmp_path / "ad")
    assert "\n" not in str(e.value) and "shape" in str(e.value)
    with pytest.raises(MaskGITError, match="not a LoRA folder"):
        load_lora(_model(), tmp_path)
    (tmp_path / "ad" / CONFIG_NAME).write_text('{"rank": 4, "alpha": 4, "targets": ["nope.qkv"]}')
    with pytest.raises(MaskGITError, match="not in this model"):
        load_lora(_model(), tmp_path / "ad")
    base = _model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(MaskGITError):
        load_lora(base, tmp_path / "ad")
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


@pytest.mark.parametrize("rank", [0, -1, 2.5, True])
def test_bad_rank_is_refused(rank):
    with pytest.raises(MaskGITError, match="rank"):
        add_lora(_model(), rank=rank)


def test_no_target_layers_is_refused():
    with pytest.raises(MaskGITError, match="no nn.Linear"):
        add_lora(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)), rank=2)


def test_pipeline_load_merges_the_adapter(tiny_pipeline_dir, tmp_path):
    import maskgit
    from maskgit.storage.checkpoint import load_model
    tr = load_model(tiny_pipeline_dir / "maskgit", "transformer")
    add_lora(tr, rank=2)
    _perturb(tr)
    save_lora(tr, tmp_path / "ad")
    x, y = _inputs(tr)
    want = tr(x, y)
    pipe = maskgit.load(tiny_pipeline_dir, lora=tmp_path / "ad")
    assert not any(isinstance(mod, LoRALinear) for mod in pipe.transformer.modules())
    torch.testing.assert_close(pipe.transformer(x, y), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(MaskGITError, match="not a LoRA folder"):
        maskgit.load(tiny_pipeline_dir, lora=tmp_path)


def test_sample_cli_with_lora_weights(tiny_pipeline_dir, tmp_path):
    from maskgit.cli import main
    from maskgit.storage.checkpoint import load_model
    tr = load_model(tiny_pipeline_dir / "maskgit", "transformer")
    add_lora(tr, rank=2)
    _perturb(tr, scale=3.0)
    save_lora(tr, tmp_path / "ad")
    args = ["sample", "--model", str(tiny_pipeline_dir), "--labels", "0,1", "--steps", "2", "--precision", "fp32"]
    main(args + ["--lora-weights", str(tmp_path / "ad"), "--out", str(tmp_path / "a.png")])
    main(args + ["--out", str(tmp_path / "b.png")])
    assert (tmp_path / "a.png").stat().st_size > 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert main(args + ["--lora-weights", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()
