"""SAM-Med3D module: the model panel (checkpoint, backend, device, dependencies) and the logic that the Segment Editor
effect "SAM-Med3D" shares with it. Segmentation itself happens in the Segment Editor; see SegmentEditorSAMMed3DLib.

Everything that can be plain Python lives in SAMMed3DLib.slicer (setup, prompts, geometry, messages), tested without
Slicer; this file only connects it to Qt, the application settings and the user's consent.
"""

import logging

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SAMMed3DLib import weights
from SAMMed3DLib.errors import NotDownloadable, SAMMed3DError
from SAMMed3DLib.slicer.messages import user_message
from SAMMed3DLib.slicer.setup import (
    BACKENDS,
    DEVICES,
    LOCAL_FILE,
    SETTINGS_KEYS,
    TORCH_REQUIREMENT,
    BackgroundDownload,
    ModelSettings,
    create_predictor,
    missing_packages,
    model_file,
    status_text,
)


class SAMMed3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAM-Med3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SAMMed3D contributors"]
        self.parent.helpText = (
            "Click on a structure in a CT or MRI volume and get it in 3D, with the SAM-Med3D network. "
            "Choose the model here, then use the <b>SAM-Med3D</b> effect in the Segment Editor: left-click to "
            "include, Ctrl+left-click to exclude. Nothing is sent anywhere; the model is downloaded only when you "
            "ask, and checked with SHA256."
        )
        self.parent.acknowledgementText = (
            "SAM-Med3D by Wang, Cheng, et al. (uni-medical/SAM-Med3D, Apache-2.0). PyTorch installation through the "
            "SlicerPyTorch extension."
        )


class SAMMed3DWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMed3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMed3DLogic.shared()

        for entry in weights.REGISTRY:
            self.ui.modelComboBox.addItem(f"{entry.name}: {entry.description}", entry.name)
        self.ui.modelComboBox.addItem("Local file", LOCAL_FILE)
        for backend, title in BACKENDS.items():
            if backend != "remote":  # offered once the panel has its server URL, token and connection test
                self.ui.backendComboBox.addItem(title, backend)
        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device, device)
        self.updateGUIFromSettings()

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.localPathLineEdit.connect("currentPathChanged(QString)", self.updateSettingsFromGUI)
        self.ui.downloadButton.connect("clicked()", self.onDownload)
        self.ui.installButton.connect("clicked()", self.onInstall)
        self.ui.segmentEditorButton.connect("clicked()", lambda: slicer.util.selectModule("SegmentEditor"))

    def updateGUIFromSettings(self):
        settings = self.logic.settings()
        for combo, value in (
            (self.ui.modelComboBox, settings.model),
            (self.ui.backendComboBox, settings.backend),
            (self.ui.deviceComboBox, settings.device),
        ):
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findData(value), 0))
            combo.blockSignals(wasBlocked)
        wasBlocked = self.ui.localPathLineEdit.blockSignals(True)
        self.ui.localPathLineEdit.currentPath = settings.local_path
        self.ui.localPathLineEdit.blockSignals(wasBlocked)
        self.updateStatus()

    def updateSettingsFromGUI(self, *_):
        settings = ModelSettings(
            model=self.ui.modelComboBox.currentData,
            local_path=self.ui.localPathLineEdit.currentPath,
            backend=self.ui.backendComboBox.currentData,
            device=self.ui.deviceComboBox.currentData,
        )
        self.logic.saveSettings(settings)
        self.updateStatus()

    def updateStatus(self):
        settings = self.logic.settings()
        local = settings.model == LOCAL_FILE
        self.ui.localPathLineEdit.enabled = local
        try:
            settings.validated()
            path = model_file(settings)
            text = f"Model: {path}" if path else "Model: not downloaded yet (downloaded on first use, or now)"
        except SAMMed3DError as error:
            path, text = None, user_message(error)
        self.ui.downloadButton.enabled = not local and path is None
        torchMissing, pip = missing_packages(settings.backend)
        missing = (["torch"] if torchMissing else []) + pip
        self.ui.installButton.enabled = bool(missing)
        text += "<br>Missing packages: " + ", ".join(missing) if missing else "<br>All packages installed."
        self.ui.modelStatusLabel.text = text

    def onDownload(self):
        try:
            self.logic.ensureModelFile(self.logic.settings().validated())
        except SAMMed3DError as error:
            slicer.util.errorDisplay(user_message(error), windowTitle="SAM-Med3D")
        self.updateStatus()

    def onInstall(self):
        try:
            self.logic.ensureDependencies(self.logic.settings().backend, askAgain=True)
        except SAMMed3DError as error:
            slicer.util.errorDisplay(user_message(error), windowTitle="SAM-Med3D")
        self.updateStatus()


