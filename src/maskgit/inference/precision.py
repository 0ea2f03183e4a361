"""The precision rule (``auto``: bf16 where the device multiplies bf16 in hardware) and ``prepare``, the one
preparation of a transformer for inference at a precision: fp32 (on oneDNN where ``cpu.fp32_linear_backend``
says so), int8 (dynamic quantisation, CPU), bf16 (bf16 linear weights on CPU; GPUs run autocast as the module
is)."""

from __future__ import annotations

import logging

import torch

from maskgit.errors import MaskGITError
from maskgit.inference import kernels
from maskgit.inference.cpu import cpu_bf16_path, fp32_linear_backend, native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` -> bf16 where the device has native bf16 matmul, fp32 elsewhere; other names pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_precision(precision: str, device: str | torch.device) -> None:
    """A MaskGITError for a precision that is unknown or not for ``device`` (int8 is for CPUs, fp16 for GPUs)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise MaskGITError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise MaskGITError("int8 mode is for CPUs; on a GPU use bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise MaskGITError("fp16 autocast is for GPUs; on this CPU use " + (
            "bf16 (native here) or int8" if native_bf16(device) else
            "fp32 or int8 (bf16 is emulated here, slower than fp32)"))


def prepare(module: torch.nn.Module, precision: str, device: str | torch.device) -> torch.nn.Module:
    """``module`` (a transformer on ``device``) ready for inference at ``precision`` ("auto" resolved here): a
    prepared copy, or ``module`` itself where nothing changes. Packed layers an earlier preparation made are
    unpacked first (``kernels.plain_linears``), so a prepared module can be prepared again for another precision.

    - fp32: on a CPU whose fp32 linears run faster on oneDNN (``cpu.fp32_linear_backend``), pre-packed oneDNN
      linears with the GELU fused into each MLP (the same fp32 arithmetic); else unchanged.
    - int8 (CPU): every nn.Linear dynamically quantised to int8.
    - bf16: on CPU, bf16 linear weights (``bf16_linears``) for running under CPU bf16 autocast, where the
      attention takes its bf16 CPU kernel (``kernels.attention``); on a GPU unchanged (autocast does it all).
    - fp16 (GPU): unchanged, for autocast.

    Raises MaskGITError for an unknown precision, int8 off a CPU and fp16 off a GPU."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    check_precision(precision, device)
    module = kernels.plain_linears(module)
    if precision == "fp32" and device.type == "cpu" and fp32_linear_backend() == "onednn":
        return kernels.onednn_linears(module)  # same fp32 arithmetic, a faster GEMM library on this CPU
    if precision == "int8":
        return int8_dynamic(module)
    if precision == "bf16" and device.type == "cpu":
        return bf16_linears(module)
    return module


def int8_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every nn.Linear dynamically quantised to int8 (CPU; VNNI makes it fast)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def bf16_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose nn.Linear weights are stored in bf16, for running under CPU bf16 autocast: the
    weights are cast once instead of on every call; norms, embeddings and softmax stay fp32. Where oneDNN can pack bf16
    (``cpu.cpu_bf16_path``) the linears are bf16 OneDNNLinear layers: pre-packed weights and the MLP's GELU fused
    into its first GEMM (the same bf16 products; the fused GELU is computed in fp32 before its bf16 rounding);
    elsewhere plain bf16 nn.Linear layers. On a CPU without native bf16 a one-line note says it is slower than
    fp32."""
    import copy
    on_cpu = any(isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu" for m in module.modules())
    if on_cpu:
        say_once(bf16_note("cpu"))
    if on_cpu and cpu_bf16_path() == "packed":
        return kernels.packed_linears(module, lambda m: isinstance(m, torch.nn.Linear)
                                      and m.weight.device.type == "cpu", kernels.packed_bf16_linear)
    module = copy.deepcopy(module)  # no oneDNN bf16 packing on this CPU: plain bf16 linears
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.to(torch.bfloat16)
    return module


def bf16_note(device: str | torch.device = "cpu") -> str | None:
    """The one-line note for an explicit bf16 on a device without native bf16 matmul (None where it has it)."""
    device = torch.device(device)
    if device.type != "cpu" or native_bf16(device):
        return None
    return ("note: this CPU has no native bf16 (avx512_bf16 or AMX): bf16 runs emulated, slower than fp32 here "
            "(use fp32 or auto for speed)")


_said: set[str] = set()


def say_once(text: str | None) -> None:
    """Log ``text`` as a warning once per process (notes that would otherwise repeat per model or request)."""
    if text and text not in _said:
        _said.add(text)
        logging.getLogger(__name__).warning(text)


def amp_choice(amp: str, device: str | torch.device) -> tuple[bool, str]:
    """Training autocast: (bf16 on?, why). ``auto`` follows the sampler's rule (``resolve_precision``): bf16 on
    CUDA and on CPUs with native bf16 matmul, fp32 elsewhere; ``bf16`` / ``off`` are taken as given."""
    device = torch.device(device)
    if amp == "bf16":
        note = bf16_note(device)
        return True, "--amp bf16" + (f" ({note[6:]})" if note else "")
    if amp == "off":
        return False, "--amp off"
    if resolve_precision("auto", device) == "bf16":
        return True, f"--amp auto: {device.type} multiplies bf16 in hardware"
    return False, f"--amp auto: {device.type} has no native bf16 matmul, fp32 is faster"
