"""Per-segment prompt bookkeeping for the Segment Editor effect, without importing Slicer.

Prompts belong to a segment: each segment has its own interactive session (created on its first click, seeded with
the segment's content when the user asks to refine it) and its clicks (for the markups drawn in the views).
Every click, "Undo click" and "Reset" gives an `Edit`: the box the session changed, with the session's mask there
before and after, so the effect adds and removes only the voxels the session changed. What the user painted with
other tools, even inside that box, stays. Undo and reset are the session's own (exact, no re-computation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from SAMMed3DLib.interactive.geometry import Region
from SAMMed3DLib.interactive.session import Click


@dataclass(frozen=True)
class Edit:
    """A change to the segment: the K,J,I box the session may have changed, and the session's mask there before and
    after (uint8 0/1 copies)."""

    region: Region
    before: np.ndarray
    after: np.ndarray

    @property
    def added(self) -> np.ndarray:
        """uint8 block: 1 where the voxel joins the segment."""
        return (self.after > self.before).astype(np.uint8)

    @property
    def removed(self) -> np.ndarray:
        """uint8 block: 1 where the voxel leaves the segment."""
        return (self.after < self.before).astype(np.uint8)


@dataclass
class _SegmentPrompts:
    session: object
    mask: np.ndarray  # the session's mask as last written to the segment (the session's own is a live view)
    clicks: List[Click] = field(default_factory=list)  # in world RAS, where their markups are drawn

    def edit(self, prediction) -> Edit:
        region = tuple(prediction.region)
        after = np.array(prediction.mask[region], dtype=np.uint8)
        edit = Edit(region=region, before=self.mask[region].copy(), after=after)
        self.mask[region] = after
        return edit


class PromptBook:
    """Sessions and clicks per segment ID, for one source volume.

    `start_session(initial_mask)` makes a session (an `InteractiveSession` on the volume) seeded with a uint8 K,J,I
    mask to refine, or None. It is called on a segment's first click only, so switching segments costs nothing
    until the user clicks. Every method leaves the book unchanged when it raises.
    """

    def __init__(self, start_session: Callable[[Optional[np.ndarray]], object]) -> None:
        self._start_session = start_session
        self._segments: Dict[str, _SegmentPrompts] = {}

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
        initial_mask: Callable[[], Optional[np.ndarray]] = lambda: None,
    ) -> Tuple[object, Edit]:
        """Run one click through the segment's session: (the session's `Prediction`, the edit to write).

        `session_ras` is the click in the session volume's RAS (after parent transforms). `initial_mask` is asked
        only when the segment gets its session, for the content to refine (None: start empty)."""
        entry = self._segments.get(segment_id)
        if entry is None:
            session = self._start_session(initial_mask())
            entry = _SegmentPrompts(session=session, mask=np.array(session.mask, dtype=np.uint8))
        prediction = entry.session.add_click(tuple(float(v) for v in session_ras), positive=click.positive)
        entry.clicks.append(click)
        self._segments[segment_id] = entry
        return prediction, entry.edit(prediction)

    def undo(self, segment_id: str) -> Optional[Edit]:
        """Undo the segment's last click: the edit that restores the box it changed. None when there is nothing
        the session can undo (no click, or older clicks beyond its bounded undo memory); the clicks then stay."""
        entry = self._segments.get(segment_id)
        if entry is None or not entry.clicks:
            return None
        prediction = entry.session.undo()
        if prediction is None:
            return None
        entry.clicks.pop()
        return entry.edit(prediction)

    def reset(self, segment_id: str) -> Optional[Edit]:
        """Forget the segment's clicks: the edit that puts back what was there before its first click. The session
        (and its cached image embeddings) stays, so the next click does not encode again."""
        entry = self._segments.get(segment_id)
        if entry is None or not entry.clicks:
            return None
        prediction = entry.session.reset()
        entry.clicks.clear()
        return entry.edit(prediction)

    def clear(self) -> None:
        """Forget every segment (another source volume, or the segmentation changed under the effect)."""
        self._segments.clear()
