"""Per-segment prompt bookkeeping for the Segment Editor effect, without importing Slicer.

Prompts belong to a segment of a segmentation node, `SegmentKey = (segmentation node ID, segment ID)`: each has its
own interactive session (made on its first click, seeded with the segment's content when the user asks to refine
it) and its clicks (for the markups). A `PromptBook` holds the keys of one source volume; its sessions share one
embedding cache, so two segments clicked in the same place encode once.

What is written is computed against what the segment holds, read through a `read(region)` callback (uint8 K,J,I on
the session's grid), never against what the session believes: the segment becomes its own content (what it held
before the effect touched it, and whatever others added since: never removed) plus the session's mask, in the box
the click changed. Per segment the book keeps, over the box its clicks touched:
  - whether the segment held each voxel when last seen (`HOLDS`), and whether the voxel is its own (`OWN`);
  - which other segment a click took each voxel from (Slicer's default overwrite mode erases the voxels added to
    one segment from the others), so that removing the voxel again gives it back.
A segment that holds something else than when last seen (the editor's undo/redo, another effect, a file) is
`rebase`d: a new session starts from what the segment holds, with no clicks. The effect keeps Undo click in step
with the Segment Editor's own undo (`undo_in_step`); `undo` and `reset` are the way back when that is not possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from SAMMed3DLib.interactive.boxed_array import BoxedArray, crop_to_nonzero, is_empty, relative
from SAMMed3DLib.interactive.geometry import Region
from SAMMed3DLib.interactive.session import Click

SegmentKey = Tuple[str, str]  # (segmentation node ID, segment ID)
Read = Callable[[Region], np.ndarray]
HOLDS, OWN = 1, 2  # bits of a segment's state


@dataclass(frozen=True)
class Change:
    """An edit of a segment in a K,J,I `region`: uint8 blocks of the voxels to add and to remove, and per other
    segment ID the voxels to give back to it (removed here, taken from it by an earlier click)."""

    region: Region
    add: np.ndarray
    remove: np.ndarray
    give_back: Dict[str, np.ndarray]

    @property
    def empty(self) -> bool:
        return not (self.add.any() or self.remove.any())


@dataclass
class _ClickRecord:
    """What one click changed in the book, to check and follow the editor's undo of it."""

    region: Region
    holds_before: np.ndarray  # packed bits: the segment in `region` before the click
    taken_before: BoxedArray  # the `taken` block of `region` before the click (usually empty, so nothing stored)


@dataclass
class _Segment:
    session: object
    state: BoxedArray  # HOLDS | OWN bits
    taken: BoxedArray  # 1 + index into `taken_from`, 0 when not taken; stored only where something was taken
    taken_from: List[str] = field(default_factory=list)
    clicks: List[Click] = field(default_factory=list)  # in world RAS, where their markups are drawn
    records: List[_ClickRecord] = field(default_factory=list)
    stamp: object = None  # the caller's fingerprint of the segment when `state` was last synced
    refined: bool = False  # the first click started from the segment's content: nothing of it is its own

    def change(self, region: Region) -> Change:
        """The edit that makes the segment hold, in `region`, its own voxels and the session's mask."""
        state = self.state.get(region)
        actual = (state & HOLDS) > 0
        desired = ((state & OWN) > 0) | (self.session.mask_in(region) > 0)
        remove = actual & ~desired
        taken = self.taken.get(region)
        give_back = {}
        for index in np.unique(taken[remove]).tolist():
            if index:
                give_back[self.taken_from[index - 1]] = (remove & (taken == index)).astype(np.uint8)
        return Change(region, (desired & ~actual).astype(np.uint8), remove.astype(np.uint8), give_back)

    def sync(self, read: Read, stamp) -> None:
        """`HOLDS` from what the segment holds now; a voxel it lost is no longer taken from anyone."""
        box = self.state.box
        if is_empty(box):
            self.stamp = stamp
            return
        holds = read(box) > 0
        state = self.state[box]
        state[...] = (state & OWN) | holds.astype(np.uint8) * HOLDS
        if not is_empty(self.taken.box):
            self.taken[self.taken.box][~holds[relative(self.taken.box, box)]] = 0
        self.stamp = stamp


