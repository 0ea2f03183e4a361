"""ruff, with the rule set in pyproject.toml, is clean on the package, the tests and the benchmarks."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    r = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_no_source_file_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in sorted((ROOT / "src").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "split these files:\n" + "\n".join(long)


