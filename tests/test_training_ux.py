"""Training UX: image size from the preset, the memory check, --help defaults equal the defaults used, the LR
schedule fitted to --max-minutes (fake clock), fine-tuning (--init, --freeze, class-count change)."""

import argparse
import logging
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import maskgit.training.loop as loop
from maskgit.cli import build_parser, main
from maskgit.config import TrainConfig, transformer_preset
from maskgit.data.tokenstore import TokenStore, write_store
from maskgit.errors import MaskGITError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder: 2 classes x 6 RGB images of 40x30 px."""
    from conftest import write_image_folder
    return write_image_folder(tmp_path_factory.mktemp("imgs"), 30, 40)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("tok")
    write_store(root / "s4", rng.integers(0, 32, size=(300, 4, 4)), labels=rng.integers(0, 4, size=300),
                meta={"codebook_size": 32, "classes": list("abcd")})
    write_store(root / "s6", rng.integers(0, 32, size=(48, 4, 4)), labels=rng.integers(0, 6, size=48),
                meta={"codebook_size": 32, "classes": list("abcdef")})
    return root


class _Captured(Exception):
    pass


def _capture_train(monkeypatch):
    """Replace the trainer: the command's call is recorded and ends the command."""
    seen = {}

    def fake(task, data, cfg, run_dir, **kw):
        seen.update(task=task, data=data, cfg=cfg, kw=kw)
        raise _Captured
    monkeypatch.setattr(loop, "train", fake)
    return seen


# ---------------------------------------------------------------- image size and memory
def test_image_folder_runs_at_the_preset_size(folder, tmp_path, monkeypatch, capsys):
    seen = _capture_train(monkeypatch)
    with pytest.raises(_Captured):
        main(["train-tokenizer", "--data", f"imagefolder:{folder}", "--preset", "tiny", "--out", str(tmp_path / "t"),
              "--device", "cpu"])
    assert seen["task"].model.config.image_size == 16
    assert seen["data"].batch(torch.tensor([0, 1]))["images"].shape == (2, 3, 16, 16)
    out = capsys.readouterr().out
    assert "16x16x3 images -> 8x8 tokens" in out and "expected memory" in out and "parameters" in out


