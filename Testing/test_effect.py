"""The SAM-Med3D Segment Editor effect on Slicer's own libraries (Testing/slicer_core_app.py): real scene, segment
editor logic (masking, overwrite, shared layers, undo), markups and slice nodes, with the real session and the
threshold oracle, on an oblique, anisotropic volume under a parent transform. Clicks arrive as a user's do, through
processInteractionEvents; the segments are read with Slicer's own export."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="the effect's tests run on Slicer's libraries (slicer-core, Python >= 3.10)")

import slicer  # noqa: E402
import slicer_qt_standin  # noqa: E402
from slicer_core_app import SlicerCoreApp  # noqa: E402

from SAMMed3DLib.evaluation.metrics import dice  # noqa: E402
from SAMMed3DLib.testing.oracle import GatedPredictor, ThresholdPredictor  # noqa: E402
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

    def click(self, kji, positive=True, wait=True):
        return self.app.click(self.world(kji), positive, wait)

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
    assert not s.app.record.progress and not s.app.record.messages  # no dialog: the status line says it
    assert s.effect.statusLabel.text.startswith(f"{ThresholdPredictor.label} | last click ")
    include = s.markups()
    assert include.GetNumberOfControlPoints() == 1 and include.GetNthControlPointSelected(0)  # applied
    np.testing.assert_allclose(include.GetNthControlPointPositionWorld(0), s.world(IN_THE_L), atol=1e-6)
    assert include.GetLocked() and include.GetHideFromEditors() and not include.GetSaveWithScene()


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
    assert scene.markups(False).GetDisplayNode().GetGlyphTypeAsString() == "ThickCross2D"
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


def test_a_click_outside_the_volume_is_refused_on_the_status_line(scene):
    scene.click(IN_THE_L)
    before = scene.segment()
    scene.app.click(scene.world(IN_THE_L) + np.array([0.0, 0.0, 400.0]))
    assert "outside the volume 'volume'" in scene.effect.statusLabel.text
    assert "not changed" in scene.effect.statusLabel.text
    assert not scene.app.record.messages  # a routine misclick opens no dialog
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
    assert len(scene.app.record.messages) == 1 and "CUDA out of memory" in scene.app.record.messages[0]  # a dialog
    assert scene.segment().sum() == 0
    np.testing.assert_array_equal(scene.segment("B"), box(np.s_[0:4, 0:10, 0:10]))
    assert scene.markups().GetNumberOfControlPoints() == 0  # the failed click's marker goes


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


# -- 1. what the segment held before the effect touched it ------------------------------------------------------


def test_exclude_undo_and_reset_keep_what_the_segment_held_before(scene):
    painted = box(np.s_[8:20, 30:60, 5:20])  # by another tool, over part of the L
    scene.app.set_segment_array(scene.segmentation, "A", painted)
    scene.click(IN_THE_L)
    after_include = scene.segment()
    assert dice(after_include, scene.letter_l | painted.astype(bool)) >= 0.9
    scene.click(IN_THE_L, positive=False)
    np.testing.assert_array_equal(scene.segment()[painted > 0], 1)  # the exclude took only what the click added
    scene.app.undo_click()
    np.testing.assert_array_equal(scene.segment(), after_include)
    scene.app.reset()
    np.testing.assert_array_equal(scene.segment(), painted)


# -- 2. other segments' voxels, and what the editor's masks let through ------------------------------------------


def test_undo_click_and_reset_give_back_what_the_click_took_from_other_segments(scene):
    other = box(np.s_[8:20, 30:60, 5:20])  # B, over part of the L
    scene.app.set_segment_array(scene.segmentation, "B", other)
    scene.click(IN_THE_L)  # the default overwrite mode moves the L's voxels from B to A
    assert not (scene.segment("B") & scene.segment()).any() and scene.segment("B").sum() < other.sum()
    scene.app.undo_click()
    np.testing.assert_array_equal(scene.segment("B"), other)
    assert scene.segment().sum() == 0
    scene.click(IN_THE_L)
    scene.click(IN_THE_BALL)
    scene.app.reset()
    np.testing.assert_array_equal(scene.segment("B"), other)
    assert scene.segment().sum() == 0


def test_an_exclude_click_gives_back_what_an_earlier_click_took(scene):
    other = box(np.s_[8:20, 30:60, 5:20])
    scene.app.set_segment_array(scene.segmentation, "B", other)
    scene.click(IN_THE_L)
    scene.click(IN_THE_L, positive=False)
    np.testing.assert_array_equal(scene.segment("B"), other)
    assert scene.segment().sum() < 0.1 * scene.letter_l.sum()


def test_voxels_the_editable_area_kept_out_are_written_when_it_allows(scene):
    scene.app.set_segment_array(scene.segmentation, "B", box(np.s_[0:30, 0:90, 0:26]))  # B covers the L's foot
    scene.app.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    scene.click(IN_THE_BALL)  # a click anywhere: only what lies outside B may be written
    scene.click(IN_THE_L)
    assert scene.segment()[:, :, :26].sum() == 0 and scene.segment()[scene.letter_l].mean() < 0.9
    scene.app.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    scene.click((12, 45, 40))  # the same L: now all of it, its foot taken from B
    foot = scene.letter_l.copy()
    foot[:, :, 26:] = False
    assert scene.segment()[foot].mean() > 0.85 and dice(scene.segment(), scene.letter_l | scene.ball) >= 0.85


def test_undo_click_after_another_segments_click_gives_back_what_it_took(scene):
    other = box(np.s_[8:20, 30:60, 5:20])
    scene.app.set_segment_array(scene.segmentation, "B", other)
    scene.click(IN_THE_L)  # A takes part of B
    scene.app.select_segment(scene.segmentation, "B")
    scene.click(IN_THE_BALL)  # the editor's newest undo state is B's now
    ball = scene.segment("B") & ~other
    scene.app.select_segment(scene.segmentation, "A")
    scene.app.undo_click()  # so A's click is taken back with a new edit
    assert scene.segment().sum() == 0
    np.testing.assert_array_equal(scene.segment("B"), other | ball)


def test_reset_beyond_the_editors_undo_memory_restores_the_segment(scene):
    painted, other = box(np.s_[2:10, 58:86, 2:30]), box(np.s_[8:20, 30:55, 5:20])
    scene.app.set_segment_array(scene.segmentation, "A", painted)
    scene.app.set_segment_array(scene.segmentation, "B", other)
    scene.app.editor.setMaximumNumberOfUndoStates(2)
    scene.click(IN_THE_L)
    scene.click(IN_THE_BALL)
    scene.click(IN_THE_L, positive=False)
    scene.app.reset()
    np.testing.assert_array_equal(scene.segment(), painted)
    np.testing.assert_array_equal(scene.segment("B"), other)


# -- 3. edits made outside the effect ----------------------------------------------------------------------------


def test_after_the_editors_undo_the_next_click_starts_from_the_segment(scene):
    scene.click(IN_THE_L)
    scene.app.editor.undo()  # Ctrl+Z in the Segment Editor: the effect is not told
    scene.click(IN_THE_L)
    assert dice(scene.segment(), scene.letter_l) >= 0.9


def test_after_another_tools_erase_the_next_click_starts_from_the_segment(scene):
    scene.click(IN_THE_L)
    scene.app.set_segment_array(scene.segmentation, "A", np.zeros(SHAPE, np.uint8))  # e.g. Erase, all of it
    painted = box(np.s_[8:20, 60:85, 5:20])  # then Paint, beside the L
    scene.app.set_segment_array(scene.segmentation, "A", painted)
    scene.click(IN_THE_L)
    assert dice(scene.segment(), scene.letter_l | painted.astype(bool)) >= 0.9
    scene.click(IN_THE_L, positive=False)
    np.testing.assert_array_equal(scene.segment(), painted)  # the paint is the segment's own


# -- 4. prompts belong to (segmentation, segment) ----------------------------------------------------------------


def test_prompts_belong_to_the_segmentation_and_the_segment(scene):
    first = scene.app.add_segmentation(scene.volume, ["Segment_1"], name="first")
    second = scene.app.add_segmentation(scene.volume, ["Segment_1"], name="second")  # Slicer 5.6 numbers alike
    scene.app.select_segment(first, "Segment_1")
    effect = scene.app.activate_effect(ThresholdPredictor())
    scene.click(IN_THE_L)
    scene.app.select_segment(second, "Segment_1")
    effect = scene.app.activate_effect(ThresholdPredictor())
    assert scene.markups().GetNumberOfControlPoints() == 0
    assert not effect.undoButton.enabled and not effect.resetButton.enabled
    scene.click(IN_THE_BALL)
    assert dice(scene.app.segment_array(second, "Segment_1"), scene.ball) >= 0.9  # not the first's L as well
    assert dice(scene.app.segment_array(first, "Segment_1"), scene.letter_l) >= 0.9


# -- 5. a moved volume -------------------------------------------------------------------------------------------


def test_moving_the_volume_starts_new_prompts_on_the_moved_voxels(scene):
    scene.click(IN_THE_L)
    scene.app.reset()
    shift = np.eye(4)
    shift[0, 3] = 10.0  # voxels along the volume's I axis: on the segmentation's grid the L moves by 10 columns
    to_parent = slicer.util.arrayFromTransformMatrix(scene.volume_transform)
    moved = to_parent @ scene.ijk_to_ras @ shift @ np.linalg.inv(scene.ijk_to_ras)
    slicer.util.updateTransformMatrixFromArray(scene.volume_transform, moved)
    scene.click(IN_THE_L)  # the L where it now is
    assert scene.markups().GetNumberOfControlPoints() == 1
    assert dice(scene.segment(), np.roll(scene.letter_l, 10, axis=2)) >= 0.9


# -- 6. markups --------------------------------------------------------------------------------------------------


def test_markups_exist_only_while_active_and_leave_the_users_place_list_active():
    with SlicerCoreApp() as app:
        voxels, letter_l, _ = letter_and_ball()
        volume = app.add_volume(voxels, np.diag([*SPACING, 1.0]))
        segmentation = app.add_segmentation(volume, ["A"])
        user = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
        selection = app.application_logic.GetSelectionNode()
        assert selection.GetActivePlaceNodeID() == user.GetID()

        def ours():
            return [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if n.GetName() in MARKUPS]

        app.select_segment(segmentation, "A")  # the editor tells every effect of the new source volume
        app.editor.setSourceVolumeNode(app.add_volume(voxels, np.diag([*SPACING, 1.0]), name="other"))
        app.editor.setSourceVolumeNode(volume)
        assert not ours() and selection.GetActivePlaceNodeID() == user.GetID()
        app.activate_effect(ThresholdPredictor())
        k, j, i = IN_THE_L
        app.click((np.diag([*SPACING, 1.0]) @ [i, j, k, 1.0])[:3])
        assert [n.GetNumberOfControlPoints() for n in ours()] == [1, 0]
        assert selection.GetActivePlaceNodeID() == user.GetID()
        app.deactivate_effect()
        assert not ours() and selection.GetActivePlaceNodeID() == user.GetID()


# -- 7. segment selection ----------------------------------------------------------------------------------------


def test_selecting_another_segment_shows_its_clicks_and_buttons(scene):
    scene.click(IN_THE_L)
    scene.app.select_segment(scene.segmentation, "B")  # the editor's setter only
    assert scene.markups().GetNumberOfControlPoints() == 0
    assert not scene.effect.undoButton.enabled and not scene.effect.resetButton.enabled
    scene.click(IN_THE_BALL)
    assert dice(scene.segment("B"), scene.ball) >= 0.9
    assert scene.markups().GetNumberOfControlPoints() == 1
    scene.app.undo_click()  # B's click, not A's
    assert scene.segment("B").sum() == 0 and dice(scene.segment(), scene.letter_l) >= 0.9
    scene.app.select_segment(scene.segmentation, "A")
    assert scene.markups().GetNumberOfControlPoints() == 1 and scene.effect.undoButton.enabled


# -- 8. memory ------------------------------------------------------------------------------------------------


def test_a_segments_prompts_cost_its_regions_not_the_volume_and_are_released():
    """A 400 x 400 x 120 mm volume, of which a click's region of interest (192 mm) covers a quarter."""
    import tracemalloc

    shape = (120, 400, 400)
    voxels = np.random.default_rng(0).normal(0, 20, shape).astype(np.int16)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    voxels[(k - 60) ** 2 + (j - 200) ** 2 + (i - 200) ** 2 <= 15**2] += 600
    voxels[(k - 60) ** 2 + (j - 200) ** 2 + (i - 260) ** 2 <= 15**2] += 600
    with SlicerCoreApp() as app:
        volume = app.add_volume(voxels, np.eye(4))
        segmentation = app.add_segmentation(volume, ["A", "B"])
        app.select_segment(segmentation, "A")
        effect = app.activate_effect(ThresholdPredictor())
        app.click((200.0, 200.0, 60.0))  # the book, its copy of the volume and the image embedding exist now
        app.select_segment(segmentation, "B")
        tracemalloc.start()
        app.click((200.0, 200.0, 60.0))  # where A's click was: the same region, whose embedding is cached
        app.click((260.0, 200.0, 60.0))
        grown = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert grown < 1.25 * voxels.size  # each of its two clicks: about a box of it; before: 2.15 volumes
        keys = effect._book.segment_keys()
        assert len(keys) == 2
        segmentation.GetSegmentation().RemoveSegment("B")
        assert effect._book.segment_keys() == [keys[0]]
        app.editor.setSourceVolumeNode(app.add_volume(voxels[:10], np.eye(4), name="other"))
        assert effect._book is None  # another source volume: the prompts of this one are released
        app.editor.setSourceVolumeNode(volume)
        app.select_segment(segmentation, "A")
        app.click((200.0, 200.0, 60.0))
        assert effect._book.segment_keys() == [keys[0]]
        slicer.mrmlScene.RemoveNode(segmentation)
        assert effect._book.segment_keys() == []
        slicer.mrmlScene.Clear(0)
        assert effect._book is None


