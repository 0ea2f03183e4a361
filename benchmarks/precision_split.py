"""Where the bf16 speed-up goes: one batch-8 forward of the ImageNet-256 transformer (random weights) in fp32 and in
bf16 as the pipeline runs them on this CPU, split into its linear-layer GEMMs and everything else.

"GEMMs" replays the forward's own linear layers, in order, on inputs of their shapes and dtypes (each block's QKV,
output projection, MLP with its fused GELU, then the head's dense layer and the logits product), with the model's
weights, so each layer's weights come from memory as they do in the forward. "Rest" is the forward's time minus the
GEMMs' (attention, layer norms, residual adds, casts, embedding). Rounds alternate between the precisions; medians
over rounds.

    python benchmarks/precision_split.py [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskgit.config import transformer_preset
from maskgit.evaluation.samples import machine_description
from maskgit.inference.cpu import fp32_linear_backend
from maskgit.inference.malloc import tune_malloc
from maskgit.inference.precision import prepare
from maskgit.models.transformer import MaskGITTransformer


def gemms(model, x32: torch.Tensor, dtype: torch.dtype):
    """The forward's linear layers on inputs of its shapes: LN outputs (fp32) feed QKV and fc1; the attention
    output and the GELU output (``dtype``) feed the output projection and fc2."""
    B, L, W = x32.shape
    a = torch.randn(B, L, W).to(dtype)
    h = torch.randn(B, L, model.config.mlp_dim).to(dtype)
    K = model.config.codebook_size

    def run():
        for blk in model.blocks:
            blk.attn.qkv(x32)
            blk.attn.out(a)
            fused = getattr(blk.fc1, "forward_gelu_tanh", None)
            fused(x32) if fused is not None else blk.fc1(x32)
            blk.fc2(h)
        y = model.head_dense(x32[:, 1:])
        (y.to(model.tok_emb.weight.dtype) @ model.tok_emb.weight[:K].t())
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default="maskgit-imagenet256")
    args = ap.parse_args()
    tune_malloc()
    print(f"machine: {machine_description()}")
    torch.manual_seed(0)
    cfg = transformer_preset(args.config)
    model = MaskGITTransformer(cfg).eval()
    fp32 = prepare(model, "fp32", "cpu")  # what the pipeline runs on this CPU
    bf16 = prepare(model, "bf16", "cpu")
    B, L = args.batch, cfg.num_tokens + 1
    tokens = torch.full((B, cfg.num_tokens), cfg.mask_id)
    labels = torch.arange(B) % cfg.num_classes
    x32 = torch.randn(B, L, cfg.width)
    W, M = cfg.width, cfg.mlp_dim
    gemm_flops = 2 * B * (cfg.depth * L * (4 * W * W + 2 * W * M) + (L - 1) * (W * W + W * cfg.codebook_size))

    def forward_fp32():
        fp32(tokens, labels)

    def forward_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16(tokens, labels).float()

    paths = {"fp32": (forward_fp32, gemms(fp32, x32, torch.float32)),
             "bf16": (forward_bf16, gemms(bf16, x32, torch.bfloat16))}
    res = {p: {"forward": [], "gemm": []} for p in paths}

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    with torch.inference_mode():
        for fwd, gm in paths.values():
            fwd(), gm()  # warm-up
        for _ in range(args.rounds):
            for p, (fwd, gm) in paths.items():
                res[p]["forward"].append(timed(fwd))
                res[p]["gemm"].append(timed(gm))
    med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in res.items()}
    print(f"\n{args.config}, batch {B}, one forward, {args.rounds} rounds; fp32 linears on {fp32_linear_backend()}\n")
    print("| precision | forward ms | GEMMs ms | GEMM GFLOP/s | rest ms | GEMMs share |")
    print("|---|---|---|---|---|---|")
    for p, m in med.items():
        rest = m["forward"] - m["gemm"]
        print(f"| {p} | {m['forward'] * 1e3:.0f} | {m['gemm'] * 1e3:.0f} | {gemm_flops / m['gemm'] / 1e9:.0f} | "
              f"{rest * 1e3:.0f} | {m['gemm'] / m['forward']:.0%} |")
    f, b = med["fp32"], med["bf16"]
    print(f"\nbf16 speed-up: forward {f['forward'] / b['forward']:.2f}x, GEMMs {f['gemm'] / b['gemm']:.2f}x, "
          f"rest {(f['forward'] - f['gemm']) / (b['forward'] - b['gemm']):.2f}x")


if __name__ == "__main__":
    main()
