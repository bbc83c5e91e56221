"""ONNX export and the ONNX Runtime predictor against the torch predictor, on randomised vit_b_ori weights.

The published network is exported once per module (through the `sammed3d export-onnx` command); every test reads
that export.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import SimpleITK as sitk

from SAMMed3DLib import InteractiveSession, OnnxPredictor, TorchPredictor, Volume, __version__
from SAMMed3DLib.backends import onnx_export
from SAMMed3DLib.backends.onnx_predictor import (
    CHECKPOINT_SHA256_KEY,
    DECODER_FILE,
    ENCODER_FILE,
    VERSION_KEY,
    _requested_providers,
)
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.model import load_sam_med3d
from SAMMed3DLib.testing.random_weights import random_model, save_random_checkpoint
from SAMMed3DLib.testing.scenes import bright_box
from SAMMed3DLib.weights import sha256_of

REPOSITORY = Path(__file__).resolve().parent.parent
LOGITS_TOLERANCE = 1e-4
MASK_MISMATCH = 0.001  # fraction of voxels


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """The export folder, the checkpoint's sha256 and torch model, and what the command printed."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_random_checkpoint(folder / "random_vit_b.pth", "vit_b_ori", seed=7)
    output = folder / "export"
    printed, progress = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
        assert main(["export-onnx", "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    result = {"output": output, "sha256": sha256_of(checkpoint), "model": load_sam_med3d(checkpoint),
              "printed": printed.getvalue().splitlines(), "progress": progress.getvalue()}
    checkpoint.unlink()  # 400 MB
    return result


def synthetic_volume() -> Volume:
    return Volume(*bright_box())


def test_export_command_writes_checked_files_with_metadata(exported) -> None:
    output = exported["output"]
    assert sorted(p.name for p in output.iterdir()) == [DECODER_FILE, ENCODER_FILE]  # no staging folder left
    (line,) = exported["printed"]
    assert line.startswith(f"wrote {output / ENCODER_FILE} and {output / DECODER_FILE}")
    assert "largest difference from torch: embedding" in line
    for stage in ("loading the checkpoint", "tracing the encoder", "tracing the decoder", "checking against torch"):
        assert stage in exported["progress"]  # the export's progress bar, stage by stage
    for name in (ENCODER_FILE, DECODER_FILE):
        assert (output / name).stat().st_mode & 0o777 == 0o644  # the umask's mode (022 here)
        model = onnx.load(str(output / name), load_external_data=False)
        assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
        properties = {entry.key: entry.value for entry in model.metadata_props}
        assert properties[VERSION_KEY] == __version__
        assert properties[CHECKPOINT_SHA256_KEY] == exported["sha256"]
        assert properties["source_checkpoint"] == "random_vit_b.pth"
    decoder = onnx.load(str(output / DECODER_FILE), load_external_data=False)
    points = next(item for item in decoder.graph.input if item.name == "points")
    assert points.type.tensor_type.shape.dim[1].dim_param  # a symbolic number of points
    assert OnnxPredictor(output, providers="cpu").metadata[VERSION_KEY] == __version__


def test_encoder_keeps_the_closed_form_window_attention(exported, tmp_path: Path) -> None:
    """One softmax per block, over the 512 real keys (global blocks) or 512 + 1 padding key (window blocks):
    never the reference's 2744-token window. The attention weights are made graph outputs to read their shapes."""
    model = onnx.load(str(exported["output"] / ENCODER_FILE))
    softmax_outputs = [node.output[0] for node in model.graph.node if node.op_type == "Softmax"]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in softmax_outputs)
    onnx.save(model, str(tmp_path / "probed.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "probed.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    weights = session.run(softmax_outputs, {"image": image})
    assert [w.shape for w in weights] == [(1, 12, 512, 512 if block in (2, 5, 8, 11) else 513) for block in range(12)]
    assert all(np.allclose(w.sum(-1), 1, atol=1e-5) for w in weights)


def test_onnx_runtime_matches_the_torch_predictor(exported) -> None:
    """Logits within 1e-4 (max abs) and masks identical except <= 0.1% of voxels, for 1, 3 and 10 points."""
    torch_predictor = TorchPredictor(exported["model"], "cpu")
    onnx_predictor = OnnxPredictor(exported["output"], providers="cpu")
    assert onnx_predictor.providers == ["CPUExecutionProvider"]
    rng = np.random.default_rng(11)
    image = rng.standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
    expected_embedding = torch_predictor.encode(image)
    embedding = onnx_predictor.encode(image)
    assert embedding.shape == tuple(expected_embedding.shape) and embedding.dtype == np.float32
    assert np.abs(embedding - expected_embedding.numpy()).max() < 1e-4 * np.abs(embedding).max()

    previous = np.zeros((1, 1, 32, 32, 32), np.float32)  # the first round's all-zero mask prompt
    for count in (1, 3, 10):
        points = (rng.random((1, count, 3)) * 128).astype(np.float32)
        labels = rng.integers(0, 2, (1, count)).astype(np.int64)
        labels[0, 0] = 1
        expected_logits, expected_iou = torch_predictor.decode(expected_embedding, points, labels, previous)
        logits, iou = onnx_predictor.decode(embedding, points, labels, previous)
        assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
        assert logits.dtype == iou.dtype == np.float32
        assert np.abs(logits - expected_logits).max() <= LOGITS_TOLERANCE
        assert np.abs(iou - expected_iou).max() <= LOGITS_TOLERANCE
        mask, expected_mask = logits > 0, expected_logits > 0
        assert 0.01 < expected_mask.mean() < 0.99  # a mask with both sides, so that the comparison can fail
        assert np.mean(mask != expected_mask) <= MASK_MISMATCH
        previous = expected_logits  # the next round's mask prompt, as in the session


def test_session_runs_without_torch(exported, tmp_path: Path) -> None:
    """SAMMed3DLib, a Volume and an InteractiveSession on OnnxPredictor, in a process where importing torch fails;
    its masks match a torch session's except <= 0.1% of voxels."""
    volume = synthetic_volume()
    np.save(tmp_path / "array.npy", volume.array)
    clicks = [([45.0, 50.0, 44.0], True), ([30.0, 40.0, 30.0], False)]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import json
        import numpy as np
        from SAMMed3DLib import InteractiveSession, OnnxPredictor, Volume
        volume = Volume(np.load({str(tmp_path / "array.npy")!r}), np.diag([1.0, 1.0, 2.0, 1.0]))
        session = InteractiveSession(OnnxPredictor({str(exported["output"])!r}), volume)
        for index, (ras, positive) in enumerate({clicks!r}):
            np.save({str(tmp_path)!r} + f"/mask{{index}}.npy", session.add_click(ras, positive).mask)
        print(json.dumps({{"modality": session.modality, "torch": [m for m in sys.modules if m.startswith("torch")
                                                                   and sys.modules[m] is not None]}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, encoding="utf-8",
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"modality": "mr", "torch": []}

    session = InteractiveSession(TorchPredictor(exported["model"], "cpu"), volume)
    for index, (ras, positive) in enumerate(clicks):
        expected = session.add_click(ras, positive).mask
        found = np.load(tmp_path / f"mask{index}.npy")
        assert found.shape == expected.shape == volume.array.shape and found.dtype == np.uint8
        assert 0 < expected.sum() < expected.size
        assert np.mean(found != expected) <= MASK_MISMATCH


def test_predict_command_runs_on_the_onnx_backend(exported, tmp_path: Path) -> None:
    volume = synthetic_volume()
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "image.nrrd"))
    arguments = ["predict", str(tmp_path / "image.nrrd"), "--backend", "onnx", "--checkpoint", str(exported["output"]),
                 "--ijk", "--point", "45", "50", "22", "--output", str(tmp_path / "mask.nrrd")]
    assert main(arguments) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nrrd")))
    assert mask.shape == volume.array.shape and 0 < mask.sum() < mask.size


def test_failed_check_leaves_an_earlier_export_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_export.export_model(random_model("tiny", 0), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (ENCODER_FILE, DECODER_FILE)}
    monkeypatch.setattr(onnx_export, "TOLERANCE", 0.0)
    with pytest.raises(SAMMed3DError, match="differs from torch"):
        onnx_export.export_model(random_model("tiny", 1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DECODER_FILE, ENCODER_FILE]
    assert all((tmp_path / name).read_bytes() == content for name, content in before.items())


def test_bad_folders_and_providers_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SAMMed3DError, match="missing is not an ONNX export of SAM-Med3D: no such folder"):
        OnnxPredictor(tmp_path / "missing")
    (tmp_path / ENCODER_FILE).write_bytes(b"not onnx")
    with pytest.raises(SAMMed3DError, match=f"lacks {DECODER_FILE}"):
        OnnxPredictor(tmp_path)
    (tmp_path / DECODER_FILE).write_bytes(b"not onnx")
    with pytest.raises(SAMMed3DError, match="not a readable ONNX model"):
        OnnxPredictor(tmp_path)
    with pytest.raises(SAMMed3DError, match="unknown ONNX Runtime providers 'mps'"):
        OnnxPredictor(tmp_path, providers="mps")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(SAMMed3DError, match="onnxruntime-gpu"):
            OnnxPredictor(tmp_path, providers="cuda")

    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello", encoding="utf-8")
    assert main(["export-onnx", "--checkpoint", str(not_a_checkpoint), "--output", str(tmp_path / "out")]) == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / ENCODER_FILE).exists()
    checkpoint = save_random_checkpoint(tmp_path / "tiny.pth", "tiny", seed=2)
    assert main(["export-onnx", "--checkpoint", str(checkpoint), "--output", str(tmp_path / ENCODER_FILE)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_auto_providers_prefer_cuda_when_onnxruntime_gpu_is_installed() -> None:
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu_build = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert _requested_providers("auto", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _requested_providers("auto", cpu_build) == ["CPUExecutionProvider"]
    assert _requested_providers("CPU", gpu_build) == ["CPUExecutionProvider"]
    assert _requested_providers(["CPUExecutionProvider"], cpu_build) == ["CPUExecutionProvider"]
    with pytest.raises(SAMMed3DError, match="onnxruntime-gpu"):
        _requested_providers("cuda", cpu_build)
    with pytest.raises(SAMMed3DError, match="TensorrtExecutionProvider are not available"):
        _requested_providers(["TensorrtExecutionProvider"], cpu_build)


def test_export_without_the_onnx_packages_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    checkpoint = save_random_checkpoint(tmp_path / "tiny.pth")
    assert main(["export-onnx", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.strip() == ("sammed3d export-onnx: error: exporting to ONNX needs onnx, which is not installed: "
                             "pip install 'SAMMed3DLib[torch,onnx]'")
    assert not (tmp_path / "out").exists()
