"""The module panel's plain logic: settings, missing packages, background download, predictor, status line."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.slicer import setup
from SAMMed3DLib.slicer.setup import (
    LOCAL_FILE,
    REQUIREMENTS,
    SETTINGS_KEYS,
    BackgroundDownload,
    ModelSettings,
    create_predictor,
    import_name,
    imported_already,
    missing_packages,
    model_file,
    nvidia_gpu_present,
    outdated_torch_imported,
    status_text,
)
from SAMMed3DLib.testing.oracle import ThresholdPredictor


def test_settings_round_trip_through_strings_and_fall_back_on_bad_values():
    settings = ModelSettings(model=LOCAL_FILE, local_path="/data/model.pth", backend="torch", device="cpu")
    stored = settings.to_strings()
    assert set(stored) == set(SETTINGS_KEYS.values()) and all(isinstance(v, str) for v in stored.values())
    assert ModelSettings.from_strings(stored) == settings
    assert ModelSettings.from_strings({}) == ModelSettings()
    # A stale or hand-edited value does not break the panel: that value falls back to its default.
    assert ModelSettings.from_strings({SETTINGS_KEYS["device"]: "tpu", SETTINGS_KEYS["local_path"]: "/x"}) == (
        ModelSettings(local_path="/x")
    )
    # A combination that does not work is kept as chosen (the panel shows it, validated() explains it).
    onnx = ModelSettings.from_strings({SETTINGS_KEYS["backend"]: "onnx"})
    assert onnx == ModelSettings(backend="onnx")
    with pytest.raises(SAMMed3DError, match="exported model folder"):
        onnx.validated()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ModelSettings(backend="tensorrt"), "unknown backend 'tensorrt'"),
        (ModelSettings(device="tpu"), "unknown device 'tpu'"),
        (ModelSettings(model="nonexistent"), "unknown model 'nonexistent'"),
        (ModelSettings(model=LOCAL_FILE), "choose the model file"),
        (ModelSettings(backend="onnx"), "exported model folder"),
        (ModelSettings(model=LOCAL_FILE, local_path="/x", backend="onnx", device="mps"), "auto, cpu or cuda"),
        (ModelSettings(model=LOCAL_FILE, local_path="/x", backend="remote"), "enter the address of the encoder server"),
        (ModelSettings(backend="remote", server="http://gpu1:8000"), "choose 'local file' and the ONNX export folder"),
        (ModelSettings(model=LOCAL_FILE, local_path="/x", backend="remote", server="http://gpu1:8000", device="mps"),
         "auto, cpu or cuda"),
    ],
)
def test_wrong_choices_are_named(settings, message):
    with pytest.raises(SAMMed3DError, match=message):
        settings.validated()


def test_missing_packages_lists_torch_apart_from_pip_requirements():
    installed = {"torch", "scipy"}
    torch_missing, pip = missing_packages("torch", lambda name: name in installed)
    assert (torch_missing, pip) == (False, ["safetensors>=0.4"])
    torch_missing, pip = missing_packages("torch", lambda name: False)
    assert torch_missing and pip == ["scipy>=1.8", "safetensors>=0.4"]
    torch_missing, pip = missing_packages("onnx", lambda name: name != "onnxruntime")
    assert (torch_missing, pip) == (False, ["onnxruntime>=1.17"])
    assert missing_packages("torch") == (False, [])  # this environment has everything, torch >= 2.5 included
    assert missing_packages("remote", lambda name: name != "tritonclient") == (False, ["tritonclient[http]>=2.40"])


def test_the_slicer_setup_asks_for_the_floors_pyproject_declares():
    """One set of version floors: what Slicer installs is what pip would (a changed floor must change both)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {r.split(";")[0].split("#")[0].strip() for r in declared}
    assert set(REQUIREMENTS.values()) <= declared, set(REQUIREMENTS.values()) - declared


def test_an_older_torch_counts_as_missing(monkeypatch):
    import importlib.metadata

    from SAMMed3DLib.slicer import setup as slicer_setup

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.4.1+cu121" if name == "torch" else "9")
    assert missing_packages("torch")[0]
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.5.0a0+git")
    assert not missing_packages("torch")[0]
    assert slicer_setup.TORCH_REQUIREMENT == ">=2.5"


def test_the_server_is_stored_and_the_token_is_not_a_setting():
    settings = ModelSettings(model=LOCAL_FILE, local_path="/exports/turbo", backend="remote",
                             server="https://gpu1.example.org:8000", device="cpu")
    stored = settings.to_strings()
    assert stored[SETTINGS_KEYS["server"]] == "https://gpu1.example.org:8000"
    assert ModelSettings.from_strings(stored) == settings.validated()
    assert not any("token" in key.lower() for key in SETTINGS_KEYS.values())  # the module keeps it in memory


