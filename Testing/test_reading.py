"""Reading volumes: a truncated or corrupt file is refused naming it (SimpleITK alone reads a cut-off NIfTI as a
plausible image with zeros and a zero voxel size as 1 mm), and ITK's own explanation is kept whole."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.geometry import Volume


def ct_like(path: Path, compress: bool = True) -> Path:
    """A 60 x 50 x 40 int16 volume (0.8 x 0.9 x 2 mm) of varied values, written by SimpleITK."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (40, 50, 60)).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.0))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def refused(path: Path, *expected: str) -> str:
    with pytest.raises(SAMMed3DError) as raised:
        Volume.read(path)
    message = str(raised.value)
    assert message.startswith(f"cannot read {path}: ") and "\n" not in message, message
    for text in expected:
        assert text in message, message
    return message


def test_half_of_a_nifti_gz_is_refused(tmp_path):
    whole = ct_like(tmp_path / "ct.nii.gz").read_bytes()
    half = tmp_path / "half.nii.gz"
    half.write_bytes(whole[: len(whole) // 2])
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(half))) == 0).mean() > 0.4  # SimpleITK: zeros, no word
    refused(half, "truncated")


def test_an_intact_gzip_holding_a_cut_off_nifti_is_refused(tmp_path):
    data = gzip.decompress(ct_like(tmp_path / "ct.nii.gz").read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(data[: len(data) // 2]))
    refused(cut, "truncated: its header promises 120000 voxels (240000 bytes of data), it holds 119824 bytes")
    plain = tmp_path / "cut.nii"
    plain.write_bytes(data[: len(data) - 100])
    refused(plain, "it holds 239900 bytes")
    assert Volume.read(tmp_path / "ct.nii.gz").array.shape == (40, 50, 60)  # the whole file is fine


def test_corrupt_compressed_data_are_refused(tmp_path, pyradiomics_data):
    """A damaged block in the middle of a real CT's .nii.gz: SimpleITK reads half of the voxels wrong, silently."""
    ct = sitk.ReadImage(str(pyradiomics_data / "lung1_image.nrrd"))
    crop = sitk.RegionOfInterest(ct, (128, 128, 24), (160, 300, 20))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(crop, str(path), useCompression=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(bytes(data))
    wrong = sitk.GetArrayFromImage(sitk.ReadImage(str(corrupt))) != sitk.GetArrayFromImage(crop)
    assert wrong.mean() > 0.3
    refused(corrupt, "corrupt")


@pytest.mark.parametrize("spacing", [0.0, -0.8])
def test_zero_or_negative_nifti_voxel_size_is_an_error_not_1_mm(tmp_path, spacing):
    """A header written by nibabel (qform), then its pixdim[1] set as a broken writer leaves it (nibabel itself
    refuses to write one); SimpleITK would read 1 mm, or flip the axis."""
    nibabel = pytest.importorskip("nibabel")
    image = nibabel.Nifti1Image(np.zeros((30, 20, 10), np.int16), np.diag([0.8, 0.9, 2.0, 1.0]))
    image.set_qform(image.affine, code=1)
    data = bytearray(image.to_bytes())
    data[80:84] = struct.pack("<f", spacing)  # pixdim[1]
    path = tmp_path / "zero.nii.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    refused(path, f"zero or negative voxel size (pixdim {spacing:g}, 0.9, 2 mm)")


def test_truncated_metaimage_is_refused_as_truncated(tmp_path):
    """ITK reports a cut-off .mha as "No such file or directory"."""
    for name, compress in (("raw.mha", False), ("zipped.mha", True)):
        whole = ct_like(tmp_path / name, compress).read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) * 3 // 4])
        message = refused(tmp_path / name, "truncated")
        assert "No such file" not in message


def test_truncated_nrrd_keeps_teems_explanation(tmp_path):
    whole = ct_like(tmp_path / "ct.nrrd", compress=False).read_bytes()
    (tmp_path / "ct.nrrd").write_bytes(whole[: len(whole) // 2])
    refused(tmp_path / "ct.nrrd", "fread got only", "of expected")


def test_itk_multi_line_error_is_kept_whole(tmp_path):
    """A singular direction: ITK's message spans lines (two matrices); the last line alone reads "0 0 1"."""
    path = ct_like(tmp_path / "ct.nrrd", compress=False)
    data = path.read_bytes()
    header_end = data.index(b"\n\n")
    header = data[:header_end].decode("latin-1").splitlines()
    header = [("space directions: (0.8,0,0) (1.6,0,0) (0,0,2)" if line.startswith("space directions") else line)
              for line in header]
    path.write_bytes("\n".join(header).encode("latin-1") + data[header_end:])
    refused(path, "Bad direction, determinant is 0", "to 1 1 0; 0 0 0; 0 0 1")
