"""torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): DistributedDataParallel setup for
training, and the rank's share of a sharded batch segmentation (which needs no process group).

Without torchrun everything here is a no-op for a single process. NCCL on CUDA, gloo otherwise
(CI runs two gloo processes on the CPU).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.distributed as dist

from mednextv2.devices import resolve_device
from mednextv2.errors import InputError
from mednextv2.ranks import DistContext, from_environment  # noqa: F401  (re-exported for training)

log = logging.getLogger(__name__)


def device_for(requested, ctx: DistContext) -> torch.device:
    """The device of this rank: `requested` (auto, cuda, cpu, ...), one GPU per rank (cuda:LOCAL_RANK)."""
    device = resolve_device(requested)
    if device.type == "cuda" and ctx.enabled:
        if ctx.local_rank >= torch.cuda.device_count():
            raise InputError(f"rank {ctx.rank} (local rank {ctx.local_rank}) has no GPU of its own: this machine has "
                             f"{torch.cuda.device_count()}; start at most that many processes per node "
                             "(torchrun --nproc-per-node)")
        device = torch.device("cuda", ctx.local_rank)
    return device


def init(ctx: DistContext, device: torch.device) -> None:
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    log.info("DDP: rank %d of %d on %s (%s)", ctx.rank, ctx.world_size, device, backend)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


def any_flag(ctx: DistContext, *flags: bool, device: Optional[torch.device] = None):
    """Element-wise OR of boolean flags over all ranks (one collective for all of them)."""
    if not ctx.enabled:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def mean(ctx: DistContext, value: float, device: Optional[torch.device] = None) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64 if device is None or device.type != "mps" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def broadcast_object(ctx: DistContext, obj):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
