"""The one decode loop (``arithmetic.decode_loop``) behind both decoders, through the array-ops seam: each backend's
operations agree, the torch and numpy decoders give the same tokens from the same noise, and both give the tokens
they gave before the loop was shared (golden values)."""

import ast
import hashlib
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from maskgit.config import SampleConfig
from maskgit.runtime import decoding as np_decoding
from maskgit.runtime.decoding import Noise
from maskgit.sampling import arithmetic, decoding

MASK, N, K = 99, 16, 12


def torch_noise(seed: int):
    """The uniform draws of a torch.Generator, for the numpy decoder (in the order the torch decoder draws them)."""
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(uniform=lambda shape: torch.rand(shape, generator=g).numpy())


def table_fn(lib):
    """A logits function over a fixed random table whose logits depend on the grid (how many tokens are known
    and which), in ``lib`` ("torch" or "numpy") arrays; guided: a second, flatter branch."""
    rng = np.random.default_rng(0)
    base = (rng.normal(size=(N, K)) * 3).astype(np.float32)
    mix = rng.normal(size=(K + 100, K)).astype(np.float32)

    def fn(tokens, guided):
        t = tokens.numpy() if lib == "torch" else tokens
        known = (t != MASK).sum(1, keepdims=True).astype(np.float32)[..., None]  # (B, 1, 1)
        out = base[None] + np.float32(0.1) * known * mix[np.where(t == MASK, K, t)]  # (B, N, K)
        pair = (out, np.float32(0.5) * out + np.float32(0.25))
        if lib == "torch":
            pair = tuple(torch.from_numpy(np.ascontiguousarray(p)) for p in pair)
        return pair if guided else pair[0]
    return fn


START = np.full((3, N), MASK, np.int64)
START[1, :5] = [1, 2, 3, 4, 5]
START[2, ::4] = 7

CONFIGS = {
    "confidence": dict(order="confidence", steps=6),
    "halton-cfg": dict(order="halton", cfg=1.0, steps=5),
    "random-topk": dict(order="random", top_k=4, steps=4),
    "topp-temp": dict(order="confidence", top_p=0.8, temperature=0.7, choice_temperature=2.0, steps=6),
    "greedy-linear": dict(order="confidence", temperature=0.0, schedule="linear", steps=4),
    "log-cfg-linear": dict(order="confidence", schedule="log", cfg=2.0, cfg_schedule="linear", steps=8),
    "exp-interval": dict(order="halton", schedule="exp", cfg=1.5, cfg_start=0.3, cfg_end=0.8, steps=7),
    "cfg-every2": dict(order="confidence", cfg=2.0, cfg_every=2, cfg_start=0.1, steps=7),
    "resume": dict(order="confidence", start_step=2, steps=8, top_k=6, top_p=0.9),
}


def torch_tokens(kw, seed):
    cfg = SampleConfig(**kw)
    return decoding.decode(table_fn("torch"), torch.from_numpy(START), cfg, MASK,
                           torch.Generator().manual_seed(seed)).numpy()


def numpy_tokens(kw, noise):
    return np_decoding.decode(table_fn("numpy"), START, SampleConfig(**kw), MASK, noise)


def digest(tokens) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int64).tobytes()).hexdigest()[:16]


# SHA-256 prefixes of the tokens each decoder gave before the loop was shared (seed 3; numpy: Noise(3))
GOLDEN_TORCH = {
    "confidence": "da1a3984b057b477",
    "exp-interval": "62126ae48ab42208",
    "greedy-linear": "4b24397c77c7d5bd",
    "halton-cfg": "92e398c84f73cea7",
    "log-cfg-linear": "3d155f71dd3c8397",
    "random-topk": "2b4ed1322f845c3b",
    "resume": "38c5ee5042c76dd5",
    "topp-temp": "5f088eac9a81849d",
}
GOLDEN_NUMPY = {
    "confidence": "c90b794faf024504",
    "exp-interval": "75c38d74cd911f3b",
    "greedy-linear": "a80b8870b4126a04",
    "halton-cfg": "12dc44c820e9c4b8",
    "log-cfg-linear": "70f2d9593b8e1616",
    "random-topk": "ae75db5ca0cd721c",
    "resume": "e996978df6832956",
    "topp-temp": "daf2fc75cc4b7ffd",
}


@pytest.mark.parametrize("name", sorted(GOLDEN_TORCH))
def test_both_decoders_give_the_tokens_they_gave_before_the_loop_was_shared(name):
    kw = CONFIGS[name]
    assert digest(torch_tokens(kw, 3)) == GOLDEN_TORCH[name]
    assert digest(numpy_tokens(kw, Noise(3))) == GOLDEN_NUMPY[name]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_and_numpy_decode_the_same_tokens_from_the_same_noise(name):
    for seed in range(3):
        want = torch_tokens(CONFIGS[name], seed)
        got = numpy_tokens(CONFIGS[name], torch_noise(seed))
        assert (got != MASK).all() and (got[START != MASK] == START[START != MASK]).all()
        assert np.array_equal(got, want)


