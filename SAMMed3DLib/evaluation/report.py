"""The tables and the plot of a dataset evaluation: per-click CSV rows, summary statistics, the CVPR 2025 challenge's
per-case numbers, and Dice and NSD against clicks."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from SAMMed3DLib.files import write_atomic

COLUMNS = ("case", "label", "label_name", "click", "dice", "nsd", "truth_ml", "predicted_ml", "positive", "i", "j",
           "k", "seconds")
_NUMBERS = ("dice", "nsd", "truth_ml", "predicted_ml", "seconds")
_CLICK = ("positive", "i", "j", "k")  # empty where no click was placed: nothing was left to correct
NOC_DICE = (0.85, 0.90)  # NoC@85, NoC@90: clicks until Dice reaches this (the maximum when it never does)
CVPR25_NSD_MIN_DICE = 0.2  # the challenge counts NSD as 0 when the case's mean Dice is at most this
CVPR25_SECONDS_PER_LABEL = 90.0  # the challenge's time limit per case: this times the number of labels
CVPR25_COLUMNS = ("case", "labels", "dsc_auc", "nsd_auc", "final_dsc", "final_nsd", "seconds_per_step",
                  "total_seconds", "time_limit_seconds")

Row = Dict[str, Any]


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Row]) -> None:
    """A CSV file of `rows` (dicts with at least `columns`), written atomically; None and NaN are left empty."""

    def write(stream: IO[str]) -> None:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row[key]) for key in columns})

    write_atomic(path, write)


def write_rows(path: Path, rows: Sequence[Row]) -> None:
    write_table(path, COLUMNS, rows)


def read_rows(path: Path) -> List[Row]:
    """Rows of a metrics CSV with numbers parsed (empty Dice/NSD, i.e. undefined, as NaN; no click as None)."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        row["label"], row["click"] = int(row["label"]), int(row["click"])
        for key in _CLICK:
            row[key] = int(row[key]) if row[key] != "" else None
        for key in _NUMBERS:
            row[key] = float(row[key]) if row[key] != "" else float("nan")
    return rows


