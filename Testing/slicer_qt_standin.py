"""What the slicer-core wheel lacks and the extension's Python touches: Qt widgets as PythonQt shows them, Slicer's
scripted-module base classes, the Qt-bound `slicer.util` dialogs and the SlicerPyTorch extension's installer. Each
piece is small, does only what the extension calls, and names the source it follows; everything else the extension
uses is the wheel's real code (Testing/slicer_core_app.py puts the two together).

`qt_module()`, `scripted_module()`, `effects_module()` and `pytorch_utils_module(record)` build the modules; `Record`
keeps what the code under test showed and asked; `util_replacements(record)` are the dialog functions of
slicer.util, which need a Qt application in Slicer.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# -- qt (PythonQt) ---------------------------------------------------------------------------------------------------


class Widget:
    """QWidget/QAbstractButton as PythonQt exposes them: properties as attributes, `connect(signal, slot)`, and
    `toggled(bool)` emitted when `checked` changes (QAbstractButton::setChecked), unless signals are blocked."""

    def __init__(self, text="", parent=None):
        self.text, self.toolTip, self.enabled = text, "", True
        self.checkable = self.wordWrap = False
        self._checked = False
        self._parent = parent
        self._slots: dict = {}
        self._blocked = False

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def blockSignals(self, block):
        previous, self._blocked = self._blocked, block
        return previous

    def emit(self, signal, *args):
        """Call the slots; like PythonQt, a slot that takes fewer arguments than the signal carries gets the first
        ones only."""
        if self._blocked:
            return
        for slot in self._slots.get(signal, []):
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[: len([p for p in parameters if p.default is p.empty])])

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        if bool(value) != self._checked:
            self._checked = bool(value)
            self.emit("toggled(bool)", self._checked)

    def click(self):
        """QAbstractButton::click: a checkable button toggles, then clicked() (a disabled button does nothing)."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.emit("clicked()")

    def parentWidget(self):
        return self._parent

    def setParent(self, parent):
        self._parent = parent

    def className(self):
        return type(self).__name__


class CheckBox(Widget):
    """QCheckBox: checkable from the start."""

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True


class ComboBox(Widget):
    """QComboBox: items with user data; currentIndexChanged(int) when the index changes."""

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
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


class PathLineEdit(Widget):
    """ctkPathLineEdit (commontk/CTK Libs/Widgets/ctkPathLineEdit.h): currentPath, currentPathChanged(QString) when
    it is set, and `filters` (the Filter enum, 128-142: Dirs 0x001, Files 0x002), which decide what its browse
    button picks (ctkPathLineEdit.cpp:551: a file dialog with Files, else a folder dialog)."""

    Dirs, Files = 0x001, 0x002

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self._path = ""
        self.filters = self.Files | self.Dirs
    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        self._path = path
        self.emit("currentPathChanged(QString)", path)


class LineEdit(Widget):
    """QLineEdit: the `text` property; textChanged(QString) whenever the text changes, also when set by the
    program (QLineEdit::textChanged, qlineedit.cpp), unless signals are blocked."""

    def __init__(self, text="", parent=None):
        self._text = text
        super().__init__(text, parent)

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, value):
        changed, self._text = value != self._text, value
        if changed and hasattr(self, "_slots"):
            self.emit("textChanged(QString)", value)


class UiWidget(Widget):
    def setMRMLScene(self, scene):
        self.scene = scene


class Layout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


class Settings:
    """QSettings: one store per process (Slicer's settings file), emptied by each SlicerCoreApp."""

    store: dict = {}

    def value(self, key):
        return self.store.get(key)

    def setValue(self, key, value):
        self.store[key] = value


class EventLoop:
    """The application's event loop, as far as timers go: QCoreApplication::processEvents (slicer.app.processEvents
    in Testing/slicer_core_app.py) fires the active timers that are due, each at most once per call, in the order
    they were started. One loop per process, emptied by each SlicerCoreApp."""

    timers: list = []

    @classmethod
    def process_events(cls) -> int:
        """Fire the due timers; the number fired."""
        import time

        now, fired = time.monotonic(), 0
        for timer in [t for t in cls.timers if t._due <= now]:
            if timer in cls.timers:  # a slot of an earlier timer may have stopped it
                timer._fire(now)
                fired += 1
        return fired

    @classmethod
    def idle(cls) -> bool:
        """No timer is active: nothing is waiting to run on the main thread."""
        return not cls.timers


class Timer(Widget):
    """QTimer as PythonQt exposes it: the `interval` property, setInterval, setSingleShot, start()/start(msec),
    stop(), isActive(), the timeout() signal; and the static QTimer.singleShot(msec, callable)."""

    def __init__(self, parent=None):
        super().__init__(parent=parent)
        self.interval, self._due = 0, None
        self._single = False

    def setInterval(self, msec):
        self.interval = msec

    def setSingleShot(self, single):
        self._single = bool(single)

    def start(self, msec=None):
        import time

        if msec is not None:
            self.interval = msec
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in EventLoop.timers:
            EventLoop.timers.append(self)

    def stop(self):
        if self in EventLoop.timers:
            EventLoop.timers.remove(self)

    def isActive(self):
        return self in EventLoop.timers

    def _fire(self, now):
        if self._single:
            self.stop()
        else:
            self._due = now + self.interval / 1000.0
        self.emit("timeout()")

    @staticmethod
    def singleShot(msec, slot):
        timer = Timer()
        timer.setSingleShot(True)
        timer.connect("timeout()", slot)
        timer.start(msec)


