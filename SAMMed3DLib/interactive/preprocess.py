"""The model's input, exactly as in training: the volume resampled into a patch frame, CT clamped, z-normalised.

One place for it: the interactive session, evaluation and fine-tuning all call these functions.

    frame = patch_frame(volume, center_ras)                        # 128^3 at 1.5 mm, canonical RAS+ axes
    image = prepare_patch(volume, frame, detect_modality(volume))  # float32 (128,128,128), patch axis order
    label = resample_into(label_volume, frame, "nearest")          # same grid, label values kept
"""

from __future__ import annotations

from typing import Literal, Tuple

import numpy as np

from SAMMed3DLib.interactive.geometry import PatchFrame, Volume
from SAMMed3DLib.interactive.resample import resample_into

Modality = Literal["ct", "mr"]
MODALITIES: Tuple[Modality, ...] = ("ct", "mr")
MODALITY_CHOICES = ("auto", *MODALITIES)  # what users choose: "auto" is decided by `detect_modality`

CT_RANGE = (-1000.0, 1000.0)
CT_AIR_HU = -200.0  # well below any MR intensity after the usual (non-negative or z-scored) scaling
CT_AIR_FRACTION = 0.001


def detect_modality(volume: Volume) -> Modality:
    """"ct" when the intensities look like Hounsfield units: at least 0.1% of (a sample of) the voxels are below
    -200, i.e. air or lung, which MR (non-negative, or z-scored) never reaches in that amount; else "mr"."""
    sample = volume.array[::2, ::4, ::4]
    return "ct" if np.count_nonzero(sample < CT_AIR_HU) >= CT_AIR_FRACTION * sample.size else "mr"


def chosen_modality(choice: str, volume: Volume) -> Modality:
    """A user's choice from `MODALITY_CHOICES` as the modality to use; ValueError for anything else."""
    if choice not in MODALITY_CHOICES:
        raise ValueError(f"modality must be one of {', '.join(MODALITY_CHOICES)}, got {choice!r}")
    return detect_modality(volume) if choice == "auto" else choice  # type: ignore[return-value]


def normalise(patch: np.ndarray, modality: Modality) -> np.ndarray:
    """Training's intensity normalisation of a resampled patch (zero padding included): CT clamped to [-1000, 1000];
    then z-normalised with the mean and unbiased standard deviation of the voxels > 0, applied to every voxel.
    With fewer than two voxels > 0, or no spread among them, the patch is only shifted (std taken as 1)."""
    patch = np.asarray(patch, dtype=np.float32)
    if modality == "ct":
        patch = np.clip(patch, *CT_RANGE)
    foreground = patch[patch > 0]
    mean = float(foreground.mean(dtype=np.float64)) if foreground.size else 0.0
    std = float(foreground.std(dtype=np.float64, ddof=1)) if foreground.size > 1 else 0.0
    return ((patch - mean) / (std if std > 0 else 1.0)).astype(np.float32)


def prepare_patch(volume: Volume, frame: PatchFrame, modality: Modality) -> np.ndarray:
    """The network's input for one frame: linear resampling, then `normalise`; float32 (size,size,size)."""
    return normalise(resample_into(volume, frame, "linear"), modality)
