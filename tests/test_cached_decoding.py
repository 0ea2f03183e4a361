"""Cached decoding (SampleConfig.cache) and the guidance interval (cfg_start / cfg_end): off is today's decoder bit
for bit, a cheap step equals a full step where the context did not change, rows stay independent of their batch."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import maskgit
from maskgit.config import SampleConfig, transformer_preset
from maskgit.errors import MaskGITError
from maskgit.models.transformer import MaskGITTransformer
from maskgit.sampling import arithmetic
from maskgit.sampling.cache import padded_positions
from maskgit.sampling.decoding import (
    TorchOps,
    choice_noise_scale,
    decode,
    guidance_scale,
    guide,
    mask_counts,
    sample_tokens,
)
from maskgit.sampling.noise import RowGenerators
from maskgit.step_plan import full_steps


@pytest.fixture(scope="module")
def shipped():
    return maskgit.load("fashion-mnist")


def reference_decode(logits_fn, tokens, config, mask_id, generator):
    """The decode loop as it was before cached decoding and the guidance interval (the maskgit sampler)."""
    cur = tokens.clone()
    B, N = cur.shape
    n0, guided = (cur == mask_id).sum(1), config.cfg != 0
    ops = TorchOps(generator, cur.device)
    fixed = arithmetic.fixed_priority(ops, config.order, B, N)
    for step in range(config.start_step, config.steps):
        unknown_map = cur == mask_id
        if not unknown_map.any():
            break
        out = logits_fn(cur, guided)
        logits = (guide(*out, guidance_scale(config, step)) if guided else out).float()
        sampled = torch.where(unknown_map, sample_tokens(logits, config, generator), cur)
        if step == config.steps - 1:
            return sampled
        if fixed is None:
            score = torch.log_softmax(logits, -1).gather(-1, sampled[..., None])[..., 0]
            if config.choice_temperature > 0:
                score = score + choice_noise_scale(config, step) * arithmetic.gumbel(ops, score.shape)
        else:
            score = fixed
        score = torch.where(unknown_map, score, torch.full_like(score, math.inf))
        keep = mask_counts(n0, unknown_map.sum(1), config, step)
        rank = score.argsort(-1).argsort(-1)
        cur = torch.where(rank < keep[:, None], torch.full_like(sampled, mask_id), sampled)
    return cur


def grids(pipe, fracs, seed=0):
    """Token grids with the given fractions of positions masked, one row each (1.0 = generation)."""
    g = torch.Generator().manual_seed(seed)
    N = pipe.grid[0] * pipe.grid[1]
    tok = torch.randint(0, pipe.tokenizer.codebook_size, (len(fracs), N), generator=g)
    for i, f in enumerate(fracs):
        tok[i, torch.rand(N, generator=g) < f] = pipe.mask_id
    return tok


def test_cache_off_is_todays_decoder_bit_for_bit(shipped):
    labels = torch.tensor([0, 7])
    tok = grids(shipped, [1.0, 0.6])
    for kw in (dict(), dict(order="confidence", cfg=0.0), dict(order="random", cfg=2.0, cfg_schedule="linear",
                                                               steps=6, start_step=1)):
        cfg = shipped.sample_config(**kw)
        assert cfg.cache == "off" and (cfg.cfg_start, cfg.cfg_end) == (0, 1)
        fn = shipped.logits_fn(labels)
        today = reference_decode(fn, tok, cfg, shipped.mask_id, torch.Generator().manual_seed(5))
        assert torch.equal(decode(fn, tok, cfg, shipped.mask_id, torch.Generator().manual_seed(5)), today), kw
        # every1: every step full, through the cached path (the same forward, which also keeps keys and values)
        every1 = dataclasses.replace(cfg, cache="every1")
        assert torch.equal(decode(fn, tok, every1, shipped.mask_id, torch.Generator().manual_seed(5)), today), kw


def _models():
    tiny = transformer_preset("tiny")
    text = dict(num_classes=0, null_class=False, text_dim=12, text_len=5)
    return [("class", tiny, True), ("prefix", dataclasses.replace(tiny, text_mode="prefix", **text), False),
            ("cross", dataclasses.replace(tiny, text_mode="cross", **text), False)]


@pytest.mark.parametrize("name,config,classes", _models(), ids=[m[0] for m in _models()])
def test_a_cheap_step_equals_a_full_step_when_the_context_did_not_change(name, config, classes):
    torch.manual_seed(0)
    model = MaskGITTransformer(config).eval()
    B, N = 3, config.num_tokens
    tok = torch.randint(0, config.codebook_size, (B, N))
    tok[torch.rand(B, N) < 0.5] = config.mask_id
    labels = torch.tensor([0, 3, -1]) if classes else None
    text = None if classes else torch.randn(B, 5, 12)
    mask = None if classes else torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    pos = torch.stack([torch.randperm(N)[:6] for _ in range(B)])
    pos[0, 4:] = pos[0, 0]  # a padded row: its first position repeated
    with torch.inference_mode():
        plain = model(tok, labels, text=text, text_mask=mask)
        store = {}
        full = model.forward_cached(tok, labels, text=text, text_mask=mask, cache=store)
        assert torch.equal(full, plain) and len(store) == config.depth
        cheap = model.forward_cached(tok, labels, text=text, text_mask=mask, cache=store, positions=pos)
        want = plain.gather(1, pos[..., None].expand(-1, -1, plain.shape[-1]))
        torch.testing.assert_close(cheap, want, rtol=0, atol=1e-5)
        if classes:  # a full step of both CFG branches, then an unguided cheap step: the conditional rows
            model.forward_cached(torch.cat([tok, tok]), torch.cat([labels, torch.full_like(labels, -1)]), cache=store)
            cheap = model.forward_cached(tok, labels, cache=store, positions=pos)
            torch.testing.assert_close(cheap, want, rtol=0, atol=1e-5)


def test_a_cheap_step_on_the_shipped_model(shipped):
    m, labels = shipped.transformer, torch.tensor([1, 4])
    tok = grids(shipped, [0.7, 0.3])
    pos = padded_positions(tok == shipped.mask_id)
    with torch.inference_mode():
        store = {}
        full = m.forward_cached(tok, labels, cache=store)
        cheap = m.forward_cached(tok, labels, cache=store, positions=pos)
    torch.testing.assert_close(cheap, full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1])), rtol=0,
                               atol=1e-5)


def test_padded_positions():
    allowed = torch.zeros(3, 64, dtype=torch.bool)
    allowed[0, [3, 9, 40]] = True
    allowed[1, 5] = True
    idx = padded_positions(allowed)
    assert idx.shape == (3, 4)  # 3 rounded up to a multiple of 64 / 16
    assert idx[0].tolist() == [3, 9, 40, 3] and idx[1].tolist() == [5] * 4 and idx[2].tolist() == [0] * 4


def test_the_schedule():
    assert full_steps("off", 0, 4) == [True] * 4 and full_steps("every1", 0, 3) == [True] * 3
    assert full_steps("every2", 0, 5) == [True, False, True, False, True]
    assert full_steps("every3", 2, 8) == [True, True, True, False, False, True, False, False]  # from start_step
    assert full_steps("FCCF", 0, 7) == [True, False, False, True, True, False, False]  # repeats


def test_cached_decode_with_per_row_seeds_equals_each_row_alone(shipped):
    tok = grids(shipped, [1.0, 0.6, 0.2], seed=1)  # different numbers of positions to recompute per row
    labels, seeds = torch.tensor([0, 3, 7]), [11, 12, 13]
    for kw in (dict(cache="every2", order="confidence", cfg=1.0), dict(cache="FCC", order="halton", cfg=0.0)):
        cfg = shipped.sample_config(steps=6, **kw)
        gens = RowGenerators([(torch.Generator().manual_seed(s), 1) for s in seeds])  # as the server batches
        both = decode(shipped.logits_fn(labels), tok, cfg, shipped.mask_id, gens)
        for i in range(3):
            alone = shipped.decode_tokens(tok[i:i + 1], labels[i:i + 1], cfg, seed=[seeds[i]])
            assert torch.equal(both[i:i + 1], alone), (kw, i)


class Spy:
    """A logits_fn wrapper that records (guided, cheap step rows or None) of every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, tokens, guided, **kw):
        pos = kw.get("positions")
        self.calls.append((guided, None if pos is None else pos.shape[1]))
        return self.fn(tokens, guided, **kw)


