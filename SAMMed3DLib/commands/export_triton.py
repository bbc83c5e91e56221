"""Write a model repository for NVIDIA Triton Inference Server, to serve a checkpoint's encoder to --backend remote
clients from a GPU server with Docker (or Kubernetes).

REPO gets three models: sammed3d_encoder (the encoder on Triton's ONNX Runtime backend, FP32 patches, dynamic
batching up to --max-batch patches, --instances copies on each GPU), and for FP16 patches the ensemble
sammed3d_encoder_fp16 with its one-node Cast model sammed3d_encoder_fp16_cast. The encoder is checked against torch
(also at batch 2) and the configurations are parsed with Triton's own protobuf and checked against the ONNX files
before they replace earlier ones; other models in REPO are left alone. The encoder's configuration carries the
checkpoint's SHA256, which clients compare with their decoder's. Serve it with (GPU, Docker):
  docker run --gpus all --rm -p 8000:8000 -v $PWD/REPO:/models nvcr.io/nvidia/tritonserver:24.08-py3 \\
      tritonserver --model-repository=/models

examples:
  sammed3d export-triton --checkpoint turbo --output triton_models
  sammed3d export-triton --checkpoint finetuned.pth --output /srv/triton --max-batch 8 --instances 2
  (on a workstation) sammed3d predict ct.nrrd --backend remote --server http://gpu1:8000 \\
      --checkpoint sam_med3d_turbo_onnx --point X Y Z --output mask.nrrd
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SAMMed3DLib.commands._common import add_checkpoint_argument, positive_int
from SAMMed3DLib.serving.encoder import MAX_BATCH

HELP = "write a Triton Inference Server model repository for a checkpoint's encoder"


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--output", required=True, metavar="REPO", type=Path,
                        help="the model repository folder (created if needed)")
    parser.add_argument("--max-batch", type=positive_int, default=MAX_BATCH, metavar="N",
                        help=f"most patches Triton batches into one encode (default {MAX_BATCH})")
    parser.add_argument("--instances", type=positive_int, default=1, metavar="N",
                        help="copies of the encoder per GPU (default 1)")


def run(args: argparse.Namespace) -> int:
    from SAMMed3DLib import weights
    from SAMMed3DLib.commands._common import check_output_folder, download_progress
    from SAMMed3DLib.serving.triton import export_repository, require_packages

    require_packages()
    check_output_folder(args.output)
    checkpoint = weights.resolve(args.checkpoint, download_progress())
    folders = export_repository(checkpoint, args.output, args.max_batch, args.instances)
    print(f"wrote {', '.join(folder.name for folder in folders)} into {args.output}; serve them with "
          f"`tritonserver --model-repository {args.output.resolve()}`")
    return 0
