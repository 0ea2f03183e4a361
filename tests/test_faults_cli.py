"""`maskgit sample` / `maskgit edit` with bad values: exit 2, one line, no traceback, and no output file made."""

import numpy as np
import pytest
from PIL import Image

from maskgit.cli import main


@pytest.fixture
def files(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "existing.png").write_bytes(b"not touched")
    return tmp_path


SAMPLE_CASES = [
    (["--labels", "-1"], "class ids are >= 0"),
    (["--labels", "9"], "out of range"),
    (["--labels", "1", "--num", "0"], "--num must be >= 1"),
    (["--labels", "1", "--num", "-2"], "--num must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--labels", "1", "--out", "{d}/x.jpg"], "unknown output format"),
    (["--labels", "1", "--out", "{d}/existing.png/x.npz"], "is a file, not a folder"),
    (["--labels", "1", "--out", "{d}/in.png", "--show-steps", "{d}/in.png"], "same file"),
    (["--labels", "1", "--show-steps", "{d}/steps.gif"], "unknown output format"),
]


@pytest.mark.parametrize("extra, words", SAMPLE_CASES, ids=[" ".join(e) for e, _ in SAMPLE_CASES])
def test_bad_sample_value_exits_2_in_one_line_with_nothing_written(tiny_pipeline_dir, files, capsys, monkeypatch,
                                                                   extra, words):
    monkeypatch.chdir(files)
    before = sorted(p.name for p in files.iterdir())
    argv = ["sample", "--model", str(tiny_pipeline_dir), "--steps", "1", "--device", "cpu",
            *[a.format(d=files) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]  # (info lines such as the precision note aside)
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
    assert sorted(p.name for p in files.iterdir()) == before  # no samples.png, no partial file
    assert (files / "existing.png").read_bytes() == b"not touched"


def test_show_steps_alone_writes_only_the_strip(tiny_pipeline_dir, files, monkeypatch):
    monkeypatch.chdir(files)
    assert main(["sample", "--model", str(tiny_pipeline_dir), "--steps", "2", "--labels", "1",
                 "--show-steps", "steps.png", "--device", "cpu"]) == 0
    assert (files / "steps.png").exists() and not (files / "samples.png").exists()


EDIT_CASES = [
    (["--box", "0,0,4,4", "--out", "{d}/o.jpg"], "unknown output format"),
    (["--box", "0,0,4,4", "--label", "-1", "--out", "{d}/o.png"], "--label must be a class id"),
    (["--box", "0,0,4,4", "--dilate", "-1", "--out", "{d}/o.png"], "--dilate must be >= 0"),
    (["--mask", "{d}/nope.png", "--out", "{d}/o.png"], "does not exist"),
]


@pytest.mark.parametrize("extra, words", EDIT_CASES, ids=[" ".join(e) for e, _ in EDIT_CASES])
def test_bad_edit_value_exits_2_in_one_line_with_nothing_written(tiny_pipeline_dir, files, capsys, extra, words):
    before = sorted(p.name for p in files.iterdir())
    argv = ["edit", "--model", str(tiny_pipeline_dir), "--image", str(files / "in.png"), "--steps", "1",
            "--device", "cpu", *[a.format(d=files) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]  # (info lines such as the precision note aside)
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
    assert sorted(p.name for p in files.iterdir()) == before
