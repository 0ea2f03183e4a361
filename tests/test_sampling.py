import math

import pytest
import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.decoding import RowGenerators, decode
from maskgit.sampling.schedules import SCHEDULES, gamma

K, MASK = 16, 99


def mock_logits_fn(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(256, K, generator=g) * 3

    def fn(tokens, guided):
        B, N = tokens.shape
        out = table[:N][None].expand(B, -1, -1) + (tokens != MASK).float().sum(1)[:, None, None] * 0.01
        return (out, out * 0.5) if guided else out
    return fn


def run(cfg, tokens, seed=0, callback=None):
    return decode(mock_logits_fn(), tokens, cfg, MASK, torch.Generator().manual_seed(seed), callback)


def test_reveal_counts_cosine_256_8_steps():
    tokens = torch.full((2, 256), MASK)
    counts = []
    run(SampleConfig(steps=8), tokens, callback=lambda t, cur, s: counts.append((cur == MASK).sum(1)))
    masked = [256] + [int(c[0]) for c in counts]
    revealed = [a - b for a, b in zip(masked, masked[1:])]
    assert revealed == [5, 15, 24, 31, 39, 45, 48, 49]
    for t, c in enumerate(counts[:-1]):
        assert int(c[1]) == math.floor(256 * float(gamma("cosine", (t + 1) / 8)))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_step_leaves_floor_n0_gamma_masked(schedule):
    T, N = 10, 64
    tokens = torch.randint(0, K, (3, N))
    tokens[0, :40] = MASK
    tokens[1] = MASK
    tokens[2, ::5] = MASK
    n0 = (tokens == MASK).sum(1)
    seen = []
    run(SampleConfig(steps=T, schedule=schedule), tokens, callback=lambda t, cur, s: seen.append(cur.clone()))
    prev = n0
    for t, cur in enumerate(seen):
        left = (cur == MASK).sum(1)
        if t == T - 1:
            assert left.sum() == 0
            break
        expect = torch.floor(n0.double() * float(gamma(schedule, (t + 1) / T, N))).long()
        expect = torch.minimum(expect, prev - 1).clamp_min(1)
        assert torch.equal(left, expect), (t, left, expect)
        prev = left


def test_known_tokens_never_change_and_no_mask_left():
    torch.manual_seed(0)
    tokens = torch.randint(0, K, (4, 64))
    known = torch.rand(4, 64) < 0.5
    tokens[~known] = MASK
    for cfg in (SampleConfig(steps=1), SampleConfig(steps=8, cfg=2.0), SampleConfig(steps=12, temperature=0),
                SampleConfig(steps=5, top_k=3, top_p=0.9), SampleConfig(steps=8, start_step=3)):
        out = run(cfg, tokens)
        assert torch.equal(out[known], tokens[known])
        assert not (out == MASK).any() and out.max() < K


def test_same_seed_same_output_different_seed_differs():
    tokens = torch.full((4, 64), MASK)
    a, b = run(SampleConfig(), tokens, seed=1), run(SampleConfig(), tokens, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(SampleConfig(), tokens, seed=2))


def test_choice_temperature_zero_remasks_least_confident():
    N = 32
    logits = torch.full((1, N, K), -10.0)
    conf = torch.linspace(0.5, 9.0, N)  # position i: confidence grows with i
    logits[0, torch.arange(N), torch.arange(N) % K] = conf
    seen = []
    decode(lambda tok, g: logits.expand(len(tok), -1, -1), torch.full((1, N), MASK),
           SampleConfig(steps=4, temperature=0, choice_temperature=0), MASK, torch.Generator().manual_seed(0),
           lambda t, cur, s: seen.append(cur.clone()))
    left = int((seen[0] == MASK).sum())
    assert torch.equal((seen[0][0] == MASK).nonzero().flatten(), torch.arange(left))


def test_bad_configs_raise():
    tokens = torch.full((1, 16), MASK)
    for bad in (SampleConfig(steps=0), SampleConfig(schedule="nope"), SampleConfig(start_step=8),
                SampleConfig(top_p=0)):
        with pytest.raises(MaskGITError):
            run(bad, tokens)


def test_gumbel_noise_is_finite_with_the_right_mean():
    from maskgit.sampling.decoding import gumbel
    g = gumbel((200_000,), torch.Generator().manual_seed(0), "cpu")
    assert torch.isfinite(g).all()
    assert abs(float(g.mean()) - 0.5772) < 0.01  # Euler-Mascheroni
    # computed in place, it is still exactly -log(-log(u)) of the generator's uniform draws
    u = torch.rand((200_000,), generator=torch.Generator().manual_seed(0)).clamp(1e-20, 1.0 - 1e-7)
    assert torch.equal(g, -torch.log(-torch.log(u)))


def test_row_generators_give_each_block_of_rows_what_it_gets_alone():
    """The server batches requests with different seeds: with RowGenerators each request's rows decode exactly as
    the request alone with its seed (given a model whose rows do not interact, as here)."""
    torch.manual_seed(0)
    tokens = torch.randint(0, K, (6, 64))
    tokens[torch.rand(6, 64) < 0.7] = MASK
    tokens[0] = MASK
    blocks = [(0, 2, 11), (2, 3, 12), (3, 6, 13)]  # rows [a, b) and their seed
    for cfg in (SampleConfig(), SampleConfig(cfg=2.0, top_k=4, top_p=0.8), SampleConfig(steps=5, start_step=2)):
        gens = RowGenerators([(torch.Generator().manual_seed(s), b - a) for a, b, s in blocks])
        together = decode(mock_logits_fn(), tokens, cfg, MASK, gens)
        for a, b, s in blocks:
            assert torch.equal(together[a:b], run(cfg, tokens[a:b], seed=s)), (cfg, a, b)
    with pytest.raises(MaskGITError, match="cover 5"):
        decode(mock_logits_fn(), tokens, SampleConfig(), MASK, RowGenerators([(torch.Generator(), 5)]))
    with pytest.raises(MaskGITError, match="rows >= 1"):
        RowGenerators([])
