"""The interactive session: geometry of clicks and masks in every grid, ROI caching and policy, undo, errors."""

from __future__ import annotations

import subprocess
import sys
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import LPS, OBLIQUE, PERMUTED_FLIPPED, affine

from SAMMed3DLib.backends.torch_predictor import select_device
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.evaluation.metrics import dice
from SAMMed3DLib.interactive.geometry import Volume, frame_region, patch_frame
from SAMMed3DLib.interactive.session import InteractiveSession
from SAMMed3DLib.testing.oracle import ThresholdPredictor

CLICK_OFFSET = np.array([-12.0, 4.0, 3.0])  # off the object's centre, inside it


def voxel_ras(volume: Volume) -> np.ndarray:
    """(K,J,I,3) RAS position of every voxel centre."""
    k, j, i = np.indices(volume.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return volume.ijk_to_ras_points(ijk).reshape(volume.array.shape + (3,))


def asymmetric_object(ras: np.ndarray, center: np.ndarray) -> np.ndarray:
    """An ellipsoid (60 x 40 x 44 mm) with a bar sticking out toward +R and +S: no symmetry to hide axis errors."""
    d = ras - center
    ellipsoid = (d[..., 0] / 30) ** 2 + (d[..., 1] / 20) ** 2 + (d[..., 2] / 22) ** 2 <= 1
    bar = (d[..., 0] >= 10) & (d[..., 0] <= 42) & (np.abs(d[..., 1]) <= 7) & (d[..., 2] >= 0) & (d[..., 2] <= 16)
    return ellipsoid | bar


def synthetic(directions, spacing, dtype=np.int16, extent_mm=120.0, center_ijk=None):
    """A volume of about `extent_mm` per side with the asymmetric object (bright) on a dim background."""
    shape_ijk = [max(8, int(round(extent_mm / s))) for s in spacing]
    geometry = Volume(np.zeros(shape_ijk[::-1], np.uint8), affine(directions, spacing, [7.0, -13.0, 21.0]))
    ras = voxel_ras(geometry)
    center_ijk = np.asarray(shape_ijk, float) / 2 - 0.3 if center_ijk is None else np.asarray(center_ijk, float)
    center = geometry.ijk_to_ras_points(center_ijk)[0]
    truth = asymmetric_object(ras, center)
    bright, dim = (200, 20) if dtype == np.uint8 else (600, 100)
    return Volume(np.where(truth, bright, dim).astype(dtype), geometry.ijk_to_ras), truth, center, ras


def assert_segmented(mask: np.ndarray, truth: np.ndarray, ras: np.ndarray) -> None:
    mask = mask.astype(bool)
    assert dice(mask, truth) >= 0.9
    assert np.linalg.norm(ras[mask].mean(axis=0) - ras[truth].mean(axis=0)) <= 2.0


def write_ras_nrrd(volume: Volume, path) -> None:
    """A NRRD file in RAS space (as Slicer may write it), by hand: SimpleITK itself always writes LPS."""
    directions = " ".join("(" + ",".join(f"{x:.10g}" for x in volume.ijk_to_ras[:3, a]) + ")" for a in range(3))
    origin = "(" + ",".join(f"{x:.10g}" for x in volume.ijk_to_ras[:3, 3]) + ")"
    shape = " ".join(str(n) for n in volume.shape_ijk)
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: {shape}\n"
        f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
        f"space origin: {origin}\n\n"
    )
    path.write_bytes(header.encode() + volume.array.astype("<i2").tobytes())


