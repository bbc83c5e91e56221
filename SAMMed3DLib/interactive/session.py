"""Interactive segmentation of one volume: clicks in RAS millimetres in, a full-resolution mask out.

    session = InteractiveSession(predictor, Volume.read("ct.nrrd"))
    prediction = session.add_click([12.0, -40.5, 80.0])           # positive click
    prediction = session.add_click([15.0, -38.0, 82.0], positive=False)
    session.undo()

Each click runs one round as the model was trained and evaluated: the newest click plus the previous round's 32^3
logits as mask prompt (all zero on the first round). The image embedding of each region of interest (ROI) is
cached, so a click inside an existing ROI costs one decoder run and one paste-back. The cache holds at most
`EMBEDDING_CACHE_BYTES`, dropping the least recently used embeddings first (an undone ROI's embedding stays
until then, so redoing the click does not encode again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from SAMMed3DLib.interactive.geometry import (
    LOGITS_SIZE,
    PatchFrame,
    Region,
    Volume,
    frame_region,
    interior_voxel,
    patch_frame,
    union_region,
)
from SAMMed3DLib.interactive.preprocess import chosen_modality, prepare_patch
from SAMMed3DLib.interactive.resample import paste_mask, resample_into

if TYPE_CHECKING:
    from SAMMed3DLib.backends.predictor import Predictor

CLICK_MARGIN = 8  # patch voxels (12 mm): a click closer than this to every ROI's faces opens a new ROI
MASK_LOGIT_SCALE = 8.0  # a mask as mask-prompt logits: full voxels -> +4, empty -> -4 (logit 0 = half full)
UNDO_BYTES = 512 * 2**20  # overwritten mask voxels kept for undo; the oldest steps are dropped beyond this
EMBEDDING_CACHE_BYTES = 256 * 2**20  # about 330 embeddings of 384x8x8x8 float32; least recently used dropped first


@dataclass(frozen=True)
class Click:
    """One user click: RAS position in mm and whether it includes (positive) or excludes the point."""

    ras: Tuple[float, float, float]
    positive: bool


@dataclass
class Prediction:
    """The session's mask after a click or undo.

    `mask`: uint8 (0/1) over the whole volume grid (K,J,I); a read-only view of the session's live mask, so copy it to
    keep it across later clicks. `region`: K,J,I slices outside which this step changed nothing. `timings`: seconds
    spent in "preprocess", "encode", "decode", "paste" and "total". `rois`: how many ROIs the session holds.
    """

    mask: np.ndarray
    region: Region
    timings: Dict[str, float] = field(default_factory=dict)
    rois: int = 0


@dataclass(frozen=True)
class _Roi:
    frame: PatchFrame
    logits: np.ndarray  # float32 (1,1,32,32,32): this ROI's latest round, the next round's mask prompt
    pasted: int = -1  # when these logits were pasted (the session's paste count), so pastes can be repeated in order


@dataclass
class _Step:
    """What one click changed, so that undo restores it exactly: the state before and the overwritten mask voxels."""

    rois: Tuple[_Roi, ...]
    clicks: Tuple[Click, ...]
    overwritten: List[Tuple[Region, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return sum(values.nbytes for _, values in self.overwritten)


class InteractiveSession:
    """Click-by-click segmentation of one volume with a `Predictor`.

    ROI rule. An ROI is a 128^3 patch at 1.5 mm (192 mm) in canonical RAS+ axis order (`patch_frame`).
    1. A click is handled by the ROI that contains it with the widest margin, if that margin is at least
       `CLICK_MARGIN` patch voxels: one decoder round with that ROI's previous logits as mask prompt.
    2. Otherwise (the first click, or a click outside or at the rim of every ROI) a new ROI is centred on the click.
       Its first mask prompt is the current mask resampled into it (all-zero logits if it is empty there), then the
       earlier clicks that lie inside it are replayed in order, then the new click, one decoder round each.
    3. After the rounds, for each face of a changed ROI that the predicted object touches (positive logits in the
       outer layer of the 32^3 grid), a neighbour ROI shifted by half a patch (96 mm) across that face is added,
       unless it would cover no new volume voxels, an ROI already sits within a quarter patch of it, or the session
       holds `max_rois` ROIs. Its prompt is the current mask, its seed a positive click at the mask's interior-most
       point inside it, followed by the earlier clicks inside it; it is checked the same way (objects > 192 mm).
    Pasting: an ROI's newest logits are interpolated linearly onto the volume voxels inside it and thresholded at
    0, overwriting the mask there (the newest round wins where ROIs overlap). Outside all ROIs the mask keeps its
    initial value (0, or `initial_mask`).

    Any error leaves the session exactly as it was before the call.
    """

    def __init__(
        self,
        predictor: Predictor,
        volume: Volume,
        modality: str = "auto",
        initial_mask: Optional[np.ndarray] = None,
        max_rois: int = 8,
    ):
        if max_rois < 1:
            raise ValueError(f"max_rois must be at least 1, got {max_rois}")
        self.predictor = predictor
        self.volume = volume
        self.modality = chosen_modality(modality, volume)
        self.max_rois = max_rois
        if initial_mask is None:
            self._initial = np.zeros(volume.array.shape, np.uint8)
        else:
            initial_mask = np.asarray(initial_mask)
            if initial_mask.shape != volume.array.shape:
                raise ValueError(
                    f"the initial mask has shape {initial_mask.shape}, the volume {volume.array.shape} (K,J,I)"
                )
            self._initial = (initial_mask > 0).astype(np.uint8)
        self._mask = self._initial.copy()
        self._rois: Tuple[_Roi, ...] = ()
        self._clicks: Tuple[Click, ...] = ()
        self._history: List[_Step] = []
        self._embeddings: OrderedDict[PatchFrame, Any] = OrderedDict()  # survives undo and reset; see the docstring
        self._pastes = 0

    @property
    def clicks(self) -> Tuple[Click, ...]:
        return self._clicks

    @property
    def frames(self) -> Tuple[PatchFrame, ...]:
        """The current ROIs' frames, oldest first."""
        return tuple(roi.frame for roi in self._rois)

    @property
    def mask(self) -> np.ndarray:
        """Read-only view of the live mask (K,J,I, uint8)."""
        view = self._mask.view()
        view.flags.writeable = False
        return view

    def mask_above(self, logit: float) -> np.ndarray:
        """A new K,J,I uint8 mask of where the ROIs' newest logits, pasted in the same order, exceed `logit` instead
        of 0 (`mask_above(0)` equals the live mask): the paper's click simulation, for one, reads logits > 0.5."""
        mask = self._initial.copy()
        for roi in sorted(self._rois, key=lambda roi: roi.pasted):
            paste_mask(self.volume, roi.frame, roi.logits[0, 0] - np.float32(logit), mask)
        return mask

    def add_click(self, ras_xyz, positive: bool = True) -> Prediction:
        """Segment with one more click at a RAS point (mm); ValueError if it lies outside the volume."""
        start = time.perf_counter()
        click = self._validated_click(ras_xyz, bool(positive))
        step = _Step(self._rois, self._clicks, [])
        timings = {"preprocess": 0.0, "encode": 0.0, "decode": 0.0, "paste": 0.0}
        try:
            rois = list(self._rois)
            clicks = self._clicks + (click,)
            changed = self._handle_click(rois, clicks, click, step, timings)
            self._expand(rois, clicks, changed, step, timings)
        except BaseException:
            self._restore(step)
            raise
        self._rois, self._clicks = tuple(rois), clicks
        self._history.append(step)
        while len(self._history) > 1 and sum(old.nbytes for old in self._history) > UNDO_BYTES:
            self._history.pop(0)
        timings["total"] = time.perf_counter() - start
        return Prediction(self.mask, union_region(region for region, _ in step.overwritten), timings, len(self._rois))

    def undo(self) -> Optional[Prediction]:
        """Return to the state before the last click, exactly; None if there is nothing to undo. The history keeps
        the newest steps whose overwritten voxels fit in `UNDO_BYTES` (always the last one)."""
        if not self._history:
            return None
        step = self._history.pop()
        self._restore(step)
        return Prediction(self.mask, union_region(region for region, _ in step.overwritten), {}, len(self._rois))

    def reset(self) -> Prediction:
        """Forget all clicks and ROIs (not the cached embeddings); the mask returns to its initial value."""
        changed = union_region(frame_region(self.volume, roi.frame) for roi in self._rois)
        self._mask[...] = self._initial
        self._rois, self._clicks, self._history = (), (), []
        return Prediction(self.mask, changed, {}, 0)

    # -- one click ---------------------------------------------------------------------------------------------

    def _validated_click(self, ras_xyz, positive: bool) -> Click:
        point = np.asarray(ras_xyz, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.isfinite(point).all():
            raise ValueError(f"a click needs three finite RAS coordinates, got {ras_xyz!r}")
        if not self.volume.contains(point):
            low, high = self.volume.extent_ras()
            raise ValueError(
                f"the click at RAS ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm lies outside the volume, "
                f"which spans R {low[0]:.1f}..{high[0]:.1f}, A {low[1]:.1f}..{high[1]:.1f}, "
                f"S {low[2]:.1f}..{high[2]:.1f} mm"
            )
        return Click(tuple(float(x) for x in point), positive)

    def _handle_click(self, rois: List[_Roi], clicks, click: Click, step: _Step, timings) -> List[int]:
        margins = [_margin(roi.frame, click.ras) for roi in rois]
        if margins and max(margins) >= CLICK_MARGIN:
            index = int(np.argmax(margins))
            self._run_rounds(rois, index, [click], step, timings)
            return [index]
        frame = patch_frame(self.volume, click.ras)
        rois.append(_Roi(frame, self._mask_prompt(frame, timings)))
        earlier = [c for c in clicks[:-1] if _margin(frame, c.ras) >= 0]
        self._run_rounds(rois, len(rois) - 1, [*earlier, click], step, timings)
        return [len(rois) - 1]

    def _expand(self, rois: List[_Roi], clicks, changed: List[int], step: _Step, timings) -> None:
        queue = list(changed)
        while queue and len(rois) < self.max_rois:
            roi = rois[queue.pop(0)]
            for frame in self._neighbours(roi, rois):
                if len(rois) >= self.max_rois:
                    break
                prompt = self._mask_prompt(frame, timings)
                seed = _interior_point(prompt[0, 0] > 0, frame.size)
                if seed is None:
                    continue
                rois.append(_Roi(frame, prompt))
                seed_click = Click(tuple(float(x) for x in frame.to_ras(seed)[0]), True)
                earlier = [c for c in clicks if _margin(frame, c.ras) >= 0]
                self._run_rounds(rois, len(rois) - 1, [seed_click, *earlier], step, timings)
                queue.append(len(rois) - 1)

    def _neighbours(self, roi: _Roi, rois: List[_Roi]) -> List[PatchFrame]:
        """Frames half a patch across each face the object touches, that add volume voxels and are not taken."""
        logits = roi.logits[0, 0]
        size = roi.frame.size
        covered = frame_region(self.volume, roi.frame)
        frames = []
        for axis in range(3):
            for side, layer in ((-1, 0), (1, LOGITS_SIZE - 1)):
                if not (np.take(logits, layer, axis=axis) > 0).any():
                    continue
                offset = np.zeros(3)
                offset[axis] = side * size / 2
                frame = roi.frame.shifted(offset)
                region = frame_region(self.volume, frame)
                if all(_within(region[a], covered[a]) for a in range(3)):
                    continue
                centre = frame.center_ras
                if any(np.abs(other.frame.to_patch(centre)[0] - (size - 1) / 2).max() < size / 4 for other in rois):
                    continue
                frames.append(frame)
        return frames

    def _run_rounds(self, rois: List[_Roi], index: int, clicks: List[Click], step: _Step, timings) -> None:
        """Decode one round per click in ROI `index` (newest click + previous logits), then paste the result."""
        roi = rois[index]
        embedding = self._embedding(roi.frame, timings)
        logits = roi.logits
        for click in clicks:
            point = roi.frame.to_patch(click.ras).astype(np.float32).reshape(1, 1, 3)
            label = np.array([[1 if click.positive else 0]], dtype=np.int64)
            started = time.perf_counter()
            logits, _ = self.predictor.decode(embedding, point, label, logits)
            timings["decode"] += time.perf_counter() - started
        logits = np.asarray(logits, dtype=np.float32).reshape(1, 1, LOGITS_SIZE, LOGITS_SIZE, LOGITS_SIZE)
        self._pastes += 1
        rois[index] = _Roi(roi.frame, logits, self._pastes)
        started = time.perf_counter()
        region = frame_region(self.volume, roi.frame)
        step.overwritten.append((region, self._mask[region].copy()))
        paste_mask(self.volume, roi.frame, logits[0, 0], self._mask)
        timings["paste"] += time.perf_counter() - started

    def _embedding(self, frame: PatchFrame, timings) -> Any:
        if frame in self._embeddings:
            self._embeddings.move_to_end(frame)
            return self._embeddings[frame]
        started = time.perf_counter()
        image = prepare_patch(self.volume, frame, self.modality)[None, None]
        encode_started = time.perf_counter()
        timings["preprocess"] += encode_started - started
        embedding = self.predictor.encode(image)
        timings["encode"] += time.perf_counter() - encode_started
        self._embeddings[frame] = embedding
        while len(self._embeddings) > 1 and sum(map(_nbytes, self._embeddings.values())) > EMBEDDING_CACHE_BYTES:
            self._embeddings.popitem(last=False)
        return embedding

    def _mask_prompt(self, frame: PatchFrame, timings) -> np.ndarray:
        """The current mask on the ROI's 32^3 logits grid as logits; all zero where the mask is empty there."""
        started = time.perf_counter()
        coarse = frame.logits_frame()
        prompt = np.zeros((1, 1) + (coarse.size,) * 3, np.float32)
        if self._mask[frame_region(self.volume, frame)].any():
            fraction = resample_into(Volume(self._mask, self.volume.ijk_to_ras), coarse, "linear")
            if fraction.any():
                prompt[0, 0] = (fraction - 0.5) * MASK_LOGIT_SCALE
        timings["preprocess"] += time.perf_counter() - started
        return prompt

    def _restore(self, step: _Step) -> None:
        for region, values in reversed(step.overwritten):
            self._mask[region] = values
        self._rois, self._clicks = step.rois, step.clicks


def _nbytes(embedding: Any) -> int:
    """Bytes an embedding holds: numpy arrays and torch tensors alike."""
    if hasattr(embedding, "element_size"):
        return int(embedding.element_size() * embedding.nelement())
    return int(np.asarray(embedding).nbytes)


def _margin(frame: PatchFrame, ras) -> float:
    """Distance in patch voxels from a RAS point to the nearest face of the frame's cube (negative outside)."""
    patch = frame.to_patch(np.asarray(ras))[0]
    return float(np.minimum(patch + 0.5, frame.size - 0.5 - patch).min())


def _interior_point(mask: np.ndarray, patch_size: int) -> Optional[np.ndarray]:
    """The patch coordinates of the interior-most voxel of a coarse (32^3) mask (None if empty)."""
    if not mask.any():
        return None
    coarse = np.array(interior_voxel(mask), dtype=np.float64)
    factor = patch_size / mask.shape[0]
    return (coarse * factor + (factor - 1) / 2)[None]


def _within(inner: slice, outer: slice) -> bool:
    return inner.stop <= inner.start or (outer.start <= inner.start and inner.stop <= outer.stop)

