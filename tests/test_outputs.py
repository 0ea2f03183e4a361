"""Sample files other tools read: the ADM .npz layout, PNG folders, and `maskgit eval --samples/--ref` on them."""

import json

import numpy as np
import pytest
import torch

from maskgit.cli import main
from maskgit.errors import MaskGITError
from maskgit.storage.checkpoint import save_model
from maskgit.storage.samples import read_samples, write_npz, write_png_folder

pytest.importorskip("torchmetrics")


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    from maskgit.models.features import FeatureNet, FeatureNetConfig
    torch.manual_seed(0)
    net = FeatureNet(FeatureNetConfig(width=4, feature_dim=8, num_classes=4)).eval()
    d = tmp_path_factory.mktemp("feat") / "f"
    save_model(net, d)
    return d


def test_sample_npz_is_adm_layout(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(tiny_pipeline_dir), "--labels", "0,2", "--num", "3", "--steps", "3",
                 "--out", str(out)]) == 0
    with np.load(out) as z:
        arr, lab = z["arr_0"], z["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 16, 16, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])  # grey x3
    assert lab.tolist() == [0, 0, 0, 2, 2, 2]


def test_sample_png_folder_round_trips(tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "pngs"
    npz = tmp_path / "s.npz"
    args = ["sample", "--model", str(tiny_pipeline_dir), "--labels", "1,3", "--steps", "3"]
    assert main(args + ["--out", str(folder) + "/"]) == 0
    assert main(args + ["--out", str(npz)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "labels.txt"]
    assert (folder / "labels.txt").read_text().split() == ["1", "3"]
    a, b = read_samples(folder), read_samples(npz)
    assert np.array_equal(a["images"], b["images"]) and a["labels"].tolist() == b["labels"].tolist() == [1, 3]


def test_read_samples_rejects_other_layouts(tmp_path):
    np.savez(tmp_path / "old.npz", images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.zeros(2))
    with pytest.raises(MaskGITError, match="arr_0"):
        read_samples(tmp_path / "old.npz")
    np.savez(tmp_path / "lab.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), arr_1=np.zeros(3, np.int64))
    with pytest.raises(MaskGITError, match="labels"):
        read_samples(tmp_path / "lab.npz")
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(MaskGITError, match="uint8"):
        read_samples(tmp_path / "f.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MaskGITError, match="bad.npz"):
        read_samples(tmp_path / "bad.npz")
    write_png_folder(tmp_path / "p", np.zeros((2, 4, 4, 1), np.uint8), [0, 1])
    (tmp_path / "p" / "labels.txt").write_text("0\n")
    with pytest.raises(MaskGITError, match="1 labels for 2 images"):
        read_samples(tmp_path / "p")


def _metrics(path):
    d = json.loads(path.read_text())
    return {k: v for k, v in d.items() if k.startswith(("fd_", "kid_", "precision", "recall", "inception",
                                                         "class_"))}


def test_eval_on_the_file_equals_eval_in_memory(tiny_pipeline_dir, features_dir, tmp_path):
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    write_npz(ref, rng.integers(0, 256, (24, 16, 16, 1), dtype=np.uint8), rng.integers(0, 4, 24))
    base = ["eval", "--model", str(tiny_pipeline_dir), "--features", str(features_dir), "--ref", str(ref)]
    assert main(base + ["--num", "12", "--steps", "3", "--json", str(tmp_path / "mem.json"),
                        "--save-samples", str(tmp_path / "x.npz")]) == 0
    assert main(base + ["--samples", str(tmp_path / "x.npz"), "--json", str(tmp_path / "file.json")]) == 0
    mem, file = _metrics(tmp_path / "mem.json"), _metrics(tmp_path / "file.json")
    assert {"fd_featurenet", "kid_featurenet", "class_accuracy"} <= set(mem)
    assert mem == file
    with np.load(tmp_path / "x.npz") as z:
        assert z["arr_0"].shape == (12, 16, 16, 3) and z["arr_1"].tolist() == [i % 4 for i in range(12)]


def test_eval_uses_a_reference_batchs_mu_sigma(tiny_pipeline_dir, features_dir, tmp_path):
    from maskgit.evaluation.metrics import ProjectFeatures, extract_features
    from maskgit.storage.checkpoint import load_model
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (30, 16, 16, 1), dtype=np.uint8)
    write_npz(tmp_path / "real.npz", real)
    feats = extract_features(ProjectFeatures(load_model(features_dir, "features")),
                             torch.from_numpy(real).permute(0, 3, 1, 2)).double().numpy()
    np.savez(tmp_path / "stats.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    write_npz(tmp_path / "fake.npz", rng.integers(0, 128, (20, 16, 16, 1), dtype=np.uint8))
    base = ["eval", "--features", str(features_dir), "--samples", str(tmp_path / "fake.npz"), "--ref"]
    assert main(base + [str(tmp_path / "real.npz"), "--json", str(tmp_path / "a.json")]) == 0
    assert main(base + [str(tmp_path / "stats.npz"), "--json", str(tmp_path / "b.json")]) == 0
    a, b = _metrics(tmp_path / "a.json"), _metrics(tmp_path / "b.json")
    assert a["fd_featurenet"] > 1e-4 and b["fd_featurenet"] == pytest.approx(a["fd_featurenet"], rel=1e-4)
    assert "kid_featurenet" not in b  # KID needs reference images
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert main(base + [str(tmp_path / "inception.npz")]) == 2  # statistics of another network: a clear error
