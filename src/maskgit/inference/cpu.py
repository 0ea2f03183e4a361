"""What the CPU can do, as far as the fast paths care: its instruction sets (bf16 in hardware, oneDNN's bf16
packing) and the library its fp32 linear layers run on at inference."""

from __future__ import annotations

import functools

import torch

from maskgit.errors import MaskGITError
from maskgit.inference.settings import settings


def cpu_capabilities() -> dict:
    """The CPU's model and the instruction sets that decide the fast paths (Linux: /proc/cpuinfo; elsewhere only
    what torch reports)."""
    import platform
    model, flags, vendor = platform.processor() or platform.machine(), set(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    vendor = value.strip()
                elif key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "vendor": vendor, "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "torch_isa": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": onednn_packs_bf16(flags)}


@functools.lru_cache(maxsize=None)
def torch_onednn_bf16() -> bool | None:
    """torch's own answer to whether its oneDNN runs bf16 kernels here (None where this torch cannot say)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def onednn_packs_bf16(flags: set[str]) -> bool:
    """Whether oneDNN can pre-pack bf16 linear weights on this CPU (its reorder needs avx_ne_convert, or avx512bw,
    avx512vl and avx512dq; without them it raises). torch's own check where it has one, else the flags."""
    if not torch.backends.mkldnn.is_available():
        return False
    known = torch_onednn_bf16()
    if known is not None:
        return known
    return "avx_ne_convert" in flags or {"avx512bw", "avx512vl", "avx512dq"} <= flags


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (CPU: avx512_bf16 or AMX; GPU: torch says so).
    Without it bf16 is emulated and runs slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    caps = cpu_capabilities()
    return device.type == "cpu" and bool(caps.get("avx512_bf16") or caps.get("amx_bf16")) \
        and bool(caps.get("onednn_bf16", True))


def cpu_bf16_path() -> str:
    """How this CPU runs an explicit bf16: "packed" (pre-packed oneDNN bf16 linears, where oneDNN can pack them)
    or "plain" (bf16 nn.Linear weights under autocast, torch's own kernels: works on any CPU)."""
    return "packed" if cpu_capabilities().get("onednn_bf16") else "plain"


def fp32_linear_backend() -> str:
    """Which library runs the CPU's fp32 linear layers at inference: "onednn" on AMD CPUs, where MKL's sgemm picks
    its generic kernels (on a Zen 4, oneDNN ran the transformer's linear shapes at 2.3x MKL's rate with the same
    fp32 accuracy, ``benchmarks/linear_backends.py``); "mkl" (torch's default) elsewhere. ``MASKGIT_FP32_LINEAR``
    = mkl | onednn overrides the choice (``settings``)."""
    choice = settings().fp32_linear
    if choice not in ("auto", "mkl", "onednn"):
        raise MaskGITError(f"MASKGIT_FP32_LINEAR must be auto, mkl or onednn, not {choice!r}")
    if not torch.backends.mkldnn.is_available():
        return "mkl"
    if choice == "auto":
        return "onednn" if cpu_capabilities()["vendor"] == "AuthenticAMD" else "mkl"
    return choice
