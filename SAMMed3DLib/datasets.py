"""Image and label folders as users keep them: plain names, nnU-Net's `case_0000` channel files and `dataset.json`.

One reading of them for evaluation and fine-tuning, so both pair the same files and name the same labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from SAMMed3DLib.errors import SAMMed3DError

IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


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
