"""Dataset evaluation: real CT and MR cases with a random-weight checkpoint (deterministic, resumable), the threshold
oracle on multi-label files (high Dice that does not fall with more clicks), pairing and bad folders."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.evaluation import runner as evaluation
from SAMMed3DLib.evaluation.runner import Settings, evaluate, label_names, pair_cases
from SAMMed3DLib.testing.oracle import ThresholdPredictor
from SAMMed3DLib.testing.random_weights import save_random_checkpoint

CROPS = {"lung2": (120, 120, 24), "brain1": (100, 100, 25), "brain2": (100, 100, 23)}  # I, J, K voxels


@pytest.fixture(scope="module")
def real_dataset(pyradiomics_data, tmp_path_factory) -> Path:
    """pyradiomics' CT and MR cases, cropped around their lesions (so that one ROI covers each), in nnU-Net layout."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for name, size in CROPS.items():
        image = sitk.ReadImage(str(pyradiomics_data / f"{name}_image.nrrd"))
        label = sitk.ReadImage(str(pyradiomics_data / f"{name}_label.nrrd"))
        centre = np.argwhere(sitk.GetArrayFromImage(label) > 0).mean(axis=0).round().astype(int)[::-1]
        start = [int(np.clip(centre[a] - size[a] // 2, 0, image.GetSize()[a] - size[a])) for a in range(3)]
        sitk.WriteImage(sitk.RegionOfInterest(image, size, start), str(root / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(label, size, start), str(root / "labelsTr" / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", variant="tiny", seed=0)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_random_weight_checkpoint_on_real_cases_is_deterministic_and_resumable(
    real_dataset, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    from SAMMed3DLib.commands import evaluate as evaluate_command

    monkeypatch.setattr(evaluate_command, "PROGRESS_DELAY_S", 0)  # the bar also for a run this quick
    output = tmp_path / "out"
    args = ["evaluate", "--images", str(real_dataset / "imagesTr"), "--labels", str(real_dataset / "labelsTr"),
            "--checkpoint", str(tiny_checkpoint), "--output", str(output), "--clicks", "3", "--device", "cpu"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "3 cases scored; mean Dice: 1 click" in captured.out
    assert re.search(r"9/9 \[\d\d:\d\d<\d\d:\d\d", captured.err)  # progress per click: elapsed<ETA
    assert re.search(r"evaluate:\s+\d+%.*\| [1-8]/9 ", captured.err)  # updated within a case, not only after it
    for name in ("metrics.csv", "summary.json", "run.json", "dice_vs_clicks.png", "cases/lung2.csv"):
        assert (output / name).stat().st_mode & 0o777 == 0o644, name  # the umask's mode (022 here)

    rows = read_csv(output / "metrics.csv")
    assert list(rows[0]) == ["case", "label", "label_name", "click", "dice", "nsd", "truth_ml", "predicted_ml",
                             "positive", "i", "j", "k", "seconds"]
    assert [(r["case"], r["label"], r["click"]) for r in rows] == [
        (case, "1", str(click)) for case in sorted(CROPS) for click in (1, 2, 3)
    ]
    assert {r["label_name"] for r in rows} == {"lesion"}
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0
        assert r["positive"] in ("0", "1") and float(r["seconds"]) > 0
    assert all(r["positive"] == "1" for r in rows if r["click"] == "1")
    for case in CROPS:  # volumes in ml from the label file's voxels and spacing
        label = sitk.ReadImage(str(real_dataset / "labelsTr" / f"{case}.nii.gz"))
        voxels = int((sitk.GetArrayFromImage(label) == 1).sum())
        expected_ml = voxels * float(np.prod(label.GetSpacing())) / 1000
        assert [float(r["truth_ml"]) for r in rows if r["case"] == case] == pytest.approx([expected_ml] * 3, abs=1e-6)
        assert all(float(r["predicted_ml"]) >= 0 for r in rows)

    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    first = [float(r["dice"]) for r in rows if r["click"] == "1"]
    assert summary["cases"] == 3 and summary["settings"]["protocol"] == "paper" and summary["nsd_tolerance_mm"] == 1
    one = summary["per_click"]["1"]["dice"]
    q1, median, q3 = np.percentile(first, [25, 50, 75])
    expected = (np.mean(first), np.std(first), median, q1, q3, q3 - q1)
    assert tuple(one[key] for key in ("mean", "std", "median", "q1", "q3", "iqr")) == pytest.approx(expected, abs=1e-6)
    assert summary["noc"]["85"]["n"] == 3 and summary["noc"]["90"]["mean"] >= summary["noc"]["85"]["mean"]
    assert summary["per_label"]["1"]["name"] == "lesion" and summary["per_label"]["1"]["cases"] == 3
    png = (output / "dice_vs_clicks.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # Resume: a finished case is not recomputed; a lost one is, and gives the same numbers (determinism).
    first_run = (output / "metrics.csv").read_text(encoding="utf-8")
    kept = output / "cases" / "brain1.csv"
    kept_stat = kept.stat().st_mtime_ns
    (output / "cases" / "lung2.csv").unlink()
    (output / "metrics.csv").unlink()
    assert main(args) == 0
    assert kept.stat().st_mtime_ns == kept_stat and (output / "cases" / "lung2.csv").is_file()
    second_run = read_csv(output / "metrics.csv")
    for a, b in zip(read_csv_text(first_run), second_run):
        assert {k: a[k] for k in a if k != "seconds"} == {k: b[k] for k in b if k != "seconds"}

    # The same folder with other settings is refused instead of mixing two runs.
    assert main([*args[:-2], "--seed", "1", "--device", "cpu"]) == 2
    assert "other settings (seed 0 there, 1 now)" in capsys.readouterr().err


def read_csv_text(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


def synthetic_case(folder: Path, name: str, seed: int) -> None:
    """A CT-like volume on an anisotropic grid (0.8 x 0.9 x 3 mm) with two bright objects (labels 1 and 2)."""
    rng = np.random.default_rng(seed)
    shape = (30, 110, 120)  # K, J, I
    grid = np.indices(shape).astype(float)
    spacing = (0.8, 0.9, 3.0)  # I, J, K mm
    mm = [grid[2] * spacing[0], grid[1] * spacing[1], grid[0] * spacing[2]]  # x, y, z in mm
    image = rng.normal(-100, 10, shape)
    label = np.zeros(shape, np.uint8)
    for value, centre, radii in ((1, (30, 40, 45), (14, 9, 15)), (2, (70 + seed, 60, 40), (8, 16, 12))):
        label[sum(((mm[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) < 1] = value
    image[label > 0] += 400
    for array, path in ((image.astype(np.int16), folder / "images" / f"{name}.nrrd"),
                        (label, folder / "labels" / f"{name}.nrrd")):
        item = sitk.GetImageFromArray(array)
        item.SetSpacing(spacing)
        item.SetOrigin((10.0, -20.0, 30.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(item, str(path))


def test_threshold_oracle_gets_high_dice_that_does_not_fall_with_more_clicks(tmp_path):
    for i in range(2):
        synthetic_case(tmp_path, f"case{i}", i)
    (tmp_path / "labels" / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "kidney",
                                                                             "2": "spleen"}}), encoding="utf-8")
    # The interior-most protocol: every click well inside an error region, which the oracle always gets right.
    settings = Settings(click_count=5, protocol="ritm")
    summary = evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "ritm", settings)
    assert summary["cases"] == 2
    assert {v["name"] for v in summary["per_label"].values()} == {"kidney", "spleen"}
    means = [summary["per_click"][str(c)]["dice"]["mean"] for c in range(1, 6)]
    assert means[0] >= 0.85 and means[-1] >= means[0] + 0.02, means
    assert all(later >= earlier - 0.01 for earlier, later in zip(means, means[1:])), means
    rows = evaluation.read_rows(tmp_path / "ritm" / "metrics.csv")
    assert len(rows) == 2 * 2 * 5
    assert all(r["dice"] >= 0.84 and r["nsd"] >= 0.6 for r in rows), [(r["dice"], r["nsd"]) for r in rows]

    # The paper's protocol: the first click uniform in the object, later ones uniform in the error region (often on
    # the objects' rims): still a high Dice that does not fall with more clicks.
    paper = evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "paper",
                     Settings(click_count=5, seed=3, labels_only=[2]))
    assert list(paper["per_label"]) == ["2"]
    means = [paper["per_click"][str(c)]["dice"]["mean"] for c in range(1, 6)]
    assert all(later >= earlier - 0.01 for earlier, later in zip(means, means[1:])), means
    assert all(r["dice"] >= 0.8 for r in evaluation.read_rows(tmp_path / "paper" / "metrics.csv"))
    with pytest.raises(SAMMed3DError, match=r"no case has a foreground label value among the label values \[7\]"):
        evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "none",
                 Settings(click_count=1, labels_only=[7]))


def test_pairing_by_name_nnunet_names_and_dataset_json(tmp_path):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b.nrrd", "c_0000.mha", "orphan_0000.nii.gz", ".hidden.nii"):
        (images / name).write_bytes(b"")
    for name in ("a.nii.gz", "b.nrrd", "c.mha", "notes.txt"):
        (labels / name).write_bytes(b"")
    cases = pair_cases(images, labels)
    assert [(c.name, c.image.name, c.label.name) for c in cases] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"), ("b", "b.nrrd", "b.nrrd"), ("c", "c_0000.mha", "c.mha")
    ]
    labels_json = json.dumps({"labels": {"background": 0, "liver": 1, "tumour": [2, 3]}})
    (tmp_path / "dataset.json").write_text(labels_json, encoding="utf-8")
    assert label_names(labels, images) == {1: "liver", 2: "tumour"}
    (labels / "d.nii.gz").write_bytes(b"")
    with pytest.raises(SAMMed3DError, match="1 label files have no image.*NAME_0000.ext.*: d"):
        pair_cases(images, labels)
    with pytest.raises(SAMMed3DError, match="the label folder .*missing does not exist"):
        pair_cases(images, images / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SAMMed3DError, match="no image files"):
        pair_cases(images, empty)


def test_label_on_another_grid_is_named(tmp_path):
    synthetic_case(tmp_path, "x", 0)
    label = sitk.ReadImage(str(tmp_path / "labels" / "x.nrrd"))
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, str(tmp_path / "labels" / "x.nrrd"))
    with pytest.raises(SAMMed3DError, match="case x: the label x.nrrd does not lie on the image's grid"):
        evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                 Settings(click_count=1))
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_summary_leaves_undefined_values_out():
    rows = [
        {"case": "a", "label": 1, "label_name": "", "click": 1, "dice": 0.5, "nsd": math.nan},
        {"case": "b", "label": 1, "label_name": "", "click": 1, "dice": 0.7, "nsd": 0.25},
    ]
    summary = evaluation.summarise(rows, clicks=1)
    assert summary["per_click"]["1"]["dice"] == pytest.approx(
        {"mean": 0.6, "std": 0.1, "median": 0.6, "q1": 0.55, "q3": 0.65, "iqr": 0.1, "n": 2})
    assert summary["per_click"]["1"]["nsd"] == {"mean": 0.25, "std": 0.0, "median": 0.25, "q1": 0.25, "q3": 0.25,
                                                "iqr": 0.0, "n": 1}


def test_evaluation_and_finetuning_read_a_folder_the_same_way(tmp_path):
    """One pairing rule (channel 0000 before the plain name) and one reading of dataset.json for both."""
    from SAMMed3DLib.train import data

    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    for name in ("a.nii.gz", "a_0000.nii.gz", "b.nrrd"):
        (images / name).write_bytes(b"")
    for name in ("a.nii.gz", "b.nrrd"):
        (labels / name).write_bytes(b"")
    assert [(c.name, c.image.name) for c in pair_cases(images, labels)] == [("a", "a_0000.nii.gz"), ("b", "b.nrrd")]
    assert [(c.name, c.image.name) for c in data.find_cases(tmp_path)] == [("a", "a_0000.nii.gz"), ("b", "b.nrrd")]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": ["background", "liver"]}), encoding="utf-8")
    with pytest.raises(SAMMed3DError, match="'labels' must be an object of names and values, got list"):
        label_names(labels, images)
    (tmp_path / "dataset.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SAMMed3DError, match="holds no JSON object"):
        data.find_cases(tmp_path)


def test_provenance_is_recorded_and_a_resume_with_another_checkpoint_is_refused(
    real_dataset, tmp_path, monkeypatch, capsys
):
    """Interrupted, another file imported under the same name, resumed: refused, not a table of two models."""
    from SAMMed3DLib import __version__
    from SAMMed3DLib.weights import sha256_of

    monkeypatch.setenv("SAMMED3D_HOME", str(tmp_path / "home"))
    first = save_random_checkpoint(tmp_path / "a.pth", variant="tiny", seed=1)
    second = save_random_checkpoint(tmp_path / "b.pth", variant="tiny", seed=2)
    assert main(["weights", "import", str(first), "--name", "mine"]) == 0
    output = tmp_path / "out"
    args = ["evaluate", "--images", str(real_dataset / "imagesTr"), "--labels", str(real_dataset / "labelsTr"),
            "--checkpoint", "mine", "--output", str(output), "--clicks", "1", "--device", "cpu"]
    assert main(args) == 0
    for name in ("run.json", "summary.json"):
        record = json.loads((output / name).read_text(encoding="utf-8"))
        assert record["checkpoint"]["sha256"] == sha256_of(first) and record["checkpoint"]["given"] == "mine"
        assert record["checkpoint"]["file"] == "mine.pth"
        assert record["settings"] == {"click_count": 1, "protocol": "paper", "seed": 0, "labels_only": None,
                                      "modality": "auto"}
        (run,) = record["runs"]
        assert run["backend"] == "PyTorch on cpu" and run["device"] == "cpu"
        assert run["software"]["SAMMed3DLib"] == __version__ and run["software"]["torch"].startswith("2.")
        assert run["software"]["SimpleITK"] and "onnxruntime" in run["software"]
    (output / "cases" / "lung2.csv").unlink()  # as if interrupted
    assert main(["weights", "import", str(second), "--name", "mine", "--replace"]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"checkpoint SHA256 '{sha256_of(first)}' there, '{sha256_of(second)}' now" in err
    assert not (output / "cases" / "lung2.csv").exists()
    # The same model under another name (its file path) continues the run, and the run is recorded.
    assert main([*args[:5], "--checkpoint", str(first), *args[7:]]) == 0
    assert len(json.loads((output / "run.json").read_text(encoding="utf-8"))["runs"]) == 2


def write_volume(path: Path, array: np.ndarray, spacing=(0.8, 0.9, 3.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def evaluate_error(capsys, images: Path, labels: Path, output: Path, *expected: str) -> str:
    """One line, exit 2, nothing written; the checkpoint does not exist, so the error came before the model."""
    code = main(["evaluate", "--images", str(images), "--labels", str(labels), "--output", str(output),
                 "--checkpoint", str(output.parent / "no-such-checkpoint.pth"), "--clicks", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    assert not output.exists() or list(output.iterdir()) == []
    return err


def test_images_given_as_labels_are_refused_before_the_model(tmp_path, capsys):
    for i in range(2):
        synthetic_case(tmp_path, f"case{i}", i)
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    evaluate_error(capsys, images, images, out, "--labels", "is the --images folder")
    before = sorted(p.name for p in labels.iterdir())
    assert main(["evaluate", "--images", str(images), "--labels", str(labels), "--output", str(labels),
                 "--checkpoint", "x"]) == 2
    assert "the output" in capsys.readouterr().err and sorted(p.name for p in labels.iterdir()) == before
    with pytest.raises(SAMMed3DError, match="is the image folder"):
        pair_cases(images, images)
    # The folders swapped: the "labels" are CT intensities (negative HU).
    evaluate_error(capsys, labels, images, out, f"case case0: {images / 'case0.nrrd'} is not a label map: it holds "
                   "negative values (e.g. -")
    # MR-like intensities: thousands of values.
    mr = np.random.default_rng(0).integers(0, 3000, (30, 110, 120)).astype(np.int16)
    write_volume(tmp_path / "mr" / "case0.nrrd", mr)
    write_volume(tmp_path / "mr" / "case1.nrrd", mr)
    evaluate_error(capsys, images, tmp_path / "mr", out, "case case0:", "distinct values, more than a label map has "
                   "(1000 at most): an intensity image?")
    # A label file that is a copy of its image.
    (tmp_path / "copies").mkdir()
    for i in range(2):
        (tmp_path / "copies" / f"case{i}.nrrd").write_bytes((images / f"case{i}.nrrd").read_bytes())
    evaluate_error(capsys, images, tmp_path / "copies", out, "case case0:", "is identical to the image")


@pytest.mark.parametrize(("value", "expected"), [(1.5, "non-integer values (e.g. 1.5)"),
                                                 (-1.0, "negative values (e.g. -1)")])
def test_a_label_map_that_is_not_one_names_the_file_and_the_cause(tmp_path, capsys, value, expected):
    synthetic_case(tmp_path, "a", 0)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "a.nrrd"))).astype(np.float32)
    label[label == 2] = value
    write_volume(tmp_path / "labels" / "a.nrrd", label)
    evaluate_error(capsys, tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                   f"case a: {tmp_path / 'labels' / 'a.nrrd'} is not a label map: it holds {expected}")


def test_empty_cases_are_listed_not_dropped(tmp_path, capsys):
    for i in range(3):
        synthetic_case(tmp_path, f"case{i}", i)
    write_volume(tmp_path / "labels" / "case1.nrrd", np.zeros((30, 110, 120), np.uint8))
    summary = evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                       Settings(click_count=1))
    assert summary["cases"] == 2 and summary["empty_cases"] == ["case1"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["empty_cases"] == ["case1"]
    with pytest.raises(SAMMed3DError, match=r"no case has a foreground label value among the label values \[9\]"):
        evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "none",
                 Settings(click_count=1, labels_only=[9]))


def test_the_final_line_counts_empty_cases(tmp_path, capsys, monkeypatch):
    from SAMMed3DLib.commands import _common

    for i in range(2):
        synthetic_case(tmp_path, f"case{i}", i)
    write_volume(tmp_path / "labels" / "case1.nrrd", np.zeros((30, 110, 120), np.uint8))
    monkeypatch.setattr(_common, "resolve_model", lambda args, progress=True: None)
    monkeypatch.setattr(_common, "build_predictor", lambda args, model=None: ThresholdPredictor())
    assert main(["evaluate", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--output", str(tmp_path / "out"), "--checkpoint", "oracle", "--clicks", "1"]) == 0
    assert capsys.readouterr().out.startswith("1 case scored, 1 case without foreground not scored (case1); "
                                              "mean Dice: 1 click ")


def test_an_error_inside_a_case_names_the_case(tmp_path):
    synthetic_case(tmp_path, "good", 0)
    synthetic_case(tmp_path, "bad", 1)
    whole = (tmp_path / "images" / "bad.nrrd").read_bytes()
    (tmp_path / "images" / "bad.nrrd").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SAMMed3DError, match=r"^case bad: cannot read .*bad.nrrd: fread got only"):
        evaluate(ThresholdPredictor(), tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                 Settings(click_count=1))


def replayed_clicks(volume, truth: np.ndarray, protocol: str, rng, count: int):
    """The clicks a protocol places, simulated here on the whole arrays (the runner works on the box around the
    objects) with a session of our own: click, then what the rules see (the mask, or the logits > 0.5)."""
    from SAMMed3DLib.evaluation.clicks import PROTOCOLS, next_click
    from SAMMed3DLib.interactive.session import InteractiveSession

    session = InteractiveSession(ThresholdPredictor(), volume)
    seen, placed = None, []
    threshold = PROTOCOLS[protocol].logit_threshold if isinstance(protocol, str) else protocol[1]
    name = protocol if isinstance(protocol, str) else protocol[0]
    for number in range(1, count + 1):
        click = next_click(name, number, truth, seen, rng)
        if click is not None:
            session.add_click(volume.ijk_to_ras_points(np.array(click.index[::-1], float))[0], click.positive)
        placed.append(None if click is None else (int(click.positive), *click.index[::-1]))
        seen = session.mask_above(threshold)
    return placed


def test_every_protocol_places_its_clicks_and_is_deterministic_for_a_seed(tmp_path):
    """The runner's clicks are the protocol's rules on the session's prediction (the paper's on logits > 0.5), drawn
    from one RandomState per case and label; the same seed gives the same rows, another seed other clicks (except
    for cvpr25, which has no randomness)."""
    from SAMMed3DLib.interactive.geometry import Volume

    synthetic_case(tmp_path, "case0", 0)
    images, labels = tmp_path / "images", tmp_path / "labels"
    volume = Volume.read(images / "case0.nrrd")
    label_map = Volume.read(labels / "case0.nrrd").array
    sensitive = False
    for protocol in ("paper", "cvpr25", "random", "ritm"):
        runs = {}
        for seed, folder in ((5, "a"), (5, "b"), (6, "c")):
            settings = Settings(click_count=4, protocol=protocol, seed=seed)
            evaluate(ThresholdPredictor(), images, labels, tmp_path / protocol / folder, settings)
            runs[folder] = [{k: v for k, v in row.items() if k != "seconds"}
                            for row in evaluation.read_rows(tmp_path / protocol / folder / "metrics.csv")]
        assert runs["a"] == runs["b"]
        assert (runs["a"] == runs["c"]) == (protocol == "cvpr25")
        for value in (1, 2):
            placed = [None if r["positive"] is None else (r["positive"], r["i"], r["j"], r["k"])
                      for r in runs["a"] if r["label"] == value]
            rng = evaluation._rng(5, "case0", value)
            assert placed == replayed_clicks(volume, label_map == value, protocol, rng, 4), (protocol, value)
            if protocol == "paper":  # drawing from logits > 0 instead of > 0.5 would have clicked elsewhere
                rng = evaluation._rng(5, "case0", value)
                sensitive |= replayed_clicks(volume, label_map == value, ("paper", 0.0), rng, 4) != placed
    assert sensitive


def test_summary_noc_best_dice_and_the_challenges_numbers_by_hand():
    """Two cases, two labels: NoC@85/90 (capped at the clicks, counted as not reached), the paper's best Dice so
    far, and the challenge's per-case Dice/NSD as the mean over labels (NSD 0 at mean Dice <= 0.2), their trapezoid
    AUC over the click steps (x = 0..4), final values, step time and its limit of 90 s per label."""
    dices = {("a", 1): [0.1, 0.5, 0.86, 0.8, 0.95], ("a", 2): [0.2, 0.25, 0.3, 0.2, 0.1],
             ("b", 1): [0.9, 0.92, 0.93, 0.94, 0.95]}
    rows = [{"case": case, "label": label, "label_name": "", "click": click + 1, "dice": value,
             "nsd": value / 2, "seconds": 0.5 * label}
            for (case, label), values in dices.items() for click, value in enumerate(values)]
    summary = evaluation.summarise(rows, clicks=5, protocol="cvpr25")
    assert summary["noc"]["85"] == pytest.approx({"mean": (3 + 5 + 1) / 3, "std": np.std([3, 5, 1]), "median": 3,
                                                  "q1": 2, "q3": 4, "iqr": 2, "n": 3, "not_reached": 1})
    assert (summary["noc"]["90"]["mean"], summary["noc"]["90"]["not_reached"]) == (pytest.approx((5 + 5 + 1) / 3), 1)
    assert summary["per_click"]["4"]["best_dice"]["mean"] == pytest.approx((0.86 + 0.3 + 0.94) / 3)
    assert summary["per_label"]["2"]["noc"]["85"]["not_reached"] == 1
    table = {row["case"]: row for row in evaluation.cvpr25_table(rows)}
    dsc_a = [(x + y) / 2 for x, y in zip(dices[("a", 1)], dices[("a", 2)])]  # 0.15, 0.375, 0.58, 0.5, 0.525
    nsd_a = [0.0] + [d / 2 for d in dsc_a[1:]]  # step 1's mean Dice is 0.15 <= 0.2: NSD counts 0
    a = table["a"]
    assert a["dsc_auc"] == pytest.approx(dsc_a[0] / 2 + sum(dsc_a[1:4]) + dsc_a[4] / 2)
    assert a["nsd_auc"] == pytest.approx(nsd_a[0] / 2 + sum(nsd_a[1:4]) + nsd_a[4] / 2)
    assert (a["final_dsc"], a["final_nsd"], a["labels"]) == (pytest.approx(0.525), pytest.approx(0.2625), 2)
    assert (a["seconds_per_step"], a["total_seconds"], a["time_limit_seconds"]) == (1.5, 7.5, 180.0)
    assert table["b"]["dsc_auc"] == pytest.approx(0.9 / 2 + 0.92 + 0.93 + 0.94 + 0.95 / 2)
    assert summary["cvpr25"]["dsc_auc"]["mean"] == pytest.approx((a["dsc_auc"] + table["b"]["dsc_auc"]) / 2)
    assert summary["cvpr25"]["over_time_limit"] == 0
    assert summary["per_label"]["2"]["cvpr25"]["final_nsd"]["mean"] == 0.0  # label 2 alone: Dice 0.1 at the end


REPO = Path(__file__).resolve().parent.parent


def run_evaluate(arguments: list, processes: int = 1) -> subprocess.CompletedProcess:
    """`sammed3d evaluate` in one process, or under torchrun in `processes` gloo processes (one thread each)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, "-m", "SAMMed3DLib.cli", "evaluate", *arguments, "--device", "cpu"]
    return subprocess.run(command, capture_output=True, encoding="utf-8", cwd=REPO, env=env, timeout=300)


def without_time(path: Path) -> list:
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in read_csv(path)]


def test_torchrun_two_processes_give_the_rows_of_one_resume_and_stop_at_a_failing_case(tiny_checkpoint, tmp_path):
    """Two gloo processes share the cases (rank 1 takes the 2nd and 4th); rank 0 merges: metrics.csv and the
    challenge's table equal a one-process run's but for the time columns. Resuming under torchrun evaluates only the
    missing cases. A case that fails stops the run with one line that names the rank and the case."""
    for i in range(4):
        synthetic_case(tmp_path / "data", f"case{i}", i)
    data = ["--images", str(tmp_path / "data" / "images"), "--labels", str(tmp_path / "data" / "labels"),
            "--checkpoint", str(tiny_checkpoint), "--protocol", "cvpr25", "--clicks", "3"]
    alone = run_evaluate([*data, "--output", str(tmp_path / "one")])
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "CVPR 2025 means: dsc_auc" in alone.stdout
    shared = run_evaluate([*data, "--output", str(tmp_path / "two")], processes=2)
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert shared.stdout.count("4 cases scored; mean Dice") == 1  # only rank 0 reports
    for name in ("metrics.csv", "cvpr25_cases.csv"):
        assert without_time(tmp_path / "two" / name) == without_time(tmp_path / "one" / name)
    table = read_csv(tmp_path / "two" / "cvpr25_cases.csv")
    assert [r["case"] for r in table] == [f"case{i}" for i in range(4)] and {r["labels"] for r in table} == {"2"}
    assert all(0 <= float(r["dsc_auc"]) <= 2 and float(r["seconds_per_step"]) > 0 for r in table)  # 3 steps: AUC <= 2
    summary = json.loads((tmp_path / "two" / "summary.json").read_text(encoding="utf-8"))
    expected = np.mean([float(r["final_nsd"]) for r in table])
    assert summary["cvpr25"]["final_nsd"]["mean"] == pytest.approx(expected, abs=1e-6)

    cases = tmp_path / "two" / "cases"
    kept = {name: (cases / f"{name}.csv").stat().st_mtime_ns for name in ("case0", "case3")}
    for name in ("case1", "case2", "../metrics.csv"):
        (cases / f"{name}.csv" if not name.startswith("..") else tmp_path / "two" / "metrics.csv").unlink()
    resumed = run_evaluate([*data, "--output", str(tmp_path / "two")], processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {name: (cases / f"{name}.csv").stat().st_mtime_ns for name in kept} == kept
    assert without_time(tmp_path / "two" / "metrics.csv") == without_time(tmp_path / "one" / "metrics.csv")

    image = tmp_path / "data" / "images" / "case1.nrrd"  # rank 1's first case: its header reads, its voxels do not
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    failed = run_evaluate([*data, "--output", str(tmp_path / "three")], processes=2)
    ours = [line for line in failed.stderr.splitlines() if line.startswith("sammed3d evaluate:")]
    assert failed.returncode != 0 and len(ours) == 1, failed.stderr[-3000:]
    assert ours[0].startswith("sammed3d evaluate: error: rank 1, case case1: cannot read ") and "case1.nrrd" in ours[0]
    assert "runner.py" not in failed.stderr  # no traceback of ours
    assert not (tmp_path / "three" / "metrics.csv").exists()
