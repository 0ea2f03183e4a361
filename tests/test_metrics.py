import itertools

import numpy as np
import pytest
import torch

from maskgit.errors import MaskGITError
from maskgit.evaluation.metrics import (
    InceptionFeatures,
    ProjectFeatures,
    as_nchw,
    class_accuracy,
    evaluate_images,
    extract_features,
    fid_metric,
    frechet_distance,
    inception_score,
    kid,
    load_stats,
    precision_recall,
    reference_stats,
)
from maskgit.models.features import FeatureNet, FeatureNetConfig

pytest.importorskip("torchmetrics")


def gaussian(n=500, d=16, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
    return rng.normal(size=(n, d)) @ mix + shift


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return FeatureNet(FeatureNetConfig(width=4, feature_dim=8)).eval()


def test_fd_of_a_set_with_itself_is_zero():
    a = gaussian()
    scale = np.trace(np.cov(a, rowvar=False))
    assert abs(frechet_distance(a, a)) < 1e-3 * scale


def test_fd_grows_with_mean_shift_as_shift_squared_times_dim():
    a = gaussian()
    values = [frechet_distance(a, a + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in itertools.pairwise(values))
    # same covariance: FD is exactly |shift|^2 = s^2 * D
    np.testing.assert_allclose(values[1:], [s * s * 16 for s in (0.25, 0.5, 1.0, 2.0)], rtol=1e-4)


def test_fd_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = gaussian(seed=1), gaussian(seed=2, shift=0.3) * 1.5
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-3)
    np.testing.assert_allclose(frechet_distance(torch.tensor(a), torch.tensor(b)), expected, rtol=1e-3)


def test_kid_zero_for_identical_positive_for_shifted():
    a = gaussian(n=300)
    same, _ = kid(a, a, subsets=20, subset_size=200)
    shifted, _ = kid(a, a + 1.0, subsets=20, subset_size=200)
    assert shifted > 0.05
    assert abs(same) < 0.01 * shifted
    assert kid(a, a + 1.0, subsets=5, subset_size=100, seed=3) == kid(a, a + 1.0, subsets=5, subset_size=100, seed=3)


def test_precision_recall():
    a = gaussian(n=400)
    assert precision_recall(a, a, k=3) == (1.0, 1.0)
    precision, recall = precision_recall(a, a + 100.0, k=3)
    assert precision == 0.0 and recall == 0.0
    # fakes covering one corner of the real set (2-D): precise but poor recall
    b = gaussian(n=400, d=2)
    corner = b[(b[:, 0] > 0) & (b[:, 1] > 0)]
    precision, recall = precision_recall(b, corner, k=3)
    assert precision == 1.0 and recall < 0.5


def test_inception_score_extremes():
    k = 10
    mean, std = inception_score(torch.full((50, k), 1.0 / k), splits=5)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(torch.eye(k), splits=1)[0] == pytest.approx(k)
    assert inception_score(torch.eye(k).repeat(3, 1) * 50.0, splits=3)[0] == pytest.approx(k, rel=1e-6)  # logits
    with pytest.raises(MaskGITError):
        inception_score(torch.eye(k), splits=11)


def test_feature_set_errors():
    with pytest.raises(MaskGITError):
        frechet_distance(gaussian(d=4), gaussian(d=5))
    with pytest.raises(MaskGITError):
        frechet_distance(gaussian(n=1), gaussian())


def test_as_nchw_layouts_and_range():
    x = torch.randint(0, 256, (3, 8, 8, 1), dtype=torch.uint8)
    assert torch.equal(as_nchw(x), x.permute(0, 3, 1, 2))
    assert torch.equal(as_nchw(x.permute(0, 3, 1, 2)), x.permute(0, 3, 1, 2))
    assert as_nchw(x.numpy()[..., 0]).shape == (3, 1, 8, 8)
    with pytest.raises(MaskGITError, match=r"\[0,1\]"):
        as_nchw(torch.rand(2, 1, 8, 8) * 2 - 1)


def test_stats_round_trip_and_cache(tmp_path):
    extractor = ProjectFeatures(tiny_net())
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    path = tmp_path / "ref.npz"
    stats = reference_stats(extractor, images, cache=path)
    loaded = load_stats(path)
    for key in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(loaded[key], stats[key])
    assert loaded["name"] == "featurenet" and loaded["fingerprint"] == extractor.fingerprint
    np.testing.assert_allclose(stats["sigma"], np.cov(stats["features"], rowvar=False))
    stamp = path.stat().st_mtime_ns
    reference_stats(extractor, images, cache=path)  # same extractor + images: served from the cache
    assert path.stat().st_mtime_ns == stamp
    other = ProjectFeatures(tiny_net(seed=1))
    assert other.fingerprint != extractor.fingerprint
    assert not np.array_equal(reference_stats(other, images, cache=path)["features"], stats["features"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MaskGITError):
        load_stats(tmp_path / "bad.npz")


def test_evaluate_images_on_identical_sets():
    net = tiny_net()
    extractor = ProjectFeatures(net)
    real = torch.randint(0, 256, (60, 1, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (60,))
    fake_nhwc = real.permute(0, 2, 3, 1).numpy()
    out = dict(evaluate_images(fake_nhwc, labels, real, extractor, classifier=net, kid_subsets=5))
    assert list(out) == ["fd_featurenet", "kid_featurenet", "precision_featurenet", "recall_featurenet",
                         "inception_score", "class_accuracy"]
    assert abs(out["fd_featurenet"]) < 1e-6 and out["precision_featurenet"] == out["recall_featurenet"] == 1.0
    assert out["class_accuracy"] == pytest.approx(class_accuracy(net, real.float() / 255, labels))
    assert 1.0 <= out["inception_score"] <= 10.0
    without = dict(evaluate_images(real.float() / 255, None, real, extractor))
    assert "class_accuracy" not in without and "inception_score" not in without


def test_torchmetrics_image_adapter_matches_feature_path():
    extractor = ProjectFeatures(tiny_net())
    a = torch.rand(30, 1, 32, 32)
    b = torch.rand(30, 1, 32, 32) * 0.5
    metric = fid_metric(extractor)
    metric.update(a, real=True)
    metric.update(b, real=False)
    expected = frechet_distance(extract_features(extractor, a), extract_features(extractor, b))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)


def test_project_features_reject_wrong_channels():
    with pytest.raises(MaskGITError, match="channel"):
        extract_features(ProjectFeatures(tiny_net()), torch.rand(2, 3, 32, 32))


def test_inception_path_needs_the_extra():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(MaskGITError, match=r"maskgit-suite\[fid\]"):
            InceptionFeatures()
    else:
        pytest.skip("torch-fidelity is installed")


def test_evaluator_reports_fd_in_the_independent_feature_space_too():
    from maskgit.evaluation.samples import Evaluator
    torch.manual_seed(0)
    net_a = FeatureNet(FeatureNetConfig(width=8, feature_dim=16))
    net_b = FeatureNet(FeatureNetConfig(width=12, feature_dim=24))
    real = torch.rand(64, 1, 32, 32)
    ev = Evaluator(net_a, real, independent=net_b)
    same = ev(real, None)
    other = ev(real * 0.2, None)  # darker images (untrained networks: small feature scales, so small FDs)
    assert abs(same["fd_independent"]) < 1e-6 and abs(same["fd_featurenet"]) < 1e-6
    assert other["fd_independent"] > 1e-4 and other["fd_featurenet"] > 1e-4
    # the second space is its own: its FD is not the first network's
    assert other["fd_independent"] != pytest.approx(other["fd_featurenet"], rel=1e-3)
    assert "fd_independent" not in Evaluator(net_a, real)(real, None)


def test_the_shipped_independent_feature_space_differs_from_the_models_own():
    from maskgit.evaluation.samples import independent_features
    from maskgit.pipeline import load
    second = independent_features("fashion-mnist", channels=1, image_size=32)
    assert second is not None, "weights/eval/fashion-mnist is missing"
    own = load("fashion-mnist").features
    assert second.config.feature_dim != own.config.feature_dim or second.config.width != own.config.width
    assert independent_features("fashion-mnist", channels=3) is None  # does not fit RGB images
    assert independent_features("no-such-data") is None
