"""The CPU inference kernels the models run, and the module replacement that puts the packed ones in and takes
them out again.

The transformer's self-attention layers call ``attention`` (their ``attention_fn``), which picks its kernel from
what each call gets: oneDNN Graph's fused attention (or a per-row fallback) for bf16 CPU inference, torch's SDPA
for everything else. Its blocks call their ``mlp_fn(fc1, fc2, x)``, a class attribute holding the plain MLP; where
``fc1`` becomes a pre-packed oneDNN layer (``OneDNNLinear``), ``packed_linears`` sets an instance attribute of the
same name to ``packed_mlp`` (the GELU fused into the first GEMM) and ``plain_linears`` removes it again. Also the
tanh GELU itself, in the form eager and compiled code each compute fastest."""

from __future__ import annotations

import copy
import threading

import torch
import torch.nn.functional as F

from maskgit.inference.compile import MAX_CHUNK, pow2_slices
from maskgit.inference.cpu import torch_onednn_bf16
from maskgit.inference.settings import settings

MLP_FN = "mlp_fn"  # the blocks' MLP slot (a class attribute, see above)
_GELU_C = 1.5957691216057308  # 2 * sqrt(2 / pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (the official model's). Under torch.compile it is written as
    x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the same function (0.5 (1 + tanh z) = sigmoid(2z)), because inductor
    vectorises exp far faster than tanh on the CPU; eager keeps ATen's fused kernel and its backward."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(_GELU_C * (x + 0.044715 * (x * x * x)))
    return F.gelu(x, approximate="tanh")


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
    turns it off (``settings``)."""
    if not settings().fused_attention or not torch.backends.mkldnn.is_available() \
            or not torch_onednn_bf16():  # oneDNN has no bf16 kernels on this CPU
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


def cpu_bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for bf16 (B,H,L,d) on a CPU at inference (torch's fused CPU kernel ran the
    ImageNet-size batch-8 attention 3x slower in bf16 than what follows). Where the torch build has it, oneDNN
    Graph's fused attention kernel (``fused_cpu_attention``); otherwise one batch row at a time: a row's
    (H,L,L) scores stay in cache and its two bf16 GEMMs run at oneDNN's speed, each row's keys made contiguous
    first (the GEMM runs far slower on a strided k^T operand) and its output written straight into a (B,L,H,d)
    buffer, so the caller's (B,L,H*d) view needs no copy. Returns (B,H,L,d)."""
    scale = q.shape[-1] ** -0.5
    B, H, L, d = q.shape
    if torch.compiler.is_compiling():  # the same product in plain ops, which inductor fuses its own way
        return torch.cat([torch.matmul(torch.matmul(q[i:i + 1] * scale, k[i:i + 1].transpose(-1, -2)).softmax(-1),
                                       v[i:i + 1]) for i in range(B)])
    fused = fused_cpu_attention(q, k, v)
    if fused is not None:
        return fused
    out = q.new_empty(B, L, H, d)
    for i in range(B):
        s = torch.bmm(q[i] * scale, k[i].contiguous().transpose(1, 2)).softmax(-1)
        torch.bmm(s, v[i], out=out[i].transpose(0, 1))
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [+ mask]) v over (B,H,L,d) heads (``mask`` bool, True = attend; ``dropout`` a
    probability): ``cpu_bf16_attention`` for unmasked bidirectional bf16 CPU attention without autograd (bf16
    inference), torch's SDPA for the rest (fp32, masks, causal attention, training)."""
    if mask is None and not causal and q.dtype == torch.bfloat16 and q.device.type == "cpu" \
            and not torch.is_grad_enabled():
        return cpu_bf16_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)


def packed_mlp(fc1: torch.nn.Module, fc2: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``fc2(gelu_tanh(fc1(x)))`` with the GELU fused into ``fc1``'s GEMM (``fc1`` a ``OneDNNLinear``): the
    ``mlp_fn`` of blocks whose first MLP layer is packed."""
    return fc2(fc1.forward_gelu_tanh(x))


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


def packed_bf16_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """``linear`` as a pre-packed oneDNN bf16 layer (only where ``cpu.cpu_bf16_path()`` is "packed")."""
    return OneDNNLinear(linear, torch.bfloat16)


def replacing_modules(module: torch.nn.Module, pick, make) -> torch.nn.Module:
    """A copy of ``module`` in which every submodule ``m`` with ``pick(m)`` is ``make(m)`` instead (the others
    copied); ``module`` itself when nothing is picked."""
    memo = {id(m): make(m) for m in module.modules() if pick(m)}
    return copy.deepcopy(module, memo) if memo else module


def packed_linears(module: torch.nn.Module, pick, make) -> torch.nn.Module:
    """``replacing_modules(module, pick, make)`` for linear layers that become ``OneDNNLinear`` ones, the blocks'
    MLPs then fusing their GELU where their first layer is packed."""
    out = replacing_modules(module, pick, make)
    if out is not module:
        for m in out.modules():
            if hasattr(type(m), MLP_FN):
                if isinstance(getattr(m, "fc1", None), OneDNNLinear):
                    setattr(m, MLP_FN, packed_mlp)
                else:
                    vars(m).pop(MLP_FN, None)
    return out


def onednn_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose fp32 CPU nn.Linear layers are OneDNNLinear (inference only; other parameters
    are copied, the linear weights are packed instead), with the GELU fused into each block's first MLP layer."""
    return packed_linears(module, lambda m: isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu"
                          and m.weight.dtype == torch.float32, OneDNNLinear)


def plain_linears(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself, or where it holds OneDNNLinear layers (or MLPs set to ``packed_mlp``) a copy with
    ordinary nn.Linear layers and the blocks' own MLP (for export, training or another precision)."""
    memo = {id(m): m.to_linear() for m in module.modules() if isinstance(m, OneDNNLinear)}
    if not memo and not any(MLP_FN in vars(m) for m in module.modules()):
        return module
    out = copy.deepcopy(module, memo)
    for m in out.modules():
        vars(m).pop(MLP_FN, None)
    return out
