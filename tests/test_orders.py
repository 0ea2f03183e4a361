"""Decoding orders: confidence (MaskGIT), a fixed 2D Halton order over the grid, and a random order."""

import numpy as np
import pytest
import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.decoding import decode
from maskgit.sampling.orders import halton_order, radical_inverse

K, MASK = 16, 99


def logits_fn(tokens, guided):
    B, N = tokens.shape
    out = torch.randn(N, K, generator=torch.Generator().manual_seed(3))[None].expand(B, -1, -1)
    return (out, out * 0.5) if guided else out


def steps_of(cfg, tokens, seed=0):
    seen = []
    out = decode(logits_fn, tokens, cfg, MASK, torch.Generator().manual_seed(seed),
                 lambda t, cur, s: seen.append(cur.clone()))
    return out, seen


def test_radical_inverse():
    assert [radical_inverse(i, 2) for i in range(5)] == [0, 0.5, 0.25, 0.75, 0.125]
    assert [round(radical_inverse(i, 3), 6) for i in range(5)] == [0, round(1 / 3, 6), round(2 / 3, 6),
                                                                   round(1 / 9, 6), round(4 / 9, 6)]


@pytest.mark.parametrize("h,w", [(1, 1), (4, 4), (8, 8), (16, 16), (5, 7), (32, 32)])
def test_halton_order_is_a_permutation_of_the_grid(h, w):
    order = halton_order(h, w)
    assert sorted(order) == list(range(h * w))


def test_halton_order_spreads_out():
    """The first cells of the 8x8 order come from the sequence (0,0), (1/2,1/3), (1/4,2/3), ...; the first 16
    fall 3 to 5 in each 4x4 quadrant (a raster order would put all 16 in the top two)."""
    order = halton_order(8, 8)
    assert order[:3] == (0, 2 * 8 + 4, 5 * 8 + 2)
    quadrant = [(c // 8 >= 4) * 2 + (c % 8 >= 4) for c in order[:16]]
    assert np.bincount(quadrant, minlength=4).tolist() == [5, 5, 3, 3]


@pytest.mark.parametrize("order", ["halton", "random"])
def test_each_step_reveals_the_scheduled_count(order):
    tokens = torch.full((3, 64), MASK)
    _, seen_conf = steps_of(SampleConfig(steps=8), tokens)
    out, seen = steps_of(SampleConfig(steps=8, order=order), tokens)
    assert [(c == MASK).sum(1).tolist() for c in seen] == [(c == MASK).sum(1).tolist() for c in seen_conf]
    assert not (out == MASK).any()


def test_halton_reveals_cells_in_halton_order():
    tokens = torch.full((2, 64), MASK)
    _, seen = steps_of(SampleConfig(steps=8, order="halton"), tokens)
    order = halton_order(8, 8)
    for cur in seen:
        known = int((cur[0] != MASK).sum())
        assert set((cur[0] != MASK).nonzero().flatten().tolist()) == set(order[:known])
        assert torch.equal(cur[0] != MASK, cur[1] != MASK)  # the same fixed order for every image


def test_random_order_differs_per_image_and_per_seed():
    tokens = torch.full((2, 64), MASK)
    _, a = steps_of(SampleConfig(steps=8, order="random"), tokens, seed=0)
    _, b = steps_of(SampleConfig(steps=8, order="random"), tokens, seed=1)
    assert not torch.equal(a[2][0] != MASK, a[2][1] != MASK)
    assert not torch.equal(a[2][0] != MASK, b[2][0] != MASK)


@pytest.mark.parametrize("order", ["halton", "random"])
def test_edits_keep_known_tokens_and_skip_them_in_the_order(order):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (3, 64), generator=g)
    known = torch.rand(3, 64, generator=g) < 0.6
    tokens[~known] = MASK
    for cfg in (SampleConfig(steps=8, order=order), SampleConfig(steps=8, order=order, start_step=2, cfg=1.0)):
        out, seen = steps_of(cfg, tokens)
        assert torch.equal(out[known], tokens[known]) and not (out == MASK).any()
        n0 = (~known).sum(1)
        first = (seen[0] == MASK).sum(1)
        assert (first < n0).all()  # a step reveals unknown tokens: the known ones are not counted again
        if order == "halton" and cfg.start_step == 0:
            revealed = (seen[0][0] != MASK) & ~known[0]
            ranks = {c: i for i, c in enumerate(halton_order(8, 8))}
            unknown_cells = sorted((~known[0]).nonzero().flatten().tolist(), key=ranks.get)
            assert set(revealed.nonzero().flatten().tolist()) == set(unknown_cells[:int(revealed.sum())])


def test_bad_order_and_grid():
    with pytest.raises(MaskGITError, match="order"):
        decode(logits_fn, torch.full((1, 64), MASK), SampleConfig(order="raster"), MASK)
    with pytest.raises(MaskGITError, match="square"):
        decode(logits_fn, torch.full((1, 10), MASK), SampleConfig(order="halton"), MASK)
