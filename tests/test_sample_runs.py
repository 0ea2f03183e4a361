"""`maskgit sample` in chunks: per-chunk seeds, resuming a killed run from its finished chunks, torchrun."""

import os
import subprocess
import sys

import numpy as np
import pytest

from maskgit.cli import main
from maskgit.pipeline import Pipeline
from maskgit.sampling.noise import chunk_seed
from maskgit.storage.images import to_uint8

ARGS = ["--labels", "0,1,2,3,1", "--steps", "3", "--batch-size", "2", "--precision", "fp32"]


def _sample(model, out, *extra):
    return main(["sample", "--model", str(model), *ARGS, "--out", str(out), *extra])


def test_chunks_are_seeded_on_their_own(tiny_pipeline_dir, tmp_path):
    assert _sample(tiny_pipeline_dir, tmp_path / "s.npz") == 0
    with np.load(tmp_path / "s.npz") as z:
        got = z["arr_0"][..., :1]
    pipe = Pipeline.load(tiny_pipeline_dir)
    labels = [0, 1, 2, 3, 1]
    want = np.concatenate([to_uint8(pipe.generate(labels[i:i + 2], seed=chunk_seed(0, i // 2), steps=3,
                                                  output="tensor")) for i in range(0, 5, 2)])
    assert np.array_equal(got, want)
    assert chunk_seed(5, 0) == 5 and len({chunk_seed(s, c) for s in range(3) for c in range(1, 50)}) == 147
    assert not (tmp_path / "s.npz.parts").exists()  # the chunks are removed once the output is written


def test_a_killed_run_resumes_from_its_finished_chunks(tiny_pipeline_dir, tmp_path, monkeypatch):
    assert _sample(tiny_pipeline_dir, tmp_path / "ref.npz") == 0
    calls = []
    real = Pipeline.generate

    def dies_on_third(self, *a, **k):
        calls.append(k["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(Pipeline, "generate", dies_on_third)
    out = tmp_path / "cut.npz"
    assert _sample(tiny_pipeline_dir, out) == 130  # what an interrupted command exits with
    assert sorted(p.name for p in (tmp_path / "cut.npz.parts").iterdir()) == [
        "chunk-000000.npy", "chunk-000001.npy", "settings.json"]
    assert not out.exists()
    calls.clear()
    assert _sample(tiny_pipeline_dir, out) == 0
    assert calls == [chunk_seed(0, 2)]  # only the chunk that was not finished
    assert (tmp_path / "cut.npz").read_bytes() == (tmp_path / "ref.npz").read_bytes()


def test_chunks_of_another_run_are_not_mixed_in(tiny_pipeline_dir, tmp_path, capsys):
    parts = tmp_path / "s.npz.parts"
    parts.mkdir()
    (parts / "settings.json").write_text('{"seed": 99}')
    assert _sample(tiny_pipeline_dir, tmp_path / "s.npz") == 2
    assert "holds chunks of a run with other settings" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tiny_pipeline_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["-m", "maskgit", "sample", "--model", str(tiny_pipeline_dir), *ARGS, "--device", "cpu"]
    subprocess.run([sys.executable, *cmd, "--out", str(tmp_path / "one.npz")], check=True, env=env,
                   capture_output=True)
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561", *cmd,
           "--out", str(tmp_path / "two.npz")]
    r = subprocess.run(two, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert not (tmp_path / "two.npz.parts").exists()
