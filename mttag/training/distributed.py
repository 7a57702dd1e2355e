"""Several processes under ``torchrun``: the process group, and gathering what each rank computed.
DistributedDataParallel itself is torch's; this is what the loop needs around it."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


# ---------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def gather(obj, world: int):
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
