"""Memory of one training step, estimated before training starts, and the memory this machine has.

The activations come from a probe: one forward of the task on a batch of two examples, counting the bytes that
autograd keeps for the backward pass (parameters excluded), scaled linearly to the per-process batch. Weights,
gradients and the two AdamW moments add 4 bytes x 4 per parameter (5 with EMA). A batch that would not fit is
refused with the largest batch that would, instead of the kernel's OOM killer ending the run mid-way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maskgit.errors import MaskGITError
from maskgit.training.loop import StepContext

PROBE = 2  # examples in the probe forward
SLACK = 1.3  # backward's transient gradients, dropout masks, allocator fragmentation
HEADROOM = 0.9  # use at most this share of the available memory


@dataclass
class MemoryEstimate:
    params: int  # parameter count of the whole task (model + discriminator, ...)
    trainable: int
    fixed_bytes: int  # weights + gradients + optimizer state (+ EMA)
    per_example_bytes: int  # activations kept for backward, per example
    batch: int  # examples per process
    processes: int  # processes sharing this memory (CPU torchrun ranks)
    available_bytes: int | None

    @property
    def total_bytes(self) -> int:
        return self.processes * (self.fixed_bytes + self.batch * self.per_example_bytes)

    def largest_batch(self, multiple: int = 1) -> int:
        """The largest per-step (global) batch that fits, a multiple of ``multiple``; 0 when none does."""
        if self.available_bytes is None:
            return 0
        room = HEADROOM * self.available_bytes / self.processes - self.fixed_bytes
        per_process = int(room // max(1, self.per_example_bytes))
        return max(0, per_process * self.processes // multiple * multiple)

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= HEADROOM * self.available_bytes


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.0f} MiB"


def saved_activation_bytes(task: nn.Module, batch: dict, device: torch.device) -> int:
    """Bytes autograd saves for backward during one forward of ``task`` on ``batch`` (each storage counted once,
    parameters left out). Runs in eval mode, so no buffer, codebook or RNG state of the task changes."""
    params = {p.untyped_storage().data_ptr() for p in task.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            return t
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    was_training = task.training
    task.eval()
    try:
        b = next(iter(batch.values())).shape[0]
        ctx = StepContext(10 ** 9, 0, b, 0, 1, device)  # a late step: every loss term (e.g. the GAN's) is on
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            task(batch, ctx)
    finally:
        task.train(was_training)
    return sum(seen.values())


def estimate(task: nn.Module, probe_batch: dict, batch_size: int, device: str | torch.device = "cpu",
             ema: bool = False, processes: int | None = None) -> MemoryEstimate:
    """Estimate one training step of ``task`` at global ``batch_size`` from ``probe_batch`` (a few examples)."""
    dev = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if processes is None:
        processes = local if dev.type == "cpu" else 1
    b = next(iter(probe_batch.values())).shape[0]
    acts = saved_activation_bytes(task, {k: v.to(dev) for k, v in probe_batch.items()}, dev)
    per_example = int(SLACK * acts / b) + sum(v[:1].numel() * v.element_size() for v in probe_batch.values())
    params = sum(p.numel() for p in task.parameters())
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    fixed = 4 * params + 4 * 3 * trainable + (4 * params if ema else 0)
    return MemoryEstimate(params, trainable, fixed, per_example, max(1, batch_size // max(1, world)), processes,
                          available_memory(dev))


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes this process may still allocate: free GPU memory, or the smaller of the kernel's MemAvailable and
    the room left under a cgroup memory limit (containers). None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            used = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            found.append(max(0, int(limit) - used))
        break
    return min(found) if found else None


def describe(est: MemoryEstimate) -> str:
    """One line: what a step is expected to take, and of what."""
    procs = f" x {est.processes} processes" if est.processes > 1 else ""
    avail = f" of {gib(est.available_bytes)} available" if est.available_bytes is not None else ""
    return (f"expected memory {gib(est.total_bytes)}{avail} (batch {est.batch}{procs}: activations "
            f"{gib(est.batch * est.per_example_bytes)}, weights + optimizer {gib(est.fixed_bytes)})")


def check(est: MemoryEstimate, multiple: int = 1, what: str = "") -> None:
    """Raise a one-line MaskGITError when the estimated step does not fit in the available memory."""
    if est.fits:
        return
    best = est.largest_batch(multiple)
    fix = f"use --batch-size {best} or less" if best else "no batch fits: use a smaller model or image size"
    raise MaskGITError(f"a training step{what} would need ~{gib(est.total_bytes)} but only "
                       f"{gib(est.available_bytes)} is available: {fix} (or --skip-memory-check to try anyway)")
