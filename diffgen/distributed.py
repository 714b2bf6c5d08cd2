"""torchrun's processes: who this one is, and torch.distributed set-up for DDP (NCCL on GPUs, gloo
on CPUs).

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the same
code runs on one CPU, one GPU or many. Training joins a process group (``init_distributed``);
sampling needs none: each process reads who it is (``torchrun_env``) and takes its share of the
batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

from diffgen.errors import InputError

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> DistInfo:
    """This process's place among torchrun's (rank, world size, local rank) from the environment;
    one process of one without torchrun. InputError for an environment torchrun would not set."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistInfo()
        if "RANK" not in os.environ:
            raise InputError("WORLD_SIZE is set but RANK is not: start multi-process runs with torchrun")
        info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if not 0 <= info.rank < world_size or info.local_rank < 0:
        raise InputError(f"RANK {info.rank} is not in [0, WORLD_SIZE {world_size})")
    return info


def device_of(info: DistInfo, device: str) -> str:
    """The device a process should use: its own GPU (cuda:LOCAL_RANK) under torchrun when ``device``
    allows CUDA and there is one; else ``device`` as given."""
    if info.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return device


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment, if any."""
    info = torchrun_env()
    if not info.enabled:
        return info
    rank, world_size, local_rank = info.rank, info.world_size, info.local_rank
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def weights_agree(module: torch.nn.Module, info: DistInfo) -> bool:
    """True when every rank holds bit-identical parameters (compares a checksum vector)."""
    if not info.enabled:
        return True
    flat = torch.cat([p.detach().float().reshape(-1) for p in module.parameters()])
    # Two checksums: a plain and a position-weighted sum catch both changed and swapped values.
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    local = torch.stack([flat.double().sum(), (flat.double() * weights).sum()])
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging the global loss)."""
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (so all ranks stop together)."""
    if not info.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@contextmanager
def maybe_no_sync(module: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """DDP's no_sync for all but the last micro-batch of a step (gradient accumulation)."""
    if skip_sync and hasattr(module, "no_sync"):
        with cast("DistributedDataParallel", module).no_sync():
            yield
    else:
        yield


def wrapped(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``module`` as the step loop runs it: under DDP (gradients averaged across processes) when
    there are several, else itself."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module) if info.enabled else module
