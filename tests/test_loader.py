"""The streaming loader and streaming tokenize: sharding, resume, equality with the in-memory path."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.commands.tokenizer import encode_all
from maskgit.config import vqgan_preset
from maskgit.data.base import ArrayDataset
from maskgit.data.encode import partial_dir, tokenize_stream
from maskgit.data.imagefiles import ImageFolderDataset, open_scaled
from maskgit.data.loader import DatasetSource, GroupLoader, Key, batch_indices
from maskgit.data.tokenstore import TokenStore, write_store
from maskgit.errors import MaskGITError
from maskgit.models.vqgan import VQGAN
from maskgit.storage.checkpoint import save_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """11 small photos in 3 class folders: PNGs and JPEGs of different sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(11):
        h, w = int(rng.integers(18, 30)), int(rng.integers(18, 40))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        path = root / f"c{i % 3}" / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(exist_ok=True)
        img.save(path)
    return root


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _eq(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_load_the_one_rank_batch(photos):
    """Each rank loads only its rows; together they are the 1-process batch, augmentation included, with any
    number of workers, and the draws are those of ds[i] in the step's epoch."""
    ds = ImageFolderDataset(photos, image_size=16, train=True, seed=5)
    one = DatasetSource(ds, workers=0)
    ranks = [DatasetSource(ds, workers=w) for w in (2, 1)]
    for step in range(7):  # 2 batches of 4 per epoch: crosses three epoch boundaries
        full = one.rank_batch(step, 4, 9)
        parts = [src.rank_batch(step, 4, 9, rank=r, world=2) for r, src in enumerate(ranks)]
        for k in full:
            assert torch.equal(full[k][0::2], parts[0][k]) and torch.equal(full[k][1::2], parts[1][k])
        ds.set_epoch(step // 2)
        idx = batch_indices(step, len(ds), 4, 9)
        assert torch.equal(full["images"], torch.stack([ds[int(i)][0] for i in idx]))
        assert full["labels"].tolist() == [ds.targets[int(i)] for i in idx]


def test_resume_mid_epoch_equals_an_uninterrupted_run(photos):
    ds = ImageFolderDataset(photos, image_size=16, train=True)
    straight = DatasetSource(ds, workers=2)
    ref = [straight.rank_batch(s, 3, 0) for s in range(6)]
    first = DatasetSource(ds, workers=2)
    got = [first.rank_batch(s, 3, 0) for s in range(2)]
    first.close()
    again = DatasetSource(ds, workers=2)  # a new process after --resume at step 2 (mid-epoch: 3 steps per epoch)
    got += [again.rank_batch(s, 3, 0) for s in range(2, 6)]
    assert all(_eq(a, b) for a, b in zip(ref, got))


def test_in_memory_datasets_slice_through_the_same_interface():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 8, 8), generator=g, dtype=torch.uint8)
    ds = ArrayDataset(images, torch.arange(10) % 3, ["a", "b", "c"], "toy")
    src = DatasetSource(ds, workers=4)
    idx = batch_indices(3, 10, 4, 1)
    got = src.rank_batch(3, 4, 1, rank=1, world=2)
    assert torch.equal(got["images"], images[idx].float()[1::2] / 255.0)
    assert torch.equal(got["labels"], (idx % 3)[1::2])
    assert _eq(src.batch(idx), {"images": images[idx].float() / 255.0, "labels": idx % 3})


def test_loader_keeps_plan_order_and_flips(photos):
    ds = ImageFolderDataset(photos, image_size=16)
    keys = [Key((3, 1)), Key((0,), flip=True), Key((5, 6, 7))]
    got = list(GroupLoader(ds, iter(keys), workers=2))
    assert [len(g["images"]) for g in got] == [2, 1, 3] and got[0]["images"].dtype == torch.uint8
    assert torch.equal(got[1]["images"][0], ds.load_u8(0).flip(-1))
    assert torch.equal(got[2]["images"].float() / 255, torch.stack([ds[i][0] for i in (5, 6, 7)]))
    with pytest.raises(MaskGITError, match="workers"):
        DatasetSource(ds, workers=-1)


def test_large_jpegs_are_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((160, 200, 3), 90, np.uint8)).save(path)
    assert open_scaled(path, 32).size == (50, 40)  # 1/4 scale in the DCT: both sides still >= 32
    assert open_scaled(path, 100).size == (200, 160)  # no scale keeps 100 px
    with pytest.raises(MaskGITError, match="not a readable image"):
        (tmp_path / "bad.jpg").write_bytes(b"nope")
        open_scaled(tmp_path / "bad.jpg", 16)


@pytest.fixture(scope="module")
def rgb_tokenizer(tmp_path_factory):
    torch.manual_seed(0)
    model = VQGAN(dataclasses.replace(vqgan_preset("tiny"), channels=3)).eval()
    d = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_model(model, d)
    return model, d


def _meta(model):
    return {"dataset": "toy", "split": "train", "codebook_size": model.codebook_size, "tokenizer_hash": "x"}