# -- 9. one write per click --------------------------------------------------------------------------------------


def test_a_click_updates_the_closed_surface_once(scene):
    """The 3D view regenerates a segment's closed surface on each RepresentationModified of the segmentation node
    (MRMLDM/vtkMRMLSegmentationsDisplayableManager3D.cxx:1026-1031 -> UpdateDisplayableTransforms -> 305
    UpdateDisplayNodePipeline -> 530 CreateRepresentation): done here the same way, counting the regenerations of
    A's surface during one click that both adds and removes voxels."""
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    painted = box(np.s_[3:9, 61:80, 10:31])  # off the logits grid: a refining click re-draws its border
    scene.app.set_segment_array(scene.segmentation, "A", painted)
    scene.effect.refineCheckBox.click()
    scene.segmentation.CreateClosedSurfaceRepresentation()
    segment = scene.segmentation.GetSegmentation().GetSegment("A")
    stamps = [segment.GetRepresentation(surface).GetMTime()]

    def regenerate(caller, event):
        caller.GetSegmentation().CreateRepresentation(surface)
        if segment.GetRepresentation(surface).GetMTime() != stamps[-1]:
            stamps.append(segment.GetRepresentation(surface).GetMTime())

    scene.segmentation.AddObserver(slicer.vtkSegmentation.RepresentationModified, regenerate)
    scene.click(IN_THE_L)
    after = scene.segment()
    assert (after > painted).any() and (after < painted).any()  # the click added and removed voxels
    assert len(stamps) == 2


