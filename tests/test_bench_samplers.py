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


def test_pareto_front_in_two_feature_spaces_keeps_points_either_space_prefers():
    rows = [{"FD": 3.0, "FD2": 5.0, "class agreement": 0.90},
            {"FD": 2.5, "FD2": 6.0, "class agreement": 0.90},  # better in the first space only: kept
            {"FD": 3.5, "FD2": 5.5, "class agreement": 0.89},  # worse everywhere than the first: dropped
            {"FD": 3.0, "FD2": float("nan"), "class agreement": 0.80}]
    front = pareto_front(rows[:3], ("FD", "FD2"))
    assert [(r["FD"], r["FD2"]) for r in front] == [(2.5, 6.0), (3.0, 5.0)]
    # a single space drops the point the second space prefers
    assert [r["FD"] for r in pareto_front(rows[:3])] == [2.5]
    # a space missing in some row (NaN) is left out rather than comparing NaNs
    assert [r["FD"] for r in pareto_front(rows, ("FD", "FD2"))] == [2.5]
