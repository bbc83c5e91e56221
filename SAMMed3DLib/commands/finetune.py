"""Fine-tune SAM-Med3D on your own labelled images with the reference's training recipe.

Data: nnU-Net layout (DIR/imagesTr, DIR/labelsTr, optional DIR/dataset.json; every label value of a multi-label
file is its own target) or the reference's layout (dataset folders below DIR, each with imagesTr/ and labelsTr/).
Images are resampled once to the model's frame (1.5 mm, canonical RAS+) and cached in OUTPUT/cache.

Writes to OUTPUT: sam_model_latest.pth (every epoch, for --resume), sam_model_dice_best.pth (best validation Dice
at 1 and 5 clicks on a held-out tenth of the cases) in the reference's checkpoint format, and train_log.jsonl
(one JSON object per optimiser step and per validation). Each checkpoint records its provenance: the base
checkpoint's SHA256, the data folder, every setting, the software and the device. --resume continues with the
recorded settings; only --max-steps, --device and --num-workers may change.

Examples:
  sammed3d finetune --data Dataset501_Prostate --output runs/prostate --checkpoint turbo
  sammed3d finetune --data data --output runs/quick --variant tiny --max-steps 50 --device cpu
  sammed3d finetune --data data --output runs/prostate --checkpoint turbo --resume
  torchrun --nproc_per_node 4 -m SAMMed3DLib.cli finetune --data data --output runs/ddp --checkpoint turbo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SAMMed3DLib.model.config import VARIANTS
from SAMMed3DLib.train import DEVICES
from SAMMed3DLib.train.config import TrainConfig

HELP = "fine-tune the network on your own images and labels (one GPU, several with torchrun, or CPU)"


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(data="", output="")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="training data folder (nnU-Net or the reference's layout)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for checkpoints, log and cache")
    parser.add_argument("--checkpoint", metavar="PATH_OR_NAME",
                        help="weights to start from (a file, or a name from `sammed3d weights list`, e.g. turbo); "
                             "without it the network starts from random weights")
    parser.add_argument("--variant", choices=tuple(VARIANTS),
                        help="network size (default: the checkpoint's, or vit_b_ori); tiny is for tests and trials")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help=f"passes over the training targets (default {defaults.epochs})")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps in total")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help=f"crops per process and micro-batch (default {defaults.batch_size})")
    parser.add_argument("--accumulation-steps", type=int, metavar="N",
                        help=f"micro-batches per optimiser step (default {defaults.accumulation_steps}, as the "
                             "reference)")
    parser.add_argument("--lr", type=float,
                        help="learning rate of the image encoder; prompt encoder and decoder get a tenth "
                             f"(default {defaults.lr:g}, the reference's fine-tuning rate)")
    parser.add_argument("--device", choices=DEVICES, help="auto (default): CUDA if there is a GPU, else CPU")
    parser.add_argument("--seed", type=int, help=f"seed of every random choice (default {defaults.seed})")
    parser.add_argument("--num-workers", type=int, metavar="W",
                        help=f"data loader processes per training process (default: the CPUs less one, at most 4; "
                             f"{defaults.num_workers} here)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from OUTPUT/sam_model_latest.pth with its recorded settings; "
                             "--max-steps, --device and --num-workers may change, any other option that differs "
                             "from the record is refused")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from SAMMed3DLib.errors import MissingPackages, OutputIsInput
    from SAMMed3DLib.files import check_writable, same_file

    MissingPackages.require("fine-tuning", "train", "torch", "safetensors")
    from SAMMed3DLib import distributed
    from SAMMed3DLib.commands._common import download_progress
    from SAMMed3DLib.train import choose_device
    from SAMMed3DLib.train.loop import LATEST, resume_config, train

    for name in ("epochs", "batch_size", "accumulation_steps", "max_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such folder")
    if same_file(args.output, args.data):
        raise OutputIsInput(Path(args.output), Path(args.data).resolve(), "data folder")
    check_writable(Path(args.output), folder=True)
    if args.resume and not (Path(args.output) / LATEST).is_file():
        raise ValueError(f"--resume: no {LATEST} in {args.output}; run once without --resume first")
    given = {name: value for name, value in vars(args).items()
             if name in TrainConfig.__dataclass_fields__ and value is not None}
    config = resume_config(Path(args.output), given) if args.resume else TrainConfig(**given)
    context = distributed.setup(choose_device(config.device))
    bar = None  # drawn once training starts (rank 0 reports): micro-batches of the whole run

    def on_progress(done: int, total: int, record) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="batch", desc="finetune", file=sys.stderr)
        bar.update(done - bar.n)
        if record is not None:
            bar.set_postfix_str(f"step {record['step']}, epoch {record['epoch']}, loss {record['loss']:.3f}")

    try:
        summary = train(config, context, on_download=download_progress(), on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
        distributed.cleanup(context)
    if context.is_main and summary:
        parts = [f"step {summary['step']}", f"loss {summary['loss']:.4f}"]
        if "validation" in summary:
            validation = summary["validation"]
            parts += [f"{key.replace('_', '@')} {value:.3f}" for key, value in validation.items()
                      if key.startswith("dice_")]
        print(f"finished: {', '.join(parts)}; checkpoints in {args.output}")
    return 0
