"""The settings of a fine-tuning run, without torch (the command line builds its help from the defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

MIN_TARGET_VOXELS = 1000  # the reference redraws samples with at most this many label voxels in the crop

# Settings a resume may change: where and how fast it runs, and how long; the weights do not depend on them. Every
# other setting must be the recorded one.
APPLIED_ON_RESUME = ("max_steps", "device", "num_workers", "resume")


def default_workers() -> int:
    """Data loader processes per training process: the CPUs this process may use, shared among torchrun's processes
    on this machine, less one for the process itself (at most 4: loading a crop is cheap)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


@dataclass
class TrainConfig:
    """Settings of one run; the defaults are the reference's fine-tuning recipe on one GPU."""

    data: str
    output: str
    checkpoint: Optional[str] = None
    variant: Optional[str] = None  # None: the checkpoint's variant, or vit_b_ori without a checkpoint
    epochs: int = 200
    max_steps: Optional[int] = None
    batch_size: int = 2
    accumulation_steps: int = 20
    lr: float = 8e-5
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    device: str = "auto"
    seed: int = 0
    num_workers: int = field(default_factory=default_workers)
    resume: bool = False
    interaction_steps: int = 11
    validation_fraction: float = 0.1
    validation_clicks: Tuple[int, ...] = (1, 5)
    min_voxels: int = MIN_TARGET_VOXELS
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    milestones: List[int] = field(default_factory=list)  # filled from `epochs` when empty