def test_streaming_tokenize_equals_the_in_memory_result(photos, rgb_tokenizer, tmp_path):
    """The old path: every image in memory, encode_all in batches (then the flipped copies), write_store."""
    model, _ = rgb_tokenizer
    ds = ImageFolderDataset(photos, image_size=16)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    tokens = torch.cat([encode_all(model, images, 4, "cpu"), encode_all(model, images.flip(-1), 4, "cpu")])
    labels = np.asarray(ds.targets * 2)
    write_store(tmp_path / "old", tokens.numpy(), labels=labels, meta={**_meta(model), "classes": ds.classes})
    stats = tokenize_stream(model, ds, tmp_path / "new", batch_size=4, flip=True, workers=2,
                            meta={**_meta(model), "classes": ds.classes})
    assert stats["encoded"] == 22 and not partial_dir(tmp_path / "new").exists()
    assert _files(tmp_path / "new") == _files(tmp_path / "old")
    store = TokenStore(tmp_path / "new")
    assert torch.equal(store.batch(torch.arange(22))["tokens"], tokens)


def test_tokenize_resume_after_an_interruption_is_byte_identical(photos, rgb_tokenizer, tmp_path):
    model, _ = rgb_tokenizer
    ds = ImageFolderDataset(photos, image_size=16)
    run = dict(batch_size=3, flip=True, workers=0, meta=_meta(model))
    tokenize_stream(model, ds, tmp_path / "ref", **run)

    def die(k):
        if k == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_stream(model, ds, tmp_path / "cut", **run, on_batch=die)
    assert not (tmp_path / "cut").exists() and partial_dir(tmp_path / "cut").is_dir()
    with pytest.raises(MaskGITError, match="other settings"):
        tokenize_stream(model, ds, tmp_path / "cut", **{**run, "batch_size": 2}, resume=True)
    seen = []
    stats = tokenize_stream(model, ds, tmp_path / "cut", **run, resume=True, on_batch=seen.append)
    assert stats["encoded"] == 22 - 9 and len(seen) == 8 - 3  # only the unfinished batches are encoded again
    assert _files(tmp_path / "cut") == _files(tmp_path / "ref")


def test_tokenize_cli_streams_with_workers_and_resumes(photos, rgb_tokenizer, tmp_path, monkeypatch, capsys):
    from maskgit.cli import main
    _, tok = rgb_tokenizer
    args = ["tokenize", "--model", str(tok), "--data", f"imagefolder:{photos}", "--batch-size", "4",
            "--workers", "2", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "ref")]) == 0
    assert "wrote 11 token grids" in capsys.readouterr().out
    calls = {"n": 0}
    real = VQGAN.encode

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(VQGAN, "encode", flaky)
    assert main(args + ["--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(VQGAN, "encode", real)
    assert main(args + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "encoded 7 images" in capsys.readouterr().out
    assert _files(tmp_path / "cut") == _files(tmp_path / "ref")
    assert main(args + ["--out", str(tmp_path / "x"), "--workers", "-1"]) == 2
    assert "--workers must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_process_tokenize_equals_one_process(photos, rgb_tokenizer, tmp_path):
    _, tok = rgb_tokenizer
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["-m", "maskgit", "tokenize", "--model", str(tok), "--data", f"imagefolder:{photos}", "--batch-size", "3",
           "--workers", "1", "--flip", "--device", "cpu"]
    subprocess.run([sys.executable, *cmd, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547", *cmd,
           "--out", str(tmp_path / "two")]
    r = subprocess.run(two, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_tokenizer_training_does_not_depend_on_the_worker_count(photos, tmp_path, capsys):
    """train-tokenizer on an image folder: crop-flip augmentation by default, the same weights with 2 loader
    workers as in-process; in-memory sets refuse crop-flip."""
    from safetensors.torch import load_file

    from maskgit.cli import main
    from maskgit.data.loader import resolve_augment
    run = ["train-tokenizer", "--data", f"imagefolder:{photos}", "--image-size", "16", "--preset", "tiny",
           "--batch-size", "4", "--max-steps", "3", "--disc-start", "1", "--save-every", "0", "--device", "cpu"]
    for w in ("0", "2"):
        assert main(run + ["--out", str(tmp_path / w), "--workers", w]) == 0
    a, b = (load_file(tmp_path / w / "final" / "model.safetensors") for w in ("0", "2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ds = ImageFolderDataset(photos, image_size=16)
    assert resolve_augment("auto", ds) and not resolve_augment("none", ds)
    toy = ArrayDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2), ["a"], "toy")
    assert not resolve_augment("auto", toy)
    with pytest.raises(MaskGITError, match="image files"):
        resolve_augment("crop-flip", toy)


def test_token_store_follows_the_umask(photos, rgb_tokenizer, tmp_path):
    import stat

    from maskgit.cli import main
    _, tok = rgb_tokenizer
    old = os.umask(0o022)
    try:
        assert main(["tokenize", "--model", str(tok), "--data", f"imagefolder:{photos}", "--batch-size", "3",
                     "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "store")]) == 0
    finally:
        os.umask(old)
    paths = [tmp_path / "store", *(tmp_path / "store").rglob("*")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert all(m == (0o755 if p.is_dir() else 0o644) for p, m in zip(paths, modes.values())), modes


def test_a_file_unreadable_after_the_scan_is_replaced_by_the_next(photos, tmp_path):
    import shutil
    root = tmp_path / "p"
    shutil.copytree(photos, root)
    ds = ImageFolderDataset(root, image_size=16)
    want, want_label = ds[4]
    ds.paths[3].write_bytes(b"truncated")  # broken after the verification scan
    with pytest.warns(UserWarning, match="next readable image"):
        got, label = ds[3]
    assert torch.equal(got, want) and label == want_label
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):  # a new scan leaves the file out
        assert len(ImageFolderDataset(root, image_size=16)) == len(ds) - 1
    ds.strict = True
    with pytest.raises(MaskGITError, match="not a readable image"):
        ds[3]