def test_cfg_with_cache_runs_both_branches_where_the_group_needs_them(shipped):
    labels, tok = torch.tensor([2, 9]), grids(shipped, [1.0, 1.0])
    spy = Spy(shipped.logits_fn(labels))
    cfg = shipped.sample_config(steps=8, cfg=1.0, order="confidence", cache="every2", cfg_start=0.125, cfg_end=0.75)
    out = decode(spy, tok, cfg, shipped.mask_id, torch.Generator().manual_seed(0))
    assert not (out == shipped.mask_id).any()
    guided = [s / 8 >= 0.125 and s / 8 < 0.75 for s in range(8)]  # steps 1..5
    # full steps 0, 2, 4, 6 run both branches when a step of their pair is guided (step 0 for step 1's sake)
    assert [g for g, _ in spy.calls] == [True, True, True, True, True, True, False, False]
    assert [p is None for _, p in spy.calls] == [True, False] * 4
    assert [g for g, _ in spy.calls][1::2] == guided[1::2]
    cheap = [p for _, p in spy.calls[1::2]]
    assert cheap[0] < 16 and cheap[-1] <= 64  # the first pair decides a few positions; the last, all masked left


def test_fixed_orders_reveal_the_same_positions_cached(shipped):
    """With halton / random the group's positions are the ones the steps reveal uncached."""
    labels, tok = torch.tensor([1, 6]), grids(shipped, [1.0, 0.5])
    for order in ("halton", "random"):
        masks = {}
        for cache in ("off", "every3"):
            cfg = shipped.sample_config(steps=8, order=order, cfg=0.5, cache=cache)
            seen = []
            shipped.decode_tokens(tok, labels, cfg, seed=[3, 4], callback=lambda t, cur, s: seen.append(
                cur == shipped.mask_id))
            masks[cache] = torch.stack(seen)
        assert torch.equal(masks["off"], masks["every3"]), order


