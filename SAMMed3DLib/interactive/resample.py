"""Resampling in both directions between a volume's grid and a patch frame, in physical space.

Into a frame (`resample_into`): the model's input patch, the mask prompt, training crops. Back onto the volume
(`paste_logits`, `paste_mask`): the decoder's 32^3 logits interpolated linearly onto the volume's own voxels. Every
patch axis is parallel to one volume axis (`geometry.axis_map`), so both directions separate into 1D interpolations.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from SAMMed3DLib.interactive.geometry import PatchFrame, Region, Volume, axis_map, frame_region


def resample_into(volume: Volume, frame: PatchFrame, interpolation: str = "linear") -> np.ndarray:
    """The volume sampled at the frame's voxel centres: an array of shape (size, size, size) in patch axis order.

    "linear" (images) gives float32; "nearest" (labels) keeps the volume's dtype. Points outside the volume's voxels
    get 0 (the reference's zero padding). At the border the rules are SimpleITK's `Resample` with a linear or
    nearest-neighbour interpolator: a point is inside while its continuous index lies in [-0.5, n-0.5) and linear
    interpolation repeats the outer voxel. Only the voxels under the frame are read, never the whole volume.
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    mapping = axis_map(volume, frame)
    steps = []  # per patch axis: (array axis, low index, high index, high weight or None, inside)
    for r in range(3):
        axis = mapping.array_axis[r]
        n = volume.array.shape[axis]
        coords = mapping.offset[r] + mapping.scale[r] * np.arange(frame.size, dtype=np.float64)
        inside = (coords >= -0.5) & (coords < n - 0.5)
        if not inside.any():
            dtype = np.float32 if interpolation == "linear" else volume.array.dtype
            return np.zeros((frame.size,) * 3, dtype=dtype)
        if interpolation == "nearest":
            low = np.clip(np.floor(coords + 0.5), 0, n - 1).astype(np.int64)
            steps.append((axis, low, low, None, inside))
            continue
        low, weight = linear_weights(coords, n)
        steps.append((axis, low, np.minimum(low + 1, n - 1), weight, inside))
    # Read only the block of voxels the frame touches, then interpolate one axis at a time, the axis that shrinks
    # the data most first (J before I on ties: gathering along the last axis is the slowest).
    block = [slice(None)] * 3
    for axis, low, high, _, inside in steps:
        block[axis] = slice(int(low[inside].min()), int(high[inside].max()) + 1)
    values = volume.array[tuple(block)]
    order = sorted(steps, key=lambda step: (len(step[1]) / values.shape[step[0]], step[0]))
    for axis, low, _, weight, inside in order:
        start, last = block[axis].start, block[axis].stop - 1 - block[axis].start
        low_in_block = np.clip(low - start, 0, last)
        if weight is None:
            values = np.take(values, low_in_block, axis=axis)
        else:
            values = interpolate_along(values, axis, low_in_block, weight)
        if not inside.all():
            outside = [slice(None)] * 3
            outside[axis] = ~inside
            values[tuple(outside)] = 0
    return np.ascontiguousarray(values.transpose(mapping.array_axis))


def linear_weights(coords: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """1D linear interpolation at continuous indices `coords` of a `size`-long grid: the lower neighbour's index and
    the upper neighbour's weight, clamping beyond the outer voxel centres (as trilinear upsampling with
    align_corners=False does). The value is `v[low] + weight * (v[low + 1] - v[low])`."""
    coords = np.clip(coords, 0, size - 1)
    low = np.clip(np.floor(coords).astype(np.int64), 0, max(size - 2, 0))
    return low, (coords - low).astype(np.float32)


def interpolate_along(values: np.ndarray, axis: int, low: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Linear interpolation of `values` along `axis` at the lower neighbours `low` with the upper neighbours'
    weights (see `linear_weights`), as float32: two gathers, combined in place."""
    shape = [1] * values.ndim
    shape[axis] = -1
    below = np.take(values, low, axis=axis).astype(np.float32, copy=False)
    result = np.take(values, np.minimum(low + 1, values.shape[axis] - 1), axis=axis).astype(np.float32, copy=False)
    result -= below
    result *= weight.reshape(shape)
    result += below
    return result


def paste_logits(volume: Volume, frame: PatchFrame, logits: np.ndarray) -> Tuple[Region, np.ndarray]:
    """Interpolate coarse logits ((n,n,n) over `frame`'s cube, patch axis order) linearly in physical space onto the
    volume voxels inside the cube. Returns the K,J,I region and the float32 logits there."""
    region = frame_region(volume, frame)
    coarse, weights = _paste_plan(volume, frame, logits, region)
    values = np.zeros(tuple(len(low) for low, _ in weights), np.float32)
    for k, base, step in _interpolated_slices(coarse, weights):
        np.subtract(base, step, out=values[k])
    return region, values


def paste_mask(volume: Volume, frame: PatchFrame, logits: np.ndarray, mask: np.ndarray) -> Region:
    """`paste_logits` thresholded at 0 straight into `mask` (a bool or uint8 array on the volume's grid). Returns the
    K,J,I region written; the rest of `mask` is untouched.

    Only the box of volume voxels that have a positive logit among their 8 interpolation corners is interpolated (a
    convex combination of values <= 0 is <= 0), slice by slice: a small object costs little even on a fine grid.
    """
    region = frame_region(volume, frame)
    target = mask[region]
    target = target.view(bool) if target.dtype == np.uint8 else target
    target[...] = False
    coarse, weights = _paste_plan(volume, frame, logits, region)
    positive = coarse > 0
    if not positive.any():
        return region
    box = []
    for axis, (low, weight) in enumerate(weights):
        cells = np.flatnonzero(positive.any(axis=tuple(a for a in range(3) if a != axis)))
        used = np.flatnonzero((low + (weight > 0) >= cells[0]) & (low <= cells[-1]))
        box.append(slice(used[0], used[-1] + 1) if len(used) else slice(0, 0))
    weights = [(low[part], weight[part]) for (low, weight), part in zip(weights, box)]
    target = target[tuple(box)]
    for k, base, step in _interpolated_slices(coarse, weights):
        np.greater(base, step, out=target[k])
    return region


def _paste_plan(volume: Volume, frame: PatchFrame, logits: np.ndarray, region: Region):
    """The coarse logits in the volume's array axis order (K,J,I) and, per array axis, the `linear_weights` of the
    region's voxels on the coarse grid."""
    logits = np.asarray(logits, dtype=np.float32)
    mapping = axis_map(volume, frame.logits_frame(logits.shape[0]))
    coarse = np.ascontiguousarray(logits.transpose(np.argsort(mapping.array_axis)))
    weights = [None, None, None]
    for r in range(3):
        axis = mapping.array_axis[r]
        indices = np.arange(region[axis].start, region[axis].stop, dtype=np.float64)
        weights[axis] = linear_weights((indices - mapping.offset[r]) / mapping.scale[r], logits.shape[r])
    return coarse, weights


def _interpolated_slices(coarse: np.ndarray, weights):
    """Yield (k, base, step) per output slice k, the interpolated values being `base - step` (float32; `step` is a
    reused buffer): so a threshold at 0 is one comparison, `base > step`.

    Separable: the coarse values are interpolated along I and J first (small), then each output slice is one
    interpolation between two coarse slices, so each output voxel costs a multiply and a comparison.
    """
    if any(len(low) == 0 for low, _ in weights):
        return
    values = interpolate_along(interpolate_along(coarse, 2, *weights[2]), 1, *weights[1])  # (coarse K, nJ, nI)
    difference = values[:-1] - values[1:] if len(values) > 1 else np.zeros_like(values)
    step = np.empty(values.shape[1:], np.float32)
    for k, (low, weight) in enumerate(zip(*weights[0])):
        np.multiply(difference[low], weight, out=step)
        yield k, values[low], step