def test_dataset_of_another_size_needs_image_size(tmp_path, capsys):
    assert main(["train-tokenizer", "--data", "shapes:8", "--preset", "tiny", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "shapes:8 images are 32 px but preset tiny is 16 px" in err and "--image-size" in err
    assert len(err.strip().splitlines()) == 1


def test_a_batch_that_does_not_fit_is_refused(folder, tmp_path, capsys):
    argv = ["train-tokenizer", "--data", f"imagefolder:{folder}", "--preset", "tiny", "--out", str(tmp_path / "t"),
            "--batch-size", str(10 ** 8), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would need" in err and "use --batch-size" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_memory_estimate_scales_with_the_batch_and_suggests_one_that_fits(stores):
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.training import memory
    from maskgit.training.objectives import MaskedTokenTask
    task = MaskedTokenTask(MaskGITTransformer(transformer_preset("tiny")), TrainConfig())
    probe = TokenStore(stores / "s4").batch(torch.arange(2))
    small, big = (memory.estimate(task, probe, b, "cpu", processes=1) for b in (8, 800))
    assert small.per_example_bytes > 0 and big.total_bytes - small.total_bytes == 792 * small.per_example_bytes
    big.available_bytes = small.total_bytes * 4
    with pytest.raises(MaskGITError, match="use --batch-size"):
        memory.check(big)
    fits = big.largest_batch()
    assert 8 < fits < 800
    big.batch = fits
    assert big.fits


# ---------------------------------------------------------------- --help defaults
def _walk(parser, name=""):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}".strip())


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_help_shows_the_defaults_each_command_uses():
    """Every option with a default shows it, and what is shown is the value the option defaults to (for config
    flags: the config the command overrides, recorded by add_dataclass_args)."""
    checked = 0
    for name, parser in _walk(build_parser()):
        fmt = parser._get_formatter()
        config = getattr(parser, "config_defaults", {})
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            expected = config.get(action.dest, action.default)
            if expected is None or (action.dest not in config and isinstance(expected, bool)):
                continue  # descriptive "(default: ...)" text, or a switch
            text = " ".join(fmt._format_action(action).split())
            v = re.escape(_shown(expected))
            assert re.search(r"(?:\(|; |, )default:? " + v + r"(?=[\s;,)]|$)", text) or \
                re.search(r"(?:^|[\s;,(])" + v + r" \(default", text), (name, action.dest, expected, text)
            checked += 1
    assert checked > 100


def test_train_commands_run_with_the_defaults_their_help_shows(folder, stores, tmp_path, monkeypatch):
    parsers = dict(_walk(build_parser()))
    seen = _capture_train(monkeypatch)
    with pytest.raises(_Captured):
        main(["train-tokenizer", "--data", f"imagefolder:{folder}", "--out", str(tmp_path / "t"), "--device", "cpu"])
    shown = parsers["train-tokenizer"].config_defaults
    used = {**vars(seen["cfg"]), **vars(seen["task"].cfg)}  # TrainConfig + TokenizerTrainConfig
    assert {k: used[k] for k in shown} == shown
    assert (shown["batch_size"], shown["lr"], shown["warmup_steps"], shown["beta1"], shown["beta2"]) == \
        (128, 2e-4, 500, 0.5, 0.9)
    with pytest.raises(_Captured):
        main(["train", "--tokens", str(stores / "s4"), "--out", str(tmp_path / "m"), "--device", "cpu"])
    shown = parsers["train"].config_defaults
    assert {k: vars(seen["cfg"])[k] for k in shown} == shown


# ---------------------------------------------------------------- --max-minutes and the LR schedule
class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_max_minutes_fits_warmup_and_decay_into_the_budget(stores, tmp_path, capsys, caplog):
    """0.5 s per step (fake clock) and a 1-minute budget: ~120 steps. The default-sized warmup (500) and decay
    (100k steps) are fitted into them: the LR reaches its peak and decays to ~0 by the end."""
    caplog.set_level(logging.INFO, logger="maskgit")  # the run's messages on stdout, as the command shows them
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.training.objectives import MaskedTokenTask
    clock = _Clock()

    class Timed(MaskedTokenTask):
        def forward(self, batch, ctx):
            clock.t += 0.5
            return super().forward(batch, ctx)

    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=500, max_steps=100_000, max_minutes=1.0, save_every=0,
                      log_every=1, val_batches=1)
    task = Timed(MaskGITTransformer(transformer_preset("tiny")), cfg)
    res = loop.train(task, TokenStore(stores / "s4"), cfg, tmp_path / "run", progress=False, clock=clock)
    assert res.stopped_early and 118 <= res.step <= 122
    import json
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) == pytest.approx(1e-3, rel=0.02)  # warmup finished inside the budget
    assert lrs.index(max(lrs)) < 20
    assert lrs[-1] < 0.02 * 1e-3  # and the cosine decay too
    out = capsys.readouterr().out
    assert "~120 steps fit" in out and "warmup 500 -> 12 steps" in out
    # a deadline that ends the run before its step count says so at the end
    assert f"stopped at {res.step:,} of 100,000 steps by --max-minutes 1: expect lower quality" in out


