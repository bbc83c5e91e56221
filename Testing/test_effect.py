"""The SAM-Med3D Segment Editor effect on Slicer's own libraries (Testing/slicer_core_app.py): real scene, segment
editor logic (masking, overwrite, shared layers, undo), markups and slice nodes, with the real session and the
threshold oracle, on an oblique, anisotropic volume under a parent transform. Clicks arrive as a user's do, through
processInteractionEvents; the segments are read with Slicer's own export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="the effect's tests run on Slicer's libraries (slicer-core, Python >= 3.10)")

import slicer  # noqa: E402
from slicer_core_app import SlicerCoreApp  # noqa: E402

from SAMMed3DLib.evaluation.metrics import dice  # noqa: E402
from SAMMed3DLib.testing.oracle import ThresholdPredictor  # noqa: E402
from SAMMed3DLib.testing.scenes import SHAPE, SPACING, letter_and_ball, rotation  # noqa: E402

IN_THE_L = (12, 45, 36)  # K,J,I: in the L's foot, off its centre
IN_THE_BALL = (15, 72, 62)
MARKUPS = ("SAM-Med3D include", "SAM-Med3D exclude")


class Scene:
    """An app with the L-and-ball volume under a parent transform, a segmentation with segments A and B on it
    (optionally under its own transform), A selected and the effect active."""

    def __init__(self, app, segmentation_transformed):
        self.app = app
        voxels, self.letter_l, self.ball = letter_and_ball()
        self.ijk_to_ras = rotation(2, 30) @ rotation(0, 20) @ np.diag([*SPACING, 1.0])
        self.ijk_to_ras[:3, 3] = [-40.0, 25.0, -12.0]
        self.volume = app.add_volume(voxels, self.ijk_to_ras)
        parent = rotation(1, 15)
        parent[:3, 3] = [10.0, -20.0, 5.0]
        self.volume_transform = transform(self.volume, parent)
        self.segmentation = app.add_segmentation(self.volume, ["A", "B"])
        if segmentation_transformed:
            parent = rotation(0, -10)
            parent[:3, 3] = [-7.0, 3.0, 12.0]
            transform(self.segmentation, parent)
            self.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        app.select_segment(self.segmentation, "A")
        self.effect = app.activate_effect(ThresholdPredictor())

    def world(self, kji):
        k, j, i = kji
        to_world = slicer.util.arrayFromTransformMatrix(self.volume_transform, toWorld=True)
        return (to_world @ self.ijk_to_ras @ [i, j, k, 1.0])[:3]

    def click(self, kji, positive=True):
        return self.app.click(self.world(kji), positive)

    def segment(self, segment_id="A"):
        return self.app.segment_array(self.segmentation, segment_id)

    def markups(self, positive=True):
        return slicer.util.getFirstNodeByName(MARKUPS[0 if positive else 1])


def transform(node, to_parent):
    transform_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    slicer.util.updateTransformMatrixFromArray(transform_node, to_parent)
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return transform_node


@pytest.fixture(params=["volume transformed", "both transformed"])
def both_geometries(request):
    with SlicerCoreApp() as app:
        yield Scene(app, request.param == "both transformed")


@pytest.fixture
def scene():
    """The harder geometry only: volume and segmentation each under its own transform."""
    with SlicerCoreApp() as app:
        yield Scene(app, segmentation_transformed=True)


def box(slices):
    mask = np.zeros(SHAPE, np.uint8)
    mask[slices] = 1
    return mask


def centroid_world(scene, mask):
    k, j, i = np.nonzero(mask)
    return scene.world((k.mean(), j.mean(), i.mean()))


# -- placement and the basics ------------------------------------------------------------------------------------


def test_a_click_lands_on_the_voxel_and_the_result_in_place(both_geometries):
    s = both_geometries
    assert s.click(IN_THE_L) is True  # the press is the effect's: the view does not also get it
    mask = s.segment()
    assert mask[IN_THE_L] == 1
    assert dice(mask, s.letter_l) >= 0.9
    assert np.linalg.norm(centroid_world(s, mask) - centroid_world(s, s.letter_l)) < 2.0
    assert mask[s.ball].sum() == 0 and s.segment("B").sum() == 0
    assert s.app.editor_logic.CanUndo()
    assert len(s.app.record.progress) == 1 and s.app.record.progress[0].closed  # the first encode, then closed
    assert s.effect.statusLabel.text.startswith(f"{ThresholdPredictor.label} | last click ")
    include = s.markups()
    assert include.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(include.GetNthControlPointPositionWorld(0), s.world(IN_THE_L), atol=1e-6)
    assert include.GetLocked() and include.GetHideFromEditors() and not include.GetSaveWithScene()
    color = s.segmentation.GetSegmentation().GetSegment("A").GetColor()
    np.testing.assert_allclose(include.GetDisplayNode().GetSelectedColor(), color)


def test_the_editors_undo_and_redo_restore_a_click_exactly(scene):
    scene.click(IN_THE_L)
    after = scene.segment()
    scene.app.editor.undo()
    assert scene.segment().sum() == 0
    scene.app.editor.redo()
    np.testing.assert_array_equal(scene.segment(), after)


def test_ctrl_click_excludes_backspace_undoes_and_shift_backspace_resets(scene):
    scene.click(IN_THE_L)
    after_include = scene.segment()
    scene.click(IN_THE_L, positive=False)
    assert scene.segment().sum() < 0.1 * after_include.sum()
    assert scene.markups(False).GetNumberOfControlPoints() == 1
    assert scene.markups(False).GetDisplayNode().GetGlyphTypeAsString() == "Cross2D"
    assert scene.app.key("BackSpace") is True
    np.testing.assert_array_equal(scene.segment(), after_include)
    assert scene.markups(False).GetNumberOfControlPoints() == 0
    assert scene.app.key("BackSpace", shift=True) is True
    assert scene.segment().sum() == 0 and scene.markups().GetNumberOfControlPoints() == 0
    assert not scene.effect.undoButton.enabled and not scene.effect.resetButton.enabled


def test_the_exclude_toggle_is_an_editor_parameter(scene):
    node = scene.app.editor_node
    assert node.GetAttribute("SAM-Med3D.Exclude") == "0"
    assert scene.app.key("x") is True
    assert node.GetAttribute("SAM-Med3D.Exclude") == "1" and scene.effect.excludeButton.checked
    scene.click(IN_THE_L)  # a plain click now excludes; on an empty segment there is nothing to take away
    assert scene.segment().sum() == 0 and scene.markups(False).GetNumberOfControlPoints() == 1


def test_a_click_outside_the_volume_is_refused_with_a_message(scene):
    scene.click(IN_THE_L)
    before = scene.segment()
    scene.app.click(scene.world(IN_THE_L) + np.array([0.0, 0.0, 400.0]))
    assert "outside the volume" in scene.effect.statusLabel.text and "not changed" in scene.effect.statusLabel.text
    assert scene.app.record.messages and "outside the volume" in scene.app.record.messages[-1]
    np.testing.assert_array_equal(scene.segment(), before)
    assert scene.markups().GetNumberOfControlPoints() == 1


def test_model_errors_leave_every_segment_unchanged(scene):
    class Broken(ThresholdPredictor):
        def decode(self, *args):
            raise RuntimeError("CUDA out of memory")

    scene.app.set_segment_array(scene.segmentation, "B", box(np.s_[0:4, 0:10, 0:10]))
    scene.app.activate_effect(Broken())
    scene.click(IN_THE_L)
    assert "CUDA out of memory" in scene.effect.statusLabel.text and "not changed" in scene.effect.statusLabel.text
    assert scene.segment().sum() == 0
    np.testing.assert_array_equal(scene.segment("B"), box(np.s_[0:4, 0:10, 0:10]))
    assert scene.app.record.progress[-1].closed  # the first-encode dialog does not stay open


def test_refine_starts_from_the_segment_content(scene):
    existing = box(np.s_[2:10, 58:86, 2:30])  # made by another tool, away from both objects
    scene.app.set_segment_array(scene.segmentation, "A", existing)
    scene.effect.refineCheckBox.click()
    assert scene.app.editor_node.GetAttribute("SAM-Med3D.Refine") == "1"
    scene.click(IN_THE_L)
    mask = scene.segment()
    assert mask[existing > 0].mean() > 0.5  # kept, up to the 6 mm logits grid; without "Refine": 0
    assert mask[scene.letter_l].mean() > 0.85
    scene.app.reset()
    np.testing.assert_array_equal(scene.segment(), existing)
