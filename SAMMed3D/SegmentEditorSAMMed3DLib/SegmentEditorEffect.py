"""The "SAM-Med3D" Segment Editor effect: click on a structure, get it in 3D.

Left-click in a slice view includes, Ctrl+left-click (or the Exclude toggle) excludes. Each click is one undo
step and writes only the box the session changed, through modifySelectedSegmentByLabelmap, so the editor's
editable-area, editable-intensity and overwrite settings hold.

The session runs on the editor's aligned source volume (`sourceVolumeImageData`): the source volume resampled by
Slicer, through the parent transforms between volume and segmentation (GetTransformBetweenNodes), onto the
segmentation's own grid. A click is mapped from world RAS into the segmentation's RAS the same way, and results
are placed by that image's IJK->RAS, so oblique and transformed volumes work and the result has exactly the grid the
segment is edited on (the editable-intensity mask requires it).
"""

import logging
import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from SAMMed3D import SAMMed3DLogic
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, InteractiveSession
from SAMMed3DLib.slicer.geometry import (
    array_ijk_to_ras,
    crop_to_nonzero,
    image_array,
    labelmap_in_extent,
    write_region,
)
from SAMMed3DLib.slicer.messages import user_message
from SAMMed3DLib.slicer.prompts import PromptBook

MARKUPS_NAMES = {True: "SAM-Med3D include", False: "SAM-Med3D exclude"}
MARKUPS_GLYPHS = {True: "Sphere3D", False: "Cross2D"}


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "SAM-Med3D"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = SAMMed3DLogic.shared()
        self._book = None  # PromptBook of the current source volume and geometry
        self._bookKey = None
        self._markups = {}  # positive -> vtkMRMLMarkupsFiducialNode

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        moduleDir = os.path.dirname(os.path.dirname(__file__))
        iconPath = os.path.join(moduleDir, "Resources", "Icons", "SegmentEditorSAMMed3D.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment a structure in 3D with SAM-Med3D.<p>"
            "<b>Left-click</b>: include. <b>Ctrl+left-click</b> or <b>X</b> then click: exclude. "
            "<b>Backspace</b>: undo the last click. <b>Shift+Backspace</b>: reset this segment's clicks.<p>"
            "Clicks belong to the selected segment. <i>Undo click</i> takes back a click and its prompt; the Segment "
            "Editor's Undo restores the segment only. Choose the model in the SAM-Med3D module.</html>"
        )

    # -- options panel -----------------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.excludeButton = qt.QPushButton("Exclude")
        self.excludeButton.checkable = True
        self.excludeButton.toolTip = "Clicks exclude (X in a slice view). Ctrl+click excludes without this."
        self.refineCheckBox = qt.QCheckBox("Refine the segment's current content")
        self.refineCheckBox.toolTip = (
            "The first click on a segment starts from what the segment holds (e.g. made by another tool) "
            "as mask prompt, instead of from empty."
        )
        self.undoButton = qt.QPushButton("Undo click")
        self.undoButton.toolTip = "Undo the last click of this segment (Backspace in a slice view)."
        self.resetButton = qt.QPushButton("Reset")
        self.resetButton.toolTip = "Forget this segment's clicks and restore its content (Shift+Backspace)."
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True

        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.excludeButton)
        buttons.addWidget(self.undoButton)
        buttons.addWidget(self.resetButton)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)
        self.scriptedEffect.addLabeledOptionsWidget("Status:", self.statusLabel)

        self.excludeButton.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.refineCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.undoButton.connect("clicked()", self.undoClick)
        self.resetButton.connect("clicked()", self.resetClicks)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Exclude", 0)
        self.scriptedEffect.setParameterDefault("Refine", 0)

    def updateGUIFromMRML(self):
        for widget, name in ((self.excludeButton, "Exclude"), (self.refineCheckBox, "Refine")):
            wasBlocked = widget.blockSignals(True)
            widget.checked = self.scriptedEffect.integerParameter(name) != 0
            widget.blockSignals(wasBlocked)
        clicks = self._clicks()
        self.undoButton.enabled = bool(clicks)
        self.resetButton.enabled = bool(clicks)
        if not self.statusLabel.text:
            self.statusLabel.text = self.logic.statusText()
        self.updateMarkups()

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Exclude", 1 if self.excludeButton.checked else 0)
        self.scriptedEffect.setParameter("Refine", 1 if self.refineCheckBox.checked else 0)

    def activate(self):
        self.updateMarkups()

    def deactivate(self):
        for node in self._markups.values():
            if node.GetScene():
                slicer.mrmlScene.RemoveNode(node)
        self._markups = {}

    def sourceVolumeNodeChanged(self):
        self._forgetPrompts()

    def referenceGeometryChanged(self):
        self._forgetPrompts()

    # -- interaction -------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if callerInteractor.GetShiftKey() or callerInteractor.GetAltKey():
                return False
            positive = not (callerInteractor.GetControlKey() or self.excludeButton.checked)
            self.addClick(self.xyToRas(callerInteractor.GetEventPosition(), viewWidget), positive)
            return True
        if eventId == vtk.vtkCommand.KeyPressEvent:
            key = callerInteractor.GetKeySym()
            if key == "BackSpace":
                if callerInteractor.GetShiftKey():
                    self.resetClicks()
                else:
                    self.undoClick()
                return True
            if key in ("x", "X") and not callerInteractor.GetControlKey():
                self.excludeButton.checked = not self.excludeButton.checked
                return True
        return False

    def addClick(self, worldRas, positive):
        """One include/exclude click at a world RAS point. True if the segment was updated; on any error the
        segment stays as it was and the status line (and a dialog) says what to do."""
        segmentId = self.scriptedEffect.parameterSetNode().GetSelectedSegmentID()
        if not segmentId:
            self._showError("Select a segment first.")
            return False
        try:
            predictor = self.logic.predictor()  # dependencies and model on first use, with the user's consent
            book, extent, imageToWorld = self._promptBook(predictor)
            firstEncode = not book.has_session(segmentId)
            progress = None
            if firstEncode:
                progress = slicer.util.createProgressDialog(
                    labelText="SAM-Med3D: encoding the image around the click...", maximum=0, windowTitle="SAM-Med3D"
                )
                slicer.app.processEvents()
            try:
                with slicer.util.WaitCursor():
                    prediction, edit = book.add_click(
                        segmentId,
                        self._worldToSegmentation(worldRas),
                        Click(tuple(float(v) for v in worldRas), bool(positive)),
                        initial_mask=lambda: self._segmentMask(extent) if self.refineCheckBox.checked else None,
                    )
            finally:
                if progress is not None:
                    progress.close()
        except (SAMMed3DError, ValueError) as error:
            self._showError(user_message(error) + "\n\nThe segment was not changed.")
            return False
        except Exception as error:
            logging.exception("SAM-Med3D click failed")
            self._showError(f"SAM-Med3D failed: {error}\n\nThe segment was not changed. Details are in the log.")
            return False
        self._write(edit, extent, imageToWorld)
        self.statusLabel.text = self.logic.statusText(prediction.timings)
        self.updateGUIFromMRML()
        return True

    def undoClick(self):
        segmentId = self.scriptedEffect.parameterSetNode().GetSelectedSegmentID()
        if self._book is not None:
            edit = self._book.undo(segmentId)
            if edit is not None:
                self._write(edit, *self._bookKey[1:])
            elif self._book.clicks(segmentId):
                self.statusLabel.text = "Older clicks cannot be undone (undo memory is full); use Reset."
        self.updateGUIFromMRML()

    def resetClicks(self):
        segmentId = self.scriptedEffect.parameterSetNode().GetSelectedSegmentID()
        if self._book is not None:
            edit = self._book.reset(segmentId)
            if edit is not None:
                self._write(edit, *self._bookKey[1:])
        self.updateGUIFromMRML()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _promptBook(self, predictor):
        """The prompts of the current source volume, its voxels, the segmentation geometry and the predictor: a
        new book when any of them changed."""
        image = self.scriptedEffect.sourceVolumeImageData()
        sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if image is None or sourceVolumeNode is None or image.GetPointData().GetScalars() is None:
            raise SAMMed3DError("Select a source volume in the Segment Editor first")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        imageToWorld = slicer.util.arrayFromVTKMatrix(matrix)
        extent = tuple(image.GetExtent())
        key = (
            sourceVolumeNode.GetID(), sourceVolumeNode.GetImageData().GetMTime(), extent, imageToWorld.tobytes(),
            id(predictor),
        )
        if self._book is None or self._bookKey[0] != key:
            volume = Volume(image_array(image), array_ijk_to_ras(imageToWorld, extent))
            self._book = PromptBook(lambda initial: InteractiveSession(predictor, volume, initial_mask=initial))
            self._bookKey = (key, extent, imageToWorld)
        return self._book, extent, imageToWorld

    def _forgetPrompts(self):
        self._book, self._bookKey = None, None
        self.updateMarkups()

    def _worldToSegmentation(self, worldRas):
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        worldToSegmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            None, segmentationNode.GetParentTransformNode(), worldToSegmentation
        )
        return worldToSegmentation.TransformPoint(list(worldRas))

    def _segmentMask(self, extent):
        return labelmap_in_extent(self.scriptedEffect.selectedSegmentLabelmap(), extent)

    def _write(self, edit, extent, imageToWorld):
        """Write an edit as one undo step: add the voxels the session added and remove the ones it removed, each as
        a labelmap cropped to the voxels it holds. Other voxels of the segment, even inside the box, stay."""
        changes = []
        for mode, block in (
            (slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd, edit.added),
            (slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove, edit.removed),
        ):
            block, region = crop_to_nonzero(block, edit.region)
            if block.size:
                changes.append((mode, block, region))
        if not changes:
            return
        self.scriptedEffect.saveStateForUndo()
        matrix = slicer.util.vtkMatrixFromArray(imageToWorld)
        for mode, block, region in changes:
            labelmap = slicer.vtkOrientedImageData()
            write_region(labelmap, block, region, extent)
            labelmap.SetImageToWorldMatrix(matrix)
            self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, mode)

    def _clicks(self):
        if self._book is None:
            return []
        return self._book.clicks(self.scriptedEffect.parameterSetNode().GetSelectedSegmentID())

    def _showError(self, message):
        self.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="SAM-Med3D")

    def updateMarkups(self):
        """Show the selected segment's clicks as locked points in its colour (include: sphere, exclude: cross)."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        segmentId = parameterSetNode.GetSelectedSegmentID() if parameterSetNode else None
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode and segmentId else None
        clicks = self._clicks() if segment else []
        for positive in (True, False):
            node = self._markupsNode(positive)
            node.RemoveAllControlPoints()
            if segment:
                node.GetDisplayNode().SetColor(segment.GetColor())
                node.GetDisplayNode().SetSelectedColor(segment.GetColor())
            for click in clicks:
                if click.positive == positive:
                    node.AddControlPoint(*click.ras)

    def _markupsNode(self, positive):
        node = self._markups.get(positive)
        if node is None or node.GetScene() is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", MARKUPS_NAMES[positive])
            node.SetHideFromEditors(True)
            node.SetSaveWithScene(False)
            node.SetLocked(True)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetPointLabelsVisibility(False)
            display.SetGlyphTypeFromString(MARKUPS_GLYPHS[positive])
            self._markups[positive] = node
        return node
