"""Sampling speed of the official JAX MaskGIT sampler next to ours, in one run on one machine: the ImageNet-256
transformer (24 layers, width 768, 16 heads, 257 tokens) with random weights, T=8, transformer only, s/image.

The official side runs from its public source and a pip-installed jax/flax in their own environment (nothing of it
is part of this project):

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax
    git clone https://github.com/google-research/maskgit /tmp/official-maskgit
    python benchmarks/official_jax_speed.py --jax-python /tmp/jaxenv/bin/python --official /tmp/official-maskgit

Rounds alternate official / ours so that both see the machine in the same state; each row is the median of the
rounds (the official sampler's first call, which compiles, is reported apart)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import jax, jax.numpy as jnp
jnp.DeviceArray = jax.Array  # the official source annotates with a name that current jax no longer has
from maskgit.nets import maskgit_transformer
from maskgit.libml import parallel_decode
batch, steps, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
codebook, classes = 1024, 1000
model = maskgit_transformer.Transformer(
    vocab_size=codebook + classes + 1, hidden_size=768, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=3072, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=257)
inputs = jnp.concatenate([jnp.full((batch, 1), codebook + 7), jnp.full((batch, 256), -1)], axis=1).astype(jnp.int32)
params = model.init(jax.random.PRNGKey(0), inputs, deterministic=True)

@jax.jit
def sample(params, inputs, rng):
    def tokens_to_logits(seq):
        return model.apply(params, seq, deterministic=True)[..., :codebook]
    return parallel_decode.decode(inputs, rng, tokens_to_logits, num_iter=steps, choice_temperature=4.5,
                                  mask_token_id=-1)

times = []
for r in range(rounds + 1):
    t = time.perf_counter()
    sample(params, inputs, jax.random.PRNGKey(r)).block_until_ready()
    times.append(time.perf_counter() - t)
    print(json.dumps({"round": r, "sec": times[-1], "precision": str(jax.config.jax_default_matmul_precision)}),
          flush=True)
    if r < rounds:
        sys.stdin.readline()  # wait for our side's turn
"""


def ours(batch: int, steps: int, compile_: bool, precision: str = "fp32", backend: str = "mkl"):
    import torch

    from maskgit.config import SampleConfig, transformer_preset
    from maskgit.inference.compile import compile_frozen
    from maskgit.inference.malloc import tune_malloc
    from maskgit.models.transformer import MaskGITTransformer
    from maskgit.sampling.decoding import decode
    tune_malloc()
    torch.manual_seed(0)
    cfg = transformer_preset("maskgit-imagenet256")
    model = MaskGITTransformer(cfg).eval()
    if precision == "bf16":  # what Pipeline(precision="bf16") runs on a CPU
        from maskgit.inference.precision import prepare
        model = prepare(model, "bf16", "cpu")
    elif backend == "onednn":  # what Pipeline(precision="fp32") runs where inference.cpu.fp32_linear_backend() says so
        from maskgit.inference.kernels import onednn_linears
        model = onednn_linears(model)
    fwd = compile_frozen(model) if compile_ else model
    labels = torch.full((batch,), 7)
    start = torch.full((batch, cfg.num_tokens), cfg.mask_id)

    @torch.inference_mode()
    def run(seed):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            decode(lambda tk, g: fwd(tk, labels).float(), start, SampleConfig(steps=steps), cfg.mask_id,
                   torch.Generator().manual_seed(seed))
        return time.perf_counter() - t
    run(0)  # warm-up (and compile)
    return run


NAMES = {"mkl": "MKL", "onednn": "oneDNN"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jax-python", required=True, help="python of an environment with jax and flax")
    ap.add_argument("--official", required=True, help="a checkout of google-research/maskgit")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time ours under --compile")
    ap.add_argument("--jax-precision", default="default,highest",
                    help="comma-separated jax_default_matmul_precision values for the official side ('highest' = "
                         "fp32 matmuls; 'default' lets XLA pick faster, lower-precision passes where the CPU has them)")
    ap.add_argument("--fp32-backends", default="mkl,onednn",
                    help="GEMM libraries for our fp32 rows: mkl (torch's default) and/or onednn (what the pipeline "
                         "uses on AMD CPUs)")
    ap.add_argument("--ours-bf16", action="store_true", help="also time ours with precision bf16")
    args = ap.parse_args()
    from maskgit.inference.cpu import cpu_capabilities
    c = cpu_capabilities()
    import torch
    print(f"machine: {c['model']}, {torch.get_num_threads()} threads, avx512_bf16 {c['avx512_bf16']}; "
          f"torch {torch.__version__}", flush=True)
    rows = []
    precisions = args.jax_precision.split(",")
    for b in [int(x) for x in args.batches.split(",")]:
        workers, first = {}, {}
        for prec in precisions:  # one worker per matmul precision; each compiles and runs once alone, then waits
            env = {**os.environ, "PYTHONPATH": args.official, "JAX_DEFAULT_MATMUL_PRECISION": prec}
            workers[prec] = subprocess.Popen([args.jax_python, "-c", WORKER, str(b), str(args.steps),
                                              str(args.rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             text=True, env=env)
            line = json.loads(workers[prec].stdout.readline())
            first[prec] = line["sec"]
            print(f"JAX worker batch {b}: matmul precision {line['precision']}", flush=True)
        variants = {}  # built and warmed up while the workers wait
        for backend in args.fp32_backends.split(","):
            variants[f"ours eager (fp32, {NAMES[backend]})"] = ours(b, args.steps, False, backend=backend)
            if args.compile:
                variants[f"ours --compile (fp32, {NAMES[backend]})"] = ours(b, args.steps, True, backend=backend)
        if args.ours_bf16:
            variants["ours eager (bf16)"] = ours(b, args.steps, False, "bf16")
        official, mine = {p: [] for p in precisions}, {k: [] for k in variants}
        for r in range(args.rounds):
            for k, run in variants.items():
                mine[k].append(run(r + 1))
            for prec, w in workers.items():
                w.stdin.write("\n")
                w.stdin.flush()
                official[prec].append(json.loads(w.stdout.readline())["sec"])
        for w in workers.values():
            w.wait()
        for prec in precisions:
            name = f"official JAX (jit, matmul precision {prec})"
            rows.append((b, f"{name}, first call incl. compile", first[prec] / b))
            rows.append((b, name, statistics.median(official[prec]) / b))
        rows += [(b, k, statistics.median(v) / b) for k, v in mine.items()]
        for row in rows[-len(variants) - 2 * len(precisions):]:
            print(row, flush=True)
    print("\n| batch | sampler | s/image |\n|---|---|---|")
    for b, k, s in rows:
        print(f"| {b} | {k} | {s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
