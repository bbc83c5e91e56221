"""How many CPU threads an encode should use when other programs may be using some of the cores.

torch's OpenMP threads (and ONNX Runtime's) spin while they wait for each other. When another process keeps one of
two cores busy, one of the two threads shares its core with it and the other spins waiting for it: a two-thread
encode then takes 1.5-1.9x the time of one thread on an idle machine (benchmarks/encoder.py --busy-cores 1).
`OMP_WAIT_POLICY=PASSIVE` would help, but OpenMP reads it once, when torch is imported, and inside Slicer torch may
have been imported before SAMMed3DLib. So the predictor asks before each encode how many cores other processes keep
busy and uses the rest (at least one thread): `threads_to_use`.

Linux only: the count comes from /proc/stat's `procs_running` (runnable threads of the whole system, now) minus this
process's own runnable threads, sampled over about 25 ms: long enough that the tail of another program's OpenMP
region (its threads spin for up to about 10 ms after it ends) does not count as a busy core, short beside an encode.
Elsewhere, or where the count is not about the cores this process may use (a CPU set smaller than the machine), it
is unknown and the caller keeps its thread count.
Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

PROC_STAT = Path("/proc/stat")
OWN_TASKS = Path("/proc/self/task")
SAMPLES = 10  # reads of procs_running, `SAMPLE_INTERVAL` seconds apart
SAMPLE_INTERVAL = 0.0025
TAKEN = 0.5  # a core counts as taken when other processes keep it busy in more than half of the samples


def _procs_running() -> int:
    with PROC_STAT.open("rb") as stat:
        for line in stat:
            if line.startswith(b"procs_running"):
                return int(line.split()[1])
    raise OSError(f"{PROC_STAT} has no procs_running line")


def _own_running() -> int:
    """This process's threads in state R (running or runnable), the caller included."""
    count = 0
    for task in OWN_TASKS.iterdir():
        try:
            stat = (task / "stat").read_bytes()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R":
            count += 1
    return count


def usable_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def process_threads() -> int:
    """Threads a CPU library of this process takes (edt, the NSD's slabs): OMP_NUM_THREADS where it is set (torchrun
    sets 1 for each of its processes), else every usable core."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else usable_cores()


def busy_elsewhere(samples: int = SAMPLES, interval: float = SAMPLE_INTERVAL) -> Optional[float]:
    """Mean number of runnable threads of other processes, or None where it cannot be known here."""
    if not PROC_STAT.exists() or usable_cores() != os.cpu_count():
        return None  # procs_running would count CPUs this process cannot use
    total = 0
    try:
        for index in range(samples):
            if index:
                time.sleep(interval)
            total += _procs_running() - _own_running()
    except (OSError, ValueError):
        return None
    return max(0.0, total / samples)


def threads_to_use(
    maximum: int, busy: Callable[[], Optional[float]] = busy_elsewhere, cores: Optional[int] = None
) -> int:
    """`maximum` (the thread count the host chose), but no more than the `cores` (this process's) that other
    processes leave free, and at least 1; `maximum` when that is unknown."""
    if maximum <= 1:
        return max(maximum, 1)
    others = busy()
    if others is None:
        return maximum
    taken = max(0, math.ceil(others - TAKEN))
    return max(1, min(maximum, (cores or usable_cores()) - taken))
