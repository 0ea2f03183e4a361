"""aMUSEd's U-ViT (maskgit.models.amused) against diffusers' UVit2DModel: same state-dict keys and shapes, the same
logits on tiny random models, gradients, config checks, and the released amused-256 parameter count (meta device)."""

import json

import pytest
import torch

from maskgit.errors import MaskGITError
from maskgit.models.amused import UVit2D, UVit2DConfig

TINY = dict(hidden_size=32, use_bias=False, hidden_dropout=0.0, cond_embed_dim=24, micro_cond_encode_dim=2,
            micro_cond_embed_dim=10, encoder_hidden_size=32, vocab_size=33, codebook_size=32, in_channels=16,
            block_out_channels=16, num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
            num_hidden_layers=1, num_attention_heads=2, attention_dropout=0.0, intermediate_size=32,
            layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=4)

# the released amused-256 transformer/config.json
AMUSED_256 = {"_class_name": "UVit2DModel", "attention_dropout": 0.0, "block_num_heads": 12, "block_out_channels": 768,
              "codebook_size": 8192, "cond_embed_dim": 768, "downsample": False, "encoder_hidden_size": 768,
              "hidden_dropout": 0.0, "hidden_size": 1024, "in_channels": 768, "intermediate_size": 2816,
              "layer_norm_eps": 1e-06, "ln_elementwise_affine": True, "micro_cond_embed_dim": 1280,
              "micro_cond_encode_dim": 256, "num_attention_heads": 16, "num_hidden_layers": 22, "num_res_blocks": 3,
              "sample_size": 16, "upsample": False, "use_bias": False, "vocab_size": 8256}

VARIANTS = {
    "plain": {},
    "bias": dict(use_bias=True),
    "down-up-2layers": dict(use_bias=True, downsample=True, upsample=True, num_hidden_layers=2, num_res_blocks=2),
    "equal-widths": dict(block_out_channels=32, num_hidden_layers=2),  # no kv_mapper in the conv stages
    "no-affine": dict(ln_elementwise_affine=False, use_bias=True),
}


