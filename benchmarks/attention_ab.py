"""Self-attention alone at the ImageNet-256 transformer's shapes: the fused SDPA kernel the model uses against the
alternatives a CPU user could reach for, interleaved in one process so they share the machine's moments.

Shapes: batch B, the config's heads, 257 tokens (1 condition + 16x16), head width = width / heads; fp32 (or with
--dtype bf16, the bf16 inference path's candidates on the model's own strided q/k/v views, each ending in the
(B, L, H*d) layout the output projection takes), no mask. Each variant's output is checked against the fused
kernel's. FLOPs: 4 B H L^2 d (QK^T and AV). Prints ms per call
and % of the matmul peak probed before and after each timing (5 calls), median over rounds.

    python benchmarks/attention_ab.py [--batch 8] [--rounds 5] [--dtype bf16]
"""

import argparse
import os

import torch
import torch.nn.functional as F

from maskgit.config import transformer_preset
from maskgit.evaluation.speed import ab_table, between_probes
from maskgit.inference import settings
from maskgit.inference.malloc import tune_malloc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default="maskgit-imagenet256")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    tune_malloc()
    cfg = transformer_preset(args.config)
    B, H, L = args.batch, cfg.heads, cfg.num_tokens + 1
    d = cfg.width // H
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, d) for _ in range(3))
    flops = 4 * B * H * L * L * d

    def fused():
        return F.scaled_dot_product_attention(q, k, v)

    def math():
        return torch.softmax((q * d ** -0.5) @ k.transpose(-1, -2), -1) @ v

    if args.dtype == "bf16":  # the candidates for bf16 inference (CPU bf16 autocast gives bf16 q, k, v)
        from maskgit.inference.kernels import cpu_bf16_attention
        # as in the model: q, k, v are strided views of the fused QKV projection's (B, L, 3, H, d) output, and
        # each variant's result ends as the (B, L, H*d) input of the output projection
        qkv = torch.randn(B, L, 3, H, d).bfloat16()
        q, k, v = qkv.permute(2, 0, 3, 1, 4)

        def merged(y):
            return y.transpose(1, 2).reshape(B, L, H * d)

        def rows_concatenated():  # per row on the strided views, rows concatenated (the model's earlier form)
            return torch.cat([torch.matmul(torch.matmul(q[i:i + 1] * d ** -0.5, k[i:i + 1].transpose(-1, -2))
                                           .softmax(-1), v[i:i + 1]) for i in range(B)])

        def rows():
            os.environ["MASKGIT_FUSED_ATTENTION"] = "0"
            settings.reset()  # read again
            try:
                return merged(cpu_bf16_attention(q, k, v))
            finally:
                del os.environ["MASKGIT_FUSED_ATTENTION"]
                settings.reset()

        variants = {"fused SDPA, bf16": lambda: merged(fused()),
                    "oneDNN Graph fused kernel (the model's)": lambda: merged(cpu_bf16_attention(q, k, v)),
                    "one batch row at a time, bf16 (the model's fallback)": rows,
                    "one batch row at a time, strided keys, rows concatenated": lambda: merged(rows_concatenated()),
                    "fused SDPA, fp32 (inputs cast up, output cast down)":
                        lambda: merged(F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16())}
        tol = {"rtol": 2e-2, "atol": 2e-2}
    else:
        from torch.nn.attention.flex_attention import flex_attention
        math_compiled = torch.compile(math)
        flex = torch.compile(flex_attention)
        variants = {"fused SDPA (the model's)": fused, "math: matmul + softmax + matmul": math,
                    "math, torch.compile": math_compiled, "flex_attention, torch.compile": lambda: flex(q, k, v)}
        tol = {"rtol": 1e-4, "atol": 1e-5}
    res = {n: [] for n in variants}
    with torch.inference_mode():
        ref = fused() if args.dtype == "fp32" else merged(fused())
        for n, f in variants.items():
            torch.testing.assert_close(f(), ref, **tol)
        for _ in range(args.rounds):
            for n, f in variants.items():
                res[n].append(between_probes(f, flops, calls=5))
    print(f"{args.config}: batch {B}, {H} heads x {d}, {L} tokens ({flops / 1e9:.2f} GFLOP per call), "
          f"{args.dtype}, {args.rounds} rounds (% of the fp32 matmul peak)")
    print(ab_table(["attention", "ms per call (median)", "% of peak (median)", "per round"], res,
                   time_scale=1e3, time_digits=2))


if __name__ == "__main__":
    main()
