"""Compiled inference: frozen static-shape ``torch.compile`` (with inductor's CPU settings) and power-of-two batch
chunks, which keep the number of static shapes a compiled function meets (and the fused attention's kernels,
``kernels.fused_cpu_attention``) small whatever batches a server forms."""

from __future__ import annotations

import functools

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
