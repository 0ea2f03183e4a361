"""The one class-label rule (sampling.arithmetic.check_class_ids) and every layer that takes class labels: the
PyTorch pipeline, the model, the numpy runtime, the server and the CLI refuse the same bad label with the same
words."""

import asyncio
import dataclasses

import numpy as np
import pytest
import torch

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.models.transformer import MaskGITTransformer
from maskgit.sampling.arithmetic import check_class_ids

NAMES = ["a", "b", "c", "d"]  # the tiny pipeline's classes (conftest.tiny_pipeline_dir), with a null class
BAD = "class label(s) [9] out of range: this model has classes 0..3 (a, b, c, d)"
NO_NULL = "this model has no 'no class' id: give a class label for every sample"


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return maskgit.load(tiny_pipeline_dir)


# ---------------------------------------------------------------- the rule

def test_valid_labels_come_back_as_ints():
    assert check_class_ids([0, 3, -1], 4, True) == [0, 3, -1]
    assert check_class_ids(np.array([2, 1]), 4, False) == [2, 1]
    assert check_class_ids(torch.tensor([3]), 4, False) == [3]
    assert check_class_ids(2, 4, False) == [2]
    assert check_class_ids([], 4, False) == []
    assert check_class_ids([-1, -1], 0, False) == [-1, -1]  # a model without classes: "no class" only


@pytest.mark.parametrize("labels, message", [
    ([9], "class label(s) [9] out of range: this model has classes 0..3"),
    ([0, -2, 4], "class label(s) [-2, 4] out of range: this model has classes 0..3"),
    (["3"], "integer class ids, got '3'"),
    ([True], "integer class ids, got True"),
    ([1.0], "integer class ids, got 1.0"),
])
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(MaskGITError) as e:
        check_class_ids(labels, 4, True)
    assert message in str(e.value), str(e.value)


def test_no_class_needs_a_null_class():
    assert check_class_ids([-1], 4, True) == [-1]
    with pytest.raises(MaskGITError) as e:
        check_class_ids([1, -1], 4, False)
    assert str(e.value) == NO_NULL
    with pytest.raises(MaskGITError, match="out of range: this model has no classes"):
        check_class_ids([0], 0, False)


def test_the_message_names_the_classes():
    with pytest.raises(MaskGITError) as e:
        check_class_ids([9], 4, True, NAMES)
    assert str(e.value) == BAD
    with pytest.raises(MaskGITError) as e:
        check_class_ids([9], 4, True, NAMES, what="--labels class")
    assert str(e.value).startswith("--labels class(s) [9] out of range")


# ---------------------------------------------------------------- each layer: the same refusal, the same words

def test_pipeline_refuses_with_the_rule(pipe):
    for call in (lambda: pipe.generate([9]), lambda: pipe.check_labels([0, 9])):
        with pytest.raises(MaskGITError) as e:
            call()
        assert str(e.value) == BAD
    no_null = maskgit.Pipeline(pipe.tokenizer, MaskGITTransformer(
        dataclasses.replace(pipe.transformer.config, null_class=False)).eval())
    with pytest.raises(MaskGITError) as e:
        no_null.generate(num=1)
    assert str(e.value) == NO_NULL


def test_model_keeps_the_rule_for_direct_calls(pipe):
    m = pipe.transformer
    with pytest.raises(MaskGITError) as e:
        m.cond_ids(torch.tensor([0, 9]), 2, "cpu")
    assert str(e.value) == BAD  # the class names come from the checkpoint's metadata
    no_null = MaskGITTransformer(dataclasses.replace(m.config, null_class=False))
    with pytest.raises(MaskGITError) as e:
        no_null.cond_ids(None, 2, "cpu")
    assert str(e.value) == NO_NULL
    assert no_null.cond_ids(torch.tensor([3, 0]), 2, "cpu").tolist() == [m.config.codebook_size + 3,
                                                                          m.config.codebook_size]


