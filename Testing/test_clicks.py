"""Click simulation: the paper's uniform protocol (distribution, sign, determinism), the interior-most variant, and
the batched form the fine-tuning loop uses on torch masks."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.evaluation.clicks import SimulatedClick, next_click, next_clicks


def test_first_click_is_uniform_over_the_foreground():
    truth = np.zeros((6, 7, 8), np.uint8)
    voxels = [(1, 2, 3), (4, 5, 6), (5, 0, 7), (0, 6, 0)]
    for v in voxels:
        truth[v] = 1
    rng = np.random.default_rng(0)
    counts = {v: 0 for v in voxels}
    for _ in range(4000):
        click = next_click(truth, None, rng)
        assert click.positive
        counts[click.index] += 1
    assert set(counts) == set(voxels)
    assert all(880 < n < 1120 for n in counts.values()), counts  # 1000 expected, > 4 sigma margin


def test_next_click_is_uniform_over_the_error_region_and_positive_iff_false_negative():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:5, 2:5, 2:5] = True  # 27 voxels
    prediction = truth.copy()
    prediction[2, 2, 2:5] = False  # 3 false negatives
    prediction[8, 8, 8] = True  # 1 false positive
    rng = np.random.default_rng(1)
    positives = 0
    for _ in range(4000):
        click = next_click(truth, prediction, rng)
        if click.positive:
            assert click.index[:2] == (2, 2) and 2 <= click.index[2] < 5
            positives += 1
        else:
            assert click.index == (8, 8, 8)
    assert 2880 < positives < 3120  # 3/4 of 4000


def test_same_seed_same_clicks_and_a_perfect_prediction_gets_a_harmless_positive_click():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 3:9, 10:18] = True
    prediction = np.roll(truth, 2, axis=0)
    draw = lambda seed: [next_click(truth, prediction, np.random.default_rng(seed)) for _ in range(3)]  # noqa: E731
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    click = next_click(truth, truth, np.random.default_rng(0))
    assert click.positive and truth[click.index]
    with pytest.raises(ValueError, match="both empty"):
        next_click(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.random.default_rng(0))
    stray = np.pad(np.ones((1, 1, 1)), ((1, 2),) * 3)
    assert next_click(np.zeros((4, 4, 4)), stray, np.random.default_rng(0)) == SimulatedClick((1, 1, 1), False)


def test_ritm_click_is_the_interior_most_voxel_of_the_larger_error_region():
    truth = np.zeros((30, 30, 30), bool)
    truth[2:9, 4:11, 20:27] = True  # a 7^3 cube: its interior-most voxel is its centre
    assert next_click(truth, None, protocol="ritm") == SimulatedClick((5, 7, 23), True)
    prediction = truth.copy()
    prediction[20:27, 20:27, 2:9] = True  # 343 false-positive voxels, none missing: negative at its centre
    prediction[2:4, 4:11, 20:27] = False  # 98 false negatives: the smaller region
    assert next_click(truth, prediction, protocol="ritm") == SimulatedClick((23, 23, 5), False)


def test_batched_clicks_on_torch_masks_match_one_by_one_draws():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    truth = torch.zeros((4, 1, 16, 16, 16))
    for b in range(4):
        truth[b, 0, b : b + 6, 2:10, 3 + b : 12] = 1
    logits = torch.randn(4, 1, 16, 16, 16)
    prediction = logits > 0
    points, labels = next_clicks(truth, prediction, np.random.default_rng(5))
    assert points.shape == (4, 3) and points.dtype == np.int64 and labels.dtype == np.int64
    expected = np.random.default_rng(5)
    for b in range(4):
        click = next_click(truth[b, 0], prediction[b, 0], expected)
        assert tuple(points[b]) == click.index and labels[b] == int(click.positive)
        t, p = truth[b, 0].numpy() > 0, prediction[b, 0].numpy()
        assert (t & ~p)[click.index] == click.positive and (t ^ p)[click.index]
    first_points, first_labels = next_clicks(truth, None, rng)
    assert labels.tolist() != [] and first_labels.tolist() == [1, 1, 1, 1]
    assert all(truth[b, 0][tuple(first_points[b])] == 1 for b in range(4))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3D masks"):
        next_click(np.ones((4, 4)), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="differs"):
        next_click(np.ones((4, 4, 4)), np.ones((4, 4, 5)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown click protocol"):
        next_click(np.ones((4, 4, 4)), None, np.random.default_rng(0), protocol="center")
    with pytest.raises(ValueError, match="Generator"):
        next_click(np.ones((4, 4, 4)), None, None)
