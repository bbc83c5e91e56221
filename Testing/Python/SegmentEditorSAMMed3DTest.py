"""Self-tests of the SAM-Med3D Segment Editor effect inside Slicer, without network.

A synthetic volume with an oblique IJK->RAS, anisotropic spacing and a parent transform holds two bright objects
(an asymmetric "L" and a ball). The threshold oracle predictor (SAMMed3DLib.testing.oracle.ThresholdPredictor) stands
in for the network, so the expected mask is known: clicks must land on the right voxels, results in the right place,
undo must restore, a click outside the volume must be refused with a message, and segments keep their own prompts.
A tiny network with random weights, saved to a temporary file, checks the configured-model path when torch exists.

Run: Slicer --testing --python-code "import slicer.testing; slicer.testing.runUnitTest(['<this folder>'],
'SegmentEditorSAMMed3DTest')" (registered with slicer_add_python_unittest in SAMMed3D/CMakeLists.txt).
"""

import os
import tempfile
import unittest

import numpy as np
import SegmentEditorSAMMed3D
import slicer

from SAMMed3D import SAMMed3DLogic
from SAMMed3DLib.slicer.setup import LOCAL_FILE, ModelSettings, missing_packages
from SAMMed3DLib.testing.oracle import ThresholdPredictor
from SAMMed3DLib.testing.scenes import SHAPE, SPACING, letter_and_ball, rotation


