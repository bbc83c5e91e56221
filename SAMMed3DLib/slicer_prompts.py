"""Per-segment prompt bookkeeping for the Segment Editor effect, without importing Slicer.

Prompts belong to a segment: each segment has its own interactive session (created on its first click, seeded
with the segment's content when the user asks to refine it), its clicks (for the markups shown in the views) and
the edits its clicks made. An edit keeps the changed box before and after the click, so "Undo click" and "Reset"
write back exactly what was there, over the same box, and nothing outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from SAMMed3DLib.slicer_geometry import Region


@dataclass(frozen=True)
class Click:
    """A click as the user made it: world RAS (for the markup) and include (True) or exclude (False)."""

    world_ras: Tuple[float, float, float]
    positive: bool


@dataclass(frozen=True)
class Edit:
    """A change to the segment: the K,J,I box that changed, and its content before and after (uint8 0/1)."""

    region: Region
    before: np.ndarray
    after: np.ndarray


@dataclass
class SegmentPrompts:
    session: object
    initial: np.ndarray
    clicks: List[Click] = field(default_factory=list)
    edits: List[Edit] = field(default_factory=list)
    mask: Optional[np.ndarray] = None  # the session's current mask; `initial` before the first click


def _union(regions: Sequence[Region]) -> Region:
    return tuple(
        slice(min(r[axis].start for r in regions), max(r[axis].stop for r in regions)) for axis in range(3)
    )  # type: ignore[return-value]


class PromptBook:
    """Sessions, clicks and edits per segment ID.

    `start_session(initial_mask)` makes a session for a segment (a uint8 K,J,I mask to refine, or None); it is
    called on the segment's first click, so switching segments never costs an encode until the user clicks.
    Every method leaves the book unchanged when it raises.
    """

    def __init__(self, start_session: Callable[[Optional[np.ndarray]], object], shape: Sequence[int]) -> None:
        self._start_session = start_session
        self.shape = tuple(int(n) for n in shape)
        self._segments: Dict[str, SegmentPrompts] = {}

    def clicks(self, segment_id: str) -> List[Click]:
        entry = self._segments.get(segment_id)
        return list(entry.clicks) if entry else []

    def has_session(self, segment_id: str) -> bool:
        return segment_id in self._segments

    def add_click(
        self,
        segment_id: str,
        session_ras: Sequence[float],
        click: Click,
        initial_mask: Optional[np.ndarray] = None,
    ) -> Tuple[object, Edit]:
        """Run one click through the segment's session; return the session's prediction and the edit to write.

        `session_ras` is the click in the session volume's RAS (after parent transforms); `initial_mask` seeds a
        new session only (it is ignored once the segment has one)."""
        entry = self._segments.get(segment_id)
        if entry is None:
            if initial_mask is not None and tuple(initial_mask.shape) != self.shape:
                raise ValueError(f"initial mask has shape {initial_mask.shape}, the volume {self.shape}")
            seed = None if initial_mask is None else (np.asarray(initial_mask) > 0).astype(np.uint8)
            initial = np.zeros(self.shape, np.uint8) if seed is None else seed
            entry = SegmentPrompts(session=self._start_session(seed), initial=initial, mask=initial)
        prediction = entry.session.add_click(tuple(float(v) for v in session_ras), positive=click.positive)
        region = tuple(prediction.region)
        after = np.asarray(prediction.mask[region], np.uint8)
        edit = Edit(region=region, before=entry.mask[region].copy(), after=after)
        entry.mask = prediction.mask
        entry.clicks.append(click)
        entry.edits.append(edit)
        self._segments[segment_id] = entry
        return prediction, edit

    def undo(self, segment_id: str) -> Optional[Edit]:
        """Undo the segment's last click; return the edit that restores the box it changed (None: no click)."""
        entry = self._segments.get(segment_id)
        if entry is None or not entry.clicks:
            return None
        entry.session.undo()
        edit = entry.edits.pop()
        entry.clicks.pop()
        entry.mask = entry.mask.copy()
        entry.mask[edit.region] = edit.before
        return Edit(region=edit.region, before=edit.after, after=edit.before)

    def reset(self, segment_id: str) -> Optional[Edit]:
        """Forget the segment's clicks; return the edit that puts back what was there before its first click."""
        entry = self._segments.pop(segment_id, None)
        if entry is None or not entry.edits:
            return None
        region = _union([e.region for e in entry.edits])
        return Edit(region=region, before=entry.mask[region].copy(), after=entry.initial[region].copy())

    def clear(self) -> None:
        """Forget every segment (a new source volume, or the effect was deactivated for good)."""
        self._segments.clear()