def test_the_remote_backend_from_the_panels_settings(tiny_export, encoder_server, tmp_path):
    """The panel's choices reach a real `sammed3d serve` on 127.0.0.1: the connection test names the server and the
    round trip and confirms the decoder's checkpoint; the predictor encodes there, and the status line says so."""
    from SAMMed3DLib.backends.onnx_export import export_checkpoint
    from SAMMed3DLib.backends.remote_predictor import RemotePredictor
    from SAMMed3DLib.errors import CheckpointMismatch, ServerUnreachable
    from SAMMed3DLib.slicer.messages import user_message
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint

    settings = ModelSettings(model=LOCAL_FILE, local_path=str(tiny_export), backend="remote",
                             server=f" {encoder_server} ", device="cpu")  # spaces, as pasted
    report = setup.connection_report(settings)
    assert report.startswith("kserve ") and f"at {encoder_server}" in report and "encode round trip" in report
    assert report.endswith("the local decoder belongs to the same checkpoint.")
    unchecked = setup.connection_report(ModelSettings(backend="remote", server=encoder_server))
    assert "Choose the decoder's export folder" in unchecked

    predictor = create_predictor(settings, model_file(settings))
    assert isinstance(predictor, RemotePredictor) and predictor.url == encoder_server
    image = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    points, labels = np.array([[[64, 64, 64]]], np.float32), np.array([[1]], np.int64)
    logits, _ = predictor.decode(predictor.encode(image), points, labels, np.zeros((1, 1, 32, 32, 32), np.float32))
    assert logits.shape == (1, 1, 32, 32, 32) and np.isfinite(logits).all()
    line = status_text(predictor, {"encode": predictor.last_round_trip_s, "decode": 0.01})
    assert line.startswith(f"remote server {encoder_server} (kserve") and "decoder ONNX Runtime on cpu" in line
    assert line.endswith(f"| encoded on the server, round trip {predictor.last_round_trip_s:.2f} s")
    assert "round trip" not in status_text(predictor, {"encode": 0.0, "decode": 0.01})  # a cached region

    other = tmp_path / "other"
    export_checkpoint(save_random_checkpoint(tmp_path / "other.pth", "tiny", seed=6), other)
    with pytest.raises(CheckpointMismatch) as mismatch:
        setup.connection_report(ModelSettings(model=LOCAL_FILE, local_path=str(other), backend="remote",
                                              server=encoder_server))
    assert "Choose the decoder exported from the checkpoint the server uses" in user_message(mismatch.value)
    with pytest.raises(ServerUnreachable) as unreachable:
        setup.connection_report(ModelSettings(backend="remote", server="http://127.0.0.1:9"))
    assert "Check the server URL in the SAM-Med3D module" in user_message(unreachable.value)


def test_status_line_names_the_predictor_and_timings():
    oracle = ThresholdPredictor()
    assert status_text(oracle) == "threshold oracle (no network)"
    text = status_text(oracle, {"encode": 1.0, "decode": 0.25})
    assert text == "threshold oracle (no network) | last click 1.25 s (encode 1.00 s, decode 0.25 s)"
    text = status_text(oracle, {"preprocess": 0.1, "encode": 0.0, "decode": 0.02, "paste": 0.03, "total": 0.2})
    assert text.endswith("| last click 0.20 s (preprocess 0.10 s, encode 0.00 s, decode 0.02 s, paste 0.03 s)")


def test_model_file_and_predictor_from_a_random_weight_checkpoint(tmp_path, monkeypatch):
    from SAMMed3DLib.model import build_sam_med3d

    monkeypatch.setenv("SAMMED3D_HOME", str(tmp_path / "home"))
    assert model_file(ModelSettings()) is None  # nothing downloaded yet
    with pytest.raises(SAMMed3DError, match="does not exist"):
        model_file(ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "missing.pth")))
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(build_sam_med3d("tiny").state_dict(), path)
    settings = ModelSettings(model=LOCAL_FILE, local_path=str(path), device="cpu")
    assert model_file(settings) == path
    predictor = create_predictor(settings, path)
    assert predictor.device == "cpu" and predictor.label == "PyTorch on cpu"
    image = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    embedding = predictor.encode(image)
    points, labels = np.array([[[64, 64, 64]]], np.float32), np.array([[1]], np.int64)
    logits, iou = predictor.decode(embedding, points, labels, np.zeros((1, 1, 32, 32, 32), np.float32))
    assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1) and np.isfinite(logits).all()


