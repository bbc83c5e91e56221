"""Per-segment prompt bookkeeping, with the real InteractiveSession and the threshold oracle predictor."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, InteractiveSession
from SAMMed3DLib.slicer.prompts import PromptBook
from SAMMed3DLib.testing.oracle import ThresholdPredictor


@pytest.fixture(scope="module")
def volume() -> Volume:
    """An oblique 40x48x36 volume at 2 mm with two bright boxes of different sizes, apart from each other."""
    array = np.zeros((36, 48, 40), np.int16)
    array[8:20, 10:30, 6:18] = 400  # object A (K,J,I)
    array[21:33, 31:45, 23:37] = 400  # object B
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), 0, -np.sin(angle)], [0, 1, 0], [np.sin(angle), 0, np.cos(angle)]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = direction * 2.0
    ijk_to_ras[:3, 3] = [-30.0, 10.0, 5.0]
    return Volume(array, ijk_to_ras)


def _ras(volume: Volume, kji) -> np.ndarray:
    k, j, i = kji
    return volume.ijk_to_ras_points(np.array([[i, j, k]], float))[0]


def _full(edit) -> np.ndarray:
    """An edit's after-content on a zero volume of the fixture's shape."""
    full = np.zeros((36, 48, 40), np.uint8)
    full[edit.region] = edit.after
    return full


def _book(volume: Volume, seeds: list) -> PromptBook:
    def start(initial):
        seeds.append(initial)
        return InteractiveSession(ThresholdPredictor(), volume, initial_mask=initial)

    return PromptBook(start)


def test_clicks_write_only_their_box_and_segments_keep_their_own_prompts(volume):
    seeds: list = []
    book = _book(volume, seeds)
    point_a, point_b = _ras(volume, (14, 20, 12)), _ras(volume, (26, 35, 29))
    prediction, edit = book.add_click("A", point_a, Click(tuple(point_a), True))
    truth_a = np.zeros(volume.array.shape, bool)
    truth_a[8:20, 10:30, 6:18] = True
    mask_a = np.asarray(prediction.mask).astype(bool)
    dice = 2 * (mask_a & truth_a).sum() / (mask_a.sum() + truth_a.sum())
    assert dice >= 0.9
    # The edit is the changed box, before (empty) and after; nothing outside it is set.
    np.testing.assert_array_equal(edit.after, mask_a[edit.region])
    assert edit.before.sum() == 0 and edit.removed.sum() == 0
    np.testing.assert_array_equal(edit.added, edit.after)
    outside = mask_a.copy()
    outside[edit.region] = False
    assert not outside.any()

    _, edit_b = book.add_click("B", point_b, Click(tuple(point_b), True))
    assert book.clicks("A") == [Click(tuple(point_a), True)]
    assert book.clicks("B") == [Click(tuple(point_b), True)]
    assert len(seeds) == 2 and seeds == [None, None]  # one session per segment, made on its first click
    # B's mask holds B's object only: A's prompts did not leak into it.
    mask_b = np.zeros(volume.array.shape, np.uint8)
    mask_b[edit_b.region] = edit_b.after
    assert mask_b[21:33, 31:45, 23:37].mean() > 0.8 and mask_b[8:20, 10:30, 6:18].sum() == 0

    # A second click on A reuses A's session.
    book.add_click("A", point_a, Click(tuple(point_a), False))
    assert len(seeds) == 2 and len(book.clicks("A")) == 2


def test_undo_and_reset_restore_exactly(volume):
    book = _book(volume, [])
    point = _ras(volume, (14, 20, 12))
    _, first = book.add_click("A", point, Click(tuple(point), True))
    exclude = _ras(volume, (10, 12, 8))
    _, second = book.add_click("A", exclude, Click(tuple(exclude), False))
    assert second.after.sum() < first.after.sum()  # the exclude click removed the object it hit
    assert second.removed.sum() > 0 and second.added.sum() == 0
    np.testing.assert_array_equal(second.before, _full(first)[second.region])

    undo = book.undo("A")
    assert book.clicks("A") == [Click(tuple(point), True)]
    np.testing.assert_array_equal(undo.after, _full(first)[undo.region])  # exactly the first click's mask
    np.testing.assert_array_equal(undo.before, second.after)
    assert undo.added.sum() == second.removed.sum()

    reset = book.reset("A")
    assert book.clicks("A") == [] and reset.after.sum() == 0
    assert reset.removed.sum() == first.after.sum()
    assert book.undo("A") is None and book.reset("A") is None and book.undo("nobody") is None


def test_start_from_the_segment_seeds_the_session_once(volume):
    seeds: list = []
    book = _book(volume, seeds)
    existing = np.zeros(volume.array.shape, np.uint8)
    existing[24:34, 2:14, 2:14] = 1  # something another tool made, away from the object
    point = _ras(volume, (14, 20, 12))
    calls = []

    def initial():
        calls.append(1)
        return existing

    prediction, _ = book.add_click("A", point, Click(tuple(point), True), initial_mask=initial)
    assert seeds[0] is existing
    assert prediction.mask[26:32, 4:12, 4:12].all()  # kept: it is the session's mask prompt
    book.add_click("A", point, Click(tuple(point), True), initial_mask=initial)
    assert len(calls) == 1
    reset = book.reset("A")
    np.testing.assert_array_equal(reset.after, existing[reset.region])  # back to the seed exactly, not to empty
    assert reset.after.sum() > 0 and reset.before.sum() > reset.after.sum()


def test_a_click_outside_the_volume_is_refused_and_changes_nothing(volume):
    book = _book(volume, [])
    outside = _ras(volume, (14, 20, 12)) + np.array([0, 500.0, 0])
    with pytest.raises(ValueError, match="outside the volume"):
        book.add_click("A", outside, Click(tuple(outside), True))
    assert book.clicks("A") == [] and not book.has_session("A")
    point = _ras(volume, (14, 20, 12))
    book.add_click("A", point, Click(tuple(point), True))
    with pytest.raises(ValueError, match="outside the volume"):
        book.add_click("A", outside, Click(tuple(outside), True))
    assert book.clicks("A") == [Click(tuple(point), True)]


def test_undo_beyond_the_session_memory_keeps_the_clicks(volume, monkeypatch):
    import SAMMed3DLib.interactive.session as session_module

    monkeypatch.setattr(session_module, "UNDO_BYTES", 1)  # the session keeps only the newest step
    book = _book(volume, [])
    point = _ras(volume, (14, 20, 12))
    book.add_click("A", point, Click(tuple(point), True))
    book.add_click("A", point, Click(tuple(point), False))
    assert book.undo("A") is not None and len(book.clicks("A")) == 1
    assert book.undo("A") is None and len(book.clicks("A")) == 1  # nothing undone, nothing forgotten
    assert book.reset("A").after.sum() == 0 and book.clicks("A") == []
