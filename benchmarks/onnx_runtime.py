"""ONNX Runtime against torch on the CPU: encode and decode times of the published network (vit_b_ori) with random
weights, in one run.

    python benchmarks/onnx_runtime.py [--repeats 5]

Exports the network into a temporary folder (checked against torch), then times `TorchPredictor` and
`OnnxPredictor(providers="cpu")` alternately on the same inputs, so that both see the same machine load:
`--repeats` encodes of a 128^3 patch and 10x as many decodes (one click plus the previous logits, as in a session
round), after one warm-up each. Prints the best and median time of each, the ratio ONNX Runtime / torch of the
best times (on a machine shared with other work the medians mostly measure the others, and torch's threads suffer
more from it), and the largest logit difference; exits with 1 if ONNX Runtime is more than 1.1x slower than torch
at either.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from SAMMed3DLib.backends.onnx_export import export_model
from SAMMed3DLib.backends.onnx_predictor import OnnxPredictor
from SAMMed3DLib.backends.torch_predictor import TorchPredictor
from SAMMed3DLib.testing.random_weights import random_model

MAX_RATIO = 1.1


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _ms(times: List[float]) -> str:
    return f"{min(times) * 1000:.1f} / {statistics.median(times) * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed encodes per backend (default 5)")
    args = parser.parse_args()

    model = random_model("vit_b_ori", seed=0)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_model(model, folder)
        print(f"export and check: {time.perf_counter() - start:.1f} s")
        backends = {"torch": TorchPredictor(model, "cpu"), "onnxruntime": OnnxPredictor(folder, providers="cpu")}

        rng = np.random.default_rng(0)
        image = rng.standard_normal((1, 1, 128, 128, 128)).astype(np.float32)
        points = np.array([[[64.0, 60.0, 70.0]]], np.float32)
        labels = np.ones((1, 1), np.int64)
        previous = rng.standard_normal((1, 1, 32, 32, 32)).astype(np.float32)
        embeddings = {name: backend.encode(image) for name, backend in backends.items()}  # warm-up
        logits = {name: backend.decode(embeddings[name], points, labels, previous)[0]
                  for name, backend in backends.items()}
        times: Dict[str, Dict[str, List[float]]] = {name: {"encode": [], "decode": []} for name in backends}
        for _ in range(args.repeats):
            for name, backend in backends.items():
                times[name]["encode"].append(timed(lambda b=backend: b.encode(image)))
                for _ in range(10):
                    times[name]["decode"].append(
                        timed(lambda b=backend, e=embeddings[name]: b.decode(e, points, labels, previous)))

    print(f"CPU threads: torch {torch.get_num_threads()}, ONNX Runtime default (one per physical core)")
    print(f"{'':8}{'torch best / median':>24}{'ONNX Runtime best / median':>30}{'ratio (best)':>14}")
    slower = False
    for step in ("encode", "decode"):
        torch_times, ort_times = times["torch"][step], times["onnxruntime"][step]
        ratio = min(ort_times) / min(torch_times)
        slower |= ratio > MAX_RATIO
        print(f"{step:8}{_ms(torch_times):>24}{_ms(ort_times):>30}{ratio:>13.2f}x")
    print(f"largest logit difference: {np.abs(logits['torch'] - logits['onnxruntime']).max():.2e}")
    print(f"ONNX Runtime {'SLOWER than' if slower else 'within'} {MAX_RATIO}x of torch")
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
