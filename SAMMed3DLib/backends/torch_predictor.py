"""SAM-Med3D on PyTorch behind the predictor protocol, and choosing a torch device.

torch is imported inside the functions, so importing this module costs nothing until a predictor is made.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Tuple

import numpy as np

from SAMMed3DLib.backends.cpu_threads import threads_to_use
from SAMMed3DLib.backends.predictor import BACKENDS, DEVICES
from SAMMed3DLib.errors import DeviceUnavailable, UnknownChoice

if TYPE_CHECKING:
    import torch


def select_device(name: str = "auto") -> torch.device:
    """ "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda" or "mps" as a torch.device; `DeviceUnavailable` if
    the machine or this torch build lacks it."""
    import torch

    name = name.lower()
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not cuda:
            build = "CPU-only torch" if torch.version.cuda is None else f"torch for CUDA {torch.version.cuda}"
            raise DeviceUnavailable("cuda", f"{build}, no usable NVIDIA GPU")
        return torch.device("cuda")
    if name == "mps":
        if not mps:
            raise DeviceUnavailable("mps", "needs Apple silicon and a torch build with MPS")
        return torch.device("mps")
    raise UnknownChoice("device", name, DEVICES)


class TorchPredictor:
    """The torch network (`SamMed3D`) behind the predictor protocol; the embedding stays on `torch_device`.

    On the CPU each encode runs on the thread count torch had when the predictor was made (what the host application
    or the user chose) less the cores other processes keep busy (`cpu_threads`, about 25 ms to find out); decodes,
    too short to pay for that, run on the last encode's count. The count is set in the calling thread (torch's
    OpenMP thread count is per thread) and put back afterwards."""

    def __init__(self, model: torch.nn.Module, device: Any = "cpu"):
        import torch

        self.torch_device = device if isinstance(device, torch.device) else select_device(str(device))
        self.device = self.torch_device.type
        self.label = f"{BACKENDS['torch']} on {self.device}"
        self.model = model.to(self.torch_device).eval()
        self.max_threads = torch.get_num_threads()
        self._threads = self.max_threads  # the last encode's choice

    @contextlib.contextmanager
    def _cpu_threads(self, choose: bool) -> Iterator[None]:
        import torch

        if self.device != "cpu":
            yield
            return
        if choose:
            self._threads = threads_to_use(self.max_threads)
        previous = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def encode(self, image: np.ndarray) -> torch.Tensor:
        import torch

        with torch.inference_mode(), self._cpu_threads(choose=True):
            return self.model.encode(torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(self.torch_device))

    def decode(
        self, embedding: Any, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """`embedding`: what `encode` returned, or a numpy array (an embedding from a server: the remote backend)."""
        import torch

        with torch.inference_mode(), self._cpu_threads(choose=False):
            logits, iou = self.model.decode(
                torch.as_tensor(embedding, device=self.torch_device),
                torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(self.torch_device),
                torch.from_numpy(np.ascontiguousarray(labels, np.int64)).to(self.torch_device),
                torch.from_numpy(np.ascontiguousarray(mask_logits, np.float32)).to(self.torch_device),
                multimask=False,
            )
        return logits.float().cpu().numpy(), iou.float().cpu().numpy()
