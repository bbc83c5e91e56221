"""Dice and normalised surface distance (NSD) on the image's own, possibly anisotropic, grid, defined as the
reference's evaluation defines them (NSD: DeepMind's surface-distance surface model, reimplemented here).

Empty masks follow the reference's convention: both empty -> undefined (NaN, left out of means); truth empty but
prediction not (or the reverse) -> 0.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence, Tuple

import numpy as np

from SAMMed3DLib.interactive.boxed_array import nonzero_box


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = _as_bool(prediction), _as_bool(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the truth's {truth.shape}")
    return prediction, truth


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > 0


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); NaN when both are empty."""
    prediction, truth = _pair(prediction, truth)
    total = np.count_nonzero(prediction) + np.count_nonzero(truth)
    if total == 0:
        return float("nan")
    return 2.0 * np.count_nonzero(prediction & truth) / total


# Bit of each corner voxel of a 2x2x2 cell in the cell's neighbour code, corners in (i, j, k) in {0,1}^3 order.
_CORNER_BITS = (128, 64, 32, 16, 8, 4, 2, 1)
_CORNERS = tuple(itertools.product((0, 1), repeat=3))


@functools.lru_cache(maxsize=32)
def surfel_areas(spacing: Tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the surface that classic (Lorensen) marching cubes places in a 2x2x2 cell, per neighbour code.

    This is the surface model of DeepMind's surface-distance package, which the reference's evaluation uses: a
    code and its complement get the same surface, the one of the side with at most four corners inside.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    areas = np.zeros(256, dtype=np.float64)
    for code in range(1, 255):
        inside = code if bin(code).count("1") <= 4 else 255 - code
        cube = np.zeros((2, 2, 2), dtype=np.float64)
        for corner, bit in zip(_CORNERS, _CORNER_BITS):
            cube[corner] = 1.0 if inside & bit else 0.0
        vertices, faces, _, _ = marching_cubes(cube, 0.5, spacing=spacing, method="lorensen", allow_degenerate=False)
        areas[code] = mesh_surface_area(vertices, faces)
    return areas


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every voxel corner (array one larger than `mask` on each axis): which of the 8 voxels
    around the corner are inside; outside the array counts as background."""
    codes = np.pad(mask.astype(np.uint8), 1)
    # One axis at a time (the lower corner's bits above the upper's): corner (i, j, k) ends at _CORNER_BITS' bit.
    codes = (codes[:, :, :-1] << 1) | codes[:, :, 1:]
    codes = (codes[:, :-1] << 2) | codes[:, 1:]
    return (codes[:-1] << 4) | codes[1:]


def nsd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0) -> float:
    """Normalised surface distance (surface Dice) at `tolerance_mm`, as the reference's evaluation computes it.

    Both surfaces are marching-cubes surfels at the voxel corners, weighted by their area in mm²; NSD is the share
    of the total surface area lying within `tolerance_mm` of the other surface. `spacing` is the voxel size in mm
    in the arrays' axis order (K, J, I for SimpleITK/Slicer arrays). Only the masks' bounding box is processed.
    """
    prediction, truth = _pair(prediction, truth)
    if prediction.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"nsd needs 3D masks and 3 spacings, got {prediction.shape} and spacing {tuple(spacing)}")
    has_prediction, has_truth = bool(prediction.any()), bool(truth.any())
    if not (has_prediction or has_truth):
        return float("nan")
    if not (has_prediction and has_truth):
        return 0.0
    spacing = tuple(float(s) for s in spacing)
    box = nonzero_box(prediction | truth)
    areas = surfel_areas(spacing)
    codes_p, codes_t = _neighbour_codes(prediction[box]), _neighbour_codes(truth[box])
    surface_p, surface_t = (codes_p != 0) & (codes_p != 255), (codes_t != 0) & (codes_t != 255)
    area_p, area_t = areas[codes_p[surface_p]], areas[codes_t[surface_t]]
    close_p = _within(surface_p, surface_t, spacing, tolerance_mm)
    close_t = _within(surface_t, surface_p, spacing, tolerance_mm)
    return float((area_p[close_p].sum() + area_t[close_t].sum()) / (area_p.sum() + area_t.sum()))


_MAX_OFFSETS = 125  # above this many neighbour offsets, one distance transform is cheaper than the lookups


def _within(source: np.ndarray, target: np.ndarray, spacing: Tuple[float, ...], tolerance_mm: float) -> np.ndarray:
    """For each True cell of `source` (in np.nonzero order): is a True cell of `target` within `tolerance_mm`?

    Small tolerances (1 mm on a typical grid: a handful of neighbour offsets) look the offsets up directly, which
    is much faster than a distance transform of the whole box; both give the same answer.
    """
    reach = [int(np.floor(tolerance_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    offsets = offsets[((offsets * np.asarray(spacing)) ** 2).sum(axis=1) <= tolerance_mm**2]
    if len(offsets) > _MAX_OFFSETS:
        from scipy.ndimage import distance_transform_edt

        return distance_transform_edt(~target, sampling=spacing)[source] <= tolerance_mm
    # Flat indices in the source and target padded by the reach, so that every offset of a cell stays inside; each
    # offset is then one flat step. The smaller side moves: with fewer target cells their neighbourhoods are marked
    # and the source cells looked up once, else each offset is looked up at the source cells not found yet.
    pad = [(r, r) for r in reach]
    steps = np.cumprod((1,) + tuple(n + 2 * r for n, r in zip(target.shape[:0:-1], reach[:0:-1])))[::-1]
    offsets = offsets[np.argsort(((offsets * np.asarray(spacing)) ** 2).sum(axis=1), kind="stable")]  # nearest first
    points = np.flatnonzero(np.pad(source, pad))  # np.nonzero order
    padded = np.pad(target, pad)
    targets = np.flatnonzero(padded)
    if len(targets) < len(points):
        near = np.zeros(padded.size, dtype=bool)
        for step in offsets @ steps:
            near[targets + step] = True
        return near[points]
    padded = padded.ravel()
    found = np.zeros(len(points), dtype=bool)
    waiting = np.arange(len(points))  # cells still looked for, dropped once a good share of them was found
    for step in offsets @ steps:
        hit = padded[points + step]
        found[waiting[hit]] = True
        if 4 * np.count_nonzero(hit) > len(hit):
            points, waiting = points[~hit], waiting[~hit]
    return found
