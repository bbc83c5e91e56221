"""Evaluate a checkpoint on a labelled dataset with the paper's click protocol.

Images and labels are paired by file name (case.nii.gz in both folders, or nnU-Net's imagesTr/case_0000.nii.gz with
labelsTr/case.nii.gz; label names come from a dataset.json next to them). For every case, label value and click
count 1..N, clicks are simulated as in the paper (random: first click uniform in the object, each next one uniform
in the error region, positive iff it falls on a missed voxel; ritm: the interior-most voxel of the larger error
region) and the full-resolution mask is scored with Dice and NSD at 1 mm on the original grid.

Writes to --output: metrics.csv (one row per case x label x click: case,label,label_name,click,dice,nsd,positive,
i,j,k,seconds; empty dice/nsd = undefined because both masks are empty), summary.json (mean and std per click
count, overall and per label; the cases without foreground), dice_vs_clicks.png, and cases/*.csv. Results depend
only on the data, checkpoint and --seed. An interrupted run continues where it stopped: finished cases are
skipped. run.json and summary.json record the checkpoint's SHA256, the software, backend and device of each run and
every setting; continuing with other settings or another checkpoint is refused. Every label map is checked before
the model loads: whole numbers >= 0, not the image itself, on the image's grid.

examples:
  sammed3d evaluate --images Dataset003_Liver/imagesTr --labels Dataset003_Liver/labelsTr \\
      --checkpoint turbo --output results/liver
  sammed3d evaluate --images imgs --labels gts --checkpoint turbo --output out --clicks 5 --labels-only 1,2 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from SAMMed3DLib.commands import _common
from SAMMed3DLib.commands._common import add_model_arguments, positive_int
from SAMMed3DLib.commands.messages import plural
from SAMMed3DLib.errors import OutputIsInput, SAMMed3DError
from SAMMed3DLib.evaluation.clicks import PROTOCOLS
from SAMMed3DLib.files import check_writable, same_file

HELP = "Dice and NSD against the number of clicks on a labelled dataset (the paper's protocol)"


def _label_list(text: str) -> List[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of label values like 1,2,5") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: label values are integers >= 1")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of images")
    parser.add_argument("--labels", required=True, type=Path, metavar="DIR", help="folder of label images")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the results")
    parser.add_argument("--clicks", type=positive_int, default=10, metavar="N", help="clicks per object (default: 10)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="random",
                        help="click simulation (default: random, the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the click simulation (default: 0)")
    parser.add_argument("--labels-only", type=_label_list, metavar="1,2,...", help="evaluate only these label values")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from SAMMed3DLib import provenance
    from SAMMed3DLib.evaluation.runner import (
        Settings,
        cases_to_do,
        check_cases,
        evaluate,
        pair_cases,
        require_packages,
    )

    require_packages()
    for flag, folder in (("--images", args.images), ("--labels", args.labels)):
        if not folder.is_dir():
            raise SAMMed3DError(f"{flag} {folder}: no such folder")
        if same_file(args.output, folder):
            raise OutputIsInput(args.output, folder.resolve(), f"{flag[2:-1]} folder")
    if same_file(args.images, args.labels):
        raise SAMMed3DError(f"--labels {args.labels} is the --images folder; give the folder of the label maps")
    check_writable(args.output, folder=True)
    settings = Settings(click_count=args.clicks, protocol=args.protocol, seed=args.seed, labels_only=args.labels_only,
                        modality=args.modality)
    # Folder and label-map problems show before a checkpoint is downloaded or loaded.
    todo = cases_to_do(pair_cases(args.images, args.labels), args.output)
    with tqdm(total=len(todo), unit="case", desc="check labels", file=sys.stderr, delay=0.5, leave=False) as bar:
        checked = check_cases(todo, settings, on_case=lambda case, done, total: bar.update(done - bar.n))
    model = _common.resolve_model(args)
    predictor = _common.build_predictor(args, model)
    checkpoint = provenance.checkpoint(model, args.checkpoint, predictor)
    with tqdm(unit="click", desc="evaluate", file=sys.stderr, delay=0.5) as bar:

        def on_click(case, done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix_str(case.name)

        summary = evaluate(predictor, args.images, args.labels, args.output, settings, checkpoint=checkpoint,
                           on_click=on_click, checked=checked)
    shown = [c for c in (1, 3, 5, 10) if c <= args.clicks] or [args.clicks]
    parts = []
    for count in shown:
        mean = summary["per_click"][str(count)]["dice"]["mean"]
        parts.append(f"{plural(count, 'click')} {'n/a' if mean is None else f'{mean:.4f}'}")
    scored = f"{plural(summary['cases'], 'case')} scored"
    empty = summary["empty_cases"]
    if empty:
        listed = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        scored += f", {plural(len(empty), 'case')} without foreground not scored ({listed})"
    print(f"{scored}; mean Dice: " + ", ".join(parts), file=sys.stdout)
    print(f"results in {args.output} (metrics.csv, summary.json, dice_vs_clicks.png)", file=sys.stdout)
    return 0