# -- 10. interaction: the main thread is never blocked -----------------------------------------------------------


@pytest.fixture
def gated(scene):
    gate = GatedPredictor()
    scene.effect = scene.app.activate_effect(gate)
    yield scene, gate
    gate.open.set()  # never leave the worker blocked


def points(node):
    """(position, applied) of a markups node's points; applied points are drawn selected."""
    return [(tuple(np.round(node.GetNthControlPointPositionWorld(i), 3)), bool(node.GetNthControlPointSelected(i)))
            for i in range(node.GetNumberOfControlPoints())]


def test_a_click_returns_at_once_the_event_loop_turns_during_the_encode_and_the_result_lands_later(gated):
    scene, gate = gated
    ticks = []
    timer = slicer_qt_standin.Timer()  # anything else the application does meanwhile, e.g. rendering
    timer.setInterval(5)
    timer.connect("timeout()", lambda: ticks.append(time.monotonic()))
    timer.start()
    assert scene.click(IN_THE_L, wait=False) is True  # back to the view while the encode has not ended
    assert gate.entered.wait(10) and not gate.open.is_set()
    assert scene.segment().sum() == 0
    assert points(scene.markups()) == [(tuple(np.round(scene.world(IN_THE_L), 3)), False)]  # pending, at once
    statuses = []
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # the event loop turns: the timer and the status line go on
        slicer.app.processEvents()
        statuses.append(scene.effect.statusLabel.text)
        time.sleep(0.01)
    timer.stop()
    assert len(ticks) >= 10
    assert statuses[-1].startswith("Encoding the region around the click... ") and statuses[-1] != statuses[0]
    assert float(statuses[-1].split("... ")[1].split(" s")[0]) >= 0.2 and scene.effect.cancelButton.enabled
    gate.open.set()
    scene.app.wait_idle()
    assert dice(scene.segment(), scene.letter_l) >= 0.9
    assert points(scene.markups())[0][1] is True and not scene.effect.cancelButton.enabled
    assert scene.effect.statusLabel.text.startswith(ThresholdPredictor.label)


