"""Training from Python without the CLI (maskgit.train_tokenizer / tokenize_dataset / train_transformer), the
same weights as the commands for the same seed and settings, and the library's messages: logged, shown by the
CLI as it printed them."""

import logging

import pytest
from conftest import small_store

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError

TINY = ["--device", "cpu", "--log-every", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder: 2 classes x 6 RGB images of 20x20 px."""
    from conftest import write_image_folder
    return write_image_folder(tmp_path_factory.mktemp("imgs"), 20, 20)


def test_a_notebook_trains_both_stages_and_samples(folder, tmp_path):
    data = f"imagefolder:{folder}"
    tok = maskgit.train_tokenizer(data, tmp_path / "tok", preset="tiny", batch_size=4, max_steps=2, workers=0,
                                  device="cpu", log_every=1)
    assert tok.step == 2 and (tok.final / "model.safetensors").is_file() and not tok.stopped_early
    assert set(tok.summary()) >= {"step", "wall_s"} and tok.summary()["step"] == 2
    stats = maskgit.tokenize_dataset(tok.final, data, tmp_path / "tokens", workers=0, device="cpu")
    assert stats["rows"] == 12 and stats["rank"] == 0
    mg = maskgit.train_transformer(tmp_path / "tokens", tmp_path / "mg", tokenizer=tok.final, preset="tiny",
                                   batch_size=4, max_steps=2, warmup_steps=1, device="cpu", log_every=1)
    assert mg.step == 2 and mg.lora is None
    assert (tmp_path / "mg" / "samples_00000002.png").is_file()  # the sample grid, drawn through the tokenizer
    meta = maskgit.load(mg.final).transformer.meta
    assert meta["class_names"] == ["cat", "dog"] and meta["command"].startswith("maskgit.train_transformer(")
    pipe = maskgit.load(mg.final)
    images = pipe.generate([0, 1], steps=2, seed=0)
    assert len(images) == 2 and images[0].size == (16, 16)


def test_an_unknown_setting_is_one_clear_error_before_any_work(tmp_path):
    with pytest.raises(MaskGITError, match="unknown setting.*max_step\\b.*TrainConfig"):
        maskgit.train_transformer(tmp_path / "nope", tmp_path / "out", max_step=3)
    with pytest.raises(MaskGITError, match="label_smoothing"):  # a transformer setting the tokenizer has no use for
        maskgit.train_tokenizer("shapes:8", tmp_path / "out", label_smoothing=0.1)
    assert not (tmp_path / "out").exists()


def test_library_and_command_write_the_same_transformer_weights(tmp_path, capsys):
    store = small_store(tmp_path / "store", 48)
    argv = ["train", "--tokens", str(store), "--preset", "tiny", "--out", str(tmp_path / "cli"), "--batch-size",
            "8", "--max-steps", "3", "--warmup-steps", "1", "--seed", "3", "--ema", "0.5", *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "expected memory" in out and "model written to" in out  # a library message, then the command's own
    run = maskgit.train_transformer(store, tmp_path / "lib", preset="tiny", batch_size=8, max_steps=3,
                                    warmup_steps=1, seed=3, ema=0.5, device="cpu", log_every=1)
    assert "expected memory" not in capsys.readouterr().out  # INFO is the command's to show, not the library's
    a, b = (d / "final" / "model.safetensors" for d in (tmp_path / "cli", run.out))
    assert a.read_bytes() == b.read_bytes()


def test_library_and_command_write_the_same_tokenizer_weights(folder, tmp_path):
    data = f"imagefolder:{folder}"
    argv = ["train-tokenizer", "--data", data, "--preset", "tiny", "--out", str(tmp_path / "cli"), "--batch-size",
            "4", "--max-steps", "2", "--seed", "5", "--workers", "0", "--disc-start", "1", *TINY]
    assert main(argv) == 0
    run = maskgit.train_tokenizer(data, tmp_path / "lib", preset="tiny", batch_size=4, max_steps=2, seed=5,
                                  workers=0, disc_start=1, device="cpu", log_every=1)
    a, b = (d / "final" / "model.safetensors" for d in (tmp_path / "cli", run.out))
    assert a.read_bytes() == b.read_bytes()


def test_python_sees_warnings_as_plain_lines_not_info_and_a_command_restores_the_level(capsys):
    logger = logging.getLogger("maskgit.training.preflight")
    before = logging.getLogger("maskgit").level
    logger.info("quiet in Python")
    logger.warning("a warning in Python")
    got = capsys.readouterr()
    assert "quiet" not in got.out and got.err == "a warning in Python\n"
    assert main(["presets"]) == 0
    assert logging.getLogger("maskgit").level == before
