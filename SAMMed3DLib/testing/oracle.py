"""A predictor without a network, for tests and Slicer self-tests: the answer is known, so results can be checked."""

from __future__ import annotations

import threading
from typing import Optional, Tuple

import numpy as np

from SAMMed3DLib.backends.predictor import LOGITS_SHAPE
from SAMMed3DLib.interactive.session import MASK_LOGIT_SCALE


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

    device = "cpu"
    label = "threshold oracle (no network)"

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
        logits = (fraction - 0.5) * MASK_LOGIT_SCALE
        return logits.reshape(LOGITS_SHAPE).astype(np.float32), np.ones((1, 1), np.float32)


class GatedPredictor(ThresholdPredictor):
    """The threshold oracle whose encode waits until the test sets `open`: an encode exactly as long as the test
    wants, so that what happens while one runs can be checked, fast and deterministically. `entered` is set when an
    encode has started, `encodes` counts the finished ones."""

    def __init__(self, threshold: Optional[float] = None, timeout: float = 30.0):
        super().__init__(threshold)
        self.entered, self.open = threading.Event(), threading.Event()
        self.encodes, self._timeout = 0, timeout

    def encode(self, image: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.open.wait(self._timeout):
            raise TimeoutError(f"the gate stayed closed for {self._timeout} s")
        self.encodes += 1
        return super().encode(image)
