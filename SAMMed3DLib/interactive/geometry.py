"""Volumes in physical space and the model's canonical patch frame (resampling between them: `resample`).

Conventions: a volume's voxels are a numpy array in K,J,I order (slice, row, column), as Slicer's `arrayFromVolume`
and SimpleITK's `GetArrayFromImage` give them; its geometry is the 4x4 IJK->RAS matrix. Files (ITK, NRRD, NIfTI,
DICOM) are LPS inside SimpleITK; `Volume` converts at the boundary so that everything else is RAS.

A patch frame is a 128^3 grid at 1.5 mm whose axes are the image's own axes, permuted and flipped so that patch
axis 0 points most toward Right, axis 1 toward Anterior, axis 2 toward Superior (the canonical RAS+ order the model
was trained on; an oblique image stays oblique). Because every patch axis is parallel to one image axis, resampling
between a volume and a frame separates into three 1D interpolations, which is what makes it cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

import numpy as np

from SAMMed3DLib.errors import SAMMed3DError, UnreadableImage

PATCH_SIZE = 128
PATCH_SPACING_MM = 1.5
LOGITS_SIZE = 32  # the decoder's output grid: one logit voxel per 4^3 patch voxels

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

Region = Tuple[slice, slice, slice]


class Volume:
    """Voxels (K,J,I numpy array, not copied) and their 4x4 IJK->RAS matrix.

    Raises ValueError for arrays that are not 3D, empty, non-numeric or hold NaN/inf, and for matrices that are not
    affine or are singular, so that nothing downstream has to check again.
    """

    def __init__(self, array: np.ndarray, ijk_to_ras: np.ndarray):
        array = np.asarray(array)
        matrix = np.asarray(ijk_to_ras, dtype=np.float64)
        if array.ndim != 3:
            raise ValueError(f"a volume needs a 3D voxel array (K,J,I), got {array.ndim}D with shape {array.shape}")
        if array.size == 0:
            raise ValueError(f"the volume is empty (shape {array.shape})")
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"voxels must be integers or floats, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(f"the volume holds {np.count_nonzero(~np.isfinite(array))} NaN or infinite voxels")
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f"the IJK->RAS matrix must be a finite 4x4 matrix, got {matrix.tolist()}")
        if not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError(f"the IJK->RAS matrix is not affine (last row {matrix[3].tolist()})")
        linear = matrix[:3, :3]
        if abs(np.linalg.det(linear)) <= 1e-9 * np.prod(np.linalg.norm(linear, axis=0)):
            raise ValueError(f"the IJK->RAS matrix is singular: {matrix[:3].tolist()}")
        self.array = array
        self.ijk_to_ras = matrix
        self.ras_to_ijk = np.linalg.inv(matrix)

    @property
    def shape_ijk(self) -> Tuple[int, int, int]:
        """Voxel counts along I, J, K (the array's shape reversed)."""
        return tuple(int(n) for n in self.array.shape[::-1])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along I, J, K."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """Unit RAS vectors of the I, J, K axes, as columns."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """(N,3) RAS points -> (N,3) continuous I,J,K indices (voxel centres are integers)."""
        ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        return ras @ self.ras_to_ijk[:3, :3].T + self.ras_to_ijk[:3, 3]

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """(N,3) continuous I,J,K indices -> (N,3) RAS points."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def contains(self, ras: np.ndarray) -> bool:
        """Whether a RAS point lies inside the volume's voxels (each voxel reaches half a voxel around its centre)."""
        ijk = self.ras_to_ijk_points(ras)[0]
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(self.shape_ijk) - 0.5))

    def require_inside(self, ras: np.ndarray) -> None:
        """ValueError, stating the volume's extent, unless the RAS point lies inside the volume (`contains`)."""
        if not self.contains(ras):
            point = np.asarray(ras, dtype=np.float64).reshape(3)
            low, high = self.extent_ras()
            raise ValueError(
                f"the click at RAS ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm lies outside the volume, "
                f"which spans R {low[0]:.1f}..{high[0]:.1f}, A {low[1]:.1f}..{high[1]:.1f}, "
                f"S {low[2]:.1f}..{high[2]:.1f} mm"
            )

    def corners_ras(self) -> np.ndarray:
        """(8,3) RAS points of the volume's outer corners (the outer faces of its voxels)."""
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        return self.ijk_to_ras_points(corners * np.asarray(self.shape_ijk) - 0.5)

    def extent_ras(self) -> Tuple[np.ndarray, np.ndarray]:
        """Lowest and highest RAS coordinates of the volume's corners."""
        corners = self.corners_ras()
        return corners.min(axis=0), corners.max(axis=0)

    @classmethod
    def from_sitk(cls, image) -> Volume:
        """A SimpleITK image (LPS) as a Volume (RAS); the voxels are copied out of the image."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise SAMMed3DError(f"expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise SAMMed3DError(
                f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} (a vector or RGB image)"
            )
        return cls(sitk.GetArrayFromImage(image), _ijk_to_ras(image))

    def to_sitk(self):
        """The volume as a SimpleITK image (LPS geometry, same voxels)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection((ijk_to_lps[:3, :3] / self.spacing).flatten().tolist())
        image.SetOrigin(ijk_to_lps[:3, 3].tolist())
        return image

    @classmethod
    def read(cls, path: str | os.PathLike) -> Volume:
        """Read a NIfTI, NRRD or MHA file, or a folder holding one DICOM series, through SimpleITK. A truncated or
        corrupt file, or one SimpleITK cannot read, raises `UnreadableImage` naming it (`image_files`)."""
        import SimpleITK as sitk

        from SAMMed3DLib.interactive.image_files import check_complete, itk_reason

        path = os.fspath(path)
        if not os.path.exists(path):
            raise SAMMed3DError(f"no such file or folder: {path}")
        try:
            if os.path.isdir(path):
                series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
                if len(series) != 1:
                    raise SAMMed3DError(
                        f"{path} holds {len(series)} DICOM series ({', '.join(series) or 'none'}); "
                        "pass a folder with exactly one series"
                    )
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, series[0]))
                image = reader.Execute()
            else:
                check_complete(Path(path))
                image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise UnreadableImage(Path(path), itk_reason(error)) from error
        except OSError as error:
            raise UnreadableImage(Path(path), error.strerror or str(error)) from None
        try:
            return cls.from_sitk(image)
        except (SAMMed3DError, ValueError) as error:
            raise SAMMed3DError(f"{path}: {error}") from error