GEOMETRIES = {
    "ras": (np.eye(3), [1.2, 1.2, 1.2]),
    "lps": (LPS, [1.0, 1.1, 1.3]),
    "permuted-flipped": (PERMUTED_FLIPPED, [1.1, 0.9, 1.5]),
    "oblique": (OBLIQUE, [1.3, 1.0, 1.6]),
    "anisotropic-0.5x0.5x5": (LPS, [0.5, 0.5, 5.0]),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_click_segments_the_object_in_every_geometry(name):
    """Volumes smaller than the patch, in each grid geometry: the pasted mask matches the truth on the volume's own
    grid (so clicks, frames and paste-back agree on where things are)."""
    volume, truth, center, ras = synthetic(*GEOMETRIES[name])
    session = InteractiveSession(ThresholdPredictor(), volume)
    prediction = session.add_click(center + CLICK_OFFSET)
    assert session.modality == "mr" and prediction.rois == 1
    assert prediction.mask.shape == volume.array.shape and prediction.mask.dtype == np.uint8
    assert_segmented(prediction.mask, truth, ras)
    outside = np.ones(volume.array.shape, bool)
    outside[prediction.region] = False
    assert not prediction.mask[outside].any()
    assert set(prediction.timings) == {"preprocess", "encode", "decode", "paste", "total"}
    assert prediction.timings["total"] >= prediction.timings["decode"] > 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16, np.float32, np.float64])
def test_any_voxel_type(dtype):
    volume, truth, center, ras = synthetic(OBLIQUE, [1.3, 1.3, 1.3], dtype=dtype)
    assert_segmented(InteractiveSession(ThresholdPredictor(), volume).add_click(center + CLICK_OFFSET).mask, truth, ras)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd-ras"])
def test_files_in_lps_and_ras(tmp_path, suffix):
    """The same volume saved as NIfTI (LPS in SimpleITK) and as a RAS-space NRRD, read back and clicked in RAS."""
    volume, truth, center, ras = synthetic(PERMUTED_FLIPPED, [1.2, 1.0, 1.4])
    path = tmp_path / ("volume.nrrd" if suffix == ".nrrd-ras" else "volume.nii.gz")
    if suffix == ".nrrd-ras":
        write_ras_nrrd(volume, path)
        assert "right-anterior-superior" in path.read_bytes()[:400].decode(errors="replace")
    else:
        sitk.WriteImage(volume.to_sitk(), str(path))
    read = Volume.read(path)
    np.testing.assert_allclose(read.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)
    assert_segmented(InteractiveSession(ThresholdPredictor(), read).add_click(center + CLICK_OFFSET).mask, truth, ras)


def test_click_at_the_volume_edge():
    """The object is cut by the volume's last I slice and the click is in that slice: the ROI is mostly padding."""
    volume, truth, _, ras = synthetic(LPS, [1.0, 1.0, 1.0], center_ijk=[119, 60, 60])
    click = volume.ijk_to_ras_points([[119.4, 56, 63]])[0]
    assert volume.contains(click)
    prediction = InteractiveSession(ThresholdPredictor(), volume).add_click(click)
    assert_segmented(prediction.mask, truth, ras)


class Recording:
    """A predictor that forwards to another one and records every call (and can be told to fail)."""

    def __init__(self, inner, fail_on_decode: int = -1):
        self.inner = inner
        self.encoded: List[np.ndarray] = []
        self.decoded: List[tuple] = []
        self.fail_on_decode = fail_on_decode

    def encode(self, image):
        self.encoded.append(image)
        return self.inner.encode(image)

    def decode(self, embedding, points, labels, mask_logits):
        if len(self.decoded) == self.fail_on_decode:
            raise RuntimeError("decoder failed")
        result = self.inner.decode(embedding, points, labels, mask_logits)
        self.decoded.append((points.copy(), labels.copy(), mask_logits.copy(), result[0].copy()))
        return result


