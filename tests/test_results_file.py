"""Benchmark tables go into a results file section by section: a rerun replaces its own section, nothing else."""

from maskgit.evaluation.samples import append_results


def test_a_rerun_replaces_its_section_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nIntro.\n")
    append_results(path, "Speed", "maskgit bench speed", "| a |\n|---|\n| 1 |")
    append_results(path, "Quality", "maskgit bench table", "| q |\n|---|\n| 9 |", notes="a note")
    append_results(path, "Speed", "maskgit bench speed --batches 8", "| a |\n|---|\n| 2 |")
    text = path.read_text()
    assert text.startswith("# Results\n\nIntro.\n")
    assert text.count("## Speed\n") == 1 and "| 2 |" in text and "| 1 |" not in text
    assert "## Quality\n" in text and "| 9 |" in text and "a note" in text
    assert text.index("## Speed") < text.index("## Quality")  # replaced in place, not moved to the end
    assert "--batches 8" in text


def test_no_path_writes_nothing(tmp_path):
    append_results(None, "Speed", "cmd", "| a |")
    assert list(tmp_path.iterdir()) == []
