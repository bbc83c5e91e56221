"""Resampling into a patch frame (against SimpleITK), CT clamp, z-normalisation and the CT/MR decision."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import LPS, OBLIQUE, PERMUTED_FLIPPED, affine

from SAMMed3DLib.interactive.geometry import Volume, patch_frame
from SAMMed3DLib.interactive.preprocess import detect_modality, normalise, prepare_patch
from SAMMed3DLib.interactive.resample import resample_into


def sitk_resample(volume: Volume, frame, interpolator) -> np.ndarray:
    """An independent resampling of the frame's region: SimpleITK on the volume's LPS image, back to patch order."""
    reference = sitk.Image([frame.size] * 3, sitk.sitkFloat64)
    patch_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ frame.patch_to_ras
    spacing = np.linalg.norm(patch_to_lps[:3, :3], axis=0)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection((patch_to_lps[:3, :3] / spacing).flatten().tolist())
    reference.SetOrigin(patch_to_lps[:3, 3].tolist())
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat64)
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # (p2,p1,p0) -> patch order


CASES = {
    "ras": (np.eye(3), [1.0, 1.0, 1.0]),
    "lps": (LPS, [0.8, 0.8, 1.2]),
    "permuted-flipped": (PERMUTED_FLIPPED, [1.1, 0.9, 2.0]),
    "oblique": (OBLIQUE, [0.7, 1.3, 2.5]),
    "anisotropic": (LPS, [0.5, 0.5, 5.0]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64])
def test_linear_resampling_matches_simpleitk(case, dtype):
    directions, spacing = CASES[case]
    rng = np.random.default_rng(3)
    array = rng.integers(0, 200, size=(23, 41, 37)).astype(dtype)
    volume = Volume(array, affine(directions, spacing, [3.0, -7.0, 11.0]))
    # A frame around a point near a corner, so that part of it lies outside the volume (zero padding).
    center = volume.ijk_to_ras_points([[30.3, 5.7, 20.1]])[0]
    frame = patch_frame(volume, center, size=48)
    patch = resample_into(volume, frame, "linear")
    assert patch.dtype == np.float32 and patch.shape == (48, 48, 48)
    expected = sitk_resample(volume, frame, sitk.sitkLinear)
    assert 0.05 < (expected == 0).mean() < 0.99  # part inside, part padding
    np.testing.assert_allclose(patch, expected, atol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_nearest_resampling_matches_simpleitk_and_keeps_labels(case):
    directions, spacing = CASES[case]
    labels = np.random.default_rng(4).integers(0, 5, size=(19, 33, 29)).astype(np.uint8)
    volume = Volume(labels, affine(directions, spacing, [0.0, 0.0, 0.0]))
    frame = patch_frame(volume, volume.ijk_to_ras_points([[14.23, 16.61, 9.37]])[0], size=40)
    patch = resample_into(volume, frame, "nearest")
    assert patch.dtype == np.uint8
    expected = sitk_resample(volume, frame, sitk.sitkNearestNeighbor)
    # Rounding ties (a sample exactly half-way between voxels) may go either way; there are none here.
    np.testing.assert_array_equal(patch, expected)
    assert set(np.unique(patch)) <= set(range(5))


def test_frame_outside_the_volume_is_all_zero_and_unknown_interpolation_fails():
    volume = Volume(np.ones((4, 4, 4), np.int16), np.eye(4))
    frame = patch_frame(volume, [500.0, 0.0, 0.0], size=8)
    assert not resample_into(volume, frame).any()
    assert resample_into(volume, frame, "nearest").dtype == np.int16
    with pytest.raises(ValueError, match="interpolation"):
        resample_into(volume, frame, "cubic")


def test_normalise_ct_clamps_then_z_normalises_over_positive_voxels():
    patch = np.array([-3000.0, -1000.0, 0.0, 0.0, 200.0, 400.0, 2500.0]).reshape(1, 1, 7)
    out = normalise(patch, "ct")
    clamped = np.array([-1000.0, -1000.0, 0.0, 0.0, 200.0, 400.0, 1000.0])
    positive = clamped[clamped > 0]
    expected = (clamped - positive.mean()) / positive.std(ddof=1)
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)
    assert out.dtype == np.float32
    # MR: no clamp.
    mr = normalise(patch, "mr").ravel()
    positive = patch.ravel()[patch.ravel() > 0]
    np.testing.assert_allclose(mr, (patch.ravel() - positive.mean()) / positive.std(ddof=1), rtol=1e-6)


def test_normalise_without_spread_only_shifts():
    np.testing.assert_array_equal(normalise(np.zeros((2, 2, 2)), "mr"), np.zeros((2, 2, 2)))
    np.testing.assert_allclose(normalise(np.array([[[0.0, 5.0, 5.0]]]), "mr").ravel(), [-5.0, 0.0, 0.0])


def test_prepare_patch_is_resampling_then_normalising():
    rng = np.random.default_rng(5)
    volume = Volume(rng.integers(-1100, 1500, size=(20, 30, 30)).astype(np.int16), affine(OBLIQUE, [1.0] * 3, [0] * 3))
    frame = patch_frame(volume, volume.ijk_to_ras_points([[15, 15, 10]])[0], size=32)
    np.testing.assert_array_equal(prepare_patch(volume, frame, "ct"), normalise(resample_into(volume, frame), "ct"))


def test_ct_or_mr_from_the_data(pyradiomics_data):
    assert detect_modality(Volume.read(pyradiomics_data / "lung1_image.nrrd")) == "ct"
    assert detect_modality(Volume.read(pyradiomics_data / "lung2_image.nrrd")) == "ct"
    assert detect_modality(Volume.read(pyradiomics_data / "brain1_image.nrrd")) == "mr"
    assert detect_modality(Volume.read(pyradiomics_data / "brain2_image.nrrd")) == "mr"
    z_scored_mr = np.random.default_rng(6).normal(size=(20, 20, 20)).astype(np.float32)
    assert detect_modality(Volume(z_scored_mr, np.eye(4))) == "mr"
