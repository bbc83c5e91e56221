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

Work off the main thread. A click is queued, shown at once as a pending marker, and its encode and decode run on
the module logic's worker thread (SAMMed3DLib.slicer.worker), one click after another in the order they were made;
the result is written on the main thread when the logic's timer delivers it. Reading and writing the segmentation
(MRML, VTK) happen only on the main thread: the worker gets the session, which holds its own copy of the voxels.
The first click loads the model: packages and download (dialogs) run from the event loop, never inside a click
handler, and the load itself on the worker. While the effect handles an event, nothing is delivered, so no click
runs inside another. Undo click and Reset made while clicks wait take back the newest waiting click, or wait for
the running one; Esc (which deactivates the effect) and Cancel drop what waits and discard what runs.

Geometry. The session runs on the editor's aligned source volume (`sourceVolumeImageData`): the source volume
resampled by Slicer, through the parent transforms between volume and segmentation, onto the segmentation's grid.
A click is mapped from world RAS into the segmentation's RAS the same way, and results are placed by that image's
IJK->RAS, so oblique and transformed volumes work and the result has exactly the grid the segment is edited on
(the editable-intensity mask requires it). Other voxels, another grid or another predictor start a new prompt book.
"""

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.util import VTKObservationMixin

from SAMMed3D import SAMMed3DLogic
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.boxed_array import crop_to_nonzero
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, EmbeddingCache, InteractiveSession
from SAMMed3DLib.slicer.geometry import (
    array_ijk_to_ras,
    image_array,
    inside_extent,
    labelmap_in_extent,
    region_extent,
    write_region,
)
from SAMMed3DLib.slicer.messages import user_message
from SAMMed3DLib.slicer.prompts import PromptBook, UndoChain
from SAMMed3DLib.slicer.segments import SegmentationOnGrid, segment_stamp, segmentation_stamp
from SAMMed3DLib.slicer.worker import StagedPredictor

# Markers: per kind a marker node, and an outline node made before it (so drawn beneath it: widgets' representations
# are added to the renderer in the order their nodes were added, Libs/MRML/DisplayableManager/
# vtkMRMLAbstractWidget.cxx:159), dark and larger, so that the marker shows over any segment colour. Applied clicks
# are drawn "selected" (the marker colour), clicks still waiting "unselected" (a paler one).
MARKUPS_NAMES = {True: "SAM-Med3D include", False: "SAM-Med3D exclude"}
OUTLINE_NAMES = {True: "SAM-Med3D outline include", False: "SAM-Med3D outline exclude"}
MARKUPS_GLYPHS = {True: "Sphere3D", False: "ThickCross2D"}  # in slice views: a filled disc, a thick cross
MARKER_COLORS = {True: (0.1, 0.85, 0.2), False: (0.95, 0.1, 0.1)}  # green include, red exclude
PENDING_COLORS = {True: (0.7, 1.0, 0.7), False: (1.0, 0.7, 0.7)}
OUTLINE_COLOR = (0.05, 0.05, 0.05)
MARKER_SCALE, OUTLINE_SCALE = 2.5, 3.5  # % of the view's size, so markers keep their size on screen when zooming
CHANGED_OUTSIDE = "The segment was changed outside SAM-Med3D: its clicks start again from what it holds."
NOT_CHANGED = "The segment was not changed."


@dataclass
class _Action:
    """What the user asked for, waiting for its turn: a click (`click`, and whether it refines the segment's content)
    or Undo click ("undo") or Reset ("reset") of a segment."""

    kind: str
    key: tuple  # (segmentation node ID, segment ID)
    click: Optional[Click] = None
    refine: bool = False


@dataclass
class _Running:
    """The click whose session step runs on the worker, and what it was started against."""

    action: _Action
    job: object
    book: PromptBook
    stamp: tuple  # the segment's stamp when the click started
    rebased: bool  # the segment had been changed outside the effect


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
        self._markups = {}  # (positive, outline) -> vtkMRMLMarkupsFiducialNode, while active
        self._actions = []  # _Action, oldest first, waiting for the worker or the model
        self._running = None  # _Running, while a click's session step runs on the worker
        self._modelWanted = False  # the model is being prepared or loaded for waiting clicks
        self._status = ""  # the status line's last result, shown again when nothing runs

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def cleanup(self):
        self.logic.removeListener(self._showStatus)
        self.removeObservers()

    def icon(self):
        moduleDir = os.path.dirname(os.path.dirname(__file__))
        iconPath = os.path.join(moduleDir, "Resources", "Icons", "SegmentEditorSAMMed3D.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment a structure in 3D with SAM-Med3D: click on it in a slice view.<p>"
            "<b>Left-click</b>: include. <b>Ctrl+left-click</b> (<b>Cmd+left-click</b> on macOS, where Ctrl+click is "
            "a right-click): exclude. <b>X</b> or the Exclude button: plain clicks exclude until pressed again. "
            "A double-click counts as one click.<br>"
            "<b>Backspace</b> or Undo click: take back the segment's last click (a click still waiting goes first). "
            "<b>Shift+Backspace</b> or Reset: take back all of the segment's clicks.<br>"
            "<b>Esc</b>: leave the effect; clicks not applied yet are dropped (a model that is loading goes on "
            "loading). Cancel: the same without leaving.<br>"
            "The Segment Editor's own <b>Undo</b> and <b>Redo</b> (Z and Y, Ctrl+Z and Ctrl+Y, the arrow buttons) "
            "take back and redo any edit, one step per SAM-Med3D click; the next click then continues from what the "
            "segment holds.<p>"
            "While the model works Slicer stays usable: a click shows at once as a pale marker, the status line says "
            "what runs and for how long, and clicks made meanwhile are applied in order (applied: green include, red "
            "exclude). The first click loads the model (seconds to a minute), later clicks in a new region encode "
            "it (about a second on a laptop CPU), clicks nearby only decode.<p>"
            "Clicks belong to the selected segment. What the segment held before stays; voxels a click took from "
            "other segments go back to them when it is undone or excluded. Choose the model in the SAM-Med3D "
            "module.</html>"
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
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "Drop the clicks that wait and stop loading the model (Esc leaves the effect too)."
        self.cancelButton.enabled = False
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True

        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.excludeButton)
        buttons.addWidget(self.undoButton)
        buttons.addWidget(self.resetButton)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)
        status = qt.QHBoxLayout()
        status.addWidget(self.statusLabel)
        status.addWidget(self.cancelButton)
        self.scriptedEffect.addLabeledOptionsWidget("Status:", status)

        self.excludeButton.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.refineCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.undoButton.connect("clicked()", self.undoClick)
        self.resetButton.connect("clicked()", self.resetClicks)
        self.cancelButton.connect("clicked()", self.cancel)

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
        applied, waiting = self._clicks()
        self.undoButton.enabled = bool(applied or waiting)
        self.resetButton.enabled = bool(applied or waiting)
        self._showStatus()
        self.updateMarkups()

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Exclude", 1 if self.excludeButton.checked else 0)
        self.scriptedEffect.setParameter("Refine", 1 if self.refineCheckBox.checked else 0)

    def activate(self):
        # The editor changes the selected segment with the parameter node's setter and tells effects nothing
        # (qMRMLSegmentEditorWidget.cxx:1450-1457): follow the node while active.
        self.addObserver(self.scriptedEffect.parameterSetNode(), vtk.vtkCommand.ModifiedEvent, self._onEditorChanged)
        self.logic.addListener(self._showStatus)
        self.updateGUIFromMRML()

    def deactivate(self):
        """Esc comes here too (the editor's shortcut deactivates the effect): what waits is dropped, what runs is
        discarded when it ends, and the markers go."""
        self.removeObserver(self.scriptedEffect.parameterSetNode(), vtk.vtkCommand.ModifiedEvent, self._onEditorChanged)
        self.logic.removeListener(self._showStatus)
        self._dropWork("Left the effect: clicks not applied yet were dropped.")
        for node in self._markups.values():
            if node.GetScene():
                slicer.mrmlScene.RemoveNode(node)
        self._markups = {}

    def sourceVolumeNodeChanged(self):
        """Every effect of the editor hears this, active or not: release the prompts of another volume."""
        sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if self._bookKey is not None and (sourceVolumeNode is None or sourceVolumeNode.GetID() != self._bookKey[0][0]):
            self._dropWork("Another source volume: clicks not applied yet were dropped.")
            self._forgetBook()
        if self.scriptedEffect.active():
            self.updateGUIFromMRML()

    def _onEditorChanged(self, caller, event):
        self.updateGUIFromMRML()

    def _onSceneClosed(self, caller, event):
        self._dropWork("")
        self._forgetBook()
        self._markups = {}

    # -- interaction -------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        with self.logic.deliveriesHeld():
            if eventId in (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.LeftButtonDoubleClickEvent):
                if callerInteractor.GetShiftKey() or callerInteractor.GetAltKey():
                    return False
                if eventId == vtk.vtkCommand.LeftButtonDoubleClickEvent:
                    # The second press of a double-click arrives as this event, not as a press (VTK's
                    # QVTKInteractorAdapter): its first press was the click. Taken, so the view is not maximised.
                    return True
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
        """One include/exclude click at a world RAS point: queued and shown at once, applied when its turn comes.
        True if queued; a click that cannot apply (no segment, outside the volume) is refused on the status line."""
        segmentationNode, segmentId = self._selection()
        if not segmentId:
            return self._refuse("Select a segment first: SAM-Med3D clicks edit the selected segment.")
        reason = self._outside(worldRas)
        if reason:
            return self._refuse(reason)
        if not self.scriptedEffect.confirmCurrentSegmentVisible():  # the user cancelled editing a hidden segment
            return False
        click = Click(tuple(float(v) for v in worldRas), bool(positive))
        self._actions.append(_Action("click", (segmentationNode.GetID(), segmentId), click,
                                     self.refineCheckBox.checked))
        self._advance()
        self.updateGUIFromMRML()
        return True

    def undoClick(self):
        """Take back the segment's newest click: a waiting one at once, the running one when it ends, else the last
        applied one (the editor's Undo when its newest state is that click, else a new edit that restores the
        segment's own content and gives back what the click took)."""
        self._takeBack(everything=False)

    def resetClicks(self):
        """Take back all of the segment's clicks: the waiting and running ones, then the applied ones."""
        self._takeBack(everything=True)

    def isBusy(self):
        """Whether clicks wait or run, or the model is being prepared for them (scripts and self-tests wait for
        this to end while they turn the event loop)."""
        return bool(self._actions) or self._running is not None or self._modelWanted

    def cancel(self):
        """The Cancel button: drop the clicks that wait, discard the running one, stop waiting for the model."""
        if self._modelWanted:
            self.logic.cancelLoading()
            self._modelWanted = False
        self._dropWork("Cancelled: clicks not applied yet were dropped.")
        self.updateGUIFromMRML()

    def _takeBack(self, everything):
        segmentationNode, segmentId = self._selection()
        if not segmentId:
            return
        key = (segmentationNode.GetID(), segmentId)
        waiting = [action for action in self._actions if action.kind == "click" and action.key == key]
        running = self._running is not None and self._running.action.key == key and not self._running.job.cancelled
        for action in waiting if everything else waiting[-1:]:
            self._actions.remove(action)
        if running and (everything or not waiting):
            self._running.job.cancel()  # discarded when it ends
        if everything or not (waiting or running):
            if self._running is not None or self._actions:
                self._actions.append(_Action("reset" if everything else "undo", key))
            else:
                self._goBack(key, everything)
        self.updateGUIFromMRML()

    def _refuse(self, message):
        """A click that cannot apply: said on the status line (a routine misclick opens no dialog)."""
        self._status = message
        self.statusLabel.text = message
        return False

    def _outside(self, worldRas):
        """Why a click at this world point cannot apply (no source volume, outside it or outside the segmentation's
        geometry), or None."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        sourceVolumeNode = parameterSetNode.GetSourceVolumeNode()
        grid = self.scriptedEffect.sourceVolumeImageData()
        if sourceVolumeNode is None or sourceVolumeNode.GetImageData() is None or grid is None:
            return "Select a source volume in the Segment Editor first."
        where = "R {:.1f}, A {:.1f}, S {:.1f} mm".format(*worldRas)
        toVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, sourceVolumeNode.GetParentTransformNode(), toVolume)
        ijkToRas = vtk.vtkMatrix4x4()
        sourceVolumeNode.GetIJKToRASMatrix(ijkToRas)
        if not inside_extent(slicer.util.arrayFromVTKMatrix(ijkToRas), sourceVolumeNode.GetImageData().GetExtent(),
                             toVolume.TransformPoint(list(worldRas))):
            return f"The click at {where} is outside the volume '{sourceVolumeNode.GetName()}'. {NOT_CHANGED}"
        gridToWorld = vtk.vtkMatrix4x4()
        grid.GetImageToWorldMatrix(gridToWorld)
        if not inside_extent(slicer.util.arrayFromVTKMatrix(gridToWorld), grid.GetExtent(),
                             self._worldToSegmentation(worldRas)):
            return (f"The click at {where} is outside the segmentation's geometry (Segment Editor: Specify "
                    f"geometry). {NOT_CHANGED}")
        return None

    # -- the queue: main thread, one click on the worker at a time --------------------------------------------

    def _advance(self):
        """Start what waits, in order, until a click runs on the worker or waits for the model."""
        while self._running is None and self._actions:
            action = self._actions[0]
            if action.kind != "click":
                self._actions.pop(0)
                self._goBack(action.key, action.kind == "reset")
                continue
            predictor = self.logic.loadedPredictor()
            if predictor is None:
                if not self._modelWanted:
                    self._modelWanted = True
                    # Dependencies and the model file may ask and show progress: from the event loop, not here.
                    qt.QTimer.singleShot(0, self._loadModel)
                return
            self._actions.pop(0)
            self._startClick(action, predictor)
        self._showStatus()

    def _loadModel(self):
        if not self._modelWanted:  # cancelled meanwhile
            return
        if not any(action.kind == "click" for action in self._actions):
            self._modelWanted = False
            return
        try:
            self.logic.loadPredictor(self._modelLoaded)
        except SAMMed3DError as error:
            self._modelFailed(user_message(error))
        except Exception as error:
            logging.exception("SAM-Med3D: preparing the model failed")
            self._modelFailed(f"SAM-Med3D could not prepare the model: {error}")
        self._showStatus()

    def _modelLoaded(self, job):
        if not self._modelWanted or job.cancelled:  # Cancel or Esc: the clicks were dropped then
            return
        self._modelWanted = False
        if job.error is not None:
            if not isinstance(job.error, SAMMed3DError):
                logging.error("SAM-Med3D: loading the model failed", exc_info=job.error)
            self._modelFailed(user_message(job.error))
            return
        self._advance()
        self.updateGUIFromMRML()

    def _modelFailed(self, message):
        """The model cannot load: a real failure, so a dialog; the waiting clicks go."""
        self._modelWanted = False
        self._dropWork("")
        self.updateGUIFromMRML()
        self._showError(f"{message}\n\nThe clicks were not applied; {NOT_CHANGED[0].lower()}{NOT_CHANGED[1:]}")

    def _startClick(self, action, predictor):
        """Prepare the click on the main thread (the prompt book, what the segment holds) and hand its session step
        to the worker."""
        key = action.key
        segmentationNode = slicer.mrmlScene.GetNodeByID(key[0])
        if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(key[1]) is None:
            self._status = "The segment was removed: its waiting clicks were dropped."
            return
        try:
            book = self._currentBook(predictor)
            segments, read = self._reader(segmentationNode, key[1])
            stamp = self._segmentStamp(key)  # nothing below writes the segment before the click's result
            rebased = book.reconcile(key, read, stamp)
            session = book.start_click(key, read, refine=action.refine)
        except (SAMMed3DError, ValueError) as error:
            self._status = f"{user_message(error)} {NOT_CHANGED}"
            return
        sessionRas = tuple(float(v) for v in self._worldToSegmentation(action.click.ras))
        positive = action.click.positive
        job = self.logic.submit("Segmenting at the click", lambda job: session.add_click(sessionRas, positive),
                                self._clickDone)
        self._running = _Running(action, job, book, stamp, rebased)

    def _clickDone(self, job):
        """On the main thread, when the worker ran a click: write it, or discard it (cancelled, failed, or the
        segment changed meanwhile: then it runs again from what the segment holds), then start what waits. A
        failure's dialog comes last, once all is in order (its event loop takes clicks)."""
        running, self._running = self._running, None
        key, book = running.action.key, running.book
        segmentationNode = slicer.mrmlScene.GetNodeByID(key[0])
        gone = segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(key[1]) is None
        failure = None
        if book is not self._book or gone:
            pass  # its prompts were released (another source volume, the scene closed, the segment removed)
        elif job.cancelled:
            book.discard_click(key, job.result)
        elif job.error is not None:
            book.discard_click(key, None)
            if isinstance(job.error, (SAMMed3DError, ValueError)):
                self._status = f"{user_message(job.error)} {NOT_CHANGED}"
            else:
                logging.error("SAM-Med3D click failed", exc_info=job.error)
                failure = f"SAM-Med3D failed: {job.error}\n\n{NOT_CHANGED} Details are in the log."
        elif self._segmentStamp(key) != running.stamp:
            book.discard_click(key, job.result)
            self._actions.insert(0, running.action)  # the embedding is cached: this time it only decodes
        else:
            segments, read = self._reader(segmentationNode, key[1])
            change = book.finish_click(key, job.result, running.action.click, read)
            self._write(key, change, segments, read, click=True)
            if key[0] not in self._watched:
                self._watched[key[0]] = segmentationNode
                self.addObserver(segmentationNode, slicer.vtkSegmentation.SegmentRemoved, self._forgetRemoved)
            status = self.logic.statusText(job.result.timings)
            self._status = CHANGED_OUTSIDE + " " + status if running.rebased else status
        self._advance()
        if self.scriptedEffect.active():
            self.updateGUIFromMRML()
        if failure:
            self._showError(failure)

    def _dropWork(self, message):
        """Drop every waiting action and discard the running click when it ends."""
        if self._running is not None:
            self._running.job.cancel()
        if self._actions or self._running is not None:
            self._status = message
        self._actions = []

    def _showStatus(self):
        """The status line: what runs and for how long, and how many clicks wait; else the last result. Called by
        the logic after each poll of the busy worker."""
        loading = self.logic.loadingJob()
        waiting = sum(1 for action in self._actions if action.kind == "click")
        parts = []
        if self._running is not None and not self._running.job.cancelled:
            parts.append(self._running.job.describe())
        elif self._modelWanted:
            parts.append(loading.describe() if loading else "Preparing the model...")
        if waiting:
            parts.append(f"{waiting} click{'s' if waiting > 1 else ''} waiting")
        self.cancelButton.enabled = bool(parts)
        self.statusLabel.text = " | ".join(parts) if parts else (self._status or self.logic.statusText())

    def _goBack(self, key, everything):
        segmentationNode = slicer.mrmlScene.GetNodeByID(key[0])
        book = self._currentBook()
        if book is None or segmentationNode is None or not book.clicks(key):
            return
        segments, read = self._reader(segmentationNode, key[1])
        if book.reconcile(key, read, self._segmentStamp(key)):
            self._status = CHANGED_OUTSIDE
        elif everything:
            while book.clicks(key) and self._undoWithEditor(book, key, read):
                pass
            if book.clicks(key):
                self._write(key, book.reset(key), segments, read, click=False)
        elif not self._undoWithEditor(book, key, read):
            change = book.undo(key)
            if change is None:
                self._status = "Older clicks cannot be undone (undo memory is full); use Reset."
            else:
                self._write(key, change, segments, read, click=False)

    def _undoWithEditor(self, book, key, read):
        """Undo the key's last click with the editor's Undo, if its newest undo state is that click; True if the
        editor undid something (the book then follows, or starts again from what the segment holds)."""
        stamp = self._segmentationStamp(key)
        editor = self._editorWidget()
        if editor is None or self._chain.last(stamp) != (key, len(book.clicks(key))):
            return False
        editor.undo()
        after = self._segmentationStamp(key)
        if after == stamp:  # no such undo state (beyond the editor's undo memory)
            self._chain.clear(after)
            return False
        if book.undo_in_step(key, read, self._segmentStamp(key)):
            self._chain.undone(after)
        else:
            book.rebase(key, read, self._segmentStamp(key))
            self._chain.clear(after)
            self._status = CHANGED_OUTSIDE
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

    @staticmethod
    def _segmentStamp(key):
        segmentationNode = slicer.mrmlScene.GetNodeByID(key[0])
        return segment_stamp(segmentationNode.GetSegmentation(), key[1]) if segmentationNode else ()

    @staticmethod
    def _segmentationStamp(key):
        segmentationNode = slicer.mrmlScene.GetNodeByID(key[0])
        return key[0], segmentation_stamp(segmentationNode.GetSegmentation())

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
        staged = StagedPredictor(predictor, self.logic.worker)  # its encode names itself on the status line
        self._book = PromptBook(
            lambda initial: InteractiveSession(staged, volume, initial_mask=initial, embeddings=embeddings),
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
        """The segmentation on the book's grid, and `read(region)` for a segment: its layer read directly, or, for a
        layer on another grid, as the editor resamples the selected segment (SAMMed3DError for another segment:
        it was selected when clicked, and is to be selected again)."""
        image = self.scriptedEffect.sourceVolumeImageData()
        segments = SegmentationOnGrid(segmentationNode.GetSegmentation(), image)
        extent = tuple(image.GetExtent())

        def read(region):
            block = segments.segment(segmentId, region)
            if block is None:
                if segmentId != self._selection()[1]:
                    raise SAMMed3DError(f"Select the segment '{segmentId}' again to apply its clicks")
                block = labelmap_in_extent(self.scriptedEffect.selectedSegmentLabelmap(), region_extent(region, extent))
            return block

        return segments, read

    def _write(self, key, change, segments, read, click):
        """Write a change of the key's segment as one undo state and one update of the segmentation; keep the book
        and, for a click, the undo chain in step."""
        if change is None or change.empty:
            return
        segmentationNode, segmentId = slicer.mrmlScene.GetNodeByID(key[0]), key[1]
        region = change.region
        before = self._segmentationStamp(key)
        held = segments.holders(segmentId, region, change.add > 0)
        self.scriptedEffect.saveStateForUndo()
        add = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd
        with slicer.util.NodeModify(segmentationNode):
            self._modify(segmentationNode, segmentId, change.add, region, add, bypassMasking=False)
            self._modify(segmentationNode, segmentId, change.remove, region,
                         slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove, bypassMasking=False)
            for other, block in change.give_back.items():
                if segmentationNode.GetSegmentation().GetSegment(other) is not None:
                    self._modify(segmentationNode, other, block, region, add, bypassMasking=True)
        holds = read(region) > 0
        still = segments.holders(segmentId, region, change.add > 0)
        taken = {other: block & holds & ~still.get(other, np.zeros_like(block)) for other, block in held.items()}
        self._book.written(key, change, read, taken, self._segmentStamp(key))
        if click:
            self._chain.clicked(key, len(self._book.clicks(key)), before, self._segmentationStamp(key))
        else:
            self._chain.clear(self._segmentationStamp(key))

    def _modify(self, segmentationNode, segmentId, block, region, mode, bypassMasking):
        """One modifier labelmap on the aligned source volume's grid, cropped to its voxels, for a segment (the
        clicked one, which may no longer be the selected one, with the editor's masking: what
        modifySelectedSegmentByLabelmap does for the selected one, abstract effect .cxx:265-276). Voxels given back
        to another segment bypass the editable area: they are the way back from this effect's own edit."""
        block, box = crop_to_nonzero(block, region)
        if not block.size:
            return
        image = self.scriptedEffect.sourceVolumeImageData()
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        labelmap = slicer.vtkOrientedImageData()
        write_region(labelmap, block, box, image.GetExtent())
        labelmap.SetImageToWorldMatrix(matrix)
        self.scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentId, labelmap, mode, bypassMasking)

    def _worldToSegmentation(self, worldRas):
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        worldToSegmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            None, segmentationNode.GetParentTransformNode(), worldToSegmentation
        )
        return worldToSegmentation.TransformPoint(list(worldRas))

    def _clicks(self):
        """The selected segment's applied clicks and the clicks still to apply (running and waiting)."""
        segmentationNode, segmentId = self._selection()
        if segmentId is None:
            return [], []
        key = (segmentationNode.GetID(), segmentId)
        applied = self._book.clicks(key) if self._book is not None else []
        running = [self._running.action] if self._running is not None and not self._running.job.cancelled else []
        waiting = [action.click for action in running + self._actions if action.kind == "click" and action.key == key]
        return applied, waiting

    def _showError(self, message):
        """A real failure (the model cannot load, the network failed): the status line and a dialog. From the event
        loop only, never inside an event handler."""
        self._status = message
        self.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="SAM-Med3D")

    def updateMarkups(self):
        """While active, show the selected segment's clicks in the slice views: applied ones in the marker colour,
        those still to apply paler, each over a dark outline."""
        if not self.scriptedEffect.active():
            return
        applied, waiting = self._clicks()
        for positive in (True, False):
            for outline in (True, False):
                node = self._markupsNode(positive, outline)
                wasModifying = node.StartModify()
                node.RemoveAllControlPoints()
                for index, click in enumerate(applied + waiting):
                    if click.positive == positive:
                        point = node.AddControlPoint(*click.ras)
                        node.SetNthControlPointSelected(point, index < len(applied))
                node.EndModify(wasModifying)

    def _markupsNode(self, positive, outline):
        node = self._markups.get((positive, outline))
        if node is None or node.GetScene() is None:
            if not outline:
                self._markupsNode(positive, True)  # the outline first: drawn beneath (see MARKUPS_NAMES)
            # The Markups logic makes every new markups node the active place list (vtkSlicerMarkupsLogic.cxx:480);
            # the user's own list stays the active one.
            selection = slicer.app.applicationLogic().GetSelectionNode()
            activeClass, activeId = selection.GetActivePlaceNodeClassName(), selection.GetActivePlaceNodeID()
            name = OUTLINE_NAMES[positive] if outline else MARKUPS_NAMES[positive]
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            selection.SetReferenceActivePlaceNodeClassName(activeClass)
            selection.SetReferenceActivePlaceNodeID(activeId)
            node.SetHideFromEditors(True)
            node.SetSaveWithScene(False)
            node.SetLocked(True)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetPointLabelsVisibility(False)
            display.SetGlyphTypeFromString(MARKUPS_GLYPHS[positive])
            display.SetVisibility3D(False)  # prompts are drawn where they are made: slice views only
            display.SetUseGlyphScale(True)
            display.SetGlyphScale(OUTLINE_SCALE if outline else MARKER_SCALE)
            display.SetSelectedColor(OUTLINE_COLOR if outline else MARKER_COLORS[positive])
            display.SetColor(OUTLINE_COLOR if outline else PENDING_COLORS[positive])
            self._markups[(positive, outline)] = node
        return node
