"""Segments as arrays, written as the Segment Editor writes with its default overwrite mode ("all segments": a voxel
added to one segment leaves the others), for exercising `SAMMed3DLib.slicer.prompts` without Slicer: the prompt
tests and the memory benchmark. Each segment is stored over the box it holds (`BoxedArray`)."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from SAMMed3DLib.interactive.boxed_array import BoxedArray
from SAMMed3DLib.interactive.geometry import Region


class SegmentStore:
    """Segments by ID on one grid, with a stamp per segment that changes whenever any of them is written (as the
    layer modification time of segments sharing a labelmap layer does)."""

    def __init__(self, shape: Sequence[int], segment_ids: Sequence[str], segmentation: str = "segmentation"):
        self.segmentation = segmentation
        self.segments: Dict[str, BoxedArray] = {segment_id: BoxedArray(shape) for segment_id in segment_ids}
        self.stamp = 0

    def key(self, segment_id: str):
        return self.segmentation, segment_id

    def array(self, segment_id: str) -> np.ndarray:
        return self.segments[segment_id].full()

    def read(self, segment_id: str):
        """The `read(region)` callback of the book for one segment."""
        return lambda region: self.segments[segment_id].get(region)

    @property
    def nbytes(self) -> int:
        return sum(segment.nbytes for segment in self.segments.values())

    def restore(self, segment_id: str, array: np.ndarray) -> None:
        """The segment becomes `array`, as the editor's undo restores a saved state."""
        self.segments[segment_id] = BoxedArray.cropped((np.asarray(array) > 0).astype(np.uint8))
        self.stamp += 1

    def paint(self, segment_id: str, region: Region, value: int = 1) -> None:
        """Another tool: set or clear a box (setting takes the voxels from the other segments)."""
        for other, segment in self.segments.items():
            if value and other != segment_id:
                segment[region] = 0
        self.segments[segment_id][region] = value
        self.stamp += 1

    def write(self, book, segment_id: str, change) -> None:
        """What the effect does with a `Change`: add (taking from the others), remove, give back; then tell the
        book what the segment holds and which voxels were taken from whom."""
        region = change.region
        add = change.add > 0
        held = {o: s.get(region) > 0 for o, s in self.segments.items() if o != segment_id}
        for other, segment in self.segments.items():
            if other != segment_id and held[other].any():
                segment[region] = segment.get(region) & ~add
        target = self.segments[segment_id]
        target[region] = (target.get(region) | add) & ~(change.remove > 0)
        for other, block in change.give_back.items():
            self.segments[other][region] = self.segments[other].get(region) | (block > 0)
        taken = {o: block & add & ~(self.segments[o].get(region) > 0) for o, block in held.items()}
        self.stamp += 1
        book.written(self.key(segment_id), change, self.read(segment_id), taken, self.stamp)