def test_a_step_budget_prints_its_expected_wall_time_and_ends_as_the_step_count_run(stores, tmp_path, capsys, caplog):
    """Without --max-minutes the run is the step budget: after the first steps it prints the expected wall time
    (0.5 s per step on the fake clock, measured after the first steps, which cost 2 s here as kernels are built),
    and it ends at --max-steps with the schedule and weights of a run that never
    measured its time."""
    caplog.set_level(logging.INFO, logger="maskgit")  # the run's messages on stdout, as the command shows them
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.training.objectives import MaskedTokenTask
    from maskgit.training.schedule import ETA_CHECK, ETA_SKIP
    clock = _Clock()

    class Timed(MaskedTokenTask):
        def forward(self, batch, ctx):
            clock.t += 2.0 if ctx.step < ETA_SKIP else 0.5
            return super().forward(batch, ctx)

    results = []
    for task_cls, kw in ((Timed, {"clock": clock}), (MaskedTokenTask, {})):
        torch.manual_seed(0)
        cfg = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=2, max_steps=ETA_SKIP + ETA_CHECK + 4, save_every=0,
                          log_every=1, val_batches=1)
        task = task_cls(MaskGITTransformer(transformer_preset("tiny")), cfg)
        out_dir = tmp_path / task_cls.__name__
        res = loop.train(task, TokenStore(stores / "s4"), cfg, out_dir, progress=False, **kw)
        assert not res.stopped_early and res.step == cfg.max_steps
        results.append(load_file(str(out_dir / "final" / "model.safetensors")))
    out = capsys.readouterr().out
    span = f"{ETA_SKIP + 1}-{ETA_SKIP + ETA_CHECK}"
    assert f"measured 0.5 s/step over steps {span}: the remaining 4 steps take ~2 s" in out
    assert "stopped at" not in out
    assert results[0].keys() == results[1].keys() and all(torch.equal(results[0][k], results[1][k])
                                                          for k in results[0])


def test_without_a_budget_the_schedule_is_the_configured_one():
    from maskgit.training.schedule import BudgetSchedule, lr_factor
    cfg = TrainConfig(warmup_steps=10, max_steps=100)
    b = BudgetSchedule(cfg, clock=_Clock(), log=None)
    b.start(0)
    for s in range(1, 50):
        b.observe(s)
    assert [b.factor(s) for s in range(100)] == [lr_factor(s, cfg) for s in range(100)]
    assert lr_factor(9, cfg) == 1.0 and lr_factor(100, cfg) == 0.0


# ---------------------------------------------------------------- fine-tuning
def test_init_with_more_classes_keeps_codes_and_classes_and_freezes(stores, tmp_path, capsys):
    base = ["--batch-size", "8", "--warmup-steps", "1", "--log-every", "1", "--device", "cpu", "--save-every", "0"]
    assert main(["train", "--tokens", str(stores / "s4"), "--preset", "tiny", "--out", str(tmp_path / "a"),
                 "--max-steps", "3", *base]) == 0
    capsys.readouterr()
    assert main(["train", "--tokens", str(stores / "s6"), "--init", str(tmp_path / "a"), "--out",
                 str(tmp_path / "b"), "--max-steps", "3", "--freeze", "blocks,embeddings", "--lr", "1e-3",
                 *base]) == 0
    out = capsys.readouterr().out
    assert "class embeddings 0-3 kept (by index), 2 new class embedding(s) 4-5" in out and "frozen:" in out
    a, b = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("a", "b"))
    K, c = 32, transformer_preset("tiny")
    assert b["tok_emb.weight"].shape[0] == a["tok_emb.weight"].shape[0] + 2
    assert torch.equal(b["tok_emb.weight"][:K + 4], a["tok_emb.weight"][:K + 4])  # frozen: still the init's
    assert torch.equal(b["tok_emb.weight"][-1], a["tok_emb.weight"][-1])  # the mask id moved to its new place
    new = b["tok_emb.weight"][K + 4:K + 6]
    mean = a["tok_emb.weight"][K:K + 4].mean(0)
    assert (new - mean).abs().max() < 0.1 and not torch.equal(new[0], new[1])
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("blocks."))
    assert not torch.equal(a["head_dense.weight"], b["head_dense.weight"])  # the head trained
    assert c.num_classes == 4


