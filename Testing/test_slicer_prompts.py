"""Per-segment prompt bookkeeping (SAMMed3DLib.slicer.prompts), with the real InteractiveSession and the threshold
oracle, writing into arrays that behave as Slicer's default overwrite mode does (SAMMed3DLib.testing.segments). The
same bookkeeping on Slicer's own libraries is Testing/test_effect.py."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, EmbeddingCache, InteractiveSession
from SAMMed3DLib.slicer.prompts import PromptBook, UndoChain
from SAMMed3DLib.testing.oracle import ThresholdPredictor
from SAMMed3DLib.testing.segments import SegmentStore

SHAPE = (36, 48, 40)
OBJECT_A = np.s_[8:20, 10:30, 6:18]
OBJECT_B = np.s_[21:33, 31:45, 23:37]
IN_A, IN_B = (14, 20, 12), (26, 35, 29)


@pytest.fixture(scope="module")
def volume() -> Volume:
    """An oblique volume at 2 mm with two bright boxes apart from each other."""
    array = np.zeros(SHAPE, np.int16)
    array[OBJECT_A] = 400
    array[OBJECT_B] = 400
    angle = np.deg2rad(20)
    ijk_to_ras = np.eye(4)
    cos, sin = np.cos(angle), np.sin(angle)
    ijk_to_ras[:3, :3] = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]]) * 2.0
    ijk_to_ras[:3, 3] = [-30.0, 10.0, 5.0]
    return Volume(array, ijk_to_ras)


def _book(volume: Volume, seeds: list) -> PromptBook:
    embeddings = EmbeddingCache()

    def start(initial):
        seeds.append(initial)
        return InteractiveSession(ThresholdPredictor(), volume, initial_mask=initial, embeddings=embeddings)

    return PromptBook(start, volume.array.shape)


def _click(book, segments, volume, segment_id, kji, positive=True, refine=False):
    k, j, i = kji
    ras = volume.ijk_to_ras_points(np.array([[i, j, k]], float))[0]
    key = segments.key(segment_id)
    book.reconcile(key, segments.read(segment_id), segments.stamp)
    prediction, change = book.add_click(key, ras, Click(tuple(ras), positive), segments.read(segment_id), refine)
    segments.write(book, segment_id, change)
    return prediction, change


def _store(*segment_ids) -> SegmentStore:
    return SegmentStore(SHAPE, segment_ids, segmentation="seg")


def _dice(mask, region):
    truth = np.zeros(SHAPE, bool)
    truth[region] = True
    mask = mask > 0
    return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())


def test_clicks_write_their_box_and_segments_keep_their_own_prompts(volume):
    seeds: list = []
    book, segments = _book(volume, seeds), _store("A", "B")
    prediction, change = _click(book, segments, volume, "A", IN_A)
    assert _dice(segments.array("A"), OBJECT_A) >= 0.9
    outside = segments.array("A").copy()
    outside[change.region] = 0
    assert not outside.any() and not change.remove.any()
    np.testing.assert_array_equal(segments.array("A"), prediction.mask)
    _click(book, segments, volume, "B", IN_B)
    assert _dice(segments.array("B"), OBJECT_B) >= 0.9 and segments.array("B")[OBJECT_A].sum() == 0
    assert [len(book.clicks(("seg", s))) for s in "AB"] == [1, 1] and seeds == [None, None]
    assert book.clicks(("other segmentation", "A")) == []  # keys are (segmentation, segment)
    assert book.nbytes > 0


def test_exclude_clicks_and_reset_never_remove_the_segments_own_content(volume):
    book, segments = _book(volume, []), _store("A")
    own = (slice(10, 16), slice(12, 20), slice(8, 30))  # painted before, over part of the object and beside it
    segments.paint("A", own)
    painted = segments.array("A").copy()
    _click(book, segments, volume, "A", IN_A)
    _click(book, segments, volume, "A", IN_A, positive=False)
    np.testing.assert_array_equal(segments.array("A")[own], 1)
    _click(book, segments, volume, "A", IN_A)
    segments.write(book, "A", book.reset(("seg", "A")))
    np.testing.assert_array_equal(segments.array("A"), painted)


def test_with_refine_the_clicks_may_take_the_content_away_and_reset_restores_it(volume):
    seeds: list = []
    book, segments = _book(volume, seeds), _store("A")
    segments.paint("A", OBJECT_A)
    painted = segments.array("A").copy()
    _click(book, segments, volume, "A", IN_A, positive=False, refine=True)
    np.testing.assert_array_equal(seeds[0], painted)  # the session started from the content
    assert segments.array("A")[OBJECT_A].mean() < 0.1
    segments.write(book, "A", book.reset(("seg", "A")))
    np.testing.assert_array_equal(segments.array("A"), painted)


def test_what_a_click_took_from_another_segment_goes_back_when_removed(volume):
    book, segments = _book(volume, []), _store("A", "B")
    segments.paint("B", OBJECT_A)
    _click(book, segments, volume, "A", IN_A)
    assert segments.array("B").sum() < 0.2 * segments.array("A").sum()
    _, change = _click(book, segments, volume, "A", IN_A, positive=False)
    assert set(change.give_back) == {"B"}
    assert _dice(segments.array("B"), OBJECT_A) == 1.0
    segments.write(book, "A", book.undo(("seg", "A")))  # the exclude undone: A takes them again
    assert _dice(segments.array("A"), OBJECT_A) >= 0.9
    segments.write(book, "A", book.reset(("seg", "A")))
    assert _dice(segments.array("B"), OBJECT_A) == 1.0 and segments.array("A").sum() == 0


def test_a_segment_changed_outside_starts_again_from_its_content(volume):
    seeds: list = []
    book, segments = _book(volume, seeds), _store("A")
    key = ("seg", "A")
    _click(book, segments, volume, "A", IN_A)
    segments.stamp += 1  # another segment's edit in the same layer: a new stamp, the same voxels
    assert not book.reconcile(key, segments.read("A"), segments.stamp) and len(book.clicks(key)) == 1
    segments.paint("A", OBJECT_A, value=0)  # erased by another tool
    segments.paint("A", (slice(0, 4), slice(0, 4), slice(0, 4)))  # and painted
    assert book.reconcile(key, segments.read("A"), segments.stamp)
    assert book.clicks(key) == [] and len(seeds) == 2 and seeds[1] is None  # nothing of the session is left
    _click(book, segments, volume, "A", IN_A)
    assert _dice(segments.array("A"), OBJECT_A) >= 0.85  # the click segments again, not "already there"
    _click(book, segments, volume, "A", IN_A, positive=False)
    assert segments.array("A")[0:4, 0:4, 0:4].all()  # the paint is the segment's own


def test_undo_in_step_follows_an_undo_that_restored_the_segment_exactly(volume):
    book, segments = _book(volume, []), _store("A")
    key = ("seg", "A")
    _click(book, segments, volume, "A", IN_A)
    after_first = segments.array("A").copy()
    _click(book, segments, volume, "A", IN_B)
    after_second = segments.array("A").copy()
    segments.restore("A", np.zeros(SHAPE, np.uint8))  # an undo that went further than the last click
    assert not book.undo_in_step(key, segments.read("A"), segments.stamp) and len(book.clicks(key)) == 2
    segments.restore("A", after_first)  # as the editor's undo of the last click restores it
    assert book.undo_in_step(key, segments.read("A"), segments.stamp) and len(book.clicks(key)) == 1
    _click(book, segments, volume, "A", IN_B)  # the session followed: the same click gives the same result
    np.testing.assert_array_equal(segments.array("A"), after_second)


def test_a_click_outside_the_volume_is_refused_and_changes_nothing(volume):
    book, segments = _book(volume, []), _store("A")
    key = ("seg", "A")
    outside = volume.ijk_to_ras_points(np.array([[12.0, 20.0, 14.0]]))[0] + [0.0, 500.0, 0.0]
    with pytest.raises(ValueError, match="outside the volume"):
        book.add_click(key, outside, Click(tuple(outside), True), segments.read("A"))
    assert not book.has(key)
    _click(book, segments, volume, "A", IN_A)
    with pytest.raises(ValueError, match="outside the volume"):
        book.add_click(key, outside, Click(tuple(outside), True), segments.read("A"))
    assert len(book.clicks(key)) == 1


def test_undo_beyond_the_session_memory_keeps_the_clicks(volume, monkeypatch):
    import SAMMed3DLib.interactive.session as session_module

    monkeypatch.setattr(session_module, "UNDO_BYTES", 1)  # the session keeps only the newest step
    book, segments = _book(volume, []), _store("A")
    key = ("seg", "A")
    _click(book, segments, volume, "A", IN_A)
    _click(book, segments, volume, "A", IN_A, positive=False)
    assert book.undo(key) is not None and len(book.clicks(key)) == 1
    assert book.undo(key) is None and len(book.clicks(key)) == 1  # nothing undone, nothing forgotten
    segments.write(book, "A", book.reset(key))
    assert segments.array("A").sum() == 0 and book.clicks(key) == []


def test_the_undo_chain_knows_its_clicks_while_the_segmentation_is_as_they_left_it():
    chain = UndoChain()
    assert chain.last("s0") is None
    chain.clicked(("seg", "A"), 1, "s0", "s1")
    chain.clicked(("seg", "A"), 2, "s1", "s2")
    assert chain.last("s2") == (("seg", "A"), 2)
    chain.undone("s1'")
    assert chain.last("s1'") == (("seg", "A"), 1)
    chain.clicked(("seg", "B"), 1, "changed by another tool", "s3")  # a gap: older clicks are not on top
    chain.undone("s4")
    assert chain.last("s4") is None
    chain.clicked(("seg", "A"), 1, "s4", "s5")
    assert chain.last("edited since") is None and chain.last("s5") is None


def test_a_click_discarded_after_its_session_ran_leaves_the_book_as_it_was(volume):
    """The effect runs a click's session step on its worker thread; a click cancelled meanwhile, or whose segment
    changed meanwhile, is discarded: the session and the book are as before it, and the same click then gives the
    same result (with a new segment, nothing of it is kept)."""
    seeds: list = []
    book, segments = _book(volume, seeds), _store("A")
    key, read = segments.key("A"), segments.read("A")
    k, j, i = IN_A
    ras = tuple(volume.ijk_to_ras_points(np.array([[i, j, k]], float))[0])
    session = book.start_click(key, read)
    assert book.has(key) and book.clicks(key) == []
    book.discard_click(key, session.add_click(ras))
    assert not book.has(key)  # its first click: the segment is forgotten
    _, first = _click(book, segments, volume, "A", IN_A)
    before = book.start_click(key, read).mask_in(first.region)
    exclude = tuple(volume.ijk_to_ras_points(np.array([[i + 2, j, k]], float))[0])
    discarded = book.start_click(key, read).add_click(exclude, positive=False)
    excluded = discarded.session.mask_in(first.region)
    assert (excluded != before).any()
    book.discard_click(key, discarded)
    assert book.clicks(key) == [Click(ras, True)]
    np.testing.assert_array_equal(book.start_click(key, read).mask_in(first.region), before)
    _click(book, segments, volume, "A", (k, j, i + 2), positive=False)
    assert len(book.clicks(key)) == 2
    np.testing.assert_array_equal(book.start_click(key, read).mask_in(first.region), excluded)
