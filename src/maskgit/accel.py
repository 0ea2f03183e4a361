"""Runtime speed tools the library uses: frozen static-shape torch.compile (with inductor's CPU settings),
power-of-two batch chunks, CPU int8 dynamic quantisation, CPU bf16 detection and the precision rule, and the
choice of fp32 GEMM library on CPUs (oneDNN where MKL runs its generic kernels)."""

from __future__ import annotations

import functools
import logging
import threading

import torch


def compile_frozen(fn, backend="inductor", dynamic: bool | None = False):
    """``torch.compile(fn)`` with inductor's weight freezing: parameters become constants, so the linear layers run
    on pre-packed MKL weights and the pointwise ops around them fuse (see `maskgit bench speed --compile`). Inference
    only: the compiled code ignores later changes to the weights. (Freezing is read when a call compiles, and
    ``torch.compile(options={"freezing": True})`` does not reach it, hence the config patch around every call.)

    Shapes are static (``dynamic=False``): each new batch size compiles its own graph. With torch's default
    (``dynamic=None``) a second shape recompiles the graph with a symbolic batch dimension, and that graph ran the
    ImageNet-size batch-8 forward at 73.7% of the matmul peak against 87.0% static (``benchmarks/compile_ab.py``)."""
    import torch._inductor.config as inductor_config
    compiled = torch.compile(fn, dynamic=dynamic, backend=backend)
    options = {"freezing": True, **inductor_cpu_options()}

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with inductor_config.patch(options):
            return compiled(*args, **kwargs)
    return run


def inductor_cpu_options() -> dict:
    """Inductor settings every CPU compile here uses: the vector width named explicitly (``cpp.simdlen`` = the bit
    width of the ISA inductor picks itself). Left unset, torch 2.13 vectorised some element-wise loops at 8 floats
    while compiling them with 16-float AVX-512 vectors: a 20,001-element sigmoid wrote past its output buffer
    (wrong values at a thread's chunk boundary, then a heap-corruption abort). With the width named the same
    kernels are correct; nothing else changes."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    try:
        width = pick_vec_isa().bit_width()
    except Exception:  # no C++ compiler: torch.compile fails later with its own message
        return {}
    return {"cpp.simdlen": width} if width else {}


MAX_CHUNK = 64  # rows per call of a batch-chunked function (chunk sizes: powers of two up to this)


def pow2_chunks(fn, max_chunk: int = MAX_CHUNK):
    """``fn`` over its batch in power-of-two chunks, largest first (13 rows -> 8 + 4 + 1; 150 -> 64 + 64 + 16 + 4 + 2),
    concatenated along the batch. Every tensor argument whose first dimension is the batch (that of the first
    argument, positional or keyword) is sliced alike; ``fn`` must treat rows independently. A static-shape
    compiled ``fn`` then meets at most log2(max_chunk) + 1 batch sizes, whatever batches a server forms, so it
    compiles a few graphs once and stays under dynamo's recompile limit (8) instead of falling back to eager."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(first, torch.Tensor) or first.ndim == 0:
            return fn(*args, **kwargs)
        B = first.shape[0]
        if B <= max_chunk and B & (B - 1) == 0:
            return fn(*args, **kwargs)

        def part(x, sl):
            return x[sl] if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == B else x
        return torch.cat([fn(*(part(a, sl) for a in args), **{k: part(v, sl) for k, v in kwargs.items()})
                          for sl in pow2_slices(B, max_chunk)])
    return run


def pow2_slices(n: int, max_chunk: int = MAX_CHUNK) -> list[slice]:
    """Slices of range(n) in power-of-two lengths up to ``max_chunk``, largest first (13 -> 8, 4, 1)."""
    out, i = [], 0
    while i < n:
        m = min(max_chunk, 1 << ((n - i).bit_length() - 1))
        out.append(slice(i, i + m))
        i += m
    return out


