"""Click rules against independent, brute-force re-expressions of the references' rules (uniform draws of a legacy
RandomState in C order, the "ritm" depth and tie rules, the challenge's largest-component centre and its seeded
tie-break), which protocol uses which rule, SciPy giving the same clicks as edt/cc3d, and the fine-tuning loop's
batched form. Torch-free (CI runs it under Python 3.9 without the eval extra)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from scipy import ndimage

from SAMMed3DLib.evaluation import clicks
from SAMMed3DLib.evaluation.clicks import PROTOCOLS, SimulatedClick, next_click, next_clicks


def blobs(rng: np.random.Generator, shape, count: int, low: float, high: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    out = np.zeros(shape, bool)
    for _ in range(count):
        centre, radii = rng.uniform(0, shape), rng.uniform(low, high, 3)
        out |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
    return out


def mask_pairs(seed: int, count: int, shape=(14, 17, 15)):
    """Random truth/prediction pairs: blobs, shifted and noisy copies, boxes with many tied depths, empty ones."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        truth = blobs(rng, shape, int(rng.integers(1, 4)), 1.5, 6)
        kind = n % 5
        if kind == 0:
            prediction = None
        elif kind == 1:
            prediction = np.roll(truth, tuple(int(v) for v in rng.integers(-3, 4, 3)), axis=(0, 1, 2))
        elif kind == 2:
            prediction = truth ^ (rng.random(shape) < 0.05)
        elif kind == 3:
            prediction = (truth & ~blobs(rng, shape, 2, 2, 5)) | blobs(rng, shape, 2, 2, 5)
        else:
            truth = np.zeros(shape, bool)
            truth[2:2 + 2 * int(rng.integers(1, 4)), 3:9, 4:12] = True
            prediction = np.zeros(shape, bool)
            prediction[8:14, 9:15, 1:7] = True
        yield truth, prediction


def brute_squared_depth(mask: np.ndarray) -> np.ndarray:
    """Squared distance in voxels of each True voxel to the nearest False voxel of the array padded by one False
    voxel."""
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded)
    depth = np.zeros(mask.shape, np.int64)
    for index in np.argwhere(mask):
        point = index + 1
        depth[tuple(index)] = ((outside - point) ** 2).sum(axis=1).min()
    return depth


def reference_draw(candidates: np.ndarray, rng: np.random.RandomState) -> tuple:
    """What the references do: torch.argwhere / np.argwhere (C order), then np.random.randint(len)."""
    found = np.argwhere(candidates)
    return tuple(int(v) for v in found[rng.randint(len(found))])


def reference_ritm(truth, prediction, rng):
    """The references' rule on float distances, as they compute it: the larger maximum decides the side (strictly),
    then depth > max / 2."""
    prediction = np.zeros_like(truth) if prediction is None else prediction
    fn, fp = truth & ~prediction, prediction & ~truth
    depth_fn, depth_fp = np.sqrt(brute_squared_depth(fn)), np.sqrt(brute_squared_depth(fp))
    chosen = depth_fn if depth_fn.max() > depth_fp.max() else depth_fp
    index = reference_draw(chosen > max(depth_fn.max(), depth_fp.max()) / 2.0, rng)
    return SimulatedClick(index, bool(fn[index]))


def reference_random(truth, prediction, rng):
    prediction = np.zeros_like(truth) if prediction is None else prediction
    fn, fp = truth & ~prediction, prediction & ~truth
    index = reference_draw(fn | fp, rng)
    return SimulatedClick(index, bool(fn[index]))


def reference_centre(truth, prediction):
    """The challenge's block: scipy's 26-connected labels, bincount, argmax, depth of the component with everything
    outside it as background, then np.random.seed(42) and np.random.choice over the deepest voxels."""
    prediction = np.zeros_like(truth) if prediction is None else prediction
    if not (truth != prediction).any():
        return None  # the challenge adds no click for a perfect class
    labels, _ = ndimage.label(truth != prediction, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.flat)
    sizes[0] = 0
    component = labels == np.argmax(sizes)
    depth = brute_squared_depth(component)
    deepest = np.argwhere(depth == depth.max())
    np.random.seed(42)
    index = tuple(int(v) for v in deepest[np.random.choice(len(deepest))])
    return SimulatedClick(index, bool(truth[index]))


def test_protocols_use_the_published_rules_in_order():
    assert list(PROTOCOLS) == ["paper", "cvpr25", "random", "ritm"]
    assert [PROTOCOLS["paper"].rule(n) for n in range(1, 6)] == ["ritm", "ritm", "random", "random", "random"]
    assert {PROTOCOLS["cvpr25"].rule(n) for n in range(1, 9)} == {"centre"}
    assert {PROTOCOLS["random"].rule(n) for n in range(1, 9)} == {"random"}
    assert {PROTOCOLS["ritm"].rule(n) for n in range(1, 9)} == {"ritm"}
    # The paper's click functions threshold the raw logits at 0.5; everything else at 0, like the scored mask.
    assert [p.logit_threshold for p in PROTOCOLS.values()] == [0.5, 0.0, 0.0, 0.0]


