"""A small stand-in for the parts of 3D Slicer that the SAM-Med3D effect touches, so its code runs here with real
VTK, the real session and the real SAMMed3DLib modules. Each piece follows Slicer's source (named beside it); only
what the effect calls exists, so a call Slicer does not offer fails here too.

`install()` puts modules `slicer`, `slicer.util`, `slicer.ScriptedLoadableModule`, `qt` and `SegmentEditorEffects`
into sys.modules; `EditorScene` builds a volume (with a parent transform), a segmentation and the effect's host.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator

import numpy as np
import vtk
from vtk.util import numpy_support

# -- qt (PythonQt): widgets as plain objects with the properties the effect sets ---------------------------------


class _Widget:
    def __init__(self, text=""):
        self.text, self.toolTip, self.enabled = text, "", True
        self.checked = self.checkable = self.wordWrap = False
        self._slots: dict = {}
        self._blocked = False

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def blockSignals(self, block):
        previous, self._blocked = self._blocked, block
        return previous

    def emit(self, signal, *args):
        if not self._blocked:
            for slot in self._slots.get(signal, []):
                slot(*args)


class _ComboBox(_Widget):
    """QComboBox: items with user data; currentIndexChanged(int) when the index changes."""

    def __init__(self, text=""):
        super().__init__(text)
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def findData(self, data):
        return next((index for index, (_, value) in enumerate(self.items) if value == data), -1)

    def setCurrentIndex(self, index):
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if self.currentIndex >= 0 else None


class _PathLineEdit(_Widget):
    """ctkPathLineEdit: currentPath, and currentPathChanged(QString) when it is set."""

    def __init__(self, text=""):
        super().__init__(text)
        self._path = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        self._path = path
        self.emit("currentPathChanged(QString)", path)


class _UiWidget(_Widget):
    def setMRMLScene(self, scene):
        self.scene = scene


def _load_ui(path):
    """slicer.util.loadUI: the .ui file's widgets, by object name, made from its classes."""
    import xml.etree.ElementTree as ElementTree

    classes = {"QComboBox": _ComboBox, "ctkPathLineEdit": _PathLineEdit, "QPushButton": _Widget, "QLabel": _Widget,
               "ctkCollapsibleButton": _Widget, "qMRMLWidget": _UiWidget}
    top = _UiWidget()
    top.children = {
        widget.get("name"): classes[widget.get("class")]()
        for widget in ElementTree.parse(path).iter("widget")
    }
    return top


class _Layout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


class _Settings:
    store: dict = {}

    def value(self, key):
        return self.store.get(key)

    def setValue(self, key, value):
        self.store[key] = value


def _qt_module():
    qt = types.ModuleType("qt")
    qt.QPushButton = qt.QCheckBox = qt.QLabel = _Widget
    qt.QHBoxLayout = _Layout
    qt.QIcon = lambda *args: ("QIcon", args)
    qt.QSettings = _Settings
    return qt


# -- vtkSegmentationCore / MRML ----------------------------------------------------------------------------------


class OrientedImageData(vtk.vtkImageData):
    """vtkOrientedImageData (Libs/vtkSegmentationCore/vtkOrientedImageData.h): an image whose index (i, j, k) maps
    to world by ImageToWorld; spacing, origin and directions all live in that matrix."""

    def __init__(self):
        super().__init__()
        self._imageToWorld = vtk.vtkMatrix4x4()

    def SetImageToWorldMatrix(self, matrix):
        self._imageToWorld.DeepCopy(matrix)

    def GetImageToWorldMatrix(self, matrix):
        matrix.DeepCopy(self._imageToWorld)


def _matrix(array):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row][column]))
    return matrix


def _array(matrix):
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


