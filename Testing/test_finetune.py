"""`sammed3d finetune`: data layouts and cache, the reference's loop learning, exact resume, DDP with gloo, vit_b_ori.

Synthetic spheres in small volumes; the in-process runs use the tiny variant on a 32^3 patch (same code, smaller
numbers) so that 80 optimiser steps take seconds on a shared CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib.backends.torch_predictor import select_device
from SAMMed3DLib.cli import main
from SAMMed3DLib.distributed import Context
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.train import choose_device, data
from SAMMed3DLib.train.loop import BEST, LATEST, LOG, TrainConfig, Trainer, weights_digest

REPO = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 32, "encoder_window_size": 2}  # tiny network on a 32^3 patch


def write_case(folder: Path, name: str, rng: np.random.Generator, labels: int = 1, image_name: str = "") -> None:
    """A 32^3 volume at 1.5 mm with `labels` bright spheres (values 1..labels) on noise."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.mgrid[:32, :32, :32], axis=-1).astype(np.float64)
    label = np.zeros((32, 32, 32), np.uint8)
    for value in range(1, labels + 1):
        centre = rng.uniform(11, 21, 3) if labels == 1 else np.array([16, 16, 9 + 14 * (value - 1)])
        radius = rng.uniform(7, 9) if labels == 1 else 6.5
        label[np.linalg.norm(grid - centre, axis=-1) <= radius] = value
    image = rng.normal(100, 20, label.shape) + 300 * (label > 0)
    for array, path in ((image.astype(np.float32), folder / "imagesTr" / (image_name or f"{name}_0000.nii.gz")),
                        (label, folder / "labelsTr" / f"{name}.nii.gz")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((1.5, 1.5, 1.5))
        volume.SetOrigin((10.0, -20.0, 5.0))
        sitk.WriteImage(volume, str(path))


@pytest.fixture(scope="module")
def spheres(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spheres")
    rng = np.random.default_rng(0)
    for index in range(6):
        write_case(folder, f"case{index}", rng)
    return folder


@pytest.fixture
def one_thread():
    """One torch thread: on 2 shared cores that is faster than two fighting for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(data_dir: Path, output: Path, **changes) -> TrainConfig:
    settings = dict(data=str(data_dir), output=str(output), variant="tiny", model_overrides=dict(SMALL),
                    batch_size=1, accumulation_steps=1, lr=2e-3, device="cpu", num_workers=0,
                    min_voxels=100, epochs=100)
    settings.update(changes)
    return TrainConfig(**settings)


def read_log(output: Path) -> list:
    return [json.loads(line) for line in (output / LOG).read_text(encoding="utf-8").splitlines()]


# --- data -------------------------------------------------------------------------------------------------------


def test_layouts_targets_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    nnunet = tmp_path / "Dataset001"
    write_case(nnunet, "a", rng, labels=2)
    write_case(nnunet, "b", rng, image_name="b.nii.gz")  # the reference's image name (no _0000)
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0}}
    (nnunet / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    cases = data.find_cases(nnunet)
    assert [c.name for c in cases] == ["a", "b"]
    assert [c.image.name for c in cases] == ["a_0000.nii.gz", "b.nii.gz"]
    assert {c.modality for c in cases} == {"ct"}

    cached, targets = data.load_cached([data.cache_case(c, tmp_path / "cache") for c in cases])
    assert [(cached[t.case].name, t.value) for t in targets] == [("a", 1), ("a", 2), ("b", 1)]
    assert all(c.modality == "ct" for c in cached)

    reference = tmp_path / "reference"
    write_case(reference / "liver" / "ct_one", "x", rng)
    write_case(reference / "kidney" / "mr_two", "y", rng)
    found = data.find_cases(reference)
    assert [c.name for c in found] == ["kidney_mr_two_y", "liver_ct_one_x"]
    assert {c.modality for c in found} == {"auto"}

    (nnunet / "labelsTr" / "orphan.nii.gz").write_bytes(b"")
    with pytest.raises(SAMMed3DError, match="no image for label .*orphan"):
        data.find_cases(nnunet)
    with pytest.raises(SAMMed3DError, match="no training data"):
        data.find_cases(tmp_path / "cache")


def test_cache_is_canonical_ras_and_reused(tmp_path):
    """A ramp equal to the R (then A, S) coordinate, stored LPS with 1 x 2 x 3 mm voxels, comes out of the cache
    increasing by 1.5 per voxel along axis 0 (then 1, 2): 1.5 mm, canonical RAS+."""
    folder = tmp_path / "ramps"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    volume = sitk.Image(40, 30, 20, sitk.sitkFloat32)
    volume.SetSpacing((1.0, 2.0, 3.0))
    volume.SetOrigin((5.0, 7.0, -11.0))
    volume.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # LPS: I toward Left, J toward Posterior
    geometry = Volume.from_sitk(volume)
    k, j, i = np.mgrid[:20, :30, :40]
    ras = geometry.ijk_to_ras_points(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(20, 30, 40, 3)
    label = np.zeros((20, 30, 40), np.uint8)
    label[8:14, 10:20, 15:30] = 3
    for axis, name in enumerate("RAS"):
        image = sitk.GetImageFromArray(ras[..., axis].astype(np.float32))
        image.CopyInformation(volume)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{name}_0000.nii.gz"))
        mask = sitk.GetImageFromArray(label)
        mask.CopyInformation(volume)
        sitk.WriteImage(mask, str(folder / "labelsTr" / f"{name}.nii.gz"))
    cases = data.find_cases(folder)
    folders = [data.cache_case(case, tmp_path / "cache") for case in cases]
    cached, targets = data.load_cached(folders)
    assert [case.name for case in cached] == ["A", "R", "S"]
    for case in cached:
        axis = "RAS".index(case.name)
        inner = np.asarray(case.image)[2:-2, 2:-2, 2:-2]
        steps = np.diff(inner, axis=axis)
        np.testing.assert_allclose(steps, 1.5, atol=1e-3)
        assert np.abs(np.diff(inner, axis=(axis + 1) % 3)).max() < 1e-3
    # The label's centre lands where it was in physical space: 5 x 20 x 18 mm box, 6 voxels of 3 mm along S, etc.
    target = targets[0]
    assert target.value == 3
    extent = (np.asarray(target.bbox_max) - target.bbox_min + 1) * 1.5
    np.testing.assert_allclose(extent, [15, 20, 18], atol=1.5)
    # Cached once: a second call reuses the files; a changed file gets a new entry.
    before = (folders[0] / "image.npy").stat().st_mtime_ns
    assert data.cache_case(cases[0], tmp_path / "cache") == folders[0]
    assert (folders[0] / "image.npy").stat().st_mtime_ns == before


def test_crops_flips_and_redraws(tmp_path):
    rng = np.random.default_rng(2)
    write_case(tmp_path / "d", "big", rng)
    write_case(tmp_path / "d", "dot", rng)
    dot = sitk.ReadImage(str(tmp_path / "d" / "labelsTr" / "dot.nii.gz"))
    array = np.zeros((32, 32, 32), np.uint8)
    array[3:5, 3:5, 3:5] = 1  # 8 voxels: a tiny target
    small = sitk.GetImageFromArray(array)
    small.CopyInformation(dot)
    sitk.WriteImage(small, str(tmp_path / "d" / "labelsTr" / "dot.nii.gz"))
    cases = data.find_cases(tmp_path / "d")
    cached, targets = data.load_cached([data.cache_case(c, tmp_path / "cache") for c in cases])
    crops = data.TargetCrops(cached, targets, 48, augment=True)
    big = [cached[t.case].name for t in targets].index("big")
    image, label = crops.crop(big)
    centre = (np.argwhere(label).min(0) + np.argwhere(label).max(0) + 1) / 2
    np.testing.assert_allclose(centre, 24, atol=1)  # the crop is centred on the target's bounding box
    flips = set()
    for position in range(12):
        item = crops[(big, (0, 0, position))]
        axes = tuple(np.nonzero(np.random.default_rng([0, 0, position]).random(3) < 0.5)[0])
        np.testing.assert_array_equal(item["label"][0], np.flip(label, axes))  # each axis with probability 1/2
        inside = item["image"][item["label"] > 0].mean()
        assert inside > item["image"][item["label"] == 0].mean() + 2  # image and label flipped together
        flips.add(axes)
        redrawn = crops[(1 - big, (0, 0, position))]  # the tiny target: always replaced by the big one
        assert redrawn["image"].shape == redrawn["label"].shape == (1, 48, 48, 48)
        assert redrawn["label"].sum() == label.sum()
    assert len(flips) >= 4
    again = crops[(1 - big, (0, 0, 3))]
    np.testing.assert_array_equal(again["image"], crops[(1 - big, (0, 0, 3))]["image"])  # seeded per item
    with pytest.raises(SAMMed3DError, match="at most 100000 voxels"):
        data.TargetCrops(cached, targets, 48, augment=True, min_voxels=100_000)


def test_epoch_batches_cover_the_targets_once_per_rank_split():
    seen = []
    for rank in range(2):
        batches = data.EpochBatches(7, batch_size=2, accumulation=2, world_size=2, rank=rank, seed=3, epoch=1)
        assert len(batches) == 2 * 1  # ceil(7 / 8) = 1 step of 2 micro-batches
        seen += [index for batch in batches for index, _ in batch]
    assert sorted(set(seen)) == list(range(7)) and len(seen) == 8
    resumed = list(data.EpochBatches(7, 2, 2, 2, 0, 3, 1, start=1))
    assert resumed == list(data.EpochBatches(7, 2, 2, 2, 0, 3, 1))[1:]


# --- training ---------------------------------------------------------------------------------------------------


def test_loss_falls_over_80_steps(spheres, tmp_path, one_thread):
    config = small_config(spheres, tmp_path, max_steps=80, batch_size=2, lr=4e-3)
    summary = Trainer(config, Context(0, 1, torch.device("cpu"))).run()
    log = read_log(tmp_path)
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses) == 80 and summary["step"] == 80
    assert np.mean(losses[-10:]) <= 0.7 * np.mean(losses[:10]), (np.mean(losses[:10]), np.mean(losses[-10:]))
    assert {"step", "loss", "lr", "lr_prompt_decoder", "seconds"} <= set(log[0])
    validations = [r for r in log if r["kind"] == "validation"]
    assert validations and {"dice_1", "dice_5", "best"} <= set(validations[0])
    assert max(v["dice_5"] for v in validations) > 0.5  # the held-out sphere is found after training
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert best["best_dice"] == max(np.mean([v["dice_1"], v["dice_5"]]) for v in validations)
    assert {"model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "epoch", "args"} <= set(best)


def test_resume_continues_exactly(spheres, tmp_path, one_thread):
    """6 steps with accumulation 2 (two epochs of 3 steps, validation included) vs 4 + 2 with --resume, the
    interruption falling in the middle of an epoch."""
    cpu = Context(0, 1, torch.device("cpu"))
    straight, split = tmp_path / "straight", tmp_path / "split"
    config = dict(accumulation_steps=2, epochs=4, seed=5)
    Trainer(small_config(spheres, straight, max_steps=6, **config), cpu).run()
    Trainer(small_config(spheres, split, max_steps=4, **config), cpu).run()
    interrupted = torch.load(split / LATEST, weights_only=True)
    assert (interrupted["step"], interrupted["epoch"], interrupted["micro_batch"]) == (4, 1, 2)
    with open(split / LOG, "a", encoding="utf-8") as stream:
        stream.write('{"kind": "train", "step": 5, "lo')  # torn: the process was killed in the middle of an append
    trainer = Trainer(small_config(spheres, split, max_steps=6, resume=True, **config), cpu)
    assert trainer.step == 4
    trainer.run()
    a = torch.load(straight / LATEST, weights_only=True)
    b = torch.load(split / LATEST, weights_only=True)
    assert a["step"] == b["step"] == 6
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key
    for state_a, state_b in zip(a["optimizer_state_dict"]["state"].values(),
                                b["optimizer_state_dict"]["state"].values()):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    assert a["lr_scheduler_state_dict"] == b["lr_scheduler_state_dict"]

    def numbers(output):
        return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in read_log(output)]

    assert [r for r in numbers(split) if r["kind"] != "end"] == [r for r in numbers(straight) if r["kind"] != "end"]
    assert read_log(split)[-1]["weights_sha256"] == read_log(straight)[-1]["weights_sha256"]


def test_resume_refuses_a_checkpoint_of_the_reference(spheres, tmp_path, capsys):
    """A checkpoint of the reference's script (`args` pickled as an argparse.Namespace, no step or RNG states) is
    read safely and refused in one line: --resume cannot continue it exactly."""
    from SAMMed3DLib.model import build_sam_med3d

    model = build_sam_med3d("tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [120, 180])
    output = tmp_path / "out"
    output.mkdir()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "lr_scheduler_state_dict": scheduler.state_dict(), "epoch": 3, "losses": [0.5], "dices": [0.6],
                "best_loss": 0.5, "best_dice": 0.6, "args": argparse.Namespace(lr=8e-5, batch_size=2)},
               output / LATEST)
    code = main(["finetune", "--data", str(spheres), "--output", str(output), "--resume", "--device", "cpu",
                 "--num-workers", "0"])
    message = capsys.readouterr().err
    assert code == 2 and message.count("\n") == 1, message
    assert f"{output / LATEST} cannot be resumed: it lacks the optimiser and position state" in message


def test_device_rules_are_the_predictors(monkeypatch):
    """--device is select_device's choice (one place for the rules), limited to CUDA and the CPU."""
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SAMMed3DError, match="unknown training device 'mps'; the choices are auto, cpu, cuda"):
        choose_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SAMMed3DError) as ours:
        choose_device("cuda")
    with pytest.raises(SAMMed3DError) as predictors:
        select_device("cuda")
    assert str(ours.value) == str(predictors.value)


