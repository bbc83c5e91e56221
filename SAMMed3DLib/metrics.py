"""Dice and normalised surface distance (NSD) on the image's own, possibly anisotropic, grid.

Empty masks follow the reference's convention: both empty -> undefined (NaN, left out of means); truth empty but
prediction not (or the reverse) -> 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction) > 0, np.asarray(truth) > 0
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the truth's {truth.shape}")
    return prediction, truth


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); NaN when both are empty."""
    prediction, truth = _pair(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def _border(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face neighbour in the background (the image edge counts as background)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def nsd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0) -> float:
    """Share of both masks' border voxels that lie within `tolerance_mm` of the other mask's border.

    `spacing` is the voxel size in mm in the arrays' axis order (K, J, I for SimpleITK/Slicer arrays). Distances
    are exact Euclidean distances in mm between voxel centres, computed on the bounding box of both masks only.
    """
    prediction, truth = _pair(prediction, truth)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {prediction.ndim}D masks")
    has_prediction, has_truth = bool(prediction.any()), bool(truth.any())
    if not (has_prediction or has_truth):
        return float("nan")
    if not (has_prediction and has_truth):
        return 0.0
    from scipy.ndimage import distance_transform_edt

    # Only the union's box (one voxel wider, within the image) matters: borders and distances are exact there.
    union = np.argwhere(prediction | truth)
    low, high = np.maximum(union.min(axis=0) - 1, 0), union.max(axis=0) + 2
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    border_p, border_t = _border(prediction[box]), _border(truth[box])
    to_t = distance_transform_edt(~border_t, sampling=spacing)
    to_p = distance_transform_edt(~border_p, sampling=spacing)
    close = int((to_t[border_p] <= tolerance_mm).sum()) + int((to_p[border_t] <= tolerance_mm).sum())
    return close / (int(border_p.sum()) + int(border_t.sum()))