class Node:
    """vtkMRMLNode (Libs/MRML/Core/vtkMRMLNode.h) with the transformable and displayable parts the effect uses."""

    def __init__(self, scene, node_id, name=""):
        self._scene, self._id, self.name = scene, node_id, name
        self._parent_transform = None
        self._display = None
        self.hidden_from_editors, self.save_with_scene = False, True

    def GetID(self):
        return self._id

    def GetScene(self):
        return self._scene

    def SetHideFromEditors(self, hide):
        self.hidden_from_editors = bool(hide)

    def SetSaveWithScene(self, save):
        self.save_with_scene = bool(save)

    def GetParentTransformNode(self):
        return self._parent_transform

    def CreateDefaultDisplayNodes(self):
        self._display = self._display or DisplayNode()

    def GetDisplayNode(self):
        return self._display


class DisplayNode:
    """vtkMRMLDisplayNode / vtkMRMLMarkupsDisplayNode setters the effect calls."""

    def __init__(self):
        self.color = self.selected_color = (1.0, 1.0, 0.0)
        self.point_labels, self.glyph = True, "Sphere3D"

    def SetColor(self, color):
        self.color = tuple(color)

    def SetSelectedColor(self, color):
        self.selected_color = tuple(color)

    def GetSelectedColor(self):
        return self.selected_color

    def SetPointLabelsVisibility(self, visible):
        self.point_labels = bool(visible)

    def SetGlyphTypeFromString(self, glyph):
        assert glyph in ("Sphere3D", "Cross2D", "StarBurst2D", "Circle2D"), glyph  # vtkMRMLMarkupsDisplayNode.h
        self.glyph = glyph


class MarkupsFiducialNode(Node):
    """vtkMRMLMarkupsNode (Libs/MRML/Core/vtkMRMLMarkupsNode.h): control points in world coordinates."""

    def __init__(self, *args):
        super().__init__(*args)
        self.points, self.locked = [], False

    def AddControlPoint(self, x, y, z, label=""):
        self.points.append((float(x), float(y), float(z)))
        return len(self.points) - 1

    def RemoveAllControlPoints(self):
        self.points = []

    def GetNumberOfControlPoints(self):
        return len(self.points)

    def SetLocked(self, locked):
        self.locked = bool(locked)

    def GetLocked(self):
        return int(self.locked)


class Segment:
    """vtkSegment (Libs/vtkSegmentationCore/vtkSegment.h): a colour; its labelmap lives in the scene below."""

    def __init__(self, color):
        self._color = color

    def GetColor(self):
        return self._color


class Segmentation:
    def __init__(self, segments):
        self._segments = segments

    def GetSegment(self, segment_id):
        return self._segments.get(segment_id)


class SegmentationNode(Node):
    def __init__(self, *args, segments):
        super().__init__(*args)
        self._segmentation = Segmentation(segments)

    def GetSegmentation(self):
        return self._segmentation


class TransformNode(Node):
    def __init__(self, *args, to_parent):
        super().__init__(*args)
        self.to_parent = np.asarray(to_parent, float)

    def to_world(self):
        parent = self.GetParentTransformNode()
        return (parent.to_world() if parent else np.eye(4)) @ self.to_parent


def _to_world(transform_node):
    return np.eye(4) if transform_node is None else transform_node.to_world()


class TransformNodeClass:
    @staticmethod
    def GetTransformBetweenNodes(source, target, general_transform):
        """vtkMRMLTransformNode::GetTransformBetweenNodes (Libs/MRML/Core/vtkMRMLTransformNode.h): None is world."""
        general_transform.Identity()
        general_transform.Concatenate(_matrix(np.linalg.inv(_to_world(target)) @ _to_world(source)))


class Scene:
    """vtkMRMLScene (Libs/MRML/Core/vtkMRMLScene.h): AddNewNodeByClass and RemoveNode for the markups."""

    def __init__(self):
        self.nodes, self._count = {}, 0

    def AddNewNodeByClass(self, class_name, name=""):
        assert class_name == "vtkMRMLMarkupsFiducialNode", class_name
        self._count += 1
        node = MarkupsFiducialNode(self, f"{class_name}{self._count}", name)
        self.nodes[node.GetID()] = node
        return node

    def RemoveNode(self, node):
        self.nodes.pop(node.GetID(), None)
        node._scene = None

    def by_name(self, name):
        (node,) = [n for n in self.nodes.values() if n.name == name]
        return node


