"""Volume geometry (files in RAS and LPS, validation), the canonical patch frame and paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import OBLIQUE, PERMUTED_FLIPPED, affine

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.geometry import Volume, canonical_axes, frame_region, patch_frame
from SAMMed3DLib.interactive.resample import paste_logits, paste_mask


def test_volume_rejects_bad_input():
    good = np.zeros((4, 5, 6), np.int16)
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((4, 5)), np.eye(4))
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 3, 4, 5)), np.eye(4))
    with pytest.raises(ValueError, match="empty"):
        Volume(np.zeros((0, 3, 4)), np.eye(4))
    with pytest.raises(ValueError, match="dtype"):
        Volume(np.zeros((2, 3, 4), complex), np.eye(4))
    with pytest.raises(ValueError, match="dtype"):
        Volume(np.zeros((2, 3, 4), bool), np.eye(4))
    for bad in (np.nan, np.inf):
        array = np.zeros((2, 3, 4), np.float32)
        array[1, 1, 1] = bad
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            Volume(array, np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        Volume(good, np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="affine"):
        Volume(good, np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]))
    with pytest.raises(ValueError, match="4x4"):
        Volume(good, np.eye(3))


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_files_round_trip_in_ras(tmp_path, suffix):
    """SimpleITK writes LPS; reading back gives the same RAS matrix and voxels, for an oblique, flipped grid."""
    matrix = affine(OBLIQUE, [0.7, 1.3, 2.5], [12.0, -30.0, 45.0])
    array = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(Volume(array, matrix).to_sitk(), str(path))
    volume = Volume.read(path)
    np.testing.assert_allclose(volume.ijk_to_ras, matrix, atol=1e-5)
    np.testing.assert_array_equal(volume.array, array)
    # The same point seen by SimpleITK (LPS) and by the volume (RAS).
    lps = sitk.ReadImage(str(path)).TransformContinuousIndexToPhysicalPoint((1.5, 2.0, 3.25))
    ras = volume.ijk_to_ras_points([[1.5, 2.0, 3.25]])[0]
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-5)


@pytest.mark.parametrize("space, sign", [("right-anterior-superior", 1.0), ("left-posterior-superior", -1.0)])
def test_nrrd_header_in_ras_or_lps(tmp_path, space, sign):
    """A hand-written NRRD in either space: the matrix is the header's, converted to RAS."""
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # K, J, I
    header = (
        "NRRD0004\ntype: short\ndimension: 3\n"
        f"space: {space}\nsizes: 4 3 2\n"
        "space directions: (0,0,-2) (1.5,0,0) (0,0.5,0)\n"
        "kinds: domain domain domain\nendian: little\nencoding: raw\n"
        "space origin: (10,20,30)\n\n"
    )
    path = tmp_path / "header.nrrd"
    path.write_bytes(header.encode() + data.astype("<i2").tobytes())
    volume = Volume.read(path)
    flip = np.diag([sign, sign, 1.0])
    expected = np.eye(4)
    expected[:3, :3] = flip @ np.array([[0, 1.5, 0], [0, 0, 0.5], [-2, 0, 0]])
    expected[:3, 3] = flip @ np.array([10, 20, 30])
    np.testing.assert_allclose(volume.ijk_to_ras, expected, atol=1e-6)
    np.testing.assert_array_equal(volume.array, data)