def test_clicks_made_during_an_encode_show_at_once_and_apply_in_order(gated):
    scene, gate = gated
    scene.click(IN_THE_L, wait=False)
    assert gate.entered.wait(10)
    scene.click((12, 45, 40), positive=False, wait=False)  # in the L's foot, the same region: decode only
    scene.click(IN_THE_BALL, wait=False)
    include, exclude = points(scene.markups()), points(scene.markups(False))
    assert [applied for _, applied in include] == [False, False] and [a for _, a in exclude] == [False]
    assert "2 clicks waiting" in scene.effect.statusLabel.text
    assert scene.segment().sum() == 0
    gate.open.set()
    scene.app.wait_idle()
    key = (scene.segmentation.GetID(), "A")
    assert [(c.positive, tuple(np.round(c.ras, 3))) for c in scene.effect._book.clicks(key)] == [
        (True, tuple(np.round(scene.world(IN_THE_L), 3))), (False, tuple(np.round(scene.world((12, 45, 40)), 3))),
        (True, tuple(np.round(scene.world(IN_THE_BALL), 3)))]
    mask = scene.segment()
    assert dice(mask & scene.ball, scene.ball) >= 0.9  # the last click
    assert mask[scene.letter_l].mean() < 0.1  # the exclude came after the include
    assert all(applied for _, applied in points(scene.markups()) + points(scene.markups(False)))
    assert gate.encodes == 1  # one region of interest holds the L and the ball: encoded once


