"""What a new user meets first: return types and argument checks of the Python API, the settings stored in the
PNGs the CLI writes, editing a sample grid, the steps strip, --help of the decoding flags, caption wrapping."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.pipeline import Pipeline, load
from maskgit.sampling import editing
from maskgit.storage.images import _fit_lines, _font, label_lines_needed


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return Pipeline.load(tiny_pipeline_dir)


IMG = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)


# ---------------------------------------------------------------- outpainting: one rule for CLI and API
def test_outpaint_by_zero_tokens_or_an_unknown_side_is_refused(pipe, tiny_pipeline_dir, tmp_path, capsys):
    for side, n, match in (("right", 0, "tokens must be an integer >= 1"), ("sideways", 2, "side must be one of"),
                           ("right", 8, "grid wider"), ("top", 2.0, "integer"), ("left", True, "integer")):
        with pytest.raises(MaskGITError, match=match):
            pipe.outpaint(IMG, side, n)
        with pytest.raises(MaskGITError, match=match.split()[0]):
            editing.check_outpaint(side, n, (8, 8))
    assert pipe.outpaint(IMG, "right", np.int64(2), steps=2, output="np").shape == (16, 20, 1)
    Image.fromarray(IMG).save(tmp_path / "in.png")
    for spec, needle in (("right:0", "tokens must be"), ("sideways:2", "side must be one of")):
        assert main(["edit", "--model", str(tiny_pipeline_dir), "--image", str(tmp_path / "in.png"), "--outpaint",
                     spec, "--out", str(tmp_path / "o.png")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- return types
def test_one_image_edits_return_one_image_and_a_batch_a_batch(pipe, tmp_path):
    pil = Image.fromarray(IMG)
    for out in (pipe.inpaint(pil, box=(0, 0, 4, 4), label=1, steps=2),
                pipe.class_edit(pil, box=(0, 0, 8, 8), label=2, steps=4),
                pipe.outpaint(pil, "bottom", 2, steps=2)):
        assert isinstance(out, Image.Image)
        out.save(tmp_path / "out.png")  # what failed on a list of one
    assert pipe.inpaint(IMG, box=(0, 0, 4, 4), steps=2, output="np").shape == (16, 16, 1)
    assert pipe.inpaint(torch.rand(1, 16, 16), box=(0, 0, 4, 4), steps=2, output="tensor").shape == (1, 16, 16)
    batch = torch.rand(3, 1, 16, 16)
    assert pipe.inpaint(batch, box=(0, 0, 4, 4), steps=2, output="np").shape == (3, 16, 16, 1)
    assert len(pipe.outpaint(batch, "left", 2, steps=2)) == 3


def test_generate_num_with_labels_means_that_many_of_each_label(pipe):
    four = pipe.generate([1, 2], num=2, seed=3, steps=2, output="np")
    assert np.array_equal(four, pipe.generate([1, 1, 2, 2], seed=3, steps=2, output="np"))
    assert pipe.generate(num=3, steps=2, output="np").shape[0] == 3  # num alone: unconditional


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": ["3"]}, "integer class ids, got '3'"), ({"labels": [True]}, "integer class ids"),
    ({"labels": [1.0]}, "integer class ids"), ({"labels": "3"}, "integer class ids"),
    ({"labels": [1], "num": 0}, "num must be an integer >= 1"), ({"labels": [1], "num": "2"}, "num must be"),
    ({"num": None}, "give class labels or a number")])
def test_generate_refuses_labels_and_counts_that_are_not_integers(pipe, kwargs, match):
    with pytest.raises(MaskGITError, match=match):
        pipe.generate(**kwargs, steps=2)


def test_generate_takes_numpy_and_torch_class_ids(pipe):
    a = pipe.generate(np.array([0, 2]), seed=1, steps=2, output="np")
    assert np.array_equal(a, pipe.generate(torch.tensor([0, 2]), seed=1, steps=2, output="np"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_device_without_cuda_is_one_clear_error(tiny_pipeline_dir):
    with pytest.raises(MaskGITError, match="no CUDA device is available"):
        load(tiny_pipeline_dir, device="cuda")
    with pytest.raises(MaskGITError, match="device must be"):
        load(tiny_pipeline_dir, device="gpu")
    assert load(tiny_pipeline_dir, device="auto").device.type == "cpu"


def test_pipeline_repr_names_model_size_classes_device_precision(tiny_pipeline_dir):
    text = repr(load(tiny_pipeline_dir))
    for part in (str(tiny_pipeline_dir), "16x16 px", "8x8 tokens", "4 classes (a, b, c, ...)", "device=cpu",
                 "precision=fp32"):
        assert part in text, text


def test_generate_calls_back_after_every_step_with_the_grid_so_far(tiny_pipeline_dir):
    pipe = load(tiny_pipeline_dir)
    seen = []
    out = pipe.generate([0, 2], steps=4, seed=3, output="tensor", callback=lambda t, grid: seen.append((t, grid)))
    assert [t for t, _ in seen] == [0, 1, 2, 3]
    assert all(g.shape == (2, 8, 8) for _, g in seen)
    masked = [int((g == pipe.mask_id).sum()) for _, g in seen]
    assert masked[0] > 0 and masked == sorted(masked, reverse=True) and masked[-1] == 0
    assert torch.equal(pipe.to_images(seen[-1][1].flatten(1)), out)  # the last grid is the images returned
    assert torch.equal(out, pipe.generate([0, 2], steps=4, seed=3, output="tensor"))  # watching changes nothing
    with pytest.raises(MaskGITError, match="callback must be callable"):
        pipe.generate([0], callback="print")


def test_one_return_convention_for_one_image_and_a_batch(tiny_pipeline_dir):
    pipe = load(tiny_pipeline_dir)
    batch = pipe.generate([0, 1], steps=2, output="tensor")
    one = pipe.inpaint(batch[0], box=(0, 0, 8, 8), steps=2, output="np")
    many = pipe.inpaint(batch, box=(0, 0, 8, 8), steps=2, output="np")
    assert one.shape == (16, 16, 1) and many.shape == (2, 16, 16, 1)
    assert len(pipe.inpaint(batch, box=(0, 0, 8, 8), steps=2)) == 2  # PIL: a list for a batch
    assert pipe.inpaint(batch[0], box=(0, 0, 8, 8), steps=2).size == (16, 16)  # and one image for one
    with pytest.raises(MaskGITError, match="unknown sampling setting"):  # checked before the image is encoded
        pipe.inpaint("no-such-file.png", box=(0, 0, 8, 8), colour=1)


def test_load_takes_precision_auto_as_the_cli_does(tiny_pipeline_dir):
    from maskgit.inference.precision import resolve_precision
    p = load(tiny_pipeline_dir, precision="auto")
    assert p.precision == resolve_precision("auto", "cpu") and p.precision in repr(p)
    assert p.generate([0], steps=2, output="np").shape == (1, 16, 16, 1)


# ---------------------------------------------------------------- what the CLI writes and prints
def _settings(path):
    return json.loads(Image.open(path).text["maskgit"])


def test_sample_prints_precision_and_stores_seed_and_settings_in_the_png(tiny_pipeline_dir, tmp_path, capsys):
    m = str(tiny_pipeline_dir)
    assert main(["sample", "--model", m, "--labels", "0,1", "--steps", "2", "--seed", "7", "--precision", "fp32",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "precision fp32, seed 7" in capsys.readouterr().out
    s = _settings(tmp_path / "g.png")
    assert (s["seed"], s["precision"], s["labels"], s["sampling"]["steps"]) == (7, "fp32", [0, 1], 2)
    assert s["sampling"]["order"] == "confidence" and s["model"] == m
    assert main(["sample", "--model", m, "--labels", "0,1", "--num", "2", "--steps", "2", "--batch-size", "3",
                 "--out", str(tmp_path / "d") + "/"]) == 0
    files = sorted((tmp_path / "d").glob("*.png"))
    last = _settings(files[3])
    assert (last["index"], last["chunk"], last["row"], last["label"], last["class"]) == (3, 1, 0, 1, "b")
    from maskgit.sampling.noise import chunk_seed
    assert last["chunk_seed"] == chunk_seed(0, 1)
    Image.fromarray(IMG).save(tmp_path / "in.png")
    assert main(["edit", "--model", m, "--image", str(tmp_path / "in.png"), "--box", "0,0,4,4", "--seed", "4",
                 "--out", str(tmp_path / "e.png")]) == 0
    assert "seed 4" in capsys.readouterr().out
    e = _settings(tmp_path / "e.png")
    assert (e["seed"], e["edit"], e["box"]) == (4, "inpaint", "0,0,4,4")


def test_edit_of_a_sample_grid_says_what_to_do_and_takes_a_cell(tiny_pipeline_dir, tmp_path, capsys):
    m = str(tiny_pipeline_dir)
    common = ["--model", m, "--labels", "0,1,2", "--steps", "2", "--seed", "5"]
    assert main(["sample", *common, "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["sample", *common, "--out", str(tmp_path / "one") + "/"]) == 0
    capsys.readouterr()
    out = str(tmp_path / "e.png")
    assert main(["edit", "--model", m, "--image", str(tmp_path / "grid.png"), "--box", "0,0,4,4", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--cell ROW,COL" in err and "--out DIR/" in err and len(err.strip().splitlines()) == 1
    # the cell is the very image that `--out DIR/` writes (the grid's enlargement undone exactly)
    from maskgit.commands.sample import _edit_input

    class A:
        image, cell = str(tmp_path / "grid.png"), "0,1"
    cell = _edit_input(A, 1, 16)
    single = np.asarray(Image.open(tmp_path / "one" / "000001.png"))
    assert np.array_equal((cell[0] * 255).round().byte().numpy(), single)
    assert main(["edit", "--model", m, "--image", str(tmp_path / "grid.png"), "--cell", "0,1", "--box", "0,0,4,4",
                 "--out", out]) == 0
    assert main(["edit", "--model", m, "--image", str(tmp_path / "grid.png"), "--cell", "3,3", "--box", "0,0,4,4",
                 "--out", out]) == 2
    assert "not in this grid of 3 images" in capsys.readouterr().err
    assert main(["edit", "--model", m, "--image", str(tmp_path / "one" / "000001.png"), "--cell", "0,0", "--box",
                 "0,0,4,4", "--out", out]) == 2
    assert "leave out --cell" in capsys.readouterr().err


def test_show_steps_has_one_row_per_requested_label_and_says_so(tiny_pipeline_dir, tmp_path, capsys):
    m, steps = str(tiny_pipeline_dir), str(tmp_path / "s.png")
    assert main(["sample", "--model", m, "--labels", "0,2", "--num", "3", "--steps", "3", "--show-steps", steps]) == 0
    printed = capsys.readouterr().out
    assert "2 rows (one per label), 3 steps and the final image each" in printed
    assert "decoded 2 images" in printed and "wrote 2 images" not in printed  # only the strip: 1 image per label
    cell = 16 * 2 + 2  # --scale 2, pad 2
    assert Image.open(steps).size == (4 * cell + 2, 2 * cell + 2)
    assert _settings(steps)["rows"] == [0, 2]
    assert main(["sample", "--model", m, "--labels", "0,2", "--num", "3", "--steps", "3", "--show-steps", steps,
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "wrote 6 images" in capsys.readouterr().out and Image.open(steps).size == (4 * cell + 2, 2 * cell + 2)


def test_sample_help_names_the_models_own_defaults_and_the_choices(capsys, monkeypatch):
    from maskgit.commands.parser import stored_sampling_defaults
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping inside "fashion-mnist"
    name, stored = stored_sampling_defaults()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{confidence,halton,random}" in text and "{constant,linear}" in text and "cosine, linear" in text
    for field, value in stored.items():
        assert f"{name}: {value}; without one:" in text, field
    assert stored.get("order") == "halton" and "fashion-mnist: halton; without one: confidence" in text
    assert "default: 8, unless the model stores its own" in text  # steps: the shipped model keeps SampleConfig's


def test_cli_takes_a_leading_double_dash_as_torchrun_passes_it(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--", "sample", "--help"])
    assert e.value.code == 0 and "--show-steps" in capsys.readouterr().out


# ---------------------------------------------------------------- data show captions
def test_captions_wrap_and_cut_between_words_not_inside_them():
    font, caption = _font(11), "a small red circle left of a large blue square"
    words = caption.split()
    for width, lines in ((96, 1), (96, 2), (64, 2)):
        got = _fit_lines(caption, font, width, lines)
        for line in got:
            assert all(w in words for w in line.rstrip("…").split()), got  # whole words only
    need = label_lines_needed([caption, "x"], 96)
    full = _fit_lines(caption, font, 96, need)
    assert " ".join(full) == caption  # enough lines for the whole caption: nothing cut


# ---------------------------------------------------------------- the runtime: same kinds as torch
def test_runtime_inpaint_returns_what_the_torch_inpaint_returns(pipe, tiny_pipeline_dir, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from maskgit import runtime
    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tiny_pipeline_dir), "--out", str(out)]) == 0
    rt = runtime.load(out)
    a, t = rt.inpaint(IMG, box=(0, 0, 4, 4), steps=2), pipe.inpaint(IMG, box=(0, 0, 4, 4), steps=2, output="np")
    assert a.shape == t.shape == (16, 16, 1) and a.dtype == t.dtype
    p, q = rt.inpaint(IMG, box=(0, 0, 4, 4), steps=2, output="pil"), pipe.inpaint(IMG, box=(0, 0, 4, 4), steps=2)
    assert isinstance(p, Image.Image) and (p.size, p.mode) == (q.size, q.mode)
    assert rt.generate([0, 3], num=2, steps=2).shape == (4, 16, 16, 1)
    with pytest.raises(MaskGITError, match="integer class ids"):
        rt.generate(["3"], steps=2)


# ---------------------------------------------------------------- installs and the README's torchrun line
ROOT = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, _NoTorch())
sys.path.insert(0, sys.argv[1])
exec(sys.argv[2])
import maskgit
assert maskgit.__file__.startswith(sys.argv[1]), maskgit.__file__
print("ok", images.shape, edited.shape)
"""