class _ScaledAttention(torch.nn.Module):
    """softmax(q k^T * scale) v: the pattern oneDNN Graph fuses into one attention kernel."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul(self.scale).softmax(-1), v)


FUSED_ATTENTION_SHAPES = 16  # traced kernels kept (one per shape and layout; the oldest is dropped)
_fused_attention: dict = {}  # (shape, strides, dtype) -> traced module, or None where oneDNN did not fuse
_UNTRACED = object()
_fused_lock = threading.Lock()


def _with_onednn_fusion(fn):
    """``fn()`` with autocast off and TorchScript's oneDNN Graph fusion on. The fusion switch is process-wide and
    stays on once set: switching it back after each call would race with other threads' calls (which would then
    run the traced graph unfused); it only concerns TorchScript graphs, which the package uses for nothing else."""
    if not torch.jit.onednn_fusion_enabled():
        torch.jit.enable_onednn_fusion(True)
    with torch.autocast("cpu", enabled=False):
        return fn()


def _trace_fused_attention(q, k, v):
    """A frozen trace of ``_ScaledAttention`` whose graph oneDNN fused for these inputs' shapes and strides, or
    None where it did not (no oneDNN Graph in this torch build, or the pattern was not taken)."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", enabled=False):  # traced as written, whatever context the caller is in
                # no check_trace: the graph has no control flow to check, and the check's comparison imports
                # torch.distributed.tensor, most of the time of the process's first trace
                m = torch.jit.freeze(torch.jit.trace(_ScaledAttention(q.shape[-1] ** -0.5).eval(), (q, k, v),
                                                    check_trace=False))

            def warm_up():  # TorchScript's profiling executor fuses during the first calls
                for _ in range(3):
                    m(q, k, v)
                return str(m.graph_for(q, k, v))
            graph = _with_onednn_fusion(warm_up)
    except Exception:  # TorchScript or oneDNN Graph missing or refusing: the caller's own path is used
        return None
    return m if "oneDNNFusionGroup" in graph else None


def fused_cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """softmax(q k^T / sqrt(d)) v for bf16 (B,H,L,d) CPU tensors at inference as one oneDNN Graph kernel (through
    TorchScript's oneDNN fusion), or None where that is not available (then the caller computes it its own way).
    The first call for a shape and layout traces and compiles the kernel (a fraction of a second at the ImageNet
    size); the last ``FUSED_ATTENTION_SHAPES`` are kept. Batch sizes other than powers of two up to ``MAX_CHUNK`` run
    in power-of-two chunks, so a server's many batch sizes share at most 7 kernels per layout instead of evicting and
    retracing each other, and the memory the compiled kernels keep stays bounded (``benchmarks/attention_shapes.py``).
    The fused kernel ran the ImageNet-size attention 1.38x faster than two bf16 GEMMs and a softmax per row
    (``benchmarks/attention_ab.py``); a row gives the same numbers alone as in a batch. ``MASKGIT_FUSED_ATTENTION=0``
    turns it off."""
    import os
    if os.environ.get("MASKGIT_FUSED_ATTENTION", "1") == "0" or not torch.backends.mkldnn.is_available() \
            or not _torch_onednn_bf16():  # oneDNN has no bf16 kernels on this CPU
        return None
    B, H, L, d = q.shape
    if B & (B - 1) or B > MAX_CHUNK:  # power-of-two chunks: at most 7 batch sizes to trace per layout
        out = q.new_empty(B, L, H, d)  # written chunk by chunk; the caller's (B,L,H*d) view of it needs no copy
        for sl in pow2_slices(B):
            part = _fused_kernel(q[sl], k[sl], v[sl])
            if part is None:
                return None
            out[sl].transpose(1, 2).copy_(part)
        return out.transpose(1, 2)
    return _fused_kernel(q, k, v)


def _fused_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """The traced oneDNN Graph attention for these inputs' shape and layout (traced on first use), run; or None."""
    key = (tuple(q.shape), q.stride(), k.stride(), v.stride(), q.dtype)
    with _fused_lock:
        m = _fused_attention.get(key, _UNTRACED)
    if m is _UNTRACED:
        m = _trace_fused_attention(q, k, v)
        with _fused_lock:
            while len(_fused_attention) >= FUSED_ATTENTION_SHAPES:
                _fused_attention.pop(next(iter(_fused_attention)))
            _fused_attention[key] = m
    return None if m is None else _with_onednn_fusion(lambda: m(q, k, v))


