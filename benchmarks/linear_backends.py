"""fp32 linear at the ImageNet transformer's MLP shape (2056 x 768 x 3072, and 257 rows for batch 1): MKL addmm vs
oneDNN with a pre-packed weight (``inference.kernels.OneDNNLinear``, what the pipeline's fp32 linears run on where
``inference.cpu.fp32_linear_backend()`` picks oneDNN) vs oneDNN through torch.utils.mkldnn vs torch.mm vs compiled +
frozen, best of 10 runs in GFLOP/s, and each one's largest relative error against a float64 product.

    python3 benchmarks/linear_backends.py"""

import time

import torch
import torch.utils.mkldnn as mkldnn

K, N = 768, 3072


def best(fn, m: int, n: int = 10) -> float:
    fn()
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 2 * m * K * N / min(times) / 1e9


def main() -> None:
    from maskgit.inference.cpu import cpu_capabilities
    from maskgit.inference.kernels import OneDNNLinear
    print(f"machine: {cpu_capabilities()['model']}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    torch.manual_seed(0)
    lin = torch.nn.Linear(K, N).eval()
    packed = OneDNNLinear(lin)
    dnn = mkldnn.to_mkldnn(torch.nn.Sequential(lin)).eval()
    w = lin.weight.t().contiguous()
    from torch._inductor import config as inductor_config
    compiled = torch.compile(lin)
    for m in (257, 8 * 257):
        x = torch.randn(m, K)
        ref = x.double() @ lin.weight.double().t() + lin.bias.double()
        with torch.inference_mode():
            cases = {"addmm (MKL)": lambda: lin(x),
                     "oneDNN, pre-packed weight (OneDNNLinear)": lambda: packed(x),
                     "oneDNN via torch.utils.mkldnn (dense in/out)": lambda: dnn(x.to_mkldnn()).to_dense(),
                     "torch.mm (MKL)": lambda: torch.mm(x, w) + lin.bias}
            with inductor_config.patch(freezing=True):
                compiled(x)
                cases["compiled + frozen"] = lambda: compiled(x)
                for name, fn in cases.items():
                    err = ((fn().double() - ref).abs().max() / ref.abs().max()).item()
                    print(f"{m} x {K} x {N}, {name}: {best(fn, m):.0f} GFLOP/s, relative error {err:.1e}")


if __name__ == "__main__":
    main()
