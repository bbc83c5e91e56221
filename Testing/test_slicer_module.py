"""The SAM-Med3D module (SAMMed3D/SAMMed3D.py) on Slicer's own libraries (Testing/slicer_core_app.py): dependencies
asked once and installed on the main thread's call, the model downloaded with a progress dialog and SHA256 check
from a real HTTP server on 127.0.0.1 (also where tqdm, which Slicer does not ship, cannot be imported), the
configured model loaded once."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import importlib.abc
import sys
import threading
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer_core", reason="the module's tests run on Slicer's libraries (slicer-core, Python >= 3.10)")

import slicer  # noqa: E402
import slicer_qt_standin  # noqa: E402
import torch  # noqa: E402
from slicer_core_app import SlicerCoreApp  # noqa: E402

from SAMMed3DLib import weights  # noqa: E402
from SAMMed3DLib.errors import SAMMed3DError  # noqa: E402
from SAMMed3DLib.slicer.setup import LOCAL_FILE, ModelSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMMED3D_HOME", str(tmp_path / "home"))
    with SlicerCoreApp() as app:
        yield app


@pytest.fixture
def module(app):
    """The SAMMed3D module as Slicer loads it, with what it showed and asked, and a fresh shared logic."""
    sammed3d = importlib.import_module("SAMMed3D")
    sammed3d.SAMMed3DLogic._instance = None
    yield sammed3d, app.record


def test_dependencies_are_asked_once_and_installed_when_confirmed(module, monkeypatch):
    sammed3d, record = module
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (True, ["tqdm>=4.60"]))
    monkeypatch.setattr(sammed3d, "imported_already", lambda names: [])  # a Python that has imported neither
    logic = sammed3d.SAMMed3DLogic.shared()
    record.answers = [False]
    with pytest.raises(SAMMed3DError, match="not installed"):
        logic.ensureDependencies("torch")
    assert len(record.questions) == 1 and "PyTorch" in record.questions[0] and "tqdm" in record.questions[0]
    with pytest.raises(SAMMed3DError, match="Install dependencies"):  # not asked again on the next click
        logic.ensureDependencies("torch")
    assert len(record.questions) == 1 and record.pip == [] and record.torch == []
    logic.ensureDependencies("torch", askAgain=True)  # the panel's button; answered yes
    assert len(record.questions) == 2
    assert record.torch == [False]  # PyTorchUtils installs without asking a second time
    assert record.pip == [["tqdm>=4.60"]]
    assert len(record.progress) == 1 and record.progress[0].kwargs["maximum"] == 0 and record.progress[0].closed
    assert "tqdm" in record.progress[0].kwargs["labelText"]
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, []))
    logic.ensureDependencies("torch")
    assert len(record.questions) == 2


def test_an_upgrade_of_an_imported_package_asks_for_a_restart(module, monkeypatch):
    """Python keeps the torch it imported: after PyTorchUtils installed a newer one, loading would fail late and
    confusingly; the user is told to restart Slicer instead, and is not asked to install again."""
    sammed3d, record = module
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (True, []))  # an old torch, imported
    logic = sammed3d.SAMMed3DLogic.shared()
    with pytest.raises(SAMMed3DError, match="Restart Slicer to use the updated packages: the old version of torch"):
        logic.ensureDependencies("torch")
    assert record.torch == [False] and "Restart Slicer" in logic.restartNeeded
    with pytest.raises(SAMMed3DError, match="Restart Slicer"):
        logic.ensureDependencies("torch")
    assert len(record.questions) == 1 and record.torch == [False]  # not asked or installed again
    slicer_qt_standin.ScriptedLoadableModuleWidget.module_dir = ROOT / "SAMMed3D"
    widget = sammed3d.SAMMed3DWidget()
    widget.setup()
    assert "<b>Restart Slicer" in widget.ui.modelStatusLabel.text and not widget.ui.installButton.enabled


def test_a_torch_older_than_needed_already_imported_asks_for_a_restart(module, monkeypatch):
    sammed3d, record = module
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.1.2+cu118"))
    with pytest.raises(SAMMed3DError, match="Restart Slicer to use the updated packages: PyTorch 2.1.2"):
        sammed3d.SAMMed3DLogic.shared().ensureDependencies("onnx")
    assert not record.questions


@pytest.fixture
def served_checkpoint(tmp_path, monkeypatch):
    """A registry entry whose file is served by a real HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    payload = b"not really a checkpoint, but hashed like one" * 50_000
    (folder / "local.pth").write_bytes(payload)

    class Slow(http.server.SimpleHTTPRequestHandler):
        """Serves in pieces with pauses, so a dialog can be cancelled while the download runs."""

        def copyfile(self, source, outputfile):
            while chunk := source.read(64 * 1024):
                outputfile.write(chunk)
                time.sleep(0.01)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Slow(*a, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    entry = weights.Checkpoint(
        name="local", filename="local.pth", url=f"http://127.0.0.1:{server.server_address[1]}/local.pth",
        page="", size=len(payload), sha256=hashlib.sha256(payload).hexdigest(), description="test",
    )
    monkeypatch.setattr(weights, "REGISTRY", (*weights.REGISTRY, entry))
    yield payload
    server.shutdown()


def test_model_download_asks_shows_progress_and_is_kept(module, served_checkpoint):
    sammed3d, record = module
    logic = sammed3d.SAMMed3DLogic.shared()
    settings = ModelSettings(model="local").validated()
    record.answers = [False]
    with pytest.raises(SAMMed3DError, match="No model"):
        logic.ensureModelFile(settings)
    assert "Nothing is uploaded" in record.questions[0] and not record.progress
    path = logic.ensureModelFile(settings)
    assert path.read_bytes() == served_checkpoint and path.parent == weights.cache_dir()
    assert len(record.progress) == 1 and record.progress[0].closed
    assert record.progress[0].kwargs["maximum"] == 100
    assert logic.ensureModelFile(settings) == path  # verified and cached: not asked, not downloaded again
    assert len(record.questions) == 2 and len(record.progress) == 1


def test_a_cancelled_download_goes_on_and_is_not_asked_again(module, served_checkpoint):
    sammed3d, record = module
    logic = sammed3d.SAMMed3DLogic.shared()
    settings = ModelSettings(model="local").validated()
    record.cancel = True
    with pytest.raises(SAMMed3DError, match="continues where this one stopped"):
        logic.ensureModelFile(settings)
    assert record.progress[0].closed
    record.cancel = False
    path = logic.ensureModelFile(settings)
    assert path.read_bytes() == served_checkpoint
    assert len(record.questions) == 1  # the running download was reused, not asked for again


def test_a_model_only_offered_on_a_web_page_says_where_to_get_it(module):
    from SAMMed3DLib.slicer.messages import user_message

    sammed3d, _ = module
    with pytest.raises(SAMMed3DError, match="offered at https://drive.google.com") as raised:
        sammed3d.SAMMed3DLogic.shared().ensureModelFile(ModelSettings(model="base"))
    assert "choose 'Local file' in the SAM-Med3D module" in user_message(raised.value)


def test_configured_model_is_loaded_once_on_the_worker_and_reloaded_on_change(module, app, tmp_path, monkeypatch):
    from SAMMed3DLib.model import build_sam_med3d

    sammed3d, record = module
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, []))
    threads = []

    def create_predictor(settings, path, token=None):
        threads.append(threading.current_thread())
        return original(settings, path, token)

    original = sammed3d.create_predictor
    monkeypatch.setattr(sammed3d, "create_predictor", create_predictor)
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(build_sam_med3d("tiny").state_dict(), path)
    logic = sammed3d.SAMMed3DLogic.shared()
    assert "not loaded" in logic.statusText() and logic.loadedPredictor() is None
    logic.saveSettings(ModelSettings(model=LOCAL_FILE, local_path=str(path), device="cpu"))
    loaded = []
    logic.loadPredictor(loaded.append)
    assert logic.loadPredictor(loaded.append) is logic.loadingJob()  # joined, not loaded twice
    assert record.status == [("SAM-Med3D: loading tiny.pth...", 0)]  # replaced when done, see below
    app.wait_idle()
    assert len(loaded) == 2 and loaded[0] is loaded[1] and loaded[0].error is None
    first = logic.loadedPredictor()
    assert first is loaded[0].result and logic.statusText() == "PyTorch on cpu"
    assert threads == [logic.worker._thread] and threads[0] is not threading.main_thread()
    text, duration = record.status[-1]
    assert text.startswith("SAM-Med3D: model ready (PyTorch on cpu") and duration == logic.STATUS_MS > 0
    logic.saveSettings(ModelSettings(model=LOCAL_FILE, local_path=str(path), device="auto"))
    assert logic.loadedPredictor() is None  # other settings: loaded again
    logic.loadPredictor(loaded.append)
    app.wait_idle()
    assert logic.loadedPredictor() is not first
    assert not record.questions  # nothing to install, nothing to download


