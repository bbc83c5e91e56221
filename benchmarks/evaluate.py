"""Where the time of a dataset evaluation goes: one case x 5 clicks under each protocol.

    python benchmarks/evaluate.py [--clicks 5] [--threads 2] [--device cpu]

The 512 x 512 x 300 CT of benchmarks/session.py (0.7 x 0.7 x 1 mm) with two labels: the lesion (a 20 mm ball) and
one lung (8.5M voxels, a long object that touches the volume's top and bottom), and the real vit_b_ori network
with random weights (`build_sam_med3d()`). `runner.evaluate_case` runs as `sammed3d evaluate` runs it; its parts
are timed in place: the model (`InteractiveSession.add_click`: resampling, encoder, decoder, paste-back), the click
simulation (`next_click`, and for the paper the mask at logits > 0.5), the metrics (Dice, NSD) and the rest
(boxes, volumes). Target: click simulation + metrics below the model's time per click. Each click's rules run again
with SciPy alone (without edt and cc3d, the eval extra's speed-ups): the same click, and the ratio of the times.
Random weights predict large ragged masks that touch the ROI's faces, so the session adds ROIs (more encodes) and
the metrics see far larger surfaces than a trained network's: a worst case for both.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from session import synthetic_ct

from SAMMed3DLib.backends.torch_predictor import TorchPredictor, select_device
from SAMMed3DLib.datasets import Case
from SAMMed3DLib.evaluation import runner
from SAMMed3DLib.evaluation.clicks import PROTOCOLS
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import InteractiveSession
from SAMMed3DLib.model import build_sam_med3d

spent = defaultdict(float)


def timed(part: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - started

    return wrapper


@contextmanager
def scipy_alone():
    """Imports of edt and cc3d fail inside: the click rules fall back to SciPy."""
    saved = {name: sys.modules.get(name) for name in ("edt", "cc3d")}
    sys.modules.update(dict.fromkeys(saved))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def rules_both_ways(next_click):
    """`next_click` timed with edt/cc3d ("rules") and again with SciPy alone ("rules, SciPy"): the same click."""

    def wrapper(protocol, number, truth, seen, rng):
        twin = copy.deepcopy(rng)  # the same draws for the second run
        started = time.perf_counter()
        click = next_click(protocol, number, truth, seen, rng)
        spent["rules"] += time.perf_counter() - started
        with scipy_alone():
            started = time.perf_counter()
            again = next_click(protocol, number, truth, seen, twin)
            spent["rules, SciPy"] += time.perf_counter() - started
        assert again == click, (click, again)
        return click

    return wrapper


def write_case(folder: Path) -> Case:
    volume = synthetic_ct()
    array = volume.array
    k, j, i = np.ogrid[tuple(slice(0, n) for n in array.shape)]
    x, y, z = (i - 256) * 0.7, (j - 256) * 0.7, (k - 150) * 1.0  # synthetic_ct's own coordinates
    label = np.zeros(array.shape, np.uint8)
    label[(x - 70) ** 2 + (y + 10) ** 2 + (z - 5) ** 2 <= 20**2] = 1  # the lesion
    lung = (((np.abs(x) - 75) / 55) ** 2 + (y / 80) ** 2 <= 1) & (x < 0) & ((x / 170) ** 2 + (y / 120) ** 2 <= 1)
    label[np.broadcast_to(lung, array.shape)] = 2  # one lung, on every slice
    paths = []
    for name, values in (("image", array), ("label", label)):
        paths.append(folder / f"{name}.nrrd")
        sitk.WriteImage(Volume(values, volume.ijk_to_ras).to_sitk(), str(paths[-1]))
    return Case("ct", paths[0], paths[1], "ct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = TorchPredictor(build_sam_med3d(), select_device(args.device))

    runner.next_click = rules_both_ways(runner.next_click)
    runner.dice = timed("metrics", runner.dice)
    runner.nsd = timed("metrics", runner.nsd)
    InteractiveSession.add_click = timed("model", InteractiveSession.add_click)
    InteractiveSession.mask_above = timed("logits > 0.5", InteractiveSession.mask_above)

    with tempfile.TemporaryDirectory() as folder:
        case = write_case(Path(folder))
        labels = Volume.read(case.label).array
        print(f"case {Volume.read(case.image).array.shape[::-1]} voxels; lesion {int((labels == 1).sum())} voxels, "
              f"lung {int((labels == 2).sum())} voxels; vit_b_ori random weights on {predictor.device}, "
              f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")
        runner.evaluate_case(predictor, case, runner.Settings(click_count=1), {})  # warm-up: first-call allocations
        print("ms per click: model | click simulation (rules + the paper's logits > 0.5 mask) | metrics | rest; "
              "(click simulation + metrics) / model; the rules with SciPy alone (same clicks)")
        for protocol in PROTOCOLS:
            spent.clear()
            started = time.perf_counter()
            settings = runner.Settings(click_count=args.clicks, protocol=protocol)
            rows = runner.evaluate_case(predictor, case, settings, {})
            total = time.perf_counter() - started
            ms = {part: 1000 * value / len(rows) for part, value in spent.items()}
            clicks = ms["rules"] + ms.get("logits > 0.5", 0.0)
            rest = 1000 * total / len(rows) - ms["model"] - clicks - ms["metrics"] - ms["rules, SciPy"]
            print(f"{protocol:7} {len(rows):3d} clicks: model {ms['model']:6.0f} | click simulation {clicks:5.0f} "
                  f"({ms['rules']:.0f} + {ms.get('logits > 0.5', 0.0):.0f}) | metrics {ms['metrics']:5.0f} | rest "
                  f"{rest:4.0f};  {(clicks + ms['metrics']) / ms['model']:.2f};  SciPy alone {ms['rules, SciPy']:.0f} "
                  f"({ms['rules, SciPy'] / ms['rules']:.1f}x)")


if __name__ == "__main__":
    main()
