"""One process or many: torchrun's environment decides. Fine-tuning and evaluation share this; only rank 0 writes
the results. gloo on CPUs, NCCL between GPUs unless a caller asks for gloo (evaluation exchanges only small Python
objects). torch is imported only by the functions that need it, so a single process needs no torch here."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, TypeVar

from SAMMed3DLib.errors import ProcessLost, SAMMed3DError

if TYPE_CHECKING:
    import torch

Result = TypeVar("Result")


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among `world_size` processes and its device (a torch.device)."""

    rank: int
    world_size: int
    device: Any

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun started several processes (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, backend: Optional[str] = None, timeout: Optional[timedelta] = None) -> Context:
    """Join the process group when launched by torchrun; each process on a CUDA `device` takes its LOCAL_RANK's GPU.
    `backend` defaults to NCCL on CUDA, else gloo; `timeout` bounds each collective (torch's default: 30 min).
    Without torchrun this is a single process and nothing is initialised."""
    if not launched():
        return Context(0, 1, device)
    import torch
    import torch.distributed as dist

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
        options = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"), **options)
    return Context(rank, int(os.environ["WORLD_SIZE"]), device)


def cleanup(context: Context) -> None:
    if context.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def _collective() -> Iterator[None]:
    """A collective whose peer died (it failed and said why, or was stopped) raises `ProcessLost` here."""
    try:
        yield
    except RuntimeError as error:  # torch.distributed's DistBackendError and the like
        raise ProcessLost(error) from error


def barrier(context: Context) -> None:
    if context.distributed:
        import torch.distributed as dist

        with _collective():
            dist.barrier()


def mean(context: Context, value: float) -> float:
    """The mean of `value` over all processes."""
    if not context.distributed:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    with _collective():
        dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather(context: Context, value: Any) -> List[Any]:
    """Every process's `value` (picklable), in rank order, on every process."""
    if not context.distributed:
        return [value]
    import torch.distributed as dist

    values: List[Any] = [None] * context.world_size
    with _collective():
        dist.all_gather_object(values, value)
    return values


def main_first(context: Context, work: Callable[[], Result]) -> Result:
    """`work()` on rank 0, then, once it is done, on the other processes: a download into the shared weights cache
    then happens once (one .part file, one rename) and the others find the file cached."""
    if context.is_main:
        result = work()
    barrier(context)
    if not context.is_main:
        result = work()
    return result