def test_random_rule_equals_a_legacy_randomstate_draw_in_c_order():
    for seed, (truth, prediction) in enumerate(mask_pairs(0, 40)):
        ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
        for _ in range(3):  # several draws from one stream, as one case's clicks are
            assert clicks.random_click(truth, prediction, ours) == reference_random(truth, prediction, theirs)


def test_random_rule_is_uniform_over_the_error_region_and_positive_iff_false_negative():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:5, 2:5, 2:5] = True
    prediction = truth.copy()
    prediction[2, 2, 2:5] = False  # 3 false negatives
    prediction[8, 8, 8] = True  # 1 false positive
    rng = np.random.RandomState(1)
    positives = 0
    for _ in range(4000):
        click = next_click("random", 2, truth, prediction, rng)
        if click.positive:
            assert click.index[:2] == (2, 2) and 2 <= click.index[2] < 5
            positives += 1
        else:
            assert click.index == (8, 8, 8)
    assert 2880 < positives < 3120  # 3/4 of 4000, > 4 sigma margin


def test_ritm_rule_equals_the_brute_force_rule():
    for seed, (truth, prediction) in enumerate(mask_pairs(1, 60)):
        ours = clicks.ritm_click(truth, prediction, np.random.RandomState(seed))
        assert ours == reference_ritm(truth, prediction, np.random.RandomState(seed)), seed


def test_ritm_tie_goes_to_the_false_positives_and_takes_the_deeper_half():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:7, 2:7, 2:7] = True  # a 5^3 cube missed entirely: depth 3
    prediction = np.zeros_like(truth)
    prediction[10:15, 10:15, 10:15] = True  # a 5^3 cube predicted wrongly: the same depth
    seen = set()
    for seed in range(200):
        click = clicks.ritm_click(truth, prediction, np.random.RandomState(seed))
        assert not click.positive and prediction[click.index]
        seen.add(click.index)
    # depth > 3/2: the 3^3 inner voxels (depth 2 and 3), not the cube's surface (depth 1)
    assert seen == set(itertools.product(range(11, 14), repeat=3))
    prediction[10, 10:15, 10:15] = False  # the false positives are now shallower: the missed cube wins
    for seed in range(20):
        click = clicks.ritm_click(truth, prediction, np.random.RandomState(seed))
        assert click.positive and click.index in set(itertools.product(range(3, 6), repeat=3))


def test_centre_rule_equals_the_challenges_block():
    for truth, prediction in mask_pairs(2, 50):
        assert clicks.centre_click(truth, prediction) == reference_centre(truth, prediction)


def test_centre_rule_takes_the_first_of_equal_components_and_the_seeded_tie_break():
    truth = np.zeros((9, 9, 20), bool)
    truth[1:6, 1:6, 1:6] = True  # two equal cubes: the first in C order is chosen
    truth[1:6, 1:6, 10:15] = True
    assert clicks.centre_click(truth, None) == SimulatedClick((3, 3, 3), True)
    slab = np.zeros((6, 12, 12), bool)
    slab[1:5, 1:11, 1:11] = True  # depth 2 on a 2 x 8 x 8 block of tied voxels
    click = clicks.centre_click(slab, None)
    tied = np.argwhere(brute_squared_depth(slab) == 4)
    assert len(tied) == 128 and click.index == tuple(tied[np.random.RandomState(42).randint(128)])
    # the challenge's np.random.seed(42); np.random.choice(n) is RandomState(42).randint(n)
    for n in (1, 2, 7, 72, 1000, 123457):
        np.random.seed(42)
        assert np.random.choice(n) == np.random.RandomState(42).randint(n)


