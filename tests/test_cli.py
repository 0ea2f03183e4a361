"""The CLI: every subcommand has --help; user errors print one clear line, no traceback, non-zero status."""

import subprocess
import sys
from pathlib import Path

import pytest

from maskgit.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    argv = [command, "--help"] if command != "convert" else ["convert", "official", "--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def _fails_cleanly(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_inputs_give_one_clear_line(tiny_pipeline_dir, tmp_path, capsys):
    m = str(tiny_pipeline_dir)
    _fails_cleanly(["sample", "--model", m, "--labels", "9", "--out", str(tmp_path / "a.png")], capsys,
                   "out of range")
    _fails_cleanly(["sample", "--model", m, "--labels", "0", "--steps", "0", "--out", str(tmp_path / "a.png")],
                   capsys, "steps")
    _fails_cleanly(["sample", "--model", m, "--labels", "0", "--schedule", "zig", "--out", str(tmp_path / "a.png")],
                   capsys, "schedule")
    _fails_cleanly(["sample", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "a.png")], capsys,
                   "no model")
    _fails_cleanly(["sample", "--model", m, "--labels", "x", "--out", str(tmp_path / "a.png")], capsys, "integers")
    _fails_cleanly(["edit", "--model", m, "--image", str(tmp_path / "missing.png"), "--box", "0,0,4,4",
                    "--out", str(tmp_path / "b.png")], capsys, "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    _fails_cleanly(["edit", "--model", m, "--image", str(bad), "--box", "0,0,4,4", "--out", str(tmp_path / "b.png")],
                   capsys, "bad.png")
    _fails_cleanly(["train", "--tokens", str(tmp_path), "--out", str(tmp_path / "r")], capsys, "token store")
    _fails_cleanly(["reconstruct", "--model", m + "/maskgit", "--data", "fashion-mnist"], capsys, "'vqgan' model")


def test_sample_writes_npz_and_steps(tiny_pipeline_dir, tmp_path):
    import numpy as np
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(tiny_pipeline_dir), "--labels", "0,1", "--num", "3", "--steps", "3",
                 "--out", str(out), "--show-steps", str(tmp_path / "steps.png")]) == 0
    z = np.load(out)
    assert z["arr_0"].shape == (6, 16, 16, 3) and z["arr_0"].dtype == np.uint8
    assert z["arr_1"].tolist() == [0, 0, 0, 1, 1, 1]
    assert (tmp_path / "steps.png").exists()


def test_python_dash_m_and_console_script_work():
    import shutil

    import maskgit
    r = subprocess.run([sys.executable, "-m", "maskgit", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "sample" in r.stdout
    script = shutil.which("maskgit") or str(Path(sys.executable).parent / "maskgit")
    assert Path(script).exists(), "the `maskgit` console script is not installed (pip install -e .)"
    r = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"maskgit {maskgit.__version__}"