def test_onnx_predictor_from_an_exported_folder_matches_torch(tmp_path):
    from SAMMed3DLib.backends.onnx_export import export_model
    from SAMMed3DLib.model import build_sam_med3d

    torch.manual_seed(0)
    model = build_sam_med3d("tiny").eval()
    export_model(model, tmp_path / "onnx")
    settings = ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "onnx"), backend="onnx", device="cpu")
    predictor = create_predictor(settings, model_file(settings))
    assert predictor.device == "cpu" and predictor.label == "ONNX Runtime on cpu"
    image = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    points, labels = np.array([[[40, 70, 64]]], np.float32), np.array([[1]], np.int64)
    mask = np.zeros((1, 1, 32, 32, 32), np.float32)
    logits, _ = predictor.decode(predictor.encode(image), points, labels, mask)
    with torch.no_grad():
        expected, _ = model.decode(model.encode(torch.from_numpy(image)), torch.from_numpy(points),
                                   torch.from_numpy(labels), torch.from_numpy(mask))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-3)


class _Slow(http.server.SimpleHTTPRequestHandler):
    """Serves files in small pieces with pauses, so a download is seen in progress."""

    def copyfile(self, source, outputfile):
        while chunk := source.read(64 * 1024):
            outputfile.write(chunk)
            outputfile.flush()
            time.sleep(0.01)

    def log_message(self, *args):
        pass


def test_background_download_reports_progress_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED3D_HOME", str(tmp_path / "home"))
    served = tmp_path / "served"
    served.mkdir()
    payload = np.random.default_rng(1).bytes(3 << 20)  # 3 reads of weights._CHUNK
    (served / "model.pth").write_bytes(payload)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Slow(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.pth"
    try:
        download = BackgroundDownload(url, sha256=hashlib.sha256(payload).hexdigest()).start()
        seen = []
        while not download.wait(0.05):
            seen.append(download.fraction())
        assert any(0 < f < 0.99 for f in seen)  # progress was visible while the thread ran
        assert seen == sorted(seen)
        assert download.fraction() == 1.0
        path = download.result()
        assert path.read_bytes() == payload and path.parent == Path(tmp_path / "home" / "weights")

        wrong = BackgroundDownload(url.replace("model", "other"), sha256="0" * 64).start()
        (served / "other.pth").write_bytes(b"x")
        wrong.wait(30)
        with pytest.raises(SAMMed3DError):
            wrong.result()
    finally:
        server.shutdown()


def test_onnx_runtime_is_offered_for_the_gpu_where_an_nvidia_gpu_is_present(monkeypatch, tmp_path):
    none = lambda name: False  # noqa: E731
    assert missing_packages("onnx", none, nvidia=lambda: True) == (False, ["onnxruntime-gpu>=1.17", "scipy>=1.8"])
    assert missing_packages("onnx", none, nvidia=lambda: False) == (False, ["onnxruntime>=1.17", "scipy>=1.8"])
    assert import_name("onnxruntime-gpu>=1.17") == "onnxruntime" and import_name("scipy>=1.8") == "scipy"
    monkeypatch.setattr(setup, "NVIDIA_DRIVER_FILE", tmp_path / "version")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not nvidia_gpu_present()  # no nvidia-smi, no driver module
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54\n", encoding="utf-8")
    assert nvidia_gpu_present()


def test_an_upgrade_needs_a_restart_when_the_old_version_is_imported():
    modules = {"torch": types.SimpleNamespace(__version__="2.1.2+cu118"), "scipy": object()}
    assert imported_already(["torch", "safetensors", "scipy"], modules) == ["torch", "scipy"]
    assert outdated_torch_imported(modules) == "2.1.2+cu118"
    assert outdated_torch_imported({"torch": types.SimpleNamespace(__version__="2.13.0+cpu")}) is None
    assert outdated_torch_imported({}) is None


def test_a_local_model_is_a_file_for_pytorch_and_a_folder_for_onnx_runtime(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(SAMMed3DError, match="is a folder, and PyTorch reads a checkpoint file"):
        model_file(ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "export")))
    with pytest.raises(SAMMed3DError, match="is a file, and ONNX Runtime reads an exported model folder"):
        model_file(ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "model.pth"), backend="onnx"))
    assert model_file(ModelSettings(model=LOCAL_FILE, local_path=str(tmp_path / "export"), backend="onnx")) == (
        tmp_path / "export")