def _readme_block(start: str) -> str:
    text = (ROOT / "README.md").read_text()
    i = text.index(start)
    return text[i:text.index("```", i + 3)]


@pytest.mark.slow
def test_runtime_distribution_holds_no_torch_and_runs_the_readme_example(tmp_path):
    """runtime/pyproject.toml builds a wheel whose modules import no torch and whose requirements name none; the
    README's runtime example runs from that wheel alone with torch blocked."""
    import ast
    import shutil
    import subprocess
    import sys
    import zipfile
    tree = tmp_path / "tree"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src" / "maskgit", tree / "src" / "maskgit",
                    ignore=shutil.ignore_patterns("weights", "__pycache__", "web"))
    (tree / "runtime").mkdir()
    shutil.copy(ROOT / "runtime" / "pyproject.toml", tree / "runtime")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(tree / "runtime")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("maskgit_suite_runtime-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
        meta = next(n for n in z.namelist() if n.endswith("METADATA"))
        requires = [ln for ln in z.read(meta).decode().splitlines() if ln.startswith("Requires-Dist:")]
    assert requires and not any("torch" in ln for ln in requires), requires
    for py in site.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torch" for n in names), py
    assert main(["export", "onnx", "--model", "fashion-mnist", "--out", str(tmp_path / "exported")]) == 0
    example = _readme_block("from maskgit import runtime")
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(site), example], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["ok", "(3,", "32,", "32,", "1)", "(32,", "32,", "1)"], r.stdout


