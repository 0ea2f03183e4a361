"""`maskgit train --init AMUSED --data IMAGES --sample-every N` on a tiny aMUSEd folder: OUT/samples_STEP.png every N
steps and at the end (as for the project's own models), grids of the model being trained (its LoRA adapters
applied) through the one Pipeline; sampling changes no trained number, no RNG state and no module's mode."""

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import maskgit
from maskgit.cli import main

amused_pipeline = pytest.importorskip("test_amused_pipeline")
lora_train = pytest.importorskip("test_lora_train")
SIZE = amused_pipeline.GRID * amused_pipeline.CELL  # the tiny model's image size
COLOURS, CORNERS = 4, 2  # the distinct captions of lora_train.captioned_images: 8 prompts


_one_thread = lora_train._one_thread  # the same one-thread fixture (autouse, per module)


@pytest.fixture(scope="module")
def amused(tmp_path_factory):
    root = tmp_path_factory.mktemp("amused_samples")
    return amused_pipeline.write_released(root / "base"), lora_train.captioned_images(root / "images", 16, SIZE)


def argv(amused, out, *extra):
    folder, images = amused
    return ["train", "--init", str(folder), "--data", str(images), "--out", str(out), "--device", "cpu", "--amp",
            "off", "--batch-size", "8", "--max-steps", "5", "--warmup-steps", "0", "--lr", "1e-2", "--save-every",
            "0", "--log-every", "1", *extra]


def grid_size(n: int, ncol: int = 4) -> tuple[int, int]:
    """make_grid's size for ``n`` labelled SIZE px images, 4 a row, enlarged to 128 px (pad 2, labels 15 px)."""
    cell = SIZE * max(1, 128 // SIZE)
    return ncol * (cell + 2) + 2, math.ceil(n / ncol) * (cell + 15 + 2) + 2


def check_png(path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == grid_size(COLOURS * CORNERS), (path, im.size)


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True])
def test_sample_every_writes_grids_and_changes_no_weight(amused, tmp_path, capsys, lora):
    extra = ["--lora", "4"] if lora else []
    sampled, plain = tmp_path / "sampled", tmp_path / "plain"
    assert main(argv(amused, sampled, "--sample-every", "2", *extra)) == 0
    assert main(argv(amused, plain, *extra)) == 0
    capsys.readouterr()
    # every 2 steps and at the end (step 5), as the project's own models; samples.png: the result as loaded
    assert sorted(p.name for p in sampled.glob("samples_*.png")) == [f"samples_{s:08d}.png" for s in (2, 4, 5)]
    assert not list(plain.glob("samples_*.png"))
    for p in [*sampled.glob("samples_*.png"), sampled / "samples.png"]:
        check_png(p)
    assert losses(sampled) == losses(plain)
    name = "adapter_model.safetensors" if lora else "transformer/diffusion_pytorch_model.safetensors"
    a, b = (load_file(str(run / "final" / name)) for run in (sampled, plain))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sample_every_at_the_last_step_draws_it_once(amused, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(argv(amused, run, "--sample-every", "5", "--max-steps", "5")) == 0
    capsys.readouterr()
    assert [p.name for p in run.glob("samples_*.png")] == ["samples_00000005.png"]


@pytest.mark.parametrize("value", ["-1", "-5"])
def test_a_negative_sample_every_is_one_line_before_training(amused, tmp_path, capsys, value):
    assert main(argv(amused, tmp_path / "bad", "--sample-every", value)) == 2
    err = capsys.readouterr().err.strip()
    assert "--sample-every must be >= 0" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()  # refused before the data is prepared


def test_the_sampler_leaves_rng_and_modes_and_uses_the_adapters(amused, tmp_path):
    from maskgit.families.amused import AmusedTransformer
    from maskgit.families.amused_train import AmusedMaskedTask, prepare, train_defaults, training_samples
    from maskgit.storage.amused import load_uvit
    from maskgit.training.lora import add_lora
    folder, images = amused
    data = prepare(folder, images, tmp_path / "data")
    cfg = train_defaults(True)
    model = AmusedTransformer(load_uvit(folder / "transformer"), data.hidden.shape[1], data.image_size)
    add_lora(model.uvit, 4, 4.0, ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"))
    task = AmusedMaskedTask(model, cfg, data.null, folder, {"rank": 4})
    task.train()
    model.uvit.encoder_proj.eval()  # a mode of its own: kept as it is
    modes = {n: m.training for n, m in task.named_modules()}
    sample = training_samples(folder, data, tmp_path, maskgit.Pipeline, seed=0)
    rng = torch.get_rng_state()
    sample(task, 1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in task.named_modules()} == modes
    assert all(p.device.type == "cpu" for p in task.parameters())
    sample(task, 3)  # the same model: the same grid (a fixed seed)
    with torch.no_grad():  # adapters that change the model change the grid
        for n, p in task.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    sample(task, 2)
    sample(task, 2)  # the loop's end call after the step's own: drawn once
    check_png(tmp_path / "samples_00000001.png")
    check_png(tmp_path / "samples_00000002.png")
    a, same, b = (Image.open(tmp_path / f"samples_{s:08d}.png").tobytes() for s in (1, 3, 2))
    assert a == same and a != b
