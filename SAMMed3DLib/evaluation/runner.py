"""Dataset evaluation with a published click protocol: Dice and NSD per case, label and click on the original grid.

For every case and label value a fresh `InteractiveSession` receives simulated clicks (`clicks.next_click` on the
label and on what the protocol's rules see of the session's prediction, in voxel indices of the original grid,
passed on as RAS points) exactly as a user's clicks arrive: each round feeds the newest click and the previous
round's logits, as the model was trained and as the paper's validation fed it. The clicks of a (case, label) pair
come from a legacy `RandomState` seeded by the seed, the case name and the label value, so results depend neither on
the order of cases nor on resuming or on how many processes share the work.

Several processes (torchrun): rank 0 checks the folders and the run and lists the unfinished cases; process r takes
every world_size-th of them; rank 0 merges once all are done. The output folder must be one folder for all of them.

Every label map is checked before any click (`check_cases`): whole numbers >= 0 and not the image itself, on the
image's grid; a case without foreground is listed as empty, and an error inside a case names it (`CaseFailed`).

Output folder: `cases/<case>.csv` (written when a case is finished; a re-run skips those cases), `metrics.csv` (all
rows), `summary.json` (`report.summarise`), `dice_vs_clicks.png`, for cvpr25 `cvpr25_cases.csv` (the challenge's
numbers per case); `run.json` records the settings, the checkpoint's SHA256 and each run's software and device
(`provenance`), so that a re-run into the same folder with other settings or another checkpoint is refused rather
than mixing two models.
"""

from __future__ import annotations

import filecmp
import json
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from SAMMed3DLib import datasets, provenance
from SAMMed3DLib.datasets import IMAGE_SUFFIXES, Case, label_names, label_values
from SAMMed3DLib.distributed import Context, barrier, gather
from SAMMed3DLib.errors import CaseFailed, MissingPackages, NotALabelMap, OtherRun, SAMMed3DError, UnknownChoice
from SAMMed3DLib.evaluation.clicks import PROTOCOLS, next_click
from SAMMed3DLib.evaluation.metrics import dice, nsd
from SAMMed3DLib.evaluation.report import (
    cvpr25_table,
    plot,
    read_rows,
    summarise,
    write_cvpr25_table,
    write_rows,
)
from SAMMed3DLib.files import same_file, write_json
from SAMMed3DLib.interactive.boxed_array import EMPTY, is_empty, nonzero_box, union
from SAMMed3DLib.interactive.geometry import frame_region

# A process that has finished its cases waits for the others at one collective, possibly for hours; a process that
# dies is noticed by torchrun, which stops the run, not by this timeout.
PROCESS_TIMEOUT = timedelta(days=7)
SINGLE_PROCESS = Context(0, 1, None)


def require_packages() -> None:
    """What evaluation needs beyond the session (NSD's surface model, the plot), checked before any model work."""
    MissingPackages.require("evaluation", "eval", "skimage", "matplotlib")


@dataclass
class Settings:
    """What determines the numbers; stored in run.json and compared on a re-run."""

    click_count: int = 10
    protocol: str = "paper"
    seed: int = 0
    labels_only: Optional[List[int]] = None
    modality: str = "auto"


def pair_cases(images: Path, labels: Path) -> List[Case]:
    """Cases by file name (`datasets.pair`: nnU-Net's `case_0000.ext` image, else `case.ext`, for the `case.ext`
    label). Labels without an image are an error; images without a label are ignored."""
    for what, folder in (("image", images), ("label", labels)):
        if not Path(folder).is_dir():
            raise SAMMed3DError(f"the {what} folder {folder} does not exist")
    if same_file(images, labels):
        raise SAMMed3DError(f"the label folder {labels} is the image folder {images}: every image would be scored as "
                            "its own label map")
    cases, unmatched = datasets.pair(Path(images), Path(labels))
    if not cases and not unmatched:
        raise SAMMed3DError(f"the label folder {labels} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise SAMMed3DError(
            f"{len(unmatched)} label files have no image in {images} (looked for NAME.ext and nnU-Net's "
            f"NAME_0000.ext): {shown}"
        )
    return cases


