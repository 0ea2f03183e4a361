"""aMUSEd's VQ-GAN tokenizer (maskgit.models.amused_vq) against diffusers' VQModel: same state_dict keys and shapes,
the same token ids, the same images; config validation; parameter count at the released amused-256 config."""

import json

import pytest
import torch

import maskgit.models.amused_vq as vqm
from maskgit.errors import MaskGITError
from maskgit.models.amused_vq import AmusedVQ, AmusedVQConfig

# vqvae/config.json of amused-256 (amused-512 ships the same one)
RELEASED = {"_class_name": "VQModel", "_diffusers_version": "0.25.0", "act_fn": "silu",
            "block_out_channels": [128, 256, 256, 512, 768], "down_block_types": ["DownEncoderBlock2D"] * 5,
            "in_channels": 3, "latent_channels": 64, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "group",
            "num_vq_embeddings": 8192, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
            "up_block_types": ["UpDecoderBlock2D"] * 5, "vq_embed_dim": None, "force_upcast": True,
            "lookup_from_codebook": True, "mid_block_add_attention": False}


def tiny(attention: bool = True, **kw) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 8, 16], layers_per_block=1,
                act_fn="silu", latent_channels=8, sample_size=16, num_vq_embeddings=32, norm_num_groups=4,
                vq_embed_dim=8, scaling_factor=0.18215, norm_type="group", mid_block_add_attention=attention,
                lookup_from_codebook=True, force_upcast=False) | kw


