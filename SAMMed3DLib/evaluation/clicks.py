"""Simulated clicks of the published evaluation protocols, and the click of the fine-tuning loop.

A protocol (`PROTOCOLS`) says which rule places the n-th click and on which prediction:
- "paper": SAM-Med3D's paper (its validation.py, uni-medical/SAM-Med3D at a92eddc): clicks 1 and 2 by the "ritm"
  rule, then "random"; the rules see the prediction where the logits are > 0.5 (not 0).
- "cvpr25": the CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical Image Segmentation" (its
  CVPR25_iter_eval.py, JunMa11/CVPR-MedSegFMCompetition at 748e862): every click by the "centre" rule.
- "random", "ritm": the current reference (utils/infer_utils.py, random_sample_next_click) with that rule for every
  click.

Rules (FN: false negatives, FP: false positives; before the first click the prediction is empty):
- "random": a voxel drawn uniformly from FN | FP (enumerated in C order, one `rng.randint(n)`), positive iff in FN.
- "ritm": the region (FN or FP) whose deepest voxel lies deeper (farther from the region's border; the array's edge
  is border), a tie going to FP; a voxel drawn uniformly from those deeper than half that depth; positive iff FN.
- "centre": the largest 26-connected component of FN | FP (the first in C order on a tie); its deepest voxel in
  voxel units, a tie broken by `RandomState(42).randint(n)` over the tied voxels in C order; positive iff in FN.
  Component boxes over 60M voxels with padding take the challenge's 2x-downsampled depth.
Depth is measured in voxels of the grid the rule sees, as both references measure it (the paper's grid is a 1.5 mm
isotropic crop, the challenge's the image's own grid); squared depths are integers, so every comparison is exact.
When the prediction equals the truth there is nothing to correct and every rule returns None (no click), as the
challenge does; the paper's script stops with an error there and the current reference clicks anyway.

The references draw from numpy's legacy global generator, so the rules take a `numpy.random.RandomState`: with the
reference's seed they place the reference's clicks. Masks are 3D arrays (indices come back in their axis order);
only the box around the truth and the prediction is processed, which gives the same clicks as the whole array.
`edt` and `connected-components-3d` (the eval extra) make depth and components faster with identical results;
without them SciPy computes the same values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from SAMMed3DLib.backends.cpu_threads import process_threads
from SAMMed3DLib.evaluation.metrics import as_bool
from SAMMed3DLib.interactive.boxed_array import is_empty, nonzero_box
from SAMMed3DLib.interactive.geometry import Region

Index = Tuple[int, int, int]
Random = Union[np.random.RandomState, np.random.Generator]


@dataclass(frozen=True)
class Protocol:
    """A click protocol: the rule of click 1, 2, ... (the last one repeats), the logit above which the rules see the
    prediction as foreground, where it is published (for the command's help and the README), the NSD tolerance its
    scores use and its number of clicks."""

    name: str
    rules: Tuple[str, ...]
    logit_threshold: float
    source: str
    nsd_tolerance_mm: float = 1.0  # the reference's 1 mm
    default_clicks: int = 10

    def rule(self, number: int) -> str:
        """The rule of click `number` (1-based)."""
        return self.rules[min(number, len(self.rules)) - 1]


PROTOCOLS = {protocol.name: protocol for protocol in (
    Protocol("paper", ("ritm", "ritm", "random"), 0.5,
             "SAM-Med3D's paper (validation.py, uni-medical/SAM-Med3D a92eddc)"),
    Protocol("cvpr25", ("centre",), 0.0,
             "CVPR 2025 challenge (CVPR25_iter_eval.py, JunMa11/CVPR-MedSegFMCompetition 748e862)",
             nsd_tolerance_mm=2.0, default_clicks=5),  # the challenge's 2 mm and 5 click steps
    Protocol("random", ("random",), 0.0,
             "current reference, random (utils/infer_utils.py, uni-medical/SAM-Med3D f3de1fa)"),
    Protocol("ritm", ("ritm",), 0.0,
             "current reference, ritm (utils/infer_utils.py, uni-medical/SAM-Med3D f3de1fa)"),
)}
CENTRE_SEED = 42  # the challenge re-seeds numpy with 42 before each tie-break
LARGE_BOX_VOXELS = 60_000_000  # the challenge downsamples the depth of a component whose padded box is larger


@dataclass(frozen=True)
class SimulatedClick:
    """A voxel index (in the mask's axis order) and whether it includes (positive) or excludes the voxel."""

    index: Index
    positive: bool


def next_click(
    protocol: str,
    number: int,
    truth: Any,
    prediction: Any = None,
    rng: Optional[np.random.RandomState] = None,
) -> Optional[SimulatedClick]:
    """Click `number` (1-based) of `protocol` on one 3D mask pair; `prediction` is what the protocol's rules see
    (logits > `Protocol.logit_threshold`), None before the first click; "random" and "ritm" draw from `rng`.
    None: the prediction is already perfect."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown click protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if number < 1:
        raise ValueError(f"clicks are numbered from 1, got {number}")
    rule = PROTOCOLS[protocol].rule(number)
    truth, prediction = _masks(truth, prediction)
    if rule == "centre":
        return centre_click(truth, prediction)
    if rng is None:
        raise ValueError(f"the {rule} rule draws from a numpy RandomState (rng), got None")
    if rule == "ritm":
        return ritm_click(truth, prediction, rng)
    return random_click(truth, prediction, rng)


def _boxed_errors(truth: np.ndarray, prediction: Optional[np.ndarray]):
    """(box around truth and prediction, false negatives, false positives within it), or None if both are empty."""
    truth, prediction = _masks(truth, prediction)
    box = nonzero_box(truth | prediction)
    if is_empty(box):
        return None
    return (box, *_errors(truth[box], prediction[box]))


def random_click(truth: np.ndarray, prediction: Optional[np.ndarray], rng: Random) -> Optional[SimulatedClick]:
    """The "random" rule (module docstring)."""
    errors = _boxed_errors(truth, prediction)
    if errors is None:
        return None
    box, false_negative, false_positive = errors
    error = false_negative | false_positive
    if not error.any():
        return None
    index = _draw(error, rng)
    return SimulatedClick(_shift(index, box), bool(false_negative[index]))


def ritm_click(truth: np.ndarray, prediction: Optional[np.ndarray], rng: Random) -> Optional[SimulatedClick]:
    """The "ritm" rule (module docstring)."""
    errors = _boxed_errors(truth, prediction)
    if errors is None:
        return None
    box, false_negative, false_positive = errors
    (fn_box, fn_depth), (fp_box, fp_depth) = boxed_depth(false_negative), boxed_depth(false_positive)
    if fn_box is None and fp_box is None:
        return None
    deepest_fn = fn_depth.max() if fn_box is not None else 0.0
    deepest_fp = fp_depth.max() if fp_box is not None else 0.0
    region, depth = (fn_box, fn_depth) if deepest_fn > deepest_fp else (fp_box, fp_depth)  # a tie goes to FP
    index = _shift(_draw(depth > max(deepest_fn, deepest_fp) / 4, rng), region)  # depth > deepest / 2, squared
    return SimulatedClick(_shift(index, box), bool(false_negative[index]))


def centre_click(truth: np.ndarray, prediction: Optional[np.ndarray]) -> Optional[SimulatedClick]:
    """The "centre" rule (module docstring)."""
    truth, prediction = _masks(truth, prediction)
    error = truth ^ prediction
    box = nonzero_box(error)
    if is_empty(box):
        return None
    labels, count = components_26(error[box])
    largest = int(np.argmax(_sizes(labels, count)[1:])) + 1  # the lowest label, i.e. the first in C order, on a tie
    component = labels == largest
    inner = nonzero_box(component)
    component = component[inner]
    index = _pick(_deepest(component), component.shape, np.random.RandomState(CENTRE_SEED))
    index = _shift(_shift(index, inner), box)
    return SimulatedClick(index, bool(truth[index]))


def boxed_depth(mask: np.ndarray) -> Tuple[Optional[Region], np.ndarray]:
    """The box around `mask` (None if it is empty) and, on it, the squared distance in voxels from every voxel of
    the mask to the nearest voxel outside it, the array's edge counting as outside (so does the box's edge, beyond
    which there is no mask); 0 outside the mask. Whole numbers in a float array (exact: all are below 2^24)."""
    box = nonzero_box(mask)
    if is_empty(box):
        return None, np.zeros((0, 0, 0), np.float32)
    return box, _squared_voxel_depth(np.asarray(mask)[box], edge_is_outside=True)


def components_26(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """26-connected components of a bool mask numbered in the C order of their first voxel (cc3d and SciPy number
    them alike)."""
    try:
        import cc3d
    except ImportError:
        return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    labels = cc3d.connected_components(np.ascontiguousarray(mask, bool).view(np.uint8), connectivity=26)
    return labels, int(labels.max())


_CHUNK = 1 << 18  # voxels per bincount: its int64 copy of the labels stays in cache instead of 8 bytes a voxel


def _sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels of each label 0..count, counted a chunk at a time (same counts as one bincount, about twice as fast)."""
    flat, sizes = labels.ravel(), np.zeros(count + 1, np.int64)
    for start in range(0, flat.size, _CHUNK):
        sizes += np.bincount(flat[start:start + _CHUNK], minlength=count + 1)
    return sizes


def _squared_voxel_depth(mask: np.ndarray, edge_is_outside: bool) -> np.ndarray:
    try:
        import edt
    except ImportError:
        distance = ndimage.distance_transform_edt(np.pad(mask, 1) if edge_is_outside else mask)
        if edge_is_outside:
            distance = distance[1:-1, 1:-1, 1:-1]
        return np.rint(np.square(distance, out=distance), out=distance)
    return edt.edtsq(np.ascontiguousarray(mask, np.uint8), black_border=edge_is_outside, parallel=process_threads())


def _deepest(component: np.ndarray) -> np.ndarray:
    """Where the challenge's depth of a component (filling its box) is largest, as flat indices into the box in C
    order: the exact depth if the box padded by the challenge's 25% margin has at most `LARGE_BOX_VOXELS`; above, the
    challenge's approximation: the maximum of 2x2x2 blocks of the padded box (aligned to its first voxel, zero-filled
    to even sizes), the depth on that coarse grid with its edge not counting as outside, each coarse value standing
    for its block. If that depth is 0 everywhere, the whole component."""
    shape = np.array(component.shape)
    padding = np.maximum((shape * 0.25).astype(int), 1)
    padded = shape + 2 * padding
    if int(np.prod(padded)) <= LARGE_BOX_VOXELS:
        depth = _squared_voxel_depth(component, edge_is_outside=True)
        return np.flatnonzero(depth == depth.max())
    # Only the blocks that hold the component, and one block of the zero padding on each side where the coarse grid
    # has it, are built: every farther block is empty too, so the depths of the blocks kept are the same.
    parity, first = padding % 2, padding // 2  # the component's offset in its first block; that block's index
    blocks = (shape + parity + 1) // 2
    before = np.minimum(first, 1)
    after = np.minimum((padded + padded % 2) // 2 - first - blocks, 1)
    grid = np.zeros(2 * (before + blocks + after), bool)
    start = 2 * before + parity
    grid[tuple(slice(b, b + s) for b, s in zip(start, shape))] = component
    coarse = grid[0::2] | grid[1::2]  # the maximum of each pair along each axis in turn: of each 2x2x2 block
    coarse = coarse[:, 0::2] | coarse[:, 1::2]
    coarse = coarse[:, :, 0::2] | coarse[:, :, 1::2]
    depth = _squared_voxel_depth(coarse, edge_is_outside=False)
    deepest = depth.max()
    if deepest == 0:
        return np.flatnonzero(component)
    cells = np.stack(np.nonzero(depth == deepest), axis=1)  # usually few: expand each to the voxels of its block
    voxels = (2 * cells - start)[:, None, :] + np.array(list(itertools.product((0, 1), repeat=3)))
    voxels = voxels.reshape(-1, 3)
    voxels = voxels[((voxels >= 0) & (voxels < shape)).all(axis=1)]
    flat = np.ravel_multi_index(tuple(voxels.T), component.shape)
    return np.sort(flat[component.ravel()[flat]])


def _masks(truth: Any, prediction: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Both masks as bool numpy arrays (torch tensors too); no prediction is an empty one."""
    truth = as_bool(truth)
    if truth.ndim != 3:
        raise ValueError(f"clicks are simulated on 3D masks, got shape {truth.shape}")
    if prediction is None:
        return truth, np.zeros_like(truth)
    prediction = as_bool(prediction)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the truth's {truth.shape}")
    return truth, prediction


def _errors(truth: np.ndarray, prediction: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return truth & ~prediction, prediction & ~truth


def _shift(index: Index, box: Region) -> Index:
    return tuple(int(i + s.start) for i, s in zip(index, box))


def _draw(candidates: np.ndarray, rng: Random) -> Index:
    """A uniform draw over the True voxels in C order: `randint(n)` of a legacy RandomState, as the references draw
    (the fine-tuning loop passes a Generator: `integers(n)`)."""
    return _pick(np.flatnonzero(candidates), candidates.shape, rng)


def _pick(flat: np.ndarray, shape: Tuple[int, ...], rng: Random) -> Index:
    """`_draw` over candidates given as their flat indices in C order."""
    pick = rng.randint(len(flat)) if isinstance(rng, np.random.RandomState) else rng.integers(len(flat))
    return tuple(int(i) for i in np.unravel_index(flat[int(pick)], shape))


def next_clicks(truth: Any, prediction: Any, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The fine-tuning loop's clicks, one per mask pair of a batch (shape (..., D, H, W), e.g. (B, 1, 128, 128, 128)):
    the "random" rule, and a positive click drawn from the truth where the prediction is already perfect. Returns
    `points` int64 (n, 3) voxel indices and `labels` int64 (n,) 1 positive / 0 negative, drawn in batch order."""
    truth = as_bool(truth)
    batch = truth.reshape(-1, *truth.shape[-3:])
    predictions = [None] * len(batch) if prediction is None else as_bool(prediction).reshape(batch.shape)
    clicks = []
    for one_truth, one_prediction in zip(batch, predictions):
        click = random_click(one_truth, one_prediction, rng)
        if click is None:
            if not one_truth.any():
                raise ValueError("no click possible: the ground truth and the prediction are both empty")
            click = SimulatedClick(_draw(one_truth, rng), True)
        clicks.append(click)
    points = np.array([c.index for c in clicks], dtype=np.int64).reshape(len(clicks), 3)
    labels = np.array([int(c.positive) for c in clicks], dtype=np.int64)
    return points, labels
