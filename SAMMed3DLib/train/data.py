"""Training data: image/label pairs found on disk, cached once in the model's frame, drawn as augmented crops.

Each case is resampled once (1.5 mm, canonical RAS+ axes: the session's own preprocessing) and kept in an on-disk
cache as `.npy` files that are memory-mapped, so an epoch reads only the 128^3 crops it uses. One training target
is one label value of one case, so a multi-label nnU-Net file gives several targets. A crop is centred on the
target's bounding box with zero padding (the reference's CropOrPad), flipped at random on each axis, CT-clamped and
z-normalised; a crop with too few target voxels is redrawn, as the reference does.

Every random choice of an item comes from a generator seeded by (seed, epoch, position in the epoch), so the data
do not depend on the number of loader workers or on where a run was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from SAMMed3DLib import datasets
from SAMMed3DLib.datasets import IMAGE_SUFFIXES, Case
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.files import temporary_folder
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.preprocess import Modality, normalise
from SAMMed3DLib.train.config import MIN_TARGET_VOXELS

CACHE_VERSION = 1


@dataclass(frozen=True)
class Target:
    """One label value of one cached case, with its voxel count and inclusive bounding box in the cached grid."""

    case: int
    value: int
    voxels: int
    bbox_min: Tuple[int, int, int]
    bbox_max: Tuple[int, int, int]


@dataclass
class CachedCase:
    """A case in the model's frame: `image` float32 and `label` integer arrays of one shape (memory-mapped)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    modality: Modality


def _pairs_in(folder: Path) -> List[Case]:
    """Pairs in one dataset folder: `labelsTr/<case><ext>` with `imagesTr/<case>_0000<ext>` or `<case><ext>`."""
    cases, unmatched = datasets.pair(folder / "imagesTr", folder / "labelsTr")
    if unmatched:
        raise SAMMed3DError(
            f"no image for label {unmatched[0]} in {folder / 'labelsTr'}: expected {unmatched[0]}_0000.ext or "
            f"{unmatched[0]}.ext in {folder / 'imagesTr'}"
        )
    return cases


