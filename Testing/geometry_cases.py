"""Grid geometries the geometry, preprocessing and session tests share: RAS, LPS, flipped and permuted, oblique."""

from __future__ import annotations

import numpy as np

from SAMMed3DLib.testing.scenes import rotation


def affine(directions: np.ndarray, spacing, origin) -> np.ndarray:
    """4x4 IJK->RAS matrix from unit direction columns, spacing (mm) and origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(directions) * np.asarray(spacing, dtype=float)
    matrix[:3, 3] = origin
    return matrix


LPS = np.diag([-1.0, -1.0, 1.0])
PERMUTED_FLIPPED = np.array([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]])  # I -> -A, J -> +S, K -> -R
OBLIQUE = rotation(2, np.rad2deg(0.5))[:3, :3] @ rotation(0, np.rad2deg(-0.3))[:3, :3] @ PERMUTED_FLIPPED
