"""The extension's Slicer code on Slicer's own non-Qt libraries (the `slicer-core` wheel): a real MRML scene with the
application, Volumes, Segmentations, Markups and Subject Hierarchy logics, a real vtkSlicerSegmentEditorLogic and
vtkMRMLSegmentEditorNode, real slice nodes and interactors, and the wheel's own `slicer.util`.

    app = SlicerCoreApp()
    volume = app.add_volume(voxels_kji, ijk_to_ras)
    segmentation = app.add_segmentation(volume, ["A", "B"])
    app.select_segment(segmentation, "A")
    effect = app.activate_effect(ThresholdPredictor())
    app.click(world_ras)                      # a left click in a slice view, through processInteractionEvents;
                                              # returns once the segment holds the result (wait=False: at once,
                                              # then app.wait_idle() turns the event loop until it is applied)
    mask = app.segment_array(segmentation, "A")
    app.close()                               # or `with SlicerCoreApp() as app:`

Stood in, because the wheel has no Qt: the widgets and Qt's timers with the event loop that fires them when
slicer.app.processEvents() runs (Testing/slicer_qt_standin.py), and three C++ classes written
here in Python, each method naming the lines of Slicer's source it follows (Slicer commit 583e9b37d5, for these
files identical to v5.12.3 and, for the logic calls, to v5.10.0):
  - `EffectHost`: qSlicerSegmentEditorScriptedEffect with its base qSlicerSegmentEditorAbstractEffect, the effect's
    `scriptedEffect`. Since Slicer 5.10 its edits, undo states and coordinates go to vtkSlicerSegmentEditorLogic,
    and so they do here: masking, overwrite, shared layers and undo are the wheel's C++ code.
  - `EffectFactory`: qSlicerSegmentEditorEffectFactory (registration and one clone per editor).
  - `SegmentEditorWidget`: the parts of qMRMLSegmentEditorWidget that drive effects (activation, segmentation and
    source volume selection and what effects are told about them, segment selection, undo/redo, view events).
File names below are relative to Modules/Loadable/Segmentations/ unless they start with Libs/ or Base/.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import slicer  # the wheel: real MRML and logic classes, the real slicer.util
import slicer_qt_standin as standin
import vtk
from vtk.util import numpy_support

MODULE_FOLDER = Path(__file__).resolve().parents[1] / "SAMMed3D"
EFFECT_NAME = "SAM-Med3D"
LOGIC = slicer.vtkSlicerSegmentEditorLogic
SEGMENT_COLORS = ([0.9, 0.4, 0.1], [0.2, 0.6, 0.9], [0.3, 0.8, 0.3], [0.8, 0.8, 0.2])
# What importing the extension adds to sys.modules and to the `slicer` package; all removed again by close().
EXTENSION_MODULES = ("SAMMed3D", "SegmentEditorSAMMed3D", "SegmentEditorSAMMed3DLib")
SLICER_ATTRIBUTES = ("app", "mrmlScene", "modules", "ScriptedLoadableModule", "qSlicerSegmentEditorAbstractEffect",
                     "qSlicerSegmentEditorEffectFactory")


# -- the C++ host of a scripted effect ---------------------------------------------------------------------------


class EffectHost:
    """qSlicerSegmentEditorScriptedEffect (EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx, "scripted") and its
    base qSlicerSegmentEditorAbstractEffect (EditorEffects/qSlicerSegmentEditorAbstractEffect.cxx, "abstract")."""

    # abstract .h:107-113, with the logic's wrapped enum values: ModifySegmentByLabelmap rejects plain ints.
    ModificationModeSet = LOGIC.ModificationModeSet
    ModificationModeAdd = LOGIC.ModificationModeAdd
    ModificationModeRemove = LOGIC.ModificationModeRemove
    ModificationModeRemoveAll = LOGIC.ModificationModeRemoveAll

    def __init__(self, parent=None):
        self.name = "UnnamedScriptedEffect"  # scripted 118
        self.perSegment = True  # abstract .h:485
        self.requireSegments = True  # abstract .h:487
        self._active = False
        self._python = None  # the Python effect, instantiated by setPythonSource
        self._source = None
        self._editor = None  # the widget behind setCallbackSlots
        self._logic = None  # setSegmentEditorLogic
        self._parameterSetNode = None
        self._confirmedSegment = None  # m_AlreadyConfirmedSegmentVisible
        self.optionsFrameWidget = standin.Widget()  # abstract 456-461; the editor adds it to its options (widget 546)
        self.options = []

    # -- Python side (scripted 132-227)
    def setPythonSource(self, path):
        """scripted 132-220: module name from the parent folder, class from the file name (+ "Effect"), taken from
        sys.modules when there, else the file is loaded as that module; the class is instantiated with this host."""
        path = Path(path)
        module_name, class_name = path.parent.name, path.stem if path.stem.endswith("Effect") else path.stem + "Effect"
        module = sys.modules.get(module_name)
        if module is None or not hasattr(module, class_name):
            import importlib.util

            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        self._source = str(path)
        self._python = getattr(module, class_name)(self)
        return True

    def self(self):  # scripted 223-227
        return self._python

    def _call(self, method, *args):
        """PythonCppAPI.callMethod: a method the Python class lacks falls back to the C++ default (None)."""
        function = getattr(self._python, method, None)
        return function(*args) if function is not None else None

    def clone(self):  # scripted: the Python clone() builds a new host with the same source
        return self._call("clone")

    # -- editor connections (abstract 226-232, 1290-1294, 533-538)
    def setCallbackSlots(self, editor):
        self._editor = editor

    def setSegmentEditorLogic(self, logic):
        self._logic = logic

    def setParameterSetNode(self, node):
        self._parameterSetNode = node

    # -- activation (abstract 196-223, scripted 312-329, 402-412, 425-432, 456-491)
    def activate(self):
        """scripted 312-319: the C++ activate (m_Active, then updateGUIFromMRML, abstract 196-206), then Python's."""
        self._active = True
        self.updateGUIFromMRML()
        self._call("activate")

    def deactivate(self):  # scripted 322-329
        self._active = False
        self._call("deactivate")

    def active(self):
        return self._active

    def updateGUIFromMRML(self):  # scripted 475-491: forwarded only while active
        if self._active:
            self._call("updateGUIFromMRML")

    def setMRMLDefaults(self):
        self._call("setMRMLDefaults")

    def cleanup(self):  # scripted 507-515
        self._call("cleanup")

    def setupOptionsFrame(self):
        self._call("setupOptionsFrame")

    def sourceVolumeNodeChanged(self):  # scripted 425-432 (+ masterVolumeNodeChanged, for old effects)
        self._call("sourceVolumeNodeChanged")
        self._call("masterVolumeNodeChanged")

    def processInteractionEvents(self, interactor, eventId, viewWidget):  # scripted 361-382: a bool, else False
        result = self._call("processInteractionEvents", interactor, eventId, viewWidget)
        return result if isinstance(result, bool) else False

    # -- options panel (abstract 456-509)
    def optionsFrame(self):
        return self.optionsFrameWidget

    def addOptionsWidget(self, widget):
        self.options.append(widget)

    def addLabeledOptionsWidget(self, label, widget):
        self.options.append((label, widget))
        return widget

    # -- parameters (abstract 525-530, 541-585, 629-648, 765-836)
    def parameterSetNode(self):
        return self._parameterSetNode

    def parameter(self, name):
        """541-564: "<effect>.<name>" first, then the common "<name>"; '' when neither is set."""
        node = self._parameterSetNode
        if node is None:
            return ""
        value = node.GetAttribute(f"{self.name}.{name}")
        return value if value is not None else (node.GetAttribute(name) or "")

    def integerParameter(self, name):  # 567-585: QString::toInt, 0 when not a number
        try:
            return int(self.parameter(name))
        except ValueError:
            return 0

    def setParameter(self, name, value):  # 629-641, 823-826 (an int as QString::number)
        self.setCommonParameter(f"{self.name}.{name}", value)

    def parameterDefined(self, name):  # 644-660
        node = self._parameterSetNode
        return bool(node and node.GetAttribute(f"{self.name}.{name}"))

    def setParameterDefault(self, name, value):  # 765-772, 829-836
        if not self.parameterDefined(name):
            self.setParameter(name, value)

    def setCommonParameter(self, name, value):
        """775-810: nothing when unchanged; else SetAttribute with modified events disabled, then one
        EffectParameterModified, which the editor forwards to every effect's updateGUIFromMRML (widget 515-521)."""
        node = self._parameterSetNode
        text = str(int(value)) if isinstance(value, (bool, int)) else str(value)
        if node is None or node.GetAttribute(name) == text:
            return
        wasDisabled = node.GetDisableModifiedEvent()
        node.SetDisableModifiedEvent(1)
        node.SetAttribute(name, text)
        node.SetDisableModifiedEvent(wasDisabled)
        node.InvokeCustomModifiedEvent(slicer.vtkMRMLSegmentEditorNode.EffectParameterModified)

    # -- images: abstract 976-1007 emit updateVolumeSignal -> widget updateVolume (2000-2004) -> the logic's
    #    UpdateVolume (logic 1002-1032), whose Python wrapping takes an opaque pointer; the Update* it dispatches to
    #    are called here instead.
    def sourceVolumeImageData(self):  # -> UpdateAlignedSourceVolume, logic 1110-1204
        return self._logic.GetAlignedSourceVolume() if self._logic.UpdateAlignedSourceVolume() else None

    def selectedSegmentLabelmap(self):  # -> UpdateSelectedSegmentLabelmap, logic 1035-1107
        return self._logic.GetSelectedSegmentLabelmap() if self._logic.UpdateSelectedSegmentLabelmap() else None

    # -- edits
    def saveStateForUndo(self):  # abstract 1023-1027 -> widget saveStateForUndo 1993-1997
        self._editor.saveStateForUndo()

    def modifySelectedSegmentByLabelmap(self, modifierLabelmap, modificationMode, bypassMasking=False):
        """abstract 243-247, 265-276: the selected segment of the parameter node's segmentation."""
        node = self._parameterSetNode
        self.modifySegmentByLabelmap(node.GetSegmentationNode(), node.GetSelectedSegmentID() or "", modifierLabelmap,
                                     modificationMode, bypassMasking)

    def modifySegmentByLabelmap(self, segmentationNode, segmentID, modifierLabelmap, modificationMode,
                                bypassMasking=False):
        """abstract 279-310 -> vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap (logic 1663-2105) with the
        whole modifier's extent and perSegment()."""
        if self._logic is None:
            return
        self._logic.ModifySegmentByLabelmap(segmentationNode, segmentID, modifierLabelmap, modificationMode,
                                            (0, -1, 0, -1, 0, -1), bool(self.perSegment), bool(bypassMasking))

    # -- coordinates: abstract 1143-1149 (xyToRas(QPoint)) -> 1112-1125 -> logic XyzToRas 2175-2194; slice node
    #    of the view 1297-1305
    def xyToRas(self, xy, sliceWidget):
        ras = [0.0, 0.0, 0.0]
        LOGIC.XyzToRas([float(xy.x()), float(xy.y()), 0.0], ras, sliceWidget.sliceLogic().GetSliceNode())
        return standin.Vector3D(*ras)

    def confirmCurrentSegmentVisible(self):
        """abstract 663-762: ConfirmedWithoutDialog (1) without a selected segment, when this segment was confirmed
        before (685-694) or is visible in a display node (696-704); else the Yes/No/Cancel question (710-731),
        answered here from `record.hidden_segment_answers` ("yes" when empty): Yes shows the segment (740-748), No
        confirms this segment (752), Cancel returns NotConfirmed (0); answered: ConfirmedWithDialog (2)."""
        node = self._parameterSetNode
        segmentationNode = node.GetSegmentationNode() if node else None
        segmentId = node.GetSelectedSegmentID() if segmentationNode else None
        if not segmentId:
            return 1
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if self._confirmedSegment is segment:
            return 1
        for index in range(segmentationNode.GetNumberOfDisplayNodes()):
            display = segmentationNode.GetNthDisplayNode(index)
            if display and display.GetVisibility() and display.GetSegmentVisibility(segmentId):
                return 1
        record = self._editor.record
        record.questions.append("The currently selected segment is hidden. Would you like to make it visible?")
        answer = record.hidden_segment_answers.pop(0) if record.hidden_segment_answers else "yes"
        if answer == "cancel":
            return 0
        if answer == "yes":
            display = segmentationNode.GetDisplayNode()
            display.SetVisibility(True)
            display.SetSegmentVisibility(segmentId, True)
        else:
            self._confirmedSegment = segment
        return 2

    def selectEffect(self, effectName):  # abstract 313-317 -> widget setActiveEffectByName 1986-1990
        self._editor.setActiveEffectByName(effectName)