def _rng(seed: int, case: str, label: int) -> np.random.RandomState:
    return np.random.RandomState([seed, zlib.crc32(case.encode("utf-8")), label])


def read_label(case: Case) -> Tuple[Any, List[int]]:
    """The case's label map (a Volume) and its non-zero values, checked: a label map (`label_values`), not the
    image file itself, on the image's grid (read from the image's header)."""
    from SAMMed3DLib.interactive.geometry import Volume, file_grid

    if same_file(case.image, case.label) or filecmp.cmp(case.image, case.label, shallow=False):
        raise NotALabelMap(case.label, f"it is identical to the image {case.image}")
    label = Volume.read(case.label)
    values = label_values(case.label, label.array)
    shape, ijk_to_ras = file_grid(case.image)
    if label.array.shape != shape or not np.allclose(label.ijk_to_ras, ijk_to_ras, atol=1e-3):
        raise SAMMed3DError(
            f"the label {case.label.name} does not lie on the image's grid (shape {label.array.shape} vs {shape}, "
            "or different origin/spacing/direction)"
        )
    return label, values


def check_cases(
    cases: List[Case], settings: Settings, on_case: Optional[Callable[[Case, int, int], None]] = None
) -> Dict[str, List[int]]:
    """The label values to evaluate in each case (`labels_only` applied; empty for a case without foreground),
    every label map read and checked (`read_label`) before any model work; an error names its case.
    `on_case(case, done, cases)` before each (progress)."""
    values = {}
    for done, case in enumerate(cases):
        if on_case is not None:
            on_case(case, done, len(cases))
        try:
            found = read_label(case)[1]
        except (SAMMed3DError, ValueError, OSError) as error:
            raise CaseFailed(case.name, error) from error
        values[case.name] = _wanted(found, settings)
    return values


def _wanted(values: List[int], settings: Settings) -> List[int]:
    return [v for v in values if settings.labels_only is None or v in settings.labels_only]


def evaluate_case(
    predictor: Any,
    case: Case,
    settings: Settings,
    names: Dict[int, str],
    on_click: Optional[Callable[[], None]] = None,
    values: Optional[List[int]] = None,
) -> List[Dict[str, Any]]:
    """Rows (one per label value x click) of one case; `on_click()` after each click (progress). `values`: the
    label values to evaluate as `check_cases` found them (the label map is then not checked again)."""
    from SAMMed3DLib.interactive.geometry import Volume

    if values is None:
        label_volume, found = read_label(case)
        values = _wanted(found, settings)
    else:
        label_volume = Volume.read(case.label)
    volume = Volume.read(case.image)
    labels = label_volume.array
    modality = settings.modality if settings.modality != "auto" else case.modality
    rows: List[Dict[str, Any]] = []
    for value in values:
        for row in _evaluate_target(predictor, volume, labels == value, settings, modality,
                                    _rng(settings.seed, case.name, value), on_click):
            rows.append({"case": case.name, "label": value, "label_name": names.get(value, ""), **row})
    return rows


