"""The predictor protocol (numpy in, numpy out) that the session talks to, and opening a backend's predictor.

The session needs only this protocol, so the torch and ONNX Runtime backends (and the threshold oracle of
`SAMMed3DLib.testing`) are interchangeable. Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Tuple, Union

import numpy as np

from SAMMed3DLib.errors import MissingPackages, SAMMed3DError, UnknownChoice
from SAMMed3DLib.interactive.geometry import LOGITS_SIZE

LOGITS_SHAPE = (1, 1) + (LOGITS_SIZE,) * 3
DEVICES = ("auto", "cpu", "cuda", "mps")  # what users choose; "auto" picks the best the machine has
# The names `load_predictor` takes -> what they run on.
BACKENDS = {"torch": "PyTorch", "onnx": "ONNX Runtime", "remote": "remote server"}


class Predictor(Protocol):
    """What the session needs from a network: encode a patch once, decode many prompts against it.

    `device` says where it runs ("cpu", "cuda", "mps"), `label` says it for people ("PyTorch on cuda").
    """

    device: str
    label: str

    def encode(self, image: np.ndarray) -> Any:
        """float32 [1,1,128,128,128] normalised patch -> an embedding the session only passes back to `decode`."""

    def decode(
        self, embedding: Any, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """points float32 [1,N,3] (patch voxel indices, patch axis order), labels int64 [1,N] (1 include,
        0 exclude), mask_logits float32 [1,1,32,32,32] -> (logits float32 [1,1,32,32,32], iou float32 [1,1])."""


def load_predictor(
    backend: str, model: Union[str, Any], device: str = "auto", server: Optional[str] = None,
    token: Optional[str] = None,
) -> Predictor:
    """A backend's predictor: "torch" reads a checkpoint file onto `device`, "onnx" an export folder with the ONNX
    Runtime providers `device` asks for; "remote" encodes on the inference server at `server` (with the bearer
    `token`, if given) and decodes on `device` with `model`'s decoder: an export folder or decoder.onnx on ONNX
    Runtime, else a checkpoint file on torch. The predictor's `device` and `label` say what it got."""
    if backend == "remote":
        return _remote_predictor(model, device, server, token)
    if backend == "onnx":
        from SAMMed3DLib.backends.onnx_predictor import OnnxPredictor

        _onnx_device(device)
        return OnnxPredictor(model, providers=device)
    if backend != "torch":
        raise UnknownChoice("backend", backend, tuple(BACKENDS))
    MissingPackages.require("the PyTorch backend", "torch", "torch", "safetensors")
    from SAMMed3DLib.backends.torch_predictor import TorchPredictor, select_device
    from SAMMed3DLib.model import load_sam_med3d

    torch_device = select_device(device)
    return TorchPredictor(load_sam_med3d(model, torch_device), torch_device)


def _onnx_device(device: str) -> None:
    if device == "mps":
        raise SAMMed3DError("ONNX Runtime runs on the CPU or CUDA, not on Apple's mps device")


def _remote_predictor(model: Union[str, Any], device: str, server: Optional[str], token: Optional[str]) -> Predictor:
    from SAMMed3DLib.backends.remote_predictor import RemotePredictor

    if not server:
        raise SAMMed3DError("the remote server backend needs the server's URL")
    if is_onnx_export(model):
        _onnx_device(device)
        return RemotePredictor(server, model, token, device=device)
    from SAMMed3DLib.weights import sha256_of

    decoder = load_predictor("torch", model, device)
    return RemotePredictor(server, decoder, token, checkpoint_sha256=sha256_of(model))


def is_onnx_export(model: Union[str, Any]) -> bool:
    """Whether `model` names an ONNX export (a folder, or an .onnx file) rather than a checkpoint file."""
    path = Path(model).expanduser()
    return path.is_dir() or path.suffix == ".onnx"
