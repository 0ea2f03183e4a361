"""Mask schedules gamma(r) on torch tensors, for training's masks and img2img's masked fraction: the one float32
schedule of ``arithmetic.mask_ratio`` (the official ``mask_schedule``'s arithmetic) that decoding counts its masks
with too. gamma(0) = 1 (everything masked), gamma(1) ~ 0, clipped to [1e-6, 1]; ``log`` and ``exp`` depend on the
number of tokens N (MaskGIT paper, Table 3)."""

from __future__ import annotations

import numpy as np
import torch

from maskgit.sampling.arithmetic import SCHEDULE_NAMES, mask_ratio

SCHEDULES = SCHEDULE_NAMES  # the schedule names (aliases such as ``pow2`` are accepted where a name is checked)


def gamma(name: str, r, n: int = 256) -> torch.Tensor:
    """gamma_name(r) as a float32 tensor, for r a float or a tensor in [0, 1] (on any device; the result is on
    r's device); ``n`` is the number of tokens (log/exp schedules)."""
    rt = torch.as_tensor(r)
    values = mask_ratio(name, rt.detach().to("cpu", torch.float32).numpy(), np.float32(n))
    return torch.from_numpy(np.ascontiguousarray(values)).to(rt.device)
