"""SAM-Med3D on ONNX Runtime: the predictor protocol without PyTorch, on CPU or CUDA.

    predictor = OnnxPredictor("sam_med3d_onnx")            # a folder written by `sammed3d export-onnx`
    session = InteractiveSession(predictor, Volume.read("ct.nrrd"))

This module needs only numpy and onnxruntime (or onnxruntime-gpu for CUDA), so Slicer and other hosts where
installing PyTorch fails can still run the network. The file names, tensor names and metadata keys below are what
`SAMMed3DLib.onnx_export` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from SAMMed3DLib.errors import SAMMed3DError

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
    try:
        import onnxruntime
    except ImportError:
        raise SAMMed3DError(
            "the ONNX backend needs ONNX Runtime: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"
        ) from None
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
            raise SAMMed3DError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu instead of "
                                "onnxruntime, or use providers 'cpu' or 'auto'")
        return [_CUDA, _CPU]
    raise SAMMed3DError(f"unknown ONNX Runtime providers {providers!r}; choose auto, cpu, cuda or a list of names")


class OnnxPredictor:
    """The exported encoder and decoder behind the predictor protocol; the embedding is a numpy array.

    `providers`: "auto" uses CUDA when onnxruntime-gpu is installed and a GPU answers (ONNX Runtime falls back to
    the CPU when CUDA fails to start), else the CPU; "cuda" (or a list naming CUDA) fails unless CUDA really runs.
    `self.providers` lists what ONNX Runtime actually uses, `self.metadata` the export's metadata (package version,
    source checkpoint's sha256).
    """

    def __init__(self, directory: Union[str, Path], providers: Union[str, Sequence[str]] = "auto"):
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise SAMMed3DError(f"ONNX model folder {directory} does not exist (write one with `sammed3d export-onnx "
                                "--checkpoint PATH_OR_NAME --output DIR`)")
        missing = [name for name in (ENCODER_FILE, DECODER_FILE) if not (directory / name).is_file()]
        if missing:
            raise SAMMed3DError(f"{directory} lacks {' and '.join(missing)}: not a folder written by "
                                "`sammed3d export-onnx`")
        ort = _import_onnxruntime()
        requested = _requested_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._encoder = self._open(ort, directory / ENCODER_FILE, options, requested, ENCODER_INPUTS)
        self._decoder = self._open(ort, directory / DECODER_FILE, options, requested, DECODER_INPUTS)
        self.providers: List[str] = self._encoder.get_providers()
        if _CUDA in requested and _CUDA not in self.providers and providers != "auto":
            raise SAMMed3DError("ONNX Runtime could not start CUDA (no usable NVIDIA GPU, or CUDA/cuDNN libraries "
                                "missing); use providers 'cpu' or 'auto'")
        self.metadata: Dict[str, str] = dict(self._encoder.get_modelmeta().custom_metadata_map)
        self.directory = directory

    @staticmethod
    def _open(ort, path: Path, options, providers: List[str], inputs: Tuple[str, ...]):
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise SAMMed3DError(f"{path} is not a readable ONNX model ({reason})") from None
        found = tuple(item.name for item in session.get_inputs())
        if found != inputs:
            raise SAMMed3DError(f"{path} has inputs {', '.join(found)}, expected {', '.join(inputs)}: not written "
                                "by `sammed3d export-onnx`")
        return session

    def encode(self, image: np.ndarray) -> np.ndarray:
        (embedding,) = self._encoder.run(None, {"image": np.ascontiguousarray(image, np.float32)})
        return embedding

    def decode(
        self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        logits, iou = self._decoder.run(
            None,
            {
                "embedding": np.ascontiguousarray(embedding, np.float32),
                "points": np.ascontiguousarray(points, np.float32),
                "labels": np.ascontiguousarray(labels, np.int64),
                "mask_logits": np.ascontiguousarray(mask_logits, np.float32),
            },
        )
        return logits, iou