class EffectFactory:
    """qSlicerSegmentEditorEffectFactory (EditorEffects/qSlicerSegmentEditorEffectFactory.cxx): the registered
    effects (registerEffect 89-115, one per name), cloned for each editor widget (copyEffects 118-150)."""

    _instance = None

    @classmethod
    def instance(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self.registered = []

    def registerEffect(self, effect):
        if any(other.name == effect.name for other in self.registered):
            return False
        self.registered.append(effect)
        return True

    def copyEffects(self, effects):
        added = []
        for effect in self.registered:
            if any(other.name == effect.name for other in effects):
                continue
            clone = effect.clone()
            effects.append(clone)
            added.append(clone)
        return added


# -- the editor widget -------------------------------------------------------------------------------------------


class SliceView:
    """A slice view without Qt: a real vtkMRMLSliceNode (from the scene, so with orientation presets) and a real
    vtkRenderWindowInteractor without a window; what the effect asks of a qMRMLSliceWidget."""

    def __init__(self, scene, name="Red", dimensions=(256, 256), field_of_view=(256.0, 256.0)):
        self.node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        self.node.SetLayoutName(name)
        self.node.SetOrientation("Axial")
        self.node.SetDimensions(dimensions[0], dimensions[1], 1)
        self.node.SetFieldOfView(field_of_view[0], field_of_view[1], 1.0)
        self.node.UpdateMatrices()
        self.interactor = vtk.vtkRenderWindowInteractor()
        self._logic = types.SimpleNamespace(GetSliceNode=lambda: self.node)

    def className(self):
        return "qMRMLSliceWidget"

    def sliceLogic(self):
        return self._logic

    def centre_on(self, ras):
        """Move the slice so that `ras` lies at the view's centre pixel; return that pixel (x, y)."""
        self.node.JumpSliceByCentering(*[float(v) for v in ras])
        self.node.UpdateMatrices()
        width, height, _ = self.node.GetDimensions()
        return width // 2, height // 2


class SegmentEditorWidget:
    """qMRMLSegmentEditorWidget (Widgets/qMRMLSegmentEditorWidget.cxx, "widget"): its own
    vtkSlicerSegmentEditorLogic, the parameter node, the effects cloned from the factory, and the updates that run
    when the parameter node changes (updateWidgetFromMRML), which is where effects are activated and told about a
    new source volume. Its options area is the Qt parent of each effect's options frame (widget 546)."""

    def __init__(self, scene, application_logic, record=None):
        self.scene = scene
        self.record = record or standin.Record()  # what effects' dialogs asked (confirmCurrentSegmentVisible)
        self.logic = LOGIC()  # widget 254
        # setMRMLScene 1146-1193
        self.logic.SetMRMLApplicationLogic(application_logic)
        self.logic.SetMRMLScene(scene)
        self.logic.SetVerbose(True)
        self.interactionNode = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        self.interactionNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onInteractionNodeModified)
        self.effects = []  # RegisteredEffects
        self._activeEffect = None
        self._segmentationNode = None
        self._sourceVolumeNode = None
        self._parameterSetNode = None
        self.optionsArea = standin.Widget(parent=self)  # EffectsOptionsFrame

    def className(self):
        return "qMRMLSegmentEditorWidget"

    def delete(self):
        """~qMRMLSegmentEditorWidgetPrivate (279-290): every effect's cleanup, then the effects go."""
        for effect in self.effects:
            effect.cleanup()
        self.effects = []
        self._activeEffect = None

    def parentWidget(self):
        return None

    # -- parameter node and effects
    def setMRMLSegmentEditorNode(self, node):
        """1248-1272: observe the node's Modified -> updateWidgetFromMRML, hand it to the logic, initialize."""
        self._parameterSetNode = node
        node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: self.updateWidgetFromMRML())
        self.logic.SetSegmentEditorNode(node)
        self.updateWidgetFromMRML()

    def mrmlSegmentEditorNode(self):
        return self._parameterSetNode

    def updateEffectList(self):
        """480-547: clone the factory's effects; each gets the callbacks, the logic, the parameter node, its
        defaults, EffectParameterModified -> updateGUIFromMRML, its options frame (parented to the widget)."""
        for effect in EffectFactory.instance().copyEffects(self.effects):
            effect.setCallbackSlots(self)
            effect.setSegmentEditorLogic(self.logic)
            effect.setParameterSetNode(self._parameterSetNode)
            effect.setMRMLDefaults()
            self._parameterSetNode.AddObserver(slicer.vtkMRMLSegmentEditorNode.EffectParameterModified,
                                               lambda caller, event, effect=effect: effect.updateGUIFromMRML())
            effect.setupOptionsFrame()
            effect.optionsFrame().setParent(self.optionsArea)

    def effectByName(self, name):  # 1712-1732
        return next((effect for effect in self.effects if effect.name == name), None)

    def activeEffect(self):
        return self._activeEffect

    def setActiveEffect(self, effect):  # 1007-1021: only the parameter node's ActiveEffectName
        self._parameterSetNode.SetActiveEffectName(effect.name if effect else "")

    def setActiveEffectByName(self, name):  # 1986-1990
        self.setActiveEffect(self.effectByName(name))

    # -- what the parameter node's Modified runs
    def updateWidgetFromMRML(self):
        """635-716, the parts effects depend on, under a node modify blocker (651)."""
        node = self._parameterSetNode
        if node is None or self.scene.IsClosing():
            return
        wasModifying = node.StartModify()
        self._updateWidgetFromSegmentationNode()
        self._updateWidgetFromSourceVolumeNode()
        self._updateEffectsSectionFromMRML()
        node.EndModify(wasModifying)

    def _updateWidgetFromSegmentationNode(self):
        """845-927: for a newly selected segmentation, its reference geometry volume becomes the source volume
        (875-878) and its first segment is selected (902-906)."""
        segmentationNode = self.logic.GetSegmentationNode()
        if segmentationNode is self._segmentationNode:
            return
        self._segmentationNode = segmentationNode
        if segmentationNode is None:
            return
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        self.setSourceVolumeNode(segmentationNode.GetNodeReference(role))
        segmentationNode.CreateDefaultDisplayNodes()
        segmentIds = self.logic.GetSegmentIDs()
        if segmentIds:
            self._parameterSetNode.SetSelectedSegmentID(segmentIds[0])

    def _updateWidgetFromSourceVolumeNode(self):
        """930-976: when the logic's source volume changed, every registered effect hears it (975 -> 428-435)."""
        if self.logic.GetSegmentationNode() is None:
            return
        sourceVolumeNode = self.logic.GetSourceVolumeNode()
        if sourceVolumeNode is self._sourceVolumeNode:
            return
        self._sourceVolumeNode = sourceVolumeNode
        for effect in self.effects:
            effect.sourceVolumeNodeChanged()

    def _updateEffectsSectionFromMRML(self):
        """1024-1143: activate the effect the parameter node names; deactivate the previous one first (1072-1075),
        make binary labelmap the source representation (1077-1082), leave place mode (1090-1094)."""
        node = self._parameterSetNode
        effect = self.effectByName(node.GetActiveEffectName() or "")
        if effect is self._activeEffect:
            return
        if self._activeEffect is not None:
            self._activeEffect.deactivate()
        if effect is not None and not self.logic.TrivialSetSourceRepresentationToBinaryLabelmap():
            effect = None
        if effect is not None:
            if self.interactionNode.GetCurrentInteractionMode() != slicer.vtkMRMLInteractionNode.ViewTransform:
                self.interactionNode.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)
            effect.activate()
        self._activeEffect = effect

    def _onInteractionNodeModified(self, caller, event):  # 1228-1238 -> abstract 1268-1280 (place mode ends it)
        if self._activeEffect is not None and (
            self.interactionNode.GetCurrentInteractionMode() != slicer.vtkMRMLInteractionNode.ViewTransform
        ):
            self._activeEffect.selectEffect("")

    # -- selections
    def setSegmentationNode(self, node):  # 1319-1329: a different segmentation deactivates the effect
        if self.logic.GetSegmentationNode() is node:
            return
        self.logic.SetSegmentationNode(node)
        self.setActiveEffect(None)

    def setSourceVolumeNode(self, node):  # 1365-1369
        self.logic.SetSourceVolumeNode(node)

    def setCurrentSegmentID(self, segmentId):  # 1450-1457: the parameter node's setter, nothing else
        self._parameterSetNode.SetSelectedSegmentID(segmentId)

    # -- callbacks of the effects, undo
    def saveStateForUndo(self):  # 1993-1997
        self.logic.SaveStateForUndo()

    def undo(self):  # 2286-2290
        self.logic.Undo()

    def redo(self):  # 2293-2297
        self.logic.Redo()

    def maximumNumberOfUndoStates(self):  # 2246-2250
        return self.logic.GetMaximumNumberOfUndoStates()

    def setMaximumNumberOfUndoStates(self, states):  # 2253-2257
        self.logic.SetMaximumNumberOfUndoStates(states)

    # -- view events
    def processEvents(self, view, eventId):
        """2007-2102: the active effect's processInteractionEvents for an event of a view's interactor; its result
        is the abort flag (2086-2092)."""
        if self._activeEffect is None or self.scene.IsClosing():
            return False
        return self._activeEffect.processInteractionEvents(view.interactor, eventId, view)


