"""A damaged token store is one clear error before any training: a manifest of SHA-256 per file, the token file's
size against meta.json, token ids against the codebook, labels and meta.json checked; an older store without a
manifest still opens, with a note."""

import json

import numpy as np
import pytest
from conftest import small_store

from maskgit.cli import main
from maskgit.data.tokenstore import MANIFEST, TokenStore, write_sidecars
from maskgit.errors import MaskGITError


@pytest.fixture()
def store(tmp_path):
    return small_store(tmp_path / "store", 12)


def test_a_store_writes_and_checks_its_manifest(store):
    assert set(json.loads((store / MANIFEST).read_text())) == {"tokens.u16", "labels.npy", "meta.json"}
    s = TokenStore(store)
    assert s.tokens.shape == (12, 4, 4) and s.labels.shape == (12,)


def flip_byte(f, at=3):
    b = bytearray(f.read_bytes())
    b[at] ^= 0x01
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["truncate-tokens", "empty-tokens", "flip-tokens", "truncate-labels",
                                    "bad-meta", "no-tokens"])
def test_damaged_store_is_a_one_line_error(store, damage):
    tokens = store / "tokens.u16"
    if damage == "truncate-tokens":
        tokens.write_bytes(tokens.read_bytes()[:-6])
    elif damage == "empty-tokens":
        tokens.write_bytes(b"")
    elif damage == "flip-tokens":
        flip_byte(tokens)
    elif damage == "truncate-labels":
        f = store / "labels.npy"
        f.write_bytes(f.read_bytes()[:-5])
    elif damage == "bad-meta":
        (store / "meta.json").write_text("{not json")
    else:
        tokens.unlink()
    with pytest.raises(MaskGITError) as e:
        TokenStore(store)
    msg = str(e.value)
    assert "\n" not in msg and "maskgit tokenize" in msg


def test_without_a_manifest_the_contents_are_still_checked(store, capsys):
    (store / MANIFEST).unlink()
    TokenStore(store)
    assert "no manifest.json" in capsys.readouterr().err
    tokens = np.memmap(store / "tokens.u16", dtype=np.uint16, mode="r+")
    tokens[5] = 60000  # an id far outside the 32-code codebook
    tokens.flush()
    del tokens
    with pytest.raises(MaskGITError, match="token ids up to 60000"):
        TokenStore(store)
    (store / "tokens.u16").write_bytes((store / "tokens.u16").read_bytes()[:-2])
    with pytest.raises(MaskGITError, match="bytes, but meta.json describes"):
        TokenStore(store)


def test_labels_of_the_wrong_shape_are_refused(store):
    labels = np.zeros(5, dtype=np.int64)
    np.save(store / "labels.npy", labels)
    meta = json.loads((store / "meta.json").read_text())
    write_sidecars(store, (12, 4, 4), np.uint16, labels, None, {k: v for k, v in meta.items()
                                                                 if k not in ("count", "grid", "dtype")})
    with pytest.raises(MaskGITError, match="not 12 class ids"):
        TokenStore(store)


def test_train_on_a_damaged_store_exits_2_before_training(store, tmp_path, capsys):
    flip_byte(store / "tokens.u16")
    rc = main(["train", "--tokens", str(store), "--preset", "tiny", "--out", str(tmp_path / "run"),
               "--max-steps", "2", "--device", "cpu"])
    assert rc == 2 and not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert "damaged" in err and "Traceback" not in err
