"""Encoder speed: the reference (medim 0.1.2, "SAM-Med3D") against SAMMed3DLib on the same random weights; and
SAMMed3DLib's CPU thread choice when other processes keep cores busy.

    python benchmarks/encoder.py [--repeats 5] [--device cpu|cuda]
    python benchmarks/encoder.py --busy-cores 1 [--repeats 5] [--onnx EXPORT_DIR]

Each implementation lives in its own child process, so that its peak memory is its own, and the parent asks them
for one encode at a time in turn, so that both see the same load on a noisy machine. Prints the median times, the
ratio, the peak memory growth of an encode, and the agreement of the two embeddings. On CUDA it also times
SAMMed3DLib in bfloat16 and float16 and prints their agreement with float32.

`--busy-cores N` (CPU) times, in each round, every configuration once on the idle machine and once while N busy
loops (child processes) run: one thread (the "single-thread idle" time the others are measured against), torch's
default thread count as SAMMed3DLib used it before it chose threads ("fixed"), and TorchPredictor (its choice);
then ONNX Runtime with one intra-op thread and OnnxPredictor (its default threads), on an export of the same weights
(made here unless `--onnx` names one). torch is imported before SAMMed3DLib in every child, as inside Slicer.
Target: TorchPredictor under load at most 1.3x the single-thread idle time, and as fast as "fixed" when idle. On a
shared machine "idle" is what other programs leave: the last column shows how many cores they kept busy during the
encodes (Linux), so that a disturbed run can be told apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import torch

from SAMMed3DLib.testing.random_weights import random_model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve_threads(configuration: str, folder: Path) -> None:
    """One thread configuration of `--busy-cores` on the CPU: encode once per line read from stdin."""
    import numpy as np

    image = torch.load(folder / "image.pt", weights_only=True)
    if configuration.startswith("onnx"):
        import onnxruntime

        from SAMMed3DLib.backends.onnx_predictor import OnnxPredictor

        if configuration == "onnx-1":
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(folder / "onnx" / "encoder.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
            encode = lambda: session.run(None, {"image": np.ascontiguousarray(image.numpy())})  # noqa: E731
        else:
            predictor = OnnxPredictor(folder / "onnx", "cpu")
            encode = lambda: predictor.encode(image.numpy())  # noqa: E731
    else:
        from SAMMed3DLib.backends.torch_predictor import TorchPredictor
        from SAMMed3DLib.model import build_sam_med3d

        model = build_sam_med3d()
        model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        predictor = TorchPredictor(model, "cpu")
        if configuration == "torch":
            encode = lambda: predictor.encode(image.numpy())  # noqa: E731
        else:  # fixed thread counts: model.encode as TorchPredictor ran it before it chose threads
            if configuration == "fixed-1":
                torch.set_num_threads(1)
            model.eval()

            def encode():
                with torch.inference_mode():
                    return model.encode(image)

    encode()  # warm-up
    print(json.dumps({"peak_mb": 0.0}), flush=True)
    for _ in sys.stdin:
        start, cpu = time.perf_counter(), time.process_time()
        encode()
        print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}), flush=True)


def serve(implementation: str, folder: Path, device_name: str, dtype_name: str) -> None:
    """Load one implementation, then encode once per line read from stdin and answer with a JSON line."""
    if implementation == "threads":
        serve_threads(dtype_name, folder)
        return
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
        if implementation != "threads":
            self.embedding = torch.load(folder / f"{implementation}-{dtype}.pt", weights_only=True)
        self.times: List[float] = []

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker failed: {self.process.args}")
        return json.loads(line)

    def encode(self) -> dict:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        answer = self._answer()
        self.times.append(answer["seconds"])
        return answer

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


def busy_cores_now() -> Optional[float]:
    """CPU seconds the whole machine has spent busy so far (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat", encoding="utf-8") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def busy_loops(count: int) -> List[subprocess.Popen]:
    """`count` processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: List[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def threads_under_load(busy_cores: int, repeats: int, onnx: Optional[Path]) -> None:
    """The `--busy-cores` measurement (see the module docstring)."""
    import importlib.util

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = random_model("vit_b_ori", seed=0)
        torch.save(model.state_dict(), folder / "weights.pt")
        torch.save(torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(1)), folder / "image.pt")
        configurations = ["fixed-1", "fixed", "torch"]
        if importlib.util.find_spec("onnxruntime") is not None:
            if onnx is None:
                from SAMMed3DLib.backends.onnx_export import export_model

                export_model(model, folder / "onnx")
            else:
                (folder / "onnx").symlink_to(onnx.resolve())
            configurations += ["onnx-1", "onnx"]
        del model
        workers = {c: Worker("threads", folder, "cpu", c) for c in configurations}
        idle: dict = {c: [] for c in configurations}
        busy: dict = {c: [] for c in configurations}
        outside: dict = {(c, phase): [] for c in configurations for phase in ("idle", "busy")}
        for _ in range(repeats):
            for times in (idle, busy):
                loops = busy_loops(busy_cores) if times is busy else []
                time.sleep(0.3 if loops else 0.0)
                try:
                    for configuration, worker in workers.items():
                        time.sleep(0.05)  # the previous child's OpenMP threads spin for up to ~10 ms after it ends
                        before = busy_cores_now()
                        answer = worker.encode()
                        times[configuration].append(answer["seconds"])
                        if before is not None:  # cores kept busy by others than this encode and our loops
                            others = (busy_cores_now() - before - answer["cpu"]) / answer["seconds"] - len(loops)
                            outside[configuration, "busy" if loops else "idle"].append(others)
                finally:
                    stop(loops)
        for worker in workers.values():
            worker.close()
        print(f"{os.cpu_count()} cores, torch {torch.__version__} default {torch.get_num_threads()} threads, "
              f"{busy_cores} busy loop(s); median of {repeats} encodes of a 128^3 patch, taken in turn, idle and busy "
              f"rounds interleaved; 1-minute load average after: {os.getloadavg()[0]:.2f}")
        print(f"{'configuration':28s} {'idle s':>8s} {'busy s':>8s} {'busy / 1-thread idle':>21s}   "
              "other load (cores, idle / busy rounds)")
        titles = {"fixed-1": "torch, 1 thread", "fixed": "torch, default threads", "torch": "TorchPredictor",
                  "onnx-1": "ONNX Runtime, 1 thread", "onnx": "OnnxPredictor"}
        for configuration in configurations:
            single = statistics.median(idle["onnx-1" if configuration.startswith("onnx") else "fixed-1"])
            i, b = statistics.median(idle[configuration]), statistics.median(busy[configuration])
            load = " / ".join(f"{statistics.median(outside[configuration, phase]):.2f}"
                              if outside[configuration, phase] else "?" for phase in ("idle", "busy"))
            print(f"{titles[configuration]:28s} {i:8.3f} {b:8.3f} {b / single:21.2f}   {load}")
        today = statistics.median(idle["fixed"])
        print(f"TorchPredictor idle / default threads idle: {statistics.median(idle['torch']) / today:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--busy-cores", type=int, help="time the CPU thread choice with this many cores kept busy")
    parser.add_argument("--onnx", type=Path, help="with --busy-cores: an ONNX export of vit_b_ori (any weights)")
    parser.add_argument("--serve", choices=["reference", "ours", "threads"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder, args.device, args.dtype)
        return
    if args.busy_cores is not None:
        threads_under_load(args.busy_cores, args.repeats, args.onnx)
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
