"""Fine-tuning speed: optimiser steps of the real training loop (`sammed3d finetune`) on synthetic spheres.

    python benchmarks/train.py [--variant vit_b_ori] [--batch-size 2] [--steps 6] [--device auto|cpu|cuda]

Runs the Trainer in this process (data loading, 11 interaction steps, AMP on CUDA: bf16 where supported, AdamW,
clipping) with one micro-batch per optimiser step and no validation, then prints the median seconds per step after
the first (warm-up) step, samples per second, and the peak memory: GPU memory allocated by torch on CUDA, the
process's peak resident memory on CPU. Without a GPU it says so and times CPU steps (expect tens of seconds each
for vit_b_ori).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SAMMed3DLib.distributed import Context
from SAMMed3DLib.train import choose_device
from SAMMed3DLib.train.loop import LOG, TrainConfig, Trainer, autocast_dtype


def write_spheres(folder: Path, cases: int) -> None:
    """nnU-Net folder of 96^3 volumes at 1.5 mm, one bright sphere each (radius 10 to 20 voxels)."""
    rng = np.random.default_rng(0)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    grid = np.stack(np.mgrid[:96, :96, :96], axis=-1).astype(np.float32)
    for index in range(cases):
        label = (np.linalg.norm(grid - rng.uniform(35, 61, 3), axis=-1) <= rng.uniform(10, 20)).astype(np.uint8)
        image = (rng.normal(100, 20, label.shape) + 300.0 * label).astype(np.float32)
        for array, path in ((image, folder / "imagesTr" / f"s{index}_0000.nii.gz"),
                            (label, folder / "labelsTr" / f"s{index}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.5, 1.5, 1.5))
            sitk.WriteImage(volume, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b_ori", choices=("vit_b_ori", "tiny"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, help="optimiser steps (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--num-workers", type=int, default=4)
    args = parser.parse_args()

    device = choose_device(args.device)
    if device.type == "cpu":
        print("no GPU: timing the training step on CPU (AMP is CUDA-only)")
    else:
        print(f"GPU: {torch.cuda.get_device_name(device)}; autocast {autocast_dtype(device)}")
    steps = args.steps or (8 if device.type == "cuda" else 2)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        write_spheres(folder / "data", cases=max(4, args.batch_size * 2))
        config = TrainConfig(
            data=str(folder / "data"), output=str(folder / "run"), variant=args.variant, max_steps=steps,
            batch_size=args.batch_size, accumulation_steps=1, device=device.type, num_workers=args.num_workers,
            validation_fraction=0.0, lr=8e-5,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        Trainer(config, Context(0, 1, device)).run()
        records = [json.loads(line) for line in (folder / "run" / LOG).read_text(encoding="utf-8").splitlines()]
    seconds = [r["seconds"] for r in records if r["kind"] == "train"]
    timed = seconds[1:] or seconds
    median = statistics.median(timed)
    print(f"{args.variant}, batch {args.batch_size}, {len(seconds)} steps (first, warm-up: {seconds[0]:.2f} s)")
    print(f"seconds per step (median of {len(timed)}): {median:.3f}")
    print(f"samples/s: {args.batch_size / median:.2f}")
    if device.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
              f"(reserved {torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB)")
    else:
        print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