def int8_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every nn.Linear dynamically quantised to int8 (CPU; VNNI makes it fast)."""
    import warnings

    from torch.ao.quantization import quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


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
def _torch_onednn_bf16() -> bool | None:
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
    known = _torch_onednn_bf16()
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` -> bf16 where the device has native bf16 matmul, fp32 elsewhere; other names pass through."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def bf16_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose nn.Linear weights are stored in bf16, for running under CPU bf16 autocast: the
    weights are cast once instead of on every call; norms, embeddings and softmax stay fp32. Where oneDNN can pack bf16
    (``cpu_bf16_path``) the linears are bf16 OneDNNLinear layers: pre-packed weights and the MLP's GELU fused into
    its first GEMM (the same bf16 products; the fused GELU is computed in fp32 before its bf16 rounding);
    elsewhere plain bf16 nn.Linear layers. On a CPU without native bf16 a one-line note says it is slower than
    fp32."""
    import copy
    on_cpu = any(isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu" for m in module.modules())
    if on_cpu:
        say_once(bf16_note("cpu"))
    if on_cpu and cpu_bf16_path() == "packed":
        return replacing_modules(module, lambda m: isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu",
                                 packed_bf16_linear)
    module = copy.deepcopy(module)  # no oneDNN bf16 packing on this CPU: plain bf16 linears
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.to(torch.bfloat16)
    return module


def packed_bf16_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """``linear`` as a pre-packed oneDNN bf16 layer (only where ``cpu_bf16_path()`` is "packed")."""
    return OneDNNLinear(linear, torch.bfloat16)


def fp32_linear_backend() -> str:
    """Which library runs the CPU's fp32 linear layers at inference: "onednn" on AMD CPUs, where MKL's sgemm picks
    its generic kernels (on a Zen 4, oneDNN ran the transformer's linear shapes at 2.3x MKL's rate with the same
    fp32 accuracy, ``benchmarks/linear_backends.py``); "mkl" (torch's default) elsewhere. ``MASKGIT_FP32_LINEAR``
    = mkl | onednn overrides the choice."""
    import os
    choice = os.environ.get("MASKGIT_FP32_LINEAR", "auto")
    if choice not in ("auto", "mkl", "onednn"):
        from maskgit.errors import MaskGITError
        raise MaskGITError(f"MASKGIT_FP32_LINEAR must be auto, mkl or onednn, not {choice!r}")
    if not torch.backends.mkldnn.is_available():
        return "mkl"
    if choice == "auto":
        return "onednn" if cpu_capabilities()["vendor"] == "AuthenticAMD" else "mkl"
    return choice


class OneDNNLinear(torch.nn.Module):
    """An inference-only nn.Linear whose weight is kept pre-packed in oneDNN's blocked layout, in fp32 (the
    numbers are the Linear's, bit for bit: ``weight`` unpacks them) or bf16 (inputs are cast to bf16, outputs are
    bf16, as under CPU bf16 autocast)."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(dtype).contiguous(), None)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype).clone()

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # an nn.Linear's entries ("weight", "bias", unpacked), so state_dict() reads the same on every CPU
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("weight",) + (("bias",) if self.bias is not None else ()):
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
        if prefix + "weight" in state_dict:
            w = state_dict[prefix + "weight"].detach().to(self.dtype).contiguous()
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        if self.bias is not None and prefix + "bias" in state_dict:
            self.bias = state_dict[prefix + "bias"].detach().to(self.dtype).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, "none", [], "")

    def forward_gelu_tanh(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu_tanh(self(x))`` with the GELU fused into the GEMM's output pass."""
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, "gelu", [], "tanh")

    def to_linear(self) -> torch.nn.Linear:
        lin = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=self.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.dtype}")


def replacing_modules(module: torch.nn.Module, pick, make) -> torch.nn.Module:
    """A copy of ``module`` in which every submodule ``m`` with ``pick(m)`` is ``make(m)`` instead (the others
    copied); ``module`` itself when nothing is picked."""
    import copy
    memo = {id(m): make(m) for m in module.modules() if pick(m)}
    return copy.deepcopy(module, memo) if memo else module


def onednn_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose fp32 CPU nn.Linear layers are OneDNNLinear (inference only; other parameters
    are copied, the linear weights are packed instead)."""
    return replacing_modules(module, lambda m: isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu"
                             and m.weight.dtype == torch.float32, OneDNNLinear)


def plain_linears(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself, or where it holds OneDNNLinear layers a copy with ordinary nn.Linear ones (for export,
    training or another precision)."""
    return replacing_modules(module, lambda m: isinstance(m, OneDNNLinear), lambda m: m.to_linear())
