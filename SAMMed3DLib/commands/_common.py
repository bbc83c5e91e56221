"""What the commands share: the model options, building the predictor from them, and download progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Union

from SAMMed3DLib.backends.predictor import BACKENDS, DEVICES, Predictor, load_predictor
from SAMMed3DLib.interactive.preprocess import MODALITY_CHOICES
from SAMMed3DLib.weights import Progress


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint", required=True, metavar="PATH_OR_NAME",
        help="a checkpoint file, or a name from `sammed3d weights list` (e.g. turbo: downloaded on first use); "
        "with --backend onnx, the folder of an ONNX export",
    )
    group.add_argument("--device", choices=DEVICES, default="auto", help="where torch runs (default: auto)")
    group.add_argument("--backend", choices=BACKENDS, default="torch", help="torch (default) or onnx (ONNX Runtime)")
    group.add_argument(
        "--modality", choices=MODALITY_CHOICES, default="auto",
        help="CT intensities are clamped to [-1000, 1000] before normalising (default: decided from the data)",
    )


def build_predictor(args: argparse.Namespace) -> Predictor:
    """The predictor the options ask for; a user error (missing file, not a checkpoint) raises SAMMed3DError."""
    return load_predictor(args.backend, resolve_model(args), args.device)


def resolve_model(args: argparse.Namespace, progress: bool = True) -> Union[str, Path]:
    """What `--checkpoint` names for the backend: the checkpoint file (downloaded first if it is a registry name
    not yet cached), or the ONNX export's folder as given."""
    from SAMMed3DLib import weights

    if args.backend == "onnx":
        return args.checkpoint
    return weights.resolve(args.checkpoint, download_progress() if progress else None)


def download_progress(description: str = "download") -> Progress:
    """A download's `on_progress` callback drawing a tqdm bar on stderr (closed when the last byte arrives)."""
    from tqdm import tqdm

    bar = None

    def update(received: int, total: Optional[int]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=received, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=description, file=sys.stderr, leave=False)
        bar.update(received - bar.n)
        if total is not None and received >= total:
            bar.close()

    return update
