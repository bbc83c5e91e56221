"""The threshold oracle on its own: the session, CLI, evaluation and effect tests lean on it, so it must do what its
docstring says on a patch whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.backends.predictor import LOGITS_SHAPE
from SAMMed3DLib.evaluation.metrics import dice
from SAMMed3DLib.testing.oracle import ThresholdPredictor

SIZE = 128


def _patch():
    """A normalised-looking patch with a bright ball (radius 14) and a bright slab, and their masks."""
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE]
    ball = (z - 40) ** 2 + (y - 64) ** 2 + (x - 64) ** 2 <= 14**2
    slab = (z >= 80) & (z < 100) & (y >= 20) & (y < 108) & (x >= 30) & (x < 60)
    image = np.random.default_rng(0).normal(0, 0.1, (SIZE,) * 3) + 3.0 * (ball | slab)
    return image.astype(np.float32)[None, None], ball, slab


def _mask(logits: np.ndarray) -> np.ndarray:
    """The coarse logits as a full-resolution mask, as the session pastes them (block upsampling suffices here)."""
    coarse = logits[0, 0] > 0
    factor = SIZE // coarse.shape[0]
    return coarse.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)


def _decode(oracle, embedding, point, label, prompt):
    return oracle.decode(embedding, np.array([[point]], np.float32), np.array([[label]], np.int64), prompt)


@pytest.fixture
def scene():
    image, ball, slab = _patch()
    oracle = ThresholdPredictor()
    return oracle, oracle.encode(image), ball, slab


def test_a_positive_click_on_a_bright_ball_gives_the_ball(scene):
    oracle, embedding, ball, slab = scene
    logits, iou = _decode(oracle, embedding, (40, 64, 64), 1, np.zeros(LOGITS_SHAPE, np.float32))
    assert logits.shape == LOGITS_SHAPE and logits.dtype == np.float32 and iou.shape == (1, 1)
    mask = _mask(logits)
    assert dice(mask, ball) > 0.85 and not (mask & slab).any()  # 4^3 blocks: the rim is within a block


def test_a_negative_click_removes_the_region_under_it(scene):
    oracle, embedding, ball, slab = scene
    both, _ = _decode(oracle, embedding, (40, 64, 64), 1, np.zeros(LOGITS_SHAPE, np.float32))
    both, _ = _decode(oracle, embedding, (90, 64, 45), 1, both)
    assert dice(_mask(both), ball | slab) > 0.85
    without_ball, _ = _decode(oracle, embedding, (40, 64, 64), 0, both)
    mask = _mask(without_ball)
    assert not (mask & ball).any() and dice(mask, slab) > 0.85


def test_a_rim_click_changes_nothing(scene):
    oracle, embedding, ball, _ = scene
    first, _ = _decode(oracle, embedding, (40, 64, 64), 1, np.zeros(LOGITS_SHAPE, np.float32))
    dark_rim = (40, 64, 64 + 16)  # just outside the ball: background intensity
    assert embedding[dark_rim] < 1.0
    after, _ = _decode(oracle, embedding, dark_rim, 0, first)
    np.testing.assert_array_equal(after, first)


def test_a_dark_positive_click_beside_an_object_adds_that_object(scene):
    """A rim click of the paper's protocol: dark, but the mask prompt says how bright the object is."""
    oracle, embedding, ball, slab = scene
    first, _ = _decode(oracle, embedding, (40, 64, 64), 1, np.zeros(LOGITS_SHAPE, np.float32))
    beside_the_slab = (90, 64, 62)
    assert embedding[beside_the_slab] < 1.0
    logits, _ = _decode(oracle, embedding, beside_the_slab, 1, first)
    assert dice(_mask(logits), ball | slab) > 0.85