def test_embedding_is_cached_and_each_round_feeds_the_newest_click_and_previous_logits():
    volume, _, center, _ = synthetic(OBLIQUE, [1.3, 1.3, 1.3])
    predictor = Recording(ThresholdPredictor())
    session = InteractiveSession(predictor, volume)
    session.add_click(center + CLICK_OFFSET)
    session.add_click(center + [20.0, 0.0, 8.0], positive=False)
    assert len(predictor.encoded) == 1 and predictor.encoded[0].shape == (1, 1, 128, 128, 128)
    assert predictor.encoded[0].dtype == np.float32
    (points1, labels1, prompt1, out1), (points2, labels2, prompt2, _) = predictor.decoded
    assert points1.shape == (1, 1, 3) and points1.dtype == np.float32 and labels1.dtype == np.int64
    assert labels1.tolist() == [[1]] and labels2.tolist() == [[0]]
    assert prompt1.shape == (1, 1, 32, 32, 32) and not prompt1.any()  # first round: all-zero mask prompt
    np.testing.assert_array_equal(prompt2, out1)
    # The click in patch coordinates: the ROI is centred on the first click.
    np.testing.assert_allclose(points1[0, 0], [63.5, 63.5, 63.5], atol=1e-4)
    np.testing.assert_allclose(session.frames[0].to_ras(points2[0, 0])[0], center + [20.0, 0.0, 8.0], atol=1e-4)


def test_undo_restores_exactly_and_reset_clears():
    volume, truth, center, _ = synthetic(LPS, [1.0, 1.0, 1.0])
    session = InteractiveSession(ThresholdPredictor(), volume)
    after = []
    for ras, positive in ((center + CLICK_OFFSET, True), (center + [25.0, 0, 8], False), (center, True)):
        after.append(session.add_click(ras, positive).mask.copy())
    assert not after[1].any() and after[2].any()  # the negative click removed the object, the third restored it
    prediction = session.undo()
    np.testing.assert_array_equal(prediction.mask, after[1])
    assert len(session.clicks) == 2
    session.undo()
    np.testing.assert_array_equal(session.mask, after[0])
    # Redoing the same click gives the same mask bit for bit (no drift from re-computation).
    np.testing.assert_array_equal(session.add_click(center + [25.0, 0, 8], False).mask, after[1])
    session.undo()
    session.undo()
    assert not session.mask.any() and session.clicks == () and session.frames == ()
    assert session.undo() is None
    session.add_click(center)
    reset = session.reset()
    assert not session.mask.any() and session.clicks == () and reset.region[0].stop > 0
    with pytest.raises(ValueError):
        session.mask[0, 0, 0] = 1  # the mask handed out is read-only


def test_undo_history_is_bounded_by_memory(monkeypatch):
    from SAMMed3DLib.interactive import session as session_module

    volume, _, center, _ = synthetic(LPS, [1.5, 1.5, 1.5])
    monkeypatch.setattr(session_module, "UNDO_BYTES", int(volume.array.size * 1.5))  # room for one step
    session = InteractiveSession(ThresholdPredictor(), volume)
    session.add_click(center)
    second = session.add_click(center + CLICK_OFFSET).mask.copy()
    session.add_click(center + [25.0, 0, 8], positive=False)
    assert session.undo() is not None and session.undo() is None  # the oldest step was dropped
    np.testing.assert_array_equal(session.mask, second)


def test_embedding_cache_is_bounded_and_drops_the_least_recently_used(monkeypatch):
    from SAMMed3DLib.interactive import session as session_module

    volume, _, center, _ = synthetic(LPS, [2.0, 2.0, 2.0], extent_mm=600.0)
    one = 128**3 * 4  # the oracle's embedding is the float32 patch
    monkeypatch.setattr(session_module, "EMBEDDING_CACHE_BYTES", 2 * one)  # room for two
    predictor = Recording(ThresholdPredictor())
    session = InteractiveSession(predictor, volume)
    far = [center + [x, 0.0, 0.0] for x in (-250.0, 0.0, 250.0)]  # three ROIs, none containing another's click
    for ras in far[:2]:
        session.add_click(ras)
        session.reset()
    session.add_click(far[0])  # cached: the first becomes the most recently used
    session.reset()
    assert len(predictor.encoded) == 2
    session.add_click(far[2])  # a third embedding: the least recently used one (the second ROI) goes
    session.reset()
    assert len(session._embeddings) == 2
    session.add_click(far[0])
    session.reset()
    assert len(predictor.encoded) == 3  # still cached
    session.add_click(far[1])
    assert len(predictor.encoded) == 4  # dropped, so encoded again