@pytest.mark.slow
def test_readme_torchrun_line_runs_with_two_processes(tmp_path):
    """The README's torchrun command as written, with a small --num: torchrun must not read maskgit's options."""
    import shlex
    import shutil
    import subprocess
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    line = next(ln for ln in _readme_block("```bash\nmaskgit sample --labels 0,3,7").splitlines()
                if ln.startswith("torchrun"))
    argv = shlex.split(line.split("  #")[0])
    assert argv[argv.index("--num") + 1] == "100" and "--" in argv
    argv[argv.index("--num") + 1] = "1"
    argv += ["--steps", "2", "--batch-size", "5"]  # 10 images in 2 chunks: one per process
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "2 processes" in r.stdout
    z = np.load(tmp_path / "ddp.npz")
    assert z["arr_0"].shape == (10, 32, 32, 3) and z["arr_1"].tolist() == list(range(10))


def test_num_repeats_each_prompt_and_its_negative_prompt_as_it_repeats_labels():
    from maskgit.sampling.arithmetic import batch_rows
    assert batch_rows([1, 2], 2) == ([1, 1, 2, 2], None, None)
    assert batch_rows(None, 3) == ([-1, -1, -1], None, None)
    assert batch_rows(None, 2, ["a", "b"], ["x", "y"]) == ([-1] * 4, ["a", "a", "b", "b"], ["x", "x", "y", "y"])
    assert batch_rows(None, 2, ["a"], "x") == ([-1, -1], ["a", "a"], "x")
    for args, match in ((([1], None, ["a"]), "not both"), ((None, None, "a"), "list of strings"),
                        ((None, None, ["a", "b"], ["x"]), "1 negative prompts for 2"), (([1], None, None, "x"),
                                                                                        "need prompts")):
        with pytest.raises(MaskGITError, match=match):
            batch_rows(*args)