class SegmentEditorSAMMed3DTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear(0)
        array, self.letterL, self.ball = letter_and_ball()
        ijkToRas = rotation(2, 30) @ rotation(0, 20) @ np.diag([*SPACING, 1.0])
        ijkToRas[:3, 3] = [-40.0, 25.0, -12.0]
        self.volumeNode = slicer.util.addVolumeFromArray(array, ijkToRas, "SAMMed3D test volume")
        parent = rotation(1, 15)
        parent[:3, 3] = [10.0, -20.0, 5.0]
        self.transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "SAMMed3D test transform")
        self.transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(parent))
        self.volumeNode.SetAndObserveTransformNodeID(self.transformNode.GetID())
        self.voxelToWorld = parent @ ijkToRas

        self.segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        self.segmentationNode.CreateDefaultDisplayNodes()
        self.segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        self.segmentationNode.GetSegmentation().AddEmptySegment("A")
        self.segmentationNode.GetSegmentation().AddEmptySegment("B")

        self.editorWidget = slicer.qMRMLSegmentEditorWidget()
        self.editorWidget.setMRMLScene(slicer.mrmlScene)
        self.editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.editorWidget.setMRMLSegmentEditorNode(self.editorNode)
        self.editorWidget.setSegmentationNode(self.segmentationNode)
        self.editorWidget.setSourceVolumeNode(self.volumeNode)
        self.editorNode.SetSelectedSegmentID("A")

        self.logic = SAMMed3DLogic.shared()
        self.logic.setPredictor(ThresholdPredictor(), "threshold oracle", "cpu")
        if self.editorWidget.effectByName("SAM-Med3D") is None:  # the test ran before startupCompleted()
            SegmentEditorSAMMed3D.registerEditorEffect()
            self.editorWidget.updateEffectList()
        self.editorWidget.setActiveEffectByName("SAM-Med3D")
        self.effect = self.editorWidget.activeEffect().self()

    def tearDown(self):
        self.editorWidget.setActiveEffect(None)
        self.logic.setPredictor(None)
        slicer.mrmlScene.Clear(0)

    # -- helpers -------------------------------------------------------------------------------------------------

    def world(self, kji):
        k, j, i = kji
        return (self.voxelToWorld @ np.array([i, j, k, 1.0]))[:3]

    def segmentArray(self, segmentId):
        return slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentationNode, segmentId, self.volumeNode) > 0

    def centroidWorld(self, mask):
        k, j, i = np.nonzero(mask)
        return (self.voxelToWorld @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]

    def assertMatches(self, mask, truth):
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        self.assertGreaterEqual(dice, 0.9)
        self.assertLess(np.linalg.norm(self.centroidWorld(mask) - self.centroidWorld(truth)), 2.0)

    # -- tests ---------------------------------------------------------------------------------------------------

    def test_click_lands_on_the_voxel_and_the_result_in_place(self):
        clicked = (12, 45, 36)  # in the L's foot, off its centre
        self.assertTrue(self.letterL[clicked])
        self.assertTrue(self.effect.addClick(self.world(clicked), True))
        mask = self.segmentArray("A")
        self.assertTrue(mask[clicked])
        self.assertMatches(mask, self.letterL)
        self.assertEqual(mask[self.ball].sum(), 0)
        self.assertIn("threshold oracle on cpu", self.effect.statusLabel.text)
        include = slicer.util.getNode("SAM-Med3D include")
        self.assertEqual(include.GetNumberOfControlPoints(), 1)
        self.assertTrue(include.GetLocked())
        position = [0.0, 0.0, 0.0]
        include.GetNthControlPointPositionWorld(0, position)
        np.testing.assert_allclose(position, self.world(clicked), atol=1e-3)
        color = self.segmentationNode.GetSegmentation().GetSegment("A").GetColor()
        np.testing.assert_allclose(include.GetDisplayNode().GetSelectedColor(), color)

    def test_exclude_undo_and_reset_restore(self):
        self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), True))
        afterInclude = self.segmentArray("A")
        self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), False))  # exclude the same object
        self.assertLess(self.segmentArray("A").sum(), afterInclude.sum() * 0.1)
        self.assertEqual(slicer.util.getNode("SAM-Med3D exclude").GetNumberOfControlPoints(), 1)
        self.effect.undoClick()
        np.testing.assert_array_equal(self.segmentArray("A"), afterInclude)
        self.effect.resetClicks()
        self.assertEqual(self.segmentArray("A").sum(), 0)
        self.assertEqual(slicer.util.getNode("SAM-Med3D include").GetNumberOfControlPoints(), 0)

    def test_click_outside_the_volume_is_refused_with_a_message(self):
        self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), True))
        before = self.segmentArray("A")
        self.assertFalse(self.effect.addClick(self.world((12, 45, 36)) + np.array([0.0, 0.0, 400.0]), True))
        self.assertIn("outside the volume", self.effect.statusLabel.text)
        self.assertIn("not changed", self.effect.statusLabel.text)
        np.testing.assert_array_equal(self.segmentArray("A"), before)

    def test_switching_segments_keeps_prompts_apart(self):
        self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), True))
        self.editorNode.SetSelectedSegmentID("B")
        self.effect.updateGUIFromMRML()
        self.assertEqual(slicer.util.getNode("SAM-Med3D include").GetNumberOfControlPoints(), 0)
        self.assertTrue(self.effect.addClick(self.world((15, 72, 62)), True))
        self.assertMatches(self.segmentArray("B"), self.ball)
        self.effect.undoClick()  # undoes B's click, not A's
        self.assertEqual(self.segmentArray("B").sum(), 0)
        self.assertMatches(self.segmentArray("A"), self.letterL)
        self.editorNode.SetSelectedSegmentID("A")
        self.effect.updateGUIFromMRML()
        self.assertEqual(slicer.util.getNode("SAM-Med3D include").GetNumberOfControlPoints(), 1)

    def test_refine_starts_from_the_segment_content(self):
        existing = np.zeros(SHAPE, np.uint8)
        existing[2:10, 58:86, 2:30] = 1  # made by another tool, away from both objects
        slicer.util.updateSegmentBinaryLabelmapFromArray(existing, self.segmentationNode, "A", self.volumeNode)
        self.effect.scriptedEffect.setParameter("Refine", 1)
        self.effect.updateGUIFromMRML()
        self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), True))
        mask = self.segmentArray("A")
        self.assertGreater(mask[existing > 0].mean(), 0.5)  # kept, up to the 6 mm logits grid
        self.assertGreater(mask[self.letterL].mean(), 0.85)

    def test_random_weight_model_from_a_file(self):
        if missing_packages("torch") != (False, []):
            self.skipTest("torch (or scipy, tqdm) is not installed in this Slicer: installing needs network")
        import torch

        from SAMMed3DLib.model import build_sam_med3d

        stored = self.logic.settings()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "tiny.pth")
            torch.manual_seed(0)
            torch.save(build_sam_med3d("tiny").state_dict(), path)
            try:
                self.logic.saveSettings(ModelSettings(model=LOCAL_FILE, local_path=path, backend="torch", device="cpu"))
                self.logic.setPredictor(None)
                before = self.segmentArray("A")
                self.assertTrue(self.effect.addClick(self.world((12, 45, 36)), True))
                self.assertIn("PyTorch on cpu", self.effect.statusLabel.text)
                self.assertIn("encode", self.effect.statusLabel.text)
                self.effect.undoClick()
                np.testing.assert_array_equal(self.segmentArray("A"), before)
            finally:
                self.logic.saveSettings(stored)
                self.logic.setPredictor(None)

