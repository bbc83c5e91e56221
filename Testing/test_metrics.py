"""Dice and NSD against an independent brute-force computation (explicit neighbour tests and all-pairs distances in
mm), on an anisotropic grid, plus the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from SAMMed3DLib.metrics import dice, nsd

SPACING = (5.0, 0.7, 0.5)  # K, J, I: thick slices, fine in-plane


def brute_border(mask: np.ndarray) -> np.ndarray:
    """Indices of foreground voxels with one of the 6 face neighbours outside the mask or the image."""
    out = []
    for index in np.argwhere(mask):
        for axis in range(3):
            for step in (-1, 1):
                n = index.copy()
                n[axis] += step
                if n[axis] < 0 or n[axis] >= mask.shape[axis] or not mask[tuple(n)]:
                    out.append(index)
                    break
            else:
                continue
            break
    return np.array(out)


def brute_nsd(a: np.ndarray, b: np.ndarray, spacing, tolerance: float) -> float:
    ba, bb = brute_border(a) * np.array(spacing), brute_border(b) * np.array(spacing)
    d = cdist(ba, bb)
    return ((d.min(axis=1) <= tolerance).sum() + (d.min(axis=0) <= tolerance).sum()) / (len(ba) + len(bb))


def blob(rng: np.random.Generator, shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    r = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return r + 0.3 * rng.random(shape) < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.0])
def test_nsd_and_dice_match_a_brute_force_computation(seed, tolerance):
    rng = np.random.default_rng(seed)
    shape = (9, 22, 26)
    truth = blob(rng, shape, (4, 11, 12), (3, 7, 9))
    prediction = blob(rng, shape, (4.5, 12, 14), (3.2, 6, 10))
    expected = brute_nsd(prediction, truth, SPACING, tolerance)
    assert nsd(prediction, truth, SPACING, tolerance) == pytest.approx(expected, abs=1e-12)
    assert 0.05 < expected < 1.0  # a case where the tolerance matters
    p, t = set(map(tuple, np.argwhere(prediction))), set(map(tuple, np.argwhere(truth)))
    assert dice(prediction, truth) == pytest.approx(2 * len(p & t) / (len(p) + len(t)), abs=1e-12)


def test_shift_along_a_thin_axis_is_within_1mm_but_along_a_thick_axis_is_not():
    box = np.zeros((10, 20, 20), bool)
    box[3:7, 5:15, 5:15] = True
    assert nsd(box, box, SPACING) == 1.0 and dice(box, box) == 1.0
    assert nsd(np.roll(box, 1, axis=2), box, SPACING) == 1.0  # 0.5 mm away
    shifted = np.roll(box, 1, axis=0)  # 5 mm away: only the side walls still coincide
    value = nsd(shifted, box, SPACING)
    assert value == pytest.approx(brute_nsd(shifted, box, SPACING, 1.0))
    assert value < 0.8
    assert dice(shifted, box) == pytest.approx(0.75)  # 3 of 4 slices overlap


def test_masks_touching_the_image_edge_have_a_border_there():
    truth = np.ones((4, 6, 6), bool)
    prediction = truth.copy()
    prediction[:, :, 5] = False
    assert nsd(prediction, truth, (1.0, 1.0, 1.0)) == pytest.approx(brute_nsd(prediction, truth, (1, 1, 1), 1.0))


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