def test_runtime_refuses_with_the_rule(tiny_pipeline_dir, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from maskgit import runtime
    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(out), "--no-encoder"]) == 0
    rt = runtime.load(out)
    with pytest.raises(MaskGITError) as e:
        rt.generate([9])
    assert str(e.value) == BAD
    with pytest.raises(MaskGITError, match="integer class ids"):
        rt.generate([True])


def post_generate(pipe, *bodies):
    """The answers of a live app (in process) to POST /v1/generate with each body, in order."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from maskgit.serving.app import ServerConfig, create_app

    async def scenario():
        app = create_app(pipe, "tiny", ServerConfig())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
                return [await c.post("/v1/generate", json=b) for b in bodies]

    return asyncio.run(scenario())


def test_server_answers_422_naming_the_field(pipe):
    many, one = post_generate(pipe, {"labels": [0, 9]}, {"label": 9})
    assert many.status_code == 422 and many.json()["error"] == f"labels.1: {BAD}"
    assert one.status_code == 422 and one.json()["error"] == f"label: {BAD}"


@pytest.mark.parametrize("out", ["grid.png", "samples.npz", "folder/"])
def test_cli_fails_in_one_line_before_writing(tiny_pipeline_dir, tmp_path, capsys, out):
    target = tmp_path / out
    argv = ["sample", "--model", str(tiny_pipeline_dir), "--labels", "1,9", "--steps", "2", "--out",
            str(target) + ("/" if out.endswith("/") else "")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maskgit sample: error: {BAD}", err
    assert not target.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the sampling config: one rule for both pipelines

def test_a_models_sampling_config_is_one_rule():
    from maskgit.config import SampleConfig
    from maskgit.sampling.arithmetic import model_sample_config
    base = SampleConfig(steps=6, order="halton")
    cfg = model_sample_config(base, {"steps": None, "cfg": 2.0}, can_guide=True)
    assert (cfg.steps, cfg.order, cfg.cfg) == (6, "halton", 2.0)  # None keeps the model's default
    with pytest.raises(MaskGITError, match=r"^unknown sampling setting\(s\): colour, size$"):
        model_sample_config(base, {"colour": 1, "size": 2}, can_guide=True)
    with pytest.raises(MaskGITError, match="without a 'no class' id, so it cannot use CFG"):
        model_sample_config(base, {"cfg": 1.0}, can_guide=False)
    with pytest.raises(MaskGITError, match="temperature must be a finite number"):
        model_sample_config(base, {"temperature": float("nan")}, can_guide=True)


def test_both_pipelines_refuse_settings_alike(pipe, tiny_pipeline_dir, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import json

    from maskgit import runtime
    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(out), "--no-encoder"]) == 0
    rt = runtime.load(out)
    for kw in ({"colour": 1}, {"steps": 0}, {"schedule": "zigzag"}, {"top_p": 2}):
        with pytest.raises(MaskGITError) as torch_err:
            pipe.generate([0], **kw)
        with pytest.raises(MaskGITError) as numpy_err:
            rt.generate([0], **kw)
        assert str(torch_err.value) == str(numpy_err.value), kw
    assert rt.sample_config(schedule="pow2").schedule == pipe.sample_config(schedule="pow2").schedule
    card = json.loads((out / "model_card.json").read_text())
    card["sampling"]["temperature"] = -1  # a damaged card's defaults: one line naming the card, at load
    (out / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(MaskGITError, match=r"model_card\.json: meta\.sampling: .*temperature must be >= 0"):
        runtime.load(out)


def test_server_takes_the_schedule_aliases_the_library_takes(pipe):
    import base64
    import io

    from PIL import Image
    r, = post_generate(pipe, {"labels": [1], "steps": 3, "schedule": "pow2", "seed": 5})
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    want = pipe.generate(labels=[1], steps=3, schedule="square", seed=5, output="np")[0]
    assert np.array_equal(got, want.reshape(got.shape))