def test_the_challenges_downsampled_depth_for_large_component_boxes(monkeypatch):
    """The branch the challenge takes above 60M voxels of padded box, tried on small boxes by lowering the limit to 0:
    2x2x2 maximum of the padded box (skimage's block_reduce, zero-filled), SciPy's depth on that grid, repeated."""
    rng = np.random.default_rng(5)
    monkeypatch.setattr(clicks, "LARGE_BOX_VOXELS", 0)  # every box is "large"
    for _ in range(20):
        truth = blobs(rng, (17, 21, 19), 2, 2, 7)
        prediction = truth ^ blobs(rng, (17, 21, 19), 1, 1, 3)
        labels, _ = ndimage.label(truth != prediction, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.flat)
        sizes[0] = 0
        component = labels == np.argmax(sizes)
        found = np.argwhere(component)
        low, high = found.min(0), found.max(0) + 1
        shape = high - low
        pad = np.maximum((shape * 0.25).astype(int), 1)
        crop = np.zeros(shape + 2 * pad, np.uint8)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        crop[tuple(slice(p, p + s) for p, s in zip(pad, shape))] = component[box]
        even = [n + n % 2 for n in crop.shape]
        coarse = np.zeros([n // 2 for n in even], np.uint8)
        for offset in itertools.product((0, 1), repeat=3):  # block maximum, written out
            part = crop[tuple(slice(o, None, 2) for o in offset)]
            view = coarse[tuple(slice(0, n) for n in part.shape)]
            np.maximum(view, part, out=view)
        fine = ndimage.distance_transform_edt(coarse).repeat(2, 0).repeat(2, 1).repeat(2, 2)
        depth = np.zeros(component.shape)
        depth[box] = fine[tuple(slice(p, p + s) for p, s in zip(pad, shape))]
        depth *= component
        if depth.sum() == 0:
            depth = component.astype(float)
        deepest = np.argwhere(depth == depth.max())
        expected = tuple(int(v) for v in deepest[np.random.RandomState(42).randint(len(deepest))])
        assert clicks.centre_click(truth, prediction) == SimulatedClick(expected, bool(truth[expected]))


def test_scipy_gives_the_same_clicks_as_edt_and_cc3d(monkeypatch):
    pytest.importorskip("edt")
    pytest.importorskip("cc3d")
    pairs = list(mask_pairs(3, 30, shape=(30, 34, 26)))

    def all_clicks():
        out = []
        for seed, (truth, prediction) in enumerate(pairs):
            out.append(clicks.centre_click(truth, prediction))
            out.append(clicks.ritm_click(truth, prediction, np.random.RandomState(seed)))
            box, depth = clicks.boxed_depth(truth)
            out.append((box, depth.tolist()))
        return out

    accelerated = all_clicks()
    monkeypatch.setitem(sys.modules, "edt", None)  # import edt / cc3d now raise ImportError
    monkeypatch.setitem(sys.modules, "cc3d", None)
    assert all_clicks() == accelerated


def test_a_perfect_prediction_gets_no_click_and_only_the_box_around_the_masks_matters():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 3:9, 10:18] = True
    for protocol in PROTOCOLS:
        assert next_click(protocol, 3, truth, truth, np.random.RandomState(0)) is None
        assert next_click(protocol, 1, np.zeros_like(truth), None, np.random.RandomState(0)) is None
    prediction = np.roll(truth, 2, axis=0)
    large_truth, large_prediction = np.zeros((60, 50, 70), bool), np.zeros((60, 50, 70), bool)
    large_truth[30:50, 10:30, 40:60], large_prediction[30:50, 10:30, 40:60] = truth, prediction
    for protocol, number in itertools.product(PROTOCOLS, (1, 3)):
        small = next_click(protocol, number, truth, prediction, np.random.RandomState(4))
        large = next_click(protocol, number, large_truth, large_prediction, np.random.RandomState(4))
        assert large.positive == small.positive
        assert large.index == (small.index[0] + 30, small.index[1] + 10, small.index[2] + 40)


def test_batched_training_clicks_on_torch_masks_match_one_by_one_draws():
    torch = pytest.importorskip("torch")
    truth = torch.zeros((4, 1, 16, 16, 16))
    for b in range(4):
        truth[b, 0, b : b + 6, 2:10, 3 + b : 12] = 1
    prediction = torch.randn(4, 1, 16, 16, 16) > 0
    prediction[3, 0] = truth[3, 0] > 0  # perfect: a positive click drawn from the truth
    points, labels = next_clicks(truth, prediction, np.random.default_rng(5))
    assert points.shape == (4, 3) and points.dtype == np.int64 and labels.dtype == np.int64
    expected = np.random.default_rng(5)
    for b in range(3):
        click = clicks.random_click(truth[b, 0].numpy() > 0, prediction[b, 0].numpy(), expected)
        assert tuple(points[b]) == click.index and labels[b] == int(click.positive)
    inside = np.argwhere(truth[3, 0].numpy() > 0)
    assert tuple(points[3]) == tuple(inside[expected.integers(len(inside))]) and labels[3] == 1
    first_points, first_labels = next_clicks(truth, None, np.random.default_rng(0))
    assert first_labels.tolist() == [1, 1, 1, 1]
    assert all(truth[b, 0][tuple(first_points[b])] == 1 for b in range(4))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3D masks"):
        next_click("random", 1, np.ones((4, 4)), None, np.random.RandomState(0))
    with pytest.raises(ValueError, match="differs"):
        next_click("random", 1, np.ones((4, 4, 4)), np.ones((4, 4, 5)), np.random.RandomState(0))
    with pytest.raises(ValueError, match="unknown click protocol 'center'"):
        next_click("center", 1, np.ones((4, 4, 4)), None, np.random.RandomState(0))
    with pytest.raises(ValueError, match="numbered from 1"):
        next_click("paper", 0, np.ones((4, 4, 4)), None, np.random.RandomState(0))
    with pytest.raises(ValueError, match="RandomState"):
        next_click("paper", 1, np.ones((4, 4, 4)), None, None)
    assert next_click("cvpr25", 1, np.ones((3, 3, 3)), None, None) == SimulatedClick((1, 1, 1), True)
    with pytest.raises(ValueError, match="both empty"):
        next_clicks(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.random.default_rng(0))
