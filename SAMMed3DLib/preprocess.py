"""The model's input, exactly as in training: the volume resampled into a patch frame, CT clamped, z-normalised.

One place for it: the interactive session, evaluation and fine-tuning all call these functions.

    frame = patch_frame(volume, center_ras)                        # 128^3 at 1.5 mm, canonical RAS+ axes
    image = prepare_patch(volume, frame, is_ct(volume))            # float32 (128,128,128), patch axis order
    label = resample_into(label_volume, frame, "nearest")          # same grid, label values kept
"""

from __future__ import annotations

import numpy as np

from SAMMed3DLib.geometry import PatchFrame, Volume, axis_map, interpolate_along, linear_weights

CT_RANGE = (-1000.0, 1000.0)
CT_AIR_HU = -200.0  # well below any MR intensity after the usual (non-negative or z-scored) scaling
CT_AIR_FRACTION = 0.001


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


def is_ct(volume: Volume) -> bool:
    """Whether the intensities look like CT in Hounsfield units: at least 0.1% of (a sample of) the voxels are below
    -200, i.e. air or lung, which MR (non-negative, or z-scored) never reaches in that amount."""
    sample = volume.array[::2, ::4, ::4]
    return bool(np.count_nonzero(sample < CT_AIR_HU) >= CT_AIR_FRACTION * sample.size)


def normalise(patch: np.ndarray, is_ct: bool) -> np.ndarray:
    """Training's intensity normalisation of a resampled patch (zero padding included): CT clamped to [-1000, 1000];
    then z-normalised with the mean and unbiased standard deviation of the voxels > 0, applied to every voxel.
    With fewer than two voxels > 0, or no spread among them, the patch is only shifted (std taken as 1)."""
    patch = np.asarray(patch, dtype=np.float32)
    if is_ct:
        patch = np.clip(patch, *CT_RANGE)
    foreground = patch[patch > 0]
    mean = float(foreground.mean(dtype=np.float64)) if foreground.size else 0.0
    std = float(foreground.std(dtype=np.float64, ddof=1)) if foreground.size > 1 else 0.0
    return ((patch - mean) / (std if std > 0 else 1.0)).astype(np.float32)


def prepare_patch(volume: Volume, frame: PatchFrame, is_ct: bool) -> np.ndarray:
    """The network's input for one frame: linear resampling, then `normalise`; float32 (size,size,size)."""
    return normalise(resample_into(volume, frame, "linear"), is_ct)
