"""The "SAM-Med3D" Segment Editor effect: click on a structure, get it in 3D.

Left-click in a slice view includes, Ctrl+left-click (or the Exclude toggle) excludes. Prompts, markups and undo
belong to a segment of a segmentation node.

Writing. What a click writes is computed against what the segment holds (SAMMed3DLib.slicer.prompts): the segment
becomes its own content (what it held before the effect touched it, and whatever others added since: never
removed) plus the session's mask, in the box the click changed; voxels an earlier click took from other segments
(Slicer's default overwrite mode erases them there) go back to them when the segment loses them again. A click is
one Segment Editor undo state and one update of the segmentation: its additions, removals and give-backs go through
modifySelectedSegmentByLabelmap/modifySegmentByLabelmap, so the editor's editable area, intensity range and
overwrite mode hold, under one node modify blocker, so that views and the 3D surface update once.

Undo click and Reset are built on the Segment Editor's own undo states. While the segmentation is as the segment's
last click left it, Undo click is the editor's Undo, which restores every segment exactly (the voxels taken from
others, masking, layers), and the session follows, checked voxel for voxel. The effect reaches the editor through
the Qt parent of its options frame, which the editor widget puts into its options area
(Widgets/qMRMLSegmentEditorWidget.cxx:546): its host, qSlicerSegmentEditorAbstractEffect, can save undo states
but not undo. When something else has changed the segmentation since (another segment's click, another effect),
Undo click and Reset write the way back as a new edit: the segment keeps its own content and gives back what its
clicks took. A segment that holds something else than the effect last saw (the editor's Undo/Redo, another
effect, a file) starts new prompts from what it holds.

Geometry. The session runs on the editor's aligned source volume (`sourceVolumeImageData`): the source volume
resampled by Slicer, through the parent transforms between volume and segmentation, onto the segmentation's grid.
A click is mapped from world RAS into the segmentation's RAS the same way, and results are placed by that image's
IJK->RAS, so oblique and transformed volumes work and the result has exactly the grid the segment is edited on
(the editable-intensity mask requires it). Other voxels, another grid or another predictor start a new prompt book.
"""

import logging
import os

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.util import VTKObservationMixin

from SAMMed3D import SAMMed3DLogic
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, EmbeddingCache, InteractiveSession
from SAMMed3DLib.slicer.geometry import (
    array_ijk_to_ras,
    crop_to_nonzero,
    image_array,
    labelmap_in_extent,
    region_extent,
    write_region,
)
from SAMMed3DLib.slicer.messages import user_message
from SAMMed3DLib.slicer.prompts import PromptBook, UndoChain
from SAMMed3DLib.slicer.segments import SegmentationOnGrid, segment_stamp, segmentation_stamp

