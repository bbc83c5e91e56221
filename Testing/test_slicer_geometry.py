"""Index bookkeeping between VTK images (as the Segment Editor hands them) and K,J,I arrays, with real VTK."""

from __future__ import annotations

import numpy as np
import pytest
import vtk

from SAMMed3DLib.slicer.geometry import (
    array_ijk_to_ras,
    extent_shape,
    image_array,
    inside_extent,
    labelmap_in_extent,
    region_extent,
    write_region,
)

EXTENT = (3, 12, -2, 4, 5, 8)  # i, j, k ranges that do not start at 0, as a segment's labelmap often has


def _oblique_image() -> tuple[vtk.vtkImageData, np.ndarray]:
    """A vtkImageData with an oblique direction, anisotropic spacing and a shifted extent, and its
    image-to-world matrix (what vtkOrientedImageData.GetImageToWorldMatrix gives in Slicer)."""
    angle = np.deg2rad(25)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    spacing, origin = np.array([0.7, 1.1, 3.0]), np.array([-20.0, 14.0, 33.0])
    image = vtk.vtkImageData()
    image.SetExtent(*EXTENT)
    image.SetSpacing(*spacing)
    image.SetOrigin(*origin)
    image.SetDirectionMatrix(*direction.ravel())
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    image.GetPointData().GetScalars().Fill(0)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing
    matrix[:3, 3] = origin
    return image, matrix


def test_array_index_maps_to_the_same_point_as_vtk():
    image, image_to_world = _oblique_image()
    ijk_to_ras = array_ijk_to_ras(image_to_world, EXTENT)
    for i, j, k in [(3, -2, 5), (12, 4, 8), (7, 0, 6)]:
        expected = [0.0, 0.0, 0.0]
        image.TransformIndexToPhysicalPoint(i, j, k, expected)
        array_index = (i - EXTENT[0], j - EXTENT[2], k - EXTENT[4])
        np.testing.assert_allclose((ijk_to_ras @ [*array_index, 1.0])[:3], expected, atol=1e-9)


def test_image_array_is_kji_over_the_extent():
    image, _ = _oblique_image()
    image.SetScalarComponentFromDouble(10, 3, 7, 0, 42)
    array = image_array(image)
    assert array.shape == extent_shape(EXTENT) == (4, 7, 10)
    assert array[7 - 5, 3 + 2, 10 - 3] == 42
    assert array.sum() == 42


def test_labelmap_in_extent_places_a_partial_overlap():
    label = vtk.vtkImageData()
    label.SetExtent(10, 14, 0, 9, 7, 7)  # sticks out of EXTENT along i and j
    label.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    label.GetPointData().GetScalars().Fill(0)
    label.SetScalarComponentFromDouble(11, 1, 7, 0, 3)  # inside EXTENT
    label.SetScalarComponentFromDouble(14, 1, 7, 0, 1)  # outside EXTENT (i > 12)
    mask = labelmap_in_extent(label, EXTENT)
    assert mask.shape == extent_shape(EXTENT)
    assert mask.dtype == np.uint8
    assert list(zip(*np.nonzero(mask))) == [(7 - 5, 1 + 2, 11 - 3)]
    assert mask[2, 3, 8] == 1


def test_labelmap_in_extent_without_overlap_or_image_is_empty():
    label = vtk.vtkImageData()
    label.SetExtent(50, 51, 0, 1, 0, 1)
    label.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    label.GetPointData().GetScalars().Fill(1)
    assert labelmap_in_extent(label, EXTENT).sum() == 0
    assert labelmap_in_extent(None, EXTENT).shape == (4, 7, 10)


def test_write_region_covers_only_the_changed_box_and_round_trips():
    rng = np.random.default_rng(0)
    mask = (rng.random(extent_shape(EXTENT)) > 0.5).astype(np.uint8)
    region = (slice(1, 3), slice(2, 6), slice(4, 9))
    image = vtk.vtkImageData()
    write_region(image, mask[region], region, EXTENT)
    assert image.GetExtent() == region_extent(region, EXTENT) == (7, 11, 0, 3, 6, 7)
    assert image.GetScalarType() == vtk.VTK_UNSIGNED_CHAR
    np.testing.assert_array_equal(image_array(image), mask[region])
    # Voxel by voxel through VTK's own indexing, in the full index space.
    for k, j, i in [(1, 2, 4), (2, 5, 8), (1, 3, 6)]:
        value = image.GetScalarComponentAsDouble(i + EXTENT[0], j + EXTENT[2], k + EXTENT[4], 0)
        assert value == mask[k, j, i]
    # Reading it back into the full extent gives the region and zeros elsewhere.
    full = labelmap_in_extent(image, EXTENT)
    np.testing.assert_array_equal(full[region], mask[region])
    assert full.sum() == mask[region].sum()


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="empty"):
        write_region(vtk.vtkImageData(), np.zeros((0, 2, 2)), (slice(1, 1), slice(0, 2), slice(0, 2)), (0, 1) * 3)
    with pytest.raises(ValueError, match="shape"):
        write_region(vtk.vtkImageData(), np.zeros((2, 2, 2)), (slice(0, 1), slice(0, 2), slice(0, 2)), (0, 1) * 3)
    with pytest.raises(ValueError, match="no voxels"):
        image_array(vtk.vtkImageData())


def test_inside_extent_reaches_half_a_voxel_around_the_outer_voxels():
    _, image_to_world = _oblique_image()

    def world(i, j, k):
        return (image_to_world @ [i, j, k, 1.0])[:3]

    assert inside_extent(image_to_world, EXTENT, world(3, -2, 5))
    assert inside_extent(image_to_world, EXTENT, world(12, 4, 8))
    assert inside_extent(image_to_world, EXTENT, world(12.49, 4.49, 8.49))
    assert not inside_extent(image_to_world, EXTENT, world(12.51, 4, 8))
    assert not inside_extent(image_to_world, EXTENT, world(3, -2.51, 5))
    assert not inside_extent(image_to_world, (0, -1, 0, 5, 0, 5), world(0, 0, 0))  # an empty image holds nothing