def test_init_that_does_not_fit_the_store_is_a_clear_error(stores, tmp_path, capsys):
    import dataclasses

    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.storage.checkpoint import save_model
    save_model(MaskGITTransformer(dataclasses.replace(transformer_preset("tiny"), grid_size=8)), tmp_path / "m")
    assert main(["train", "--tokens", str(stores / "s4"), "--init", str(tmp_path / "m"), "--out",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "tokenize the images with the tokenizer that model was trained with" in capsys.readouterr().err
    assert main(["train", "--tokens", str(stores / "s4"), "--init", str(tmp_path / "m"), "--preset", "tiny",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--tokens", str(stores / "s4"), "--preset", "tiny", "--freeze", "wings",
                 "--out", str(tmp_path / "x"), "--batch-size", "8"]) == 2
    assert "choose from embeddings, blocks, head" in capsys.readouterr().err


def test_tokenizer_init_from_a_run_keeps_discriminator_and_optimizer(folder, tmp_path, capsys):
    base = ["train-tokenizer", "--data", f"imagefolder:{folder}", "--batch-size", "4", "--device", "cpu",
            "--disc-start", "0", "--log-every", "1", "--save-every", "2"]
    assert main([*base, "--preset", "tiny", "--out", str(tmp_path / "a"), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--max-steps", "2",
                 "--lr", "1e-12"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer, discriminator and optimizer state loaded" in out and "optimizer moments loaded" in out
    a, b = (load_file(str(tmp_path / d / "checkpoints" / "step_00000002" / "train_state.safetensors"))
            for d in ("a", "b"))
    disc = [k for k in a if k.startswith("task.disc.")]
    same = lambda k: torch.allclose(a[k], b[k], rtol=0, atol=1e-8)  # noqa: E731  (lr ~0: still the loaded state)
    assert disc and all(same(k) for k in disc)
    assert same("task.model.quantizer.codebook")
    assert main([*base, "--init", str(tmp_path / "a" / "final"), "--out", str(tmp_path / "c"), "--max-steps", "1",
                 "--freeze", "encoder,codebook"]) == 0
    out = capsys.readouterr().out
    assert "discriminator and optimizer start fresh" in out and "frozen: encoder, codebook" in out


# ---------------------------------------------------------------- maskgit presets
def test_presets_lists_every_preset_with_its_size(tmp_path, capsys):
    import json

    from maskgit.config import TRANSFORMER_PRESETS, VQGAN_PRESETS, vqgan_preset
    from maskgit.models.transformer import MaskGITTransformer, count_flops
    from maskgit.models.vqgan import VQGAN
    assert main(["presets", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    rows = {(r["kind"], r["name"]): r for r in json.loads((tmp_path / "p.json").read_text())["rows"]}
    assert {n for k, n in rows if k == "tokenizer"} == set(VQGAN_PRESETS)
    assert {n for k, n in rows if k == "transformer"} == set(TRANSFORMER_PRESETS)
    assert all(f"| {n} |" in out for _, n in rows)
    tok, tr = rows["tokenizer", "tiny"], rows["transformer", "maskgit-cpu-8x8"]
    assert tok["params"] == sum(p.numel() for p in VQGAN(vqgan_preset("tiny")).parameters())
    assert (tok["image"], tok["grid"], tok["codes"]) == ("16x16x1", "8x8", 32)
    cpu = MaskGITTransformer(transformer_preset("maskgit-cpu-8x8"))
    assert tr["params"] == sum(p.numel() for p in cpu.parameters())
    assert tr["gflop"] == pytest.approx(count_flops(transformer_preset("maskgit-cpu-8x8")) / 1e9)
    assert rows["tokenizer", "cpu32-f4"]["gflop"] < rows["tokenizer", "fmnist-f4"]["gflop"] / 4
    assert main(["presets", "--only", "nope"]) == 2