MARKUPS_NAMES = {True: "SAM-Med3D include", False: "SAM-Med3D exclude"}
MARKUPS_GLYPHS = {True: "Sphere3D", False: "Cross2D"}
CHANGED_OUTSIDE = "The segment was changed outside SAM-Med3D: its clicks start again from what it holds."


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect, VTKObservationMixin):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "SAM-Med3D"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        VTKObservationMixin.__init__(self)
        self.logic = SAMMed3DLogic.shared()
        self._book = None  # PromptBook of the current source volume, grid and predictor
        self._bookKey = None  # (_sourceKey, predictor) of the book
        self._volume = None  # the book's Volume: the source volume sampled on the editor's grid
        self._chain = UndoChain()
        self._watched = {}  # segmentation node ID -> node, observed for removed segments while it has prompts
        self._markups = {}  # positive -> vtkMRMLMarkupsFiducialNode, while active

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def cleanup(self):
        self.removeObservers()

    def icon(self):
        moduleDir = os.path.dirname(os.path.dirname(__file__))
        iconPath = os.path.join(moduleDir, "Resources", "Icons", "SegmentEditorSAMMed3D.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment a structure in 3D with SAM-Med3D.<p>"
            "<b>Left-click</b>: include. <b>Ctrl+left-click</b> or <b>X</b> then click: exclude. "
            "<b>Backspace</b>: undo the last click. <b>Shift+Backspace</b>: reset this segment's clicks.<p>"
            "Clicks belong to the selected segment. What the segment held before stays; voxels a click took from "
            "other segments go back to them when it is undone or excluded. The Segment Editor's Undo takes back a "
            "click as well; the next click then continues from what the segment holds. Choose the model in the "
            "SAM-Med3D module.</html>"
        )

    # -- options panel -----------------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.excludeButton = qt.QPushButton("Exclude")
        self.excludeButton.checkable = True
        self.excludeButton.toolTip = "Clicks exclude (X in a slice view). Ctrl+click excludes without this."
        self.refineCheckBox = qt.QCheckBox("Refine the segment's current content")
        self.refineCheckBox.toolTip = (
            "The first click on a segment starts from what the segment holds (e.g. made by another tool) "
            "as mask prompt, and the clicks may take it away; without this, that content stays as it is."
        )
        self.undoButton = qt.QPushButton("Undo click")
        self.undoButton.toolTip = "Undo the last click of this segment (Backspace in a slice view)."
        self.resetButton = qt.QPushButton("Reset")
        self.resetButton.toolTip = "Undo all clicks of this segment (Shift+Backspace)."
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
        # The editor changes the selected segment with the parameter node's setter and tells effects nothing
        # (qMRMLSegmentEditorWidget.cxx:1450-1457): follow the node while active.
        self.addObserver(self.scriptedEffect.parameterSetNode(), vtk.vtkCommand.ModifiedEvent, self._onEditorChanged)
        self.updateGUIFromMRML()

    def deactivate(self):
        self.removeObserver(self.scriptedEffect.parameterSetNode(), vtk.vtkCommand.ModifiedEvent, self._onEditorChanged)
        for node in self._markups.values():
            if node.GetScene():
                slicer.mrmlScene.RemoveNode(node)
        self._markups = {}

    def sourceVolumeNodeChanged(self):
        """Every effect of the editor hears this, active or not: release the prompts of another volume."""
        sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if self._bookKey is not None and (sourceVolumeNode is None or sourceVolumeNode.GetID() != self._bookKey[0][0]):
            self._forgetBook()
        if self.scriptedEffect.active():
            self.updateGUIFromMRML()

    def _onEditorChanged(self, caller, event):
        self.updateGUIFromMRML()

    def _onSceneClosed(self, caller, event):
        self._forgetBook()
        self._markups = {}

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
        """One include/exclude click at a world RAS point. True if the segment was updated; on any error every
        segment stays as it was and the status line (and a dialog) says what to do."""
        segmentationNode, segmentId = self._selection()
        if not segmentId:
            self._showError("Select a segment first.")
            return False
        key = (segmentationNode.GetID(), segmentId)
        try:
            predictor = self.logic.predictor()  # dependencies and model on first use, with the user's consent
            book = self._currentBook(predictor)
            segments, read = self._reader(segmentationNode, segmentId)
            rebased = book.reconcile(key, read, self._segmentStamp())
            progress = None
            if not book.clicks(key):
                progress = slicer.util.createProgressDialog(
                    labelText="SAM-Med3D: encoding the image around the click...", maximum=0, windowTitle="SAM-Med3D"
                )
                slicer.app.processEvents()
            try:
                with slicer.util.WaitCursor():
                    prediction, change = book.add_click(
                        key,
                        self._worldToSegmentation(worldRas),
                        Click(tuple(float(v) for v in worldRas), bool(positive)),
                        read,
                        refine=self.refineCheckBox.checked,
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
        self._write(key, change, segments, read, click=True)
        if key[0] not in self._watched:
            self._watched[key[0]] = segmentationNode
            self.addObserver(segmentationNode, slicer.vtkSegmentation.SegmentRemoved, self._forgetRemoved)
        status = self.logic.statusText(prediction.timings)
        self.statusLabel.text = CHANGED_OUTSIDE + " " + status if rebased else status
        self.updateGUIFromMRML()
        return True

    def undoClick(self):
        """Take back the segment's last click: the editor's Undo when its newest state is that click, else a new
        edit that restores the segment's own content and gives back what the click took."""
        self._goBack(everything=False)

    def resetClicks(self):
        """Take back all of the segment's clicks, as Undo click does one by one."""
        self._goBack(everything=True)

    def _goBack(self, everything):
        segmentationNode, segmentId = self._selection()
        book = self._currentBook()
        key = (segmentationNode.GetID(), segmentId) if segmentId else None
        if book is None or key is None or not book.clicks(key):
            self.updateGUIFromMRML()
            return
        segments, read = self._reader(segmentationNode, segmentId)
        if book.reconcile(key, read, self._segmentStamp()):
            self.statusLabel.text = CHANGED_OUTSIDE
        elif everything:
            while book.clicks(key) and self._undoWithEditor(book, key, read):
                pass
            if book.clicks(key):
                self._write(key, book.reset(key), segments, read, click=False)
        elif not self._undoWithEditor(book, key, read):
            change = book.undo(key)
            if change is None:
                self.statusLabel.text = "Older clicks cannot be undone (undo memory is full); use Reset."
            else:
                self._write(key, change, segments, read, click=False)
        self.updateGUIFromMRML()

    def _undoWithEditor(self, book, key, read):
        """Undo the key's last click with the editor's Undo, if its newest undo state is that click; True if the
        editor undid something (the book then follows, or starts again from what the segment holds)."""
        stamp = self._segmentationStamp()
        editor = self._editorWidget()
        if editor is None or self._chain.last(stamp) != (key, len(book.clicks(key))):
            return False
        editor.undo()
        after = self._segmentationStamp()
        if after == stamp:  # no such undo state (beyond the editor's undo memory)
            self._chain.clear(after)
            return False
        if book.undo_in_step(key, read, self._segmentStamp()):
            self._chain.undone(after)
        else:
            book.rebase(key, read, self._segmentStamp())
            self._chain.clear(after)
            self.statusLabel.text = CHANGED_OUTSIDE
        return True

    # -- helpers -----------------------------------------------------------------------------------------------

    def _selection(self):
        """(segmentation node, selected segment ID) of the editor; the ID is None when no segment is selected."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        segmentId = parameterSetNode.GetSelectedSegmentID() if segmentationNode else None
        if not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            return segmentationNode, None
        return segmentationNode, segmentId

    def _segmentStamp(self):
        segmentationNode, segmentId = self._selection()
        return segment_stamp(segmentationNode.GetSegmentation(), segmentId)

    def _segmentationStamp(self):
        segmentationNode, _ = self._selection()
        return segmentationNode.GetID(), segmentation_stamp(segmentationNode.GetSegmentation())

    def _editorWidget(self):
        """The qMRMLSegmentEditorWidget that owns this effect: an ancestor of its options frame (see the module
        docstring), or None."""
        widget = self.scriptedEffect.optionsFrame()
        while widget is not None and widget.className() != "qMRMLSegmentEditorWidget":
            widget = widget.parentWidget()
        return widget

    def _currentBook(self, predictor=None):
        """The prompt book of the source volume as it is now on the editor's grid, and of `predictor`: a new one
        when the volume's voxels, its geometry, the transforms between it and the segmentation, the grid or the
        predictor changed. With `predictor` None, the current book if it still fits, else None."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        grid = self.scriptedEffect.sourceVolumeImageData()
        sourceVolumeNode = parameterSetNode.GetSourceVolumeNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        if grid is None or sourceVolumeNode is None or sourceVolumeNode.GetImageData() is None:
            if predictor is None:
                return None
            raise SAMMed3DError("Select a source volume in the Segment Editor first")
        key = self._sourceKey(grid, sourceVolumeNode, segmentationNode)
        voxels = None
        if self._book is not None and key != self._bookKey[0]:
            if key[:3] == self._bookKey[0][:3]:  # same volume and grid: are the voxels the same?
                voxels = self._sampleSource(grid, sourceVolumeNode, segmentationNode)
                if np.array_equal(voxels, self._volume.array):
                    self._bookKey = (key, self._bookKey[1])
            if key != self._bookKey[0]:
                self._forgetBook()
        if self._book is not None and predictor in (None, self._bookKey[1]):
            return self._book
        if predictor is None:
            return None
        self._forgetBook()
        if voxels is None:
            voxels = self._sampleSource(grid, sourceVolumeNode, segmentationNode)
        matrix = vtk.vtkMatrix4x4()
        grid.GetImageToWorldMatrix(matrix)
        volume = Volume(voxels, array_ijk_to_ras(slicer.util.arrayFromVTKMatrix(matrix), grid.GetExtent()))
        embeddings = EmbeddingCache()
        self._book = PromptBook(
            lambda initial: InteractiveSession(predictor, volume, initial_mask=initial, embeddings=embeddings),
            volume.array.shape,
        )
        self._bookKey, self._volume = (key, predictor), volume
        # Release the prompts with the scene, the volume, a segmentation or a segment.
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.EndCloseEvent, self._onSceneClosed)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.NodeRemovedEvent, self._forgetRemoved)
        return self._book

    @staticmethod
    def _sourceKey(grid, sourceVolumeNode, segmentationNode):
        """What the source volume's voxels on the grid depend on: the node and the grid, then the modification
        times of its voxels and of the transforms between volume and segmentation, and its IJK->RAS."""
        gridMatrix, ijkToRas = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        grid.GetImageToWorldMatrix(gridMatrix)
        sourceVolumeNode.GetIJKToRASMatrix(ijkToRas)
        transforms = tuple(
            (node.GetID(), node.GetTransformToWorldMTime()) if node else None
            for node in (sourceVolumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode())
        )
        gridToWorld, volumeToRas = slicer.util.arrayFromVTKMatrix(gridMatrix), slicer.util.arrayFromVTKMatrix(ijkToRas)
        return (
            sourceVolumeNode.GetID(), tuple(grid.GetExtent()), gridToWorld.tobytes(),
            sourceVolumeNode.GetImageData().GetMTime(), volumeToRas.tobytes(), transforms,
        )

    @staticmethod
    def _sampleSource(grid, sourceVolumeNode, segmentationNode):
        """The source volume's first component on the editor's grid, resampled through the transforms as they are
        now, as vtkSlicerSegmentEditorLogic::UpdateAlignedSourceVolume resamples it (Logic/
        vtkSlicerSegmentEditorLogic.cxx:1168-1197). The editor's own copy is not resampled when a parent transform
        gets a new matrix: it compares the transform nodes' modification times (1149-1159), which a new matrix
        leaves as they were."""
        imageData = sourceVolumeNode.GetImageData()
        if imageData.GetNumberOfScalarComponents() > 1:
            extract = vtk.vtkImageExtractComponents()
            extract.SetInputData(imageData)
            extract.SetComponents(0)
            extract.Update()
            imageData = extract.GetOutput()
        source = slicer.vtkOrientedImageData()
        source.ShallowCopy(imageData)
        ijkToRas = vtk.vtkMatrix4x4()
        sourceVolumeNode.GetIJKToRASMatrix(ijkToRas)
        source.SetGeometryFromImageToWorldMatrix(ijkToRas)
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            sourceVolumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), transform
        )
        sampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            source, grid, sampled, True, False, transform, sourceVolumeNode.GetImageBackgroundScalarComponentAsDouble(0)
        )
        return image_array(sampled)

    def _forgetBook(self):
        self._book = self._bookKey = self._volume = None
        self._chain.clear()
        self._unwatch()
        for event, method in ((slicer.vtkMRMLScene.EndCloseEvent, self._onSceneClosed),
                              (slicer.vtkMRMLScene.NodeRemovedEvent, self._forgetRemoved)):
            if self.hasObserver(slicer.mrmlScene, event, method):
                self.removeObserver(slicer.mrmlScene, event, method)

    def _forgetRemoved(self, caller, event):
        """Release the prompts of removed segments and segmentations (all of them with a removed source volume)."""
        if self._book is None:
            return
        if slicer.mrmlScene.GetNodeByID(self._bookKey[0][0]) is None:
            self._forgetBook()
            return
        for key in self._book.segment_keys():
            node = slicer.mrmlScene.GetNodeByID(key[0])
            if node is None or node.GetSegmentation().GetSegment(key[1]) is None:
                self._book.forget(key)
        self._unwatch()

    def _unwatch(self):
        """Stop observing segmentations that have no prompts left (the observation keeps the node alive)."""
        keep = {key[0] for key in self._book.segment_keys()} if self._book else set()
        for nodeId in [nodeId for nodeId in self._watched if nodeId not in keep]:
            self.removeObserver(self._watched.pop(nodeId), slicer.vtkSegmentation.SegmentRemoved, self._forgetRemoved)

    def _reader(self, segmentationNode, segmentId):
        """The segmentation on the book's grid, and `read(region)` for the selected segment: its layer read directly,
        or, for a layer on another grid, as the editor resamples it."""
        image = self.scriptedEffect.sourceVolumeImageData()
        segments = SegmentationOnGrid(segmentationNode.GetSegmentation(), image)
        extent = tuple(image.GetExtent())

        def read(region):
            block = segments.segment(segmentId, region)
            if block is None:
                block = labelmap_in_extent(self.scriptedEffect.selectedSegmentLabelmap(), region_extent(region, extent))
            return block

        return segments, read

    def _write(self, key, change, segments, read, click):
        """Write a change as one undo state and one update of the segmentation; keep the book and, for a click,
        the undo chain in step."""
        if change is None or change.empty:
            return
        segmentationNode, segmentId = self._selection()
        region = change.region
        before = self._segmentationStamp()
        held = segments.holders(segmentId, region, change.add > 0)
        self.scriptedEffect.saveStateForUndo()
        add = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd
        with slicer.util.NodeModify(segmentationNode):
            self._modify(segmentationNode, segmentId, change.add, region, add)
            self._modify(segmentationNode, segmentId, change.remove, region,
                         slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove)
            for other, block in change.give_back.items():
                if segmentationNode.GetSegmentation().GetSegment(other) is not None:
                    self._modify(segmentationNode, other, block, region, add)
        holds = read(region) > 0
        still = segments.holders(segmentId, region, change.add > 0)
        taken = {other: block & holds & ~still.get(other, np.zeros_like(block)) for other, block in held.items()}
        self._book.written(key, change, read, taken, self._segmentStamp())
        if click:
            self._chain.clicked(key, len(self._book.clicks(key)), before, self._segmentationStamp())
        else:
            self._chain.clear(self._segmentationStamp())

    def _modify(self, segmentationNode, segmentId, block, region, mode):
        """One modifier labelmap on the aligned source volume's grid, cropped to its voxels. Voxels given back to
        another segment bypass the editable area: they are the way back from this effect's own edit."""
        block, box = crop_to_nonzero(block, region)
        if not block.size:
            return
        image = self.scriptedEffect.sourceVolumeImageData()
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        labelmap = slicer.vtkOrientedImageData()
        write_region(labelmap, block, box, image.GetExtent())
        labelmap.SetImageToWorldMatrix(matrix)
        if segmentId == self._selection()[1]:
            self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, mode)
        else:
            self.scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentId, labelmap, mode, True)

    def _worldToSegmentation(self, worldRas):
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        worldToSegmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            None, segmentationNode.GetParentTransformNode(), worldToSegmentation
        )
        return worldToSegmentation.TransformPoint(list(worldRas))

    def _clicks(self):
        segmentationNode, segmentId = self._selection()
        if self._book is None or segmentId is None:
            return []
        return self._book.clicks((segmentationNode.GetID(), segmentId))

    def _showError(self, message):
        self.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="SAM-Med3D")

    def updateMarkups(self):
        """While active, show the selected segment's clicks as locked points in its colour (include: sphere,
        exclude: cross)."""
        if not self.scriptedEffect.active():
            return
        segmentationNode, segmentId = self._selection()
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentId else None
        clicks = self._clicks()
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
            # The Markups logic makes every new markups node the active place list (vtkSlicerMarkupsLogic.cxx:480);
            # the user's own list stays the active one.
            selection = slicer.app.applicationLogic().GetSelectionNode()
            activeClass, activeId = selection.GetActivePlaceNodeClassName(), selection.GetActivePlaceNodeID()
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", MARKUPS_NAMES[positive])
            selection.SetReferenceActivePlaceNodeClassName(activeClass)
            selection.SetReferenceActivePlaceNodeID(activeId)
            node.SetHideFromEditors(True)
            node.SetSaveWithScene(False)
            node.SetLocked(True)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetPointLabelsVisibility(False)
            display.SetGlyphTypeFromString(MARKUPS_GLYPHS[positive])
            self._markups[positive] = node
        return node
