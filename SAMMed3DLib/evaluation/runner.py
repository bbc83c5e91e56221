"""Dataset evaluation with the paper's click protocol: Dice and NSD per case, label and click on the original grid.

For every case and label value a fresh `InteractiveSession` receives simulated clicks (`clicks.next_click` on the
label and the session's current mask, in voxel indices of the original grid, passed on as RAS points), exactly as a
user's clicks would arrive. The random generator of a (case, label) pair is seeded from the seed, the case name and
the label value, so results do not depend on the order of cases or on resuming.

Output folder: `cases/<case>.csv` (written when a case is finished; a re-run skips those cases), `metrics.csv` (all
rows), `summary.json` (mean and std per click count, overall and per label) and `dice_vs_clicks.png`; `run.json`
records the settings so that a re-run into the same folder cannot mix different runs.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from SAMMed3DLib import datasets
from SAMMed3DLib.datasets import IMAGE_SUFFIXES, Case, label_names
from SAMMed3DLib.errors import MissingPackages, OtherRun, SAMMed3DError, UnknownChoice
from SAMMed3DLib.evaluation.clicks import PROTOCOLS, next_click
from SAMMed3DLib.evaluation.metrics import dice, nsd
from SAMMed3DLib.evaluation.report import plot, read_rows, summarise, write_rows
from SAMMed3DLib.files import write_json

NSD_TOLERANCE_MM = 1.0


def require_packages() -> None:
    """What evaluation needs beyond the session (NSD's surface model, the plot), checked before any model work."""
    MissingPackages.require("evaluation", "eval", "skimage", "matplotlib")


@dataclass
class Settings:
    """What determines the numbers; stored in run.json and compared on a re-run."""

    click_count: int = 10
    protocol: str = "random"
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


def _rng(seed: int, case: str, label: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case.encode("utf-8")), label])


def evaluate_case(
    predictor: Any,
    case: Case,
    settings: Settings,
    names: Dict[int, str],
) -> List[Dict[str, Any]]:
    """Rows (one per label value x click) of one case."""
    from SAMMed3DLib.interactive.geometry import Volume
    from SAMMed3DLib.interactive.session import InteractiveSession

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
    spacing_kji = tuple(float(s) for s in volume.spacing[::-1])
    modality = settings.modality if settings.modality != "auto" else case.modality
    rows: List[Dict[str, Any]] = []
    for value in values:
        truth = labels == value
        rng = _rng(settings.seed, case.name, value)
        session = InteractiveSession(predictor, volume, modality=modality)
        mask = None
        for number in range(1, settings.click_count + 1):
            click = next_click(truth, mask, rng, settings.protocol, spacing_kji)
            ras = volume.ijk_to_ras_points(np.array(click.index[::-1], dtype=np.float64))[0]
            start = time.perf_counter()
            mask = session.add_click(ras, positive=click.positive).mask
            seconds = time.perf_counter() - start
            k, j, i = click.index
            rows.append({
                "case": case.name, "label": value, "label_name": names.get(value, ""), "click": number,
                "dice": dice(mask, truth), "nsd": nsd(mask, truth, spacing_kji, NSD_TOLERANCE_MM),
                "positive": int(click.positive), "i": i, "j": j, "k": k, "seconds": round(seconds, 4),
            })
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


def evaluate(
    predictor: Any,
    images: Path,
    labels: Path,
    output: Path,
    settings: Settings,
    on_case: Optional[Callable[[Case, int, int], None]] = None,
) -> Dict[str, Any]:
    """Evaluate every case not yet finished in `output`, then (re)write metrics.csv, summary.json and the plot.
    Returns the summary. `on_case(case, done, to_do)` is called before each case that is evaluated (progress)."""
    require_packages()
    if settings.protocol not in PROTOCOLS:
        raise UnknownChoice("click protocol", settings.protocol, PROTOCOLS)
    if settings.click_count < 1:
        raise SAMMed3DError(f"the number of clicks must be at least 1, got {settings.click_count}")
    cases = pair_cases(images, labels)
    names = label_names(labels, images)
    output = Path(output)
    _check_run(output, settings)
    case_dir = output / "cases"
    todo = [case for case in cases if not (case_dir / f"{case.name}.csv").is_file()]

    for done, case in enumerate(todo):
        if on_case is not None:
            on_case(case, done, len(todo))
        write_rows(case_dir / f"{case.name}.csv", evaluate_case(predictor, case, settings, names))

    rows = [row for case in cases for row in read_rows(case_dir / f"{case.name}.csv")]
    if not rows:
        wanted = "" if settings.labels_only is None else f" among the label values {settings.labels_only}"
        raise SAMMed3DError(f"no case has a foreground label value{wanted}; nothing to score")
    write_rows(output / "metrics.csv", rows)
    summary = {"settings": asdict(settings), **summarise(rows, settings.click_count)}
    write_json(output / "summary.json", summary)
    plot(summary, settings.click_count, output / "dice_vs_clicks.png")
    return summary