def test_bad_clicks_raise_and_leave_the_session_unchanged():
    volume, _, center, _ = synthetic(LPS, [1.0, 1.0, 1.0])
    session = InteractiveSession(ThresholdPredictor(), volume)
    session.add_click(center)
    mask, clicks, frames = session.mask.copy(), session.clicks, session.frames
    with pytest.raises(ValueError, match=r"click at RAS \(500.0, 0.0, 0.0\) mm lies outside the volume.*R -?\d"):
        session.add_click([500.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="three finite"):
        session.add_click([np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match="three finite"):
        session.add_click([1.0, 2.0])
    np.testing.assert_array_equal(session.mask, mask)
    assert session.clicks == clicks and session.frames == frames


def test_a_failing_predictor_leaves_the_session_unchanged():
    """The second ROI's second round fails after its first round already ran: everything is rolled back."""
    volume, _, a, b, _ = two_objects()
    predictor = Recording(ThresholdPredictor(), fail_on_decode=2)
    session = InteractiveSession(predictor, volume)
    session.add_click(a)
    mask, frames = session.mask.copy(), session.frames
    with pytest.raises(RuntimeError, match="decoder failed"):
        session.add_click(b)  # new ROI: replays the first click (round 2), then fails on the new one
    np.testing.assert_array_equal(session.mask, mask)
    assert session.frames == frames and len(session.clicks) == 1
    predictor.fail_on_decode = -1
    assert session.add_click(b).rois == 2


def two_objects():
    """Two ellipsoids 90 mm apart along R in a 300 x 120 x 120 mm volume at 2 mm."""
    geometry = Volume(np.zeros((60, 60, 150), np.uint8), affine(np.eye(3), [2.0] * 3, [-150.0, -60.0, -60.0]))
    ras = voxel_ras(geometry)
    a, b = np.array([-45.0, 0.0, 0.0]), np.array([45.0, 0.0, 0.0])
    objects = [((ras - c) / [25, 18, 20]) ** 2 @ np.ones(3) <= 1 for c in (a, b)]
    volume = Volume(np.where(objects[0] | objects[1], 600, 100).astype(np.int16), geometry.ijk_to_ras)
    return volume, objects, a, b, ras


def test_click_outside_the_roi_adds_one_and_replays_the_clicks_inside_it():
    volume, objects, a, b, _ = two_objects()
    predictor = Recording(ThresholdPredictor())
    session = InteractiveSession(predictor, volume)
    session.add_click(a)
    prediction = session.add_click(b)  # 90 mm from the first ROI's centre: within 12 mm of its face
    assert prediction.rois == 2 and len(predictor.encoded) == 2
    # The new ROI replayed the first click (inside it) before the new one.
    assert len(predictor.decoded) == 3
    np.testing.assert_allclose(session.frames[1].to_ras(predictor.decoded[1][0][0, 0])[0], a, atol=1e-4)
    np.testing.assert_allclose(session.frames[1].to_ras(predictor.decoded[2][0][0, 0])[0], b, atol=1e-4)
    for obj in objects:
        assert dice(session.mask.astype(bool) & obj, obj) >= 0.9
    assert prediction.region == frame_region(volume, session.frames[1])
    # A click back in the first ROI, well inside it, reuses its embedding.
    session.add_click(a + [-10.0, 0, 0])
    assert len(predictor.encoded) == 2 and len(session.frames) == 2


def test_an_object_longer_than_the_patch_is_covered_by_added_rois():
    """A 320 mm bar along S: the object touches the ROI's top and bottom faces, so ROIs are added above and below."""
    geometry = Volume(np.zeros((200, 40, 40), np.uint8), affine(np.eye(3), [2.5, 2.5, 2.0], [-50.0, -50.0, -200.0]))
    ras = voxel_ras(geometry)
    bar = (np.abs(ras[..., 0]) <= 18) & (np.abs(ras[..., 1]) <= 14) & (np.abs(ras[..., 2]) <= 160)
    volume = Volume(np.where(bar, 600, 100).astype(np.int16), geometry.ijk_to_ras)
    predictor = Recording(ThresholdPredictor())
    stages = []
    session = InteractiveSession(predictor, volume, on_stage=lambda stage, roi: stages.append((stage, roi)))
    prediction = session.add_click([5.0, 3.0, 10.0])
    assert prediction.rois == 3 and len(predictor.encoded) == 3 and not prediction.capped
    assert stages[:4] == [("preprocess", 1), ("encode", 1), ("decode", 1), ("paste", 1)]
    assert [roi for stage, roi in stages if stage == "encode"] == [1, 2, 3]
    centres = sorted(frame.center_ras[2] for frame in session.frames)
    np.testing.assert_allclose(centres, [10.0 - 96.0, 10.0, 10.0 + 96.0], atol=1e-6)
    assert dice(prediction.mask.astype(bool), bar) >= 0.95
    capped = InteractiveSession(ThresholdPredictor(), volume, max_rois=1).add_click([5.0, 3.0, 10.0])
    assert capped.rois == 1 and capped.capped  # the bar leaves the one ROI: it is cut off, and says so
    assert dice(capped.mask.astype(bool), bar) < 0.8


def test_mask_above_another_logit_repeats_the_pastes_in_order():
    """The mask at logit 0.5 (where the paper's protocol draws clicks) from the ROIs' newest logits, pasted in the
    order they were: at logit 0 it is the live mask, through added ROIs, clicks back in an older ROI and undo."""
    from SAMMed3DLib.interactive.resample import paste_logits

    volume, objects, a, b, _ = two_objects()
    session = InteractiveSession(ThresholdPredictor(), volume)
    assert not session.mask_above(0.5).any()
    session.add_click(a)
    region, logits = paste_logits(volume, session.frames[0], session._rois[0].logits[0, 0])
    expected = np.zeros(volume.array.shape, bool)
    expected[region] = logits > 0.5
    np.testing.assert_array_equal(session.mask_above(0.5), expected)
    assert 0 < expected.sum() < session.mask.sum()  # the 0.5 mask is a strict part of the live one
    for click in (b, a + [-10.0, 0, 0], a + [0, 20.0, 0]):  # a new ROI overlapping the first, then the first again
        session.add_click(click)
        np.testing.assert_array_equal(session.mask_above(0.0), session.mask)
        above = session.mask_above(0.5).astype(bool)
        assert above.any() and not (above & ~session.mask.astype(bool)).any()
    session.undo()
    np.testing.assert_array_equal(session.mask_above(0.0), session.mask)


def test_an_initial_mask_seeds_the_prompt_and_stays_outside_the_rois():
    volume, objects, a, b, ras = two_objects()
    initial = np.zeros(volume.array.shape, np.uint8)
    near = np.linalg.norm(ras - (a + [0, 30.0, 25.0]), axis=-1) <= 15  # dim voxels inside the ROI around a
    far = np.linalg.norm(ras - [140.0, 50.0, 50.0], axis=-1) <= 8  # beyond the ROI
    initial[near | far] = 1
    predictor = Recording(ThresholdPredictor())
    session = InteractiveSession(predictor, volume, initial_mask=initial)
    mask = session.add_click(a).mask.astype(bool)
    assert predictor.decoded[0][2].max() > 0  # the prompt carries the existing segment
    assert mask[far].all() and mask[near].mean() > 0.7 and dice(mask & objects[0], objects[0]) >= 0.9
    session.reset()
    np.testing.assert_array_equal(session.mask, initial)
    with pytest.raises(ValueError, match="initial mask has shape"):
        InteractiveSession(ThresholdPredictor(), volume, initial_mask=initial[1:])


def test_modality_decision_and_bad_options(pyradiomics_data):
    ct = Volume.read(pyradiomics_data / "lung1_image.nrrd")
    assert InteractiveSession(ThresholdPredictor(), ct).modality == "ct"
    forced = InteractiveSession(ThresholdPredictor(), ct, modality="mr")
    assert forced.modality == "mr"
    with pytest.raises(ValueError, match="modality"):
        InteractiveSession(ThresholdPredictor(), ct, modality="pet")
    with pytest.raises(ValueError, match="max_rois"):
        InteractiveSession(ThresholdPredictor(), ct, max_rois=0)


@pytest.mark.parametrize("case, modality", [("lung1", "ct"), ("brain1", "mr")])
def test_real_ct_and_mr_through_one_click(pyradiomics_data, case, modality):
    """pyradiomics' real CT (0.57 x 0.57 x 5 mm) and MR (6.5 mm slices, LPS with a flipped axis), one click at the
    lesion's interior-most voxel: the ROI is centred on the lesion, and the mask pasted on the file's own grid is
    the predictor's output interpolated there."""
    from scipy import ndimage

    from SAMMed3DLib.interactive.preprocess import prepare_patch
    from SAMMed3DLib.interactive.resample import resample_into

    volume = Volume.read(pyradiomics_data / f"{case}_image.nrrd")
    label_volume = Volume.read(pyradiomics_data / f"{case}_label.nrrd")
    label = label_volume.array > 0
    box = ndimage.find_objects(label.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(label[box], 1))[1:-1, 1:-1, 1:-1]
    kji = tuple(int(x) + s.start for x, s in zip(np.unravel_index(np.argmax(depth), depth.shape), box))
    click = volume.ijk_to_ras_points([kji[::-1]])[0]
    # An oracle threshold halfway between the lesion's and its rim's normalised intensity.
    predictor = Recording(ThresholdPredictor())
    session = InteractiveSession(predictor, volume, max_rois=1)
    frame = patch_frame(volume, click)
    patch = prepare_patch(volume, frame, session.modality)
    lesion = resample_into(label_volume, frame, "nearest") > 0
    assert lesion[63:65, 63:65, 63:65].all()  # the lesion sits at the centre of the canonical patch
    rim = ndimage.binary_dilation(lesion, iterations=3) & ~lesion
    predictor.inner.threshold = float(patch[lesion].mean() + patch[rim].mean()) / 2
    prediction = session.add_click(click)
    assert session.modality == modality and session.frames[0] == frame
    np.testing.assert_array_equal(predictor.encoded[0][0, 0], patch)
    # Volume voxels in the ROI (every other row and column) against an independent evaluation of the predictor's
    # 32^3 output there: scipy's trilinear interpolation at the voxel's position composed from the two matrices
    # (the logit voxel q is centred on patch index 4q + 1.5; beyond the outer centres the edge value holds).
    region = prediction.region
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop, step) for s, step in zip(region, (1, 2, 2))], indexing="ij")
    voxel_to_patch = np.linalg.inv(frame.patch_to_ras) @ volume.ijk_to_ras
    patch_points = [voxel_to_patch[r, 0] * i + voxel_to_patch[r, 1] * j + voxel_to_patch[r, 2] * k
                    + voxel_to_patch[r, 3] for r in range(3)]
    assert all(p.min() >= -0.5 and p.max() <= 127.5 for p in patch_points)
    logits = ndimage.map_coordinates(predictor.decoded[-1][3][0, 0], [(p - 1.5) / 4 for p in patch_points],
                                     order=1, mode="nearest")
    pasted = prediction.mask[k, j, i] > 0
    assert (logits > 0).any() and (~(logits > 0)).any()
    clear = np.abs(logits) > 1e-4
    np.testing.assert_array_equal(pasted[clear], logits[clear] > 0)
    outside = np.ones(label.shape, bool)
    outside[region] = False
    assert not prediction.mask[outside].any()
    if case == "lung1":  # an isolated nodule: the oracle finds it
        assert dice(prediction.mask.astype(bool), label) >= 0.5


