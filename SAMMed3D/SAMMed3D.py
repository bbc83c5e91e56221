"""SAM-Med3D module: the model panel (checkpoint, backend, device, remote server, dependencies) and the logic that the
Segment Editor effect "SAM-Med3D" shares with it. Segmentation itself happens in the Segment Editor; see
SegmentEditorSAMMed3DLib.

Everything that can be plain Python lives in SAMMed3DLib.slicer (setup, prompts, geometry, messages), tested without
Slicer; this file only connects it to Qt, the application settings and the user's consent.
"""

import contextlib
import importlib.util
import logging

import ctk
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
    connection_report,
    create_predictor,
    import_name,
    imported_already,
    missing_packages,
    model_file,
    outdated_torch_imported,
    status_text,
)
from SAMMed3DLib.slicer.worker import Worker

RESTART = "Restart Slicer to use the updated packages: {}."


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
            "include, Ctrl+left-click (Cmd+left-click on macOS) to exclude; the effect's help lists every shortcut. "
            "Slicer stays usable while the model works. Nothing is sent anywhere unless you choose the remote server "
            "backend (then only the normalised image patch of each new region goes to the server you enter); the "
            "model is downloaded only when you ask, and checked with SHA256."
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
            self.ui.backendComboBox.addItem(title, backend)
        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device, device)
        self.updateGUIFromSettings()

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateSettingsFromGUI)
        self.ui.localPathLineEdit.connect("currentPathChanged(QString)", self.updateSettingsFromGUI)
        self.ui.serverLineEdit.connect("textChanged(QString)", self.updateSettingsFromGUI)
        self.ui.tokenLineEdit.connect("textChanged(QString)", self.onTokenChanged)
        self.ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        self.ui.downloadButton.connect("clicked()", self.onDownload)
        self.ui.installButton.connect("clicked()", self.onInstall)
        self.ui.segmentEditorButton.connect("clicked()", lambda: slicer.util.selectModule("SegmentEditor"))

    def enter(self):
        """Entering the module: the settings may have changed meanwhile (another panel, a download, an install)."""
        self.updateGUIFromSettings()

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
        texts = ((self.ui.serverLineEdit, settings.server), (self.ui.tokenLineEdit, self.logic.serverToken))
        for lineEdit, text in texts:
            wasBlocked = lineEdit.blockSignals(True)
            lineEdit.text = text
            lineEdit.blockSignals(wasBlocked)
        self.updateStatus()

    def updateSettingsFromGUI(self, *_):
        settings = ModelSettings(
            model=self.ui.modelComboBox.currentData,
            local_path=self.ui.localPathLineEdit.currentPath,
            backend=self.ui.backendComboBox.currentData,
            device=self.ui.deviceComboBox.currentData,
            server=self.ui.serverLineEdit.text.strip(),
        )
        self.logic.saveSettings(settings)
        self.updateStatus()

    def onTokenChanged(self, token):
        self.logic.serverToken = token.strip()

    def updateStatus(self):
        settings = self.logic.settings()
        local = settings.model == LOCAL_FILE
        self.ui.localPathLineEdit.enabled = local
        # PyTorch reads a checkpoint file, ONNX Runtime (also the remote server's decoder) an export folder: the
        # browse button picks what fits.
        self.ui.localPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs if settings.backend in ("onnx", "remote") else (
            ctk.ctkPathLineEdit.Files)
        remote = settings.backend == "remote"
        for widget in (self.ui.serverLabel, self.ui.serverLineEdit, self.ui.tokenLabel, self.ui.tokenLineEdit,
                       self.ui.testConnectionButton, self.ui.connectionStatusLabel):
            widget.visible = remote
        self.ui.testConnectionButton.enabled = remote and bool(settings.server) and not self.logic.testingConnection
        entry = None if local else weights.find(settings.model)
        try:
            settings.validated()
            path = model_file(settings)
            if path:
                text = f"Model: {path}"
            elif entry.url is None:
                text = user_message(NotDownloadable(entry.name, entry.page))
            else:
                text = "Model: not downloaded yet (downloaded on first use, or now)"
        except SAMMed3DError as error:
            path, text = None, user_message(error)
        self.ui.downloadButton.enabled = entry is not None and entry.url is not None and path is None
        torchMissing, pip = missing_packages(settings.backend)
        missing = (["torch"] if torchMissing else []) + pip
        self.ui.installButton.enabled = bool(missing) and not self.logic.restartNeeded
        text += "<br>Missing packages: " + ", ".join(missing) if missing else "<br>All packages installed."
        if self.logic.restartNeeded:
            text += f"<br><b>{self.logic.restartNeeded}</b>"
        self.ui.modelStatusLabel.text = text

    def onDownload(self):
        try:
            self.logic.ensureModelFile(self.logic.settings().validated())
        except SAMMed3DError as error:
            slicer.util.errorDisplay(user_message(error), windowTitle="SAM-Med3D")
        self.updateStatus()

    def onTestConnection(self):
        """Ask the server on the worker thread (it can take seconds); the answer replaces the label's text."""
        self.ui.connectionStatusLabel.text = f"Connecting to {self.logic.settings().server}..."

        def done(text):
            self.ui.connectionStatusLabel.text = text
            self.updateStatus()

        self.logic.testConnection(done)
        self.updateStatus()

    def onInstall(self):
        try:
            self.logic.ensureDependencies(self.logic.settings().backend, askAgain=True)
        except SAMMed3DError as error:
            slicer.util.errorDisplay(user_message(error), windowTitle="SAM-Med3D")
        self.updateStatus()