def find_cases(data_dir: Path) -> List[Case]:
    """All image/label pairs under `data_dir`, in both layouts the reference uses.

    nnU-Net: `DIR/imagesTr`, `DIR/labelsTr`, optional `DIR/dataset.json`. The reference's layout: any number of
    dataset folders below `DIR` (e.g. `DIR/<structure>/<dataset>/`), each with `imagesTr/` and `labelsTr/`.
    Case names are made unique by their folder when several datasets are found.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SAMMed3DError(f"the training data folder {data_dir} does not exist")
    folders = sorted({p.parent for p in data_dir.rglob("labelsTr") if p.is_dir() and (p.parent / "imagesTr").is_dir()})
    if not folders:
        raise SAMMed3DError(
            f"no training data in {data_dir}: expected imagesTr/ and labelsTr/ there (nnU-Net layout) "
            "or in folders below it (the reference's layout)"
        )
    cases = []
    for folder in folders:
        prefix = "" if len(folders) == 1 else folder.relative_to(data_dir).as_posix().replace("/", "_") + "_"
        cases += [Case(prefix + c.name, c.image, c.label, c.modality) for c in _pairs_in(folder)]
    if not cases:
        raise SAMMed3DError(f"no label files ({', '.join(IMAGE_SUFFIXES)}) in the labelsTr folders under {data_dir}")
    return cases


def split_cases(cases: Sequence[Case], fraction: float, seed: int) -> Tuple[List[Case], List[Case]]:
    """Hold out about `fraction` of the cases (at least one when there are two or more) for validation."""
    count = 0 if len(cases) < 2 or fraction <= 0 else min(len(cases) - 1, max(1, round(fraction * len(cases))))
    order = np.random.default_rng([seed, 7]).permutation(len(cases))
    held_out = set(order[:count].tolist())
    train = [c for i, c in enumerate(cases) if i not in held_out]
    validation = [c for i, c in enumerate(cases) if i in held_out]
    return train, validation


def _cache_key(case: Case) -> str:
    parts = [CACHE_VERSION, case.modality]
    for path in (case.image, case.label):
        stat = path.stat()
        parts += [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def canonical_grid(image: Volume, volumes: Sequence[Volume], interpolation: Sequence[str],
                   tile: int = 128) -> List[np.ndarray]:
    """`volumes` resampled onto one grid: 1.5 mm in `image`'s canonical RAS+ axes (the patch frame's axes),
    covering `image`'s extent, zero outside each volume.

    The grid is filled tile by tile with the session's own `patch_frame` and `resample_into`, so a training crop
    holds exactly the values the session would compute for a frame on the same grid, and memory stays bounded.
    """
    from SAMMed3DLib.interactive.geometry import patch_frame
    from SAMMed3DLib.interactive.resample import resample_into

    base = patch_frame(image, image.ijk_to_ras_points(np.zeros(3))[0], size=tile)
    inside = base.to_patch(image.corners_ras())
    first = np.floor(inside.min(axis=0) + 0.5).astype(np.int64)
    shape = tuple(int(n) for n in np.ceil(inside.max(axis=0) - 0.5).astype(np.int64) - first + 1)
    grids = [np.zeros(shape, dtype=np.float32 if mode == "linear" else v.array.dtype)
             for v, mode in zip(volumes, interpolation)]
    for offset in np.ndindex(*(math.ceil(n / tile) for n in shape)):
        start = np.asarray(offset) * tile
        frame = base.shifted(first + start)
        target = tuple(slice(s, min(s + tile, n)) for s, n in zip(start, shape))
        source = tuple(slice(0, t.stop - t.start) for t in target)
        for grid, volume, mode in zip(grids, volumes, interpolation):
            grid[target] = resample_into(volume, frame, mode)[source]
    return grids


def _resample_case(case: Case) -> Tuple[np.ndarray, np.ndarray, str]:
    """The whole image (linear) and label (nearest) on the canonical 1.5 mm grid, and the modality."""
    from SAMMed3DLib.interactive.preprocess import chosen_modality

    image = Volume.read(case.image)
    label = Volume.read(case.label)
    try:
        image_grid, label_grid = canonical_grid(image, [image, label], ["linear", "nearest"])
    except ValueError as error:
        raise SAMMed3DError(f"label {case.label} does not fit image {case.image}: {error}") from error
    modality = chosen_modality(case.modality, image)
    return image_grid, label_grid, modality


def cache_case(case: Case, cache_dir: Path) -> Path:
    """Resample `case` into `cache_dir` unless an up-to-date copy is there; safe when several ranks run it."""
    folder = Path(cache_dir) / f"{case.name}-{_cache_key(case)}"
    if (folder / "meta.json").is_file():
        return folder
    image, label, modality = _resample_case(case)
    if label.min() < 0 or label.max() > np.iinfo(np.int32).max or not np.all(np.mod(label, 1) == 0):
        raise SAMMed3DError(f"label {case.label} has values that are not non-negative integers")
    label = label.astype(np.uint8 if label.max() < 256 else np.int32)
    values = {}
    for value in np.unique(label):
        if value == 0:
            continue
        where = np.nonzero(label == value)
        values[int(value)] = {
            "voxels": int(where[0].size),
            "bbox_min": [int(w.min()) for w in where],
            "bbox_max": [int(w.max()) for w in where],
        }
    with temporary_folder(folder) as staging:
        np.save(staging / "image.npy", image)
        np.save(staging / "label.npy", label)
        meta = {"name": case.name, "image": str(case.image), "label": str(case.label), "modality": modality,
                "shape": list(image.shape), "values": values}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a rank that finished first
                raise
    return folder


def load_cached(folders: Sequence[Path]) -> Tuple[List[CachedCase], List[Target]]:
    """Memory-map cached cases and list their targets (one per label value)."""
    cases, targets = [], []
    for folder in folders:
        meta = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))
        cases.append(CachedCase(
            name=meta["name"],
            image=np.load(Path(folder) / "image.npy", mmap_mode="r"),
            label=np.load(Path(folder) / "label.npy", mmap_mode="r"),
            modality=meta["modality"],
        ))
        for value, info in sorted(meta["values"].items(), key=lambda item: int(item[0])):
            targets.append(Target(len(cases) - 1, int(value), info["voxels"],
                                  tuple(info["bbox_min"]), tuple(info["bbox_max"])))
    return cases, targets


def crop_start(target: Target, size: int) -> Tuple[int, int, int]:
    """Corner of the `size`^3 crop centred on the target's bounding box (may lie outside the grid)."""
    return tuple((lo + hi + 1) // 2 - size // 2 for lo, hi in zip(target.bbox_min, target.bbox_max))


def crop(array: np.ndarray, start: Sequence[int], size: int) -> np.ndarray:
    """`array[start : start + size]` on each axis, zero where that leaves the array."""
    out = np.zeros((size,) * 3, dtype=array.dtype)
    source, dest = [], []
    for begin, extent in zip(start, array.shape):
        lo, hi = max(begin, 0), min(begin + size, extent)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        dest.append(slice(lo - begin, hi - begin))
    out[tuple(dest)] = array[tuple(source)]
    return out


class TargetCrops:
    """Map-style dataset of crops: item `(target_index, seed)` gives {"image", "label"} float32 (1, S, S, S).

    With `augment`, each axis is flipped with probability 1/2 and a crop with at most `min_voxels` target voxels is
    replaced by a crop of a target drawn at random; without it the crop is deterministic (validation).
    """

    def __init__(self, cases: Sequence[CachedCase], targets: Sequence[Target], size: int, augment: bool,
                 min_voxels: int = MIN_TARGET_VOXELS) -> None:
        self.cases = list(cases)
        self.targets = list(targets)
        self.size = size
        self.augment = augment
        self.min_voxels = min_voxels
        if augment and not any(t.voxels > min_voxels for t in self.targets):
            raise SAMMed3DError(
                f"every training target has at most {min_voxels} voxels at 1.5 mm; the recipe skips such "
                "tiny targets, so there is nothing to train on"
            )

    def __len__(self) -> int:
        return len(self.targets)

    def crop(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Unaugmented (image, 0/1 label) crops of one target, before normalisation."""
        target = self.targets[index]
        case = self.cases[target.case]
        start = crop_start(target, self.size)
        return crop(case.image, start, self.size), (crop(case.label, start, self.size) == target.value)

    def __getitem__(self, item: Tuple[int, Sequence[int]]) -> Dict[str, np.ndarray]:
        index, seed = item
        rng = np.random.default_rng(list(seed))
        image, label = self.crop(index)
        while self.augment and label.sum() <= self.min_voxels:
            index = int(rng.integers(len(self.targets)))
            image, label = self.crop(index)
        if self.augment:
            axes = tuple(int(a) for a in np.nonzero(rng.random(3) < 0.5)[0])
            if axes:
                image, label = np.flip(image, axes), np.flip(label, axes)
        image = normalise(np.ascontiguousarray(image), self.cases[self.targets[index].case].modality)
        return {
            "image": image[None].astype(np.float32),
            "label": np.ascontiguousarray(label)[None].astype(np.float32),
        }


class EpochBatches:
    """The micro-batches that one rank draws in one epoch.

    A permutation of the targets seeded by (seed, epoch), wrapped around to fill whole optimiser steps of
    `batch_size * accumulation * world_size` items, dealt to the ranks in turn; each item carries the seed of its own
    augmentation. `start` skips micro-batches already trained on (resume).
    """

    def __init__(self, num_targets: int, batch_size: int, accumulation: int, world_size: int, rank: int,
                 seed: int, epoch: int, start: int = 0) -> None:
        self.num_targets = num_targets
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start = start
        self.steps = steps_per_epoch(num_targets, batch_size, accumulation, world_size)
        self.micro_batches = self.steps * accumulation

    def __len__(self) -> int:
        return self.micro_batches - self.start

    def __iter__(self) -> Iterator[List[Tuple[int, Tuple[int, int, int]]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_targets)
        order = np.resize(order, self.micro_batches * self.batch_size * self.world_size)
        for micro_batch in range(self.start, self.micro_batches):
            first = (micro_batch * self.world_size + self.rank) * self.batch_size
            yield [(int(order[p]), (self.seed, self.epoch, p)) for p in range(first, first + self.batch_size)]


def steps_per_epoch(num_targets: int, batch_size: int, accumulation: int, world_size: int) -> int:
    """Optimiser steps in one pass over the targets (the last one filled up by wrapping around)."""
    return max(1, math.ceil(num_targets / (batch_size * accumulation * world_size)))


def collate(items: Sequence[Dict[str, np.ndarray]]):
    """Stack items into torch tensors (B, 1, S, S, S)."""
    import torch

    return {key: torch.from_numpy(np.stack([item[key] for item in items])) for key in items[0]}
