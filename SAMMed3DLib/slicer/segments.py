"""A segmentation's voxels on the Segment Editor's grid, read from its labelmap layers, without importing Slicer.

Slicer keeps a segmentation's segments in binary labelmap layers: `vtkOrientedImageData` images, one label value per
segment (segments made in the editor share a layer; imported ones get their own). The editor edits on its reference
grid, the grid of its aligned source volume (`sourceVolumeImageData`). A layer on that grid (the same image-to-world
matrix, any extent) is read here directly over a box, voxel for voxel, which is what the editor's
UpdateSelectedSegmentLabelmap gives after thresholding and resampling the whole layer
(Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.cxx:1083-1104). Regions are K,J,I slices of an
array over the grid image's extent, as everywhere in SAMMed3DLib.slicer.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import vtk

from SAMMed3DLib.interactive.geometry import Region
from SAMMed3DLib.slicer.geometry import extent_shape, region_extent, values_in_extent


def _matrix(image) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


class SegmentationOnGrid:
    """The segments of a `vtkSegmentation` (its source representation, a binary labelmap while the editor edits)
    on the grid of `grid`, a `vtkOrientedImageData`. Layers are looked up on every read: the editor's undo replaces
    them."""

    def __init__(self, segmentation, grid) -> None:
        self.segmentation = segmentation
        self._extent = tuple(grid.GetExtent())
        self._to_world = _matrix(grid)

    def _layer(self, segment_id: str):
        segment = self.segmentation.GetSegment(segment_id)
        if segment is None:
            return None, 0
        return segment.GetRepresentation(self.segmentation.GetSourceRepresentationName()), segment.GetLabelValue()

    def _on_grid(self, layer) -> bool:
        return 0 in extent_shape(layer.GetExtent()) or np.allclose(_matrix(layer), self._to_world, atol=1e-6)

    def _values(self, layer, region: Region) -> np.ndarray:
        """The layer's label values in `region` (0 outside the layer's extent)."""
        return values_in_extent(layer, region_extent(region, self._extent))

    def segment(self, segment_id: str, region: Region) -> Optional[np.ndarray]:
        """The segment in `region` as uint8 0/1; None when its layer is not on the grid (read it through the
        editor then)."""
        layer, label = self._layer(segment_id)
        if layer is None:
            return np.zeros(tuple(s.stop - s.start for s in region), np.uint8)
        if not self._on_grid(layer):
            return None
        return (self._values(layer, region) == label).astype(np.uint8)

    def holders(self, segment_id: str, region: Region, where: np.ndarray) -> Dict[str, np.ndarray]:
        """The other segments that hold voxels of `where` (a bool block over `region`): segment ID -> bool block.
        Layers that are not on the grid are left out."""
        found: Dict[str, np.ndarray] = {}
        if not where.any():
            return found
        name = self.segmentation.GetSourceRepresentationName()
        for index in range(self.segmentation.GetNumberOfLayers(name)):
            layer = self.segmentation.GetLayerDataObject(index, name)
            if layer is None or not self._on_grid(layer):
                continue
            values = self._values(layer, region)
            present = set(np.unique(values[where]).tolist()) - {0}
            for other in self.segmentation.GetSegmentIDsForLayer(index, name):
                label = self.segmentation.GetSegment(other).GetLabelValue()
                if other != segment_id and label in present:
                    found[other] = (values == label) & where
        return found


def segment_stamp(segmentation, segment_id: str) -> Tuple:
    """What changes whenever the segment's voxels may have changed: its layer's modification time (VTK's are global
    and only grow, so a replaced layer differs too) and label value. Equal stamps mean equal voxels."""
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        return ()
    layer = segment.GetRepresentation(segmentation.GetSourceRepresentationName())
    return (layer.GetMTime() if layer is not None else 0, segment.GetLabelValue())


def segmentation_stamp(segmentation) -> Tuple:
    """`segment_stamp` of every segment, in order: equal stamps mean no segment was added, removed or edited."""
    return tuple((segment_id, segment_stamp(segmentation, segment_id)) for segment_id in segmentation.GetSegmentIDs())
