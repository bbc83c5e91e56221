"""Evaluate a checkpoint on a labelled dataset with a published click protocol.

Images and labels are paired by file name (case.nii.gz in both folders, or nnU-Net's imagesTr/case_0000.nii.gz with
labelsTr/case.nii.gz; label names come from a dataset.json next to them). Every label value of every case is
segmented with simulated clicks 1..N, each fed to the model with the previous round's logits (as the model was
trained), and the full-resolution mask is scored on the original grid.

protocols (--protocol):
  paper   SAM-Med3D's paper (validation.py of uni-medical/SAM-Med3D, last at commit a92eddc): clicks 1 and 2 at a
          random voxel of the deeper half of the larger error region (FN or FP, by depth; a tie goes to FP), then
          uniform in the error region, drawn from the prediction at logits > 0.5. The paper's "Dice at N points"
          is the best Dice of clicks 1..N: summary.json's best_dice. The default.
  cvpr25  CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical Image Segmentation"
          (CVPR25_iter_eval.py of JunMa11/CVPR-MedSegFMCompetition, commit 748e862), without its optional box:
          each click at the centre of the largest 26-connected error component; NSD at 2 mm; writes the
          challenge's DSC AUC, NSD AUC, final DSC, final NSD and time per step per case (cvpr25_cases.csv).
          5 clicks unless --clicks says otherwise.
  random  the current reference (utils/infer_utils.py of uni-medical/SAM-Med3D, commit f3de1fa), method random:
          every click uniform in the error region (the first one in the object).
  ritm    the same reference, method ritm: every click in the deeper half of the larger error region.
A click is positive iff it falls on a missed voxel; when nothing is left to correct no click is placed.

Writes to --output: metrics.csv (one row per case x label x click: case,label,label_name,click,dice,nsd,truth_ml,
predicted_ml,positive,i,j,k,seconds; seconds = inference time of the click; empty dice/nsd = undefined because both
masks are empty; empty positive/i/j/k = no click), summary.json (mean, std, median and IQR per click count, NoC@85
and NoC@90, overall and per label; for cvpr25 the challenge's numbers; the cases without foreground),
dice_vs_clicks.png (Dice and NSD), and cases/*.csv. Results depend only on the data, checkpoint, protocol and
--seed. An interrupted run continues where it stopped: finished cases are skipped. run.json and summary.json record
the checkpoint's SHA256, the software, backend and device of each run and every setting; continuing with other
settings or another checkpoint is refused. Every label map is checked before the model loads: whole numbers >= 0,
not the image itself, on the image's grid. Several processes (one GPU each, or CPU processes): run it under
torchrun with the same arguments; the output folder must be shared by all of them.

examples:
  sammed3d evaluate --images Dataset003_Liver/imagesTr --labels Dataset003_Liver/labelsTr \\
      --checkpoint turbo --output results/liver
  sammed3d evaluate --images imgs --labels gts --checkpoint turbo --output out --protocol cvpr25
  sammed3d evaluate --images imgs --labels gts --checkpoint turbo --output out --clicks 5 --labels-only 1,2 --seed 1
  torchrun --nproc_per_node 4 -m SAMMed3DLib.cli evaluate --images imgs --labels gts --checkpoint turbo --output out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from SAMMed3DLib.commands import _common
from SAMMed3DLib.commands._common import add_model_arguments, positive_int
from SAMMed3DLib.commands.messages import plural
from SAMMed3DLib.errors import MissingPackages, OutputIsInput, SAMMed3DError
from SAMMed3DLib.evaluation.clicks import PROTOCOLS
from SAMMed3DLib.files import check_writable, same_file

HELP = "Dice and NSD against the number of clicks on a labelled dataset (the paper's or the CVPR 2025 protocol)"
PROGRESS_DELAY_S = 0.5  # the progress bars show only for a run that takes longer


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
    parser.add_argument("--clicks", type=positive_int, metavar="N",
                        help=f"clicks per object (default: {PROTOCOLS['cvpr25'].default_clicks} for cvpr25, else "
                             f"{PROTOCOLS['paper'].default_clicks})")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="paper",
                        help="the click simulation: a published protocol (see protocols above; default: paper)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the click simulation (default: 0)")
    parser.add_argument("--labels-only", type=_label_list, metavar="1,2,...", help="evaluate only these label values")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from SAMMed3DLib import distributed, provenance
    from SAMMed3DLib.evaluation.runner import (
        Settings,
        cases_to_do,
        check_cases,
        evaluate,
        pair_cases,
        require_packages,
    )

    require_packages()
    clicks = args.clicks or PROTOCOLS[args.protocol].default_clicks
    settings = Settings(click_count=clicks, protocol=args.protocol, seed=args.seed, labels_only=args.labels_only,
                        modality=args.modality)
    context = _join_processes(args)
    try:
        checked, checkpoint = None, None
        if context.is_main:  # folder and label-map problems show before a checkpoint is downloaded or loaded
            _check_folders(args)
            todo = cases_to_do(pair_cases(args.images, args.labels), args.output)
            with tqdm(total=len(todo), unit="case", desc="check labels", file=sys.stderr, delay=PROGRESS_DELAY_S,
                      leave=False) as bar:
                checked = check_cases(todo, settings, on_case=lambda case, done, total: bar.update(done - bar.n))
        model = distributed.main_first(context, lambda: _common.resolve_model(args, progress=context.is_main))
        predictor = _common.build_predictor(args, model)
        if context.is_main:
            checkpoint = provenance.checkpoint(model, args.checkpoint, predictor)
        with tqdm(unit="click", desc="evaluate", file=sys.stderr, delay=PROGRESS_DELAY_S,
                  disable=not context.is_main) as bar:

            def on_click(case, done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
                bar.set_postfix_str(case.name, refresh=False)  # shown from the first update after the delay

            summary = evaluate(predictor, args.images, args.labels, args.output, settings, checkpoint=checkpoint,
                               on_click=on_click, checked=checked, context=context)
    finally:
        distributed.cleanup(context)
    if summary is None:  # not rank 0
        return 0
    shown = [c for c in (1, 3, 5, 10) if c <= clicks] or [clicks]
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
    if args.protocol == "cvpr25":
        challenge = summary["cvpr25"]
        print("CVPR 2025 means: " + ", ".join(f"{key} {challenge[key]['mean']:.4f}" for key in
                                             ("dsc_auc", "nsd_auc", "final_dsc", "final_nsd")), file=sys.stdout)
    extra = ", cvpr25_cases.csv" if args.protocol == "cvpr25" else ""
    print(f"results in {args.output} (metrics.csv, summary.json, dice_vs_clicks.png{extra})", file=sys.stdout)
    return 0


def _join_processes(args: argparse.Namespace):
    """This process's place: alone, or one of torchrun's processes (one GPU each with the torch backend)."""
    from SAMMed3DLib import distributed
    from SAMMed3DLib.evaluation.runner import PROCESS_TIMEOUT, SINGLE_PROCESS

    if not distributed.launched():
        return SINGLE_PROCESS
    MissingPackages.require("evaluation on several processes", "torch", "torch")
    import torch

    from SAMMed3DLib.backends.torch_predictor import select_device

    if args.backend == "onnx" and args.device != "cpu":
        raise SAMMed3DError("under torchrun the onnx backend runs with --device cpu only (every process would take "
                            "the first GPU); use --backend torch for one GPU per process")
    device = select_device(args.device) if args.backend == "torch" else torch.device("cpu")
    # gloo also between GPUs: the processes exchange only the list of cases and wait for each other
    return distributed.setup(device, backend="gloo", timeout=PROCESS_TIMEOUT)


def _check_folders(args: argparse.Namespace) -> None:
    for flag, folder in (("--images", args.images), ("--labels", args.labels)):
        if not folder.is_dir():
            raise SAMMed3DError(f"{flag} {folder}: no such folder")
        if same_file(args.output, folder):
            raise OutputIsInput(args.output, folder.resolve(), f"{flag[2:-1]} folder")
    if same_file(args.images, args.labels):
        raise SAMMed3DError(f"--labels {args.labels} is the --images folder; give the folder of the label maps")
    check_writable(args.output, folder=True)
