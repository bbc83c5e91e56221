"""An array over a volume's whole grid that stores only the box where it can differ from zero.

A session's mask, and the effect's bookkeeping per segment, are non-zero only where regions of interest were pasted:
a few 192 mm cubes in a CT of 512 x 512 x 300 voxels. Storing them full-size costs 79 MB each, per segment; a
`BoxedArray` keeps the bounding box of what was written, grown as needed.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from SAMMed3DLib.interactive.geometry import Region

EMPTY: Region = (slice(0, 0), slice(0, 0), slice(0, 0))


def is_empty(region: Region) -> bool:
    return any(part.stop <= part.start for part in region)


def union(regions) -> Region:
    """The smallest K,J,I box holding all given regions (EMPTY if none is non-empty)."""
    regions = [r for r in regions if not is_empty(r)]
    if not regions:
        return EMPTY
    return tuple(slice(min(r[a].start for r in regions), max(r[a].stop for r in regions)) for a in range(3))


def intersection(first: Region, second: Region) -> Region:
    box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(first, second))
    return EMPTY if is_empty(box) else box


def within(inner: Region, outer: Region) -> bool:
    return is_empty(inner) or all(o.start <= i.start and i.stop <= o.stop for i, o in zip(inner, outer))


def relative(inner: Region, outer: Region) -> Region:
    """`inner` as slices of an array that covers `outer`."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def nonzero_box(array: np.ndarray) -> Region:
    """The bounding box of an array's non-zero voxels (EMPTY if there are none)."""
    box = []
    for axis in range(array.ndim):
        present = np.flatnonzero(array.any(axis=tuple(a for a in range(array.ndim) if a != axis)))
        if not present.size:
            return EMPTY
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def crop_to_nonzero(block: np.ndarray, region: Region) -> Tuple[np.ndarray, Region]:
    """The part of `block` (the content of `region`) that holds its nonzero voxels, and that part's region; an
    empty block and region when all voxels are 0."""
    inner = nonzero_box(block)
    if is_empty(inner):
        return block[0:0, 0:0, 0:0], tuple(slice(r.start, r.start) for r in region)
    return block[inner], tuple(slice(r.start + i.start, r.start + i.stop) for r, i in zip(region, inner))


class BoxedArray:
    """Values over a grid of `shape` (K,J,I), zero outside `box`, stored for `box` only."""

    def __init__(self, shape: Sequence[int], dtype=np.uint8):
        self.shape: Tuple[int, int, int] = tuple(int(n) for n in shape)
        self.box: Region = EMPTY
        self._block = np.zeros((0, 0, 0), dtype)

    @classmethod
    def cropped(cls, array: np.ndarray) -> BoxedArray:
        """The array, stored for the bounding box of its non-zero voxels."""
        boxed = cls(array.shape, array.dtype)
        boxed.box = nonzero_box(array)
        boxed._block = np.array(array[boxed.box]) if not is_empty(boxed.box) else boxed._block
        return boxed

    def copy(self) -> BoxedArray:
        other = BoxedArray(self.shape, self._block.dtype)
        other.box, other._block = self.box, self._block.copy()
        return other

    @property
    def dtype(self):
        return self._block.dtype

    @property
    def nbytes(self) -> int:
        return int(self._block.nbytes)

    def grow(self, region: Region, fill: Optional[Callable[[Region], np.ndarray]] = None) -> None:
        """Make the box cover `region`. Voxels that join the box get `fill(new box)` (an array over the whole new
        box, of which only the new part is used), or zero."""
        if within(region, self.box):
            return
        box = union([self.box, region])
        block = np.zeros(tuple(s.stop - s.start for s in box), self._block.dtype)
        if fill is not None:
            block[...] = fill(box)
        if not is_empty(self.box):
            block[relative(self.box, box)] = self._block
        self.box, self._block = box, block

    def get(self, region: Region) -> np.ndarray:
        """A copy of the values in `region` (zero outside the box)."""
        out = np.zeros(tuple(max(s.stop - s.start, 0) for s in region), self._block.dtype)
        inside = intersection(region, self.box)
        if not is_empty(inside):
            out[relative(inside, region)] = self._block[relative(inside, self.box)]
        return out

    def __getitem__(self, region: Region) -> np.ndarray:
        """A writable view of `region`, which must lie inside the box (grow first)."""
        if not within(region, self.box):
            raise IndexError(f"{region} is not inside the stored box {self.box}")
        return self._block[relative(region, self.box)]

    def __setitem__(self, region: Region, values) -> None:
        self.grow(region)
        self[region][...] = values

    def full(self) -> np.ndarray:
        """The values over the whole grid (a new array)."""
        out = np.zeros(self.shape, self._block.dtype)
        if not is_empty(self.box):
            out[self.box] = self._block
        return out
