"""What the commands that run the network share: the model options and building the predictor from them."""

from __future__ import annotations

import argparse
from typing import Any

from SAMMed3DLib.predictors import BACKENDS, DEVICES
from SAMMed3DLib.session import MODALITIES


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
        "--modality", choices=MODALITIES, default="auto",
        help="CT intensities are clamped to [-1000, 1000] before normalising (default: decided from the data)",
    )


def build_predictor(args: argparse.Namespace) -> Any:
    """The predictor the options ask for; a user error (missing file, not a checkpoint) raises SAMMed3DError."""
    from SAMMed3DLib import weights
    from SAMMed3DLib.predictors import load_predictor

    model = args.checkpoint if args.backend == "onnx" else weights.resolve(args.checkpoint)
    return load_predictor(args.backend, model, args.device)[0]
