"""`maskgit bench samplers`: its points are complete settings, and its Pareto front is the non-dominated set; the
speed and samplers benchmarks run as library calls on a spec."""

import pytest

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
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


def test_speed_and_samplers_run_from_their_specs(tiny_pipeline_dir, tmp_path, monkeypatch):
    """The two benchmarks as library calls, with a spec and no command line: speed at the tiny preset (a tiny decoder
    in place of the 256 px one, small peak probes) gives its rows, table and section text; samplers on the tiny
    pipeline (a stand-in evaluator) gives its tables, keeps its points and draws through ``plot``."""
    import dataclasses
    import json

    import torch

    import maskgit.evaluation.speed as speed
    from maskgit.config import vqgan_preset
    from maskgit.evaluation.samplers import SamplersSpec, run_samplers
    from maskgit.pipeline import Pipeline
    real_peak = speed.matmul_peak
    monkeypatch.setattr(speed, "matmul_peak", lambda device="cpu", n=2048, repeats=10, warmup=3, dtype=torch.float32,
                        shape=None: real_peak(device, 64, 1, 0, dtype, None))
    tiny_decoder = dataclasses.replace(vqgan_preset("tiny"), codebook_size=1024)
    monkeypatch.setattr(speed, "vqgan_preset", lambda name: tiny_decoder)
    result = speed.run_speed(speed.SpeedSpec(config="tiny", batches=(1,), precisions=("fp32",), repeats=1,
                                             no_ar_nocache=True), "cpu")
    assert [r["what"] for r in result.rows] == [
        "MaskGIT transformer, 1 forward", "MaskGIT transformer, 8 steps", "MaskGIT transformer, 12 steps",
        "VQGAN decoder 256 px", "VQGAN decoder 256 px, at official-layout FLOPs", "AR, 16 steps, KV cache"]
    assert len(result.table.splitlines()) == 2 + len(result.rows) and "| % of peak |" in result.table
    assert result.title == "Sampling speed, tiny (random weights, fp32)" and result.notes.startswith("Machine: ")

    pipe = Pipeline.load(tiny_pipeline_dir)

    def ev(images, labels):  # numbers that follow the images, in the evaluator's keys
        m = images.float().mean().item()
        return {"fd_featurenet": m, "precision_featurenet": 0.5, "recall_featurenet": 0.5, "class_accuracy": 1 - m}
    drawn = []
    spec = SamplersSpec(steps=(2, 4), batch_size=4, points=tmp_path / "points", plots=tmp_path)
    tables = run_samplers(spec, pipe, ev, torch.arange(4), lambda path, *a, **kw: drawn.append(path.name), None)
    assert [t.startswith(("FD and class agreement vs decoding steps", "Choice temperature x CFG")) for t, _ in tables] \
        == [True, True]
    assert [len(table.splitlines()) - 2 for _, table in tables] == [6, 14]  # 3 orders x 2 T; the T=8 grid
    assert drawn == ["samplers_fd_vs_steps.png", "samplers_agreement_vs_steps.png"]
    assert len(json.loads((tmp_path / "points" / "samplers_points.json").read_text())) == 20
    with pytest.raises(MaskGITError, match="--points"):  # shards leave their points for the run that merges them
        run_samplers(SamplersSpec(shard=(0, 2)), pipe, ev, torch.arange(4), None, None)
