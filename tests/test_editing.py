import numpy as np
import pytest
import torch

from maskgit.errors import MaskGITError
from maskgit.pipeline import Pipeline
from maskgit.sampling import editing


def test_token_mask_marks_every_touched_cell_and_dilates():
    pm = torch.zeros(16, 16, dtype=torch.bool)
    pm[3, 3] = True  # touches cell (1, 1) of a 2-px grid
    pm[8:10, 14] = True  # cells (4, 7)
    tm = editing.token_mask(pm, (8, 8))
    assert tm.sum() == 2 and tm[1, 1] and tm[4, 7]
    assert editing.token_mask(pm, (8, 8), dilate=1).sum() == 9 + 6


def test_bad_masks_and_boxes():
    with pytest.raises(MaskGITError, match="empty"):
        editing.token_mask(torch.zeros(16, 16, dtype=torch.bool), (8, 8))
    with pytest.raises(MaskGITError, match="does not match"):
        editing.token_mask(torch.ones(15, 16, dtype=torch.bool), (8, 8))
    with pytest.raises(MaskGITError, match="inside"):
        editing.box_to_mask((10, 10, 10, 10), 16, 16)
    with pytest.raises(MaskGITError):
        editing.parse_outpaint("up:3")


def test_feather_leaves_far_pixels_exactly_unchanged():
    tm = torch.zeros(8, 8, dtype=torch.bool)
    tm[2:4, 2:4] = True
    alpha = editing.feather(tm, (32, 32), radius=3)
    orig, gen = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = editing.blend(orig, gen, alpha)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:16, 8:16] = True
    grown = torch.nn.functional.max_pool2d(inside.float()[None, None], 7, 1, 3)[0, 0] > 0
    assert torch.equal(out[..., ~grown], orig[..., ~grown])
    assert torch.equal(out[..., inside], gen[..., inside])
    ring = grown & ~inside
    assert ((alpha[ring] > 0) & (alpha[ring] < 1)).all()


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return Pipeline.load(tiny_pipeline_dir)


def test_inpaint_keeps_pixels_outside_the_blended_region(pipe):
    img = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    out = pipe.inpaint(img, box=(0, 0, 4, 4), label=1, feather=2, steps=4, output="np")[..., 0]
    assert out.shape == (16, 16)
    far = np.ones((16, 16), bool)
    far[:6, :6] = False  # the 4x4 box (2 cells of 2 px) grown by the 2-px feather
    assert np.array_equal(out[far], img[far])
    assert not np.array_equal(out[:4, :4], img[:4, :4])


def test_outpaint_extends_the_canvas(pipe):
    img = (np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)
    for side, shape in (("right", (16, 22)), ("bottom", (22, 16)), ("left", (16, 22)), ("top", (22, 16))):
        out = pipe.outpaint(img, side, 3, label=2, steps=3, output="np")[..., 0]
        assert out.shape == shape
    right = pipe.outpaint(img, "right", 3, label=2, steps=3, output="np")[..., 0]
    assert np.array_equal(right[:, :16], img)


def test_class_edit_starts_later_and_changes_only_the_box(pipe):
    img = (np.random.default_rng(2).random((16, 16)) * 255).astype(np.uint8)
    out = pipe.class_edit(img, box=(8, 8, 8, 8), label=3, steps=8, feather=0, output="np")[..., 0]
    assert np.array_equal(out[:8], img[:8]) and np.array_equal(out[:, :8], img[:, :8])


def test_pipeline_bad_input(pipe):
    img = np.zeros((16, 16), np.uint8)
    with pytest.raises(MaskGITError, match="out of range"):
        pipe.generate([9])
    with pytest.raises(MaskGITError, match="steps"):
        pipe.generate([0], steps=0)
    with pytest.raises(MaskGITError, match="schedule"):
        pipe.generate([0], schedule="zigzag")
    with pytest.raises(MaskGITError, match="mask is"):
        pipe.inpaint(img, mask=np.ones((8, 8), bool))
    with pytest.raises(MaskGITError, match="empty"):
        pipe.inpaint(img, mask=np.zeros((16, 16), bool))
    with pytest.raises(MaskGITError, match="edits 16x16"):
        pipe.inpaint(np.zeros((20, 20), np.uint8), box=(0, 0, 4, 4))


def test_generate_is_deterministic_and_shows_steps(pipe):
    a = pipe.generate([0, 1], seed=3, output="np", steps=4)
    b = pipe.generate([0, 1], seed=3, output="np", steps=4)
    assert np.array_equal(a, b) and a.shape == (2, 16, 16, 1)
    _, steps = pipe.generate([0], seed=3, output="np", steps=4, return_steps=True)
    assert len(steps) == 4


def test_one_seed_per_image_gives_each_image_its_own_seed(pipe):
    both = pipe.generate([0, 1, 2], seed=[7, 8, 9], output="np", steps=4, temperature=2.0).astype(int)
    for i, (label, seed) in enumerate(zip([0, 1, 2], [7, 8, 9])):
        alone = pipe.generate([label], seed=seed, output="np", steps=4, temperature=2.0).astype(int)
        assert np.abs(both[i] - alone[0]).max() <= 1  # the same image up to a larger batch's float rounding
    assert not np.array_equal(both, pipe.generate([0, 1, 2], seed=7, output="np", steps=4, temperature=2.0))
    for bad in ([7, 8], [7, 8, "9"], [7, 8, True]):
        with pytest.raises(MaskGITError, match="one integer seed per image"):
            pipe.generate([0, 1, 2], seed=bad, steps=4)


class TrivialTokenizer(torch.nn.Module):
    """Not a VQGAN: 2x2 mean-pooled grey levels quantised to 32 bins. The pipeline only needs the interface."""

    codebook_size = 32
    channels = 1

    class config:
        downsample = 2

    def encode(self, x):
        return (torch.nn.functional.avg_pool2d(x, 2)[:, 0] * 31).round().long()

    def decode(self, t):
        return torch.nn.functional.interpolate(t[:, None].float() / 31, scale_factor=2.0)


def test_another_tokenizer_can_be_swapped_in(tiny_pipeline_dir):
    from maskgit.storage.checkpoint import load_model
    p = Pipeline(TrivialTokenizer(), load_model(tiny_pipeline_dir / "maskgit"))
    imgs = p.generate([0, 3], steps=2, output="np")
    assert imgs.shape == (2, 16, 16, 1)
    out = p.inpaint(np.full((16, 16), 128, np.uint8), box=(0, 0, 2, 2), label=0, feather=0, output="np")
    assert (out[2:, 2:, 0] == 128).all()
