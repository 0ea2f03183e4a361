"""The aMUSEd reference scheduler's arithmetic, as a setting of the one decode loop (``SampleConfig.sampler =
"amused"``): guidance written ``uncond + (1 + s) * (cond - uncond)``, tokens drawn with ``torch.multinomial`` on the
softmax, a confidence of ``log(p) + t_i * gumbel`` whose noise temperature t_i falls linearly from
``choice_temperature`` to 0 over the steps, and ``floor(N * r0 * gamma((i+1)/T))`` tokens left masked after step i
(r0 = the masked fraction at the start; 1 when an edit resumes the schedule at ``start_step``). Each step draws its
random numbers in the reference's order (the multinomial, then one uniform per position), so fed the same generator
it picks the same tokens."""

from __future__ import annotations

import math

import torch

from maskgit.config import SampleConfig


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference's CFG arithmetic for our scale s (its guidance_scale is 1 + s)."""
    return uncond + (1.0 + scale) * (cond - uncond)


def noise_temperatures(cfg: SampleConfig) -> torch.Tensor:
    """(T,) float32: the confidence-noise temperature of each step, ``linspace(choice_temperature, 0, T)``."""
    return torch.linspace(cfg.choice_temperature, 0.0, cfg.steps)


def _multinomial(probs: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row of probs (R, K) -> (R,), on the generator's device (one call per block of RowGenerators)."""
    blocks = getattr(generator, "blocks", None)
    if blocks is None:
        dev = generator.device if generator is not None else probs.device
        return torch.multinomial(probs.to(dev), 1, generator=generator)[:, 0].to(probs.device)
    per_row, out, i = probs.shape[0] // generator.rows, [], 0
    for g, n in blocks:
        out.append(torch.multinomial(probs[i:i + n * per_row].to(g.device), 1, generator=g)[:, 0])
        i += n * per_row
    return torch.cat(out).to(probs.device)


def sample(logits: torch.Tensor, greedy: bool, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B,N,K) -> (tokens (B,N), probs (B,N,K)): one multinomial draw per position (argmax if greedy). The
    decoder applies a temperature / top-k / top-p to the logits first when one is set."""
    probs = logits.softmax(-1)
    if greedy:
        return probs.argmax(-1), probs
    B, N, K = probs.shape
    return _multinomial(probs.reshape(B * N, K), generator).view(B, N), probs


def keep_masked(cfg: SampleConfig, step: int, start_ratio: torch.Tensor, unknown: torch.Tensor, n: int):
    """(B,1) float: how many tokens stay masked after ``step`` of a grid of ``n`` positions."""
    ratio = torch.tensor([[step + 1]], device=unknown.device) / cfg.steps  # float32, as the reference
    gamma = torch.cos(ratio * math.pi / 2) if cfg.schedule == "cosine" else 1 - ratio
    count = (n * (start_ratio * gamma)).floor()
    count = torch.min(unknown.sum(-1, keepdim=True) - 1, count)
    return torch.max(torch.tensor([1], device=unknown.device), count)


def remask(sampled: torch.Tensor, probs: torch.Tensor, unknown: torch.Tensor, count: torch.Tensor,
           temperature: torch.Tensor, uniform: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Mask again the ``count`` (B,1) unknown positions of lowest noisy confidence; known tokens never."""
    chosen = probs.gather(-1, sampled[..., None])[..., 0]  # (B, N)
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
    noise = -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))
    confidence = torch.log(chosen.clamp(1e-20)) + temperature * noise
    cut = confidence.sort(-1).values.gather(1, count.long())
    return torch.where(confidence < cut, torch.full_like(sampled, mask_id), sampled)