def _evaluate_target(predictor: Any, volume, truth: np.ndarray, settings: Settings, modality: str,
                     rng: np.random.RandomState, on_click: Optional[Callable[[], None]]) -> List[Dict[str, Any]]:
    """The click rows of one object: each click from what the protocol's rules see of the prediction, then Dice,
    NSD and volumes on the box around the truth and the prediction (the rest of the volume is empty in both)."""
    from SAMMed3DLib.interactive.session import InteractiveSession

    protocol = PROTOCOLS[settings.protocol]
    spacing_kji = tuple(float(s) for s in volume.spacing[::-1])
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    truth_box = nonzero_box(truth)
    truth_ml = int(truth[truth_box].sum()) * voxel_ml
    session = InteractiveSession(predictor, volume, modality=modality)
    seen: Optional[np.ndarray] = None  # the prediction in `box` as the rules see it; None before the first click
    box = truth_box
    rows = []
    for number in range(1, settings.click_count + 1):
        click = next_click(protocol.name, number, truth[box], seen, rng)
        seconds = 0.0
        if click is not None:  # None: nothing left to correct, the prediction stays
            index = tuple(i + s.start for i, s in zip(click.index, box))
            ras = volume.ijk_to_ras_points(np.array(index[::-1], dtype=np.float64))[0]
            start = time.perf_counter()
            session.add_click(ras, positive=click.positive)
            seconds = time.perf_counter() - start
        rois = union(frame_region(volume, frame) for frame in session.frames)
        predicted = EMPTY if is_empty(rois) else nonzero_box(session.mask_in(rois))
        if not is_empty(predicted):
            predicted = tuple(slice(p.start + r.start, p.stop + r.start) for p, r in zip(predicted, rois))
        box = union([truth_box, predicted])
        mask = session.mask_in(box)  # the masks are empty outside the box: the whole volume is not built
        rows.append({
            "click": number, "dice": dice(mask, truth[box]),
            "nsd": nsd(mask, truth[box], spacing_kji, protocol.nsd_tolerance_mm),
            "truth_ml": truth_ml, "predicted_ml": int(np.count_nonzero(mask)) * voxel_ml,
            "positive": None if click is None else int(click.positive),
            "i": None if click is None else index[2], "j": None if click is None else index[1],
            "k": None if click is None else index[0], "seconds": round(seconds, 4),
        })
        seen = mask if protocol.logit_threshold == 0 else session.mask_above(protocol.logit_threshold, box)
        if on_click is not None:
            on_click()
    return rows