def test_inpaint_with_cache_keeps_the_known_region(shipped):
    tok = grids(shipped, [0.5, 0.3], seed=2)
    known = tok != shipped.mask_id
    out = shipped.decode_tokens(tok, torch.tensor([0, 5]), shipped.sample_config(cache="every2", start_step=2),
                                seed=[1, 2])
    assert torch.equal(out[known], tok[known]) and not (out == shipped.mask_id).any()
    image = np.zeros((32, 32), np.uint8)
    image[8:24, 8:24] = 200
    filled = shipped.inpaint(image, box=(0, 0, 16, 16), label=3, output="np", cache="every2", cfg=1.0)
    assert filled.shape[:2] == (32, 32)
    assert np.array_equal(filled[24:, 24:, 0], image[24:, 24:])  # far from the box: the input's own pixels


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_cached_decoding_under_bf16_and_int8(precision):
    pipe = maskgit.load("fashion-mnist", precision=precision)
    tok = grids(pipe, [1.0, 0.5])
    out = pipe.decode_tokens(tok, torch.tensor([0, 4]), pipe.sample_config(steps=4, cache="every2"), seed=[1, 2])
    known = tok != pipe.mask_id
    assert torch.equal(out[known], tok[known]) and not (out == pipe.mask_id).any()


def test_guidance_interval_default_is_today_and_an_empty_interval_is_cfg_0(shipped):
    labels, tok = torch.tensor([3, 8]), grids(shipped, [1.0, 0.6])
    fn = shipped.logits_fn(labels)
    guided = shipped.sample_config(cfg=2.0, steps=6)
    today = reference_decode(fn, tok, guided, shipped.mask_id, torch.Generator().manual_seed(9))
    same = dataclasses.replace(guided, cfg_start=0.0, cfg_end=1.0)
    assert torch.equal(decode(fn, tok, same, shipped.mask_id, torch.Generator().manual_seed(9)), today)
    plain = decode(fn, tok, dataclasses.replace(guided, cfg=0.0), shipped.mask_id, torch.Generator().manual_seed(9))
    for lo, hi in ((1.0, 1.0), (0.4, 0.45)):  # no step t of 6 has t/6 in [lo, hi)
        spy = Spy(fn)
        none = dataclasses.replace(guided, cfg_start=lo, cfg_end=hi)
        assert torch.equal(decode(spy, tok, none, shipped.mask_id, torch.Generator().manual_seed(9)), plain)
        assert not any(g for g, _ in spy.calls)


