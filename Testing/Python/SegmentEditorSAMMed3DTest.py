"""Self-tests of the SAM-Med3D Segment Editor effect inside Slicer, without network.

A synthetic volume with an oblique IJK->RAS, anisotropic spacing and a parent transform holds two bright objects
(an asymmetric "L" and a ball). The threshold oracle predictor (SAMMed3DLib.testing.oracle.ThresholdPredictor) stands
in for the network, so the expected mask is known. Clicks and keys go through the effect's processInteractionEvents
with the Red slice view's interactor, as the Segment Editor delivers them (qMRMLSegmentEditorWidget.cxx:2086). The
same scenarios run outside Slicer on Slicer's own libraries in Testing/test_effect.py.

Run: Slicer --testing --python-code "import slicer.testing; slicer.testing.runUnitTest(['<this folder>'],
'SegmentEditorSAMMed3DTest')" (registered with slicer_add_python_unittest in SAMMed3D/CMakeLists.txt).
"""

import os
import tempfile
import time
import unittest

import numpy as np
import qt
import SegmentEditorSAMMed3D
import slicer
import vtk
from vtk.util import numpy_support

from SAMMed3D import SAMMed3DLogic
from SAMMed3DLib.slicer.setup import LOCAL_FILE, ModelSettings, missing_packages
from SAMMed3DLib.testing.oracle import GatedPredictor, ThresholdPredictor
from SAMMed3DLib.testing.scenes import SHAPE, SPACING, letter_and_ball, rotation

IN_THE_L = (12, 45, 36)  # K,J,I
IN_THE_BALL = (15, 72, 62)
MARKUPS = ("SAM-Med3D include", "SAM-Med3D exclude")


