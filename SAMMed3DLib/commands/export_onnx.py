"""Export a SAM-Med3D checkpoint to ONNX, to run it with ONNX Runtime (CPU or CUDA) instead of PyTorch.

Writes DIR/encoder.onnx (128^3 patch -> image embedding) and DIR/decoder.onnx (points, labels and the previous
mask's logits -> 32^3 mask logits and predicted IoU; any number of points). Both are checked against torch before
they replace anything in DIR, and carry the checkpoint's SHA256 and the package version as metadata. Use DIR with
`--backend onnx --checkpoint DIR` in other commands, or `SAMMed3DLib.OnnxPredictor(DIR)`.

examples:
  sammed3d export-onnx --checkpoint turbo --output sam_med3d_turbo_onnx
  sammed3d export-onnx --checkpoint finetuned.pth --output finetuned_onnx
  sammed3d predict ct.nrrd --backend onnx --checkpoint sam_med3d_turbo_onnx --point X Y Z --output mask.nrrd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SAMMed3DLib.commands._common import add_checkpoint_argument

HELP = "export a checkpoint to ONNX (encoder.onnx, decoder.onnx) for ONNX Runtime"


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--output", required=True, metavar="DIR", type=Path,
                        help="folder for encoder.onnx and decoder.onnx (created if needed)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from SAMMed3DLib import weights
    from SAMMed3DLib.commands._common import check_output_folder, download_progress
    from SAMMed3DLib.errors import MissingPackages

    MissingPackages.require("exporting to ONNX", "torch,onnx", "torch", "safetensors", "onnx", "onnxruntime")
    check_output_folder(args.output)
    from SAMMed3DLib.backends.onnx_export import STAGES, export_checkpoint

    checkpoint = weights.resolve(args.checkpoint, download_progress())
    with tqdm(total=len(STAGES), unit="stage", desc="export-onnx", file=sys.stderr, leave=False) as bar:

        def on_stage(name: str) -> None:
            bar.update(STAGES.index(name) - bar.n)
            bar.set_postfix_str({"load": "loading the checkpoint", "encoder": "tracing the encoder",
                                 "decoder": "tracing the decoder", "check": "checking against torch"}[name])

        differences = export_checkpoint(checkpoint, args.output, on_stage)
        bar.update(len(STAGES) - bar.n)
    checked = ", ".join(f"{name} {value:.2g}" for name, value in differences.items())
    print(f"wrote {args.output / 'encoder.onnx'} and {args.output / 'decoder.onnx'} "
          f"(largest difference from torch: {checked})")
    return 0