def _ijk_to_ras(image) -> np.ndarray:
    """The IJK->RAS matrix of a SimpleITK image, or of a reader that has read a file's header (both LPS)."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def read_header(path: str | os.PathLike) -> Any:
    """A SimpleITK reader that has read a volume file's header alone (size, spacing, origin, direction), without
    its voxels; `UnreadableImage` if it cannot."""
    import SimpleITK as sitk

    from SAMMed3DLib.interactive.image_files import itk_reason

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableImage(Path(path), itk_reason(error)) from error
    return reader


def file_grid(path: str | os.PathLike) -> Tuple[Tuple[int, ...], np.ndarray]:
    """A volume file's array shape (K,J,I) and IJK->RAS matrix from its header alone, without reading voxels."""
    reader = read_header(path)
    return tuple(int(n) for n in reader.GetSize()[::-1]), _ijk_to_ras(reader)


def canonical_axes(directions: np.ndarray) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """For patch axes 0,1,2 (toward R, A, S): which image axis (0=I, 1=J, 2=K) each one follows, and its sign.

    Like nibabel's `io_orientation`: the image axis most parallel to a RAS axis is taken first, greedily, so every
    image axis is used exactly once even for strongly oblique images.
    """
    weights = np.abs(np.asarray(directions, dtype=np.float64))
    axes = [-1, -1, -1]
    for _ in range(3):
        ras_axis, image_axis = np.unravel_index(np.argmax(weights), weights.shape)
        axes[ras_axis] = int(image_axis)
        weights[ras_axis, :] = -1
        weights[:, image_axis] = -1
    signs = tuple(1 if directions[r, axes[r]] >= 0 else -1 for r in range(3))
    return tuple(axes), signs