class SAMMed3DLogic(ScriptedLoadableModuleLogic):
    """Settings, dependencies and the loaded model, shared by the module panel and the Segment Editor effect.

    Installing packages and downloading run on the main thread's call (pip from a worker thread crashes Slicer on
    macOS); only the download's network I/O runs in a worker thread, while a progress dialog keeps the UI alive.
    """

    _instance = None

    @classmethod
    def shared(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._predictor = None  # the loaded Predictor, or the one set with setPredictor
        self._loadedSettings = None  # the ModelSettings `_predictor` was loaded for; None for a set one
        self._downloads = {}  # registry name -> BackgroundDownload, kept while it runs (a cancelled dialog)
        self._dependenciesDeclined = False

    # -- settings ----------------------------------------------------------------------------------------------

    def settings(self):
        stored = qt.QSettings()
        return ModelSettings.from_strings({key: stored.value(key) for key in SETTINGS_KEYS.values()})

    def saveSettings(self, settings):
        stored = qt.QSettings()
        for key, value in settings.to_strings().items():
            stored.setValue(key, value)

    # -- dependencies and model file ---------------------------------------------------------------------------

    def ensureDependencies(self, backend, askAgain=False):
        """Install what the backend needs after asking the user, once per Slicer session unless `askAgain`."""
        torchMissing, pip = missing_packages(backend)
        if not torchMissing and not pip:
            return
        if self._dependenciesDeclined and not askAgain:
            raise SAMMed3DError(
                "SAM-Med3D needs Python packages that are not installed. Open the SAM-Med3D module and click "
                "'Install dependencies'."
            )
        names = (["PyTorch (through the PyTorch extension)"] if torchMissing else []) + pip
        if not slicer.util.confirmOkCancelDisplay(
            "SAM-Med3D needs these Python packages: " + ", ".join(names) + ".\n\nInstall them now? This downloads "
            "from the Python package index and can take several minutes.",
            windowTitle="SAM-Med3D",
        ):
            self._dependenciesDeclined = True
            raise SAMMed3DError("The packages were not installed; SAM-Med3D cannot run without them.")
        with slicer.util.WaitCursor():
            if torchMissing:
                import PyTorchUtils

                logic = PyTorchUtils.PyTorchUtilsLogic()
                if logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                    raise SAMMed3DError("PyTorch was not installed. Install it from the PyTorch Utils module.")
            if pip:
                slicer.util.pip_install(pip)
        self._dependenciesDeclined = False

    def ensureModelFile(self, settings):
        """The model file: local, cached, or downloaded now with a progress dialog (after asking)."""
        path = model_file(settings)
        if path is not None:
            return path
        entry = weights.find(settings.model)
        if entry.url is None:
            raise NotDownloadable(entry.name, entry.page)
        download = self._downloads.get(entry.name)
        if download is None or download.done:
            size = f" (about {entry.size // 1_000_000} MB)" if entry.size else ""
            if not slicer.util.confirmOkCancelDisplay(
                f"Download the SAM-Med3D '{entry.name}' model{size} from {entry.url}?\n\nThe file is checked with "
                f"SHA256 and kept in {weights.cache_dir()}. Nothing is uploaded.",
                windowTitle="SAM-Med3D",
            ):
                raise SAMMed3DError("No model: download it, or choose 'Local file' in the SAM-Med3D module.")
            download = self._downloads[entry.name] = BackgroundDownload(entry.name).start()
        progress = slicer.util.createProgressDialog(
            labelText=f"Downloading {entry.filename}...", maximum=100, windowTitle="SAM-Med3D"
        )
        try:
            while not download.wait(0.1):
                fraction = download.fraction()
                progress.value = int(100 * fraction) if fraction is not None else 0
                slicer.app.processEvents()
                if progress.wasCanceled:
                    raise SAMMed3DError("Download cancelled. The next attempt continues where this one stopped.")
        finally:
            progress.close()
        return download.result()

    # -- predictor ---------------------------------------------------------------------------------------------

    def setPredictor(self, predictor):
        """Use this predictor instead of loading the configured model (self-tests: the threshold oracle);
        None goes back to the configured model."""
        self._predictor, self._loadedSettings = predictor, None

    def predictor(self):
        """The configured model, loaded once; sets up dependencies and downloads on first use."""
        if self._predictor is not None and self._loadedSettings is None:  # set with setPredictor
            return self._predictor
        settings = self.settings().validated()
        if self._predictor is None or self._loadedSettings != settings:
            self.ensureDependencies(settings.backend)
            path = self.ensureModelFile(settings)
            with slicer.util.WaitCursor():
                slicer.util.showStatusMessage("SAM-Med3D: loading the model...")
                predictor = create_predictor(settings, path)
            logging.info(f"SAM-Med3D: loaded {path}: {predictor.label}")
            self._predictor, self._loadedSettings = predictor, settings
        return self._predictor

    def statusText(self, timings=None):
        if self._predictor is None:
            return "Model not loaded yet: the first click loads it."
        return status_text(self._predictor, timings)


class SAMMed3DTest(ScriptedLoadableModuleTest):
    """The module's logic inside Slicer, offline. The effect's self-tests are in Testing/Python."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)
        self.stored = SAMMed3DLogic.shared().settings()

    def tearDown(self):
        SAMMed3DLogic.shared().saveSettings(self.stored)

    def runTest(self):
        self.setUp()
        try:
            self.test_settings_round_trip()
            self.test_fixed_predictor_and_status()
        finally:
            self.tearDown()

    def test_settings_round_trip(self):
        logic = SAMMed3DLogic.shared()
        wanted = ModelSettings(model=LOCAL_FILE, local_path="/nonexistent/model.pth", backend="torch", device="cpu")
        logic.saveSettings(wanted)
        self.assertEqual(logic.settings(), wanted)
        with self.assertRaises(SAMMed3DError):
            model_file(logic.settings())

    def test_fixed_predictor_and_status(self):
        from SAMMed3DLib.testing.oracle import ThresholdPredictor

        logic = SAMMed3DLogic()
        self.assertIn("not loaded", logic.statusText())
        oracle = ThresholdPredictor()
        logic.setPredictor(oracle)
        self.assertIs(logic.predictor(), oracle)
        self.assertEqual(logic.statusText({"decode": 0.5}), f"{oracle.label} | last click 0.50 s (decode 0.50 s)")
