"""Distributed data parallel through ``torchrun``: the same command runs on 1 process or many.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them, joins the process
group (NCCL on CUDA, gloo on CPU) and picks this rank's device. Without them everything is a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medzoo import runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank / world size from the environment ``torchrun`` sets (defaults: a single process)."""
    found = runtime.distributed_env()
    return DistInfo(rank=found.rank, local_rank=found.local_rank, world_size=found.world_size)


def resolve_device(requested: str | None, info: DistInfo) -> torch.device:
    """The device of this rank: ``requested`` (``cuda`` gets this rank's local GPU) or CUDA when available."""
    return runtime.resolve_device(requested, info.local_rank if info.enabled else 0)


def setup(device: torch.device, info: DistInfo) -> None:
    """Join the process group when running under torchrun (NCCL on CUDA, gloo on CPU)."""
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    log.info("rank %d/%d joined (%s)", info.rank, info.world_size, backend)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place; identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(local: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``local`` holds on at least one rank (itself when not distributed)."""
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    if info.enabled:
        all_reduce_sum(flag)
    return bool(flag.item() > 0)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank ``src`` to all ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of ``items`` (round-robin); every rank gets at least one item."""
    if not info.enabled:
        return list(items)
    part = items[info.rank :: info.world_size]
    return part if part else [items[info.rank % len(items)]]
