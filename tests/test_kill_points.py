"""kill -9 at five points of a training run, each followed by `--resume`: the final weights equal an
uninterrupted run's, bit for bit, and metrics.jsonl holds each step once. The child process kills itself with
SIGKILL at an exact point (fault injection by patching the trainer in that process only)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import small_store
from safetensors.torch import load_file

CHILD = r"""
import os, signal, sys
point, argv = sys.argv[1], sys.argv[2:]
import maskgit.training.loop as loop

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after-a-step-before-any-checkpoint":
    real_save = loop._save
    def _save(run_dir, step, *a):
        if step == 1:
            die()
        real_save(run_dir, step, *a)
    loop._save = _save
elif point == "inside-a-checkpoint-write":  # model and train state written, manifest not, folder not renamed
    real_state = loop.save_train_state
    def save_train_state(tmp, tensors, info):
        real_state(tmp, tensors, info)
        if info["step"] == 4:
            die()
    loop.save_train_state = save_train_state
elif point == "after-a-checkpoint-before-pruning":
    real_save = loop._save
    import shutil
    def _save(run_dir, step, *a):
        if step == 6:
            shutil.rmtree, keep = (lambda *x, **k: die()), shutil.rmtree
        real_save(run_dir, step, *a)
    loop._save = _save
elif point == "between-checkpoints":  # with --save-every 1 each step saves: die in the 8th step's logging
    real_dumps = loop.json.dumps
    def dumps(obj, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 8:
            die()
        return real_dumps(obj, *a, **k)
    loop.json.dumps = dumps
elif point == "inside-the-final-export":
    real_model = loop.save_model
    def save_model(model, path, *a, **k):
        if str(path).endswith("final"):
            real_model(model, path, *a, **k)
            (path / "model.safetensors").write_bytes(b"torn")  # a half-written export
            die()
        return real_model(model, path, *a, **k)
    loop.save_model = save_model
from maskgit.cli import main
sys.exit(main(argv))
"""

POINTS = ["after-a-step-before-any-checkpoint", "inside-a-checkpoint-write", "after-a-checkpoint-before-pruning",
          "between-checkpoints", "inside-the-final-export"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("tok") / "store", 64)


def _argv(store, out):
    return ["train", "--tokens", str(store), "--preset", "tiny", "--out", str(out), "--max-steps", str(STEPS),
            "--batch-size", "8", "--warmup-steps", "3", "--save-every", "1", "--keep-last", "2", "--log-every", "1",
            "--ema", "0.9", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run([sys.executable, "-m", "maskgit", *_argv(store, out)], check=True, env=ENV, capture_output=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_resume_is_bit_identical(point, store, reference, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", CHILD, point, *_argv(store, out)], env=ENV, capture_output=True)
    assert r.returncode == -signal.SIGKILL, f"{point}: the run was not killed ({r.returncode}): {r.stderr[-2000:]}"
    r = subprocess.run([sys.executable, "-m", "maskgit", *_argv(store, out), "--resume"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (reference, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), point
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), f"{point}: metrics rows {steps}"
