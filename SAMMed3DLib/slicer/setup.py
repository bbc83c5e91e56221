"""What the Slicer module panel decides, as plain Python: the model settings, which packages are missing, the
model download in the background, the predictor, and the status line. Nothing here imports Slicer or Qt.

Slicer keeps settings as strings (QSettings), so `ModelSettings` converts to and from a dict of strings under
`SETTINGS_KEYS`. Packages are only *listed* here: installing them is the module's job, on Slicer's main thread,
after asking the user (pip from a worker thread crashes Slicer on macOS).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from SAMMed3DLib import weights
from SAMMed3DLib.backends.predictor import BACKENDS, DEVICES, Predictor, load_predictor
from SAMMed3DLib.errors import SAMMed3DError, UnknownChoice

LOCAL_FILE = "local file"  # the model choice that reads `local_path` instead of a registry entry

# import name -> pip requirement, for the packages SAMMed3DLib imports that Slicer does not ship; the same floors as
# pyproject.toml's (Testing/test_slicer_setup.py compares them). torch is installed through the PyTorch extension
# (PyTorchUtils), which picks the CPU or CUDA build that fits the machine, asked for `TORCH_REQUIREMENT`.
REQUIREMENTS = {
    "scipy": "scipy>=1.8",
    "onnxruntime": "onnxruntime>=1.17",
    "safetensors": "safetensors>=0.4",
    "torch": "torch>=2.5",  # torch.serialization.safe_globals, for weights_only loading with an allow-list
    # The remote backend's client. Its gevent has wheels for Python 3.9 only in older releases: install with pip's
    # --prefer-binary there, or pip builds the newest from source.
    "tritonclient": "tritonclient[http]>=2.40",
}
_NEEDS = {"torch": ("torch", "scipy", "safetensors"), "onnx": ("onnxruntime", "scipy"),
          "remote": ("onnxruntime", "tritonclient", "scipy")}
TORCH_REQUIREMENT = REQUIREMENTS["torch"][len("torch"):]
MINIMUM_TORCH = tuple(int(part) for part in TORCH_REQUIREMENT.lstrip(">=").split("."))
# Where an NVIDIA GPU is present, ONNX Runtime comes as onnxruntime-gpu (the same `onnxruntime` module, with the CUDA
# provider); the design runs it on CUDA when it can.
ONNXRUNTIME_GPU = REQUIREMENTS["onnxruntime"].replace("onnxruntime", "onnxruntime-gpu", 1)
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # the Linux driver's kernel module

SETTINGS_KEYS = {
    "model": "SAMMed3D/Model",
    "local_path": "SAMMed3D/LocalPath",
    "backend": "SAMMed3D/Backend",
    "device": "SAMMed3D/Device",
    "server": "SAMMed3D/Server",  # the server's token is never stored: the module keeps it for the session
}


@dataclass(frozen=True)
class ModelSettings:
    """The model panel's choices: a registry name or `LOCAL_FILE` (then `local_path`: a checkpoint file for
    PyTorch, an exported model folder for ONNX Runtime and for the remote server's decoder), the backend, the device
    (for the remote server: where the decoder runs) and the remote server's URL."""

    model: str = "turbo"
    local_path: str = ""
    backend: str = "torch"
    device: str = "auto"
    server: str = ""

    def validated(self) -> ModelSettings:
        """Self, or a SAMMed3DError that says which choice is wrong and what to pick."""
        if self.backend not in BACKENDS:
            raise UnknownChoice("backend", self.backend, tuple(BACKENDS))
        if self.device not in DEVICES:
            raise UnknownChoice("device", self.device, DEVICES)
        if self.model == LOCAL_FILE:
            if not self.local_path:
                raise SAMMed3DError("choose the model file (or, for ONNX Runtime, the exported model folder)")
        elif weights.find(self.model) is None:
            raise UnknownChoice("model", self.model, [e.name for e in weights.REGISTRY] + [LOCAL_FILE])
        if self.backend in ("onnx", "remote") and self.device == "mps":
            raise SAMMed3DError("ONNX Runtime runs on auto, cpu or cuda here; choose one of those, or PyTorch for mps")
        if self.backend == "onnx" and self.model != LOCAL_FILE:
            raise SAMMed3DError(
                "ONNX Runtime runs an exported model folder: choose 'local file' and an ONNX export folder, or choose "
                "the PyTorch backend"
            )
        if self.backend == "remote":
            self.server_url()
            if self.model != LOCAL_FILE:
                raise SAMMed3DError(
                    "the remote server encodes and this computer decodes, with the decoder of the server's checkpoint: "
                    "choose 'local file' and the ONNX export folder of that checkpoint"
                )
        return self

    def server_url(self) -> str:
        """The server's address without the spaces a paste brings; a SAMMed3DError if none was entered."""
        url = self.server.strip()
        if not url:
            raise SAMMed3DError("enter the address of the encoder server, like https://HOST:8000")
        return url

    def to_strings(self) -> Dict[str, str]:
        return {key: str(getattr(self, field)) for field, key in SETTINGS_KEYS.items()}

    @classmethod
    def from_strings(cls, values: Mapping[str, object]) -> ModelSettings:
        """Settings from stored strings. A value that is unusable on its own (an unknown backend, device or model)
        falls back to its default; a combination that does not work together is kept, so the panel shows what the
        user chose, and `validated()` says what to change."""
        known = {
            "model": lambda v: v == LOCAL_FILE or weights.find(v) is not None,
            "local_path": lambda v: True,
            "backend": lambda v: v in BACKENDS,
            "device": lambda v: v in DEVICES,
            "server": lambda v: True,
        }
        chosen = {}
        for field, key in SETTINGS_KEYS.items():
            value = values.get(key)
            if value not in (None, "") and known[field](str(value)):
                chosen[field] = str(value)
        return cls(**chosen)


