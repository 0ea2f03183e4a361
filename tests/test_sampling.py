import math

import numpy as np
import pytest
import torch

from maskgit.config import SampleConfig
from maskgit.errors import MaskGITError
from maskgit.sampling.decoding import decode
from maskgit.sampling.noise import RowGenerators
from maskgit.sampling.schedules import SCHEDULES

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
        assert int(c[1]) == int(official_keep("cosine", t, 8, [256], [256])[0])


def official_mask_ratio(schedule, step, T, n0):
    """The official mask_schedule.schedule(ratio, total_unknown) in numpy float32: ratio = (t+1)/T, every operation
    in float32 (elementary functions correctly rounded: evaluated in float64, rounded once), total_unknown = N0."""
    f32, one = np.float32, np.float32(1)
    r = f32(step + 1) / f32(T)
    n0 = np.asarray(n0, dtype=f32)

    def rounded(fn, x):
        return fn(np.asarray(x, np.float64)).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = {"cosine": lambda: rounded(np.cos, f32(math.pi / 2) * r),
             "linear": lambda: one - r,
             "square": lambda: one - r * r,
             "cubic": lambda: one - rounded(lambda x: x ** 3, r),
             "sqrt": lambda: one - rounded(np.sqrt, r),
             "log": lambda: -rounded(np.log2, r) / rounded(np.log2, n0),
             "exp": lambda: one - rounded(np.exp2, -rounded(np.log2, n0) * (one - r))}[schedule]()
    return np.clip(np.nan_to_num(np.broadcast_to(g, n0.shape).astype(f32), nan=1.0), f32(1e-6), one)


def official_keep(schedule, step, T, n0, unknown):
    """mask_len = max(1, min(unknown - 1, floor(N0 * mask_ratio))) on the float32 product."""
    n0 = np.asarray(n0)
    keep = np.floor(n0.astype(np.float32) * official_mask_ratio(schedule, step, T, n0)).astype(np.int64)
    return np.maximum(1, np.minimum(np.asarray(unknown) - 1, keep))


def test_cosine_boundary_is_computed_in_float32():
    """cos(pi/2 * 8/12) = 0.5 exactly, but float32 gives 0.49999997: the official decoder keeps 31 of 64 tokens
    masked after step 8 of 12 (127 of 256), not 32 (128)."""
    r = np.float32(8) / np.float32(12)
    assert np.float32(np.cos(np.float64(np.float32(math.pi / 2) * r))) < 0.5
    assert official_keep("cosine", 7, 12, [64, 256], [100, 300]).tolist() == [31, 127]
    seen = []
    run(SampleConfig(steps=12), torch.full((2, 64), MASK), callback=lambda t, cur, s: seen.append(cur.clone()))
    assert (seen[7] == MASK).sum(1).tolist() == [31, 31]
    assert [int((c[0] == MASK).sum()) for c in seen[:-1]] == [
        int(official_keep("cosine", t, 12, [64], [64])[0]) for t in range(11)]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_step_leaves_the_official_count_masked(schedule):
    """Per sample and step: max(1, min(unknown - 1, floor(N0 * gamma))) with N0 the sample's own initially unknown
    count (log/exp included) and gamma in float32; partial masks and start_step alike."""
    N = 64
    tokens = torch.randint(0, K, (4, N), generator=torch.Generator().manual_seed(0))
    tokens[0, :40] = MASK
    tokens[1] = MASK
    tokens[2, ::5] = MASK
    tokens[3, :3] = MASK
    n0 = (tokens == MASK).sum(1).numpy()
    for T, start in ((10, 0), (12, 0), (8, 3), (16, 5)):
        seen = []
        run(SampleConfig(steps=T, schedule=schedule, start_step=start), tokens,
            callback=lambda t, cur, s: seen.append(cur.clone()))
        prev = n0
        for t, cur in zip(range(start, T), seen):
            left = (cur == MASK).sum(1).numpy()
            if t == T - 1:
                assert left.sum() == 0
                break
            expect = official_keep(schedule, t, T, n0, prev)
            assert left.tolist() == expect.tolist(), (T, start, t, left, expect)
            prev = left


@pytest.mark.parametrize("schedule", ["log", "exp"])
def test_log_and_exp_use_each_samples_own_n0(schedule):
    """With a partial mask the official decoder passes total_unknown = N0 (here 20), not N (64): the counts
    differ from the N-based ones, and ours follow the N0 ones."""
    T, N, n0 = 8, 64, 20
    tokens = torch.randint(0, K, (1, N), generator=torch.Generator().manual_seed(1))
    tokens[0, :n0] = MASK
    seen = []
    run(SampleConfig(steps=T, schedule=schedule), tokens, callback=lambda t, cur, s: seen.append(cur.clone()))
    ours = [int((c == MASK).sum()) for c in seen[:-1]]
    prev, with_n0, with_n = n0, [], []
    for t in range(T - 1):
        with_n0.append(int(official_keep(schedule, t, T, [n0], [prev])[0]))
        prev = with_n0[-1]
    g_n = official_mask_ratio(schedule, np.arange(T - 1)[:, None], T, np.full((T - 1, 1), N))[:, 0]
    with_n = np.floor(np.float32(n0) * g_n).astype(int).tolist()
    assert ours == with_n0
    assert with_n0 != with_n


def test_mask_ratio_matches_the_reference_on_a_wide_range():
    """decode_mask_ratio equals the numpy float32 reference for every schedule, T <= 24 and 2 <= N0 <= 1024."""
    from maskgit.sampling.arithmetic import decode_mask_ratio
    n0 = np.arange(2, 1025)
    for schedule in SCHEDULES:
        for T in range(1, 25):
            for t in range(T - 1):
                assert np.array_equal(decode_mask_ratio(schedule, t, T, n0), official_mask_ratio(schedule, t, T, n0))


def test_training_and_decoding_share_one_float32_mask_schedule():
    """Training's gamma (torch) is the decoder's float32 ratio: at r = (t+1)/T the same bits for every schedule and
    token count, so ceil(gamma * N) in training and floor(N0 * ratio) in decoding read one schedule."""
    from maskgit.sampling.arithmetic import decode_mask_ratio
    from maskgit.sampling.schedules import gamma
    for schedule in SCHEDULES:
        for n in (2, 64, 256, 1000):
            for T in (1, 8, 12):
                r = torch.tensor([(t + 1) / T for t in range(T)], dtype=torch.float32)
                want = np.array([decode_mask_ratio(schedule, t, T, [n])[0] for t in range(T)])
                got = gamma(schedule, r, n)
                assert got.dtype == torch.float32 and np.array_equal(got.numpy(), want), (schedule, n, T)
    assert float(gamma("cosine", 0.0)) == 1.0 and float(gamma("pow2", 0.5)) == 0.75  # aliases name the same curve


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
    for bad in ({"steps": 0}, {"schedule": "nope"}, {"start_step": 8}, {"top_p": 0}):
        with pytest.raises(MaskGITError):  # refused when the config is made, before any decoding
            run(SampleConfig(**bad), tokens)


def test_gumbel_noise_is_finite_with_the_right_mean():
    from maskgit.sampling.arithmetic import gumbel
    from maskgit.sampling.decoding import TorchOps
    g = gumbel(TorchOps(torch.Generator().manual_seed(0), "cpu"), (200_000,))
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