def test_a_long_load_can_be_cancelled(module, app, monkeypatch, tmp_path):
    """The load cannot be interrupted; cancelled, it says so at once and what it brings is dropped."""
    sammed3d, record = module
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, []))
    release = threading.Event()
    monkeypatch.setattr(sammed3d, "create_predictor", lambda settings, path, token: release.wait(30) and object())
    (tmp_path / "model.pth").write_bytes(b"")
    logic = sammed3d.SAMMed3DLogic.shared()
    logic.saveSettings(ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "model.pth"), device="cpu"))
    loaded = []
    job = logic.loadPredictor(loaded.append)
    slicer.app.processEvents()
    assert logic.loadingJob() is job and "Loading the model (model.pth)..." in job.describe()
    logic.cancelLoading()
    release.set()
    app.wait_idle()
    assert loaded == [job] and job.cancelled and logic.loadedPredictor() is None
    assert record.status[-1] == ("SAM-Med3D: loading the model was cancelled", logic.STATUS_MS)


def test_the_panel_offers_the_registry_and_saves_choices(module, monkeypatch, tmp_path):
    sammed3d, record = module
    slicer_qt_standin.ScriptedLoadableModuleWidget.module_dir = ROOT / "SAMMed3D"
    onnx_missing = {"torch": (False, []), "onnx": (False, ["onnxruntime>=1.17"])}
    monkeypatch.setattr(sammed3d, "missing_packages", onnx_missing.get)
    widget = sammed3d.SAMMed3DWidget()
    widget.setup()
    ui = widget.ui
    assert [data for _, data in ui.modelComboBox.items] == [e.name for e in weights.REGISTRY] + [LOCAL_FILE]
    assert [data for _, data in ui.backendComboBox.items] == ["torch", "onnx", "remote"]
    assert [data for _, data in ui.deviceComboBox.items] == ["auto", "cpu", "cuda", "mps"]
    assert ui.modelComboBox.currentData == "turbo" and not ui.localPathLineEdit.enabled
    assert ui.downloadButton.enabled and not ui.installButton.enabled
    assert "not downloaded yet" in ui.modelStatusLabel.text
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData("base"))  # only on a web page: nothing to download
    assert not ui.downloadButton.enabled and "offered at https://drive.google.com" in ui.modelStatusLabel.text
    assert ui.localPathLineEdit.filters == slicer_qt_standin.PathLineEdit.Files  # PyTorch: a checkpoint file

    folder = tmp_path / "exported"
    folder.mkdir()
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData(LOCAL_FILE))
    ui.localPathLineEdit.currentPath = str(folder)
    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("onnx"))
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    stored = sammed3d.SAMMed3DLogic.shared().settings()
    assert stored == ModelSettings(model=LOCAL_FILE, local_path=str(folder), backend="onnx", device="cpu")
    assert ui.localPathLineEdit.enabled and not ui.downloadButton.enabled
    assert ui.localPathLineEdit.filters == slicer_qt_standin.PathLineEdit.Dirs  # ONNX Runtime: an export folder
    assert ui.installButton.enabled and "onnxruntime" in ui.modelStatusLabel.text

    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("mps"))  # not offered by ONNX Runtime: explained
    assert "auto, cpu or cuda" in ui.modelStatusLabel.text

    again = sammed3d.SAMMed3DWidget()  # a new panel shows what was saved
    again.setup()
    assert again.ui.backendComboBox.currentData == "onnx" and again.ui.localPathLineEdit.currentPath == str(folder)
    sammed3d.SAMMed3DLogic.shared().saveSettings(ModelSettings(model="turbo"))  # changed elsewhere meanwhile
    again.enter()  # entering the module shows it
    assert again.ui.modelComboBox.currentData == "turbo" and again.ui.backendComboBox.currentData == "torch"
    ui.segmentEditorButton.emit("clicked()")
    assert record.selected == ["SegmentEditor"]


