"""One worker thread for the Slicer module: loading the model, and each click's encode and decode, run there in the
order they were asked for, while Slicer's main thread goes on drawing and taking input. Nothing here imports Slicer
or Qt, and nothing that runs on the worker may touch Qt or the MRML scene: a job's `work` gets plain data and
returns plain data, and its `done` callback runs on the thread that calls `deliver` (the module's Qt timer, on the
main thread), in the order the jobs were submitted.

torch and ONNX Runtime release the GIL while they compute, so the main thread keeps running Python meanwhile. The
other way round is not free in Slicer: PythonQt releases the GIL when Python calls into C++ only with thread support
switched on, which neither Slicer nor CTK does, so Slicer's main thread holds the GIL while it waits in Qt's event
loop, and a Python thread gets it only while the main thread runs Python. The main thread's timer therefore `lend`s
it: waits for the running job for a few milliseconds on each tick.

The worker runs whatever it is given (the torch or ONNX Runtime predictor, or any other `Predictor`): it knows
nothing about backends.

    worker = Worker()
    job = worker.submit("Loading the model", lambda job: load(), done=on_loaded)
    ...                                    # on the main thread, from a timer:
    worker.deliver()                       # on_loaded(job) with job.result or job.error
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from typing import Any, Callable, Deque, Iterator, Optional

ENCODING = "Encoding the region around the click"
DECODING = "Updating the segment"


class Job:
    """One piece of work for the worker: what it is (`title`, and `stage` while it runs, for the status line), its
    `result` or `error` once finished, and whether the user `cancel`led it. A running job cannot be stopped (torch
    cannot be interrupted): cancelling tells `done` to discard what it brings."""

    def __init__(self, title: str, work: Callable[[Job], Any], done: Optional[Callable[[Job], None]]) -> None:
        self.title = title
        self.stage: Optional[str] = None  # set from the worker thread while the job runs
        self.work, self.done = work, done
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.started: Optional[float] = None  # time.monotonic() when the worker took it
        self.finished: Optional[float] = None

    def cancel(self) -> None:
        self.cancelled = True

    def elapsed(self) -> float:
        """Seconds it has been running (0 before it started)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def describe(self) -> str:
        """The status line while it runs, e.g. "Encoding the region around the click... 0.6 s"."""
        return f"{self.stage or self.title}... {self.elapsed():.1f} s"


class Worker:
    """A thread that runs submitted jobs one at a time, first submitted first; `deliver` hands the finished ones to
    their `done` callbacks on the caller's thread. The thread starts with the first job and waits for more."""

    def __init__(self, name: str = "SAM-Med3D worker") -> None:
        self._name = name
        self._todo: queue.Queue = queue.Queue()
        self._finished: Deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._pending = 0  # submitted and not yet delivered
        self._delivering = False
        self._between_jobs = threading.Event()  # set while the worker runs no job
        self._between_jobs.set()
        self.running: Optional[Job] = None  # the job the worker is running now

    @property
    def busy(self) -> bool:
        """Whether a submitted job has not been delivered yet."""
        return self._pending > 0

    def submit(self, title: str, work: Callable[[Job], Any], done: Optional[Callable[[Job], None]] = None) -> Job:
        job = Job(title, work, done)
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._todo.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            job.started = time.monotonic()
            self.running = job
            self._between_jobs.clear()
            if not job.cancelled:  # cancelled before it started: it never runs
                try:
                    job.result = job.work(job)
                except BaseException as error:  # handed to `done` on the main thread
                    job.error = error
            job.finished = time.monotonic()
            self.running = None
            self._finished.append(job)
            self._between_jobs.set()

    @contextlib.contextmanager
    def stage(self, text: str) -> Iterator[None]:
        """On the worker thread: name what the running job does now (its `describe` shows it)."""
        job = self.running
        if job is None or threading.current_thread() is not self._thread:
            yield
            return
        previous, job.stage = job.stage, text
        try:
            yield
        finally:
            job.stage = previous

    def deliver(self) -> int:
        """Call `done` of every finished job, in submission order, on this thread; the number delivered. A call made
        while `done` runs (from a dialog's event loop) delivers nothing, so no callback runs inside another."""
        if self._delivering:
            return 0
        self._delivering = True
        count = 0
        try:
            while self._finished:
                job = self._finished.popleft()
                self._pending -= 1
                count += 1
                if job.done is not None:
                    job.done(job)
        finally:
            self._delivering = False
        return count

    def lend(self, seconds: float) -> None:
        """On the main thread: wait up to `seconds` while a job runs (returning when it finishes), releasing the GIL,
        so that the worker's Python runs even where the main thread would hold the GIL (see the module docstring)."""
        if self.running is not None:
            self._between_jobs.wait(seconds)

    def wait(self, timeout: float) -> bool:
        """Until nothing is running or queued (for tests and scripts that have no event loop); True if idle."""
        deadline = time.monotonic() + timeout
        while self._pending - len(self._finished) > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop the thread once the jobs already submitted have run."""
        if self._thread is not None and self._thread.is_alive():
            self._todo.put(None)


class StagedPredictor:
    """A predictor that names its encode and decode as the worker's running job's stage, so that the status line says
    "Encoding the region around the click..." while an encode runs. Everything else is the wrapped predictor's."""

    def __init__(self, predictor: Any, worker: Worker) -> None:
        self.predictor, self._worker = predictor, worker
        self.device, self.label = predictor.device, predictor.label

    def encode(self, image):
        with self._worker.stage(ENCODING):
            return self.predictor.encode(image)

    def decode(self, embedding, points, labels, mask_logits):
        with self._worker.stage(DECODING):
            return self.predictor.decode(embedding, points, labels, mask_logits)