def test_the_numpy_runtime_has_the_interval_and_refuses_the_cache():
    from maskgit.runtime.decoding import Noise
    from maskgit.runtime.decoding import decode as np_decode
    table = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32) * 3
    calls = []

    def fn(tokens, guided):
        calls.append(guided)
        out = np.broadcast_to(table, (len(tokens), 16, 8)).copy()
        return (out, out * 0.5) if guided else out
    tok = np.full((2, 16), 99)
    plain = np_decode(fn, tok, SampleConfig(steps=4), 99, Noise(1))
    assert np.array_equal(np_decode(fn, tok, SampleConfig(steps=4, cfg=2.0, cfg_start=1.0), 99, Noise(1)), plain)
    calls.clear()
    np_decode(fn, tok, SampleConfig(steps=4, cfg=2.0, cfg_start=0.5), 99, Noise(1))
    assert calls == [False, False, True, True]
    with pytest.raises(MaskGITError, match="cached decoding is not in the runtime"):
        np_decode(fn, tok, SampleConfig(cache="every2"), 99, Noise(1))


def test_cfg_every_runs_the_unconditional_pass_on_every_kth_guided_step():
    from maskgit.step_plan import guided_step, reused_step

    def plan(**kw):
        cfg = SampleConfig(cfg=1.0, **kw)
        return "".join("P" if guided_step(cfg, s) else "R" if reused_step(cfg, s) else "-"
                       for s in range(cfg.start_step, cfg.steps)).rjust(cfg.steps, "-")
    assert plan(steps=8) == "PPPPPPPP" and plan(steps=8, cfg_every=2) == "PRPRPRPR"
    assert plan(steps=8, cfg_every=3, cfg_start=0.25) == "--PRRPRR"  # counted from the interval's first step
    assert plan(steps=8, cfg_every=2, start_step=3) == "---PRPRP"  # and from the first step an edit runs
    assert plan(steps=6, cfg_every=4, cfg_end=0.5) == "PRR---"


def test_cfg_every_reuses_the_last_guided_difference_exactly(shipped):
    """cfg_every=2 decodes as if each reused step had run its unconditional pass and found the conditional logits
    minus the last pass's difference; the passes it skips are not run."""
    labels, tok = torch.tensor([3, 8]), grids(shipped, [1.0, 0.6])
    fn = shipped.logits_fn(labels)
    cfg = shipped.sample_config(cfg=2.0, steps=6, order="confidence")
    state = {"step": 0}

    def by_hand(tokens, guided):  # every step guided: the even ones for real, the odd ones from the stored difference
        cond, uncond = fn(tokens, True)
        if state["step"] % 2 == 0:
            state["diff"] = cond.float() - uncond.float()
        else:
            uncond = cond.float() - state["diff"]
        state["step"] += 1
        return cond.float(), uncond.float()
    want = decode(by_hand, tok, cfg, shipped.mask_id, torch.Generator().manual_seed(4))
    spy = Spy(fn)
    got = decode(spy, tok, dataclasses.replace(cfg, cfg_every=2), shipped.mask_id, torch.Generator().manual_seed(4))
    assert torch.equal(got, want)
    assert [g for g, _ in spy.calls] == [True, False] * 3  # three unconditional passes instead of six
    cached = dataclasses.replace(cfg, cfg_every=2, cache="every2")  # with the cache: a finished decode, known kept
    out = decode(fn, tok, cached, shipped.mask_id, torch.Generator().manual_seed(4))
    known = tok != shipped.mask_id
    assert torch.equal(out[known], tok[known]) and not (out == shipped.mask_id).any()
    with pytest.raises(MaskGITError, match="AR baseline"):
        shipped.generate([0], arch="ar", cfg=1.0, cfg_every=2)


