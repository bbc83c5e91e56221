"""Dice and normalised surface distance (NSD) on the image's own, possibly anisotropic, grid, defined as the
reference's evaluation defines them (NSD: DeepMind's surface-distance surface model, reimplemented here).

Empty masks follow the reference's convention: both empty -> undefined (NaN, left out of means); truth empty but
prediction not (or the reverse) -> 0.
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence, Tuple

import numpy as np

from SAMMed3DLib.backends.cpu_threads import process_threads
from SAMMed3DLib.interactive.boxed_array import nonzero_box


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = as_bool(prediction), as_bool(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the truth's {truth.shape}")
    return prediction, truth


def as_bool(mask: Any) -> np.ndarray:
    """A mask as a bool numpy array: non-zero is inside; torch tensors (also on a GPU) too."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
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
    offsets = _offsets(spacing, tolerance_mm)
    # The corner grids are padded by the offsets' reach, so that every offset of a cell stays inside the array and is
    # one flat step; the distance transform needs no padding.
    reach = (0, 0, 0) if len(offsets) > _MAX_OFFSETS else tuple(int(r) for r in np.abs(offsets).max(axis=0))
    with ThreadPoolExecutor(process_threads()) as pool:  # numpy releases the GIL in the slabs' array operations
        (surface_p, codes_p), (surface_t, codes_t) = (_surface(mask[box], reach, pool) for mask in (prediction, truth))
    area_p, area_t = areas[codes_p], areas[codes_t]
    if len(offsets) > _MAX_OFFSETS:
        from scipy.ndimage import distance_transform_edt

        close_p = distance_transform_edt(~surface_t, sampling=spacing)[surface_p] <= tolerance_mm
        close_t = distance_transform_edt(~surface_p, sampling=spacing)[surface_t] <= tolerance_mm
    else:
        steps = offsets @ np.cumprod((1,) + surface_p.shape[:0:-1])[::-1]
        if len(codes_t) <= len(codes_p):
            close_t, close_p = _within(surface_t, surface_p, steps)
        else:
            close_p, close_t = _within(surface_p, surface_t, steps)
    return float((area_p[close_p].sum() + area_t[close_t].sum()) / (area_p.sum() + area_t.sum()))


_MAX_OFFSETS = 125  # above this many neighbour offsets, one distance transform is cheaper than the lookups
_SLAB = 8  # corner planes per slab: its temporaries stay in cache and are reused instead of paged in
_POINTS = 4096  # surface cells per chunk of lookups


def _offsets(spacing: Tuple[float, ...], tolerance_mm: float) -> np.ndarray:
    """The integer corner offsets within `tolerance_mm` (in mm, on this grid), nearest first."""
    reach = [int(np.floor(tolerance_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    lengths = ((offsets * np.asarray(spacing)) ** 2).sum(axis=1)
    offsets, lengths = offsets[lengths <= tolerance_mm**2], lengths[lengths <= tolerance_mm**2]
    return offsets[np.argsort(lengths, kind="stable")]


def _surface(mask: np.ndarray, pad: Tuple[int, ...], pool: ThreadPoolExecutor) -> Tuple[np.ndarray, np.ndarray]:
    """The surface of `mask` on its voxel-corner grid (one larger than `mask` on each axis, outside the array is
    background) padded by `pad` on each side: a bool array of the surface corners (whose 8 voxels are neither all
    inside nor all outside) and their neighbour codes in C order.

    Only the corners around the mask's own box can be on its surface (the other mask may span a far larger box); they
    are computed a slab of corner planes (axis 0) at a time, on the pool's threads."""
    shape = tuple(n + 1 + 2 * p for n, p in zip(mask.shape, pad))
    surface = np.zeros(shape, bool)
    box = nonzero_box(mask)
    rows, columns = box[1:], tuple(slice(b.start + p, b.stop + 1 + p) for b, p in zip(box[1:], pad[1:]))

    def slab(first: int) -> np.ndarray:
        """Corner planes first..first+_SLAB of the padded grid; plane c sees voxel planes c - pad - 1 and c - pad."""
        last = min(first + _SLAB, box[0].stop + 1 + pad[0])
        voxels = np.zeros((last - first + 1, *(s.stop - s.start + 2 for s in rows)), np.uint8)
        low, high = max(first - pad[0] - 1, 0), min(last - pad[0], mask.shape[0])
        voxels[low - (first - pad[0] - 1):high - (first - pad[0] - 1), 1:-1, 1:-1] = mask[(slice(low, high), *rows)]
        # One axis at a time (the lower corner's bits above the upper's): corner (i, j, k) ends at _CORNER_BITS' bit.
        codes = voxels[:, :, :-1] << 1
        codes |= voxels[:, :, 1:]
        codes, lower = codes[:, :-1] << 2, codes
        codes |= lower[:, 1:]
        codes, lower = codes[:-1] << 4, codes
        codes |= lower[1:]
        found = surface[(slice(first, last), *columns)]
        codes -= 1  # 0 and 255 (no surface) become the two largest values
        np.less(codes, 254, out=found)
        return codes[found] + 1

    slabs = range(box[0].start + pad[0], box[0].stop + 1 + pad[0], _SLAB)
    return surface, np.concatenate(list(pool.map(slab, slabs)))


def _within(small: np.ndarray, large: np.ndarray, steps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each True cell of `small`, then of `large` (padded grids, np.nonzero order): is a True cell of the other
    one of the flat `steps` away? `small` is overwritten.

    Small tolerances (a handful of neighbour offsets) look the offsets up directly, which is much faster than a
    distance transform of the whole box; both give the same answer. Only the cells of the smaller surface move: each
    looks up its neighbours in `large` and marks them for `large`'s cells, a chunk of cells with all offsets at once
    so that the memory they touch stays in cache. The marks go to `small`'s array, whose cells are listed by then:
    it is already paged in, a new array would not be."""
    points = np.flatnonzero(small)
    near, large = small.ravel(), large.ravel()
    near[points] = False
    found = np.empty(len(points), dtype=bool)
    for start in range(0, len(points), _POINTS):
        around = points[start:start + _POINTS, None] + steps
        found[start:start + _POINTS] = large[around].any(axis=1)
        near[around.ravel()] = True
    return found, near[large]
