"""The Slicer module's worker thread (SAMMed3DLib/slicer/worker.py), without Slicer: jobs run one at a time in order
on one thread that is not the caller's, their results come back only through `deliver` on the caller's thread, a
cancelled job that has not started never runs, and the running job names its stage for the status line."""

from __future__ import annotations

import threading
import time

import numpy as np

from SAMMed3DLib.slicer.worker import ENCODING, StagedPredictor, Worker
from SAMMed3DLib.testing.oracle import ThresholdPredictor


def test_jobs_run_in_order_on_one_worker_thread_and_come_back_only_through_deliver():
    worker, ran, delivered = Worker(), [], []
    for index in range(3):
        worker.submit(f"job {index}", lambda job, i=index: ran.append((i, threading.current_thread())) or i * 10,
                      lambda job: delivered.append((job.result, threading.current_thread())))
    assert worker.busy and worker.wait(10)
    assert [i for i, _ in ran] == [0, 1, 2] and len({thread for _, thread in ran}) == 1
    assert ran[0][1] is not threading.current_thread()
    assert delivered == []  # nothing reaches the main thread on its own
    assert worker.deliver() == 3 and not worker.busy
    assert delivered == [(0, threading.current_thread()), (10, threading.current_thread()),
                         (20, threading.current_thread())]
    worker.close()


def test_an_error_is_handed_to_done_and_the_worker_goes_on():
    worker, done = Worker(), []
    worker.submit("fails", lambda job: 1 / 0, done.append)
    worker.submit("works", lambda job: "ok", done.append)
    worker.wait(10)
    worker.deliver()
    assert isinstance(done[0].error, ZeroDivisionError) and done[0].result is None
    assert done[1].error is None and done[1].result == "ok"
    worker.close()


def test_a_job_cancelled_before_it_starts_never_runs_and_a_running_one_runs_to_its_end():
    worker, release, ran, done = Worker(), threading.Event(), [], []
    first = worker.submit("blocks", lambda job: release.wait(10) and ran.append("first"), done.append)
    second = worker.submit("waits", lambda job: ran.append("second"), done.append)
    while worker.running is not first:
        time.sleep(0.001)
    first.cancel()
    second.cancel()
    release.set()
    worker.wait(10)
    worker.deliver()
    assert ran == ["first"]  # torch cannot be interrupted: cancelling says "discard what it brings"
    assert done == [first, second] and first.cancelled and second.cancelled
    worker.close()


def test_the_running_job_names_its_stage_and_time_while_the_caller_turns():
    worker, release = Worker(), threading.Event()

    class Blocking(ThresholdPredictor):
        def encode(self, image):
            release.wait(10)
            return super().encode(image)

    predictor = StagedPredictor(Blocking(), worker)
    assert predictor.label == ThresholdPredictor.label and predictor.device == "cpu"
    job = worker.submit("Segmenting at the click", lambda job: predictor.encode(np.zeros((1, 1, 128, 128, 128))))
    while job.stage is None:
        time.sleep(0.001)
    seen = []
    for _ in range(3):
        worker.lend(0.03)  # the main thread waits a little for the worker, then turns again
        seen.append(job.describe())
    release.set()
    worker.wait(10)
    assert all(text.startswith(f"{ENCODING}... ") and text.endswith(" s") for text in seen)
    assert float(seen[-1].split("... ")[1][:-2]) >= 0.05
    assert job.stage is None and job.describe().startswith("Segmenting at the click... ")
    assert worker.deliver() == 1
    worker.close()


def test_deliver_does_not_run_inside_a_done_callback():
    """A `done` that opens a dialog runs an event loop, whose timer calls deliver again: nothing is delivered
    inside it, the rest comes on the next call."""
    worker, order = Worker(), []

    def done(job):
        order.append(job.title)
        assert worker.deliver() == 0

    worker.submit("a", lambda job: None, done)
    worker.submit("b", lambda job: None, done)
    worker.wait(10)
    assert worker.deliver() == 2 and order == ["a", "b"]
    worker.close()


def test_lend_returns_when_the_job_ends():
    worker = Worker()
    worker.submit("short", lambda job: time.sleep(0.05))
    while worker.running is None:
        time.sleep(0.001)
    start = time.monotonic()
    worker.lend(5.0)
    assert time.monotonic() - start < 2.0 and worker.running is None
    worker.lend(5.0)  # nothing runs: returns at once
    assert time.monotonic() - start < 2.0
    worker.close()
