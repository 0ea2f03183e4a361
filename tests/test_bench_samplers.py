"""`maskgit bench samplers`: its points are complete settings, and its Pareto front is the non-dominated set."""

from maskgit.config import SampleConfig
from maskgit.evaluation.samplers import pareto_front, settings


def test_settings_are_complete_and_ignore_stored_defaults():
    s = settings(cfg=1.0, order="halton")
    assert s["cfg"] == 1.0 and s["order"] == "halton" and s["steps"] == SampleConfig().steps
    assert "start_step" not in s and set(s) == {f for f in SampleConfig.__dataclass_fields__ if f != "start_step"}


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    rows = [{"FD": 3.0, "class agreement": 0.90}, {"FD": 2.0, "class agreement": 0.85},
            {"FD": 4.0, "class agreement": 0.97}, {"FD": 3.5, "class agreement": 0.89},  # dominated by the first
            {"FD": 2.0, "class agreement": 0.85}, {"FD": 5.0, "class agreement": 0.97}]  # duplicate; dominated
    front = pareto_front(rows)
    assert [(r["FD"], r["class agreement"]) for r in front] == [(2.0, 0.85), (3.0, 0.90), (4.0, 0.97)]
