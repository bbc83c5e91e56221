"""The encoder behind a v2 server, whatever the engine: it checks requests, runs encodes on one worker thread and
says what it serves (the model configuration that clients read the checkpoint's SHA256 from).

Encodes run one at a time on a worker thread, never on the server's event loop, so health checks and metadata
answer while an encode is running (seconds on a CPU); the engine awaits the returned future.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from SAMMed3DLib.backends.predictor import Predictor, load_predictor
from SAMMed3DLib.errors import NotAnExport, UnknownChoice
from SAMMed3DLib.interactive.geometry import PATCH_SIZE
from SAMMed3DLib.serving.protocol import (
    CHECKPOINT_NAME_PARAMETER,
    CHECKPOINT_PARAMETER,
    DATATYPES,
    DEVICE_PARAMETER,
    EMBEDDING,
    IMAGE,
)

SERVED_BACKENDS = ("torch", "onnx")
MAX_BATCH = 4  # patches in one request
PATCH_BYTES = PATCH_SIZE**3 * 4
MAX_REQUEST_BYTES = MAX_BATCH * PATCH_BYTES + (1 << 20)  # the patches as FP32 and a JSON header


class BadRequest(ValueError):
    """A request the encoder cannot answer (wrong tensor name, data type or shape); the message says which."""


@dataclass(frozen=True)
class ServedCheckpoint:
    """The checkpoint the encoder comes from: its SHA256 and file name."""

    sha256: str
    name: str


class EncoderService:
    """`predictor`'s encoder as a stateless service: any number of [N,1,128,128,128] patches (N <= `MAX_BATCH`, FP32
    or FP16) in, their embeddings (FP32) out. A warm-up encode at start makes the first request as fast as the
    others and gives the embedding's shape."""

    def __init__(self, predictor: Predictor, checkpoint: ServedCheckpoint) -> None:
        self.predictor = predictor
        self.checkpoint = checkpoint
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed3d-encode")
        blank = np.zeros((1, 1) + (PATCH_SIZE,) * 3, np.float32)
        self.embedding_shape = tuple(int(n) for n in self._encode(blank).shape[1:])

    @property
    def image_shape(self) -> List[int]:
        return [-1, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE]

    @property
    def output_shape(self) -> List[int]:
        return [-1, *self.embedding_shape]

    def check(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """BadRequest unless the tensor is the image input: named `IMAGE`, FP32 or FP16, [N,1,128,128,128]."""
        if name != IMAGE:
            raise BadRequest(f"the input is named {IMAGE!r}, not {name!r}")
        if datatype not in DATATYPES:
            raise BadRequest(f"input {IMAGE!r} must be {' or '.join(DATATYPES)}, not {datatype}")
        shape = [int(n) for n in shape]
        if len(shape) != 5 or shape[1:] != self.image_shape[1:] or not 1 <= shape[0] <= MAX_BATCH:
            raise BadRequest(f"input {IMAGE!r} must have shape [N, 1, {PATCH_SIZE}, {PATCH_SIZE}, {PATCH_SIZE}] "
                             f"with N from 1 to {MAX_BATCH}, not {shape}")

    def submit(self, image: np.ndarray) -> concurrent.futures.Future:
        """Encode on the worker thread; the future's result is the FP32 embedding, [N, *embedding_shape]."""
        return self._worker.submit(self._encode, image)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        patches = np.asarray(image, np.float32)
        return np.concatenate([np.asarray(_to_numpy(self.predictor.encode(patches[i:i + 1])), np.float32)
                               for i in range(len(patches))])

    def parameters(self) -> Dict[str, str]:
        return {CHECKPOINT_PARAMETER: self.checkpoint.sha256, CHECKPOINT_NAME_PARAMETER: self.checkpoint.name,
                DEVICE_PARAMETER: self.predictor.device}

    def model_config(self, model: str) -> Dict[str, Any]:
        """The model configuration as Triton answers GET /v2/models/NAME/config (its config.pbtxt as JSON)."""
        return {
            "name": model,
            "platform": "sammed3d",
            "max_batch_size": 0,  # dims below include the batch dimension
            "input": [{"name": IMAGE, "data_type": "TYPE_FP32", "dims": self.image_shape}],
            "output": [{"name": EMBEDDING, "data_type": "TYPE_FP32", "dims": self.output_shape}],
            "parameters": {key: {"string_value": value} for key, value in self.parameters().items()},
        }

    def shutdown(self) -> None:
        """Finish the encode in progress and stop the worker thread."""
        self._worker.shutdown(wait=True)


def _to_numpy(embedding: Any) -> np.ndarray:
    """A predictor's embedding as numpy: torch tensors are moved to the CPU."""
    if hasattr(embedding, "detach"):
        return embedding.detach().float().cpu().numpy()
    return np.asarray(embedding)


def open_service(backend: str, checkpoint: Path, device: str) -> EncoderService:
    """The encoder of a checkpoint file ("torch") or of an ONNX export folder ("onnx") on `device`."""
    from SAMMed3DLib import provenance

    if backend not in SERVED_BACKENDS:
        raise UnknownChoice("backend to serve", backend, SERVED_BACKENDS)
    predictor = load_predictor(backend, checkpoint, device)
    record = provenance.checkpoint(checkpoint, predictor=predictor)  # a file's SHA256, or what an export records
    if not record["sha256"]:
        raise NotAnExport(checkpoint, "it does not record the SHA256 of the checkpoint it was exported from, which "
                                      "clients compare with their decoder's")
    return EncoderService(predictor, ServedCheckpoint(record["sha256"].lower(), record["file"] or ""))