@pytest.mark.parametrize("kw,needle", [
    (dict(cache="every0"), "cache must be"), (dict(cache="CF"), "cache must be"), (dict(cache="FXC"), "cache must be"),
    (dict(cache="F" * 257), "cache must be"), (dict(cache=2), "cache must be"), (dict(cache="on"), "cache must be"),
    (dict(cfg_start=0.6, cfg_end=0.5), "cfg_start and cfg_end"), (dict(cfg_end=1.5), "cfg_start and cfg_end"),
    (dict(cfg_start=-0.1), "cfg_start"), (dict(cfg_start=float("nan")), "cfg_start"), (dict(cfg_end=True), "cfg_end"),
    (dict(cache="every2", sampler="amused"), "maskgit sampler"),
    (dict(cfg_every=0), "cfg_every"), (dict(cfg_every=1.5), "cfg_every"), (dict(cfg_every=True), "cfg_every"),
    (dict(cfg_every=1001), "cfg_every"),
])
def test_bad_values_are_refused_in_one_line(kw, needle):
    with pytest.raises(MaskGITError, match=needle) as e:
        SampleConfig(**kw)
    assert "\n" not in str(e.value)


def test_models_without_a_cached_path_say_so(shipped):
    with pytest.raises(MaskGITError, match="AR baseline"):
        shipped.generate([0], arch="ar", cache="every2")
    with pytest.raises(MaskGITError, match="AR baseline"):
        shipped.generate([0], arch="ar", cfg_start=0.5)

    class Plain(torch.nn.Module):  # a transformer without forward_cached (as aMUSEd's U-ViT)
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def forward(self, *args, **kw):
            return self.m(*args, **kw)
    other = copy.copy(shipped)
    other.transformer = Plain(shipped.transformer)
    with pytest.raises(MaskGITError, match="not available for Plain"):
        other.decode_tokens(grids(shipped, [1.0]), torch.tensor([0]), shipped.sample_config(cache="every2"), seed=0)


def test_the_server_takes_the_cache_and_the_interval(tiny_pipeline_dir):
    pytest.importorskip("fastapi")
    from test_server import image_of, serve
    pipe = maskgit.load(tiny_pipeline_dir)
    body = {"labels": [1, 3], "seed": 7, "steps": 4, "cfg": 1.0, "cfg_start": 0.25, "cache": "every2", "exact": True}

    async def scenario(c, app):
        return [await c.post("/v1/generate", json={**body, **extra}) for extra in (
            {}, {"cache": "FX"}, {"cfg_start": 0.9, "cfg_end": 0.5}, {"cfg_end": 2}, {"cfg_every": 2},
            {"cfg_every": 0})]

    ok, bad_cache, bad_interval, out_of_range, every2, every0 = serve(pipe, scenario)
    want2 = pipe.generate(labels=[1, 3], seed=7, steps=4, cfg=1.0, cfg_start=0.25, cache="every2", cfg_every=2,
                          output="np")
    assert np.array_equal(np.stack([image_of(t) for t in every2.json()["images"]]), want2[..., 0])
    assert every0.status_code == 422 and "cfg_every" in every0.json()["error"]
    want = pipe.generate(labels=[1, 3], seed=7, steps=4, cfg=1.0, cfg_start=0.25, cache="every2", output="np")
    assert np.array_equal(np.stack([image_of(t) for t in ok.json()["images"]]), want[..., 0])
    assert bad_cache.status_code == 422 and "cache" in bad_cache.json()["error"]
    assert bad_interval.status_code == 422 and "cfg_start and cfg_end" in bad_interval.json()["error"]
    assert out_of_range.status_code == 422 and "cfg_end" in out_of_range.json()["error"]

