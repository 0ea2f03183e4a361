"""A decode's random numbers: one generator for the batch, or per-row generators (``RowGenerators``, ``seeded``)
so that a row draws what it draws decoded alone; the seeds of a many-chunk run (``chunk_seed``); uniform noise
drawn from either (the decode loop's Gumbel noise is made from it, ``arithmetic.gumbel``)."""

from __future__ import annotations

import torch

from maskgit.config import check_seed
from maskgit.errors import MaskGITError


class RowGenerators:
    """Generators that own consecutive blocks of a batch's rows: ``[(generator, rows), ...]`` in row order.

    Each block's noise is drawn from its own generator with the block's own shape, i.e. exactly what a decode of
    that block alone draws. So requests batched together (the server) get the noise each gets alone."""

    def __init__(self, blocks: list[tuple[torch.Generator, int]]):
        if not blocks or any(n < 1 for _, n in blocks):
            raise MaskGITError("RowGenerators needs at least one (generator, rows >= 1) block")
        self.blocks = list(blocks)
        self.rows = sum(n for _, n in self.blocks)

    def rand(self, shape, device) -> torch.Tensor:
        if shape[0] != self.rows:
            raise MaskGITError(f"noise for {shape[0]} rows requested from generators that cover {self.rows}")
        return torch.cat([torch.rand((n, *shape[1:]), generator=g, device=g.device).to(device)
                          for g, n in self.blocks])


NoiseSource = torch.Generator | RowGenerators | None


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a many-chunk sampling run started with ``seed``: chunk 0 uses ``seed`` itself
    (so one batch is what ``Pipeline.generate(seed=seed)`` gives); later chunks use seeds derived from both numbers,
    so runs with nearby seeds share no chunk, and a chunk's images do not depend on which process decodes it."""
    if chunk == 0:
        return seed
    import hashlib
    digest = hashlib.sha256(f"maskgit-chunk:{seed}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def seeded(seed: int | list[int] | None, rows: int) -> NoiseSource:
    """The noise of a decode of ``rows`` rows: one seed for the batch (None = 0), or one seed per row, each row then
    drawing exactly what it would draw decoded alone with its seed."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
            raise MaskGITError(f"give one seed, or one integer seed per image ({rows}); got {list(seed)[:8]}")
        return RowGenerators([(torch.Generator().manual_seed(check_seed(s)), 1) for s in seed])
    return torch.Generator().manual_seed(0 if seed is None else check_seed(seed))


def _rand(shape, generator: NoiseSource, device) -> torch.Tensor:
    """Uniform noise drawn on the generator's device, then moved (same numbers on CPU and GPU)."""
    if isinstance(generator, RowGenerators):
        return generator.rand(shape, device)
    gdev = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def uniform(shape, generator: NoiseSource, device) -> torch.Tensor:
    """Uniform noise in [0, 1) from a decode's noise source (one generator, or RowGenerators by blocks of rows)."""
    return _rand(shape, generator, device)
