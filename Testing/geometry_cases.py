"""Grid geometries the geometry, preprocessing and session tests share: RAS, LPS, flipped and permuted, oblique."""

from __future__ import annotations

import numpy as np


def rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by `angle` radians about RAS axis `axis`."""
    c, s = np.cos(angle), np.sin(angle)
    a, b = [x for x in range(3) if x != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


def affine(directions: np.ndarray, spacing, origin) -> np.ndarray:
    """4x4 IJK->RAS matrix from unit direction columns, spacing (mm) and origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(directions) * np.asarray(spacing, dtype=float)
    matrix[:3, 3] = origin
    return matrix


LPS = np.diag([-1.0, -1.0, 1.0])
PERMUTED_FLIPPED = np.array([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]])  # I -> -A, J -> +S, K -> -R
OBLIQUE = rotation(2, 0.5) @ rotation(0, -0.3) @ PERMUTED_FLIPPED
