"""Classifier-guided selection (MaskGIT paper, appendix): decode k candidates per image and keep the one a
classifier finds most likely to be of the requested class. It costs k decodes and k classifier passes per image;
with the same classifier as judge, the class agreement it reports is inflated (it was optimised for)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from maskgit.errors import MaskGITError
from maskgit.sampling.noise import NoiseSource, RowGenerators


def candidate_noise(seed: int | list[int] | None, generator: NoiseSource, images: int, k: int) -> NoiseSource:
    """The noise of k candidates per image (their rows consecutive): a generator or one seed covers all rows; one
    seed per image, or a RowGenerators block, drives its images' candidate rows (an image stays what its seed
    gives alone)."""
    if isinstance(generator, RowGenerators):  # each block of images: its k candidates per image, same generator
        return RowGenerators([(g, n * k) for g, n in generator.blocks])
    if generator is not None:
        return generator
    if isinstance(seed, (list, tuple)):
        if len(seed) != images:
            raise MaskGITError(f"give one seed, or one integer seed per image ({images}); got {len(seed)}")
        return RowGenerators([(torch.Generator().manual_seed(int(s)), k) for s in seed])
    return torch.Generator().manual_seed(0 if seed is None else seed)


@torch.inference_mode()
def best_of(tokens: torch.Tensor, labels: torch.Tensor, k: int,
            decode_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            class_logits: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B,N) to fill, labels (B,) -> (best tokens (B,N), chosen candidate index (B,)).

    ``decode_fn(tokens (B*k,N), labels (B*k,))`` decodes the candidates (rows of one image are consecutive);
    ``class_logits(tokens (B*k,N))`` -> (B*k, C) classifier logits of their images."""
    if k < 1:
        raise MaskGITError(f"candidates must be >= 1, got {k}")
    if (labels < 0).any():
        raise MaskGITError("candidate selection needs a class label for every image (the classifier picks the "
                           "candidate most likely of that class)")
    B = len(tokens)
    cand = decode_fn(tokens.repeat_interleave(k, 0), labels.repeat_interleave(k, 0))  # (B*k, N)
    logp = torch.log_softmax(class_logits(cand).float(), -1)  # (B*k, C)
    if int(labels.max()) >= logp.shape[-1]:
        raise MaskGITError(f"the classifier has {logp.shape[-1]} classes; label {int(labels.max())} is out of range")
    score = logp.gather(-1, labels.repeat_interleave(k, 0).to(logp.device)[:, None])[:, 0].view(B, k)
    pick = score.argmax(1)  # (B,)
    return cand.view(B, k, -1)[torch.arange(B), pick.to(cand.device)], pick
