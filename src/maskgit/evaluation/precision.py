"""What a reduced precision costs on a trained model: the same labels and seeds decoded in fp32 and in each other
precision; FD, class agreement, the share of token positions identical to fp32, and speed."""

from __future__ import annotations

import torch

from maskgit.evaluation.samples import time_per_image
from maskgit.pipeline import Pipeline


def decode_same_seeds(pipe: Pipeline, labels: torch.Tensor, steps: int, seed: int, batch_size: int) -> torch.Tensor:
    """Token grids (N, h*w) for ``labels``, batch by batch with per-batch seeds (the same for every precision)."""
    out = []
    N = pipe.grid[0] * pipe.grid[1]
    cfg = pipe.sample_config(steps=steps)
    for j, i in enumerate(range(0, len(labels), batch_size)):
        lab = pipe.check_labels(labels[i:i + batch_size].tolist())
        start = torch.full((len(lab), N), pipe.mask_id, dtype=torch.long)
        out.append(pipe.decode_tokens(start, lab, cfg, seed + j).cpu())
    return torch.cat(out)


def compare_precisions(model, device: str, precisions: list[str], labels: torch.Tensor, evaluate, steps: int = 8,
                       seed: int = 0, batch_size: int = 100, repeats: int = 3) -> list[dict]:
    """One row per precision (fp32 first, the reference): metrics of ``evaluate(images, labels)``, the fraction of
    token positions equal to fp32's, s/image at batch 1 and images/s at batch 32."""
    rows, ref = [], None
    for prec in ["fp32"] + [p for p in precisions if p != "fp32"]:
        pipe = Pipeline.load(model, device, precision=prec)
        toks = decode_same_seeds(pipe, labels, steps, seed, batch_size)
        ref = toks if ref is None else ref
        images = torch.cat([pipe.to_images(toks[i:i + batch_size]) for i in range(0, len(toks), batch_size)])
        rows.append({"precision": pipe.precision, "metrics": evaluate(images, labels),
                     "tokens equal to fp32": (toks == ref).float().mean().item(),
                     "s/img (batch 1)": time_per_image(pipe, "maskgit", 1, {"steps": steps}, repeats),
                     "img/s (batch 32)": 1 / time_per_image(pipe, "maskgit", 32, {"steps": steps}, repeats)})
    return rows
