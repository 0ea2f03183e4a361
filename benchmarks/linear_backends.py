"""fp32 linear at the ImageNet transformer's MLP shape (2056 x 768 x 3072): MKL addmm vs oneDNN
(torch.utils.mkldnn) vs torch.mm vs compiled + frozen, best of 10 runs in GFLOP/s, and the largest output
difference between MKL and oneDNN.

    python3 benchmarks/linear_backends.py"""

import time

import torch
import torch.utils.mkldnn as mkldnn

M, K, N = 8 * 257, 768, 3072


def best(fn, n: int = 10) -> float:
    fn()
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 2 * M * K * N / min(times) / 1e9


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(M, K)
    lin = torch.nn.Linear(K, N).eval()
    with torch.inference_mode():
        print(f"addmm (MKL) fp32: {best(lambda: lin(x)):.0f} GFLOP/s")
        dnn = mkldnn.to_mkldnn(torch.nn.Sequential(lin)).eval()
        print(f"oneDNN linear fp32 (dense in/out): {best(lambda: dnn(x.to_mkldnn()).to_dense()):.0f} GFLOP/s")
        w = lin.weight.t().contiguous()
        print(f"torch.mm fp32: {best(lambda: torch.mm(x, w)):.0f} GFLOP/s")
        from torch._inductor import config as inductor_config
        compiled = torch.compile(lin)
        with inductor_config.patch(freezing=True):
            print(f"compiled + frozen linear fp32: {best(lambda: compiled(x)):.0f} GFLOP/s")
        diff = (lin(x) - dnn(x.to_mkldnn()).to_dense()).abs().max().item()
        print(f"max |MKL - oneDNN|: {diff:.2e}")


if __name__ == "__main__":
    main()