def test_dicom_series_folder(tmp_path):
    """A folder of single-slice DICOM files written by SimpleITK reads back as one volume."""
    array = np.random.default_rng(1).integers(0, 1000, size=(4, 8, 9)).astype(np.int16)
    volume = Volume(array, affine(np.diag([-1.0, -1.0, 1.0]), [0.8, 0.8, 2.0], [5.0, 6.0, -7.0]))
    image = volume.to_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0008|0060", "CT"), ("0020|0032", "\\".join(str(x) for x in position)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k)), ("0018|0050", "2.0"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k}.dcm"))
        writer.Execute(slice_image)
    read = Volume.read(tmp_path)
    np.testing.assert_array_equal(read.array, array)
    np.testing.assert_allclose(read.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(SAMMed3DError, match="no such file"):
        Volume.read(tmp_path / "missing.nrrd")
    (tmp_path / "broken.nrrd").write_text("not an image", encoding="utf-8")
    with pytest.raises(SAMMed3DError, match="cannot read"):
        Volume.read(tmp_path / "broken.nrrd")
    sitk.WriteImage(sitk.Image([5, 6], sitk.sitkUInt8), str(tmp_path / "flat.nrrd"))
    with pytest.raises(SAMMed3DError, match="3D"):
        Volume.read(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.Image([5, 6, 7], sitk.sitkVectorFloat32, 3), str(tmp_path / "vector.nrrd"))
    with pytest.raises(SAMMed3DError, match="one value per voxel"):
        Volume.read(tmp_path / "vector.nrrd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAMMed3DError, match="0 DICOM series"):
        Volume.read(tmp_path / "empty")


@pytest.mark.parametrize("directions", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), PERMUTED_FLIPPED, OBLIQUE])
def test_patch_frame_axes_point_to_ras(directions):
    """Patch axes 0,1,2 are the image's own axes (up to sign), each the one closest to R, A, S, in that order."""
    volume = Volume(np.zeros((3, 4, 5)), affine(directions, [0.5, 0.9, 3.0], [1.0, 2.0, 3.0]))
    center = np.array([4.0, -5.0, 6.0])
    frame = patch_frame(volume, center)
    columns = frame.patch_to_ras[:3, :3] / 1.5
    axes, _ = canonical_axes(volume.directions)
    for r in range(3):
        assert columns[r, r] > 0 and abs(columns[r, r]) == pytest.approx(np.abs(columns[r]).max())
        np.testing.assert_allclose(np.abs(columns[:, r]), np.abs(volume.directions[:, axes[r]]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(columns, axis=0), 1.0)
    np.testing.assert_allclose(frame.center_ras, center, atol=1e-9)
    np.testing.assert_allclose(frame.to_patch(center), [[63.5, 63.5, 63.5]], atol=1e-9)
    assert sorted(axes) == [0, 1, 2]


def test_frame_region_holds_exactly_the_voxels_inside_the_cube():
    volume = Volume(np.zeros((40, 50, 60)), affine(PERMUTED_FLIPPED, [2.0, 3.0, 4.0], [0.0, 0.0, 0.0]))
    frame = patch_frame(volume, volume.ijk_to_ras_points([[10.2, 30.7, 5.1]])[0], size=16)
    region = frame_region(volume, frame)
    k, j, i = np.indices(volume.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    patch = frame.to_patch(volume.ijk_to_ras_points(ijk))
    inside = np.all((patch >= -0.5) & (patch <= 15.5), axis=1).reshape(volume.array.shape)
    expected = np.zeros_like(inside)
    expected[region] = True
    np.testing.assert_array_equal(inside, expected)


@pytest.mark.parametrize("directions", [np.eye(3), PERMUTED_FLIPPED, OBLIQUE])
def test_paste_equals_trilinear_upsampling_on_the_patch_grid(directions):
    """On a volume whose grid is the patch grid (any axis order and flips), paste-back is exactly the reference's
    trilinear upsampling (align_corners=False) of the 32^3 logits, transposed to the volume's axes."""
    torch = pytest.importorskip("torch")
    size = 32  # a small patch: logits 8^3
    logits = np.random.default_rng(2).normal(size=(8, 8, 8)).astype(np.float32)
    frame = patch_frame(Volume(np.zeros((2, 2, 2)), affine(directions, [1.5] * 3, [0, 0, 0])), [3.0, 4.0, 5.0], size)
    # A volume on the frame's grid whose I,J,K are patch axes 2,0,1 with patch axis 0 reversed.
    origin = frame.to_ras([[size - 1, 0, 0]])[0]
    columns = frame.patch_to_ras[:3, :3]
    ijk_to_ras = affine(np.stack([columns[:, 2], -columns[:, 0], columns[:, 1]], axis=1), [1.0] * 3, origin)
    volume = Volume(np.zeros((size, size, size), np.float32), ijk_to_ras)
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None, None], scale_factor=4, mode="trilinear", align_corners=False
    )[0, 0].numpy()
    expected = upsampled[::-1].transpose(1, 0, 2)  # patch (p0,p1,p2) -> volume array (K=p1, J=-p0, I=p2)
    region, values = paste_logits(volume, frame, logits)
    assert region == (slice(0, size),) * 3
    np.testing.assert_allclose(values, expected, atol=1e-5)
    mask = np.zeros(volume.array.shape, np.uint8)
    assert paste_mask(volume, frame, logits, mask) == region
    np.testing.assert_array_equal(mask, expected > 0)