def _run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "SAMMed3DLib.cli", *args], capture_output=True, encoding="utf-8",
                          cwd=REPO, env=env, timeout=timeout)


def test_user_errors_are_one_line(tmp_path):
    result = _run_cli("finetune", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr
    result = _run_cli("finetune", "--data", str(tmp_path), "--output", str(tmp_path / "out"), "--resume",
                      "--device", "cpu")
    assert result.returncode == 2 and "--resume: no sam_model_latest.pth" in result.stderr
    result = _run_cli("finetune", "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size must be at least 1" in result.stderr


def test_torchrun_two_processes_gloo(spheres, tmp_path):
    """`python -m SAMMed3DLib.cli finetune` under torchrun: both processes end with the same weights (DDP averaged
    their different crops), which are the ones rank 0 saved; only rank 0 wrote files."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "SAMMed3DLib.cli", "finetune", "--data", str(spheres), "--output", str(tmp_path),
               "--variant", "tiny", "--max-steps", "2", "--batch-size", "1", "--accumulation-steps", "1",
               "--lr", "1e-3", "--device", "cpu", "--num-workers", "0"]
    result = subprocess.run(command, capture_output=True, encoding="utf-8", cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(tmp_path)
    digests = log[-1]["weights_sha256"]
    assert log[-1]["kind"] == "end" and len(digests) == 2 and digests[0] == digests[1]
    from SAMMed3DLib.model import load_sam_med3d

    saved = load_sam_med3d(tmp_path / LATEST)
    assert weights_digest(saved) == digests[0]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", LATEST, LOG]
    checkpoint = torch.load(tmp_path / LATEST, weights_only=True)
    assert len(checkpoint["rng_states"]) == 2


@contextmanager
def slow_file_server(body: bytes, delay: float):
    """Serves `body` at any path on 127.0.0.1 after `delay` seconds; yields the URL and the paths asked for."""
    requests: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/sam_med3d_turbo.pth", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


BUILD_TRAINER = """
import json
import sys
from SAMMed3DLib import weights
from SAMMed3DLib import distributed
from SAMMed3DLib.train import choose_device
from SAMMed3DLib.train.loop import TrainConfig, Trainer, weights_digest
url, sha256, data, output, overrides = sys.argv[1:]
weights.REGISTRY = (weights.Checkpoint("turbo", "sam_med3d_turbo.pth", url, url, None, sha256, ""),)
context = distributed.setup(choose_device("cpu"))
config = TrainConfig(data=data, output=output, checkpoint="turbo", variant="tiny",
                     model_overrides=json.loads(overrides), num_workers=0, min_voxels=100, device="cpu")
sys.stdout.write(f"weights {weights_digest(Trainer(config, context).model)}\\n")  # one write: no interleaving
distributed.cleanup(context)
"""


def test_torchrun_downloads_a_named_checkpoint_once(spheres, tmp_path):
    """`--checkpoint NAME` under torchrun: rank 0 downloads, the others wait and read the cache; two processes
    downloading into one .part file at once would break the run."""
    from SAMMed3DLib.model import build_sam_med3d

    torch.manual_seed(1)
    model = build_sam_med3d("tiny", **SMALL)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "published.pth")
    body = (tmp_path / "published.pth").read_bytes()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SAMMED3D_HOME=str(tmp_path / "home"))
    with slow_file_server(body, delay=1.0) as (url, requests):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "--no-python", sys.executable, "-c", BUILD_TRAINER, url, hashlib.sha256(body).hexdigest(),
                   str(spheres), str(tmp_path / "out"), json.dumps(SMALL)]
        result = subprocess.run(command, capture_output=True, encoding="utf-8", cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert requests == ["/sam_med3d_turbo.pth"]
    assert result.stdout.splitlines() == [f"weights {weights_digest(model)}"] * 2
    assert sorted(p.name for p in (tmp_path / "home" / "weights").iterdir()) == ["sam_med3d_turbo.pth"]


def test_one_step_of_vit_b_ori(tmp_path):
    """The published network's size from a random checkpoint: one optimiser step runs and changes the weights;
    the result is a reference-format checkpoint that load_sam_med3d reads."""
    from SAMMed3DLib.model import build_sam_med3d, load_sam_med3d

    torch.manual_seed(0)
    model = build_sam_med3d("vit_b_ori")
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "random.pth")
    rng = np.random.default_rng(3)
    write_case(tmp_path / "data", "only", rng)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = _run_cli("finetune", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                      "--checkpoint", str(tmp_path / "random.pth"), "--max-steps", "1", "--batch-size", "1",
                      "--accumulation-steps", "1", "--device", "cpu", "--num-workers", "0", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: step 1" in result.stdout
    trained = load_sam_med3d(tmp_path / "out" / LATEST)
    assert sum(p.numel() for p in trained.parameters()) == 100_509_232
    changed = [name for name, value in trained.state_dict().items()
               if not torch.equal(value, model.state_dict()[name])]
    assert any(name.startswith("image_encoder.") for name in changed)
    assert any(name.startswith("mask_decoder.") for name in changed)
    checkpoint = torch.load(tmp_path / "out" / LATEST, weights_only=True)
    assert checkpoint["args"]["lr"] == 8e-5 and checkpoint["step"] == 1
    import medim

    medim.create_model("SAM-Med3D").load_state_dict(checkpoint["model_state_dict"], strict=True)  # the reference
    lrs = [group["lr"] for group in checkpoint["optimizer_state_dict"]["param_groups"]]
    np.testing.assert_allclose(lrs, [8e-5, 8e-6, 8e-6], rtol=1e-12)  # encoder; prompt encoder, decoder at 1/10


def test_resume_takes_the_recorded_settings_and_refuses_a_changed_one(spheres, tmp_path, capsys, one_thread):
    """Progress per micro-batch, provenance in the checkpoint, the machine's worker count, no library warning; then
    --resume continues with the recorded settings (not the defaults) and refuses a changed --lr."""
    import warnings

    from SAMMed3DLib import __version__
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint
    from SAMMed3DLib.weights import sha256_of

    base = save_random_checkpoint(tmp_path / "base.pth", variant="tiny", seed=4)
    output = tmp_path / "out"
    common = ["finetune", "--data", str(spheres), "--output", str(output), "--device", "cpu"]
    cpus = len(os.sched_getaffinity(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*common, "--checkpoint", str(base), "--batch-size", "1", "--accumulation-steps", "2",
                     "--lr", "1e-3", "--max-steps", "1", "--num-workers", str(cpus + 1)]) == 0
    assert [str(w.message) for w in caught] == []  # torch's "more workers than CPUs" note among them
    err = capsys.readouterr().err
    assert re.search(r"finetune: 100%\|.*\| 2/2 \[.*batch, step 1, epoch 0, loss [\d.]+\]", err), err
    assert re.search(r"finetune:  50%\|.*\| 1/2 \[", err), err  # one micro-batch of two: not only per step
    state = torch.load(output / LATEST, weights_only=True)
    record = state["provenance"]
    assert record["base_checkpoint"]["sha256"] == sha256_of(base) and record["base_checkpoint"]["file"] == "base.pth"
    assert record["data"] == str(spheres.resolve()) and record["processes"] == 1 and record["device"] == "cpu"
    assert record["software"]["SAMMed3DLib"] == __version__ and record["software"]["torch"] == torch.__version__
    assert (output / LATEST).stat().st_mode & 0o777 == 0o644  # the umask's mode (022 here), not 0600

    assert main([*common, "--resume", "--max-steps", "2"]) == 0  # nothing else given: the recorded settings
    state = torch.load(output / LATEST, weights_only=True)
    assert state["step"] == 2 and state["args"]["lr"] == 1e-3 and state["args"]["accumulation_steps"] == 2
    from SAMMed3DLib.train.config import default_workers

    assert state["args"]["num_workers"] == default_workers() == max(0, min(4, cpus - 1))
    assert state["provenance"]["base_checkpoint"]["sha256"] == sha256_of(base)
    capsys.readouterr()

    assert main([*common, "--resume", "--lr", "5e-4", "--max-steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings (lr 0.001 there, 0.0005 now)" in err, err
    assert torch.load(output / LATEST, weights_only=True)["step"] == 2
    other = save_random_checkpoint(tmp_path / "other.pth", variant="tiny", seed=5)
    assert main([*common, "--resume", "--checkpoint", str(other), "--max-steps", "3"]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main([*common, "--resume", "--checkpoint", str(base), "--max-steps", "3"]) == 0  # the same base
