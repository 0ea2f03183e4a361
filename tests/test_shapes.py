"""The procedural shapes dataset (determinism, held-out combinations) and the binding checker."""

import dataclasses

import numpy as np
import pytest

from maskgit.data import shapes as S
from maskgit.data.datasets import load_dataset
from maskgit.errors import MaskGITError


def test_items_are_a_function_of_split_and_index():
    a, sa = S.render("train", 7)
    b, sb = S.render("train", 7)
    assert np.array_equal(a, b) and sa == sb
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    imgs1, scenes1 = S.render_split("test", 20)
    imgs2, scenes2 = S.render_split("test", 20)
    assert np.array_equal(imgs1, imgs2) and scenes1 == scenes2
    assert len({s.caption for s in scenes1}) > 15  # items differ from each other
    train = S.render_split("train", 20)[0]
    assert not np.array_equal(train, imgs1)  # splits use different seeds


def test_heldout_pairs_never_appear_in_train_or_test():
    assert len(S.all_scenes()) == 24 * 18 * 4
    for split in ("train", "test"):
        _, scenes = S.render_split(split, 1000)
        assert not any(s.heldout for s in scenes)
        pairs = {(o.colour, o.shape) for s in scenes for o in (s.a, s.b)}
        assert pairs == {(c, sh) for c in S.COLOURS for sh in S.SHAPES} - S.HELDOUT  # everything else is seen
    _, held = S.render_split("heldout", 300)
    assert all(s.heldout for s in held)
    # every colour and every shape is seen in training: held-out pairs are new combinations, not new words
    assert {c for c, _ in S.HELDOUT} <= set(S.COLOURS) and {s for _, s in S.HELDOUT} <= set(S.SHAPES)


def test_captions_parse_back():
    for s in S.all_scenes()[::37]:
        assert S.parse_caption(s.caption) == s
    assert S.parse_caption("A  small red circle left of a large BLUE square").b.colour == "blue"
    with pytest.raises(MaskGITError, match="not a shapes caption"):
        S.parse_caption("a cat")
    with pytest.raises(MaskGITError, match="different colours"):
        S.parse_caption("a small red circle left of a large red square")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_checker_scores_real_images_perfectly(split):
    imgs, scenes = S.render_split(split, 300)
    acc = S.binding_accuracy(imgs, scenes)
    assert acc == {k: 1.0 for k in ("colour_ok", "shape_ok", "size_ok", "relation_ok", "all_ok")}
    # captions work as well as structured specs
    assert S.check_binding(imgs[0], scenes[0].caption)["all_ok"]


def test_checker_tolerates_noise():
    imgs, scenes = S.render_split("test", 200)
    rng = np.random.default_rng(0)
    noisy = np.clip(imgs + rng.normal(0, 20, imgs.shape), 0, 255).astype(np.uint8)
    assert S.binding_accuracy(noisy, scenes)["all_ok"] >= 0.98


def _scene_pairs(pred):
    return [s for s in S.scenes_of("train") if pred(s)][:40]


def test_checker_rejects_swapped_colours():
    scenes = _scene_pairs(lambda s: s.a.shape != s.b.shape)
    for i, s in enumerate(scenes):
        swapped = S.Scene(dataclasses.replace(s.a, colour=s.b.colour), s.relation,
                          dataclasses.replace(s.b, colour=s.a.colour))
        img = S.draw(swapped, np.random.default_rng(i))
        r = S.check_binding(img, s)
        assert r["colour_ok"] and not r["shape_ok"] and not r["all_ok"]


def test_checker_rejects_wrong_relation_size_and_missing_objects():
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for i, s in enumerate(S.scenes_of("train")[::25]):
        img = S.draw(dataclasses.replace(s, relation=flip[s.relation]), np.random.default_rng(i))
        r = S.check_binding(img, s)
        assert r["colour_ok"] and r["shape_ok"] and r["size_ok"] and not r["relation_ok"] and not r["all_ok"]
    s = next(x for x in S.scenes_of("train") if x.a.size == "small")
    big = dataclasses.replace(s, a=dataclasses.replace(s.a, size="large"))
    r = S.check_binding(S.draw(big, np.random.default_rng(0)), s)
    assert not r["size_ok"] and r["colour_ok"]
    blank = np.zeros((32, 32, 3), np.uint8)
    assert not any(S.check_binding(blank, s).values())
    with pytest.raises(MaskGITError, match="uint8"):
        S.check_binding(blank.astype(np.float32), s)


def test_registered_as_a_dataset(tmp_path, capsys):
    ds = load_dataset("shapes:12", split="heldout")
    img, caption = ds[3]
    assert len(ds) == 12 and img.shape == (3, 32, 32) and ds.classes is None
    assert S.parse_caption(caption).heldout
    assert len(load_dataset("shapes", split="test")) == S.SPLIT_SIZES["test"]
    with pytest.raises(MaskGITError, match="splits"):
        load_dataset("shapes", split="validation")
    with pytest.raises(MaskGITError, match="32x32"):
        load_dataset("shapes", image_size=64)
    from maskgit.cli import main
    out = tmp_path / "x.png"
    assert main(["data", "show", "shapes", "-n", "16", "-o", str(out)]) == 0 and out.exists()
    assert "shapes (20000 items)" in capsys.readouterr().out
