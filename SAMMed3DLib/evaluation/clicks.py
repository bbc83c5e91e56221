"""Simulated clicks, as SAM-Med3D was trained and evaluated.

"random" (the paper's protocol): the first click is drawn uniformly from the ground-truth foreground; each next
click uniformly from the error region (false negatives and false positives), positive iff it is a false negative.
"ritm" (the older interior-most variant): the click is the voxel farthest from the border of the larger of the two
error regions (the image edge counts as border), positive iff that region is the false negatives; no randomness.

Masks are 3D arrays (any axis order: points come back as indices in that order), numpy or torch, optionally with
leading batch axes; a seeded `numpy.random.Generator` makes every draw reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from SAMMed3DLib.interactive.geometry import interior_voxel

PROTOCOLS = ("random", "ritm")


@dataclass(frozen=True)
class SimulatedClick:
    """A voxel index (in the mask's axis order) and whether it includes (positive) or excludes the voxel."""

    index: tuple[int, int, int]
    positive: bool


def _as_bool(mask: Any) -> np.ndarray:
    if hasattr(mask, "detach"):  # a torch tensor, possibly on a GPU
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask) > 0


def _error_regions(truth: np.ndarray, prediction: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """False negatives and false positives; before any prediction the whole foreground is a false negative."""
    if prediction is None:
        return truth, np.zeros_like(truth)
    return truth & ~prediction, prediction & ~truth


def _uniform(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    flat = np.flatnonzero(region)
    return tuple(int(i) for i in np.unravel_index(flat[rng.integers(len(flat))], region.shape))


def next_click(
    truth: Any,
    prediction: Any = None,
    rng: Optional[np.random.Generator] = None,
    protocol: str = "random",
    spacing: Optional[tuple[float, float, float]] = None,
) -> SimulatedClick:
    """The next simulated click on one 3D mask pair; `prediction=None` gives the first click.

    When the prediction is already perfect there is no error to correct: the click is then a positive one in the
    foreground, which leaves a converged result unchanged. `spacing` (in the masks' axis order, mm) only matters
    for "ritm"; "random" needs `rng`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown click protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    truth = _as_bool(truth)
    if truth.ndim != 3:
        raise ValueError(f"next_click takes 3D masks, got shape {truth.shape}")
    prediction = None if prediction is None else _as_bool(prediction)
    if prediction is not None and prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the truth's {truth.shape}")
    false_negative, false_positive = _error_regions(truth, prediction)
    fn_count, fp_count = int(false_negative.sum()), int(false_positive.sum())
    if fn_count + fp_count == 0:
        if not truth.any():
            raise ValueError("no click possible: the ground truth and the prediction are both empty")
        false_negative, fn_count = truth, int(truth.sum())
    if protocol == "ritm":
        positive = fn_count >= fp_count
        return SimulatedClick(interior_voxel(false_negative if positive else false_positive, spacing), positive)
    if rng is None:
        raise ValueError("the random click protocol needs a numpy Generator (rng)")
    index = _uniform(false_negative | false_positive, rng)
    return SimulatedClick(index, bool(false_negative[index]))


def next_clicks(
    truth: Any,
    prediction: Any = None,
    rng: Optional[np.random.Generator] = None,
    protocol: str = "random",
) -> tuple[np.ndarray, np.ndarray]:
    """One click per mask pair of a batch (shape (..., D, H, W), e.g. (B, 1, 128, 128, 128) in patch space):
    `points` int64 (n, 3) voxel indices and `labels` int64 (n,) 1 positive / 0 negative, n the batch size,
    drawn in batch order from the one generator."""
    truth = _as_bool(truth)
    batch = truth.reshape(-1, *truth.shape[-3:])
    predictions = [None] * len(batch) if prediction is None else _as_bool(prediction).reshape(batch.shape)
    clicks = [next_click(t, p, rng, protocol) for t, p in zip(batch, predictions)]
    points = np.array([c.index for c in clicks], dtype=np.int64).reshape(len(clicks), 3)
    labels = np.array([int(c.positive) for c in clicks], dtype=np.int64)
    return points, labels
