"""Index bookkeeping between Slicer's oriented images and the session's numpy volumes, without importing Slicer.

The Segment Editor hands an effect `vtkOrientedImageData` objects: a `vtkImageData` whose voxel (i, j, k) *of its
extent* maps to the segmentation's RAS by a 4x4 image-to-world matrix. The extent need not start at 0 (a segment's
labelmap usually covers only the segment's bounding box), so every conversion here carries the extent along.
Arrays are in K,J,I order (slice, row, column), as `slicer.util.arrayFromVolume` and the session use them; VTK
stores the same voxels with I fastest, so a C-order K,J,I array *is* VTK's scalar order and no transpose is needed.
Only real VTK types are touched (the `vtk` package in Slicer and on PyPI).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import vtk
from vtk.util import numpy_support

from SAMMed3DLib.interactive.geometry import Region

Extent = Tuple[int, int, int, int, int, int]  # VTK order: i0, i1, j0, j1, k0, k1 (inclusive)


def extent_shape(extent: Sequence[int]) -> Tuple[int, int, int]:
    """The K,J,I array shape of a VTK extent (0 along an axis where the extent is empty)."""
    i0, i1, j0, j1, k0, k1 = (int(v) for v in extent)
    return max(k1 - k0 + 1, 0), max(j1 - j0 + 1, 0), max(i1 - i0 + 1, 0)


def array_ijk_to_ras(image_to_world: np.ndarray, extent: Sequence[int]) -> np.ndarray:
    """IJK->RAS of an array whose index 0 is the extent's first voxel: the image-to-world matrix shifted by the
    extent's start, so that `Volume(array, this)` places every voxel where Slicer draws it."""
    shift = np.eye(4)
    shift[:3, 3] = [extent[0], extent[2], extent[4]]
    return np.asarray(image_to_world, dtype=float) @ shift


def image_voxels(image) -> np.ndarray:
    """A single-component `vtkImageData`'s voxels as a K,J,I array over its extent: a view of VTK's memory, to read
    at once (the image may replace or free it)."""
    scalars = image.GetPointData().GetScalars()
    shape = extent_shape(image.GetExtent())
    if scalars is None or 0 in shape:
        raise ValueError("the image has no voxels")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"expected a single-component image, got {scalars.GetNumberOfComponents()} components")
    return numpy_support.vtk_to_numpy(scalars).reshape(shape)


def image_array(image) -> np.ndarray:
    """A copy of a single-component `vtkImageData`'s voxels as a K,J,I array over its extent."""
    return image_voxels(image).copy()


def values_in_extent(image, extent: Sequence[int]) -> np.ndarray:
    """A single-component image's values over `extent` (K,J,I, the image's type), from an image that covers any
    extent of the same grid: voxels outside the image are 0, voxels of the image outside `extent` are dropped. Only
    the overlap is read."""
    have = image.GetExtent() if image is not None else (0, -1, 0, -1, 0, -1)
    if 0 in extent_shape(have) or image.GetPointData().GetScalars() is None:
        return np.zeros(extent_shape(extent), dtype=np.uint8)
    source = image_voxels(image)  # a view of VTK's memory, read at once
    out = np.zeros(extent_shape(extent), dtype=source.dtype)
    # Overlap of the two extents, per axis, in K,J,I order.
    target_slices, source_slices = [], []
    for axis in (2, 1, 0):
        lo = max(have[2 * axis], extent[2 * axis])
        hi = min(have[2 * axis + 1], extent[2 * axis + 1])
        if hi < lo:
            return out
        target_slices.append(slice(lo - extent[2 * axis], hi - extent[2 * axis] + 1))
        source_slices.append(slice(lo - have[2 * axis], hi - have[2 * axis] + 1))
    out[tuple(target_slices)] = source[tuple(source_slices)]
    return out


def labelmap_in_extent(image, extent: Sequence[int]) -> np.ndarray:
    """A uint8 K,J,I mask (1 where the labelmap is > 0) over `extent` (`values_in_extent`)."""
    return (values_in_extent(image, extent) > 0).astype(np.uint8)


def region_extent(region: Region, extent: Sequence[int]) -> Extent:
    """The VTK extent of the K,J,I `region` of an array that covers `extent`."""
    k, j, i = region
    return (
        extent[0] + i.start, extent[0] + i.stop - 1,
        extent[2] + j.start, extent[2] + j.stop - 1,
        extent[4] + k.start, extent[4] + k.stop - 1,
    )


def write_region(image, content: np.ndarray, region: Region, extent: Sequence[int]) -> None:
    """Make `image` (any vtkImageData, e.g. a fresh vtkOrientedImageData) hold `content`, the K,J,I block of
    `region` of an array over `extent`, as unsigned char: a modifier labelmap that covers only what changed."""
    block = np.ascontiguousarray(content, dtype=np.uint8)
    if block.size == 0:
        raise ValueError("the region to write is empty")
    expected = tuple(s.stop - s.start for s in region)
    if block.shape != expected:
        raise ValueError(f"content has shape {block.shape}, the region {expected}")
    image.SetExtent(*region_extent(region, extent))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = block.ravel()


def inside_extent(image_to_world: np.ndarray, extent: Sequence[int], ras: Sequence[float]) -> bool:
    """Whether a RAS point lies within the voxels of an image (each voxel reaching half a voxel around its centre,
    as `Volume.contains`): `image_to_world` maps the image's IJK (VTK's, whose extent is `extent`) to that RAS."""
    if 0 in extent_shape(extent):
        return False
    ijk = np.linalg.solve(np.asarray(image_to_world, dtype=float), [*(float(v) for v in ras), 1.0])[:3]
    low = np.array(extent[0::2], dtype=float) - 0.5
    high = np.array(extent[1::2], dtype=float) + 0.5
    return bool(np.all(ijk >= low) and np.all(ijk <= high))
