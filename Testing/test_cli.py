"""`sammed3d predict` and the command line's contract: real CT and MR files in, a mask with exactly the input's
geometry out (NIfTI, NRRD, .seg.nrrd), and every user error as one line, exit code 2 and no partial output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cli import COMMANDS, main
from SAMMed3DLib.commands import _common
from SAMMed3DLib.testing.oracle import ThresholdPredictor
from SAMMed3DLib.testing.random_weights import save_random_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", variant="tiny", seed=0)


@pytest.fixture()
def oracle(monkeypatch):
    """The threshold oracle in place of the network (the checkpoint is not read)."""
    monkeypatch.setattr(_common, "build_predictor", lambda args: ThresholdPredictor())


def assert_same_grid(output: Path, reference: Path) -> np.ndarray:
    """Same size, spacing, origin and direction: bit for bit in NRRD, to float32 precision in NIfTI (its header
    stores float32)."""
    written, original = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert written.GetSize() == original.GetSize()
    tolerance = {"rtol": 1e-6, "atol": 1e-5} if output.name.endswith((".nii", ".nii.gz")) else {"rtol": 0, "atol": 0}
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, get)(), getattr(original, get)(), **tolerance, err_msg=get)
    array = sitk.GetArrayFromImage(written)
    assert array.dtype == np.uint8 and set(np.unique(array)) <= {0, 1}
    return array


def test_every_command_has_help_with_examples(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out.lower(), name


def test_predict_on_real_mr_with_a_checkpoint_keeps_the_geometry(pyradiomics_data, tiny_checkpoint, tmp_path, capsys):
    """The torch backend, then the ONNX backend on an export of the same checkpoint: same mask."""
    from SAMMed3DLib.backends.onnx_export import export_checkpoint

    image = pyradiomics_data / "brain1_image.nrrd"  # LPS-flipped direction
    click = ["--ijk", "--point", "128", "120", "12", "--device", "cpu"]
    output = tmp_path / "mask.nii.gz"
    assert main(["predict", str(image), "--checkpoint", str(tiny_checkpoint), *click, "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {output}: ")
    mask = assert_same_grid(output, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]

    export_checkpoint(tiny_checkpoint, tmp_path / "onnx")
    by_onnx = tmp_path / "onnx.nrrd"
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "onnx"), "--backend", "onnx", *click,
                 "--output", str(by_onnx)]) == 0
    onnx_mask = assert_same_grid(by_onnx, image)
    assert mask.sum() > 0 and np.count_nonzero(onnx_mask != mask) <= 1e-4 * mask.sum()


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nrrd"])
def test_predict_on_real_ct_puts_the_mask_at_the_click(pyradiomics_data, tmp_path, oracle, suffix):
    image = pyradiomics_data / "lung1_image.nrrd"
    volume = sitk.ReadImage(str(image))
    i, j, k = 218, 359, 33  # the lung lesion
    lps = volume.TransformIndexToPhysicalPoint((i, j, k))
    ras = [-lps[0], -lps[1], lps[2]]
    by_ras, by_ijk = tmp_path / f"ras{suffix}", tmp_path / f"ijk{suffix}"
    assert main(["predict", str(image), "--checkpoint", "unused", "--point", *map(str, ras),
                 "--output", str(by_ras)]) == 0
    assert main(["predict", str(image), "--checkpoint", "unused", "--ijk", "--point", str(i), str(j), str(k),
                 "--output", str(by_ijk)]) == 0
    mask = assert_same_grid(by_ras, image)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(pyradiomics_data / "lung1_label.nrrd"))) > 0
    assert mask.sum() > 0 and lesion[mask > 0].all()  # the oracle's mask lies on the clicked lesion
    offset_mm = (np.argwhere(mask).mean(axis=0) - (k, j, i)) * np.array(volume.GetSpacing())[::-1]
    assert np.linalg.norm(offset_mm) < 5.0
    np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(sitk.ReadImage(str(by_ijk))))
    if suffix == ".seg.nrrd":
        header = sitk.ReadImage(str(by_ras))
        assert header.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
        assert header.GetMetaData("Segment0_LabelValue") == "1"
        found = np.argwhere(mask)
        low, high = found.min(axis=0)[::-1], found.max(axis=0)[::-1]
        assert header.GetMetaData("Segment0_Extent") == " ".join(f"{a} {b}" for a, b in zip(low, high))


def test_negative_clicks_apply_in_order(pyradiomics_data, tmp_path, oracle):
    image = pyradiomics_data / "lung1_image.nrrd"
    output = tmp_path / "m.nrrd"
    lesion = ["218", "359", "33"]
    assert main(["predict", str(image), "--checkpoint", "x", "--ijk", "--point", *lesion, "--negative", *lesion,
                 "--output", str(output)]) == 0
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(output))).any()  # removed again
    assert main(["predict", str(image), "--checkpoint", "x", "--ijk", "--negative", *lesion, "--point", *lesion,
                 "--output", str(output)]) == 0
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(output)))[33, 353:356, 223].all()


def user_error(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_user_errors_are_one_line_and_leave_nothing_behind(pyradiomics_data, tiny_checkpoint, tmp_path, capsys):
    ct = str(pyradiomics_data / "lung1_image.nrrd")
    out = tmp_path / "out"
    out.mkdir()
    mask = str(out / "mask.nii.gz")
    model = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    user_error(capsys, ["predict", str(tmp_path / "nope.nii.gz"), *model, "--point", "0", "0", "0", "--output", mask],
               "no such file", "nope.nii.gz")
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(flat))
    user_error(capsys, ["predict", str(flat), *model, "--point", "0", "0", "0", "--output", mask], "3D")
    user_error(capsys, ["predict", ct, *model, "--point", "0", "0", "9999", "--output", mask],
               "click 1", "outside the volume")
    user_error(capsys, ["predict", ct, *model, "--ijk", "--point", "10", "10", "48", "--output", mask],
               "click 1", "outside the image", "0 to 511 / 511 / 47")
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("these are not weights", encoding="utf-8")
    user_error(capsys, ["predict", ct, "--checkpoint", str(not_a_checkpoint), "--ijk", "--point", "1", "1", "1",
                        "--output", mask], "notes.pth", "not a PyTorch checkpoint")
    user_error(capsys, ["predict", ct, "--checkpoint", "turbbo", "--ijk", "--point", "1", "1", "1", "--output", mask],
               "turbbo", "not a checkpoint name")
    user_error(capsys, ["predict", ct, *model, "--point", "0", "0", "0", "--output", str(out / "mask.png")],
               "unsupported file type")
    user_error(capsys, ["predict", ct, *model, "--point", "0", "0", "0", "--output", str(tmp_path / "no" / "m.nrrd")],
               "does not exist")
    user_error(capsys, ["predict", ct, *model, "--output", mask], "no clicks")
    user_error(capsys, ["evaluate", "--images", str(tmp_path / "none"), "--labels", str(tmp_path), "--output",
                        str(out), *model], "--images", "no such folder")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = True
    if not cuda:
        user_error(capsys, ["predict", ct, "--checkpoint", str(tiny_checkpoint), "--device", "cuda", "--ijk",
                            "--point", "1", "1", "1", "--output", mask], "device 'cuda' is not available")
    assert list(out.iterdir()) == []


def test_a_process_whose_peer_stopped_the_run_exits_quietly(monkeypatch, tmp_path, capsys):
    """Under torchrun the process that failed prints the one line; one left waiting for it in a collective (whose
    process group then raises) exits with 2 and says nothing more."""
    from SAMMed3DLib.commands import evaluate
    from SAMMed3DLib.errors import ProcessLost

    def lost(args):
        raise ProcessLost(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))

    monkeypatch.setattr(evaluate, "run", lost)
    argv = ["evaluate", "--images", str(tmp_path), "--labels", str(tmp_path), "--output", str(tmp_path / "o"),
            "--checkpoint", "x.pth"]
    assert main(argv) == 2
    assert capsys.readouterr().err == ""


def test_installed_entry_point_runs_without_importing_torch_for_help():
    code = "import sys; from SAMMed3DLib.cli import main; main(['weights', 'list']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.fixture()
def no_model(monkeypatch):
    """Fails the test if a command loads a model: what must be found before it, is."""
    def build_predictor(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(_common, "build_predictor", build_predictor)


def test_predict_refuses_bad_outputs_and_clicks_before_the_model_loads(pyradiomics_data, tmp_path, capsys, no_model,
                                                                      read_only_folder, monkeypatch):
    image = tmp_path / "ct.nrrd"
    image.write_bytes((pyradiomics_data / "lung1_image.nrrd").read_bytes())
    original = image.read_bytes()
    click = ["--checkpoint", "x", "--ijk", "--point", "218", "359", "33"]
    user_error(capsys, ["predict", str(image), *click, "--output", str(image)],
               f"the output {image} is the input image; nothing was written")
    user_error(capsys, ["predict", str(image), *click, "--output", str(tmp_path / "." / "ct.nrrd")], "input image")
    assert image.read_bytes() == original
    err = user_error(capsys, ["predict", str(image), *click, "--output", str(read_only_folder / "m.nii.gz")],
                     f"cannot write {read_only_folder / 'm.nii.gz'}: ")
    assert ".tmp" not in err
    (tmp_path / "mask.nrrd").mkdir()
    user_error(capsys, ["predict", str(image), *click, "--output", str(tmp_path / "mask.nrrd")], "it is a folder")
    user_error(capsys, ["predict", str(image), "--checkpoint", "x", "--point", "0", "0", "9999", "--output",
                        str(tmp_path / "m.nrrd")], "click 1", "outside the volume")
    monkeypatch.setattr(_common, "build_predictor", original_build_predictor)
    monkeypatch.setenv("SAMMED3D_HOME", str(read_only_folder))
    user_error(capsys, ["predict", str(image), "--checkpoint", "turbo", *click[2:], "--output",
                        str(tmp_path / "m.nrrd")], f"SAMMED3D_HOME is {read_only_folder}", "cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "mask.nrrd", "read-only"]


original_build_predictor = _common.build_predictor


def write_bar(path: Path) -> None:
    """A 320 mm bright bar along S in a 400 mm volume: longer than a region of interest (192 mm)."""
    array = np.full((200, 40, 40), 100, np.int16)
    array[20:180, 12:28, 12:28] = 600
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.5, 2.5, 2.0))
    sitk.WriteImage(image, str(path))


def test_predict_shows_progress_per_click_and_a_summary(tmp_path, capsys, oracle):
    write_bar(tmp_path / "bar.nrrd")
    args = ["predict", str(tmp_path / "bar.nrrd"), "--checkpoint", "x", "--ijk", "--point", "20", "20", "100",
            "--modality", "mr", "--output", str(tmp_path / "m.nrrd")]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert re.fullmatch(rf"wrote {tmp_path / 'm.nrrd'}: \d+ voxels \([\d.]+ ml\) from 1 click in [\d.]+ s", out[0])
    assert out[1] == "3 regions of interest encoded (cap 8, not reached)"
    assert re.fullmatch(r"MR \(as given\); threshold oracle \(no network\); model loaded in [\d.]+ s, "
                        r"inference [\d.]+ s", out[2])
    assert "click 1: encoding region 1" in captured.err and "click 1: encoding region 3" in captured.err
    assert main([*args, "--max-rois", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "1 region of interest encoded: the cap was reached, so the object may be cut off at a region's face; "
        "raise it with --max-rois 2")


def test_no_library_warning_reaches_stderr(tmp_path, capfd, oracle):
    """A NIfTI written by nibabel whose sform has unexpected scales (ITK warns on stderr, then uses the qform)."""
    nibabel = pytest.importorskip("nibabel")
    array = np.full((40, 40, 30), 100, np.int16)
    array[10:30, 10:30, 10:20] = 600
    sform = np.array([[0.8, 0.05, 0, 0], [0, 0.9, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    image = nibabel.Nifti1Image(array, sform)
    image.set_qform(np.diag([0.8, 0.9, 2, 1]), code=1)
    nibabel.save(image, str(tmp_path / "sheared.nii.gz"))
    assert main(["predict", str(tmp_path / "sheared.nii.gz"), "--checkpoint", "x", "--ijk", "--point", "20", "20",
                 "15", "--output", str(tmp_path / "m.nii.gz")]) == 0
    err = capfd.readouterr().err
    assert "WARNING" not in err.upper(), err