def test_readme_mask_line_makes_the_mask_its_edit_line_reads(tmp_path):
    """The README's 'Use it' block: the line that writes mask.png and the edit lines that read it and in/000000.png
    run as written (the sample line first, as the block has it), each with exit code 0 and its output file."""
    import shlex
    import subprocess
    import sys
    lines = [ln.split("  #")[0].strip() for ln in _readme_block("```bash\nmaskgit sample --labels 0,3,7").splitlines()]
    wanted = [ln for ln in lines if ln.startswith("maskgit sample --labels 3 --num 4 --out in/")
              or ln.startswith("python -c") or "--mask mask.png" in ln]
    assert len(wanted) == 3 and "mask.png" in wanted[1], wanted
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    for line in wanted:
        argv = shlex.split(line)
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", "maskgit", *argv[1:]]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, (line, (r.stdout + r.stderr)[-2000:])
    from PIL import Image
    assert Image.open(tmp_path / "mask.png").size == (32, 32)
    assert Image.open(tmp_path / "out.png").size == Image.open(tmp_path / "in" / "000000.png").size


def _readme_blocks_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "benchmarks" / "readme_blocks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_blocks_that_cannot_run_offline_on_a_cpu_say_why_and_the_rest_carry_no_placeholder():
    rb = _readme_blocks_module()
    blocks = rb.blocks(ROOT / "README.md")
    reasons = {i: rb.skip_reason(body) for i, (_, _, body) in enumerate(blocks)}
    gpu = [i for i, (_, _, body) in enumerate(blocks) if "--preset maskgit-small-8x8 --out runs/mg" in body]
    long = [i for i, (_, _, body) in enumerate(blocks) if "benchmarks/run_all.sh" in body]
    assert len(gpu) == 1 and "sized for a GPU" in reasons[gpu[0]]
    assert len(long) == 1 and "over an hour" in reasons[long[0]]
    # the short evaluation lines are not in the long block, so they run
    assert not any("maskgit eval" in blocks[i][2] for i in long)
    for i, (_, _, body) in enumerate(blocks):
        if reasons[i] is None:  # a block that runs as written refers to no file the user must bring
            assert "imagefolder:DIR" not in body and "ref.npz" not in body, f"block {i} has a placeholder"
