"""Image and label folders as users keep them: plain names, nnU-Net's `case_0000` channel files and `dataset.json`.

One reading of them for evaluation and fine-tuning, so both pair the same files and name the same labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from SAMMed3DLib.errors import NotALabelMap, SAMMed3DError

IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Distinct non-zero values a label map holds at most: the largest atlases (Schaefer's 1000 parcels) fit; an intensity
# image (a CT, an MR scan given as labels) has thousands.
MAX_LABEL_VALUES = 1000


@dataclass(frozen=True)
class Case:
    """One image/label file pair. `modality`: "ct" or "mr" from a dataset.json, else "auto" (decided from the
    voxels when the image is read)."""

    name: str
    image: Path
    label: Path
    modality: str = "auto"


def image_stem(path: Path) -> Optional[str]:
    """The file name without its image suffix; None for files that are not images, and for hidden files."""
    if path.name.startswith(".") or not path.is_file():
        return None
    for suffix in IMAGE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def image_files(folder: Path) -> Dict[str, Path]:
    """Stem -> path of the image files in a folder, in name order."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        stem = image_stem(path)
        if stem is not None:
            found[stem] = path
    return found


def pair(images: Path, labels: Path) -> Tuple[List[Case], List[str]]:
    """A `Case` for every label file `NAME.ext` whose image is nnU-Net's channel 0 `NAME_0000.ext` or, failing that,
    `NAME.ext` (modality from a dataset.json beside the folders); and the names of the label files that have
    neither."""
    image_by_stem = image_files(images)
    found = modality(labels, images)
    cases, unmatched = [], []
    for name, label in image_files(labels).items():
        image = image_by_stem.get(f"{name}_0000") or image_by_stem.get(name)
        if image is None:
            unmatched.append(name)
        else:
            cases.append(Case(name, image, label, found))
    return cases, unmatched


def read_dataset_json(*folders: Path) -> Tuple[Optional[Path], Dict[str, Any]]:
    """The first `dataset.json` in or beside the given folders, parsed; (None, {}) if there is none."""
    for folder in folders:
        for candidate in (Path(folder) / "dataset.json", Path(folder).parent / "dataset.json"):
            if candidate.is_file():
                try:
                    content = json.loads(candidate.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    message = f"{candidate} is not a readable dataset.json ({error}); fix or remove it"
                    raise SAMMed3DError(message) from None
                if not isinstance(content, dict):
                    raise SAMMed3DError(f"{candidate} is not a dataset.json: it holds no JSON object")
                return candidate, content
    return None, {}


def label_names(*folders: Path) -> Dict[int, str]:
    """Label value -> name from `dataset.json` (nnU-Net v2 `{"liver": 1}`, or v1 `{"1": "liver"}`), background left
    out; empty if there is none."""
    path, content = read_dataset_json(*folders)
    labels = content.get("labels", {})
    if not isinstance(labels, dict):
        raise SAMMed3DError(f"{path}: 'labels' must be an object of names and values, got {type(labels).__name__}")
    names: Dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, (int, float)) or (isinstance(value, list) and value):
            value = value[0] if isinstance(value, list) else value  # v2 region lists: first value
            names[int(value)] = str(key)
        elif str(key).lstrip("-").isdigit():
            names[int(key)] = str(value)
    return {value: name for value, name in names.items() if value != 0}


def modality(*folders: Path) -> str:
    """"ct" or "mr" from `dataset.json` (v2 `channel_names`, v1 `modality`, channel 0); "auto" without one."""
    _, content = read_dataset_json(*folders)
    channels = content.get("channel_names") or content.get("modality") or {}
    first = str(channels.get("0", "")).strip().lower() if isinstance(channels, dict) else ""
    if not first:
        return "auto"
    return "ct" if first == "ct" else "mr"


def label_values(path: Path, labels: np.ndarray) -> List[int]:
    """The non-zero values of the label map read from `path`, in order; `NotALabelMap` naming the file if it holds
    non-integer or negative values or more than `MAX_LABEL_VALUES` distinct ones (an intensity image)."""
    if np.issubdtype(labels.dtype, np.floating):
        fractional = labels[labels != np.round(labels)]
        if fractional.size:
            raise NotALabelMap(path, f"it holds non-integer values (e.g. {fractional.flat[0]:g}); a label map holds "
                               "whole numbers")
    lowest = labels.min()
    if lowest < 0:
        raise NotALabelMap(path, f"it holds negative values (e.g. {lowest:g}); label values are 0 (background) or more")
    if labels.max() < 2**16:  # marking the values present is much faster than sorting
        small = labels.dtype.kind in "iu" and labels.itemsize <= 2  # non-negative: its unsigned view, no copy
        present = np.zeros(2**16, bool)
        present[(labels.view(f"u{labels.itemsize}") if small else labels.astype(np.uint16)).ravel()] = True
        values = np.flatnonzero(present)
    else:
        values = np.unique(labels).astype(np.int64)
    values = values[values != 0]
    if values.size > MAX_LABEL_VALUES:
        raise NotALabelMap(path, f"it holds {values.size} distinct values, more than a label map has "
                           f"({MAX_LABEL_VALUES} at most): an intensity image?")
    return [int(v) for v in values]