@pytest.fixture(scope="module", params=[True, False], ids=["attention", "no-attention"])
def pair(request):
    """diffusers' VQModel with perturbed parameters (non-trivial norms and biases) and ours loaded from it."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.VQModel(**tiny(request.param)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = AmusedVQ(AmusedVQConfig.from_dict(dict(ref.config)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_state_dict_keys_and_shapes_are_diffusers(pair):
    ref, ours = pair
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    try:
        ours.prepare_for_inference(channels_last=True)
        assert not ours.decoder.conv_in.weight.is_contiguous()
        assert all(v.is_contiguous() for v in ours.state_dict().values())  # NHWC weights save as they load
    finally:
        ours.prepare_for_inference(channels_last=False)


def test_encode_gives_the_reference_ids(pair):
    ref, ours = pair
    torch.manual_seed(1)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        want = ref.quantize(ref.encode(x).latents)[2][2].reshape(3, 4, 4)
    got = ours.encode(x)
    assert got.dtype == torch.long and torch.equal(got, want)
    assert torch.equal(ours.encode(x.double()), want)  # computed in float32 whatever comes in


@pytest.mark.parametrize("channels_last", [True, False])
def test_decode_matches_the_reference(pair, channels_last):
    ref, ours = pair
    torch.manual_seed(2)
    tokens = torch.randint(0, 32, (2, 4, 4))
    with torch.no_grad():
        raw = ref.decode(tokens, force_not_quantize=True, shape=(2, 4, 4, 8)).sample
    try:
        ours.prepare_for_inference(channels_last)
        got = ours.decode(tokens)
        unclipped = ours.decode(tokens, clip=False)
    finally:
        ours.prepare_for_inference(False)
    assert got.shape == (2, 3, 16, 16) and got.dtype == torch.float32 and got.is_contiguous()
    assert (got - raw.clip(0, 1)).abs().max() < 1e-5
    if not channels_last:  # the reference's layout and op order: the same floats
        assert torch.equal(unclipped, raw)
    assert (unclipped - raw).abs().max() < 1e-5 * max(1.0, float(raw.abs().max()))
    assert 0 <= got.min() and got.max() <= 1


def test_decode_in_chunks_matches_one_batched_reference_call(pair, monkeypatch):
    ref, ours = pair
    monkeypatch.setattr(vqm, "DECODE_CHUNK_BYTES", 1)  # one image per decoder call
    tokens = torch.randint(0, 32, (3, 4, 4))
    assert ours.decode_chunk(tokens.shape) == 1
    with torch.no_grad():
        raw = ref.decode(tokens, force_not_quantize=True, shape=(3, 4, 4, 8)).sample
    assert (ours.decode(tokens, clip=False) - raw).abs().max() < 1e-5


def test_decode_runs_in_float32_under_autocast(pair):
    _, ours = pair
    tokens = torch.randint(0, 32, (1, 4, 4))
    want = ours.decode(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours.decode(tokens)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_encode_decode_shapes_without_diffusers():
    torch.manual_seed(0)
    vq = AmusedVQ(AmusedVQConfig.from_dict(tiny(True)))
    assert (vq.codebook_size, vq.channels, vq.downsample) == (32, 3, 4)
    ids = vq.encode(torch.rand(2, 3, 16, 8))
    assert ids.shape == (2, 4, 2) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 32
    img = vq.decode(ids)
    assert img.shape == (2, 3, 16, 8) and 0 <= img.min() and img.max() <= 1
    with pytest.raises(MaskGITError, match="multiple of"):
        vq.encode(torch.rand(1, 3, 15, 16))
    with pytest.raises(MaskGITError, match="float images"):
        vq.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(MaskGITError, match=r"\(B,3,H,W\)"):
        vq.encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(MaskGITError, match=r"\[0, 32\)"):
        vq.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(MaskGITError, match="float32"):
        AmusedVQ(AmusedVQConfig.from_dict(tiny(True))).half().decode(ids)


def test_config_round_trip_and_released_fields():
    c = AmusedVQConfig.from_dict(RELEASED)  # "_" keys ignored
    assert c.block_out_channels == (128, 256, 256, 512, 768) and c.vq_embed_dim is None and c.downsample == 16
    d = c.to_dict()
    assert d["_class_name"] == "VQModel" and json.loads(json.dumps(d)) == d
    assert {k: v for k, v in d.items() if k != "_class_name"} == {k: v for k, v in RELEASED.items() if k[0] != "_"}
    assert AmusedVQConfig.from_dict(d) == c
    assert AmusedVQConfig.from_dict({"unknown_key": 1}) == AmusedVQConfig()  # diffusers' defaults


@pytest.mark.parametrize("change, message", [
    ({"layers_per_block": 0}, "layers_per_block must be a positive integer"),
    ({"num_vq_embeddings": "8192"}, "num_vq_embeddings must be a positive integer"),
    ({"latent_channels": True}, "latent_channels must be a positive integer"),
    ({"vq_embed_dim": -1}, "vq_embed_dim must be a positive integer"),
    ({"down_block_types": ["DownBlock2D"] * 3}, "down_block_types supports only DownEncoderBlock2D"),
    ({"up_block_types": ["AttnUpDecoderBlock2D"] * 3}, "up_block_types supports only UpDecoderBlock2D"),
    ({"up_block_types": ["UpDecoderBlock2D"] * 2}, "the same length"),
    ({"block_out_channels": []}, "non-empty list"),
    ({"block_out_channels": [8, 10, 16]}, "multiples of norm_num_groups"),
    ({"act_fn": "gelu"}, "act_fn must be 'silu'"),
    ({"norm_type": "spatial"}, "only norm_type 'group'"),
    ({"mid_block_add_attention": "yes"}, "true or false"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(MaskGITError, match=message) as e:
        AmusedVQConfig.from_dict(tiny(**change))
    assert "\n" not in str(e.value) and str(e.value).startswith("aMUSEd VQ config: ")


def test_released_config_parameter_count_matches_diffusers():
    c = AmusedVQConfig.from_dict(RELEASED)
    with torch.device("meta"):
        ours = AmusedVQ(c)
    n = sum(p.numel() for p in ours.parameters())
    assert n > 100_000_000
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.VQModel(**{k: v for k, v in RELEASED.items() if k[0] != "_"})
    assert n == sum(p.numel() for p in ref.parameters())
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert a == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
