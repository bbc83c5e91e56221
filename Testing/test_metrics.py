"""Dice against a brute-force count; NSD against DeepMind's surface-distance package (the implementation the
reference's evaluation calls) on real anisotropic labels and random shapes; the empty-mask conventions."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances, lookup_tables

from SAMMed3DLib.evaluation.metrics import dice, nsd, surfel_areas

SPACING = (5.0, 0.7, 0.5)  # K, J, I: thick slices, fine in-plane


def reference_nsd(prediction: np.ndarray, truth: np.ndarray, spacing, tolerance: float) -> float:
    distances = compute_surface_distances(truth.astype(bool), prediction.astype(bool), spacing)
    return compute_surface_dice_at_tolerance(distances, tolerance)


def blob(rng: np.random.Generator, shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    r = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return r + 0.3 * rng.random(shape) < 1.0


def test_surfel_areas_equal_the_reference_tables_on_an_anisotropic_grid():
    expected = lookup_tables.create_table_neighbour_code_to_surface_area(SPACING)
    np.testing.assert_allclose(surfel_areas(SPACING), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["lung1", "brain1", "breast1"])
def test_nsd_equals_the_reference_on_real_labels(pyradiomics_data, case):
    image = sitk.ReadImage(str(pyradiomics_data / f"{case}_label.nrrd"))
    truth = sitk.GetArrayFromImage(image) > 0
    spacing = image.GetSpacing()[::-1]  # K, J, I
    variants = {
        "dilated": ndimage.binary_dilation(truth, iterations=2),
        "eroded": ndimage.binary_erosion(truth, iterations=1),
        "shifted": np.roll(truth, 3, axis=2),
    }
    for name, prediction in variants.items():
        for tolerance in (1.0, 3.0, 8.0):  # 8 mm: the distance-transform path
            expected = reference_nsd(prediction, truth, spacing, tolerance)
            assert nsd(prediction, truth, spacing, tolerance) == pytest.approx(expected, abs=1e-6), (name, tolerance)
        assert dice(prediction, truth) == pytest.approx(
            2 * np.count_nonzero(prediction & truth) / (np.count_nonzero(prediction) + np.count_nonzero(truth))
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_and_dice_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 22, 26)
    truth = blob(rng, shape, (4, 11, 12), (3, 7, 9))
    prediction = blob(rng, shape, (4.5, 12, 14), (3.2, 6, 10))
    for tolerance in (1.0, 2.0, 3.0):
        expected = reference_nsd(prediction, truth, SPACING, tolerance)
        assert 0.05 < expected < 1.0
        assert nsd(prediction, truth, SPACING, tolerance) == pytest.approx(expected, abs=1e-6)
    p, t = set(map(tuple, np.argwhere(prediction))), set(map(tuple, np.argwhere(truth)))  # brute-force Dice
    assert dice(prediction, truth) == pytest.approx(2 * len(p & t) / (len(p) + len(t)), abs=1e-12)


def test_shift_along_a_thin_axis_is_within_1mm_but_along_a_thick_axis_is_not():
    box = np.zeros((10, 20, 20), bool)
    box[3:7, 5:15, 5:15] = True
    assert nsd(box, box, SPACING) == 1.0 and dice(box, box) == 1.0
    assert nsd(np.roll(box, 1, axis=2), box, SPACING) == pytest.approx(1.0)  # 0.5 mm away
    shifted = np.roll(box, 1, axis=0)  # 5 mm away: only the side walls still coincide
    assert nsd(shifted, box, SPACING) == pytest.approx(reference_nsd(shifted, box, SPACING, 1.0), abs=1e-6)
    assert nsd(shifted, box, SPACING) < 0.9
    assert dice(shifted, box) == pytest.approx(0.75)  # 3 of 4 slices overlap


def test_masks_touching_the_image_edge_and_a_large_volume_stay_exact_and_fast(pyradiomics_data):
    truth = np.ones((4, 6, 6), bool)
    prediction = truth.copy()
    prediction[:, :, 5] = False
    assert nsd(prediction, truth, (1.0, 1.0, 1.0)) == pytest.approx(reference_nsd(prediction, truth, (1, 1, 1), 1.0))
    image = sitk.ReadImage(str(pyradiomics_data / "lung2_image.nrrd"))  # 512 x 512 x 61
    body = sitk.GetArrayFromImage(image) > -300
    start = time.perf_counter()
    value = nsd(ndimage.binary_dilation(body), body, image.GetSpacing()[::-1])
    assert time.perf_counter() - start < 5.0
    assert 0.5 < value <= 1.0


def test_empty_mask_conventions():
    empty, some = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    some[1, 1, 1] = 1
    assert math.isnan(dice(empty, empty)) and math.isnan(nsd(empty, empty, (1, 1, 1)))
    assert dice(some, empty) == 0.0 and nsd(some, empty, (1, 1, 1)) == 0.0
    assert dice(empty, some) == 0.0 and nsd(empty, some, (1, 1, 1)) == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differs"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        nsd(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))