def test_esc_during_an_encode_leaves_no_markups_and_no_edit(gated):
    scene, gate = gated
    scene.click(IN_THE_L, wait=False)
    assert gate.entered.wait(10)
    scene.click(IN_THE_BALL, wait=False)
    scene.app.escape()  # the Segment Editor's shortcut deactivates the effect
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if "SAM-Med3D" in n.GetName()]
    gate.open.set()
    scene.app.wait_idle()  # the encode ends after the effect has gone: its result is discarded
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if "SAM-Med3D" in n.GetName()]
    assert scene.segment().sum() == 0 and not scene.app.editor_logic.CanUndo() and not scene.app.record.messages
    effect = scene.app.activate_effect(gate)  # back again: the session was not left half-way
    scene.click(IN_THE_L)
    assert dice(scene.segment(), scene.letter_l) >= 0.9 and len(effect._book.clicks(
        (scene.segmentation.GetID(), "A"))) == 1


def test_a_double_click_is_one_click(scene):
    press, double = scene.app.double_click(scene.world(IN_THE_L))
    assert press is True and double is True  # the double-click is the effect's too: the view is not maximised
    assert scene.markups().GetNumberOfControlPoints() == 1
    assert len(scene.effect._book.clicks((scene.segmentation.GetID(), "A"))) == 1
    assert dice(scene.segment(), scene.letter_l) >= 0.9


def test_misclicks_go_to_the_status_line_and_open_no_dialog(scene):
    scene.app.editor_node.SetSelectedSegmentID("")
    scene.click(IN_THE_L)
    assert "Select a segment first" in scene.effect.statusLabel.text
    scene.app.select_segment(scene.segmentation, "A")
    scene.click(IN_THE_L)
    scene.app.click(scene.world(IN_THE_L) - np.array([500.0, 0.0, 0.0]))
    assert "outside the volume" in scene.effect.statusLabel.text
    assert not scene.app.record.messages and not scene.app.record.questions
    assert scene.markups().GetNumberOfControlPoints() == 1 and dice(scene.segment(), scene.letter_l) >= 0.9