class SAMMed3DLogic(ScriptedLoadableModuleLogic):
    """Settings, dependencies, the loaded model and the worker thread, shared by the module panel and the Segment
    Editor effect.

    Threads. Loading the model and the effect's encodes and decodes run on one worker thread (`worker`, see
    SAMMed3DLib.slicer.worker), which touches neither Qt nor the scene. While it is busy a Qt timer on the main
    thread polls it every `POLL_MS`: it lends the worker the GIL for up to `LEND_S` (Slicer's main thread holds it
    otherwise), delivers finished jobs to their callbacks, then calls the listeners (the effect's status line).
    Installing packages and downloading stay on the main thread (pip from a worker thread crashes Slicer on macOS)
    and run from the event loop, never inside a click; only the download's network I/O runs in a thread of its own.
    """

    POLL_MS = 25
    LEND_S = 0.015
    STATUS_MS = 5000  # status bar messages go after this long

    _instance = None

    @classmethod
    def shared(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._predictor = None  # the loaded Predictor, or the one set with setPredictor
        self._loadedFor = None  # (ModelSettings, server token) `_predictor` was loaded for; None for a set one
        self.serverToken = ""  # the remote server's token: for this Slicer session only, never stored
        self.testingConnection = False
        self._loading = None  # (Job, ModelSettings, callbacks) of the model load in progress
        self._downloads = {}  # registry name -> BackgroundDownload, kept while it runs (a cancelled dialog)
        self._dependenciesDeclined = False
        self.restartNeeded = None  # why Slicer must restart before the model can load (an upgraded package)
        self.worker = Worker()
        self._poll = None  # the qt.QTimer that polls the worker while it is busy
        self._listeners = []
        self._held = 0  # > 0 while an effect handles an event: deliveries wait for the next tick

    # -- settings ----------------------------------------------------------------------------------------------

    def settings(self):
        stored = qt.QSettings()
        return ModelSettings.from_strings({key: stored.value(key) for key in SETTINGS_KEYS.values()})

    def saveSettings(self, settings):
        stored = qt.QSettings()
        for key, value in settings.to_strings().items():
            stored.setValue(key, value)

    # -- the worker --------------------------------------------------------------------------------------------

    def submit(self, title, work, done):
        """Run `work(job)` on the worker thread; `done(job)` later on the main thread (see the class docstring)."""
        job = self.worker.submit(title, work, done)
        if self._poll is None:
            self._poll = qt.QTimer()
            self._poll.setInterval(self.POLL_MS)
            self._poll.connect("timeout()", self._onPoll)
        if not self._poll.isActive():
            self._poll.start()
        return job

    def _onPoll(self):
        self.worker.lend(self.LEND_S)
        if not self._held:
            self.worker.deliver()
        for listener in list(self._listeners):
            listener()
        if not self.worker.busy:
            self._poll.stop()

    @contextlib.contextmanager
    def deliveriesHeld(self):
        """While an event handler runs (it may open a dialog, whose event loop runs the timer), finished jobs wait
        for the next tick: no callback runs inside a handler."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def addListener(self, listener):
        """Call `listener()` after every poll of the busy worker, on the main thread."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeListener(self, listener):
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- dependencies and model file ---------------------------------------------------------------------------

    def ensureDependencies(self, backend, askAgain=False):
        """Install what the backend needs after asking the user, once per Slicer session unless `askAgain`, with a
        progress dialog. A package that was imported before its new version was installed needs a restart:
        `restartNeeded` then says so, and so does the SAMMed3DError raised."""
        outdated = outdated_torch_imported()
        if outdated:
            self.restartNeeded = RESTART.format(f"PyTorch {outdated} is still loaded")
        if self.restartNeeded:
            raise SAMMed3DError(self.restartNeeded)
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
        stale = imported_already((["torch"] if torchMissing else []) + [import_name(r) for r in pip])
        # Slicer 5.12 and later show pip's own progress dialog (Base/Python/slicer/packaging.py, pip_install);
        # earlier ones only log, and the busy dialog says what runs meanwhile.
        progress = None
        if importlib.util.find_spec("slicer.packaging") is None:
            progress = slicer.util.createProgressDialog(
                labelText="Installing " + ", ".join(names) + "...\nThis can take several minutes.", maximum=0,
                windowTitle="SAM-Med3D")
            slicer.app.processEvents()  # show it: pip keeps the main thread until it is done
        try:
            if torchMissing:
                import PyTorchUtils

                logic = PyTorchUtils.PyTorchUtilsLogic()
                if logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                    raise SAMMed3DError("PyTorch was not installed. Install it from the PyTorch Utils module.")
            if pip:
                slicer.util.pip_install(pip)
        finally:
            if progress is not None:
                progress.close()
        self._dependenciesDeclined = False
        if stale:
            self.restartNeeded = RESTART.format("the old version of " + ", ".join(stale) + " is still loaded")
            raise SAMMed3DError(self.restartNeeded)

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
        self._predictor, self._loadedFor = predictor, None

    def loadedPredictor(self):
        """The predictor to run now: the one set with setPredictor, or the configured model once loaded for the
        current settings; None until then (`loadPredictor`)."""
        if self._predictor is not None and self._loadedFor in (None, (self.settings(), self.serverToken)):
            return self._predictor
        return None

    def loadingJob(self):
        """The job loading the model, while it runs."""
        return self._loading[0] if self._loading else None

    def loadPredictor(self, done):
        """Load the configured model: first, on the main thread, its packages and file (asking the user, with
        progress dialogs: call this from the event loop, never inside a click), then the model itself on the worker.
        `done(job)` runs on the main thread when it is loaded (`job.result`), failed (`job.error`) or was cancelled
        (`cancelLoading`). A load already running for the same settings is joined. Raises SAMMed3DError for what
        the user must do first."""
        wanted = (self.settings().validated(), self.serverToken)
        if self._loading and self._loading[1] == wanted and not self._loading[0].cancelled:
            self._loading[2].append(done)
            return self._loading[0]
        settings, token = wanted
        self.ensureDependencies(settings.backend)
        path = self.ensureModelFile(settings)
        slicer.util.showStatusMessage(f"SAM-Med3D: loading {path.name}...")  # replaced when done
        callbacks = [done]
        job = self.submit(f"Loading the model ({path.name})", lambda job: create_predictor(settings, path, token),
                          lambda job: self._loaded(job, wanted, callbacks))
        self._loading = (job, wanted, callbacks)
        return job

    def cancelLoading(self):
        """Stop waiting for the model: the load cannot be interrupted, but what it brings is discarded."""
        if self._loading:
            self._loading[0].cancel()

    def _loaded(self, job, loadedFor, callbacks):
        if self._loading and self._loading[0] is job:
            self._loading = None
        if job.cancelled:
            message = "SAM-Med3D: loading the model was cancelled"
        elif job.error is not None:
            message = "SAM-Med3D: the model could not be loaded"
        else:
            self._predictor, self._loadedFor = job.result, loadedFor
            logging.info(f"SAM-Med3D: loaded {loadedFor[0]}: {job.result.label} in {job.elapsed():.1f} s")
            message = f"SAM-Med3D: model ready ({job.result.label}, loaded in {job.elapsed():.1f} s)"
        slicer.util.showStatusMessage(message, self.STATUS_MS)
        for callback in callbacks:
            callback(job)

    def testConnection(self, done):
        """Test the configured server on the worker (`connection_report`); `done(text)` on the main thread with the
        report, or what is wrong worded for the user. The remote backend's packages are asked for first."""
        settings, token = self.settings(), self.serverToken
        try:
            self.ensureDependencies("remote")
        except SAMMed3DError as error:
            done(user_message(error))
            return None
        self.testingConnection = True

        def finished(job):
            self.testingConnection = False
            if job.error is None:
                done(job.result)
            elif isinstance(job.error, SAMMed3DError):
                done(user_message(job.error))
            else:
                done(f"The connection test failed: {job.error}")

        return self.submit(f"Testing the connection to {settings.server}",
                           lambda job: connection_report(settings, token), finished)

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
        self.assertIs(logic.loadedPredictor(), oracle)
        self.assertEqual(logic.statusText({"decode": 0.5}), f"{oracle.label} | last click 0.50 s (decode 0.50 s)")
