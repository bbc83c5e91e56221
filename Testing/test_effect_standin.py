"""The SAM-Med3D Segment Editor effect's own code, run against a small stand-in for Slicer (Testing/slicer_standin.py)
with real VTK, the real session and the threshold oracle: the same scenarios as the self-tests in Testing/Python,
which need a real Slicer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_standin

from SAMMed3DLib.evaluation.metrics import dice
from SAMMed3DLib.testing.oracle import ThresholdPredictor
from SAMMed3DLib.testing.scenes import SHAPE, SPACING, letter_and_ball, rotation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["volume transformed", "both transformed"])
def editor(request):
    """The effect on an oblique, anisotropic volume under a parent transform (and, in the second case, a
    segmentation under another transform)."""
    record = slicer_standin.Record()
    voxels, letter_l, ball = letter_and_ball()
    ijk_to_ras = rotation(2, 30) @ rotation(0, 20) @ np.diag([*SPACING, 1.0])
    ijk_to_ras[:3, 3] = [-40.0, 25.0, -12.0]
    volume_parent = rotation(1, 15)
    volume_parent[:3, 3] = [10.0, -20.0, 5.0]
    segmentation_parent = None
    if request.param == "both transformed":
        segmentation_parent = rotation(0, -10)
        segmentation_parent[:3, 3] = [-7.0, 3.0, 12.0]
    scene = slicer_standin.EditorScene(voxels, ijk_to_ras, volume_parent, segmentation_parent)
    with slicer_standin.installed(record, scene.scene):
        module_spec = importlib.util.spec_from_file_location(
            "SegmentEditorSAMMed3DLib", ROOT / "SAMMed3D" / "SegmentEditorSAMMed3DLib" / "SegmentEditorEffect.py"
        )
        effect_module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(effect_module)
        logic = sys.modules["SAMMed3D"].SAMMed3DLogic.shared()
        logic.setPredictor(ThresholdPredictor())
        effect = effect_module.SegmentEditorEffect(scene.host)
        effect.setupOptionsFrame()
        effect.setMRMLDefaults()
        effect.activate()
        scene.messages, scene.progress, scene.letter_l, scene.ball = record.messages, record.progress, letter_l, ball
        yield effect, scene


def _centroid_world(scene, mask):
    k, j, i = np.nonzero(mask)
    return scene.voxel_to_world((k.mean(), j.mean(), i.mean()))


def test_click_lands_on_the_voxel_and_the_result_in_place(editor):
    effect, scene = editor
    clicked = (12, 45, 36)  # in the L's foot, off its centre
    assert effect.addClick(scene.voxel_to_world(clicked), True)
    mask = scene.segments["A"]
    assert mask[clicked] == 1
    assert dice(mask, scene.letter_l) >= 0.9
    assert np.linalg.norm(_centroid_world(scene, mask) - _centroid_world(scene, scene.letter_l)) < 2.0
    assert mask[scene.ball].sum() == 0 and scene.segments["B"].sum() == 0
    # One undo state, the first encode behind a progress dialog that was closed, and a status line.
    assert len(scene.host.undo_states) == 1
    assert len(scene.progress) == 1 and scene.progress[0].closed
    assert effect.statusLabel.text.startswith(f"{ThresholdPredictor.label} | last click ")
    assert "encode" in effect.statusLabel.text
    include = scene.scene.by_name("SAM-Med3D include")
    assert include.points == [tuple(scene.voxel_to_world(clicked))]
    assert include.locked and include.hidden_from_editors and not include.save_with_scene
    assert include.GetDisplayNode().selected_color == (0.9, 0.4, 0.1)


def test_only_the_changed_box_is_written(editor):
    effect, scene = editor
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    scene.segments["A"][0:2, 0:3, 0:3] = 1  # painted by the user, outside what the session will change
    scene.modified_extents.clear()
    assert effect.addClick(scene.voxel_to_world((15, 20, 16)), True)  # second click, same object
    assert scene.segments["A"][0:2, 0:3, 0:3].all()
    assert scene.modified_extents  # written through modifySelectedSegmentByLabelmap, with explicit extents
    assert len(scene.progress) == 1  # no second encode


def test_exclude_undo_and_reset_restore(editor):
    effect, scene = editor
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    after_include = scene.segments["A"].copy()
    effect.excludeButton.checked = True  # the toggle; Ctrl+click does the same
    effect.updateMRMLFromGUI()
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), not effect.excludeButton.checked)
    assert scene.segments["A"].sum() < 0.1 * after_include.sum()
    assert scene.scene.by_name("SAM-Med3D exclude").GetNumberOfControlPoints() == 1
    assert scene.scene.by_name("SAM-Med3D exclude").GetDisplayNode().glyph == "Cross2D"
    effect.undoClick()
    np.testing.assert_array_equal(scene.segments["A"], after_include)
    assert scene.scene.by_name("SAM-Med3D exclude").GetNumberOfControlPoints() == 0
    effect.resetClicks()
    assert scene.segments["A"].sum() == 0
    assert scene.scene.by_name("SAM-Med3D include").GetNumberOfControlPoints() == 0
    assert len(scene.host.undo_states) == 4  # include, exclude, undo click, reset: one step each
    assert not effect.undoButton.enabled and not effect.resetButton.enabled


def test_click_outside_the_volume_is_refused_with_a_message(editor):
    effect, scene = editor
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    before = scene.segments["A"].copy()
    assert not effect.addClick(scene.voxel_to_world((12, 45, 36)) + np.array([0.0, 0.0, 400.0]), True)
    assert "outside the volume" in effect.statusLabel.text and "not changed" in effect.statusLabel.text
    assert scene.messages and "outside the volume" in scene.messages[-1]
    np.testing.assert_array_equal(scene.segments["A"], before)
    assert len(scene.host.undo_states) == 1
    assert scene.scene.by_name("SAM-Med3D include").GetNumberOfControlPoints() == 1


def test_switching_segments_keeps_prompts_apart(editor):
    effect, scene = editor
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    scene.editor_node.SetSelectedSegmentID("B")
    effect.updateGUIFromMRML()
    include = scene.scene.by_name("SAM-Med3D include")
    assert include.GetNumberOfControlPoints() == 0
    assert effect.addClick(scene.voxel_to_world((15, 72, 62)), True)
    assert dice(scene.segments["B"], scene.ball) >= 0.9
    assert include.GetDisplayNode().selected_color == (0.2, 0.6, 0.9)
    effect.undoClick()  # B's click, not A's
    assert scene.segments["B"].sum() == 0
    assert dice(scene.segments["A"], scene.letter_l) >= 0.9
    scene.editor_node.SetSelectedSegmentID("A")
    effect.updateGUIFromMRML()
    assert include.GetNumberOfControlPoints() == 1


def test_refine_starts_from_the_segment_content(editor):
    effect, scene = editor
    existing = np.zeros(SHAPE, np.uint8)
    existing[2:10, 58:86, 2:30] = 1  # made by another tool, away from both objects
    scene.segments["A"][:] = existing
    effect.refineCheckBox.checked = True
    effect.updateMRMLFromGUI()
    assert effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    assert scene.segments["A"][existing > 0].mean() > 0.5  # kept, up to the 6 mm logits grid; without "Refine": 0
    assert scene.segments["A"][scene.letter_l].mean() > 0.85
    effect.resetClicks()
    np.testing.assert_array_equal(scene.segments["A"], existing)  # back to what the other tool made


def test_model_errors_leave_the_segment_unchanged(editor):
    effect, scene = editor

    class Broken(ThresholdPredictor):
        def decode(self, *args):
            raise RuntimeError("CUDA out of memory")

    effect.logic.setPredictor(Broken())
    assert not effect.addClick(scene.voxel_to_world((12, 45, 36)), True)
    assert "CUDA out of memory" in effect.statusLabel.text and "not changed" in effect.statusLabel.text
    assert scene.segments["A"].sum() == 0 and not scene.host.undo_states
    assert scene.progress[-1].closed  # the first-encode dialog does not stay open
