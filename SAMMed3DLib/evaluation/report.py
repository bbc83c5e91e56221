"""The tables and the plot of a dataset evaluation: per-case CSV rows, summary statistics, Dice against clicks."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import IO, Any, Dict, List, Sequence

import numpy as np

from SAMMed3DLib.files import write_atomic

COLUMNS = ("case", "label", "label_name", "click", "dice", "nsd", "positive", "i", "j", "k", "seconds")


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def write_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    def write(stream: IO[str]) -> None:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row[key]) for key in COLUMNS})

    write_atomic(path, write)


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
    write_atomic(path, lambda stream: stream.write(buffer.getvalue()), binary=True)