def inputs(c: UVit2DConfig, B: int = 3, L: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = c.sample_size
    ids = torch.randint(0, c.vocab_size, (B, s, s), generator=g)
    ids[0, :2] = c.vocab_size - 1  # the mask token
    ids[1] = c.vocab_size - 1  # a fully masked grid (the first sampling step)
    hidden = torch.randn(B, L, c.encoder_hidden_size, generator=g)
    pooled = torch.randn(B, c.cond_embed_dim, generator=g)
    micro = torch.tensor([[64.0, 64, 0, 0, 6], [256, 256, 0, 0, 6], [512, 384, 12, 7, 5.5]])[:B]
    return ids, hidden, pooled, micro


def reference(**kw):
    """diffusers' UVit2DModel at TINY + kw, every parameter perturbed (non-trivial norms, GRN and biases)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.UVit2DModel(**{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_keys_shapes_and_logits_as_diffusers(variant):
    ref = reference(**VARIANTS[variant])
    ours = UVit2D(UVit2DConfig.from_dict(dict(ref.config))).eval()
    want, got = ref.state_dict(), ours.state_dict()
    assert set(got) == set(want)
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    ours.load_state_dict(want, strict=True)
    ids, hidden, pooled, micro = inputs(ours.config)
    with torch.no_grad():
        expected = ref(ids, micro_conds=micro, pooled_text_emb=pooled, encoder_hidden_states=hidden)
        logits = ours(ids, hidden, pooled, micro)
    c = ours.config
    assert logits.shape == (3, c.codebook_size, c.sample_size, c.sample_size) == expected.shape
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert ours.codebook_size == c.codebook_size and ours.mask_id == c.vocab_size - 1


def test_gradients_reach_every_parameter_and_checkpointing_agrees():
    torch.manual_seed(0)
    model = UVit2D(UVit2DConfig.from_dict({**TINY, "num_hidden_layers": 2}))
    for p in model.parameters():  # zero-initialised GRN would hide the gradients behind it
        p.data.add_(torch.randn_like(p) * 0.1)
    ids, hidden, pooled, micro = inputs(model.config)
    hidden.requires_grad_(True)
    target = torch.randint(0, model.codebook_size, ids.shape)
    loss = torch.nn.functional.cross_entropy(model(ids, hidden, pooled, micro), target)
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert missing == [] and hidden.grad.abs().sum() > 0
    model.zero_grad()
    model.gradient_checkpointing = True
    torch.nn.functional.cross_entropy(model(ids, hidden, pooled, micro), target).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_attention_projections_are_plain_linears_for_lora():
    model = UVit2D(UVit2DConfig.from_dict(TINY))
    names = dict(model.named_modules())
    for prefix in ("transformer_layers.0.attn1", "transformer_layers.0.attn2", "down_block.attention_blocks.0.attn1"):
        for part in ("to_q", "to_k", "to_v", "to_out.0"):
            assert type(names[f"{prefix}.{part}"]) is torch.nn.Linear


def test_config_round_trip_and_defaults():
    c = UVit2DConfig.from_dict(AMUSED_256)
    d = c.to_dict()
    assert d["_class_name"] == "UVit2DModel"
    assert json.loads(json.dumps(d)) == AMUSED_256  # every released field, nothing more
    assert UVit2DConfig.from_dict(d) == c
    # an omitted field takes diffusers' default
    assert UVit2DConfig.from_dict({"_diffusers_version": "0.25.0"}) == UVit2DConfig()
    assert UVit2DConfig().sample_size == 64 and UVit2DConfig.from_dict({"sample_size": 32}).sample_size == 32
    assert isinstance(UVit2DConfig.from_dict({"hidden_dropout": 0}).hidden_dropout, float)


@pytest.mark.parametrize("bad,words", [
    (dict(hidden_size=0), "hidden_size must be a positive integer"),
    (dict(num_hidden_layers=2.0), "num_hidden_layers must be a positive integer"),
    (dict(codebook_size=True), "codebook_size must be a positive integer"),
    (dict(use_bias=1), "use_bias must be true or false"),
    (dict(downsample="no"), "downsample must be true or false"),
    (dict(num_attention_heads=3), "num_attention_heads=3 must divide hidden_size=32"),
    (dict(block_num_heads=5), "block_num_heads=5 must divide block_out_channels=16"),
    (dict(vocab_size=32), "vocab_size=32 must exceed codebook_size=32"),
    (dict(micro_cond_embed_dim=11), "must be a multiple of micro_cond_encode_dim"),
    (dict(hidden_dropout=1.0), "hidden_dropout must be in [0, 1)"),
    (dict(layer_norm_eps=0), "layer_norm_eps must be > 0"),
    (dict(layer_norm_eps="1e-6"), "layer_norm_eps must be a finite number"),
    (dict(hidden_sise=32), "unknown field(s) hidden_sise"),
])
def test_config_mistakes_are_one_line_errors(bad, words):
    with pytest.raises(MaskGITError) as e:
        UVit2DConfig.from_dict({**TINY, **bad})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_config_must_be_a_mapping_and_micro_conditions_are_checked():
    with pytest.raises(MaskGITError, match="JSON object"):
        UVit2DConfig.from_dict([("hidden_size", 32)])
    model = UVit2D(UVit2DConfig.from_dict(TINY))
    ids, hidden, pooled, micro = inputs(model.config)
    with pytest.raises(MaskGITError, match=r"micro-conditions \(B, 5\)"):
        model(ids, hidden, pooled, micro[:, :4])


def test_released_amused_256_parameter_count_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    cfg = {k: v for k, v in AMUSED_256.items() if not k.startswith("_")}
    with torch.device("meta"):
        ours = UVit2D(UVit2DConfig.from_dict(AMUSED_256))
        ref = diffusers.UVit2DModel(**cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ours) == count(ref) == 603_537_664
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours.mask_id == 8255 and ours.codebook_size == 8192