def test_each_step_leaves_the_official_count_masked_in_both():
    kw = dict(order="random", schedule="exp", steps=6)
    n0 = (START == MASK).sum(1)
    want, left = [], n0
    for t in range(5):
        left = arithmetic.mask_counts("exp", t, 6, n0, left)
        want.append(left.tolist())
    counts = {"torch": [], "numpy": []}
    decoding.decode(table_fn("torch"), torch.from_numpy(START), SampleConfig(**kw), MASK, torch.Generator(),
                    lambda t, cur, s: counts["torch"].append((cur == MASK).sum(1).tolist()))
    np_decoding.decode(table_fn("numpy"), START, SampleConfig(**kw), MASK, Noise(0),
                       lambda t, cur, s: counts["numpy"].append((cur == MASK).sum(1).tolist()))
    assert counts["torch"] == counts["numpy"] == want + [[0, 0, 0]]


def test_the_two_backends_ops_agree():
    from maskgit.runtime.decoding import NumpyOps
    from maskgit.sampling.decoding import TorchOps
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 40)).astype(np.float32)  # continuous: no ties
    idx = rng.integers(0, 40, size=(3, 5))
    cond = rng.random((3, 5, 40)) < 0.3
    t, n = TorchOps(torch.Generator(), "cpu"), NumpyOps(Noise(0))
    tx = torch.from_numpy(x)

    def same(a, b, exact=True):
        a = a.numpy() if torch.is_tensor(a) else np.asarray(a)
        assert a.shape == np.shape(b)
        assert np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-5, atol=1e-5)

    for k in (1, 7, 40):
        same(t.kth_largest(tx, k), n.kth_largest(x, k))
    (tv, ti), (nv, ni) = t.sort_desc(tx), n.sort_desc(x)
    for a, b in ((tv, nv), (ti, ni), (t.unsort(tv, ti), x), (n.unsort(nv, ni), x)):
        same(a, b)
    same(t.take(tx, torch.from_numpy(idx)), n.take(x, idx))
    same(t.rank(tx), n.rank(x))
    same(t.fill(tx, torch.from_numpy(cond), -np.inf), n.fill(x, cond, -np.inf))
    same(t.where(torch.from_numpy(cond), tx, -tx), n.where(cond, x, -x))
    same(t.expand(tx[:1], (4, 5, 40)), n.expand(x[:1], (4, 5, 40)))
    for f in ("softmax", "log_softmax", "cumsum"):
        same(getattr(t, f)(tx), getattr(n, f)(x), exact=False)
    u = torch.rand((6, 40), generator=torch.Generator().manual_seed(5)).numpy()
    u[0, :2] = 0.0, np.float32(1 - 2 ** -24)  # both ends of the clip
    drawn = u.copy()
    g = arithmetic.gumbel(NumpyOps(types.SimpleNamespace(uniform=lambda shape: u)), (6, 40))
    same(g, -np.log(-np.log(np.clip(drawn, np.float32(1e-20), np.float32(1 - 1e-7)))))
    assert np.isfinite(g).all() and np.array_equal(u, drawn)  # made in place on a copy, not on the draw itself
    tg = arithmetic.gumbel(TorchOps(torch.Generator().manual_seed(5), "cpu"), (6, 40))
    same(tg[1:], g[1:], exact=False)
    n0, unknown = torch.tensor([64, 40, 3, 0]), torch.tensor([64, 20, 3, 0])
    for step in range(8):
        want = arithmetic.mask_counts("exp", step, 8, n0.numpy(), unknown.numpy())
        got = decoding.mask_counts(n0, unknown, SampleConfig(schedule="exp"), step)
        assert got.dtype == torch.int64 and np.array_equal(got.numpy(), want)


def test_one_loop_serves_both_decoders():
    assert np_decoding.decode_loop is arithmetic.decode_loop is decoding.decode_loop
    for name in ("filter_logits", "sample_tokens", "gumbel", "softmax", "log_softmax"):
        assert not hasattr(np_decoding, name)  # no numpy copy of the loop's pieces
    tree = ast.parse(open(arithmetic.__file__).read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "torch"]  # the shared loop's module imports no torch


def test_the_numpy_decoder_runs_where_torch_cannot_be_imported():
    code = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import numpy as np
from maskgit.config import SampleConfig
from maskgit.runtime.decoding import Noise, decode
table = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
fn = lambda t, guided: (table[None].repeat(len(t), 0),) * 2 if guided else table[None].repeat(len(t), 0)
out = decode(fn, np.full((2, 16), 99), SampleConfig(steps=4, cfg=1.0, top_p=0.9), 99, Noise(0))
assert (out != 99).all() and [m for m in sys.modules if m.startswith("torch")] == ["torch"]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_amused_sampler_runs_through_the_shared_loop():
    kw = dict(sampler="amused", order="confidence", schedule="cosine", steps=5)
    calls = []
    out = decoding.decode(table_fn("torch"), torch.from_numpy(START), SampleConfig(**kw), MASK,
                          torch.Generator().manual_seed(0), lambda t, cur, s: calls.append(t))
    assert calls == list(range(5)) and (out != MASK).all()
    again = decoding.decode(table_fn("torch"), torch.from_numpy(START), SampleConfig(**kw), MASK,
                            torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