def test_torch_predictor_runs_the_network_with_the_previous_logits():
    torch = pytest.importorskip("torch")

    from SAMMed3DLib.backends.torch_predictor import TorchPredictor
    from SAMMed3DLib.model import build_sam_med3d

    torch.manual_seed(0)
    model = build_sam_med3d("tiny")
    predictor = Recording(TorchPredictor(model, "cpu"))
    volume, _, center, _ = synthetic(OBLIQUE, [1.5, 1.5, 1.5], extent_mm=60.0)
    session = InteractiveSession(predictor, volume, max_rois=1)
    session.add_click(center)
    session.add_click(center + [5.0, 0, 0], positive=False)
    assert len(predictor.encoded) == 1
    (_, _, prompt1, out1), (points2, labels2, prompt2, out2) = predictor.decoded
    assert not prompt1.any() and out1.dtype == np.float32 and out1.shape == (1, 1, 32, 32, 32)
    np.testing.assert_array_equal(prompt2, out1)
    with torch.inference_mode():
        embedding = model.encode(torch.from_numpy(predictor.encoded[0]))
        expected, _ = model.decode(embedding, torch.from_numpy(points2), torch.from_numpy(labels2),
                                   torch.from_numpy(prompt2))
    np.testing.assert_allclose(out2, expected.numpy(), atol=1e-5)