class SegmentEditorSAMMed3DTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear(0)
        if slicer.app.layoutManager() is None:
            self.skipTest("the effect's clicks need Slicer's slice views (run with the main window)")
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

        self.segmentationNode = self.addSegmentation(["A", "B"])
        self.editorWidget = slicer.qMRMLSegmentEditorWidget()
        self.editorWidget.setMRMLScene(slicer.mrmlScene)
        self.editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.editorWidget.setMRMLSegmentEditorNode(self.editorNode)
        self.editorWidget.setSegmentationNode(self.segmentationNode)
        self.editorWidget.setSourceVolumeNode(self.volumeNode)
        self.editorNode.SetSelectedSegmentID("A")

        self.logic = SAMMed3DLogic.shared()
        self.logic.setPredictor(ThresholdPredictor())
        if self.editorWidget.effectByName("SAM-Med3D") is None:  # the test ran before startupCompleted()
            SegmentEditorSAMMed3D.registerEditorEffect()
            self.editorWidget.updateEffectList()
        self.activate()
        self.sliceWidget = slicer.app.layoutManager().sliceWidget("Red")

    def tearDown(self):
        if hasattr(self, "editorWidget"):
            self.editorWidget.setActiveEffect(None)
            self.logic.setPredictor(None)
        slicer.mrmlScene.Clear(0)

    # -- helpers -------------------------------------------------------------------------------------------------

    def addSegmentation(self, segmentIds):
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        for segmentId in segmentIds:
            segmentationNode.GetSegmentation().AddEmptySegment(segmentId)
        return segmentationNode

    def activate(self):
        self.editorWidget.setActiveEffectByName("SAM-Med3D")
        self.effect = self.editorWidget.activeEffect().self()

    def world(self, kji):
        k, j, i = kji
        return (self.voxelToWorld @ np.array([i, j, k, 1.0]))[:3]

    def click(self, kji, positive=True, wait=True, double=False):
        """A left click (Ctrl+click to exclude) at the voxel's centre in the Red view; with `wait`, returns once
        the effect has applied it (it works on its worker thread); `double`: the double-click event that VTK sends
        for a quick second press follows."""
        sliceNode = self.sliceWidget.mrmlSliceNode()
        sliceNode.JumpSliceByCentering(*self.world(kji))
        width, height, _ = sliceNode.GetDimensions()
        self.sliceWidget.interactorStyle().GetInteractor().SetEventPosition(width // 2, height // 2)
        self.send(vtk.vtkCommand.LeftButtonPressEvent, control=not positive)
        if double:
            self.send(vtk.vtkCommand.LeftButtonDoubleClickEvent, control=not positive)
        if wait:
            self.waitIdle()

    def key(self, keySym, shift=False):
        self.sliceWidget.interactorStyle().GetInteractor().SetKeySym(keySym)
        self.send(vtk.vtkCommand.KeyPressEvent, shift=shift)
        self.waitIdle()

    def press(self, button):
        button.click()
        self.waitIdle()

    def waitIdle(self, timeout=60.0):
        """Turn the event loop until the effect and the module's worker have nothing left to do."""
        deadline = time.monotonic() + timeout
        while self.effect.isBusy() or self.logic.worker.busy:
            self.assertLess(time.monotonic(), deadline, "SAM-Med3D was still busy")
            slicer.app.processEvents()
            time.sleep(0.005)

    def send(self, eventId, control=False, shift=False):
        """An event of the Red view's interactor, with these modifier keys, to the effect as the editor passes it;
        the interactor is driven as slicer.util.clickAndDrag drives it."""
        interactor = self.sliceWidget.interactorStyle().GetInteractor()
        interactor.SetControlKey(int(control))
        interactor.SetShiftKey(int(shift))
        try:
            self.assertTrue(self.effect.processInteractionEvents(interactor, eventId, self.sliceWidget))
        finally:
            interactor.SetControlKey(0)
            interactor.SetShiftKey(0)

    def segmentArray(self, segmentId, segmentationNode=None):
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode or self.segmentationNode, segmentId,
                                                          self.volumeNode) > 0

    def paint(self, segmentId, kjiSlices):
        """Paint a box into a segment as another effect does: a modifier on the editor's grid, in Set mode, through
        the effect host (slicer.util.updateSegmentBinaryLabelmapFromArray would place it without the volume's
        parent transform). Returns the segment as read back."""
        grid = self.effect.scriptedEffect.sourceVolumeImageData()
        modifier = slicer.vtkOrientedImageData()
        modifier.SetExtent(grid.GetExtent())
        modifier.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        matrix = vtk.vtkMatrix4x4()
        grid.GetImageToWorldMatrix(matrix)
        modifier.SetImageToWorldMatrix(matrix)
        voxels = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars()).reshape(SHAPE)
        voxels[...] = 0
        voxels[kjiSlices] = 1
        modifier.Modified()
        self.effect.scriptedEffect.modifySegmentByLabelmap(
            self.segmentationNode, segmentId, modifier, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        return self.segmentArray(segmentId)

    def points(self, positive=True):
        node = slicer.util.getFirstNodeByName(MARKUPS[0 if positive else 1])
        return node.GetNumberOfControlPoints() if node else None

    def ourMarkups(self):
        return [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") if n.GetName() in MARKUPS]

    def assertMatches(self, mask, truth, minimum=0.9):
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        self.assertGreaterEqual(dice, minimum)

    # -- tests ---------------------------------------------------------------------------------------------------

    def test_click_lands_on_the_voxel_and_the_result_in_place(self):
        self.click(IN_THE_L)
        mask = self.segmentArray("A")
        self.assertTrue(mask[IN_THE_L])
        self.assertMatches(mask, self.letterL)
        self.assertEqual(mask[self.ball].sum(), 0)
        self.assertIn(ThresholdPredictor.label, self.effect.statusLabel.text)
        include = slicer.util.getNode(MARKUPS[0])
        self.assertEqual(include.GetNumberOfControlPoints(), 1)
        self.assertTrue(include.GetLocked())
        position = [0.0, 0.0, 0.0]
        include.GetNthControlPointPositionWorld(0, position)
        np.testing.assert_allclose(position, self.world(IN_THE_L), atol=1e-3)
        self.assertTrue(include.GetNthControlPointSelected(0))  # applied: drawn in the marker colour
        self.assertFalse(include.GetDisplayNode().GetVisibility3D())

    def test_the_main_thread_turns_while_an_encode_runs(self):
        """A click returns before its encode ends; Slicer's event loop keeps running (here: a timer) while the
        encode runs on the worker thread, which gets the GIL lent by the module's poll; the result lands later."""
        gated = GatedPredictor()
        self.logic.setPredictor(gated)
        ticks = []
        timer = qt.QTimer()
        timer.setInterval(10)
        timer.connect("timeout()", lambda: ticks.append(time.monotonic()))
        timer.start()
        try:
            self.click(IN_THE_L, wait=False)
            self.assertEqual(self.segmentArray("A").sum(), 0)
            self.assertEqual(self.points(), 1)  # shown at once, pending
            start = time.monotonic()
            while time.monotonic() - start < 0.5:
                slicer.app.processEvents()
                time.sleep(0.01)
            self.assertGreaterEqual(len(ticks), 10)
            self.assertIn("Encoding the region around the click", self.effect.statusLabel.text)
        finally:
            gated.open.set()
            timer.stop()
        self.waitIdle()
        self.assertMatches(self.segmentArray("A"), self.letterL)

    def test_esc_during_an_encode_and_a_double_click(self):
        gated = GatedPredictor()
        self.logic.setPredictor(gated)
        self.click(IN_THE_L, wait=False)
        self.editorWidget.setActiveEffect(None)  # what Esc does in the Segment Editor
        self.assertEqual(self.ourMarkups(), [])
        gated.open.set()
        self.waitIdle()
        self.assertEqual(self.segmentArray("A").sum(), 0)
        self.assertEqual(self.ourMarkups(), [])
        self.activate()
        self.click(IN_THE_L, double=True)  # press, then the double-click event: one click
        self.assertEqual(self.points(), 1)
        self.assertMatches(self.segmentArray("A"), self.letterL)

    def test_exclude_undo_and_reset_restore(self):
        self.click(IN_THE_L)
        afterInclude = self.segmentArray("A")
        self.click(IN_THE_L, positive=False)
        self.assertLess(self.segmentArray("A").sum(), afterInclude.sum() * 0.1)
        self.assertEqual(self.points(False), 1)
        self.key("BackSpace")
        np.testing.assert_array_equal(self.segmentArray("A"), afterInclude)
        self.key("BackSpace", shift=True)
        self.assertEqual(self.segmentArray("A").sum(), 0)
        self.assertEqual(self.points(), 0)

    def test_click_outside_the_volume_is_refused_with_a_message(self):
        self.click(IN_THE_L)
        before = self.segmentArray("A")
        self.assertFalse(self.effect.addClick(self.world(IN_THE_L) + np.array([0.0, 0.0, 400.0]), True))
        self.assertIn("outside the volume", self.effect.statusLabel.text)
        self.assertIn("not changed", self.effect.statusLabel.text)
        np.testing.assert_array_equal(self.segmentArray("A"), before)

    def test_overwrite_and_masking_are_the_editors_and_undone_exactly(self):
        other = self.paint("B", np.s_[8:20, 30:60, 5:20])  # over part of the L
        self.click(IN_THE_L)  # the default overwrite mode takes the L's voxels from B
        self.assertEqual((self.segmentArray("B") & self.segmentArray("A")).sum(), 0)
        self.assertLess(self.segmentArray("B").sum(), other.sum())
        self.press(self.effect.undoButton)
        np.testing.assert_array_equal(self.segmentArray("B"), other)
        self.assertEqual(self.segmentArray("A").sum(), 0)
        self.editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
        self.click(IN_THE_L)  # now B's voxels are not editable
        np.testing.assert_array_equal(self.segmentArray("B"), other)
        self.assertEqual((self.segmentArray("A") & other).sum(), 0)
        self.editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        self.press(self.effect.resetButton)
        np.testing.assert_array_equal(self.segmentArray("B"), other)
        self.assertEqual(self.segmentArray("A").sum(), 0)

    def test_the_editors_undo_between_clicks(self):
        self.click(IN_THE_L)
        self.editorWidget.undo()  # Ctrl+Z: the effect is not told
        self.assertEqual(self.segmentArray("A").sum(), 0)
        self.click(IN_THE_L)  # starts from what the segment holds: the L comes back
        self.assertMatches(self.segmentArray("A"), self.letterL)

    def test_switching_segment_segmentation_and_source_volume(self):
        self.click(IN_THE_L)
        self.editorNode.SetSelectedSegmentID("B")  # as the segment list does; the effect follows by itself
        self.assertEqual(self.points(), 0)
        self.assertFalse(self.effect.undoButton.enabled)
        self.click(IN_THE_BALL)
        self.assertMatches(self.segmentArray("B"), self.ball)
        self.editorNode.SetSelectedSegmentID("A")
        self.assertEqual(self.points(), 1)
        self.assertTrue(self.effect.undoButton.enabled)

        second = self.addSegmentation(["A"])  # another segmentation with the same segment IDs
        self.editorWidget.setSegmentationNode(second)
        self.editorNode.SetSelectedSegmentID("A")
        self.activate()
        self.assertEqual(self.points(), 0)
        self.click(IN_THE_BALL)
        self.assertMatches(self.segmentArray("A", second), self.ball)  # not this one's L as well
        self.assertMatches(self.segmentArray("A"), self.letterL)

        other = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.int16), np.eye(4), "SAMMed3D other volume")
        self.editorWidget.setSourceVolumeNode(other)
        self.editorWidget.setSourceVolumeNode(self.volumeNode)
        self.assertEqual(self.points(), 0)  # the other volume released this one's prompts
        self.assertFalse(self.effect.undoButton.enabled)

    def test_markups_only_while_active_and_the_users_place_list_stays_active(self):
        user = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SAMMed3D test points")
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetReferenceActivePlaceNodeID(user.GetID())
        self.click(IN_THE_L)
        self.assertEqual(selection.GetActivePlaceNodeID(), user.GetID())
        self.assertEqual(len(self.ourMarkups()), 2)
        self.editorWidget.setActiveEffect(None)
        self.assertEqual(self.ourMarkups(), [])
        self.assertEqual(selection.GetActivePlaceNodeID(), user.GetID())
        self.activate()
        self.assertEqual(self.points(), 1)
        slicer.mrmlScene.Clear(0)
        self.assertEqual(self.ourMarkups(), [])

    def test_refine_starts_from_the_segment_content(self):
        existing = self.paint("A", np.s_[2:10, 58:86, 2:30])  # made by another tool, away from both objects
        self.effect.scriptedEffect.setParameter("Refine", 1)
        self.click(IN_THE_L)
        mask = self.segmentArray("A")
        self.assertGreater(mask[existing].mean(), 0.5)  # kept, up to the 6 mm logits grid
        self.assertGreater(mask[self.letterL].mean(), 0.85)

    def test_random_weight_model_from_a_file(self):
        if missing_packages("torch") != (False, []):
            self.skipTest("torch (or scipy, safetensors) is not installed in this Slicer: installing needs network")
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
                self.click(IN_THE_L)
                self.assertIn("PyTorch on cpu", self.effect.statusLabel.text)
                self.assertIn("encode", self.effect.statusLabel.text)
                self.press(self.effect.undoButton)
                np.testing.assert_array_equal(self.segmentArray("A"), before)
            finally:
                self.logic.saveSettings(stored)
                self.logic.setPredictor(None)
