"""Training files under damage: every file kind of a checkpoint truncated or bit-flipped is detected with a
message naming it, --resume falls back past a bad checkpoint (or takes the one named), a resumed run keeps no
duplicate metrics rows, bad flags stop before any folder exists, and files follow the umask."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import small_store

import maskgit
from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import MANIFEST, SHIPPED_DIR, load_model, verify_manifest
from maskgit.training.resume import checkpoint_problem, find_checkpoint, truncate_metrics

FILE_KINDS = ["model.safetensors", "train_state.safetensors", "train_state.json", "config.json", MANIFEST]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("tok") / "store", 48)


def args(store, out, steps, *extra):
    return ["train", "--tokens", str(store), "--preset", "tiny", "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "8", "--warmup-steps", "1", "--save-every", "2", "--keep-last", "5", "--log-every", "1",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(args(store, out, 4)) == 0
    return out


def damaged_copy(run: Path, tmp_path: Path, name: str, how: str) -> Path:
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    f = copy / "checkpoints" / "step_00000004" / name
    data = bytearray(f.read_bytes())
    if how == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01  # one bit
    f.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", FILE_KINDS)
def test_damaged_checkpoint_file_is_detected_and_named(run, tmp_path, name, how):
    copy = damaged_copy(run, tmp_path, name, how)
    bad = copy / "checkpoints" / "step_00000004"
    why = checkpoint_problem(bad)
    assert why is not None and name in why, why
    with pytest.raises(MaskGITError, match=name.replace(".", r"\.")):
        load_model(bad)
    said = []
    assert find_checkpoint(copy, True, say=said.append) == copy / "checkpoints" / "step_00000002"
    assert len(said) == 1 and "step_00000004" in said[0] and name in said[0]
    with pytest.raises(MaskGITError, match="--resume"):
        find_checkpoint(copy, bad)


def test_resume_falls_back_past_a_corrupt_checkpoint_and_finishes(store, run, tmp_path, capsys):
    copy = damaged_copy(run, tmp_path, "model.safetensors", "flip")
    shutil.rmtree(copy / "final")
    capsys.readouterr()
    assert main(args(store, copy, 6, "--resume")) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step_00000004" in out and "resumed from" in out, out
    assert "step_00000002 at step 2" in out
    assert (copy / "final" / "model.safetensors").exists()


def test_resume_path_picks_that_checkpoint(store, run, tmp_path, capsys):
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert main(args(store, copy, 4, "--resume", str(copy / "checkpoints" / "step_00000002"))) == 0
    assert "step_00000002 at step 2" in capsys.readouterr().out
    assert main(args(store, copy, 4, "--resume", str(copy / "nope"))) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_resume_truncates_metrics_to_the_checkpoint_step(store, run, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000004")  # as if killed after logging step 4, before saving it
    shutil.rmtree(copy / "final")
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # rows of a later, killed attempt, the last cut
    assert main(args(store, copy, 4, "--resume")) == 0
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_truncate_metrics_keeps_rows_up_to_the_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2, 3)))
    truncate_metrics(f, 2)
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [1, 2, 2]


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--max-steps", "0"), ("--lr", "-1"),
                                         ("--lr", "nan"), ("--keep-last", "0"), ("--ema", "1"),
                                         ("--log-every", "0")])
def test_bad_training_flag_exits_2_before_anything_is_made(store, tmp_path, capsys, flag, value):
    out = tmp_path / "never"
    argv = args(store, out, 4)
    i = argv.index(flag) if flag in argv else None
    argv = argv[:i] + argv[i + 2:] if i is not None else argv
    assert main([*argv, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err
    assert not out.exists()


def test_run_files_follow_the_umask(store, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(args(store, tmp_path / "u", 2)) == 0
    finally:
        os.umask(old)
    ck = tmp_path / "u" / "checkpoints" / "step_00000002"
    for p in (ck, tmp_path / "u" / "final"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p
    for p in (*ck.iterdir(), tmp_path / "u" / "metrics.jsonl"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_shipped_weights_carry_manifests_that_verify():
    dirs = [d for d in (SHIPPED_DIR / "fashion-mnist").iterdir() if d.is_dir()]
    assert len(dirs) >= 2
    for d in dirs:
        assert verify_manifest(d, required=True), d
    assert len(maskgit.load("fashion-mnist").generate([1], steps=1)) == 1


def test_a_byte_flip_in_copied_weights_is_named(tmp_path):
    src = SHIPPED_DIR / "fashion-mnist" / "tokenizer"
    copy = tmp_path / "tokenizer"
    shutil.copytree(src, copy)
    f = copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1000] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(MaskGITError, match=r"model\.safetensors is corrupt"):
        load_model(copy)


def test_tokenizer_resume_path_picks_that_checkpoint(tmp_path, capsys):
    argv = ["train-tokenizer", "--data", "shapes:8", "--image-size", "32", "--preset", "tiny", "--batch-size", "4",
            "--disc-start", "1", "--save-every", "1", "--device", "cpu", "--out", str(tmp_path / "t")]
    assert main(argv + ["--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(argv + ["--max-steps", "4", "--resume", str(tmp_path / "t" / "checkpoints" / "step_00000001")]) == 0
    assert "step_00000001 at step 1" in capsys.readouterr().out
    assert main(argv + ["--max-steps", "4", "--resume", str(tmp_path / "t" / "nope")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
