"""`maskgit bench frontier`: quality rows with seed spread in both feature spaces, cost rows with FLOPs."""

import json

import pytest
import torch

from maskgit.evaluation import frontier as F


def test_cost_rows_count_fewer_flops_for_cached_and_interval_settings():
    spec = F.FrontierSpec(settings={k: F.SETTINGS[k] for k in ("plain T=8", "plain T=4", "T=8, cache every2",
                                                                 "T=8, CFG on [0.25, 1)")},
                          configs=("tiny",), batches=(2,), precision="fp32")
    rows = {r["setting"]: r for r in F.cost_rows(spec)}
    plain = rows["plain T=8"]
    assert plain["vs_plain8"] == 1.0 and plain["gflop"] > 0
    assert rows["plain T=4"]["gflop"] == pytest.approx(plain["gflop"] / 2)
    assert rows["T=8, cache every2"]["gflop"] < plain["gflop"]
    # CFG skipped on the first 2 of 8 steps: 6 guided (2 rows) + 2 unguided (1 row) of 16 row-forwards
    assert rows["T=8, CFG on [0.25, 1)"]["gflop"] == pytest.approx(plain["gflop"] * 14 / 16)
    table = F.cost_table(list(rows.values()))
    assert table.count("\n") == 5 and "| tiny | 2 | T=8, cache every2 |" in table


def test_equal_quality_uses_the_seed_spread_in_every_space():
    ref = {"fd": 4.0, "fd_spread": 0.2, "fd_indep": 6.0, "fd_indep_spread": 0.3, "agree": 0.95, "agree_spread": 0.01}
    assert F.equal_quality(dict(ref, fd=4.15), ref)
    assert not F.equal_quality(dict(ref, fd_indep=6.5), ref)  # worse in the independent space alone
    assert not F.equal_quality(dict(ref, agree=0.93), ref)
    assert F.equal_quality(dict(ref, fd=3.0, fd_indep=5.0, agree=0.99), ref)


def test_equal_quality_compares_seed_by_seed_when_both_rows_have_the_same_seeds():
    ref = {"setting": "plain T=8", "seeds": [1, 2, 3], "fd": 4.0, "fd_spread": 0.2, "fd_seeds": [4.0, 4.1, 3.9],
           "fd_indep": 6.0, "fd_indep_spread": 0.4, "fd_indep_seeds": [6.0, 6.2, 5.8], "agree": 0.95,
           "agree_spread": 0.0, "agree_seeds": [0.95] * 3, "s_per_image": 0.1}
    # 0.15 worse at every seed: inside the unpaired spread (0.2), outside the paired one (0)
    worse = dict(ref, setting="w", fd=4.15, fd_seeds=[4.15, 4.25, 4.05])
    assert not F.equal_quality(worse, ref)
    assert F.equal_quality({k: v for k, v in worse.items() if k != "seeds"}, ref)  # unpaired fallback
    noisy = dict(ref, setting="n", fd_seeds=[4.3, 3.9, 3.8], fd=4.0)  # differences +0.3, -0.2, -0.1
    assert F.equal_quality(noisy, ref)
    table = F.quality_table([ref, worse, noisy])
    assert "| w |" in table and "+0.150 ± 0.000 / +0.000 ± 0.000 / +0.000 ± 0.000 | no |" in table
    assert table.splitlines()[-1].endswith("| yes |")


def test_bench_frontier_on_the_shipped_model_writes_both_tables(tmp_path, capsys):
    from maskgit.cli import main
    results = tmp_path / "RESULTS.md"
    rc = main(["bench", "frontier", "--model", "fashion-mnist", "--num", "20", "--seeds", "1,2", "--configs", "",
               "--batch-size", "20", "--settings", "plain T=8;T=8, cache every2;T=8, CFG on [0.25, 1)",
               "--results", str(results), "--plots", str(tmp_path)])
    assert rc == 0
    text = results.read_text()
    assert "## Frontier: quality of each setting" in text and "seeds 1, 2" in text
    lines = [line for line in text.splitlines() if line.startswith("| plain T=8 |")]
    # mean ± spread of FD, FD (independent), agreement; then the same three seed by seed against plain T=8
    assert len(lines) == 1 and lines[0].count("±") == 6 and lines[0].endswith("| yes |")
    assert len([line for line in text.splitlines() if line.startswith("| T=")]) == 2
    assert "Frontier: cost" not in text  # no --configs: no random-weight timing
    assert (tmp_path / "frontier.png").stat().st_size > 0
    run = json.loads((tmp_path / "frontier.json").read_text())
    assert [r["setting"] for r in run["quality"]] == ["plain T=8", "T=8, cache every2", "T=8, CFG on [0.25, 1)"]
    assert all(len(r["fd_indep_seeds"]) == 2 for r in run["quality"]) and run["cost"] == []


def test_quality_rows_spread_is_zero_for_one_seed_and_positive_across_seeds():
    from maskgit.commands.evaluate import evaluator_for
    from maskgit.pipeline import load
    pipe = load("fashion-mnist")
    ev = evaluator_for(pipe, None, "fashion-mnist", "test", num=200)
    one = F.quality_rows(pipe, ev, F.FrontierSpec(settings={"plain T=4": dict(steps=4)}, num=20, seeds=(1,),
                                                  batch_size=20))
    two = F.quality_rows(pipe, ev, F.FrontierSpec(settings={"plain T=4": dict(steps=4)}, num=20, seeds=(1, 2),
                                                  batch_size=20))
    assert one[0]["fd_spread"] == 0.0 and two[0]["fd_spread"] > 0
    assert one[0]["fd"] == pytest.approx(json.loads(json.dumps(one[0]))["fd"])
    assert torch.isfinite(torch.tensor([two[0]["fd"], two[0]["fd_indep"], two[0]["agree"]])).all()


def test_bench_frontier_cost_only_times_random_weights_without_the_model(tmp_path):
    from maskgit.cli import main
    results = tmp_path / "RESULTS.md"
    assert main(["bench", "frontier", "--cost-only", "--configs", "tiny", "--batches", "1", "--repeats", "1",
                 "--settings", "plain T=4;T=8, cache every4", "--results", str(results), "--plots", str(tmp_path)]) == 0
    text = results.read_text()
    assert "Frontier: quality" not in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert [r.split(" | ")[2] for r in rows] == ["plain T=8", "plain T=4", "T=8, cache every4"]


def test_bench_frontier_refuses_unknown_settings_and_configs_before_any_work(capsys):
    from maskgit.cli import main
    assert main(["bench", "frontier", "--cost-only", "--settings", "plain T=5"]) != 0
    assert "unknown frontier setting 'plain T=5'" in capsys.readouterr().err
    assert main(["bench", "frontier", "--cost-only", "--configs", "nope"]) != 0
    assert "nope" in capsys.readouterr().err
    # with the quality half too: the settings are refused before the model (here a missing one) is loaded
    assert main(["bench", "frontier", "--settings", "plain T=5", "--model", "/nonexistent/model"]) != 0
    assert "unknown frontier setting 'plain T=5'" in capsys.readouterr().err
