"""Encoder speed: the reference (medim 0.1.2, "SAM-Med3D") against SAMMed3DLib on the same random weights.

    python benchmarks/encoder.py [--repeats 5] [--device cpu|cuda]

Each implementation lives in its own child process, so that its peak memory is its own, and the parent asks them
for one encode at a time in turn, so that both see the same load on a noisy machine. Prints the median times, the
ratio, the peak memory growth of an encode, and the agreement of the two embeddings. On CUDA it also times
SAMMed3DLib in bfloat16 and float16 and prints their agreement with float32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

from SAMMed3DLib.testing.random_weights import random_model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(implementation: str, folder: Path, device_name: str, dtype_name: str) -> None:
    """Load one implementation, then encode once per line read from stdin and answer with a JSON line."""
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    torch.set_grad_enabled(False)
    state = torch.load(folder / "weights.pt", weights_only=True)
    if implementation == "reference":
        import medim

        with contextlib.redirect_stdout(sys.stderr):  # medim announces itself on stdout, our answer channel
            model = medim.create_model("SAM-Med3D")
        model.load_state_dict(state)
        encode = model.image_encoder
    else:
        from SAMMed3DLib.model import build_sam_med3d

        model = build_sam_med3d()
        model.load_state_dict(state)
        encode = model.encode
    model = model.to(device, dtype).eval()
    image = torch.load(folder / "image.pt", weights_only=True).to(device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_bytes(device)
    embedding = encode(image)  # warm-up
    _synchronize(device)
    peak_growth = _peak_bytes(device) - before
    torch.save(embedding.float().cpu(), folder / f"{implementation}-{dtype_name}.pt")
    print(json.dumps({"peak_mb": peak_growth / 2**20}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        encode(image)
        _synchronize(device)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


class Worker:
    """A child process running `serve`."""

    def __init__(self, implementation: str, folder: Path, device: str, dtype: str) -> None:
        command = [
            sys.executable,
            __file__,
            "--serve",
            implementation,
            "--folder",
            str(folder),
            "--device",
            device,
            "--dtype",
            dtype,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, encoding="utf-8")
        self.peak_mb = self._answer()["peak_mb"]
        self.embedding = torch.load(folder / f"{implementation}-{dtype}.pt", weights_only=True)
        self.times: List[float] = []

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker failed: {self.process.args}")
        return json.loads(line)

    def encode(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.times.append(self._answer()["seconds"])

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def timed_in_turn(workers: List[Worker], repeats: int) -> None:
    for _ in range(repeats):
        for worker in workers:
            worker.encode()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--serve", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder, args.device, args.dtype)
        return

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        torch.save(random_model("vit_b_ori", seed=0).state_dict(), folder / "weights.pt")
        torch.save(torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(1)), folder / "image.pt")
        print(
            f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"median of {args.repeats} encodes of a 128^3 patch, taken in turn"
        )
        reference = Worker("reference", folder, args.device, "float32")
        ours = Worker("ours", folder, args.device, "float32")
        timed_in_turn([reference, ours], args.repeats)
        reference.close()
        ours.close()
        print(f"reference  float32  {reference.seconds:8.3f} s   peak +{reference.peak_mb:7.0f} MB")
        print(
            f"SAMMed3D   float32  {ours.seconds:8.3f} s   peak +{ours.peak_mb:7.0f} MB   "
            f"max relative difference {relative_error(ours.embedding, reference.embedding):.2e}"
        )
        if args.device.startswith("cuda"):
            for dtype in ("bfloat16", "float16"):
                low = Worker("ours", folder, args.device, dtype)
                timed_in_turn([low], args.repeats)
                low.close()
                print(
                    f"SAMMed3D   {dtype:8s} {low.seconds:8.3f} s   peak +{low.peak_mb:7.0f} MB   "
                    f"max relative difference to float32 {relative_error(low.embedding, ours.embedding):.2e}"
                )
        print(f"speed-up (reference / SAMMed3D, float32): {reference.seconds / ours.seconds:.1f}x")


if __name__ == "__main__":
    main()
