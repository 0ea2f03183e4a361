"""`maskgit bench table|schedules` on the shipped model at a tiny size: each writes its section with one row per
point it measures (tradeoff and int8 run through the same _Bench plumbing; left out to keep the suite short)."""

import pytest

from maskgit.cli import main


@pytest.mark.parametrize("what, extra, title, rows", [
    ("table", ["--steps", "2", "--repeats", "1"], "## Seed's table: MaskGIT vs AR", 4),  # floor, T=2, AR x2
    ("schedules", ["--steps", "2"], "## Mask schedule ablation", 7),
])
def test_quality_tables_write_their_section(what, extra, title, rows, tmp_path):
    results = tmp_path / "RESULTS.md"
    assert main(["bench", what, "--model", "fashion-mnist", "--num", "20", "--batch-size", "20", "--results",
                 str(results), "--plots", str(tmp_path), *extra]) == 0
    text = results.read_text()
    assert text.startswith(title)
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(body) == rows + 1  # header + rows
