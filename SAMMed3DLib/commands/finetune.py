"""Fine-tune SAM-Med3D on your own labelled images with the reference's training recipe.

Data: nnU-Net layout (DIR/imagesTr, DIR/labelsTr, optional DIR/dataset.json; every label value of a multi-label
file is its own target) or the reference's layout (dataset folders below DIR, each with imagesTr/ and labelsTr/).
Images are resampled once to the model's frame (1.5 mm, canonical RAS+) and cached in OUTPUT/cache.

Writes to OUTPUT: sam_model_latest.pth (every epoch, for --resume), sam_model_dice_best.pth (best validation Dice
at 1 and 5 clicks on a held-out tenth of the cases) in the reference's checkpoint format, and train_log.jsonl
(one JSON object per optimiser step and per validation).

Examples:
  sammed3d finetune --data Dataset501_Prostate --output runs/prostate --checkpoint turbo
  sammed3d finetune --data data --output runs/quick --variant tiny --max-steps 50 --device cpu
  sammed3d finetune --data data --output runs/prostate --checkpoint turbo --resume
  torchrun --nproc_per_node 4 -m SAMMed3DLib.cli finetune --data data --output runs/ddp --checkpoint turbo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SAMMed3DLib.model.config import VARIANTS
from SAMMed3DLib.train import DEVICES

HELP = "fine-tune the network on your own images and labels (one GPU, several with torchrun, or CPU)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="training data folder (nnU-Net or the reference's layout)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for checkpoints, log and cache")
    parser.add_argument("--checkpoint", metavar="PATH_OR_NAME",
                        help="weights to start from (a file, or a name from `sammed3d weights list`, e.g. turbo); "
                             "without it the network starts from random weights")
    parser.add_argument("--variant", choices=tuple(VARIANTS),
                        help="network size (default: the checkpoint's, or vit_b_ori); tiny is for tests and trials")
    parser.add_argument("--epochs", type=int, default=200, help="passes over the training targets (default 200)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps in total")
    parser.add_argument("--batch-size", type=int, default=2, metavar="B", help="crops per process and micro-batch "
                        "(default 2)")
    parser.add_argument("--accumulation-steps", type=int, default=20, metavar="N",
                        help="micro-batches per optimiser step (default 20, as the reference)")
    parser.add_argument("--lr", type=float, default=8e-5,
                        help="learning rate of the image encoder; prompt encoder and decoder get a tenth "
                             "(default 8e-5, the reference's fine-tuning rate)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA if there is a GPU, else CPU")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--num-workers", type=int, default=4, metavar="W", help="data loader processes (default 4)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from OUTPUT/sam_model_latest.pth (same other arguments)")


def run(args: argparse.Namespace) -> int:
    from SAMMed3DLib.errors import MissingPackages

    MissingPackages.require("fine-tuning", "train", "torch", "safetensors")
    from SAMMed3DLib import distributed
    from SAMMed3DLib.commands._common import download_progress
    from SAMMed3DLib.train import choose_device
    from SAMMed3DLib.train.loop import LATEST, TrainConfig, train

    for name in ("epochs", "batch_size", "accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such folder")
    if args.resume and not (Path(args.output) / LATEST).is_file():
        raise ValueError(f"--resume: no {LATEST} in {args.output}; run once without --resume first")
    config = TrainConfig(
        data=args.data, output=args.output, checkpoint=args.checkpoint, variant=args.variant, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, accumulation_steps=args.accumulation_steps,
        lr=args.lr, device=args.device, seed=args.seed, num_workers=args.num_workers, resume=args.resume,
    )
    context = distributed.setup(choose_device(args.device))
    try:
        summary = train(config, context, on_download=download_progress())
    finally:
        distributed.cleanup(context)
    if context.is_main and summary:
        parts = [f"step {summary['step']}", f"loss {summary['loss']:.4f}"]
        if "validation" in summary:
            validation = summary["validation"]
            parts += [f"{key.replace('_', '@')} {value:.3f}" for key, value in validation.items()
                      if key.startswith("dice_")]
        print(f"finished: {', '.join(parts)}; checkpoints in {args.output}")
    return 0