@dataclass(frozen=True, eq=False)
class PatchFrame:
    """A cubic grid of `size`^3 voxels: `patch_to_ras` maps patch indices (axis order of the patch tensor) to RAS.
    Frames are equal (and hash equal) when their matrices and sizes are identical."""

    patch_to_ras: np.ndarray
    size: int = PATCH_SIZE

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PatchFrame) and self.size == other.size
                and np.array_equal(self.patch_to_ras, other.patch_to_ras))

    def __hash__(self) -> int:
        return hash((self.size, np.asarray(self.patch_to_ras, np.float64).tobytes()))

    @property
    def center_ras(self) -> np.ndarray:
        """The RAS point at the geometric centre of the grid (index (size-1)/2 on each axis)."""
        return self.to_ras(np.full(3, (self.size - 1) / 2))[0]

    def to_ras(self, patch_points: np.ndarray) -> np.ndarray:
        """(N,3) continuous patch indices -> (N,3) RAS points."""
        points = np.atleast_2d(np.asarray(patch_points, dtype=np.float64))
        return points @ self.patch_to_ras[:3, :3].T + self.patch_to_ras[:3, 3]

    def to_patch(self, ras: np.ndarray) -> np.ndarray:
        """(N,3) RAS points -> (N,3) continuous patch indices."""
        inverse = np.linalg.inv(self.patch_to_ras)
        return np.atleast_2d(np.asarray(ras, dtype=np.float64)) @ inverse[:3, :3].T + inverse[:3, 3]

    def shifted(self, patch_offset: np.ndarray) -> PatchFrame:
        """The same grid moved by a number of patch voxels along its own axes."""
        matrix = self.patch_to_ras.copy()
        matrix[:3, 3] = self.to_ras(np.asarray(patch_offset, dtype=np.float64))[0]
        return PatchFrame(matrix, self.size)

    def logits_frame(self, logits_size: int = LOGITS_SIZE) -> PatchFrame:
        """The decoder's coarse grid over the same cube: voxel q of it covers patch voxels 4q..4q+3 (centre 4q+1.5),
        which is the geometry trilinear upsampling with align_corners=False assumes."""
        factor = self.size / logits_size
        scale = np.diag([factor, factor, factor, 1.0])
        scale[:3, 3] = (factor - 1) / 2
        return PatchFrame(self.patch_to_ras @ scale, logits_size)


def patch_frame(
    volume: Volume, center_ras: np.ndarray, size: int = PATCH_SIZE, spacing: float = PATCH_SPACING_MM
) -> PatchFrame:
    """The model's input frame for `volume`: `size`^3 voxels of `spacing` mm along the volume's own axes in canonical
    RAS+ order (see `canonical_axes`), with `center_ras` at its geometric centre. Used for clicks (centred on the click)
    and for training crops (centred on the label's bounding-box centre)."""
    axes, signs = canonical_axes(volume.directions)
    linear = np.stack([signs[r] * volume.directions[:, axes[r]] * spacing for r in range(3)], axis=1)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(center_ras, dtype=np.float64).reshape(3) - linear @ np.full(3, (size - 1) / 2)
    return PatchFrame(matrix, size)


@dataclass(frozen=True)
class AxisMap:
    """How a frame's grid lies on a volume's grid, one axis at a time: patch axis r runs along the volume's array
    axis `array_axis[r]` (0=K, 1=J, 2=I), and patch index p sits at array index `offset[r] + scale[r] * p`."""

    array_axis: Tuple[int, int, int]
    scale: Tuple[float, float, float]
    offset: Tuple[float, float, float]


def axis_map(volume: Volume, frame: PatchFrame) -> AxisMap:
    """The separable mapping from `frame` to `volume` indices; ValueError if the frame's axes are not parallel to the
    volume's (a frame from `patch_frame` of a volume with the same directions always is)."""
    patch_to_ijk = volume.ras_to_ijk @ frame.patch_to_ras
    linear = patch_to_ijk[:3, :3]
    image_axis = np.argmax(np.abs(linear), axis=0)
    scale = linear[image_axis, [0, 1, 2]]
    off_axis = np.abs(linear).sum(axis=0) - np.abs(scale)
    if sorted(image_axis) != [0, 1, 2] or np.any(off_axis > 1e-6 * np.abs(scale)):
        raise ValueError("the patch frame's axes are not parallel to the volume's axes")
    return AxisMap(
        array_axis=tuple(int(2 - a) for a in image_axis),
        scale=tuple(float(s) for s in scale),
        offset=tuple(float(patch_to_ijk[a, 3]) for a in image_axis),
    )


def frame_region(volume: Volume, frame: PatchFrame) -> Region:
    """The K,J,I slices of the volume voxels whose centres lie inside the frame's cube (empty slices if none)."""
    mapping = axis_map(volume, frame)
    region = [slice(0, 0)] * 3
    for r in range(3):
        axis, scale, offset = mapping.array_axis[r], mapping.scale[r], mapping.offset[r]
        ends = sorted([offset + scale * -0.5, offset + scale * (frame.size - 0.5)])
        first = max(int(np.ceil(ends[0] - 1e-9)), 0)
        last = min(int(np.floor(ends[1] + 1e-9)), volume.array.shape[axis] - 1)
        region[axis] = slice(first, max(first, last + 1))
    return tuple(region)


def interior_voxel(region: np.ndarray) -> Tuple[int, int, int]:
    """The voxel of a 3D mask farthest from its border in voxels (the array's edge counts as border); the first such
    voxel in C order on ties."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(distance)), region.shape))
