"""The predictor protocol (numpy in, numpy out) and its implementations: the torch network and a threshold oracle.

The session talks only to this protocol, so the torch and ONNX backends, and the threshold oracle used by tests and
self-tests, are interchangeable. torch is imported only when a torch predictor or device is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, Tuple

import numpy as np

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.geometry import LOGITS_SIZE

if TYPE_CHECKING:
    import torch

LOGITS_SHAPE = (1, 1) + (LOGITS_SIZE,) * 3
DEVICES = ("auto", "cpu", "cuda", "mps")  # the names `select_device` takes
BACKENDS = {"torch": "PyTorch", "onnx": "ONNX Runtime"}  # the names `load_predictor` takes -> what they run on


class Predictor(Protocol):
    """What the session needs from a network: encode a patch once, decode many prompts against it."""

    def encode(self, image: np.ndarray) -> Any:
        """float32 [1,1,128,128,128] normalised patch -> an embedding the session only passes back to `decode`."""

    def decode(
        self, embedding: Any, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """points float32 [1,N,3] (patch voxel indices, patch axis order), labels int64 [1,N] (1 include,
        0 exclude), mask_logits float32 [1,1,32,32,32] -> (logits float32 [1,1,32,32,32], iou float32 [1,1])."""


def select_device(name: str = "auto") -> torch.device:
    """ "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda" or "mps" as a torch.device; SAMMed3DError if the
    machine or this torch build lacks it."""
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
            raise SAMMed3DError(f"device 'cuda' is not available ({build}, no usable NVIDIA GPU); use 'cpu' or 'auto'")
        return torch.device("cuda")
    if name == "mps":
        if not mps:
            raise SAMMed3DError(
                "device 'mps' is not available (needs Apple silicon and a torch build with MPS); use 'cpu' or 'auto'"
            )
        return torch.device("mps")
    raise SAMMed3DError(f"unknown device {name!r}; choose {', '.join(DEVICES)}")


class TorchPredictor:
    """The torch network (`SamMed3D`) behind the predictor protocol; the embedding stays on the device."""

    def __init__(self, model: torch.nn.Module, device: Any = "cpu"):
        import torch

        self.device = device if isinstance(device, torch.device) else select_device(str(device))
        self.model = model.to(self.device).eval()

    def encode(self, image: np.ndarray) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(self.device))

    def decode(
        self, embedding: torch.Tensor, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits, iou = self.model.decode(
                embedding,
                torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(labels, np.int64)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(mask_logits, np.float32)).to(self.device),
                multimask=False,
            )
        return logits.float().cpu().numpy(), iou.float().cpu().numpy()


def load_predictor(backend: str, model: Any, device: str = "auto") -> Tuple[Predictor, str]:
    """A backend's predictor and the device it runs on: "torch" reads a checkpoint file onto `device`, "onnx" an
    export folder with the ONNX Runtime providers `device` asks for."""
    if backend == "onnx":
        from SAMMed3DLib.onnx_backend import OnnxPredictor

        predictor = OnnxPredictor(model, providers=device)
        return predictor, "cuda" if "CUDAExecutionProvider" in predictor.providers else "cpu"
    if backend != "torch":
        raise SAMMed3DError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    from SAMMed3DLib.model import load_sam_med3d

    torch_device = select_device(device)
    return TorchPredictor(load_sam_med3d(model, torch_device), torch_device), str(torch_device)


class ThresholdPredictor:
    """A predictor without a network, for tests and self-tests: it segments bright connected regions of the patch.

    "Bright" is above `threshold`; by default halfway between the patch's median and the object's intensity: the
    larger of the clicked voxel and the median under the previous mask (the mask prompt), so that a click on an
    object's partial-volume rim does not lower it. A positive click adds the bright region under it (or, on a dark
    voxel, the nearest bright region) to the previous mask; a negative click on a clearly bright voxel (above the
    midpoint of threshold and intensity) removes the bright region under it, and leaves the prompt as it was on a
    rim voxel. So clicks never add dark voxels, and more clicks do not make the mask worse. Its logits are the
    mask's fraction in each 4^3 block, shifted and scaled so that logit 0 is a half-full block: pasted back and
    thresholded at 0, the mask follows the regions' boundary to within a patch voxel.
    """

    LOGIT_SCALE = 8.0

    def __init__(self, threshold: Optional[float] = None):
        self.threshold = threshold

    def encode(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(image, dtype=np.float32)[0, 0]

    def decode(
        self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        image = embedding
        factor = image.shape[0] // LOGITS_SHAPE[-1]
        prompt = np.asarray(mask_logits, dtype=np.float32)
        previous = prompt[0, 0] > 0
        mask = previous.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
        changed = False
        for point, label in zip(np.asarray(points)[0], np.asarray(labels)[0]):
            if label not in (0, 1):
                continue
            voxel = tuple(np.clip(np.round(point).astype(int), 0, image.shape[0] - 1))
            intensity = float(image[voxel])
            if mask.any():
                intensity = max(intensity, float(np.median(image[mask])))
            threshold = self.threshold if self.threshold is not None else (intensity + float(np.median(image))) / 2
            if label == 0 and image[voxel] < (threshold + intensity) / 2:
                continue  # a rim voxel, not a bright structure to exclude
            regions, _ = ndimage.label(image > threshold)
            region = regions[voxel]
            if region == 0 and label == 1 and regions.any():
                nearest = ndimage.distance_transform_edt(regions == 0, return_distances=False, return_indices=True)
                region = regions[tuple(nearest[(slice(None),) + voxel])]
            if region == 0:
                continue
            mask = mask | (regions == region) if label == 1 else mask & (regions != region)
            changed = True
        if not changed:  # returning the prompt as it was keeps the mask from losing its partly filled blocks
            return prompt.reshape(LOGITS_SHAPE), np.ones((1, 1), np.float32)
        blocks = mask.reshape(LOGITS_SHAPE[-1], factor, LOGITS_SHAPE[-1], factor, LOGITS_SHAPE[-1], factor)
        fraction = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
        logits = (fraction - 0.5) * self.LOGIT_SCALE
        return logits.reshape(LOGITS_SHAPE).astype(np.float32), np.ones((1, 1), np.float32)
