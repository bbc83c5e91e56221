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

import csv
import io
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from SAMMed3DLib import datasets
from SAMMed3DLib.clicks import PROTOCOLS, next_click
from SAMMed3DLib.datasets import IMAGE_SUFFIXES, label_names
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.files import atomic_path
from SAMMed3DLib.metrics import dice, nsd

COLUMNS = ("case", "label", "label_name", "click", "dice", "nsd", "positive", "i", "j", "k", "seconds")
NSD_TOLERANCE_MM = 1.0


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class Settings:
    """What determines the numbers; stored in run.json and compared on a re-run."""

    clicks: int = 10
    protocol: str = "random"
    seed: int = 0
    labels_only: Optional[List[int]] = None
    checkpoint: str = ""
    modality: str = "auto"


def pair_cases(images: Path, labels: Path) -> List[Case]:
    """Cases by file name (`datasets.pair`: nnU-Net's `case_0000.ext` image, else `case.ext`, for the `case.ext`
    label). Labels without an image are an error; images without a label are ignored."""
    for flag, folder in (("images", images), ("labels", labels)):
        if not Path(folder).is_dir():
            raise SAMMed3DError(f"--{flag} {folder}: no such folder")
    pairs, unmatched = datasets.pair(Path(images), Path(labels))
    if not pairs and not unmatched:
        raise SAMMed3DError(f"--labels {labels}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise SAMMed3DError(
            f"{len(unmatched)} label files have no image in {images} (looked for NAME.ext and nnU-Net's "
            f"NAME_0000.ext): {shown}"
        )
    return [Case(name, image, label) for name, image, label in pairs]


def _rng(seed: int, case: str, label: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case.encode("utf-8")), label])


def evaluate_case(
    predictor: Any,
    case: Case,
    settings: Settings,
    names: Dict[int, str],
) -> List[Dict[str, Any]]:
    """Rows (one per label value x click) of one case."""
    from SAMMed3DLib.geometry import Volume
    from SAMMed3DLib.session import InteractiveSession

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
    rows: List[Dict[str, Any]] = []
    for value in values:
        truth = labels == value
        rng = _rng(settings.seed, case.name, value)
        session = InteractiveSession(predictor, volume, modality=settings.modality)
        mask = None
        for number in range(1, settings.clicks + 1):
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


def _write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    with atomic_path(path) as temporary, open(
        temporary, "wb" if binary else "w", newline=None if binary else "", encoding=None if binary else "utf-8"
    ) as stream:
        write(stream)


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def _write_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    def write(stream: IO[str]) -> None:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row[key]) for key in COLUMNS})

    _write_atomic(path, write)


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """Rows of a metrics CSV with numbers parsed (empty Dice/NSD, i.e. undefined, as NaN)."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        for key in ("label", "click", "positive", "i", "j", "k"):
            row[key] = int(row[key])
        for key in ("dice", "nsd", "seconds"):
            row[key] = float(row[key]) if row[key] != "" else float("nan")
    return rows


def _stats(values: Sequence[float]) -> Dict[str, Any]:
    array = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}


def summarise(rows: Sequence[Dict[str, Any]], clicks: int) -> Dict[str, Any]:
    """Mean and (population) std of Dice and NSD per click count, over all rows and per label; undefined values
    (both masks empty) are left out and `n` says how many values each mean has."""

    def per_click(subset: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            str(c): {metric: _stats([r[metric] for r in subset if r["click"] == c]) for metric in ("dice", "nsd")}
            for c in range(1, clicks + 1)
        }

    labels = sorted({r["label"] for r in rows})
    return {
        "cases": len({r["case"] for r in rows}),
        "per_click": per_click(rows),
        "per_label": {
            str(v): {
                "name": next((r["label_name"] for r in rows if r["label"] == v), ""),
                "cases": len({r["case"] for r in rows if r["label"] == v}),
                "per_click": per_click([r for r in rows if r["label"] == v]),
            }
            for v in labels
        },
    }


def plot(summary: Dict[str, Any], clicks: int, path: Path) -> None:
    """Mean Dice (band: one std) against the number of clicks, overall and per label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    x = np.arange(1, clicks + 1)

    def series(per_click: Dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([per_click[str(c)]["dice"]["mean"] for c in x], dtype=np.float64)
        std = np.array([per_click[str(c)]["dice"]["std"] for c in x], dtype=np.float64)
        return mean, std

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    mean, std = series(summary["per_click"])
    axes.plot(x, mean, "o-", color="black", linewidth=2, label=f"all labels ({summary['cases']} cases)")
    axes.fill_between(x, mean - std, mean + std, color="black", alpha=0.12)
    if len(summary["per_label"]) > 1:
        for value, entry in summary["per_label"].items():
            axes.plot(x, series(entry["per_click"])[0], ".--", linewidth=1, label=entry["name"] or f"label {value}")
    axes.set_xlabel("number of clicks")
    axes.set_ylabel("Dice")
    axes.set_xticks(x)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title("SAM-Med3D: Dice against clicks (mean ± std)")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    _write_atomic(path, lambda stream: stream.write(buffer.getvalue()), binary=True)


def _check_run(output: Path, settings: Settings) -> None:
    record = output / "run.json"
    current = asdict(settings)
    if record.is_file():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise SAMMed3DError(
                f"{output} holds results of a run with other settings ({', '.join(changed)} differ); "
                "use another --output folder or delete this one"
            )
    else:
        _write_atomic(record, lambda stream: json.dump(current, stream, indent=2))


def evaluate(
    predictor: Any,
    images: Path,
    labels: Path,
    output: Path,
    settings: Settings,
    progress: bool = True,
) -> Dict[str, Any]:
    """Evaluate every case not yet finished in `output`, then (re)write metrics.csv, summary.json and the plot.
    Returns the summary; `progress` shows a bar with the estimated time left on stderr."""
    if settings.protocol not in PROTOCOLS:
        raise SAMMed3DError(f"--protocol {settings.protocol}: use one of {', '.join(PROTOCOLS)}")
    if settings.clicks < 1:
        raise SAMMed3DError(f"--clicks {settings.clicks}: need at least 1 click")
    cases = pair_cases(images, labels)
    names = label_names(labels, images)
    output = Path(output)
    _check_run(output, settings)
    case_dir = output / "cases"
    todo = [case for case in cases if not (case_dir / f"{case.name}.csv").is_file()]

    from tqdm import tqdm

    with tqdm(total=len(todo), unit="case", desc="evaluate", file=sys.stderr, disable=not progress) as bar:
        for case in todo:
            bar.set_postfix_str(case.name)
            rows = evaluate_case(predictor, case, settings, names)
            _write_rows(case_dir / f"{case.name}.csv", rows)
            bar.update(1)

    rows = [row for case in cases for row in read_rows(case_dir / f"{case.name}.csv")]
    if not rows:
        wanted = "" if settings.labels_only is None else f" among --labels-only {settings.labels_only}"
        raise SAMMed3DError(f"no case has a foreground label value{wanted}; nothing to score")
    _write_rows(output / "metrics.csv", rows)
    summary = {"settings": asdict(settings), **summarise(rows, settings.clicks)}
    _write_atomic(output / "summary.json", lambda stream: json.dump(summary, stream, indent=2))
    plot(summary, settings.clicks, output / "dice_vs_clicks.png")
    return summary