def test_select_device():
    torch = pytest.importorskip("torch")

    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(SAMMed3DError, match="unknown device 'tpu'"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SAMMed3DError, match="'cuda' is not available"):
            select_device("cuda")


def test_session_and_predictors_import_without_torch():
    code = "import sys, SAMMed3DLib.interactive.session, SAMMed3DLib.backends.predictor; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert result.stdout == "False\n"


def test_the_mask_is_stored_over_the_rois_only_and_read_by_region():
    array = np.full((200, 200, 200), 100, np.int16)  # 400 mm at 2 mm: an ROI (192 mm) is 96^3 voxels of it
    array[90:110, 80:120, 95:105] = 600
    volume = Volume(array, affine(LPS, [2.0, 2.0, 2.0], [7.0, -13.0, 21.0]))
    session = InteractiveSession(ThresholdPredictor(), volume, max_rois=1)
    prediction = session.add_click(volume.ijk_to_ras_points([[100.0, 100.0, 100.0]])[0])
    assert dice(prediction.mask, array > 300) >= 0.9
    region = frame_region(volume, session.frames[0])
    assert session.nbytes <= 2 * np.prod([s.stop - s.start for s in region])  # the mask box and one undo step
    assert session.nbytes < volume.array.size / 4  # was two full-size masks and the undo step
    np.testing.assert_array_equal(session.mask_in(region), prediction.mask[region])
    far = (slice(0, 5), slice(0, 5), slice(0, 5))
    assert session.mask_in(far).shape == (5, 5, 5) and not session.mask_in(far).any()
    assert not prediction.mask.flags.writeable


