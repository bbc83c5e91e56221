"""Fine-tuning: its settings (`config`), training data (`data`), the reference's recipe (`loop`); processes:
`SAMMed3DLib.distributed`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # training runs on CUDA or the CPU (see `choose_device`)


def choose_device(name: str) -> torch.device:
    """`select_device` restricted to CUDA and CPU: `auto` falls back to the CPU, not Apple MPS, which lacks the
    float64 the processes' all-reduce uses and on which the loop is untested."""
    import torch

    from SAMMed3DLib.backends.torch_predictor import select_device
    from SAMMed3DLib.errors import UnknownChoice

    if name not in DEVICES:
        raise UnknownChoice("training device", name, DEVICES)
    device = select_device(name)
    return torch.device("cpu") if device.type == "mps" else device