def test_the_remote_server_panel_tests_the_connection_off_the_main_thread_and_loads(
    module, app, monkeypatch, tiny_export, encoder_server
):
    """The server's fields show with the remote backend only; the URL is saved, the token kept in memory; "Test
    connection" returns at once and its report lands later; the model then loads through the server."""
    from SAMMed3DLib.backends.remote_predictor import RemotePredictor

    sammed3d, record = module
    slicer_qt_standin.ScriptedLoadableModuleWidget.module_dir = ROOT / "SAMMed3D"
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, []))
    widget = sammed3d.SAMMed3DWidget()
    widget.setup()
    ui, logic = widget.ui, sammed3d.SAMMed3DLogic.shared()
    remote_widgets = (ui.serverLabel, ui.serverLineEdit, ui.tokenLabel, ui.tokenLineEdit, ui.testConnectionButton,
                      ui.connectionStatusLabel)
    assert not any(w.visible for w in remote_widgets)
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData(LOCAL_FILE))
    ui.localPathLineEdit.currentPath = str(tiny_export)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("remote"))
    assert all(w.visible for w in remote_widgets) and not ui.testConnectionButton.enabled  # no URL yet
    assert ui.localPathLineEdit.filters == slicer_qt_standin.PathLineEdit.Dirs  # the decoder's export folder
    assert "enter the address of the encoder server" in ui.modelStatusLabel.text
    ui.serverLineEdit.text = encoder_server
    ui.tokenLineEdit.text = "s3cr3t-token"
    assert logic.settings() == ModelSettings(model=LOCAL_FILE, local_path=str(tiny_export), backend="remote",
                                             device="cpu", server=encoder_server)
    assert logic.serverToken == "s3cr3t-token"
    assert not any("s3cr3t" in str(value) for value in slicer_qt_standin.Settings.store.values())
    ui.tokenLineEdit.text = ""  # this server asks for none
    assert ui.testConnectionButton.enabled

    ui.testConnectionButton.click()
    assert ui.connectionStatusLabel.text == f"Connecting to {encoder_server}..."  # the click returned at once
    assert not ui.testConnectionButton.enabled  # one test at a time
    app.wait_idle()
    report = ui.connectionStatusLabel.text
    assert report.startswith("kserve ") and "encode round trip" in report and "same checkpoint" in report
    assert ui.testConnectionButton.enabled and not record.messages

    loaded = []
    logic.loadPredictor(loaded.append)
    app.wait_idle()
    assert loaded[0].error is None and isinstance(logic.loadedPredictor(), RemotePredictor)
    assert logic.statusText().startswith(f"remote server {encoder_server}")
    logic.serverToken = "another"  # another token: loaded again
    assert logic.loadedPredictor() is None

    ui.serverLineEdit.text = "http://127.0.0.1:9"  # nothing listens there
    ui.testConnectionButton.click()
    app.wait_idle()
    assert "cannot reach the server" in ui.connectionStatusLabel.text
    assert "Check the server URL in the SAM-Med3D module" in ui.connectionStatusLabel.text and not record.messages
    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("torch"))
    assert not any(w.visible for w in remote_widgets)


