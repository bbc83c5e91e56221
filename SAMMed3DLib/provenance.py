"""Where a result came from: the checkpoint by SHA256 (a name or path can be re-used for another file), the
software that ran it and where, and every setting. Evaluation writes it to run.json and summary.json, fine-tuning
into its checkpoints, so that two models are never mixed in one table and a result can be reproduced.
"""

from __future__ import annotations

import datetime
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = ("numpy", "SimpleITK", "torch", "onnxruntime")  # what decides the numbers besides SAMMed3DLib


def checkpoint(path: Optional[Path], given: Optional[str] = None, predictor: Any = None) -> Dict[str, Any]:
    """The checkpoint file `path` (or an ONNX export folder, `predictor` being its OnnxPredictor) as `given` by the
    user (a cache name, a path): its file name, absolute path and SHA256. An export is identified by the SHA256 of
    the checkpoint it was exported from (its metadata). None: no checkpoint (a test's oracle)."""
    if path is None:
        return {"given": given, "file": None, "path": None, "sha256": None}
    path = Path(path)
    if path.is_dir():
        from SAMMed3DLib.backends.onnx_predictor import CHECKPOINT_NAME_KEY, CHECKPOINT_SHA256_KEY

        exported = getattr(predictor, "metadata", {})
        return {"given": given, "file": exported.get(CHECKPOINT_NAME_KEY), "path": str(path.resolve()),
                "sha256": exported.get(CHECKPOINT_SHA256_KEY), "onnx_export": True}
    from SAMMed3DLib.backends.onnx_predictor import CHECKPOINT_SHA256_KEY
    from SAMMed3DLib.weights import sha256_of

    known = getattr(predictor, "metadata", {}).get(CHECKPOINT_SHA256_KEY)  # the remote backend hashed it already
    return {"given": given, "file": path.name, "path": str(path.resolve()), "sha256": known or sha256_of(path)}


def software() -> Dict[str, Optional[str]]:
    """Versions of SAMMed3DLib, Python and the packages that decide the numbers (None: not installed)."""
    from SAMMed3DLib import __version__

    versions: Dict[str, Optional[str]] = {"SAMMed3DLib": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["platform"] = platform.platform()
    return versions


def run(backend: str, device: str) -> Dict[str, Any]:
    """One run: when it started (UTC), what ran the model (`backend`: "PyTorch on cpu") and on which device."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"started": started, "backend": backend, "device": device, "software": software()}