def _stats(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, population std, median, quartiles and their distance (IQR) of the defined values, and their count."""
    array = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "median": None, "q1": None, "q3": None, "iqr": None, "n": 0}
    q1, median, q3 = (float(v) for v in np.percentile(array, [25, 50, 75]))
    return {"mean": float(array.mean()), "std": float(array.std()), "median": median, "q1": q1, "q3": q3,
            "iqr": q3 - q1, "n": int(array.size)}


def trapezoid_auc(values: Sequence[float]) -> float:
    """Area under `values` at x = 0, 1, 2, ... by the trapezoid rule: the challenge's DSC and NSD AUC (5 clicks: at
    most 4)."""
    y = np.asarray(values, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2).sum())


def clicks_to_reach(dices: Sequence[float], threshold: float) -> Optional[int]:
    """The first click count whose Dice is at least `threshold`; None if none is."""
    return next((number for number, value in enumerate(dices, 1) if value >= threshold), None)


def _targets(rows: Sequence[Row]) -> Dict[Tuple[str, int], List[Row]]:
    """Rows per (case, label), in click order."""
    targets: Dict[Tuple[str, int], List[Row]] = defaultdict(list)
    for row in rows:
        targets[(row["case"], row["label"])].append(row)
    return {key: sorted(value, key=lambda row: row["click"]) for key, value in targets.items()}


def cvpr25_scores(case: str, targets: Sequence[Sequence[Row]]) -> Row:
    """The challenge's numbers of one case from its labels' rows: Dice per step the mean over labels, NSD per step
    the mean over labels (0 when that step's mean Dice is <= 0.2), AUC of both over the click steps, final values,
    and the step time (all labels' clicks of a step, as the challenge's model runs once per step for all)."""
    steps = min(len(rows) for rows in targets)
    dsc, nsd, seconds = [], [], []
    for step in range(steps):
        dsc.append(float(np.mean([rows[step]["dice"] for rows in targets])))
        nsd.append(0.0 if dsc[-1] <= CVPR25_NSD_MIN_DICE else float(np.mean([rows[step]["nsd"] for rows in targets])))
        seconds.append(float(sum(rows[step]["seconds"] for rows in targets)))
    scores = {
        "case": case, "labels": len(targets), "dsc_auc": trapezoid_auc(dsc), "nsd_auc": trapezoid_auc(nsd),
        "final_dsc": dsc[-1], "final_nsd": nsd[-1], "seconds_per_step": float(np.mean(seconds)),
        "total_seconds": float(sum(seconds)), "time_limit_seconds": CVPR25_SECONDS_PER_LABEL * len(targets),
    }
    for step in range(steps):
        scores[f"dsc_{step + 1}"], scores[f"nsd_{step + 1}"] = dsc[step], nsd[step]
    return scores


def cvpr25_table(rows: Sequence[Row]) -> List[Row]:
    """`cvpr25_scores` of every case, in the order the cases first appear."""
    per_case: Dict[str, List[List[Row]]] = defaultdict(list)
    for (case, _), target in _targets(rows).items():
        per_case[case].append(target)
    return [cvpr25_scores(case, targets) for case, targets in per_case.items()]


def write_cvpr25_table(path: Path, table: Sequence[Row], clicks: int) -> None:
    steps = [f"{metric}_{step}" for metric in ("dsc", "nsd") for step in range(1, clicks + 1)]
    write_table(path, CVPR25_COLUMNS + tuple(steps), table)


def summarise(rows: Sequence[Row], clicks: int, protocol: str = "") -> Dict[str, Any]:
    """Over all rows and per label: statistics (`_stats`) of Dice, NSD and the best Dice so far (the paper's score)
    per click count, of NoC@85 and NoC@90 (`not_reached` counts the targets that never got there), and for the
    cvpr25 protocol of the challenge's per-case numbers. Undefined values (both masks empty) are left out and `n`
    says how many values each statistic has."""

    def describe(subset: Sequence[Row]) -> Dict[str, Any]:
        targets = list(_targets(subset).values())
        best = {id(row): max(r["dice"] for r in target[: row["click"]]) for target in targets for row in target}
        entry: Dict[str, Any] = {
            "cases": len({row["case"] for row in subset}),
            "per_click": {
                str(c): {
                    "dice": _stats([r["dice"] for r in subset if r["click"] == c]),
                    "nsd": _stats([r["nsd"] for r in subset if r["click"] == c]),
                    "best_dice": _stats([best[id(r)] for r in subset if r["click"] == c]),
                }
                for c in range(1, clicks + 1)
            },
            "noc": {},
        }
        for threshold in NOC_DICE:
            reached = [clicks_to_reach([r["dice"] for r in target], threshold) for target in targets]
            entry["noc"][f"{round(threshold * 100)}"] = {
                **_stats([float(clicks if n is None else n) for n in reached]),
                "not_reached": sum(n is None for n in reached),
            }
        if protocol == "cvpr25":
            table = cvpr25_table(subset)
            entry["cvpr25"] = {key: _stats([case[key] for case in table]) for key in CVPR25_COLUMNS[2:7]}
            entry["cvpr25"]["over_time_limit"] = sum(c["total_seconds"] > c["time_limit_seconds"] for c in table)
        return entry

    labels = sorted({row["label"] for row in rows})
    return {
        **describe(rows),
        "per_label": {
            str(value): {
                "name": next((row["label_name"] for row in rows if row["label"] == value), ""),
                **describe([row for row in rows if row["label"] == value]),
            }
            for value in labels
        },
    }


def plot(summary: Dict[str, Any], clicks: int, path: Path, caption: str = "") -> None:
    """Mean Dice and mean NSD (bands: one std) against the number of clicks, overall and per label; the paper's best
    Dice so far dotted; `caption` (checkpoint, protocol, seed, cases) under the panels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    x = np.arange(1, clicks + 1)

    def series(per_click: Dict[str, Any], metric: str, key: str = "mean") -> np.ndarray:
        return np.array([per_click[str(c)][metric][key] for c in x], dtype=np.float64)

    figure, panels = pyplot.subplots(1, 2, figsize=(11, 4.8), dpi=120)
    for axes, metric, title in zip(panels, ("dice", "nsd"), ("Dice", "NSD")):
        mean, std = series(summary["per_click"], metric), series(summary["per_click"], metric, "std")
        axes.plot(x, mean, "o-", color="black", linewidth=2, label=f"all labels ({summary['cases']} cases)")
        axes.fill_between(x, mean - std, mean + std, color="black", alpha=0.12)
        if metric == "dice":
            axes.plot(x, series(summary["per_click"], "best_dice"), ":", color="black", label="best Dice so far")
        if len(summary["per_label"]) > 1:
            for value, entry in summary["per_label"].items():
                axes.plot(x, series(entry["per_click"], metric), ".--", linewidth=1,
                          label=entry["name"] or f"label {value}")
        axes.set_xlabel("number of clicks")
        axes.set_ylabel(title)
        axes.set_xticks(x)
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.set_title(f"{title} against clicks (mean ± std)")
        axes.legend(loc="lower right", fontsize="small")
    figure.suptitle("SAM-Med3D")
    figure.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize="small", wrap=True)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    write_atomic(path, lambda stream: stream.write(buffer.getvalue()), binary=True)