def test_the_token_field_hides_what_is_typed():
    """The .ui file's token field is a password field (QLineEdit::Password), which the stand-in does not draw."""
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(ROOT / "SAMMed3D" / "Resources" / "UI" / "SAMMed3D.ui")
    token = next(w for w in tree.iter("widget") if w.get("name") == "tokenLineEdit")
    echo = next(p for p in token.iter("property") if p.get("name") == "echoMode")
    assert echo.find("enum").text == "QLineEdit::Password"


class _NoTqdm(importlib.abc.MetaPathFinder):
    """A Python without tqdm, as in a fresh Slicer: importing it fails."""

    def find_spec(self, name, path=None, target=None):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


def test_the_panels_download_works_without_tqdm(module, served_checkpoint, monkeypatch):
    sammed3d, record = module
    for name in [name for name in sys.modules if name == "tqdm" or name.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoTqdm(), *sys.meta_path])
    slicer_qt_standin.ScriptedLoadableModuleWidget.module_dir = ROOT / "SAMMed3D"
    monkeypatch.setattr(sammed3d, "missing_packages", lambda backend: (False, []))
    sammed3d.SAMMed3DLogic.shared().saveSettings(ModelSettings(model="local"))
    widget = sammed3d.SAMMed3DWidget()
    widget.setup()
    assert widget.ui.downloadButton.enabled
    widget.ui.downloadButton.click()
    assert not record.messages, record.messages
    assert weights.cached("local").read_bytes() == served_checkpoint
    assert record.progress[0].closed and not widget.ui.downloadButton.enabled
    assert "tqdm" not in sys.modules
