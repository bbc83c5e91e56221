"""Synthetic scenes with a known answer: an L-shaped slab and a ball on an anisotropic grid, meant to be placed under
oblique matrices (the Slicer self-tests and their pytest twins), and a bright box in an MR-like volume."""

from __future__ import annotations

from typing import Tuple

import numpy as np

SPACING = np.array([0.9, 0.8, 2.5])  # I, J, K mm
SHAPE = (30, 90, 80)  # K, J, I


def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 homogeneous rotation about RAS axis `axis` (0 R, 1 A, 2 S)."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(4)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def letter_and_ball() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int16 voxels, mask of the L, mask of the ball), each K,J,I of `SHAPE`."""
    k, j, i = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    slab = (k >= 6) & (k < 24)
    letter_l = slab & (((j >= 8) & (j < 54) & (i >= 8) & (i < 26)) | ((j >= 36) & (j < 54) & (i >= 8) & (i < 46)))
    ball = ((k - 15) * SPACING[2]) ** 2 + ((j - 72) * SPACING[1]) ** 2 + ((i - 62) * SPACING[0]) ** 2 <= 13.0**2
    voxels = np.random.default_rng(0).normal(0, 20, SHAPE) + 600 * (letter_l | ball)
    return voxels.astype(np.int16), letter_l, ball


def bright_box():
    """(float32 K,J,I voxels, IJK->RAS matrix): a bright asymmetric box in an MR-like volume at 1 x 1 x 2 mm."""
    rng = np.random.default_rng(3)
    array = rng.normal(100, 10, (48, 96, 96)).astype(np.float32)
    array[14:30, 30:70, 25:60] += 400
    return array, np.diag([1.0, 1.0, 2.0, 1.0])
