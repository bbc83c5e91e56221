"""Dataset evaluation with a published click protocol: Dice and NSD per case, label and click on the original grid.

For every case and label value a fresh `InteractiveSession` receives simulated clicks (`clicks.next_click` on the
label and on what the protocol's rules see of the session's prediction, in voxel indices of the original grid,
passed on as RAS points) exactly as a user's clicks arrive: each round feeds the newest click and the previous
round's logits, as the model was trained and as the paper's validation fed it. The clicks of a (case, label) pair
come from a legacy `RandomState` seeded by the seed, the case name and the label value, so results depend neither on
the order of cases nor on resuming or on how many processes share the work.

Several processes (torchrun): rank 0 checks the folders and the run and lists the unfinished cases; process r takes
every world_size-th of them; rank 0 merges once all are done. The output folder must be one folder for all of them.

Output folder: `cases/<case>.csv` (written when a case is finished; a re-run skips those cases), `metrics.csv` (all
rows), `summary.json` (`report.summarise`), `dice_vs_clicks.png`, for cvpr25 `cvpr25_cases.csv` (the challenge's
numbers per case); `run.json` records the settings so that a re-run into the same folder cannot mix different runs.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from SAMMed3DLib import datasets
from SAMMed3DLib.datasets import IMAGE_SUFFIXES, Case, label_names
from SAMMed3DLib.distributed import Context, barrier, gather
from SAMMed3DLib.errors import CaseFailed, MissingPackages, OtherRun, SAMMed3DError, UnknownChoice
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
from SAMMed3DLib.files import write_json
from SAMMed3DLib.interactive.geometry import bounding_box, frame_region, union_region

NSD_TOLERANCE_MM = {"paper": 1.0, "cvpr25": 2.0, "random": 1.0, "ritm": 1.0}  # the challenge's 2 mm; the reference's 1
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
    checkpoint: str = ""
    modality: str = "auto"


def pair_cases(images: Path, labels: Path) -> List[Case]:
    """Cases by file name (`datasets.pair`: nnU-Net's `case_0000.ext` image, else `case.ext`, for the `case.ext`
    label). Labels without an image are an error; images without a label are ignored."""
    for what, folder in (("image", images), ("label", labels)):
        if not Path(folder).is_dir():
            raise SAMMed3DError(f"the {what} folder {folder} does not exist")
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


def evaluate_case(
    predictor: Any,
    case: Case,
    settings: Settings,
    names: Dict[int, str],
) -> List[Dict[str, Any]]:
    """Rows (one per label value x click) of one case."""
    from SAMMed3DLib.interactive.geometry import Volume

    volume, label_volume = Volume.read(case.image), Volume.read(case.label)
    if label_volume.array.shape != volume.array.shape or not np.allclose(
        label_volume.ijk_to_ras, volume.ijk_to_ras, atol=1e-3
    ):
        raise SAMMed3DError(
            f"case {case.name}: the label {case.label.name} does not lie on the image's grid (shape "
            f"{label_volume.array.shape} vs {volume.array.shape}, or different origin/spacing/direction)"
        )
    labels = label_volume.array
    values = sorted(int(v) for v in np.unique(labels) if v != 0)
    if settings.labels_only is not None:
        values = [v for v in values if v in settings.labels_only]
    modality = settings.modality if settings.modality != "auto" else case.modality
    rows: List[Dict[str, Any]] = []
    for value in values:
        for row in _evaluate_target(predictor, volume, labels == value, settings, modality,
                                    _rng(settings.seed, case.name, value)):
            rows.append({"case": case.name, "label": value, "label_name": names.get(value, ""), **row})
    return rows


def _evaluate_target(predictor: Any, volume, truth: np.ndarray, settings: Settings, modality: str,
                     rng: np.random.RandomState) -> List[Dict[str, Any]]:
    """The click rows of one object: each click from what the protocol's rules see of the prediction, then Dice,
    NSD and volumes on the box around the truth and the prediction (the rest of the volume is empty in both)."""
    from SAMMed3DLib.interactive.session import InteractiveSession

    protocol = PROTOCOLS[settings.protocol]
    spacing_kji = tuple(float(s) for s in volume.spacing[::-1])
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    truth_box = bounding_box(truth)
    truth_ml = int(truth[truth_box].sum()) * voxel_ml
    session = InteractiveSession(predictor, volume, modality=modality)
    seen: Optional[np.ndarray] = None  # the prediction as the rules see it; None before the first click
    box = truth_box
    rows = []
    for number in range(1, settings.click_count + 1):
        click = next_click(protocol.name, number, truth[box], None if seen is None else seen[box], rng)
        seconds = 0.0
        if click is not None:  # None: nothing left to correct, the prediction stays
            index = tuple(i + s.start for i, s in zip(click.index, box))
            ras = volume.ijk_to_ras_points(np.array(index[::-1], dtype=np.float64))[0]
            start = time.perf_counter()
            session.add_click(ras, positive=click.positive)
            seconds = time.perf_counter() - start
        mask = session.mask
        rois = union_region(frame_region(volume, frame) for frame in session.frames)
        predicted = bounding_box(mask[rois]) if all(s.stop > s.start for s in rois) else None
        if predicted is not None:
            predicted = tuple(slice(p.start + r.start, p.stop + r.start) for p, r in zip(predicted, rois))
        box = union_region([truth_box] + ([predicted] if predicted else []))
        rows.append({
            "click": number, "dice": dice(mask[box], truth[box]),
            "nsd": nsd(mask[box], truth[box], spacing_kji, NSD_TOLERANCE_MM[protocol.name]),
            "truth_ml": truth_ml, "predicted_ml": int(np.count_nonzero(mask[box])) * voxel_ml,
            "positive": None if click is None else int(click.positive),
            "i": None if click is None else index[2], "j": None if click is None else index[1],
            "k": None if click is None else index[0], "seconds": round(seconds, 4),
        })
        seen = mask if protocol.logit_threshold == 0 else session.mask_above(protocol.logit_threshold)
    return rows


def _check_run(output: Path, settings: Settings) -> None:
    record = output / "run.json"
    current = asdict(settings)
    if record.is_file():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise OtherRun(output, changed)
    else:
        write_json(record, current)


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
    on_case: Optional[Callable[[Case, int, int], None]] = None,
    context: Context = SINGLE_PROCESS,
    checkpoint_label: str = "",
) -> Optional[Dict[str, Any]]:
    """Evaluate every case not yet finished in `output`, then (re)write metrics.csv, summary.json, the plot and, for
    cvpr25, cvpr25_cases.csv. Returns the summary (None on processes other than rank 0).

    `on_case(case, done, to_do)` is called before each case this process evaluates (progress). `context`: this
    process among several (`SAMMed3DLib.distributed.setup`); a case that fails in a run on several processes raises
    `CaseFailed` with its rank. `checkpoint_label` names the checkpoint in the plot's caption (default: the
    settings' checkpoint)."""
    require_packages()
    _check_settings(settings)
    output = Path(output)
    case_dir = output / "cases"
    plan = None
    if context.is_main:  # the others wait here; if this fails, torchrun stops them
        cases = pair_cases(images, labels)
        names = label_names(labels, images)
        _check_run(output, settings)
        plan = (cases, names, [case for case in cases if not (case_dir / f"{case.name}.csv").is_file()])
    cases, names, todo = gather(context, plan)[0]
    mine = todo[context.rank :: context.world_size]
    for done, case in enumerate(mine):
        if on_case is not None:
            on_case(case, done, len(mine))
        try:
            rows = evaluate_case(predictor, case, settings, names)
        except Exception as error:
            if not context.distributed:
                raise
            raise CaseFailed(context.rank, case.name, error) from error  # its one line; torchrun stops the rest
        write_rows(case_dir / f"{case.name}.csv", rows)
    barrier(context)
    if not context.is_main:
        return None

    rows = [row for case in cases for row in read_rows(case_dir / f"{case.name}.csv")]
    if not rows:
        wanted = "" if settings.labels_only is None else f" among the label values {settings.labels_only}"
        raise SAMMed3DError(f"no case has a foreground label value{wanted}; nothing to score")
    write_rows(output / "metrics.csv", rows)
    summary = {"settings": asdict(settings), "protocol_source": PROTOCOLS[settings.protocol].source,
               "nsd_tolerance_mm": NSD_TOLERANCE_MM[settings.protocol],
               **summarise(rows, settings.click_count, settings.protocol)}
    write_json(output / "summary.json", summary)
    if settings.protocol == "cvpr25":
        write_cvpr25_table(output / "cvpr25_cases.csv", cvpr25_table(rows), settings.click_count)
    caption = (f"checkpoint {checkpoint_label or settings.checkpoint} · protocol {settings.protocol} · seed "
               f"{settings.seed} · {summary['cases']} cases · NSD at {summary['nsd_tolerance_mm']:g} mm")
    plot(summary, settings.click_count, output / "dice_vs_clicks.png", caption)
    return summary
