"""ONNX export and the PyTorch-free runtime: graph parity with torch, the same tokens from the same noise, editing,
and a run in a process where `import torch` fails."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskgit.cli import main
from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.pipeline import Pipeline, load
from maskgit.sampling.decoding import decode as torch_decode

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from maskgit import runtime  # noqa: E402
from maskgit.storage.files import sha256_file as sha256  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(out), "--int8"]) == 0
    return out


class TorchNoise:
    """Feeds the runtime the uniform draws of a torch.Generator, in the order the torch decoder makes them."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, shape):
        return torch.rand(shape, generator=self.g).numpy()


def test_model_card_lists_graphs_with_their_hashes(exported):
    card = json.loads((exported / "model_card.json").read_text())
    assert set(card["files"]) == {"transformer", "decoder", "encoder", "transformer_int8"}
    for f in card["files"].values():
        assert sha256(exported / f["path"]) == f["sha256"]
    assert card["opset"] == 20 and card["grid"] == [8, 8]
    assert card["mask_id"] == card["transformer"]["codebook_size"] + 5  # 32 codes, 4 classes, "no class"
    assert card["sampling"]["steps"] == SampleConfig().steps and card["class_names"] == ["a", "b", "c", "d"]


def test_transformer_graph_uses_the_gelu_operator(exported):
    """The MLP's GELU is one opset-20 Gelu node per block (tanh form), which onnxruntime fuses with its bias, not the
    Tanh/Pow/Mul decomposition older opsets need."""
    import onnx
    card = json.loads((exported / "model_card.json").read_text())
    graph = onnx.load(str(exported / card["files"]["transformer"]["path"])).graph
    gelus = [n for n in graph.node if n.op_type == "Gelu"]
    assert len(gelus) == card["transformer"]["depth"] + 1  # every block's MLP and the head
    assert all(onnx.helper.get_attribute_value(a) == b"tanh" for n in gelus for a in n.attribute
               if a.name == "approximate")
    assert not any(n.op_type == "Tanh" for n in graph.node)


def test_attention_is_one_fused_op_per_block_unless_portable(tiny_pipeline_dir, exported, tmp_path):
    import onnx

    def ops(root):
        card = json.loads((root / "model_card.json").read_text())
        nodes = onnx.load(str(root / card["files"]["transformer"]["path"])).graph.node
        return card, [(n.domain, n.op_type) for n in nodes]
    card, fused = ops(exported)
    assert fused.count(("com.microsoft", "MultiHeadAttention")) == card["transformer"]["depth"]
    assert ("", "Softmax") not in fused and "MultiHeadAttention" in card["operators"]
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "p"),
                 "--portable", "--no-encoder"]) == 0
    card, portable = ops(tmp_path / "p")
    assert all(d in ("", "ai.onnx") for d, _ in portable) and ("", "Softmax") in portable
    assert card["operators"] == "standard"
    test_graphs_match_torch_at_another_batch_size(tiny_pipeline_dir, tmp_path / "p", encoder=False)


def test_graphs_match_torch_at_another_batch_size(tiny_pipeline_dir, exported, encoder=True):
    pipe = load(tiny_pipeline_dir)
    rt = runtime.load(exported)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (5, 64), generator=g)
    tokens[torch.rand(5, 64, generator=g) < 0.5] = pipe.mask_id
    labels = torch.tensor([0, 3, -1, 2, -1])
    with torch.no_grad():
        ref = pipe.transformer(tokens, labels).numpy()
    got = rt.session("transformer").run(None, {"tokens": tokens.numpy(), "labels": labels.numpy()})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4
    grid = torch.randint(0, 32, (3, 8, 8), generator=g)
    images = pipe.tokenizer.decode(grid).numpy()
    assert np.abs(rt.to_images(grid.numpy()) - images).max() <= 1 / 255
    if encoder:
        assert np.array_equal(rt.encode(images), pipe.tokenizer.encode(torch.from_numpy(images)).numpy())


@pytest.mark.parametrize("kw", [dict(steps=6), dict(steps=5, cfg=1.5, schedule="linear"),
                                dict(steps=8, schedule="exp", top_k=8, cfg=1.0, cfg_schedule="linear"),
                                dict(steps=4, schedule="log", top_p=0.9, choice_temperature=2.0, temperature=0.7),
                                dict(steps=6, order="halton", cfg=1.0), dict(steps=5, order="random")])
