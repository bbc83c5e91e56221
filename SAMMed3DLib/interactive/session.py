"""Interactive segmentation of one volume: clicks in RAS millimetres in, a full-resolution mask out.

    session = InteractiveSession(predictor, Volume.read("ct.nrrd"))
    prediction = session.add_click([12.0, -40.5, 80.0])           # positive click
    prediction = session.add_click([15.0, -38.0, 82.0], positive=False)
    session.undo()

Each click runs one round as the model was trained and evaluated: the newest click plus the previous round's 32^3
logits as mask prompt (all zero on the first round). The image embedding of each region of interest (ROI) is
cached, so a click inside an existing ROI costs one decoder run and one paste-back. The cache holds at most
`EMBEDDING_CACHE_BYTES`, dropping the least recently used embeddings first (an undone ROI's embedding stays
until then, so redoing the click does not encode again); sessions on the same volume can share one cache.

Memory: the mask is stored only over the box the ROIs cover (`BoxedArray`), and the undo history keeps the
overwritten voxels of at most `UNDO_BYTES`; the volume itself is the caller's array, not copied.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from SAMMed3DLib.interactive.boxed_array import BoxedArray, relative, union, within
from SAMMed3DLib.interactive.geometry import (
    LOGITS_SIZE,
    PatchFrame,
    Region,
    Volume,
    frame_region,
    interior_voxel,
    patch_frame,
)
from SAMMed3DLib.interactive.preprocess import chosen_modality, prepare_patch
from SAMMed3DLib.interactive.resample import paste_mask, resample_into

if TYPE_CHECKING:
    from SAMMed3DLib.backends.predictor import Predictor

CLICK_MARGIN = 8  # patch voxels (12 mm): a click closer than this to every ROI's faces opens a new ROI
MASK_LOGIT_SCALE = 8.0  # a mask as mask-prompt logits: full voxels -> +4, empty -> -4 (logit 0 = half full)
UNDO_BYTES = 128 * 2**20  # overwritten mask voxels kept for undo, per session; the oldest steps go beyond this
EMBEDDING_CACHE_BYTES = 256 * 2**20  # about 330 embeddings of 384x8x8x8 float32; least recently used dropped first
MAX_ROIS = 8  # ROIs one session opens at most (8 x 192 mm cubes: a whole liver or lung)


@dataclass(frozen=True)
class Click:
    """One user click: RAS position in mm and whether it includes (positive) or excludes the point."""

    ras: Tuple[float, float, float]
    positive: bool


@dataclass
class Prediction:
    """The session's mask after a click or undo.

    `mask`: uint8 (0/1) over the whole volume grid (K,J,I), read-only, built from the session's live mask when read
    (so it follows later clicks: keep a copy, and read `session.mask_in(region)` where a box is enough).
    `region`: K,J,I slices outside which this step changed nothing. `timings`: seconds spent in "preprocess",
    "encode", "decode", "paste" and "total". `rois`: how many ROIs the session holds.
    `capped`: the ROI rule wanted another ROI than `max_rois` allow, so the object may be cut off at an ROI's face.
    """

    session: InteractiveSession = field(repr=False)
    region: Region
    timings: Dict[str, float] = field(default_factory=dict)
    rois: int = 0
    capped: bool = False

    @property
    def mask(self) -> np.ndarray:
        return self.session.mask


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
    overwritten: List[Tuple[Region, Optional[np.ndarray]]]  # None: the region was empty

    @property
    def nbytes(self) -> int:
        return sum(values.nbytes for _, values in self.overwritten if values is not None)


class EmbeddingCache:
    """Image embeddings by patch frame, the least recently used dropped beyond `EMBEDDING_CACHE_BYTES` (always
    keeping the newest). Sessions may share one only if they have the same volume, predictor and modality, as the
    Segment Editor effect's sessions of one source volume do."""

    def __init__(self) -> None:
        self._items: OrderedDict[PatchFrame, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, frame: PatchFrame) -> Any:
        """The embedding of `frame`, or None."""
        if frame not in self._items:
            return None
        self._items.move_to_end(frame)
        return self._items[frame]

    def put(self, frame: PatchFrame, embedding: Any) -> None:
        self._items[frame] = embedding
        while len(self._items) > 1 and sum(map(_nbytes, self._items.values())) > EMBEDDING_CACHE_BYTES:
            self._items.popitem(last=False)


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

    Any error leaves the session exactly as it was before the call. `embeddings` shares a cache with other sessions
    on the same volume (see `EmbeddingCache`). `on_stage(name, roi)` is called as each slow part of a click starts
    ("preprocess", "encode", "decode", "paste": the keys of `Prediction.timings`; `roi` counts the ROIs from 1), for
    progress.
    """

    def __init__(
        self,
        predictor: Predictor,
        volume: Volume,
        modality: str = "auto",
        initial_mask: Optional[np.ndarray] = None,
        max_rois: int = MAX_ROIS,
        embeddings: Optional[EmbeddingCache] = None,
        on_stage: Optional[Callable[[str, int], None]] = None,
    ):
        if max_rois < 1:
            raise ValueError(f"max_rois must be at least 1, got {max_rois}")
        self.predictor = predictor
        self.volume = volume
        self.modality = chosen_modality(modality, volume)
        self.max_rois = max_rois
        self.on_stage = on_stage
        if initial_mask is None:
            self._initial = BoxedArray(volume.array.shape)
        else:
            initial_mask = np.asarray(initial_mask)
            if initial_mask.shape != volume.array.shape:
                raise ValueError(
                    f"the initial mask has shape {initial_mask.shape}, the volume {volume.array.shape} (K,J,I)"
                )
            self._initial = BoxedArray.cropped((initial_mask > 0).astype(np.uint8))
        self._mask = self._initial.copy()
        self._rois: Tuple[_Roi, ...] = ()
        self._clicks: Tuple[Click, ...] = ()
        self._history: List[_Step] = []
        self._embeddings = EmbeddingCache() if embeddings is None else embeddings  # survives undo and reset
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
        """The live mask over the whole volume (K,J,I, uint8), as a new read-only array."""
        full = self._mask.full()
        full.flags.writeable = False
        return full

    def mask_in(self, region: Region) -> np.ndarray:
        """A copy of the live mask in a K,J,I region (uint8), without building the whole volume's."""
        return self._mask.get(region)

    @property
    def nbytes(self) -> int:
        """Bytes the session holds in its mask, initial mask and undo history (not the volume, not the cache)."""
        return self._mask.nbytes + self._initial.nbytes + sum(step.nbytes for step in self._history)

    def mask_above(self, logit: float, region: Optional[Region] = None) -> np.ndarray:
        """A new K,J,I uint8 mask of where the ROIs' newest logits, pasted in the same order, exceed `logit` instead
        of 0 (`mask_above(0)` equals the live mask): the paper's click simulation, for one, reads logits > 0.5.
        Over the whole volume, or only in `region` (as `mask_in`)."""
        mask = self._initial.copy()
        for roi in sorted(self._rois, key=lambda roi: roi.pasted):
            mask.grow(frame_region(self.volume, roi.frame))
            paste_mask(self.volume, roi.frame, roi.logits[0, 0] - np.float32(logit), mask)
        return mask.full() if region is None else mask.get(region)

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
            capped = self._expand(rois, clicks, changed, step, timings)
        except BaseException:
            self._restore(step)
            raise
        self._rois, self._clicks = tuple(rois), clicks
        self._history.append(step)
        while len(self._history) > 1 and sum(old.nbytes for old in self._history) > UNDO_BYTES:
            self._history.pop(0)
        timings["total"] = time.perf_counter() - start
        return Prediction(self, union(region for region, _ in step.overwritten), timings, len(self._rois), capped)

    def undo(self) -> Optional[Prediction]:
        """Return to the state before the last click, exactly; None if there is nothing to undo. The history keeps
        the newest steps whose overwritten voxels fit in `UNDO_BYTES` (always the last one)."""
        if not self._history:
            return None
        step = self._history.pop()
        self._restore(step)
        return Prediction(self, union(region for region, _ in step.overwritten), {}, len(self._rois))

    def reset(self) -> Prediction:
        """Forget all clicks and ROIs (not the cached embeddings); the mask returns to its initial value."""
        changed = union(frame_region(self.volume, roi.frame) for roi in self._rois)
        self._mask = self._initial.copy()
        self._rois, self._clicks, self._history = (), (), []
        return Prediction(self, changed, {}, 0)

    # -- one click ---------------------------------------------------------------------------------------------

    def _validated_click(self, ras_xyz, positive: bool) -> Click:
        point = np.asarray(ras_xyz, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.isfinite(point).all():
            raise ValueError(f"a click needs three finite RAS coordinates, got {ras_xyz!r}")
        self.volume.require_inside(point)
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

    def _expand(self, rois: List[_Roi], clicks, changed: List[int], step: _Step, timings) -> bool:
        """Rule 3; returns whether it wanted another ROI than `max_rois` allow."""
        queue = list(changed)
        while queue:
            roi = rois[queue.pop(0)]
            for frame in self._neighbours(roi, rois):
                prompt = self._mask_prompt(frame, timings)
                seed = _interior_point(prompt[0, 0] > 0, frame.size)
                if seed is None:
                    continue
                if len(rois) >= self.max_rois:
                    return True
                rois.append(_Roi(frame, prompt))
                seed_click = Click(tuple(float(x) for x in frame.to_ras(seed)[0]), True)
                earlier = [c for c in clicks if _margin(frame, c.ras) >= 0]
                self._run_rounds(rois, len(rois) - 1, [seed_click, *earlier], step, timings)
                queue.append(len(rois) - 1)
        return False

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
                if within(region, covered):
                    continue
                centre = frame.center_ras
                if any(np.abs(other.frame.to_patch(centre)[0] - (size - 1) / 2).max() < size / 4 for other in rois):
                    continue
                frames.append(frame)
        return frames

    def _run_rounds(self, rois: List[_Roi], index: int, clicks: List[Click], step: _Step, timings) -> None:
        """Decode one round per click in ROI `index` (newest click + previous logits), then paste the result."""
        roi = rois[index]
        embedding = self._embedding(roi.frame, timings, index)
        logits = roi.logits
        for click in clicks:
            point = roi.frame.to_patch(click.ras).astype(np.float32).reshape(1, 1, 3)
            label = np.array([[1 if click.positive else 0]], dtype=np.int64)
            self._stage("decode", index)
            started = time.perf_counter()
            logits, _ = self.predictor.decode(embedding, point, label, logits)
            timings["decode"] += time.perf_counter() - started
        logits = np.asarray(logits, dtype=np.float32).reshape(1, 1, LOGITS_SIZE, LOGITS_SIZE, LOGITS_SIZE)
        self._pastes += 1
        rois[index] = _Roi(roi.frame, logits, self._pastes)
        self._stage("paste", index)
        started = time.perf_counter()
        region = frame_region(self.volume, roi.frame)
        before = self._mask.get(region)
        step.overwritten.append((region, before if before.any() else None))
        self._mask.grow(region)
        paste_mask(self.volume, roi.frame, logits[0, 0], self._mask)
        timings["paste"] += time.perf_counter() - started

    def _embedding(self, frame: PatchFrame, timings, index: int) -> Any:
        embedding = self._embeddings.get(frame)
        if embedding is not None:
            return embedding
        self._stage("preprocess", index)
        started = time.perf_counter()
        image = prepare_patch(self.volume, frame, self.modality)[None, None]
        encode_started = time.perf_counter()
        timings["preprocess"] += encode_started - started
        self._stage("encode", index)
        embedding = self.predictor.encode(image)
        timings["encode"] += time.perf_counter() - encode_started
        self._embeddings.put(frame, embedding)
        return embedding

    def _mask_prompt(self, frame: PatchFrame, timings) -> np.ndarray:
        """The current mask on the ROI's 32^3 logits grid as logits; all zero where the mask is empty there. Only the
        ROI's voxels and one more on each side (what linear interpolation reads) are resampled."""
        started = time.perf_counter()
        coarse = frame.logits_frame()
        prompt = np.zeros((1, 1) + (coarse.size,) * 3, np.float32)
        region = frame_region(self.volume, frame)
        around = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(region, self._mask.shape))
        block = self._mask.get(around)
        if block[relative(region, around)].any():
            corner = np.eye(4)
            corner[:3, 3] = [around[2].start, around[1].start, around[0].start]
            fraction = resample_into(Volume(block, self.volume.ijk_to_ras @ corner), coarse, "linear")
            if fraction.any():
                prompt[0, 0] = (fraction - 0.5) * MASK_LOGIT_SCALE
        timings["preprocess"] += time.perf_counter() - started
        return prompt

    def _stage(self, name: str, index: int) -> None:
        if self.on_stage is not None:
            self.on_stage(name, index + 1)

    def _restore(self, step: _Step) -> None:
        for region, values in reversed(step.overwritten):
            self._mask[region] = 0 if values is None else values
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
