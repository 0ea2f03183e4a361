"""`maskgit sample` / `maskgit edit` with bad values: exit 2, one line, no traceback, and no output file made."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskgit.cli import main


@pytest.fixture
def files(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "existing.png").write_bytes(b"not touched")
    (tmp_path / "bomb.png").write_bytes(_bomb_png(30000, 30000))
    return tmp_path


def _bomb_png(w: int, h: int) -> bytes:
    """A few hundred bytes of PNG whose header declares w x h grey pixels (a decompression bomb to Pillow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


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
    (["--labels", "1", "--temperature", "nan"], "temperature must be a finite number"),
    (["--labels", "1", "--temperature", "inf"], "temperature must be a finite number"),
    (["--labels", "1", "--cfg", "nan"], "cfg must be a finite number"),
    (["--labels", "1", "--cfg", "inf"], "cfg must be a finite number"),
    (["--labels", "1", "--choice-temperature", "inf"], "choice_temperature must be a finite number"),
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
    (["--mask", "{d}/bomb.png", "--out", "{d}/o.png"], "cannot read mask"),
    (["--box", "0,0,4,4", "--temperature", "nan", "--out", "{d}/o.png"], "temperature must be a finite number"),
    (["--box", "0,0,4,4", "--choice-temperature", "inf", "--out", "{d}/o.png"], "must be a finite number"),
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


def test_sample_out_symlink_replaces_the_link_not_its_target(tiny_pipeline_dir, files):
    target = files / "existing.png"
    link = files / "link.png"
    link.symlink_to(target)
    argv = ["sample", "--model", str(tiny_pipeline_dir), "--steps", "1", "--device", "cpu", "--labels", "1",
            "--out", str(link)]
    assert main(argv) == 0
    assert target.read_bytes() == b"not touched"
    assert not link.is_symlink() and Image.open(link).size[0] > 0


def test_sample_config_refuses_non_finite_values_in_the_library():
    from maskgit.config import SampleConfig
    from maskgit.errors import MaskGITError
    for kw in ({"temperature": float("nan")}, {"cfg": float("inf")}, {"choice_temperature": float("inf")},
               {"top_p": float("nan")}, {"schedule": "nope"}, {"order": "nope"}):
        with pytest.raises(MaskGITError, match="must be|unknown"):
            SampleConfig(**kw)
    assert SampleConfig(schedule="pow2").schedule == "pow2"  # aliases stay accepted


def test_seeded_refuses_seeds_outside_0_to_2_63():
    from maskgit.errors import MaskGITError
    from maskgit.sampling.noise import seeded
    for seed in (-1, 2 ** 63, 1.5, True):
        with pytest.raises(MaskGITError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            seeded(seed, 1)
    seeded(2 ** 63 - 1, 1)


@pytest.mark.parametrize("command", ["sample", "edit"])
@pytest.mark.parametrize("seed", ["-1", str(2 ** 63), "1.5"])
def test_seed_outside_0_to_2_63_is_a_usage_error_with_nothing_written(tiny_pipeline_dir, files, capsys, monkeypatch,
                                                                      command, seed):
    monkeypatch.chdir(files)
    before = sorted(p.name for p in files.iterdir())
    extra = ["--labels", "1"] if command == "sample" else ["--image", str(files / "in.png"), "--box", "0,0,4,4",
                                                           "--out", str(files / "o.png")]
    with pytest.raises(SystemExit) as e:
        main([command, "--model", str(tiny_pipeline_dir), "--steps", "1", "--device", "cpu", *extra, "--seed", seed])
    assert e.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "seed must be an integer in [0, 2**63)" in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in files.iterdir()) == before