def test_runtime_decodes_the_same_tokens_from_the_same_noise(tiny_pipeline_dir, exported, kw):
    pipe, rt = load(tiny_pipeline_dir), runtime.load(exported)
    cfg = dataclasses.replace(SampleConfig(), **kw)
    labels = torch.tensor([0, 1, 2, 3, -1, 1])
    start = torch.full((6, 64), pipe.mask_id)
    start[2:4, :20] = torch.randint(0, 32, (2, 20), generator=torch.Generator().manual_seed(9))  # partial grids
    same = 0
    for seed in range(3):
        want = torch_decode(pipe.logits_fn(labels), start, cfg, pipe.mask_id, torch.Generator().manual_seed(seed))
        got = runtime.decode(rt.logits_fn(labels.numpy()), start.numpy(), cfg, rt.mask_id, TorchNoise(seed))
        assert (got[2:4, :20] == start[2:4, :20].numpy()).all() and (got != rt.mask_id).all()
        same += int(np.array_equal(got, want.numpy()))
    assert same == 3


def test_each_step_leaves_the_scheduled_number_masked(exported):
    rt = runtime.load(exported)
    left = []
    rt.decode_tokens(np.full((2, 64), rt.mask_id), [0, 1], seed=3, steps=8,
                     callback=lambda step, cur, sampled: left.append((cur == rt.mask_id).sum(1).tolist()))
    want = [int(np.floor(np.float32(64) * np.float32(np.cos(np.pi / 2 * (t + 1) / 8)))) for t in range(7)]
    assert left == [[max(w, 1)] * 2 for w in want] + [[0, 0]]


def test_runtime_generates_and_inpaints_with_numpy_seeds(exported):
    rt = runtime.load(exported)
    a = rt.generate([0, 1, 2], seed=4, steps=4, cfg=1.0)
    assert a.shape == (3, 16, 16, 1) and a.dtype == np.uint8
    assert np.array_equal(a, rt.generate([0, 1, 2], seed=4, steps=4, cfg=1.0))  # a seed fixes the images
    alone = rt.generate([1], seed=[8], steps=4)
    assert np.array_equal(rt.generate([0, 1], seed=[7, 8], steps=4)[1], alone[0])  # per-row seeds
    out = rt.inpaint(a[0], box=(4, 4, 6, 6), label=2, seed=1, steps=4)
    keep = np.ones((16, 16), bool)
    keep[4:10, 4:10] = False  # cells are 2x2 px: the box touches exactly these
    assert out.shape == (16, 16, 1) and np.array_equal(out[keep], a[0][keep])


def test_int8_transformer_stays_close_to_fp32(exported):
    tokens = np.full((4, 64), 37)
    tokens[:, ::2] = np.arange(32)
    feed = {"tokens": tokens, "labels": np.array([0, 1, 2, -1])}
    fp32 = runtime.load(exported).session("transformer").run(None, feed)[0]
    rt8 = runtime.load(exported, int8=True)
    int8 = rt8.session("transformer_int8").run(None, feed)[0]
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() > 0.8
    assert 0 < np.abs(fp32 - int8).max() < 0.2 * np.abs(fp32).max()  # quantised: close, not equal
    assert rt8.generate([0, 1], steps=3).shape == (2, 16, 16, 1)


def test_runtime_rejects_bad_input(exported, tmp_path):
    rt = runtime.load(exported)
    with pytest.raises(MaskGITError, match="out of range"):
        rt.generate([4])
    with pytest.raises(MaskGITError, match="box"):
        rt.inpaint(np.zeros((16, 16), np.uint8), box=(10, 10, 8, 8))
    with pytest.raises(MaskGITError, match="model_card.json"):
        runtime.load(tmp_path)
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (bad / "decoder.onnx").write_bytes(b"garbage")
    with pytest.raises(MaskGITError, match="SHA-256"):
        runtime.load(bad)


def test_export_refuses_text_models_and_bad_out(tiny_pipeline_dir, tmp_path):
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.storage.onnx import export_pipeline
    pipe = load(tiny_pipeline_dir)
    text = MaskGITTransformer(dataclasses.replace(pipe.transformer.config, text_dim=8, text_len=4))
    with pytest.raises(MaskGITError, match="text-conditioned"):
        export_pipeline(Pipeline(pipe.tokenizer, text), tmp_path / "t")
    (tmp_path / "file").write_text("x")
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "file")]) == 2


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, _NoTorch())
try:
    import torch
    raise SystemExit("torch imported")
except ImportError:
    pass
from maskgit import runtime
pipe = runtime.load(sys.argv[1])
images = pipe.generate([0, 1, 3], steps=4, seed=0, cfg=1.0)
edited = pipe.inpaint(images[0], box=(0, 0, 8, 8), label=2, steps=4)
assert images.shape == (3, 16, 16, 1) and edited.shape == (16, 16, 1) and images.dtype.name == "uint8"
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", int(images.std() > 0))
"""


def test_runtime_runs_where_torch_cannot_be_imported(exported):
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(exported)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["ok", "1"]