class Point:
    """QPoint."""

    def __init__(self, x, y):
        self._x, self._y = int(x), int(y)

    def x(self):
        return self._x

    def y(self):
        return self._y


class Vector3D:
    """QVector3D (float components)."""

    def __init__(self, x, y, z):
        self._xyz = (float(x), float(y), float(z))

    def x(self):
        return self._xyz[0]

    def y(self):
        return self._xyz[1]

    def z(self):
        return self._xyz[2]


def qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QPushButton = qt.QLabel = qt.QFrame = Widget
    qt.QCheckBox = CheckBox
    qt.QHBoxLayout = Layout
    qt.QIcon = lambda *args: ("QIcon", args)
    qt.QSettings = Settings
    qt.QPoint, qt.QVector3D = Point, Vector3D
    qt.QTimer = Timer
    return qt


def ctk_module() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = PathLineEdit
    return ctk


def load_ui(path):
    """slicer.util.loadUI: the .ui file's widgets, by object name, made from its classes."""
    classes = {"QComboBox": ComboBox, "ctkPathLineEdit": PathLineEdit, "QLineEdit": LineEdit, "QPushButton": Widget,
               "QLabel": Widget, "ctkCollapsibleButton": Widget, "qMRMLWidget": UiWidget}
    top = UiWidget()
    top.children = {
        widget.get("name"): classes[widget.get("class")]()
        for widget in ElementTree.parse(path).iter("widget")
    }
    return top


# -- slicer.util's dialogs, recorded -----------------------------------------------------------------------------


class Progress:
    def __init__(self, **kwargs):
        self.kwargs, self.value, self.wasCanceled, self.closed = kwargs, 0, False, False

    def close(self):
        self.closed = True


class Record:
    """What the code under test showed and asked: error texts, progress dialogs, confirmations (answered from
    `answers`, True when it runs out; the hidden-segment question from `hidden_segment_answers`, "yes", "no" or
    "cancel"), status bar messages with their durations, pip installs, PyTorchUtils installs and modules
    selected."""

    def __init__(self):
        self.messages, self.progress, self.questions, self.answers, self.pip, self.torch = [], [], [], [], [], []
        self.selected, self.cancel = [], False  # cancel: progress dialogs report wasCanceled
        self.hidden_segment_answers, self.status = [], []


def util_replacements(record: Record) -> dict:
    """The slicer.util functions (Base/Python/slicer/util.py) that open dialogs or need the main window, as
    recorders: in Slicer they block on a Qt dialog, which a test cannot answer."""

    def confirmOkCancelDisplay(text, windowTitle=None, **kwargs):
        record.questions.append(text)
        return record.answers.pop(0) if record.answers else True

    def createProgressDialog(**kwargs):
        dialog = Progress(**kwargs)
        dialog.wasCanceled = record.cancel
        record.progress.append(dialog)
        return dialog

    return {
        "errorDisplay": lambda text, windowTitle=None, **kwargs: record.messages.append(text),
        "confirmOkCancelDisplay": confirmOkCancelDisplay,
        "createProgressDialog": createProgressDialog,
        "WaitCursor": contextlib.nullcontext,
        "showStatusMessage": lambda text, duration=0: record.status.append((text, duration)),
        "mainWindow": lambda: types.SimpleNamespace(cursor="arrow"),
        "loadUI": load_ui,
        "childWidgetVariables": lambda widget: types.SimpleNamespace(**widget.children),
        "selectModule": record.selected.append,
        "pip_install": record.pip.append,
    }


# -- Slicer's scripted base classes (pure Python in Slicer, but they import qt and ctk) --------------------------


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    """Base/Python/slicer/ScriptedLoadableModule.py: a layout, and resourcePath beside the module file."""

    module_dir: Path | None = None

    def __init__(self, parent=None):
        self.parent = parent
        self.layout = Layout()

    def setup(self):
        pass

    def resourcePath(self, filename):
        return str(self.module_dir / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    def __init__(self):
        pass


def scripted_module() -> types.ModuleType:
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleTest = object
    return scripted


def effects_module(qt: types.ModuleType) -> types.ModuleType:
    """SegmentEditorEffects (Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/
    AbstractScriptedSegmentEditorEffect.py): the base class keeps the C++ host as `scriptedEffect` (49-50),
    registers it with the effect factory (52-54) and converts coordinates through the host with qt.QPoint and
    qt.QVector3D (85-88 for xyToRas)."""
    import slicer

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

        def register(self):
            slicer.qSlicerSegmentEditorEffectFactory.instance().registerEffect(self.scriptedEffect)

        def cleanup(self):
            pass

        def xyToRas(self, xy, viewWidget):
            rasVector = self.scriptedEffect.xyToRas(qt.QPoint(xy[0], xy[1]), viewWidget)
            return [rasVector.x(), rasVector.y(), rasVector.z()]

    effects = types.ModuleType("SegmentEditorEffects")
    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    return effects


def pytorch_utils_module(record: Record) -> types.ModuleType:
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
