"""Remote encoding through `sammed3d serve` against encoding here: round-trip latency (p50, p95) and throughput for
1, 4 and 8 concurrent clients, next to the local encode time, in one run.

    python benchmarks/serve.py [--variant vit_b_ori|tiny] [--export DIR] [--requests 5] [--device cpu|cuda]
                               [--dtype fp32|fp16]

Exports a network with random weights (the published size by default) into a temporary folder, unless --export
names one; starts `sammed3d serve --backend onnx` on it on 127.0.0.1 (a free port, --device), times the same
encoder in this process (`OnnxPredictor`, CPU) while the server idles, then lets 1, 4 and 8 threads send --requests
encodes each through `RemotePredictor` (one connection per thread), every answer checked against the local
embedding. The server and the clients share this machine, so on a CPU the clients' encoding and sending compete
with the server's encoder; with --device cuda (onnxruntime-gpu) the server encodes on the GPU. Prints per
concurrency the p50 and p95 round trip, the throughput, and p50 / local encode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import numpy as np

from SAMMed3DLib.backends.onnx_predictor import OnnxPredictor
from SAMMed3DLib.backends.remote_predictor import RemotePredictor
from SAMMed3DLib.testing.servers import ServeProcess

CONCURRENCY = (1, 4, 8)


def percentile(times: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def export(variant: str, folder: Path) -> Path:
    from SAMMed3DLib.backends.onnx_export import export_checkpoint
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint

    started = time.perf_counter()
    export_checkpoint(save_random_checkpoint(folder / f"{variant}.pth", variant, seed=0), folder / "export")
    print(f"export and check ({variant}): {time.perf_counter() - started:.1f} s")
    return folder / "export"


def clients(url: str, model: Path, image: np.ndarray, expected: np.ndarray, count: int, requests: int,
            dtype: str) -> tuple:
    remote = RemotePredictor(url, model, dtype=dtype, device="cpu")
    latencies: List[float] = []
    failures: List[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            for _ in range(requests):
                started = time.perf_counter()
                embedding = remote.encode(image)
                elapsed = time.perf_counter() - started
                tolerance = 1e-2 if dtype == "fp16" else 1e-5
                if np.abs(embedding - expected).max() > tolerance * np.abs(expected).max():
                    raise AssertionError("a remote embedding differs from the local one")
                with lock:
                    latencies.append(elapsed)
        except BaseException as error:  # reported after the run
            failures.append(error)
        finally:
            remote.disconnect()

    threads = [threading.Thread(target=client) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    return latencies, len(latencies) / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("vit_b_ori", "tiny"), default="vit_b_ori")
    parser.add_argument("--export", type=Path, help="an ONNX export folder to serve (default: a random one)")
    parser.add_argument("--requests", type=int, default=5, help="encodes per client (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the server encodes")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="what the clients send")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = args.export or export(args.variant, Path(folder))
        server = ServeProcess(["--backend", "onnx", "--checkpoint", str(model), "--device", args.device,
                               "--port", "0"]).start()
        try:
            image = np.random.default_rng(0).standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
            local = OnnxPredictor(model, providers="cpu")
            expected = local.encode(image)  # warm-up
            local_times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                local.encode(image)
                local_times.append(time.perf_counter() - started)
            local_median = statistics.median(local_times)
            del local
            print(f"server: {server.url} ({args.device}); clients send {args.dtype}; {args.requests} encodes per "
                  "client")
            print(f"local encode (this process, cpu): median {local_median * 1000:.0f} ms, best "
                  f"{min(local_times) * 1000:.0f} ms")
            print(f"{'clients':>8}{'p50 ms':>10}{'p95 ms':>10}{'encodes/s':>11}{'p50 / local':>13}")
            for count in CONCURRENCY:
                latencies, throughput = clients(server.url, model, image, expected, count, args.requests, args.dtype)
                p50 = percentile(latencies, 50)
                print(f"{count:>8}{p50 * 1000:>10.0f}{percentile(latencies, 95) * 1000:>10.0f}{throughput:>11.2f}"
                      f"{p50 / local_median:>12.2f}x")
        finally:
            server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
