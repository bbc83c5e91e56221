"""One process or many: torchrun's environment decides. gloo on CPU, NCCL on GPUs; only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from SAMMed3DLib.backends.torch_predictor import select_device
from SAMMed3DLib.errors import SAMMed3DError, UnknownChoice
from SAMMed3DLib.train import DEVICES


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among `world_size` processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(name: str) -> torch.device:
    """`select_device` restricted to CUDA and CPU: `auto` falls back to the CPU, not Apple MPS, which lacks the
    float64 the processes' all-reduce uses and on which the loop is untested."""
    if name not in DEVICES:
        raise UnknownChoice("training device", name, DEVICES)
    device = select_device(name)
    return torch.device("cpu") if device.type == "mps" else device


def setup(device_name: str) -> Context:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); each GPU process takes its LOCAL_RANK's
    GPU. Without torchrun this is a single process and nothing is initialised."""
    device = choose_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise SAMMed3DError(
                f"process {local_rank} of this node needs a GPU of its own, but there are {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, device)


def cleanup(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def mean(context: Context, value: float) -> float:
    """The mean of `value` over all processes."""
    if not context.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather(context: Context, value: Any) -> List[Any]:
    """Every process's `value` (picklable), in rank order, on every process."""
    if not context.distributed:
        return [value]
    values: List[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
