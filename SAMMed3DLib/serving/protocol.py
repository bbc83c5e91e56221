"""What the encoder service and its clients agree on: model names, tensor names and types, and where the server
says which checkpoint it encodes with. Triton, KServe and `sammed3d serve` are all addressed this way; nothing here
imports a server or client package."""

from __future__ import annotations

import ipaddress
from typing import Dict

import numpy as np

from SAMMed3DLib.backends.onnx_predictor import (
    CHECKPOINT_NAME_KEY,
    CHECKPOINT_SHA256_KEY,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
)

ENCODER_MODEL = "sammed3d_encoder"  # takes FP32 patches
# Takes FP16 patches (half the bytes on a slow link). On Triton an ensemble: a one-node Cast model, then the encoder;
# `sammed3d serve` registers its one model under both names.
ENCODER_MODEL_FP16 = "sammed3d_encoder_fp16"
MODEL_FOR_DATATYPE = {"FP32": ENCODER_MODEL, "FP16": ENCODER_MODEL_FP16}
DATATYPES: Dict[str, type] = {"FP32": np.float32, "FP16": np.float16}
IMAGE = ENCODER_INPUTS[0]
EMBEDDING = ENCODER_OUTPUTS[0]

# Keys of the model configuration's "parameters" (GET /v2/models/NAME/config, as Triton shows its config.pbtxt):
# the SHA256 and file name of the checkpoint the encoder comes from, and where `sammed3d serve` runs it. The v2 model
# metadata has no place for them; `sammed3d serve` also puts the SHA256 into every inference response's parameters.
CHECKPOINT_PARAMETER = CHECKPOINT_SHA256_KEY
CHECKPOINT_NAME_PARAMETER = CHECKPOINT_NAME_KEY
DEVICE_PARAMETER = "device"

READY_PATH = "/v2/health/ready"
OPEN_PATHS = ("/v2/health/live", READY_PATH)  # answered without a token: orchestrators and load balancers probe them


def is_loopback(host: str) -> bool:
    """Whether `host` is this computer (localhost, 127.0.0.0/8, ::1): what only this computer can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