class PromptBook:
    """Sessions, clicks and bookkeeping per `SegmentKey`, for one source volume and grid.

    `start_session(initial_mask)` makes a session (an `InteractiveSession` on the volume, sharing the book's
    embedding cache) seeded with a uint8 K,J,I mask or None. Methods that take `read` read the segment of `key`
    through it; `stamp` is the caller's fingerprint of that segment (see `segments.segment_stamp`). Every method
    leaves the book unchanged when it raises.
    """

    def __init__(self, start_session: Callable[[Optional[np.ndarray]], object], shape: Sequence[int]) -> None:
        self._start_session = start_session
        self.shape = tuple(int(n) for n in shape)
        self._segments: Dict[SegmentKey, _Segment] = {}

    def segment_keys(self) -> List[SegmentKey]:
        return list(self._segments)

    def has(self, key: SegmentKey) -> bool:
        return key in self._segments

    def clicks(self, key: SegmentKey) -> List[Click]:
        entry = self._segments.get(key)
        return list(entry.clicks) if entry else []

    def forget(self, key: SegmentKey) -> None:
        self._segments.pop(key, None)

    @property
    def nbytes(self) -> int:
        """Bytes held per segment: sessions (not the volume or the shared cache) and bookkeeping."""
        return sum(
            entry.session.nbytes + entry.state.nbytes + entry.taken.nbytes
            + sum(record.holds_before.nbytes + record.taken_before.nbytes for record in entry.records)
            for entry in self._segments.values()
        )

    # -- outside edits -------------------------------------------------------------------------------------------

    def reconcile(self, key: SegmentKey, read: Read, stamp) -> bool:
        """Check that the segment holds what it held when last seen; if not, `rebase` it. True if it was rebased."""
        entry = self._segments.get(key)
        if entry is None or entry.stamp == stamp:
            return False
        box = entry.state.box
        if is_empty(box) or np.array_equal(read(box) > 0, (entry.state[box] & HOLDS) > 0):
            entry.stamp = stamp
            return False
        self.rebase(key, read, stamp)
        return True

    def rebase(self, key: SegmentKey, read: Read, stamp) -> None:
        """Start the segment's prompts again from what it holds: its own voxels are those it still holds and those
        someone else added; a new session starts from the session's voxels it still holds; no clicks."""
        entry = self._segments[key]
        box = entry.state.box
        initial = None
        if not is_empty(box):
            actual = read(box) > 0
            state = entry.state[box]
            own = actual & (((state & OWN) > 0) | ((state & HOLDS) == 0))
            ours = actual & (entry.session.mask_in(box) > 0)
            if ours.any():
                initial = np.zeros(self.shape, np.uint8)
                initial[box] = ours
            state[...] = own.astype(np.uint8) * OWN | actual.astype(np.uint8) * HOLDS
        entry.session = self._start_session(initial)
        entry.clicks, entry.records = [], []
        entry.sync(read, stamp)

    # -- clicks ----------------------------------------------------------------------------------------------------

    def add_click(
        self, key: SegmentKey, session_ras: Sequence[float], click: Click, read: Read, refine: bool = False
    ) -> Tuple[object, Change]:
        """Run one click through the segment's session: (the session's `Prediction`, the `Change` to write).

        `session_ras` is the click in the session volume's RAS (after parent transforms). With `refine`, a
        segment's first click starts its session from the segment's content, which the clicks may then take
        away; without, that content is the segment's own and stays. Call `reconcile` first. The Segment Editor
        effect runs the same three steps with the session's part on its worker thread: `start_click` and
        `finish_click` read the segment (the main thread's), `session.add_click` only computes."""
        session = self.start_click(key, read, refine)
        try:
            prediction = session.add_click(tuple(float(v) for v in session_ras), positive=click.positive)
        except BaseException:
            self.discard_click(key, None)
            raise
        return prediction, self.finish_click(key, prediction, click, read)

    def start_click(self, key: SegmentKey, read: Read, refine: bool = False) -> object:
        """The session that the segment's next click runs in (made now for a segment's first click); nothing else
        of the book may touch it until `finish_click` or `discard_click`."""
        entry = self._segments.get(key)
        if entry is None:
            initial = read(tuple(slice(0, n) for n in self.shape)) if refine else None
            entry = _Segment(self._start_session(initial), BoxedArray(self.shape), BoxedArray(self.shape),
                             refined=refine)
            self._segments[key] = entry
        return entry.session

    def finish_click(self, key: SegmentKey, prediction, click: Click, read: Read) -> Change:
        """After the session ran the click (`prediction`): the bookkeeping, and the `Change` to write."""
        entry = self._segments[key]
        region = prediction.region

        def first_sight(box: Region) -> np.ndarray:
            holds = (read(box) > 0).astype(np.uint8)
            return holds * HOLDS if entry.refined else holds * (HOLDS | OWN)

        entry.state.grow(region, first_sight)
        entry.records.append(_ClickRecord(
            region, np.packbits((entry.state[region] & HOLDS) > 0), BoxedArray.cropped(entry.taken.get(region))))
        entry.clicks.append(click)
        return entry.change(region)

    def discard_click(self, key: SegmentKey, prediction) -> None:
        """Forget a click whose session step will not be written (cancelled, or the segment changed meanwhile): the
        session goes back to before it (`prediction` None: the session failed and is as it was), and a segment
        that has no clicks yet is forgotten."""
        entry = self._segments.get(key)
        if entry is None:
            return
        if prediction is not None:
            entry.session.undo()
        if not entry.clicks:
            del self._segments[key]

    def written(self, key: SegmentKey, change: Change, read: Read, taken: Dict[str, np.ndarray], stamp) -> None:
        """After a change was written: what the segment holds now, and which voxels the write took from whom
        (`taken`: segment ID -> bool block over the change's region)."""
        entry = self._segments[key]
        for other, block in taken.items():
            if not block.any():
                continue
            if other not in entry.taken_from:
                entry.taken_from.append(other)
            cropped, box = crop_to_nonzero(block, change.region)
            entry.taken.grow(box)
            entry.taken[box][cropped] = entry.taken_from.index(other) + 1
        entry.sync(read, stamp)

    # -- back ----------------------------------------------------------------------------------------------------

    def undo_in_step(self, key: SegmentKey, read: Read, stamp) -> bool:
        """The editor's undo has just restored the segmentation to before the segment's last click: follow it, if
        the segment now holds exactly what it held before that click and the session can undo. False otherwise
        (then `rebase`)."""
        entry = self._segments.get(key)
        if entry is None or not entry.records:
            return False
        record = entry.records[-1]
        box = entry.state.box
        expected = (entry.state[box] & HOLDS) > 0
        before = np.unpackbits(record.holds_before, count=int(np.prod([s.stop - s.start for s in record.region])))
        expected[relative(record.region, box)] = before.reshape(expected[relative(record.region, box)].shape) > 0
        if not np.array_equal(read(box) > 0, expected) or entry.session.undo() is None:
            return False
        if not (is_empty(entry.taken.box) and is_empty(record.taken_before.box)):
            entry.taken[record.region] = record.taken_before.full()
        entry.records.pop()
        entry.clicks.pop()
        entry.sync(read, stamp)
        return True

    def undo(self, key: SegmentKey) -> Optional[Change]:
        """Undo the segment's last click in the session: the `Change` that takes it back from the segment (and gives
        back what it took). None when the session cannot undo (no click, or beyond its undo memory)."""
        entry = self._segments.get(key)
        if entry is None or not entry.clicks:
            return None
        prediction = entry.session.undo()
        if prediction is None:
            return None
        entry.clicks.pop()
        entry.records.pop()
        return entry.change(prediction.region)

    def reset(self, key: SegmentKey) -> Optional[Change]:
        """Forget the segment's clicks: the `Change` that leaves it its own voxels (and the initial content it was
        refining) and gives back what its clicks took. The session's cached embeddings stay."""
        entry = self._segments.get(key)
        if entry is None or not entry.clicks:
            return None
        entry.session.reset()
        entry.clicks, entry.records = [], []
        return entry.change(entry.state.box)


class UndoChain:
    """Which of the Segment Editor's newest undo states are this effect's clicks, newest last, as (key, the
    segment's number of clicks after it); valid while the segmentation is as the last of them left it (`stamp`:
    the caller's fingerprint of the whole segmentation, see `segments.segmentation_stamp`)."""

    def __init__(self) -> None:
        self._clicks: List[Tuple[SegmentKey, int]] = []
        self._stamp = None

    def last(self, stamp) -> Optional[Tuple[SegmentKey, int]]:
        """The click whose undo state is the editor's newest, or None (then the editor's Undo undoes something
        else)."""
        if stamp != self._stamp:
            self.clear(stamp)
        return self._clicks[-1] if self._clicks else None

    def clicked(self, key: SegmentKey, clicks: int, before, after) -> None:
        """A click saved an undo state while the segmentation was `before` and left it `after`."""
        if before != self._stamp:
            self._clicks = []
        self._clicks.append((key, clicks))
        self._stamp = after

    def undone(self, after) -> None:
        self._clicks.pop()
        self._stamp = after

    def clear(self, stamp=None) -> None:
        self._clicks, self._stamp = [], stamp