def test_paste_on_a_fine_anisotropic_grid_is_linear_in_physical_space():
    """Logits that are a linear function of RAS position paste back as that same function wherever the volume's
    voxel lies within the outer logit centres (linear interpolation reproduces linear functions exactly)."""
    volume = Volume(np.zeros((30, 300, 280), np.int16), affine(OBLIQUE, [0.5, 0.5, 5.0], [-60.0, 10.0, -40.0]))
    frame = patch_frame(volume, volume.ijk_to_ras_points([[140, 150, 15]])[0])
    gradient = np.array([0.3, -0.2, 0.1])
    coarse = frame.logits_frame()
    q = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    logits = (coarse.to_ras(q) @ gradient).reshape(32, 32, 32).astype(np.float32)
    region, values = paste_logits(volume, frame, logits)
    k, j, i = np.indices(values.shape)
    ijk = np.stack([i.ravel() + region[2].start, j.ravel() + region[1].start, k.ravel() + region[0].start], axis=1)
    ras = volume.ijk_to_ras_points(ijk)
    inner = np.all((coarse.to_patch(ras) >= 0) & (coarse.to_patch(ras) <= 31), axis=1)
    assert inner.mean() > 0.8
    np.testing.assert_allclose(values.ravel()[inner], (ras @ gradient)[inner], atol=1e-3)


@pytest.mark.parametrize("blob_at", ["centre", "corner", None])
def test_paste_mask_thresholds_paste_logits_and_overwrites_only_its_region(blob_at):
    """Mostly negative logits with a small positive blob (in the middle, at the volume's corner, or none): the mask,
    which skips voxels whose interpolation corners are all negative, still equals paste_logits > 0 everywhere."""
    volume = Volume(np.zeros((40, 300, 280), np.int16), affine(OBLIQUE, [0.5, 0.7, 3.0], [-60.0, 10.0, -40.0]))
    frame = patch_frame(volume, volume.ijk_to_ras_points([[140, 150, 20]])[0])
    logits = np.full((32, 32, 32), -3.0, np.float32)
    if blob_at is not None:
        voxel = [[140, 150, 20]] if blob_at == "centre" else [[0, 0, 0]]
        coarse = frame.logits_frame().to_patch(volume.ijk_to_ras_points(voxel))[0]
        blob = np.clip(np.round(coarse), 0, 31).astype(int)
        index = tuple(slice(max(c - 1, 0), c + 2) for c in blob)
        logits[index] = np.random.default_rng(7).uniform(-1, 4, size=logits[index].shape)
    region, values = paste_logits(volume, frame, logits)
    mask = np.ones(volume.array.shape, np.uint8)
    assert paste_mask(volume, frame, logits, mask) == region
    np.testing.assert_array_equal(mask[region], values > 0)
    outside = np.ones(volume.array.shape, bool)
    outside[region] = False
    assert mask[outside].all() and outside.any()
    assert (values > 0).any() == (blob_at is not None)
