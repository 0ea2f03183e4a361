"""ruff, with the rule set in pyproject.toml, is clean on the package, the tests and the benchmarks; no function is
very long."""

import ast
import shutil
import subprocess
import warnings
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


def long_functions(limit: int) -> list[tuple[str, int]]:
    """(path:function, lines) of every function in src/ longer than ``limit`` lines."""
    out = []
    for p in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((f"{p.relative_to(ROOT)}:{node.name}", n))
    return out


def test_very_long_functions_are_named():
    """Where a file ends is the concept map's business (tests/test_layout.py); a function over 60 lines is worth a
    look (a warning), one over 150 is a defect."""
    for name, n in long_functions(60):
        warnings.warn(f"{name} is {n} lines long", stacklevel=1)
    assert not [f for f in long_functions(150)], long_functions(150)
