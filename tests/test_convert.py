"""Official (JAX/Flax) checkpoints -> our models: exactness against a numpy re-implementation of the official
networks, full-size coverage of the released trees (shapes only), file errors and the CLI."""

import math

import numpy as np
import pytest
import torch

from maskgit.config import TransformerConfig, VQGANConfig, transformer_preset, vqgan_preset
from maskgit.errors import MaskGITError
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN

msgpack = pytest.importorskip("msgpack")
from maskgit.storage import official as convert

# a tiny tokenizer of the official layout: 3 levels (two of equal width: upsampling convs of equal shapes),
# 2 ResBlocks per level + 2 in the middle; 16 px -> 4x4 tokens
TOK = VQGANConfig(channels=3, filters=16, channel_mult=(1, 2, 2), num_res_blocks=2, embedding_dim=8,
                  codebook_size=16, num_groups=8, image_size=16)
# a tiny transformer: 16 codes + 3 classes + mask = 20 ids, 4x4 grid (17 positions)
TR = TransformerConfig(codebook_size=16, num_classes=3, grid_size=4, width=32, depth=2, heads=4, mlp_dim=64)


def random_tree(cfg, seed: int = 0) -> dict:
    """Random leaves at the official paths: norm scales near 1, the rest roughly unit-variance outputs."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in convert.expected_flax_shapes(cfg).items():
        if path.endswith("/scale"):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif path.endswith("/bias"):
            a = 0.2 * rng.standard_normal(shape)
        elif path.endswith("/kernel"):
            fan_in = math.prod(shape[:-1]) if not path.endswith("out/kernel") else math.prod(shape[:2])
            a = rng.standard_normal(shape) / math.sqrt(fan_in)
        else:
            a = rng.standard_normal(shape)
        flat[path] = a.astype(np.float32)
    return {"params": convert.unflatten(flat)}


# ---------------------------------------------------------------- the official networks in numpy (NHWC)
def np_conv(x, p):
    k = p["kernel"].astype(np.float64)
    kh, kw = k.shape[:2]
    _, H, W, _ = x.shape
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))  # 'SAME' for odd kernels
    out = sum(np.einsum("nhwi,io->nhwo", xp[:, dy:dy + H, dx:dx + W], k[dy, dx])
              for dy in range(kh) for dx in range(kw))
    return out + p["bias"] if "bias" in p else out


def np_gn(x, p, groups):
    N, H, W, C = x.shape
    g = x.reshape(N, H, W, groups, C // groups)
    g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6)
    return g.reshape(x.shape) * p["scale"] + p["bias"]


def swish(x):
    return x / (1 + np.exp(-x))


def np_resblock(x, p, groups):
    h = np_conv(swish(np_gn(x, p["GroupNorm_0"], groups)), p["Conv_0"])
    h = np_conv(swish(np_gn(h, p["GroupNorm_1"], groups)), p["Conv_1"])
    return h + (np_conv(h, p["Conv_2"]) if x.shape[-1] != h.shape[-1] else x)  # shortcut on the OUTPUT


def np_encoder(x, p, cfg):
    x = np_conv(x, p["Conv_0"])
    r, L = 0, len(cfg.channel_mult)
    for i in range(L):
        for _ in range(cfg.num_res_blocks):
            x, r = np_resblock(x, p[f"ResBlock_{r}"], cfg.num_groups), r + 1
        if i < L - 1:
            N, H, W, C = x.shape
            x = x.reshape(N, H // 2, 2, W // 2, 2, C).mean((2, 4))
    for _ in range(cfg.num_res_blocks):
        x, r = np_resblock(x, p[f"ResBlock_{r}"], cfg.num_groups), r + 1
    return np_conv(swish(np_gn(x, p["GroupNorm_0"], cfg.num_groups)), p["Conv_1"])


def np_decoder(x, p, cfg):
    x = np_conv(x, p["Conv_0"])
    r, c = 0, 1
    for _ in range(cfg.num_res_blocks):
        x, r = np_resblock(x, p[f"ResBlock_{r}"], cfg.num_groups), r + 1
    for i in reversed(range(len(cfg.channel_mult))):
        for _ in range(cfg.num_res_blocks):
            x, r = np_resblock(x, p[f"ResBlock_{r}"], cfg.num_groups), r + 1
        if i > 0:
            x, c = np_conv(x.repeat(2, 1).repeat(2, 2), p[f"Conv_{c}"]), c + 1
    return np_conv(swish(np_gn(x, p["GroupNorm_0"], cfg.num_groups)), p[f"Conv_{c}"])


def np_ln(x, p):
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
    return x * p["scale"] + p["bias"]


def np_gelu(x):  # jax.nn.gelu's default (tanh) form
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_transformer(ids, p):
    """ids (B, L) -> logits (B, L, vocab), as maskgit_transformer.Transformer."""
    e = p["Embed_0"]
    x = np_ln(e["word_embeddings"]["embedding"][ids] + e["position_embeddings"]["embedding"][:ids.shape[1]],
              e["embeddings_ln"])
    i = 0
    while f"TransformerLayer_{i}" in p:
        layer = p[f"TransformerLayer_{i}"]
        sa = layer["Attention_0"]["self_attention"]
        q, k, v = (np.einsum("blw,whd->blhd", x, sa[n]["kernel"]) + sa[n]["bias"]
                   for n in ("query", "key", "value"))
        att = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("bhqk,bkhd->bqhd", att, v)
        o = np.einsum("bqhd,hdw->bqw", y, sa["out"]["kernel"]) + sa["out"]["bias"]
        x = np_ln(o + x, layer["Attention_0"]["attention_output_ln"])
        mlp = layer["Mlp_0"]
        h = np_gelu(x @ mlp["intermediate_output"]["kernel"] + mlp["intermediate_output"]["bias"])
        x = np_ln(h @ mlp["layer_output"]["kernel"] + mlp["layer_output"]["bias"] + x, mlp["layer_output_ln"])
        i += 1
    m = p["MlmLayer_0"]
    h = np_ln(np_gelu(x @ m["mlm_dense"]["kernel"] + m["mlm_dense"]["bias"]), m["mlm_ln"])
    return h @ e["word_embeddings"]["embedding"].T + m["mlm_bias"]["bias"]


def _f64(tree):
    return {k: _f64(v) if isinstance(v, dict) else v.astype(np.float64) for k, v in tree.items()}


# ---------------------------------------------------------------- exactness
def test_tokenizer_matches_the_official_network(tmp_path):
    tree = random_tree(TOK, seed=1)
    convert.write_flax_msgpack(tree, tmp_path / "tok")
    tree_back = convert.load_flax_msgpack(tmp_path / "tok")
    model = convert.tokenizer_from_flax(tree_back, image_size=16, num_groups=8)
    assert model.config == TOK
    p = _f64(tree["params"])
    x = np.random.default_rng(0).random((2, 16, 16, 3))
    xt = torch.from_numpy(x).float().permute(0, 3, 1, 2)
    # the first conv + GroupNorm alone (the kernel transposition and the GroupNorm grouping)
    first = np_gn(np_conv(x, p["encoder"]["Conv_0"]), p["encoder"]["ResBlock_0"]["GroupNorm_0"], 8)
    ours = model.encoder.levels[0][0].norm1(model.encoder.conv_in(xt))
    np.testing.assert_allclose(ours.detach().permute(0, 2, 3, 1).numpy(), first, rtol=1e-4, atol=1e-4)
    # the whole encoder, the nearest code, the whole decoder
    z = np_encoder(x, p["encoder"], TOK)
    ours = model.encoder(xt).detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, z, rtol=1e-4, atol=1e-4)
    cb = p["quantizer"]["codebook"]
    tokens = ((z[..., None, :] - cb) ** 2).sum(-1).argmin(-1)  # (B, 4, 4)
    assert np.array_equal(model.encode(xt).numpy(), tokens)
    img = np_decoder(cb[tokens], p["decoder"], TOK)
    ours = model.decode(torch.from_numpy(tokens), clip=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, img, rtol=1e-4, atol=1e-4)


def test_transformer_matches_the_official_network(tmp_path):
    tree = random_tree(TR, seed=2)
    convert.write_flax_msgpack(tree, tmp_path / "tr")
    model = convert.transformer_from_flax(convert.load_flax_msgpack(tmp_path / "tr"), codebook_size=16)
    assert model.config == TR and model.config.mask_id == 19
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, (3, 16))
    tokens[rng.random((3, 16)) < 0.5] = 19  # masked
    labels = np.array([0, 2, 1])
    ids = np.concatenate([16 + labels[:, None], tokens], 1)  # [class token, image tokens]
    ref = np_transformer(ids, _f64(tree["params"]))[:, 1:, :16]
    ours = model(torch.from_numpy(tokens), torch.from_numpy(labels)).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # one attention layer + LN on its own, straight from the raw query/key/value/out kernels
    x = rng.standard_normal((2, 17, 32))
    layer = _f64(tree["params"])["TransformerLayer_0"]["Attention_0"]
    sa = layer["self_attention"]
    q, k, v = (np.einsum("blw,whd->blhd", x, sa[n]["kernel"]) + sa[n]["bias"]
               for n in ("query", "key", "value"))
    a = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    a = np.exp(a - a.max(-1, keepdims=True))
    y = np.einsum("bhqk,bkhd->bqhd", a / a.sum(-1, keepdims=True), v)
    ref = np_ln(np.einsum("bqhd,hdw->bqw", y, sa["out"]["kernel"]) + sa["out"]["bias"] + x,
                layer["attention_output_ln"])
    blk = model.blocks[0]
    xt = torch.from_numpy(x).float()
    np.testing.assert_allclose(blk.attn_ln(xt + blk.attn(xt)).detach().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_params_wrapper_is_optional_and_values_are_bit_exact(tmp_path):
    tree = random_tree(TR, seed=3)
    a = convert.transformer_from_flax(tree, codebook_size=16)
    convert.write_flax_msgpack(tree["params"], tmp_path / "bare")
    b = convert.transformer_from_flax(convert.load_flax_msgpack(tmp_path / "bare"), codebook_size=16)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    emb = tree["params"]["Embed_0"]["word_embeddings"]["embedding"]
    assert torch.equal(a.tok_emb.weight, torch.from_numpy(emb))
    assert all(p.dtype == torch.float32 and not p.is_meta for p in a.parameters())


# ---------------------------------------------------------------- the released trees, full size, shapes only
def _zero_tree(shapes):
    return {p: np.broadcast_to(np.zeros((), np.float32), s) for p, s in shapes.items()}  # no memory


@pytest.mark.parametrize("which", ["tokenizer", "maskgit-imagenet256", "maskgit-imagenet512"])
def test_mapping_covers_every_official_parameter_exactly_once(which):
    if which == "tokenizer":
        cfg, cls, mapping = vqgan_preset("imagenet-f16"), VQGAN, convert.tokenizer_mapping
    else:
        cfg, cls, mapping = transformer_preset(which), MaskGITTransformer, convert.transformer_mapping
    entries = mapping(cfg)
    shapes = convert.expected_flax_shapes(cfg)
    paths = [p for e in entries for p in e.paths]
    assert len(paths) == len(set(paths)) == len(shapes)  # each Flax leaf used once
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
    flat = _zero_tree(shapes)
    got = {}
    for key, arr in convert.convert_arrays(entries, flat):
        assert key not in got
        got[key] = tuple(arr.shape)
    assert got == ours  # every tensor of ours, once, with its shape
    assert sum(map(math.prod, shapes.values())) == sum(map(math.prod, ours.values()))
    # the config inferred back from the released shapes is the preset
    params = convert.unflatten(flat)
    if which == "tokenizer":
        assert convert.infer_tokenizer_config(params) == cfg
    else:
        assert convert.infer_transformer_config(params) == cfg


def test_official_names_and_shapes():
    """Spot checks of the official tree (vqgan_tokenizer.py / maskgit_transformer.py call order)."""
    tok = convert.expected_flax_shapes(vqgan_preset("imagenet-f16"))
    assert tok["encoder/Conv_0/kernel"] == (3, 3, 3, 128) and "encoder/Conv_0/bias" not in tok
    assert tok["encoder/ResBlock_4/Conv_2/kernel"] == (1, 1, 256, 256)  # level 2's first block: 128 -> 256
    assert tok["encoder/ResBlock_11/GroupNorm_1/scale"] == (512,)
    assert "encoder/ResBlock_12/Conv_0/kernel" not in tok  # 5 levels x 2 + 2 middle blocks
    assert tok["encoder/Conv_1/kernel"] == (1, 1, 512, 256) and tok["quantizer/codebook"] == (1024, 256)
    assert [tok[f"decoder/Conv_{i}/kernel"] for i in range(6)] == [
        (3, 3, 256, 512), (3, 3, 512, 512), (3, 3, 256, 256), (3, 3, 256, 256), (3, 3, 128, 128),
        (3, 3, 128, 3)]
    assert tok["decoder/ResBlock_4/Conv_2/kernel"] == (1, 1, 256, 256)  # 512 -> 256, widest level first
    tr = convert.expected_flax_shapes(transformer_preset("maskgit-imagenet512"))
    assert tr["Embed_0/word_embeddings/embedding"] == (2025, 768)
    assert tr["Embed_0/position_embeddings/embedding"] == (1025, 768)
    assert tr["TransformerLayer_23/Attention_0/self_attention/query/kernel"] == (768, 16, 48)
    assert tr["TransformerLayer_23/Attention_0/self_attention/out/kernel"] == (16, 48, 768)
    assert tr["TransformerLayer_0/Mlp_0/layer_output/kernel"] == (3072, 768)
    assert tr["MlmLayer_0/mlm_bias/bias"] == (2025,)
    assert "TransformerLayer_24/Mlp_0/layer_output_ln/scale" not in tr


# ---------------------------------------------------------------- the file format
def test_reader_handles_flax_extension_types(tmp_path):
    bf16 = np.array([[1.5, -2.0, 3.0]], np.float32).view(np.uint32) >> 16  # exact in bfloat16
    payload = msgpack.packb([[1, 3], "bfloat16", bf16.astype("<u2").tobytes()], use_bin_type=True)
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 2},
               "chunks": {"0": np.arange(3.0), "1": np.arange(3.0, 4.0)}}
    tree = {"a": {"w": np.arange(6, dtype=np.int32).reshape(2, 3), "s": np.float32(2.5), "c": 1 + 2j},
            "step": 7, "big": chunked}
    convert.write_flax_msgpack(tree, tmp_path / "x")
    raw = msgpack.unpackb((tmp_path / "x").read_bytes(), raw=False, ext_hook=msgpack.ExtType)
    assert raw["a"]["w"].code == 1 and raw["a"]["s"].code == 3 and raw["a"]["c"].code == 2
    raw["bf"] = msgpack.ExtType(1, payload)
    (tmp_path / "y").write_bytes(msgpack.packb(raw, use_bin_type=True))
    back = convert.load_flax_msgpack(tmp_path / "y")
    assert np.array_equal(back["a"]["w"], tree["a"]["w"]) and back["a"]["w"].dtype == np.int32
    assert back["a"]["s"] == np.float32(2.5) and back["a"]["c"] == 1 + 2j and back["step"] == 7
    assert np.array_equal(back["bf"], [[1.5, -2.0, 3.0]]) and back["bf"].dtype == np.float32
    assert np.array_equal(back["big"], np.arange(4.0).reshape(2, 2))


def _message(fn, *args, **kw) -> str:
    with pytest.raises(MaskGITError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_wrong_truncated_and_missing_files(tmp_path):
    from PIL import Image
    assert "does not exist" in _message(convert.load_flax_msgpack, tmp_path / "nope")
    assert "is a directory" in _message(convert.load_flax_msgpack, tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    assert "PNG" in _message(convert.load_flax_msgpack, tmp_path / "x.png")
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    assert "PyTorch" in _message(convert.load_flax_msgpack, tmp_path / "m.pt")
    (tmp_path / "empty").write_bytes(b"")
    assert "empty" in _message(convert.load_flax_msgpack, tmp_path / "empty")
    convert.write_flax_msgpack(random_tree(TR), tmp_path / "tr")
    data = (tmp_path / "tr").read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 40):
        (tmp_path / "cut").write_bytes(data[:cut])
        assert "truncated" in _message(convert.load_flax_msgpack, tmp_path / "cut")
    (tmp_path / "long").write_bytes(data + data[:10])
    assert "unexpected bytes" in _message(convert.load_flax_msgpack, tmp_path / "long")


def test_mismatched_trees_name_the_offending_paths():
    tree = random_tree(TOK)
    flat = convert.flatten(tree["params"])
    del flat["encoder/Conv_1/bias"]
    flat["encoder/Extra_0/kernel"] = np.zeros((1,), np.float32)
    flat["decoder/ResBlock_3/GroupNorm_1/scale"] = np.zeros((5,), np.float32)
    msg = _message(convert.tokenizer_from_flax, convert.unflatten(flat), num_groups=8)
    assert "missing (1): encoder/Conv_1/bias" in msg
    assert "unexpected (1): encoder/Extra_0/kernel" in msg
    assert "decoder/ResBlock_3/GroupNorm_1/scale (5,) (need (32,))" in msg
    tr = random_tree(TR)
    assert "swap --tokenizer and --transformer" in _message(convert.tokenizer_from_flax, tr)
    assert "swap" in _message(convert.transformer_from_flax, tree, codebook_size=16)
    assert "top-level keys" in _message(convert.transformer_from_flax, {"params": {"foo": np.zeros(1)}})
    assert "do not belong together" in _message(convert.transformer_from_flax, tr, codebook_size=1024)


# ---------------------------------------------------------------- the command line
def test_cli_converts_and_the_result_samples(tmp_path, capsys):
    from maskgit.cli import main
    from maskgit.pipeline import Pipeline
    tok_cfg = VQGANConfig(channels=3, filters=32, channel_mult=(1, 2), embedding_dim=8, codebook_size=16,
                          image_size=8)  # GroupNorm's official 32 groups
    convert.write_flax_msgpack(random_tree(tok_cfg, seed=4), tmp_path / "tokenizer_imagenet256_checkpoint")
    convert.write_flax_msgpack(random_tree(TR, seed=5), tmp_path / "maskgit_imagenet256_checkpoint")
    out = tmp_path / "official"
    argv = ["convert", "official", "--tokenizer", str(tmp_path / "tokenizer_imagenet256_checkpoint"),
            "--transformer", str(tmp_path / "maskgit_imagenet256_checkpoint"), "--out", str(out)]
    assert main(argv) == 0
    assert "maskgit sample --model" in capsys.readouterr().out
    pipe = Pipeline.load(out)
    assert pipe.tokenizer.config == tok_cfg and pipe.transformer.config == TR
    assert pipe.class_names is None and pipe.transformer.meta["dataset"] == "imagenet"
    assert main(["sample", "--model", str(out), "--labels", "1", "--steps", "2", "--out",
                 str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    # refuses to overwrite; --force replaces; errors are one line without a traceback
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert main([*argv, "--force", "--dtype", "float16"]) == 0
    assert Pipeline.load(out).transformer.tok_emb.weight.dtype == torch.float32
    bad = ["convert", "official", "--tokenizer", str(tmp_path / "missing"), "--transformer",
           str(tmp_path / "maskgit_imagenet256_checkpoint"), "--out", str(tmp_path / "o2")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and not (tmp_path / "o2").exists()
