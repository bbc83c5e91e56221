"""Real label maps and given predictions for the protocol equivalence tests (test_protocols.py), shared with the
script that ran the reference code on them once (Testing/data/README.md), so both see the same arrays.

Objects: pyradiomics' lesions (CT and MR) and structures of the AAL atlas on the MNI template (Debian's
mricron-data), each in a box around it ("box") and in the same box cut through its middle, so that the object
touches the array's edge ("cut"). Predictions are simple deterministic functions of the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

PYRADIOMICS_LESIONS = ("brain1", "brain2", "breast1", "lung1", "lung2")
AAL_STRUCTURES = (1, 31, 37, 41, 71, 73, 75, 77, 110)  # precentral, anterior cingulum, hippocampus, ... vermis
MARGIN = 6  # voxels of background around an object's box
PAPER_SEQUENCE = ("empty", "shifted", "dilated", "eroded", "mixed")  # what the rules see before clicks 1..5
PAPER_SEEDS = (2023, 7)  # validation.py's default seed, and another
INFER_UTILS_SEED = 233  # utils/infer_utils.py's default seed
ANISOTROPIC_MM = (2.5, 0.9, 1.2)  # a made-up spacing (array axis order) for the metrics on the 1 mm atlas

Object = Tuple[str, np.ndarray, Tuple[float, float, float]]  # name, truth (bool, K,J,I), spacing in mm (K,J,I)


def _crops(name: str, label: np.ndarray, spacing) -> Iterator[Object]:
    found = np.argwhere(label)
    low = np.maximum(found.min(axis=0) - MARGIN, 0)
    high = np.minimum(found.max(axis=0) + 1 + MARGIN, label.shape)
    box = label[tuple(slice(a, b) for a, b in zip(low, high))]
    yield f"{name}/box", np.ascontiguousarray(box), spacing
    middle = int(np.argwhere(box)[:, 0].mean())
    yield f"{name}/cut", np.ascontiguousarray(box[middle:]), spacing


def objects(pyradiomics: Path, mricron: Path) -> Iterator[Object]:
    """The objects in a fixed order; spacing in the arrays' axis order."""
    for lesion in PYRADIOMICS_LESIONS:
        image = sitk.ReadImage(str(pyradiomics / f"{lesion}_label.nrrd"))
        yield from _crops(f"pyradiomics:{lesion}", sitk.GetArrayFromImage(image) > 0, image.GetSpacing()[::-1])
    atlas = sitk.ReadImage(str(mricron / "aal.nii.gz"))
    values = sitk.GetArrayFromImage(atlas)
    for structure in AAL_STRUCTURES:
        yield from _crops(f"aal:{structure}", values == structure, atlas.GetSpacing()[::-1])


def _ball(shape, centre, radius: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def predictions(truth: np.ndarray) -> Dict[str, np.ndarray]:
    """Given predictions: none, the truth shifted, dilated twice, eroded once, with a hole and a stray ball, and
    perfect."""
    found = np.argwhere(truth)
    low, high = found.min(axis=0), found.max(axis=0)
    centre = (low + high) // 2
    radius = max(1.0, float((high - low).min()) / 4)
    stray = np.minimum(centre + [0, 0, (high[2] - low[2]) // 2 + 2], np.array(truth.shape) - 1)
    return {
        "empty": np.zeros_like(truth),
        "shifted": np.roll(truth, (1, -2, 2), axis=(0, 1, 2)),
        "dilated": ndimage.binary_dilation(truth, iterations=2),
        "eroded": ndimage.binary_erosion(truth),
        "mixed": (truth & ~_ball(truth.shape, centre, radius)) | _ball(truth.shape, stray, radius),
        "perfect": truth.copy(),
    }