def test_sessions_on_one_volume_share_an_embedding_cache():
    from SAMMed3DLib.interactive.session import EmbeddingCache

    volume, _, center, _ = synthetic(LPS, [1.5, 1.5, 1.5])
    predictor = Recording(ThresholdPredictor())
    cache = EmbeddingCache()
    first = InteractiveSession(predictor, volume, embeddings=cache)
    second = InteractiveSession(predictor, volume, embeddings=cache)
    first.add_click(center)
    second.add_click(center)  # the same ROI: encoded once for both
    assert len(predictor.encoded) == 1 and len(cache) == 1
    np.testing.assert_array_equal(first.mask, second.mask)


def test_crop_to_nonzero_keeps_the_changed_voxels_only():
    from SAMMed3DLib.interactive.boxed_array import crop_to_nonzero

    block = np.zeros((4, 5, 6), np.uint8)
    block[1, 2:4, 3] = 1
    block[2, 3, 5] = 1
    region = (slice(10, 14), slice(20, 25), slice(30, 36))
    cropped, inner = crop_to_nonzero(block, region)
    assert inner == (slice(11, 13), slice(22, 24), slice(33, 36))
    assert cropped.shape == (2, 2, 3) and cropped.sum() == block.sum()
    empty, where = crop_to_nonzero(np.zeros((2, 2, 2), np.uint8), region)
    assert empty.size == 0 and all(s.start == s.stop for s in where)
