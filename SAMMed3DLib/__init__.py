"""SAMMed3DLib: SAM-Med3D promptable 3D segmentation, without 3D Slicer.

Public names are imported on first use, so `import SAMMed3DLib` neither needs torch nor touches the network.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_PUBLIC = {
    "Volume": "interactive.geometry",
    "InteractiveSession": "interactive.session",
    "Prediction": "interactive.session",
    "Click": "interactive.session",
    "TorchPredictor": "backends.torch_predictor",
    "OnnxPredictor": "backends.onnx_predictor",
    "RemotePredictor": "backends.remote_predictor",
    "check_connection": "backends.remote_predictor",
    "load_predictor": "backends.predictor",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'SAMMed3DLib' has no attribute {name!r}")
    return getattr(importlib.import_module(f"SAMMed3DLib.{_PUBLIC[name]}"), name)
