"""Process-group set-up for ``torchrun`` (nccl on GPU, gloo on CPU) and small collectives."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cspt.errors import CsptError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: its rank, the number of processes, its local rank and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CsptError("--device cuda was asked for, but no CUDA GPU is visible")
    return device


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (1 without it), known before the group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: str = "auto", timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group when launched by ``torchrun``; a single process otherwise.

    ``timeout_minutes``: how long a collective waits for the slowest process (a long
    evaluation, a checkpoint on slow storage) before the job fails.
    """
    kind = resolve_device(device)
    world_size = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    torch_device = torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")
    return DistContext(rank, world_size, local_rank, torch_device)


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process writes the shared outputs (rank 0, or the only process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (itself when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The largest ``value`` over all processes (itself when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items`` (every ``world_size``-th from its rank): all of them alone."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return list(items[dist.get_rank()::dist.get_world_size()])
    return list(items)


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