def _usable(name: str) -> bool:
    """Whether a package can be imported here, torch also at `MINIMUM_TORCH` or newer."""
    if importlib.util.find_spec(name) is None:
        return False
    if name != "torch":
        return True
    from importlib.metadata import version

    return tuple(int(part) for part in version("torch").split("+")[0].split(".")[:2]) >= MINIMUM_TORCH


def nvidia_gpu_present() -> bool:
    """Whether an NVIDIA driver is installed: its `nvidia-smi` on the PATH (the Windows and Linux drivers install
    it) or the Linux kernel module's version file. macOS has none."""
    return shutil.which("nvidia-smi") is not None or NVIDIA_DRIVER_FILE.exists()


def missing_packages(
    backend: str, is_installed: Callable[[str], bool] = _usable, nvidia: Callable[[], bool] = nvidia_gpu_present
) -> Tuple[bool, List[str]]:
    """(torch is missing, pip requirements of the other missing packages) for a backend; onnxruntime-gpu for ONNX
    Runtime where an NVIDIA GPU is present."""
    needed = _NEEDS[backend]
    return (
        "torch" in needed and not is_installed("torch"),
        [ONNXRUNTIME_GPU if name == "onnxruntime" and nvidia() else REQUIREMENTS[name]
         for name in needed if name != "torch" and not is_installed(name)],
    )


def import_name(requirement: str) -> str:
    """The module a pip requirement installs: "onnxruntime-gpu>=1.17" -> "onnxruntime"."""
    name = re.split(r"[<>=!~;\[\s]", requirement.strip(), maxsplit=1)[0].lower().replace("-", "_")
    return "onnxruntime" if name == "onnxruntime_gpu" else name


def imported_already(names: Sequence[str], modules: Mapping[str, object] = sys.modules) -> List[str]:
    """Those of the modules that this Python has imported: installing a new version of one takes effect only after
    a restart (Python keeps the imported one)."""
    return [name for name in names if name in modules]


def outdated_torch_imported(modules: Mapping[str, object] = sys.modules) -> Optional[str]:
    """The version of an imported torch older than `MINIMUM_TORCH` (an upgrade installed since it was imported
    needs a restart), else None."""
    torch = modules.get("torch")
    version = str(getattr(torch, "__version__", "")) if torch is not None else ""
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers and tuple(int(part) for part in numbers.groups()) < MINIMUM_TORCH:
        return version
    return None