def test_a_hidden_segment_is_confirmed_before_the_first_edit(scene):
    display = scene.segmentation.GetDisplayNode()
    display.SetSegmentVisibility("A", False)
    scene.app.record.hidden_segment_answers = ["cancel", "yes"]
    scene.click(IN_THE_L)  # Cancel in the editor's question: nothing happens
    assert len(scene.app.record.questions) == 1 and scene.segment().sum() == 0
    assert scene.markups().GetNumberOfControlPoints() == 0
    scene.click(IN_THE_L)  # Yes: the segment is shown and edited
    assert display.GetSegmentVisibility("A") and dice(scene.segment(), scene.letter_l) >= 0.9
    scene.click(IN_THE_BALL)
    assert len(scene.app.record.questions) == 2  # visible now: not asked again


def test_undo_while_clicks_wait_takes_back_the_newest_first(gated):
    scene, gate = gated
    scene.click(IN_THE_L, wait=False)
    assert gate.entered.wait(10)
    scene.click(IN_THE_BALL, wait=False)
    scene.app.key("BackSpace", wait=False)  # the waiting ball click goes
    assert [applied for _, applied in points(scene.markups())] == [False]
    scene.app.key("BackSpace", wait=False)  # then the running one: discarded when its encode ends
    assert scene.markups().GetNumberOfControlPoints() == 0
    gate.open.set()
    scene.app.wait_idle()
    assert scene.segment().sum() == 0 and scene.markups().GetNumberOfControlPoints() == 0
    scene.click(IN_THE_L)
    scene.click(IN_THE_BALL, wait=False)
    scene.app.reset()  # waits for the running click, then takes back everything
    assert scene.segment().sum() == 0 and scene.markups().GetNumberOfControlPoints() == 0


def test_an_edit_made_while_a_click_runs_is_kept_and_the_click_runs_again_on_it(gated):
    scene, gate = gated
    scene.click(IN_THE_L, wait=False)
    assert gate.entered.wait(10)
    painted = box(np.s_[2:10, 58:86, 2:30])
    scene.app.set_segment_array(scene.segmentation, "A", painted)  # another effect, or the editor's Undo
    gate.open.set()
    scene.app.wait_idle()
    assert dice(scene.segment(), scene.letter_l | painted.astype(bool)) >= 0.9
    assert gate.encodes == 1  # run again from what the segment holds: the embedding was kept
    scene.app.reset()
    np.testing.assert_array_equal(scene.segment(), painted)


def test_the_first_click_loads_the_model_on_the_worker_and_the_load_can_be_cancelled(scene, monkeypatch, tmp_path):
    sammed3d = sys.modules["SAMMed3D"]
    logic = sammed3d.SAMMed3DLogic.shared()
    logic.setPredictor(None)
    (tmp_path / "model.pth").write_bytes(b"")
    logic.saveSettings(sammed3d.ModelSettings(model=sammed3d.LOCAL_FILE, local_path=str(tmp_path / "model.pth")))
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, ["tqdm>=4.60"]))
    monkeypatch.setattr(sammed3d, "imported_already", lambda names: [])
    installed, loaded = [], []
    pip_install = slicer.util.pip_install
    monkeypatch.setattr(slicer.util, "pip_install",
                        lambda requirements: installed.append(threading.current_thread()) or pip_install(requirements))
    gate = GatedPredictor()

    def create_predictor(settings, path, token=None):
        loaded.append(threading.current_thread())
        assert gate.open.wait(30)
        return ThresholdPredictor()

    monkeypatch.setattr(sammed3d, "create_predictor", create_predictor)
    inside, asked = [], []  # whether a dialog was opened inside the click handler
    handler, confirm = scene.effect.processInteractionEvents, slicer.util.confirmOkCancelDisplay

    def processInteractionEvents(*args):
        inside.append(True)
        try:
            return handler(*args)
        finally:
            inside.pop()

    monkeypatch.setattr(scene.effect, "processInteractionEvents", processInteractionEvents)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: asked.append(bool(inside)) or confirm(
        *a, **k))
    scene.click(IN_THE_L, wait=False)
    assert scene.markups().GetNumberOfControlPoints() == 1
    while not loaded:
        slicer.app.processEvents()  # from the event loop: asked, installed with a progress dialog, then loading
    assert asked == [False] and installed == [threading.main_thread()]  # asked from the event loop, not the click
    assert loaded[0] is not threading.main_thread()
    assert scene.app.record.progress[-1].closed and "tqdm" in scene.app.record.progress[-1].kwargs["labelText"]
    slicer.app.processEvents()
    assert scene.effect.statusLabel.text.startswith("Loading the model (model.pth)... ")
    scene.effect.cancelButton.click()
    assert scene.markups().GetNumberOfControlPoints() == 0 and "Cancelled" in scene.effect.statusLabel.text
    gate.open.set()
    scene.app.wait_idle()
    assert logic.loadedPredictor() is None and scene.segment().sum() == 0
    scene.click(IN_THE_L)  # loads again, and now applies
    assert isinstance(logic.loadedPredictor(), ThresholdPredictor) and dice(scene.segment(), scene.letter_l) >= 0.9