def _reference_image(segmentation_node, allocate):
    """An image on the segmentation's reference geometry (vtkSegmentationConverter::DeserializeImageGeometry)."""
    geometry = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, allocate, vtk.VTK_UNSIGNED_CHAR, 1)
    return image


# -- slicer.app and slicer.modules ---------------------------------------------------------------------------------


class Application:
    """slicer.app (qSlicerApplication) for what the extension and the wheel's slicer.util ask of it."""

    applicationName = "SlicerCore"

    def __init__(self, application_logic):
        self._application_logic = application_logic

    def applicationLogic(self):
        return self._application_logic

    def testingEnabled(self):
        return True

    def processEvents(self):
        """QCoreApplication::processEvents: the timers that are due fire (the stand-in's event loop)."""
        standin.EventLoop.process_events()

    def pauseRender(self):  # slicer.util.RenderBlocker
        pass

    def resumeRender(self):
        pass

    def topLevelWidgets(self):  # slicer.util.mainWindow -> None
        return []


class _Module:
    """slicer.modules.<name>: what slicer.util calls, logic()."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


# -- the application ---------------------------------------------------------------------------------------------


class SlicerCoreApp:
    """A Slicer application without Qt, with the SAM-Med3D extension loaded and a Segment Editor (see the module
    docstring). Building one replaces `slicer.mrmlScene`, `slicer.app`, `slicer.modules` and the dialog functions of
    `slicer.util` for the process; close() puts back what was there."""

    def __init__(self):
        self.record = standin.Record()
        self._saved_modules = {name: sys.modules.get(name) for name in (
            *EXTENSION_MODULES, "qt", "ctk", "SegmentEditorEffects", "PyTorchUtils", "slicer.ScriptedLoadableModule",
            "qSlicerSegmentationsEditorEffectsPythonQt")}
        self._saved_attributes = {name: getattr(slicer, name, None) for name in SLICER_ATTRIBUTES}
        replacements = standin.util_replacements(self.record)
        self._saved_util = {name: getattr(slicer.util, name) for name in replacements}
        try:
            self._start(replacements)
        except BaseException:
            self.close()
            raise

    def _start(self, replacements):
        output = vtk.vtkOutputWindow()
        output.SetDisplayModeToAlwaysStdErr()
        vtk.vtkOutputWindow.SetInstance(output)
        # qSlicerCoreApplication::setMRMLScene (Base/QTCore/qSlicerCoreApplication.cxx:1503-1536): the crosshair
        # node, then the application logic, which adds the selection and interaction singletons.
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        # Module logics as qSlicerAbstractCoreModule::logic() (Base/QTCore/qSlicerAbstractCoreModule.cxx:284-309)
        # and qSlicerModuleFactoryManager (181) set them up. Colors: the application logic's vtkMRMLColorLogic
        # (its default colour nodes need no files).
        logics = {
            "Colors": self.application_logic.GetColorLogic(),
            "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
            "Transforms": slicer.vtkSlicerTransformLogic(),
            "Volumes": slicer.vtkSlicerVolumesLogic(),
            "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
            "Markups": slicer.vtkSlicerMarkupsLogic(),
        }
        for name, logic in logics.items():
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(self.scene)
            self.application_logic.SetModuleLogic(name, logic)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)

        qt = standin.qt_module()
        standin.Settings.store = {}
        standin.EventLoop.timers = []
        sys.modules.update({
            "qt": qt, "ctk": standin.ctk_module(), "SegmentEditorEffects": standin.effects_module(qt),
            "PyTorchUtils": standin.pytorch_utils_module(self.record),
            "slicer.ScriptedLoadableModule": standin.scripted_module(),
            "qSlicerSegmentationsEditorEffectsPythonQt": types.SimpleNamespace(
                qSlicerSegmentEditorScriptedEffect=EffectHost),
        })
        for name in EXTENSION_MODULES:
            sys.modules.pop(name, None)
        slicer.mrmlScene = self.scene
        slicer.app = Application(self.application_logic)
        slicer.modules = types.SimpleNamespace(**{name.lower(): _Module(logic) for name, logic in logics.items()})
        slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
        slicer.qSlicerSegmentEditorAbstractEffect = EffectHost
        slicer.qSlicerSegmentEditorEffectFactory = EffectFactory
        EffectFactory._instance = None
        for name, function in replacements.items():
            setattr(slicer.util, name, function)
        sys.path.insert(0, str(MODULE_FOLDER))

        # The Segment Editor module's widget (Modules/Scripted/SegmentEditor/SegmentEditor.py:60-79): 10 undo
        # states, a parameter node, the effects registered at startup (SegmentEditorSAMMed3D.py).
        import SegmentEditorSAMMed3D

        SegmentEditorSAMMed3D.registerEditorEffect()
        self.editor = SegmentEditorWidget(self.scene, self.application_logic, self.record)
        self.editor.setMaximumNumberOfUndoStates(10)
        self.editor_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "SegmentEditor")
        self.editor.setMRMLSegmentEditorNode(self.editor_node)
        self.editor.updateEffectList()
        self.editor_logic = self.editor.logic
        self.view = SliceView(self.scene)

    def close(self):
        """Close the scene (Slicer's File > Close Scene) and put back what the constructor replaced."""
        if hasattr(self, "editor"):
            self.editor.setActiveEffect(None)
            self.scene.Clear(0)
            self.editor.delete()
        if str(MODULE_FOLDER) in sys.path:
            sys.path.remove(str(MODULE_FOLDER))
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in self._saved_attributes.items():
            if value is None and hasattr(slicer, name):
                delattr(slicer, name)
            elif value is not None:
                setattr(slicer, name, value)
        for name, function in self._saved_util.items():
            setattr(slicer.util, name, function)
        standin.EventLoop.timers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- data
    def add_volume(self, array_kji, ijk_to_ras, name="volume"):
        """A scalar volume of the K,J,I array with that IJK->RAS matrix, with its subject hierarchy item (Slicer's
        Qt subject hierarchy plugins add one for every data node; ModifySegmentByLabelmap needs it, logic
        2085-2104)."""
        node = slicer.util.addVolumeFromArray(np.ascontiguousarray(array_kji), ijkToRAS=np.asarray(ijk_to_ras),
                                              name=name)
        self._subject_hierarchy_item(node)
        return node

    def add_segmentation(self, volume_node, segment_ids, name="segmentation"):
        """A segmentation on the volume's geometry whose segments have exactly these IDs (names equal), made with
        vtkSegmentation::AddEmptySegment, so they share one labelmap layer, as the editor's Add does."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        for index, segment_id in enumerate(segment_ids):
            node.GetSegmentation().AddEmptySegment(segment_id, segment_id, SEGMENT_COLORS[index % len(SEGMENT_COLORS)])
        self._subject_hierarchy_item(node)
        return node

    def _subject_hierarchy_item(self, node):
        hierarchy = self.scene.GetSubjectHierarchyNode()
        if not hierarchy.GetItemByDataNode(node):
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)

    def set_segment_array(self, segmentation_node, segment_id, array_kji):
        """Paint a segment as another tool would: the segment becomes the array (on the segmentation's grid, see
        segment_array) through vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap in Set mode, so the editor's
        masking and overwrite settings apply, after an undo state when it is the editor's segmentation (the
        editor's undo history is that segmentation's)."""
        modifier = _reference_image(segmentation_node, allocate=True)
        array = np.ascontiguousarray(array_kji, dtype=np.uint8)
        values = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars())
        if values.size != array.size:
            raise ValueError(f"the array has {array.shape} voxels (K,J,I), the segmentation's grid "
                             f"{modifier.GetDimensions()} (I,J,K)")
        values[:] = array.ravel()
        modifier.Modified()
        if segmentation_node is self.editor_logic.GetSegmentationNode():
            self.editor.saveStateForUndo()
        self.editor_logic.ModifySegmentByLabelmap(segmentation_node, segment_id, modifier, LOGIC.ModificationModeSet,
                                                  (0, -1, 0, -1, 0, -1), True, False)

    @staticmethod
    def segment_array(segmentation_node, segment_id):
        """The segment as uint8 K,J,I on the segmentation's grid (its reference image geometry: for add_segmentation
        the volume's grid as it was placed then), read as the editor reads a segment: its layer's label
        thresholded and resampled onto that grid (vtkSlicerSegmentEditorLogic.cxx:1083-1104), so exactly."""
        reference = _reference_image(segmentation_node, allocate=False)
        i0, i1, j0, j1, k0, k1 = reference.GetExtent()
        out = np.zeros((k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1), np.uint8)
        labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        extent = labelmap.GetExtent()
        if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
            return out
        threshold = vtk.vtkImageThreshold()
        threshold.SetInputData(labelmap)
        label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        threshold.ThresholdBetween(label, label)
        threshold.SetInValue(1)
        threshold.SetOutValue(0)
        threshold.SetOutputScalarTypeToUnsignedChar()
        threshold.Update()
        binary = slicer.vtkOrientedImageData()
        binary.ShallowCopy(threshold.GetOutput())
        binary.CopyDirections(labelmap)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(binary, reference, resampled,
                                                                                          False)
        a0, a1, b0, b1, c0, c1 = resampled.GetExtent()
        if a0 > a1 or b0 > b1 or c0 > c1:
            return out
        values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
        out[c0 - k0:c1 - k0 + 1, b0 - j0:b1 - j0 + 1, a0 - i0:a1 - i0 + 1] = values.reshape(
            c1 - c0 + 1, b1 - b0 + 1, a1 - a0 + 1) > 0
        return out

    # -- the Segment Editor
    def activate_effect(self, predictor):
        """Make the SAM-Med3D effect the editor's active effect, running `predictor` (the module logic's
        setPredictor); returns the Python effect."""
        sys.modules["SAMMed3D"].SAMMed3DLogic.shared().setPredictor(predictor)
        self.editor.setActiveEffectByName(EFFECT_NAME)
        host = self.editor.activeEffect()
        if host is None or host.name != EFFECT_NAME:
            raise RuntimeError("the editor did not activate SAM-Med3D: select a segmentation, a source volume and a "
                               "segment first")
        return host.self()

    def deactivate_effect(self):
        self.editor.setActiveEffect(None)

    def select_segment(self, segmentation_node, segment_id):
        """Select a segment as the editor does: a different segmentation through setSegmentationNode (which
        deactivates the effect), then the parameter node's SetSelectedSegmentID; effects are not told."""
        self.editor.setSegmentationNode(segmentation_node)
        self.editor.setCurrentSegmentID(segment_id)

    # -- the user in the views and the options panel
    def click(self, world_ras, positive=True, wait=True):
        """A left click (Ctrl+left click when not `positive`) at a world RAS point in the slice view, delivered as
        Qt and VTK deliver it (press, then release) to the editor's processEvents; returns the press's abort flag.
        With `wait`, it returns once the segment holds the result (`wait_idle`); without, right after the events,
        as the view gets control back in Slicer."""
        aborted = self._mouse(world_ras, positive, (vtk.vtkCommand.LeftButtonPressEvent,
                                                    vtk.vtkCommand.LeftButtonReleaseEvent))
        slicer.app.processEvents()
        if wait:
            self.wait_idle()
        return aborted

    def double_click(self, world_ras, positive=True, wait=True):
        """Two quick presses on one spot: Qt's press, release, double-click, release reach VTK (QVTKInteractorAdapter,
        Kitware/VTK GUISupport/Qt/QVTKInteractorAdapter.cxx:150-186, VTK >= 9.1) as LeftButtonPress,
        LeftButtonRelease, LeftButtonDoubleClick, LeftButtonRelease. Returns the abort flags of the press and of
        the double click."""
        press, _, double, _ = self._mouse(world_ras, positive, (
            vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.LeftButtonReleaseEvent,
            vtk.vtkCommand.LeftButtonDoubleClickEvent, vtk.vtkCommand.LeftButtonReleaseEvent), every=True)
        slicer.app.processEvents()
        if wait:
            self.wait_idle()
        return press, double

    def _mouse(self, world_ras, positive, events, every=False):
        x, y = self.view.centre_on(world_ras)
        self.view.interactor.SetEventInformation(x, y, int(not positive), 0, "\0", 0, None)
        flags = [self.editor.processEvents(self.view, event) for event in events]
        return flags if every else flags[0]

    def key(self, keysym, shift=False, wait=True):
        """A key press in the slice view (e.g. "BackSpace", "x"); returns the abort flag (with `wait`, once the
        effect is idle)."""
        self.view.interactor.SetKeyEventInformation(0, int(shift), "\0", 0, keysym)
        aborted = self.editor.processEvents(self.view, vtk.vtkCommand.KeyPressEvent)
        if wait:
            self.wait_idle()
        return aborted

    def escape(self):
        """Esc in the Segment Editor: its shortcut deactivates the active effect (Widgets/
        qMRMLSegmentEditorWidget.cxx:2342-2346 -> onSelectEffectShortcut 2409-2431 with effect index 0, no effect);
        it does not reach the effect as a key event."""
        self.editor.setActiveEffect(None)

    def wait_idle(self, timeout=60.0):
        """Turn the event loop (slicer.app.processEvents) until no timer is active, i.e. nothing the extension
        started waits to run on the main thread; RuntimeError after `timeout` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while not standin.EventLoop.idle():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the extension was still busy after {timeout} s")
            slicer.app.processEvents()
            time.sleep(0.002)

    def _effect(self):
        host = self.editor.activeEffect()
        if host is None or host.name != EFFECT_NAME:
            raise RuntimeError("SAM-Med3D is not the active effect")
        return host.self()

    def undo_click(self, wait=True):
        """The options panel's "Undo click" button."""
        self._effect().undoButton.click()
        slicer.app.processEvents()
        if wait:
            self.wait_idle()

    def reset(self, wait=True):
        """The options panel's "Reset" button."""
        self._effect().resetButton.click()
        slicer.app.processEvents()
        if wait:
            self.wait_idle()
