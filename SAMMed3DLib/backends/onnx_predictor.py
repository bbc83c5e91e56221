"""SAM-Med3D on ONNX Runtime: the predictor protocol without PyTorch, on CPU or CUDA.

    predictor = OnnxPredictor("sam_med3d_onnx")            # a folder written by the ONNX export (onnx_export.py)
    session = InteractiveSession(predictor, Volume.read("ct.nrrd"))

This module needs only numpy and onnxruntime (or onnxruntime-gpu for CUDA), so Slicer and other hosts where
installing PyTorch fails can still run the network. The file names, tensor names and metadata keys below are what
`SAMMed3DLib.backends.onnx_export` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from SAMMed3DLib.backends.predictor import BACKENDS
from SAMMed3DLib.errors import DeviceUnavailable, MissingPackages, NotAnExport, SAMMed3DError, UnknownChoice

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("embedding",)
DECODER_INPUTS = ("embedding", "points", "labels", "mask_logits")
DECODER_OUTPUTS = ("logits", "iou")
# Metadata keys of both files.
VERSION_KEY = "sammed3d_version"
CHECKPOINT_SHA256_KEY = "source_checkpoint_sha256"
CHECKPOINT_NAME_KEY = "source_checkpoint"

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def _import_onnxruntime():
    MissingPackages.require("the ONNX Runtime backend", "onnx", "onnxruntime")
    import onnxruntime

    return onnxruntime


def _requested_providers(providers: Union[str, Sequence[str]], available: Sequence[str]) -> List[str]:
    """"auto" (CUDA when this build has it, else CPU), "cpu", "cuda", or an explicit list of provider names."""
    if not isinstance(providers, str):
        missing = [name for name in providers if name not in available]
        if missing:
            raise SAMMed3DError(f"ONNX Runtime providers {', '.join(missing)} are not available here "
                                f"(available: {', '.join(available)})")
        return list(providers)
    name = providers.lower()
    if name == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    if name == "cpu":
        return [_CPU]
    if name == "cuda":
        if _CUDA not in available:
            raise DeviceUnavailable("cuda", "this ONNX Runtime has no CUDA provider; onnxruntime-gpu has one")
        return [_CUDA, _CPU]
    raise UnknownChoice("ONNX Runtime providers", providers, ("auto", "cpu", "cuda", "a list of provider names"))


def _session(path: Path, providers: Union[str, Sequence[str]], inputs: Tuple[str, ...]):
    """An ONNX Runtime session of one exported file on the providers asked for, checked to have `inputs`."""
    ort = _import_onnxruntime()
    requested = _requested_providers(providers, ort.get_available_providers())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=requested)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise SAMMed3DError(f"{path} is not a readable ONNX model ({reason})") from None
    found = tuple(item.name for item in session.get_inputs())
    if found != inputs:
        raise NotAnExport(path.parent, f"{path.name} has inputs {', '.join(found)}, not {', '.join(inputs)}")
    if _CUDA in requested and _CUDA not in session.get_providers() and providers != "auto":
        raise DeviceUnavailable("cuda", "ONNX Runtime could not start CUDA: no usable NVIDIA GPU, or the CUDA or "
                                "cuDNN libraries are missing")
    return session


def _described(session: Any) -> Tuple[List[str], str, str, Dict[str, str]]:
    """What a predictor says of its ONNX Runtime session: the providers it really uses, the device and label they
    amount to, and the export's metadata (package version, source checkpoint's SHA256 and name)."""
    providers = session.get_providers()
    device = "cuda" if _CUDA in providers else "cpu"
    return providers, device, f"{BACKENDS['onnx']} on {device}", dict(session.get_modelmeta().custom_metadata_map)


class OnnxDecoder:
    """The exported decoder alone, for hosts that encode elsewhere (the remote backend): `path` is an export folder
    (only its decoder.onnx is read) or a decoder.onnx file. `providers` as for `OnnxPredictor`."""

    def __init__(self, path: Union[str, Path], providers: Union[str, Sequence[str]] = "auto"):
        path = Path(path).expanduser()
        file = path / DECODER_FILE if path.is_dir() else path
        if not file.is_file():
            raise NotAnExport(path, f"it lacks {DECODER_FILE}" if path.is_dir() else "no such file or folder")
        self._session = _session(file, providers, DECODER_INPUTS)
        self.providers, self.device, self.label, self.metadata = _described(self._session)
        self.path = file

    def decode(
        self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        logits, iou = self._session.run(
            None,
            {
                "embedding": np.ascontiguousarray(embedding, np.float32),
                "points": np.ascontiguousarray(points, np.float32),
                "labels": np.ascontiguousarray(labels, np.int64),
                "mask_logits": np.ascontiguousarray(mask_logits, np.float32),
            },
        )
        return logits, iou


class OnnxPredictor:
    """The exported encoder and decoder behind the predictor protocol; the embedding is a numpy array.

    `providers`: "auto" uses CUDA when onnxruntime-gpu is installed and a GPU answers (ONNX Runtime falls back to
    the CPU when CUDA fails to start), else the CPU; "cuda" (or a list naming CUDA) fails unless CUDA really runs.
    On the CPU, ONNX Runtime keeps its default intra-op threads (one per core, spinning): unlike torch's OpenMP team
    they need no adapting to a shared CPU, since its pool hands work out as threads come free and the calling thread
    runs what a descheduled one has not started (benchmarks/encoder.py --busy-cores 1: 1.17x the one-thread idle
    time with one of two cores busy, 0.6x when idle).
    `self.providers` lists what ONNX Runtime actually uses (`device` and `label` say it in short), `self.metadata` the
    export's metadata (package version, source checkpoint's sha256).
    """

    def __init__(self, directory: Union[str, Path], providers: Union[str, Sequence[str]] = "auto"):
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise NotAnExport(directory, "no such folder")
        missing = [name for name in (ENCODER_FILE, DECODER_FILE) if not (directory / name).is_file()]
        if missing:
            raise NotAnExport(directory, f"it lacks {' and '.join(missing)}")
        self._encoder = _session(directory / ENCODER_FILE, providers, ENCODER_INPUTS)
        self._decoder = OnnxDecoder(directory, providers)
        self.providers, self.device, self.label, self.metadata = _described(self._encoder)
        self.directory = directory

    def encode(self, image: np.ndarray) -> np.ndarray:
        (embedding,) = self._encoder.run(None, {"image": np.ascontiguousarray(image, np.float32)})
        return embedding

    def decode(
        self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        return self._decoder.decode(embedding, points, labels, mask_logits)
