"""The CPU thread choice of the torch predictor (SAMMed3DLib/backends/cpu_threads.py): fewer threads where other
processes keep cores busy, read from Linux's /proc, set in the encoding thread and put back. The speed it buys is
measured by `benchmarks/encoder.py --busy-cores 1`, not here."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from SAMMed3DLib.backends import cpu_threads, torch_predictor
from SAMMed3DLib.backends.cpu_threads import busy_elsewhere, process_threads, threads_to_use, usable_cores
from SAMMed3DLib.testing.random_weights import random_model


@pytest.mark.parametrize(
    ("maximum", "cores", "busy", "threads"),
    [
        (2, 2, None, 2),  # unknown (not Linux, a CPU set): as the host chose
        (2, 2, 0.0, 2),
        (2, 2, 0.4, 2),  # busy less than half the time: not taken
        (2, 2, 0.5, 2),  # e.g. another program's OpenMP spin tail during half the samples
        (2, 2, 0.6, 1),
        (2, 2, 1.0, 1),
        (2, 2, 7.0, 1),  # never below one thread
        (4, 8, 3.0, 4),  # cores to spare: the host's choice is the ceiling
        (8, 8, 3.0, 5),
        (1, 8, 0.0, 1),
    ],
)
def test_threads_leave_the_busy_cores_to_the_others(maximum, cores, busy, threads):
    assert threads_to_use(maximum, lambda: busy, cores) == threads


@pytest.mark.skipif(not cpu_threads.PROC_STAT.exists() or cpu_threads.usable_cores() != __import__("os").cpu_count(),
                    reason="the busy count comes from Linux's /proc/stat, for the whole machine")
@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), (None, "cores"), ("", "cores"), ("zero", "cores"),
                                                 ("0", "cores")])
def test_libraries_take_omp_num_threads_as_torchrun_sets_it_else_every_core(monkeypatch, given, expected):
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    assert process_threads() == (usable_cores() if expected == "cores" else expected)


def test_a_busy_process_is_counted_and_our_own_threads_are_not():
    spinning, stop = [], threading.Event()

    def spin():  # our own runnable thread: not another process
        spinning.append(True)
        while not stop.is_set():
            pass

    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.2)
        busy = busy_elsewhere()
    finally:
        stop.set()
        thread.join()
        loop.kill()
        loop.wait()
    assert spinning and busy is not None and busy >= 0.9  # the loop is always runnable


def test_the_torch_predictor_encodes_on_the_chosen_threads_in_its_thread_and_puts_them_back(monkeypatch):
    model = random_model("tiny", seed=1)
    predictor = torch_predictor.TorchPredictor(model, "cpu")
    chosen, seen = [], []
    monkeypatch.setattr(torch_predictor, "threads_to_use", lambda maximum: chosen.append(maximum) or 1)
    encode, decode = model.encode, model.decode
    monkeypatch.setattr(model, "encode", lambda image: seen.append(torch.get_num_threads()) or encode(image))
    monkeypatch.setattr(model, "decode", lambda *a, **k: seen.append(torch.get_num_threads()) or decode(*a, **k))
    before = torch.get_num_threads()
    results = []

    def click():  # as the Slicer module's worker thread runs it
        embedding = predictor.encode(np.zeros((1, 1, 128, 128, 128), np.float32))
        results.append(predictor.decode(embedding, np.full((1, 1, 3), 64, np.float32), np.ones((1, 1), np.int64),
                                        np.zeros((1, 1, 32, 32, 32), np.float32)))
        results.append(torch.get_num_threads())

    worker = threading.Thread(target=click)
    worker.start()
    worker.join()
    assert seen == [1, 1] and results[-1] == before  # 1 thread while it ran, put back after
    assert chosen == [predictor.max_threads] == [before]  # chosen for the encode; the decode keeps that choice
    assert torch.get_num_threads() == before
