"""The SAM-Med3D network: `build_sam_med3d` for a fresh one, `load_sam_med3d` for a checkpoint.

Names are imported on first use, so `SAMMed3DLib.model.config` (the variants) is available without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it.
_PUBLIC = {
    "VARIANTS": "config",
    "SamMed3DConfig": "config",
    "SamMed3D": "sam_med3d",
    "build_sam_med3d": "sam_med3d",
    "load_sam_med3d": "checkpoint",
    "read_state_dict": "checkpoint",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'SAMMed3DLib.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"SAMMed3DLib.model.{_PUBLIC[name]}"), name)
