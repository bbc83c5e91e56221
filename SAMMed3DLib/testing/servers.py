"""`sammed3d serve` in a subprocess on 127.0.0.1, for the serving tests and benchmarks/serve.py: started, waited for,
killed and restarted like a real one."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

_STARTED = re.compile(r" at (https?://[^\s;]+)")


class ServeProcess:
    """`sammed3d serve ARGS` in a subprocess: `url` and `port` once it serves (ask for port 0 to get a free one;
    give that `port` again to restart on it)."""

    def __init__(self, args: Sequence[str], timeout: float = 120.0) -> None:
        self.args, self.timeout = list(args), timeout
        self.url, self.port = "", 0
        self.output: List[str] = []
        self._process: Optional[subprocess.Popen] = None

    def start(self, args: Optional[Sequence[str]] = None) -> ServeProcess:
        """Start (with other serve arguments, if given) and return once it prints where it listens."""
        if args is not None:
            self.args = list(args)
        command = [sys.executable, "-m", "SAMMed3DLib.cli", "serve", *self.args]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         encoding="utf-8", env=environment)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self._process, lines), daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise TimeoutError(f"the server did not start in {self.timeout:g} s: {self.output}") from None
            if line is None:
                raise RuntimeError(f"the server exited with {self._process.wait()}: {''.join(self.output)}")
            found = _STARTED.search(line)
            if found:
                self.url = found.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return self

    def _read(self, process: subprocess.Popen, lines: queue.Queue) -> None:
        for line in process.stdout:
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as a crashed or unplugged machine does."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def terminate(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        return self._process.wait()

    def __enter__(self) -> ServeProcess:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
