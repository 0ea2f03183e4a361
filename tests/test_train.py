"""The trainer: exact resume after SIGKILL, and DDP (2 processes, gloo) equal to one process."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import small_store
from safetensors.torch import load_file

from maskgit.data.tokenstore import TokenStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("tok") / "store", 96)


def _cmd(store, out, steps, extra=()):
    return [sys.executable, "-m", "maskgit", "train", "--tokens", str(store), "--preset", "tiny", "--out", str(out),
            "--max-steps", str(steps), "--batch-size", "8", "--warmup-steps", "3", "--save-every", "1",
            "--keep-last", "2", "--log-every", "1", "--ema", "0.9", "--device", "cpu", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _weights(path):
    return load_file(str(path / "final" / "model.safetensors"))


def test_token_store_round_trip(store, tmp_path):
    s = TokenStore(store)
    assert len(s) == 96 and s.meta["grid"] == [4, 4]
    b = s.batch(torch.tensor([5, 1, 77]))
    assert b["tokens"].shape == (3, 4, 4) and b["tokens"].dtype == torch.int64
    assert torch.equal(b["labels"], torch.from_numpy(s.labels[[5, 1, 77]]))
    with pytest.raises(Exception, match="different tokenizer"):
        TokenStore(store, tokenizer_hash="0" * 16)


def test_resume_after_sigkill_is_bit_identical(store, tmp_path):
    steps = 60
    subprocess.run(_cmd(store, tmp_path / "a", steps), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(_cmd(store, tmp_path / "b", steps), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ck.exists() and any(p.name >= "step_00000005" for p in ck.iterdir())):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "final").exists()
    subprocess.run(_cmd(store, tmp_path / "b", steps, ("--resume",)), check=True, env=ENV, capture_output=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigterm_saves_a_resumable_checkpoint_and_exits_130_without_final(store, tmp_path):
    proc = subprocess.Popen(_cmd(store, tmp_path / "c", 100000), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ck = tmp_path / "c" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ck.exists() and any(ck.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130  # interrupted: distinct from success (0) and bad input (2)
    out = proc.stdout.read()
    assert "--resume" in out and "Traceback" not in out, out
    assert not (tmp_path / "c" / "final").exists()  # an interrupted run does not look finished
    from maskgit.training.resume import latest_checkpoint
    assert latest_checkpoint(tmp_path / "c") is not None


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(store, tmp_path):
    steps = 4
    fp32 = ("--amp", "off")  # an fp32 equivalence (bf16 rounds the two batch layouts differently)
    one = _cmd(store, tmp_path / "one", steps, fp32)
    subprocess.run(one, check=True, env=ENV, capture_output=True)
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "maskgit", *_cmd(store, tmp_path / "two", steps, fp32)[3:]]
    r = subprocess.run(two, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_resume_builds_the_run_model_not_todays_preset(store, tmp_path, capsys):
    """--resume reads the model config saved in the run's checkpoint: no --preset needed (the default preset is
    another size), and a contradicting --preset / --text-mode / --arch is a clear error that leaves the run as it is."""
    from maskgit.cli import main
    out = tmp_path / "r"
    base = ["train", "--tokens", str(store), "--out", str(out), "--batch-size", "8", "--warmup-steps", "1",
            "--save-every", "2", "--log-every", "1", "--device", "cpu"]
    assert main([*base, "--preset", "tiny", "--max-steps", "2"]) == 0
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    for extra, match in ((["--preset", "maskgit-small-8x8"], "started with --preset tiny"),
                         (["--arch", "ar"], "resume it with the --arch"),
                         (["--text-mode", "prefix"], "--text-mode")):
        capsys.readouterr()
        assert main([*base, "--resume", "--max-steps", "4", *extra]) == 2
        assert match in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ckpts  # nothing lost
    assert main([*base, "--resume", "--max-steps", "4"]) == 0
    from maskgit.storage.checkpoint import read_config
    doc = read_config(out / "final")
    assert (doc["config"]["width"], doc["config"]["depth"]) == (32, 2)  # still the tiny model
    assert doc["meta"]["preset"] == "tiny"
    assert (out / "checkpoints" / "step_00000004").exists()


@pytest.mark.parametrize("kind,chosen", [("amx", "bf16"), ("avx512", "fp32"), ("avx2", "fp32")])
def test_amp_auto_trains_as_the_sampler_would_sample(monkeypatch, store, tmp_path, capsys, kind, chosen):
    """--amp auto: bf16 autocast on a CPU with native bf16, fp32 on the others (mocked CPU flags); the log and
    train_config.json say which and why."""
    import json

    import maskgit.inference.cpu as cpu
    from maskgit.cli import main
    caps = {"model": "test CPU", "vendor": "GenuineIntel", "avx512": kind != "avx2", "avx512_bf16": False,
            "amx_bf16": kind == "amx", "torch_isa": "AVX2", "onednn_bf16": kind != "avx2"}
    monkeypatch.setattr(cpu, "cpu_capabilities", lambda: caps)
    out = tmp_path / "run"
    assert main(_cmd(store, out, 2)[3:]) == 0
    doc = json.loads((out / "train_config.json").read_text())
    assert doc["amp"]["chosen"] == chosen and doc["amp"]["why"].startswith("--amp auto")
    assert f"precision: {'bf16 autocast' if chosen == 'bf16' else 'fp32'} (--amp auto" in capsys.readouterr().out