def model_file(settings: ModelSettings) -> Optional[Path]:
    """The model to load if it is on this machine (a local checkpoint file for PyTorch or export folder for ONNX
    Runtime, or a verified cached download), else None."""
    if settings.model == LOCAL_FILE:
        path = Path(settings.local_path).expanduser()
        if not path.exists():
            raise SAMMed3DError(f"{path} does not exist; choose another model file")
        if settings.backend == "torch" and path.is_dir():
            raise SAMMed3DError(f"{path} is a folder, and PyTorch reads a checkpoint file: choose the file, or "
                                "choose ONNX Runtime for an exported model folder")
        if settings.backend == "onnx" and not path.is_dir():
            raise SAMMed3DError(f"{path} is a file, and ONNX Runtime reads an exported model folder: choose the "
                                "folder that holds encoder.onnx and decoder.onnx, or choose PyTorch for a checkpoint")
        if settings.backend == "remote" and not path.is_dir():
            raise SAMMed3DError(f"{path} is a file; the remote server's decoder is read from an exported model "
                                "folder: choose the folder that holds decoder.onnx")
        return path
    return weights.cached(settings.model)


def create_predictor(settings: ModelSettings, path: Path, token: Optional[str] = None) -> Predictor:
    """The predictor for the settings and a model file; `token`: the remote server's, if it asks for one."""
    settings.validated()
    if settings.backend == "remote":
        return load_predictor("remote", path, settings.device, server=settings.server_url(), token=token or None)
    return load_predictor(settings.backend, path, settings.device)


def connection_report(settings: ModelSettings, token: Optional[str] = None) -> str:
    """The model panel's connection test (slow: run it off the main thread): what the server says of itself and the
    round trip of one encode (`check_connection`), and, where the decoder folder is chosen, that the server encodes
    with its checkpoint. A SAMMed3DError (a `ServerError` for the server's problems) says what is wrong."""
    from SAMMed3DLib.backends.onnx_predictor import CHECKPOINT_SHA256_KEY, OnnxDecoder
    from SAMMed3DLib.backends.remote_predictor import check_connection, check_same_checkpoint

    info = check_connection(settings.server_url(), token or None)
    if settings.model != LOCAL_FILE or not settings.local_path:
        return f"{info.describe()}. Choose the decoder's export folder to check that it belongs to this checkpoint."
    folder = model_file(settings)
    check_same_checkpoint(info, OnnxDecoder(folder, providers="cpu").metadata.get(CHECKPOINT_SHA256_KEY), str(folder))
    return f"{info.describe()}; the local decoder belongs to the same checkpoint."


def status_text(predictor: Predictor, timings: Optional[Mapping[str, float]] = None) -> str:
    """The effect's status line: where the model runs and what the last click cost, e.g.
    `PyTorch on cuda | last click 1.21 s (encode 1.02 s, decode 0.05 s, ...)`. `timings` are a session
    Prediction's: seconds per stage, and "total" if the session measured it (else the stages' sum)."""
    text = predictor.label
    if timings:
        stages = {name: seconds for name, seconds in timings.items() if name != "total"}
        total = timings.get("total", sum(stages.values()))
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
        text += f" | last click {total:.2f} s ({parts})"
        round_trip = getattr(predictor, "last_round_trip_s", None)
        if round_trip is not None and timings.get("encode", 0.0) > 0:
            text += f" | encoded on the server, round trip {round_trip:.2f} s"
    return text


class BackgroundDownload:
    """A registry checkpoint (or a URL with its SHA256) downloaded in a worker thread, so that Slicer's main
    thread can show progress and stay responsive. Progress comes from `weights.fetch`'s callback; the SHA256 check
    and the atomic move into the cache are `weights.fetch`'s. Only network I/O runs in the thread: nothing touches
    Qt or the scene there."""

    def __init__(self, name_or_url: str, sha256: Optional[str] = None) -> None:
        self._source = weights.source(name_or_url, sha256)
        self._received, self._total = 0, self._source.size
        self.path: Optional[Path] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BackgroundDownload:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.path = weights.fetch(self._source, on_progress=self._progress)
        except BaseException as error:  # handed to the main thread, which reports it
            self.error = error

    def _progress(self, received: int, total: Optional[int]) -> None:
        self._received, self._total = received, total or self._total

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and (self.path is not None or self.error is not None)

    def wait(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return self.done

    def fraction(self) -> Optional[float]:
        """Share received so far (None while the size is unknown)."""
        if self.path is not None:
            return 1.0
        if not self._total:
            return None
        return min(self._received / self._total, 0.99)

    def result(self) -> Path:
        """The verified file; raises the download's error."""
        if self.error is not None:
            raise self.error
        if self.path is None:
            raise RuntimeError("the download has not finished")
        return self.path