def test_a_model_that_cannot_load_is_a_dialog_and_its_clicks_go(scene, monkeypatch):
    sammed3d = sys.modules["SAMMed3D"]
    logic = sammed3d.SAMMed3DLogic.shared()
    logic.setPredictor(None)
    logic.saveSettings(sammed3d.ModelSettings(model=sammed3d.LOCAL_FILE, local_path="/nonexistent/model.pth"))
    scene.click(IN_THE_L)
    assert len(scene.app.record.messages) == 1 and "/nonexistent/model.pth does not exist" in (
        scene.app.record.messages[0])
    assert scene.markups().GetNumberOfControlPoints() == 0 and scene.segment().sum() == 0


def test_markers_contrast_with_any_segment_and_show_in_slice_views_only(scene):
    scene.click(IN_THE_L)
    scene.click(IN_THE_BALL, positive=False)
    nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if "SAM-Med3D" in n.GetName()]
    names = [n.GetName() for n in nodes]
    for kind in ("include", "exclude"):  # the dark outline is made first, so it is drawn beneath the marker
        assert names.index(f"SAM-Med3D outline {kind}") < names.index(f"SAM-Med3D {kind}")
    for node in nodes:
        display = node.GetDisplayNode()
        assert display.GetVisibility2D() and not display.GetVisibility3D() and display.GetUseGlyphScale()
        assert points(node) and all(applied for _, applied in points(node))
    include, exclude = scene.markups().GetDisplayNode(), scene.markups(False).GetDisplayNode()
    outline = slicer.util.getFirstNodeByName("SAM-Med3D outline include").GetDisplayNode()
    assert include.GetSelectedColor()[1] > 0.8 > max(include.GetSelectedColor()[0], include.GetSelectedColor()[2])
    assert exclude.GetSelectedColor()[0] > 0.9 > 0.2 > max(exclude.GetSelectedColor()[1:])
    assert max(outline.GetSelectedColor()) < 0.1 and outline.GetGlyphScale() > include.GetGlyphScale()
    scene.app.deactivate_effect()
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if "SAM-Med3D" in n.GetName()]


def test_a_click_through_the_remote_server_says_where_it_was_encoded(scene, tiny_export, encoder_server):
    """The effect runs the remote backend through the predictor protocol like any other: the click is applied, the
    worker keeps the main thread free meanwhile, and the status line says the region was encoded on the server."""
    from SAMMed3DLib.backends.onnx_predictor import OnnxPredictor
    from SAMMed3DLib.backends.remote_predictor import RemotePredictor

    remote = RemotePredictor(encoder_server, tiny_export, device="cpu")
    scene.effect = scene.app.activate_effect(remote)
    assert scene.click(IN_THE_L, wait=False) is True
    scene.app.wait_idle()
    assert points(scene.markups())[0][1] is True and not scene.app.record.messages
    status = scene.effect.statusLabel.text
    assert status.startswith(f"remote server {encoder_server}") and "| encoded on the server, round trip " in status
    through_server = scene.segment()
    assert through_server.any()
    scene.app.key("BackSpace")
    scene.effect = scene.app.activate_effect(OnnxPredictor(tiny_export, providers="cpu"))
    scene.click(IN_THE_L)
    np.testing.assert_array_equal(scene.segment(), through_server)  # the same mask as encoding here
