"""`maskgit train --lora RANK`: on the project's transformer (only the adapters train, the loss goes down, the adapter
folder loads with maskgit.load(..., lora=DIR), resume is exact, --grad-checkpointing changes no number) and on a tiny
aMUSEd folder (`--init AMUSED --data IMAGES`, LoRA and full fine-tuning); the captioned image folder."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError

COMMON = ["--batch-size", "16", "--warmup-steps", "2", "--log-every", "1", "--device", "cpu",
          "--label-smoothing", "0", "--amp", "off"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is ~100x faster than two on a busy 2-core machine (no spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pattern_store(path, seed, n=128):
    """8x8 grids of 32 codes: one fixed pattern per class (a-d), 20% of the tokens replaced at random."""
    from maskgit.data.tokenstore import write_store
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    toks = rng.integers(0, 32, size=(4, 8, 8))[labels]
    noise = rng.random(toks.shape) < 0.2
    toks[noise] = rng.integers(0, 32, size=int(noise.sum()))
    write_store(path, toks, labels=labels, meta={"codebook_size": 32, "classes": list("abcd")})
    return path


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tiny_pipeline_dir, tmp_path_factory):
    """A pipeline folder whose transformer was trained (80 steps on store A): a base worth adapting."""
    root = tmp_path_factory.mktemp("lora")
    store = pattern_store(root / "A", 1)
    assert main(["train", "--tokens", str(store), "--init", str(tiny_pipeline_dir / "maskgit"), "--out",
                 str(root / "pre"), "--max-steps", "80", "--lr", "1e-2", "--save-every", "0", *COMMON]) == 0
    shutil.copytree(tiny_pipeline_dir / "tokenizer", root / "pipe" / "tokenizer")
    shutil.copytree(root / "pre" / "final", root / "pipe" / "maskgit")
    return root / "pipe"


def lora_argv(base, store, out, *extra):
    return ["train", "--tokens", str(store), "--init", str(base / "maskgit"), "--lora", "4", "--out", str(out),
            "--max-steps", "30", "--lr", "1e-2", "--save-every", "10", "--keep-last", "3", *COMMON, *extra]


@pytest.fixture(scope="module")
def lora_run(base):
    store = pattern_store(base.parent / "B", 2)  # new patterns to learn
    assert main(lora_argv(base, store, base.parent / "run")) == 0
    return base.parent / "run", store


def test_only_the_adapters_train_and_the_loss_goes_down(base, lora_run):
    run, _ = lora_run
    final = run / "final"
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "manifest.json"]
    assert (final / "adapter_model.safetensors").stat().st_size < 50_000
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert cfg["rank"] == 4 and any(t.endswith("attn.qkv") for t in cfg["targets"])
    init = load_file(str(base / "maskgit" / "model.safetensors"))
    trained = load_file(str(run / "checkpoints" / "step_00000030" / "model.safetensors"))
    for k, v in init.items():  # every base weight (wrapped layers under .base) is bit-identical
        k2 = k if k in trained else k.rpartition(".")[0] + ".base." + k.rpartition(".")[2]
        assert torch.equal(trained[k2], v), k
    assert {k for k in trained if k not in init and ".base." not in k} == \
        {f"{t}.{s}" for t in cfg["targets"] for s in ("lora_A", "lora_B")}
    loss = losses(run)
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.3, loss


def test_the_adapter_loads_with_maskgit_load_and_changes_outputs(base, lora_run):
    from maskgit.storage.checkpoint import load_model
    from maskgit.training.lora import load_lora
    run, _ = lora_run
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 32, (2, 64), generator=g), torch.tensor([0, 3])
    x[:, ::2] = 32  # the mask id
    plain, tuned = maskgit.load(base), maskgit.load(base, lora=run / "final")
    want = load_lora(load_model(base / "maskgit", "transformer"), run / "final")(x, y)
    torch.testing.assert_close(tuned.transformer(x, y), want, rtol=1e-4, atol=1e-4)  # merged == unmerged
    assert (tuned.transformer(x, y) - plain.transformer(x, y)).abs().max() > 0.1
    a, b = plain.generate([0, 1, 2, 3], steps=4, output="tensor"), tuned.generate([0, 1, 2, 3], steps=4,
                                                                                    output="tensor")
    assert not torch.equal(a, b)
    with pytest.raises(MaskGITError, match="is a LoRA adapter, not a model"):
        maskgit.load(run / "final")


def test_resume_mid_run_ends_where_the_unbroken_run_ends(base, lora_run, tmp_path, capsys):
    run, store = lora_run
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step_00000030")  # as if stopped after step 20's checkpoint
    assert main(lora_argv(base, store, cut, "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out
    a, b = (load_file(str(d / "final" / "adapter_model.safetensors")) for d in (run, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(cut) == losses(run)
    # other LoRA settings, or none, cannot continue it
    assert main([*lora_argv(base, store, cut, "--resume"), "--lora-alpha", "8"]) == 2
    assert "same --lora settings" in capsys.readouterr().err


def test_lora_needs_a_model_to_adapt(lora_run, tmp_path, capsys):
    _, store = lora_run
    assert main(["train", "--tokens", str(store), "--preset", "tiny", "--lora", "4", "--out", str(tmp_path / "r"),
                 *COMMON]) == 2
    assert "--init" in capsys.readouterr().err


@pytest.mark.parametrize("lora", [False, True])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(base, lora):
    from maskgit.config import TrainConfig
    from maskgit.data.tokenstore import TokenStore
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.storage.checkpoint import load_model
    from maskgit.training.grad_checkpoint import enable_grad_checkpointing
    from maskgit.training.loop import StepContext
    from maskgit.training.lora import add_lora
    from maskgit.training.memory import saved_activation_bytes
    from maskgit.training.objectives import MaskedTokenTask
    src = load_model(base / "maskgit", "transformer")
    m = MaskGITTransformer(dataclasses.replace(src.config, dropout=0.2))  # dropout: the RNG must be replayed
    m.load_state_dict(src.state_dict())
    if lora:
        add_lora(m, 4)
    c = copy.deepcopy(m)
    assert "blocks" in enable_grad_checkpointing(c)
    batch = TokenStore(base.parent / "A").batch(torch.arange(16))
    ctx = StepContext(0, 0, 16, 0, 1, torch.device("cpu"))
    out = []
    for model in (m, c):
        task = MaskedTokenTask(model, TrainConfig(label_smoothing=0.0)).train()
        torch.manual_seed(0)
        loss, _ = task(batch, ctx)
        loss.backward()
        out.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert torch.equal(out[0][0], out[1][0])
    assert out[0][1].keys() == out[1][1].keys() and out[0][1]
    for n in out[0][1]:
        torch.testing.assert_close(out[0][1][n], out[1][1][n], rtol=1e-5, atol=1e-7)
    probe = {k: v[:2] for k, v in batch.items()}
    kept = [saved_activation_bytes(MaskedTokenTask(x, TrainConfig()), probe, torch.device("cpu")) for x in (m, c)]
    assert kept[1] < kept[0]  # the memory check sees the saving
    torch.save(c.state_dict(), __import__("io").BytesIO())  # names unchanged, still serialisable
    assert set(c.state_dict()) == set(m.state_dict())


def test_grad_checkpointing_flag_first_step_is_the_same(base, lora_run, tmp_path):
    run, store = lora_run
    argv = lora_argv(base, store, tmp_path / "gc", "--grad-checkpointing")
    argv[argv.index("--max-steps") + 1] = "1"
    assert main(argv) == 0
    a, b = rows(run)[0], rows(tmp_path / "gc")[0]
    assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])


# ---------------------------------------------------------------- aMUSEd

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def captioned_images(folder, n, size):
    """``n`` images (a colour, a black or white corner) captioned half by .txt files, half by captions.jsonl."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name, corner = list(COLOURS)[i % 4], "white" if i % 3 else "black"
        a = np.zeros((size, size, 3), np.uint8) + np.array(COLOURS[name], np.uint8)
        a[: size // 2, : size // 2] = 255 if corner == "white" else 0
        Image.fromarray(a).save(folder / f"{i:03d}.png")
        caption = f"a {name} square, {corner} corner"
        if i % 2:
            (folder / f"{i:03d}.txt").write_text(caption)
        else:
            lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": caption}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def amused(tmp_path_factory):
    amused_pipeline = pytest.importorskip("test_amused_pipeline")
    root = tmp_path_factory.mktemp("amused")
    folder = amused_pipeline.write_released(root / "base")
    return folder, captioned_images(root / "images", 20, amused_pipeline.GRID * amused_pipeline.CELL)


def amused_argv(folder, images, out, *extra):
    return ["train", "--init", str(folder), "--data", str(images), "--out", str(out), "--log-every", "1",
            "--device", "cpu", "--amp", "off", *extra]


def test_amused_lora_run_end_to_end(amused, tmp_path, capsys):
    from maskgit.storage.checkpoint import load_train_state
    folder, images = amused
    run = tmp_path / "run"
    lora = ["--lora", "4", "--max-steps", "30", "--lr", "1e-2", "--save-every", "10", "--keep-last", "3"]
    assert main(amused_argv(folder, images, run, *lora)) == 0
    out = capsys.readouterr().out
    assert "tokenizing 20 images" in out and "LoRA rank 4" in out and "samples of 8 training captions" in out
    loss = losses(run)
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.2, loss
    assert (run / "samples.png").stat().st_size > 0
    tensors, _ = load_train_state(run / "checkpoints" / "step_00000030")  # the adapters and their AdamW state only
    assert all("lora_" in k for k in tensors if k.startswith("task."))
    prompts = ["a red square, white corner", "a blue square, black corner"]
    plain, tuned = maskgit.load(folder), maskgit.load(folder, lora=run / "final")
    imgs = tuned.generate(prompts=prompts, steps=3, output="tensor")
    assert imgs.shape == (2, 3, 16, 16)
    cond = tuned.text_condition(prompts)
    x = torch.full((2, 16), plain.mask_id)
    diff = (tuned.transformer(x, text=cond.emb, pooled=cond.pooled) -
            plain.transformer(x, text=cond.emb, pooled=cond.pooled)).abs().max()
    assert diff > 1e-3

    cut = tmp_path / "cut"  # resume after step 20: the same adapter as the unbroken run, from the cached data
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step_00000030")
    assert main(amused_argv(folder, images, cut, *lora, "--resume")) == 0
    assert "from " + str(cut / "data") in capsys.readouterr().out
    a, b = (load_file(str(d / "final" / "adapter_model.safetensors")) for d in (run, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(amused_argv(folder, images, cut, "--resume")) == 2  # a LoRA run does not resume as full
    assert "same settings" in capsys.readouterr().err


def test_amused_full_fine_tuning_writes_a_folder_maskgit_loads(amused, tmp_path):
    folder, images = amused
    run = tmp_path / "full"
    assert main(amused_argv(folder, images, run, "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "0")) == 0
    final = run / "final"
    assert {p.name for p in final.iterdir()} >= {"model_index.json", "scheduler", "vqvae", "text_encoder",
                                                 "tokenizer", "transformer"}
    name = "diffusion_pytorch_model.safetensors"
    before, after = (load_file(str(d / "transformer" / name)) for d in (folder, final))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert load_file(str(final / "vqvae" / name)).keys() == load_file(str(folder / "vqvae" / name)).keys()
    assert maskgit.load(final).generate(prompts=["a red square"], steps=3, output="tensor").shape == (1, 3, 16, 16)


def test_amused_refusals_are_one_line(amused, lora_run, tmp_path, capsys):
    folder, images = amused
    _, store = lora_run
    assert main(["train", "--data", str(images), "--out", str(tmp_path / "a")]) == 2
    assert "--init amused/amused-256" in capsys.readouterr().err
    assert main(amused_argv(folder, images, tmp_path / "b", "--tokens", str(store))) == 2
    assert "leave out --tokens" in capsys.readouterr().err
    assert main(amused_argv(store, images, tmp_path / "c")) == 2  # not an aMUSEd folder
    assert "model_index.json" in capsys.readouterr().err


def test_caption_folder_reads_txt_files_and_captions_jsonl(tmp_path):
    from maskgit.data.datasets import load_dataset
    from maskgit.data.imagefiles import CaptionFolderDataset
    captioned_images(tmp_path / "im", 6, 8)
    (tmp_path / "im" / "sub").mkdir()
    shutil.copy(tmp_path / "im" / "000.png", tmp_path / "im" / "sub" / "x.png")  # no caption: left out
    (tmp_path / "im" / "001.txt").write_text("  from the txt  ")
    with open(tmp_path / "im" / "captions.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "003.png", "text": ["one", "two"]}) + "\n")  # jsonl wins over 003.txt
    with pytest.warns(UserWarning, match="1 image.*no caption"):
        ds = load_dataset(f"captions:{tmp_path / 'im'}", image_size=8)
    assert isinstance(ds, CaptionFolderDataset) and len(ds) == 6 and ds.classes is None
    caps = dict(zip((p.name for p in ds.paths), ds.captions))
    assert caps["001.png"] == ["from the txt"] and caps["003.png"] == ["one", "two"]
    assert caps["000.png"] == ["a red square, black corner"]
    image, caption = ds[0]
    assert image.shape == (3, 8, 8) and isinstance(caption, str)
    (tmp_path / "im" / "captions.jsonl").write_text('{"file_name": "000.png"}\n')
    with pytest.raises(MaskGITError, match="line 1"):
        CaptionFolderDataset(tmp_path / "im", 8)