# -- the effect's host: qSlicerSegmentEditorAbstractEffect and the editor's parameter node ------------------------


class SegmentEditorNode:
    """vtkMRMLSegmentEditorNode (Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h)."""

    def __init__(self, segmentation_node, source_volume_node, selected):
        self._segmentation, self._source, self.selected = segmentation_node, source_volume_node, selected

    def GetSegmentationNode(self):
        return self._segmentation

    def GetSourceVolumeNode(self):
        return self._source

    def GetSelectedSegmentID(self):
        return self.selected

    def SetSelectedSegmentID(self, segment_id):
        self.selected = segment_id


class ScriptedEffectHost:
    """qSlicerSegmentEditorAbstractEffect (Modules/Loadable/Segmentations/EditorEffects/
    qSlicerSegmentEditorAbstractEffect.h), with the editor's logic (vtkSlicerSegmentEditorLogic.cxx) reduced to what
    the effect relies on: the aligned source volume on the reference geometry, the selected segment's binary
    labelmap, one undo state per saveStateForUndo, and Add / Remove that change only the modifier's extent."""

    ModificationModeSet, ModificationModeAdd, ModificationModeRemove = 0, 1, 2

    def __init__(self, editor: EditorScene):
        self.editor = editor
        self.name, self.perSegment, self.requireSegments = "", False, False
        self.parameters: dict = {}
        self.defaults: dict = {}
        self.options: list = []
        self.undo_states: list = []

    # options panel and parameters
    def addOptionsWidget(self, widget):
        self.options.append(widget)

    def addLabeledOptionsWidget(self, label, widget):
        self.options.append((label, widget))

    def setParameterDefault(self, name, value):
        self.defaults[name] = value

    def setParameter(self, name, value):
        self.parameters[name] = value

    def integerParameter(self, name):
        return int(self.parameters.get(name, self.defaults.get(name, 0)))

    def parameterSetNode(self):
        return self.editor.editor_node

    # images
    def sourceVolumeImageData(self):
        """The source volume resampled onto the reference geometry through the transforms between volume and
        segmentation (UpdateAlignedSourceVolume). The reference geometry here is the volume's own grid, mapped into
        the segmentation's coordinates (SetReferenceImageGeometryParameterFromVolumeNode), so no voxel moves."""
        image = OrientedImageData()
        image.SetExtent(0, self.editor.shape[2] - 1, 0, self.editor.shape[1] - 1, 0, self.editor.shape[0] - 1)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = self.editor.voxels.ravel()
        image.SetImageToWorldMatrix(_matrix(self.editor.reference_to_segmentation()))
        return image

    def selectedSegmentLabelmap(self):
        """The selected segment's binary labelmap on the reference geometry (UpdateSelectedSegmentLabelmap)."""
        labelmap = OrientedImageData()
        mask = self.editor.segments[self.editor.editor_node.selected]
        labelmap.SetExtent(0, mask.shape[2] - 1, 0, mask.shape[1] - 1, 0, mask.shape[0] - 1)
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = mask.ravel()
        labelmap.SetImageToWorldMatrix(_matrix(self.editor.reference_to_segmentation()))
        return labelmap

    # edits
    def saveStateForUndo(self):
        self.undo_states.append({key: value.copy() for key, value in self.editor.segments.items()})

    def modifySelectedSegmentByLabelmap(self, modifier, mode):
        """Add: voxels > 0 of the modifier are set (MODE_MERGE_MASK); Remove: they are cleared (MODE_MERGE_MIN of
        the inverted modifier); voxels outside the modifier's extent are untouched. Like the editable-intensity
        mask, this needs the modifier on the reference geometry (DoGeometriesMatch: extent may differ)."""
        assert mode in (self.ModificationModeAdd, self.ModificationModeRemove), mode
        matrix = vtk.vtkMatrix4x4()
        modifier.GetImageToWorldMatrix(matrix)
        np.testing.assert_allclose(_array(matrix), self.editor.reference_to_segmentation(), atol=1e-6)
        i0, i1, j0, j1, k0, k1 = modifier.GetExtent()
        assert min(i0, j0, k0) >= 0 and (k1, j1, i1) < self.editor.shape, "modifier extent outside the reference"
        values = numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars())
        block = values.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1) > 0
        target = self.editor.segments[self.editor.editor_node.selected][k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
        target[block] = 1 if mode == self.ModificationModeAdd else 0
        self.editor.modified_extents.append((i0, i1, j0, j1, k0, k1))


# -- slicer.util and the scripted-module base classes ------------------------------------------------------------


class _Progress:
    def __init__(self, **kwargs):
        self.kwargs, self.value, self.wasCanceled, self.closed = kwargs, 0, False, False

    def close(self):
        self.closed = True


class Record:
    """What the code under test showed and asked: error texts, progress dialogs, confirmations (answered from
    `answers`, True when it runs out), pip installs and PyTorchUtils installs."""

    def __init__(self):
        self.messages, self.progress, self.questions, self.answers, self.pip, self.torch = [], [], [], [], [], []
        self.selected, self.cancel = [], False  # cancel: progress dialogs report wasCanceled


def _util_module(record: Record):
    """slicer.util (Base/Python/slicer/util.py): the functions the module and the effect call."""
    util = types.ModuleType("slicer.util")
    util.arrayFromVTKMatrix = _array
    util.vtkMatrixFromArray = _matrix
    util.WaitCursor = contextlib.nullcontext
    util.errorDisplay = lambda text, windowTitle=None, **kwargs: record.messages.append(text)
    util.showStatusMessage = lambda text, duration=0: None
    util.mainWindow = lambda: types.SimpleNamespace(cursor="arrow")
    util.pip_install = record.pip.append

    def confirmOkCancelDisplay(text, windowTitle=None, **kwargs):
        record.questions.append(text)
        return record.answers.pop(0) if record.answers else True

    def createProgressDialog(**kwargs):
        dialog = _Progress(**kwargs)
        dialog.wasCanceled = record.cancel
        record.progress.append(dialog)
        return dialog

    util.loadUI = _load_ui
    util.childWidgetVariables = lambda widget: types.SimpleNamespace(**widget.children)
    util.selectModule = record.selected.append
    util.confirmOkCancelDisplay = confirmOkCancelDisplay
    util.createProgressDialog = createProgressDialog
    return util


def _pytorch_utils_module(record: Record):
    """PyTorchUtils of the SlicerPyTorch extension (PyTorchUtils/PyTorchUtils.py): installTorch returns the torch
    module, or None when the user declines."""
    module = types.ModuleType("PyTorchUtils")

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            record.torch.append(askConfirmation)
            import torch

            return torch

    module.PyTorchUtilsLogic = PyTorchUtilsLogic
    return module


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    """Base/Python/slicer/ScriptedLoadableModule.py: a layout, and resourcePath beside the module file."""

    module_dir = None

    def __init__(self, parent=None):
        self.parent = parent
        self.layout = _Layout()

    def setup(self):
        pass

    def resourcePath(self, filename):
        return str(self.module_dir / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    def __init__(self):
        pass


class EditorScene:
    """A volume under a parent transform, a segmentation (optionally under its own transform) whose reference
    geometry is the volume's, a Segment Editor parameter node, and the effect's host."""

    def __init__(self, voxels, ijk_to_ras, volume_parent, segmentation_parent=None, segment_ids=("A", "B")):
        self.voxels = np.ascontiguousarray(voxels, np.int16)
        self.shape = self.voxels.shape
        self.ijk_to_ras = np.asarray(ijk_to_ras, float)
        self.scene = Scene()
        self.volume_node = Node(self.scene, "vtkMRMLScalarVolumeNode1", "volume")
        self.volume_node.GetImageData = lambda: types.SimpleNamespace(GetMTime=lambda: 1)
        self.volume_node._parent_transform = TransformNode(self.scene, "T1", to_parent=volume_parent)
        colors = {"A": (0.9, 0.4, 0.1), "B": (0.2, 0.6, 0.9)}
        self.segmentation_node = SegmentationNode(
            self.scene, "vtkMRMLSegmentationNode1", segments={i: Segment(colors.get(i, (1, 0, 0))) for i in segment_ids}
        )
        if segmentation_parent is not None:
            self.segmentation_node._parent_transform = TransformNode(self.scene, "T2", to_parent=segmentation_parent)
        self.segments = {segment_id: np.zeros(self.shape, np.uint8) for segment_id in segment_ids}
        self.editor_node = SegmentEditorNode(self.segmentation_node, self.volume_node, segment_ids[0])
        self.modified_extents: list = []
        self.host = ScriptedEffectHost(self)

    def reference_to_segmentation(self):
        """The volume's IJK->RAS carried into the segmentation's coordinates (linear transforms)."""
        volume_to_world = _to_world(self.volume_node.GetParentTransformNode())
        world_to_segmentation = np.linalg.inv(_to_world(self.segmentation_node.GetParentTransformNode()))
        return world_to_segmentation @ volume_to_world @ self.ijk_to_ras

    def voxel_to_world(self, kji):
        k, j, i = kji
        return (_to_world(self.volume_node.GetParentTransformNode()) @ self.ijk_to_ras @ [i, j, k, 1.0])[:3]


REPLACED = ("slicer", "slicer.util", "slicer.ScriptedLoadableModule", "qt", "SegmentEditorEffects", "PyTorchUtils")
MODULE_FOLDER = Path(__file__).resolve().parents[1] / "SAMMed3D"
# What importing the extension's files adds to sys.modules, removed again after each use.
EXTENSION_MODULES = ("SAMMed3D", "SegmentEditorSAMMed3DLib")


@contextlib.contextmanager
def installed(record: Record, scene: Scene | None = None) -> Iterator[types.ModuleType]:
    """The stand-in modules in sys.modules and the extension's folder on sys.path, as inside Slicer; on exit both
    are as they were before, so that no test sees another's stand-in."""
    names = (*REPLACED, *EXTENSION_MODULES)
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    slicer = install(record, scene)
    sys.path.insert(0, str(MODULE_FOLDER))
    try:
        yield slicer
    finally:
        sys.path.remove(str(MODULE_FOLDER))
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def install(record: Record, scene: Scene | None = None) -> types.ModuleType:
    """Put the stand-in modules (`REPLACED`) into sys.modules and return `slicer`."""
    _Settings.store = {}
    slicer = types.ModuleType("slicer")
    slicer.util = _util_module(record)
    slicer.app = types.SimpleNamespace(processEvents=lambda: None, connect=lambda *args: None)
    slicer.mrmlScene = scene
    slicer.vtkOrientedImageData = OrientedImageData
    slicer.vtkMRMLTransformNode = TransformNodeClass
    slicer.qSlicerSegmentEditorAbstractEffect = ScriptedEffectHost
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleTest = object
    slicer.ScriptedLoadableModule = scripted

    effects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        """SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py: keeps the host as `scriptedEffect`."""

        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    sys.modules.update({
        "slicer": slicer, "slicer.util": slicer.util, "slicer.ScriptedLoadableModule": scripted, "qt": _qt_module(),
        "SegmentEditorEffects": effects, "PyTorchUtils": _pytorch_utils_module(record),
    })
    return slicer
