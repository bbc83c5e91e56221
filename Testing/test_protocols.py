"""Our click rules and metrics against the reference code's own results on real label maps (pyradiomics' lesions,
AAL atlas structures on the MNI template) and given predictions: Testing/data/reference_clicks.json, produced once
by running the references unmodified (Testing/data/README.md says how). Torch-free: CI runs it under Python 3.9
without edt and cc3d too, so SciPy's path is checked against the references as well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from protocol_cases import (
    ANISOTROPIC_MM,
    INFER_UTILS_SEED,
    PAPER_SEEDS,
    PAPER_SEQUENCE,
    objects,
    predictions,
)

from SAMMed3DLib.evaluation import clicks
from SAMMed3DLib.evaluation.metrics import dice, nsd

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_clicks.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cases(pyradiomics_data, mricron_templates):
    """(object, its truth, spacing, given predictions, the reference's record), in the file's order."""
    found = []
    for (name, truth, spacing), record in zip(objects(pyradiomics_data, mricron_templates), REFERENCE["objects"]):
        assert (name, list(truth.shape), int(truth.sum())) == (record["object"], record["shape"], record["voxels"])
        found.append((name, truth, spacing, predictions(truth), record))
    assert len(found) == len(REFERENCE["objects"]) == 28
    return found


def as_list(click):
    return None if click is None else [*click.index, int(click.positive)]


def sequence(protocol: str, truth, given, rng, rule=None):
    """Clicks 1..5 of a protocol on the given predictions (PAPER_SEQUENCE), drawn from one stream."""
    placed = []
    for number, name in enumerate(PAPER_SEQUENCE, 1):
        if rule is None:
            placed.append(as_list(clicks.next_click(protocol, number, truth, given[name], rng)))
        else:
            placed.append(as_list(rule(truth, given[name], rng)))
    return placed


def test_the_papers_clicks_equal_validation_py_on_real_labels(cases):
    compared = 0
    for name, truth, _, given, record in cases:
        for seed in PAPER_SEEDS:
            assert sequence("paper", truth, given, np.random.RandomState(seed)) == record["paper"][str(seed)], name
            compared += 5
        # validation.py -pm random: get_next_click3D_torch_2 for every click
        ours = sequence("", truth, given, np.random.RandomState(PAPER_SEEDS[0]), clicks.random_click)
        assert ours == record["paper_random"], name
        # a perfect prediction: the reference's functions raise, we place no click
        assert record["paper_perfect"] == ["raise", "raise"]
        assert clicks.ritm_click(truth, truth, np.random.RandomState(0)) is None
        assert clicks.random_click(truth, truth, np.random.RandomState(0)) is None
    assert compared == 280


def test_the_current_references_random_and_ritm_clicks_equal_infer_utils_on_real_labels(cases):
    for name, truth, _, given, record in cases:
        for protocol in ("random", "ritm"):
            ours = sequence(protocol, truth, given, np.random.RandomState(INFER_UTILS_SEED))
            assert ours == record[f"infer_utils_{protocol}"], (name, protocol)


def test_the_challenges_clicks_equal_cvpr25_iter_eval_on_real_labels(cases):
    ties = 0
    for name, truth, _, given, record in cases:
        for label, prediction in given.items():
            assert as_list(clicks.centre_click(truth, prediction)) == record["cvpr25"][label], (name, label)
        _, depth = clicks.boxed_depth(truth)  # the first click: the centre of the largest ground-truth component
        ties += int((depth == depth.max()).sum() > 1)
    assert ties >= 5  # the seeded tie-break among equally deep voxels was exercised


def test_dice_and_nsd_equal_the_challenges_surface_dice(cases):
    """Our Dice and NSD (1 mm: the current reference; 2 mm: the challenge) against SurfaceDice.py of the challenge
    on the real spacings (anisotropic CT and MR) and, for the 1 mm atlas, a made-up anisotropic one."""
    worst = 0.0
    for name, truth, spacing, given, record in cases:
        for label, expected in record["metrics"].items():
            spacings = [spacing] + ([ANISOTROPIC_MM] if name.startswith("aal:") else [])
            for values, used in zip(expected, spacings):
                assert values["spacing"] == pytest.approx(list(used))
                prediction = given[label]
                ours = (dice(prediction, truth), nsd(prediction, truth, used, 1.0), nsd(prediction, truth, used, 2.0))
                theirs = (values["dsc"], values["nsd_1mm"], values["nsd_2mm"])
                worst = max(worst, *(abs(a - b) for a, b in zip(ours, theirs)))
    assert worst < 1e-6, worst
