"""Reduced-precision comparison: fp32 is the reference row; other precisions decode the same labels and seeds."""

import torch

from maskgit.evaluation.precision import compare_precisions, decode_same_seeds
from maskgit.pipeline import Pipeline


def test_compare_precisions_rows(tiny_pipeline_dir):
    labels = torch.tensor([0, 1, 2, 0, 1])
    seen = []

    def evaluate(images, labs):
        seen.append(images)
        return {"mean": images.mean().item()}
    rows = compare_precisions(tiny_pipeline_dir, "cpu", ["bf16"], labels, evaluate, steps=3, batch_size=2, repeats=1)
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert rows[0]["tokens equal to fp32"] == 1.0 and 0 <= rows[1]["tokens equal to fp32"] <= 1
    assert all(r["s/img (batch 1)"] > 0 and r["img/s (batch 32)"] > 0 for r in rows)
    assert seen[0].shape[0] == 5
    # the fp32 row's images are the pipeline's own images for those seeds
    pipe = Pipeline.load(tiny_pipeline_dir)
    toks = decode_same_seeds(pipe, labels, 3, 0, 2)
    torch.testing.assert_close(seen[0], pipe.to_images(toks))


def test_scaling_rows_cover_every_point_and_the_ar_baseline(tmp_path):
    from maskgit.evaluation.scaling import measure_scaling, plot_scaling
    rows = measure_scaling("tiny", [4, 8], [2, 4], [1, 2], "fp32", "cpu", max_batch_tokens=100, log=lambda r: None)
    mg = [(r["tokens"], r["steps"], r["batch"]) for r in rows if r["model"] == "MaskGIT"]
    assert mg == [(16, 2, 1), (16, 4, 1), (16, 2, 2), (16, 4, 2), (64, 2, 1), (64, 4, 1)]  # 2 x 64 > 100 skipped
    assert [(r["tokens"], r["steps"]) for r in rows if r["model"].startswith("AR")] == [(16, 16), (64, 64)]
    plot_scaling(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
