"""torchrun: joining and leaving the process group. Used by the trainer and by the commands that split their work
over ranks (``sample``, ``tokenize``)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    global _OWN_GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        _OWN_GROUP = True
    rank, world = dist_info()
    dev = torch.device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return rank, world, dev


_OWN_GROUP = False  # init_distributed created the process group (so the trainer also ends it)


def shutdown_distributed() -> None:
    """After a successful run: wait for every rank (rank 0 exports last), then destroy the process group that
    init_distributed created, so that no gloo/nccl thread is left running when the interpreter exits (which
    aborted ranks with "terminate called without an active exception")."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _OWN_GROUP = False