def _check_run(output: Path, settings: Settings, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The run record of `output` (run.json) with this run's settings and checkpoint; `OtherRun` if the folder holds
    results of other settings or of a checkpoint with another SHA256."""
    record = output / "run.json"
    current = {"settings": asdict(settings), "checkpoint": checkpoint, "runs": []}
    if not record.is_file():
        return current
    previous = json.loads(record.read_text(encoding="utf-8"))
    if "settings" not in previous:  # written before checkpoints were recorded by hash
        previous = {"settings": previous, "checkpoint": {"sha256": None}, "runs": []}
    was, now = previous["settings"], current["settings"]
    changed = {key: (was.get(key), now[key]) for key in now if was.get(key) != now[key]}
    if previous["checkpoint"].get("sha256") != checkpoint.get("sha256"):
        changed["checkpoint SHA256"] = (previous["checkpoint"].get("sha256"), checkpoint.get("sha256"))
    if changed:
        raise OtherRun(output, changed)
    return previous


def _check_settings(settings: Settings) -> None:
    if settings.protocol not in PROTOCOLS:
        raise UnknownChoice("click protocol", settings.protocol, tuple(PROTOCOLS))
    if settings.click_count < 1:
        raise SAMMed3DError(f"the number of clicks must be at least 1, got {settings.click_count}")
    if not 0 <= settings.seed < 2**32:
        raise SAMMed3DError(f"the seed must be a whole number from 0 to {2**32 - 1}, got {settings.seed}")


def evaluate(
    predictor: Any,
    images: Path,
    labels: Path,
    output: Path,
    settings: Settings,
    checkpoint: Optional[Dict[str, Any]] = None,
    on_click: Optional[Callable[[Case, int, int], None]] = None,
    checked: Optional[Dict[str, List[int]]] = None,
    context: Context = SINGLE_PROCESS,
) -> Optional[Dict[str, Any]]:
    """Evaluate every case not yet finished in `output`, then (re)write metrics.csv, summary.json, the plot and, for
    cvpr25, cvpr25_cases.csv. Returns the summary (None on processes other than rank 0).

    `checkpoint` is the model's record (`provenance.checkpoint`, on rank 0); `on_click(case, clicks done, clicks to
    do)` after each click of this process (progress).
    `checked`: `check_cases` of the cases to do, when the caller ran it before loading the model (on rank 0).
    `context`: this process among several (`SAMMed3DLib.distributed.setup`); a case that fails raises `CaseFailed`
    (with its rank in a run on several processes)."""
    require_packages()
    _check_settings(settings)
    output = Path(output)
    case_dir = output / "cases"
    plan = None
    if context.is_main:  # the others wait here; if this fails, torchrun stops them
        cases = pair_cases(images, labels)
        names = label_names(labels, images)
        run = _check_run(output, settings, checkpoint or provenance.checkpoint(None))
        todo = cases_to_do(cases, output)
        values = checked if checked is not None else check_cases(todo, settings)
        this_run = provenance.run(getattr(predictor, "label", type(predictor).__name__),
                                  getattr(predictor, "device", ""))
        if context.distributed:
            this_run["processes"] = context.world_size
        run["runs"].append(this_run)
        write_json(output / "run.json", run)
        plan = (cases, names, todo, values, run)
    cases, names, todo, values, run = gather(context, plan)[0]
    mine = todo[context.rank :: context.world_size]
    clicks, done_clicks = sum(len(values[case.name]) for case in mine) * settings.click_count, 0
    for case in mine:

        def clicked(case: Case = case) -> None:
            nonlocal done_clicks
            done_clicks += 1
            if on_click is not None:
                on_click(case, done_clicks, clicks)

        try:
            rows = evaluate_case(predictor, case, settings, names, on_click=clicked, values=values[case.name])
        except Exception as error:
            if not context.distributed and not isinstance(error, (SAMMed3DError, ValueError, OSError)):
                raise  # a bug: its traceback
            rank = context.rank if context.distributed else None
            raise CaseFailed(case.name, error, rank) from error  # its one line; torchrun stops the rest
        write_rows(case_dir / f"{case.name}.csv", rows)
    barrier(context)
    if not context.is_main:
        return None

    by_case = {case.name: read_rows(case_dir / f"{case.name}.csv") for case in cases}
    rows = [row for case_rows in by_case.values() for row in case_rows]
    empty = [name for name, case_rows in by_case.items() if not case_rows]
    if not rows:
        wanted = "" if settings.labels_only is None else f" among the label values {settings.labels_only}"
        raise SAMMed3DError(f"no case has a foreground label value{wanted}; nothing to score")
    write_rows(output / "metrics.csv", rows)
    summary = {"settings": run["settings"], "checkpoint": run["checkpoint"], "runs": run["runs"],
               "protocol_source": PROTOCOLS[settings.protocol].source,
               "nsd_tolerance_mm": PROTOCOLS[settings.protocol].nsd_tolerance_mm, "empty_cases": empty,
               **summarise(rows, settings.click_count, settings.protocol)}
    write_json(output / "summary.json", summary)
    if settings.protocol == "cvpr25":
        write_cvpr25_table(output / "cvpr25_cases.csv", cvpr25_table(rows), settings.click_count)
    caption = (f"checkpoint {_checkpoint_label(run['checkpoint'])} · protocol {settings.protocol} · seed "
               f"{settings.seed} · {summary['cases']} cases · NSD at {summary['nsd_tolerance_mm']:g} mm")
    plot(summary, settings.click_count, output / "dice_vs_clicks.png", caption)
    return summary


def _checkpoint_label(record: Dict[str, Any]) -> str:
    """The checkpoint's file name and short SHA256 for the plot's caption."""
    name = record.get("file") or record.get("given") or "none"
    return f"{name} (SHA256 {record['sha256'][:12]})" if record.get("sha256") else name


def cases_to_do(cases: List[Case], output: Path) -> List[Case]:
    """The cases without results in `output` yet (an interrupted run continues with them)."""
    return [case for case in cases if not (Path(output) / "cases" / f"{case.name}.csv").is_file()]
