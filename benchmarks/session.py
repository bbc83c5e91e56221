"""Interactive session speed on a large CT: first click, cached clicks, and what re-encoding every click costs.

    python benchmarks/session.py [--clicks 10] [--device cpu] [--threads 2] [--max-rois 1] [--segments 5]

A synthetic 512 x 512 x 300 CT at 0.7 x 0.7 x 1 mm (int16 HU: air, a body, lungs, a bright lesion) and the real
vit_b_ori network with random weights (`build_sam_med3d()`). Times are end to end (`add_click`: resampling,
normalisation, encoder, decoder, paste-back into the full-size mask). Targets (CPU, 2 cores): first click <= 1.3 s,
cached click <= 50 ms, peak memory growth <= 1.5 GB. "Re-encoding every click" times the reference's way: a fresh
ROI (resample + encode + decode + paste) for each click. Random weights give an arbitrary mask, which touches the
ROI's faces and would make the session add ROIs (each one more encode); so the timing run holds one ROI
(`--max-rois 1`), and `--max-rois 8` shows the growth. The load average is printed: other processes on the same
cores slow everything down, multi-threaded BLAS and OpenMP most.

Then the memory of what the Segment Editor effect keeps for `--segments` segments of 3 clicks each (sessions sharing
one embedding cache, and the prompt book's bookkeeping: SAMMed3DLib.slicer.prompts), writing into array segments as
the editor would (target: under 1 GB above the volume itself, which the effect holds once per source volume). The
layout before held three full-volume uint8 arrays per segment besides its undo.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from SAMMed3DLib.backends.torch_predictor import TorchPredictor, select_device
from SAMMed3DLib.interactive.geometry import Volume
from SAMMed3DLib.interactive.session import Click, EmbeddingCache, InteractiveSession
from SAMMed3DLib.model import build_sam_med3d
from SAMMed3DLib.slicer.prompts import PromptBook
from SAMMed3DLib.testing.segments import SegmentStore


def synthetic_ct(shape=(300, 512, 512), spacing=(0.7, 0.7, 1.0), seed=0) -> Volume:
    """A CT-like int16 volume (K,J,I) in HU, LPS-oriented as most CT files are."""
    rng = np.random.default_rng(seed)
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    x = (i - shape[2] / 2) * spacing[0]
    y = (j - shape[1] / 2) * spacing[1]
    z = (k - shape[0] / 2) * spacing[2]
    body = (x[None, :] / 170) ** 2 + (y[:, None] / 120) ** 2 <= 1  # (J, I) ellipse, the same on every slice
    lungs = ((np.abs(x[None, :]) - 75) / 55) ** 2 + (y[:, None] / 80) ** 2 <= 1
    array = np.full(shape, -1000, np.int16)
    array[:, body] = 40
    array[:, lungs & body] = -850
    lesion = ((x[None, None, :] - 70) ** 2 + (y[None, :, None] + 10) ** 2 + (z[:, None, None] - 5) ** 2) <= 20**2
    array[lesion] = 60
    array += rng.integers(-20, 21, size=shape, dtype=np.int16)
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    ijk_to_ras[:3, 3] = [256 * spacing[0], 256 * spacing[1], -150 * spacing[2]]
    return Volume(array, ijk_to_ras)


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Linux: make VmHWM (peak resident memory) restart from the current resident size."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def segments_memory(predictor, volume: Volume, segments: int, clicks: int, max_rois: int) -> None:
    """Resident memory growth over `segments` segments of `clicks` clicks each, each segment on its own structure."""
    embeddings = EmbeddingCache()
    book = PromptBook(
        lambda initial: InteractiveSession(predictor, volume, initial_mask=initial, max_rois=max_rois,
                                           embeddings=embeddings),
        volume.array.shape,
    )
    store = SegmentStore(volume.array.shape, [f"Segment_{n + 1}" for n in range(segments)])
    k, j, i = (n // 2 for n in volume.array.shape)
    spots = [(i + di, j + dj, k + dk) for di, dj, dk in
             ((100, -14, 5), (-100, -14, 5), (0, -60, -60), (0, 60, 60), (0, 0, 0), (60, 40, -40))]
    rng = np.random.default_rng(2)
    resident = rss_bytes("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    for segment_id, spot in zip(store.segments, spots * segments):
        centre = volume.ijk_to_ras_points([spot])[0]
        for n in range(clicks):
            ras = centre + rng.uniform(-8, 8, size=3)
            key = store.key(segment_id)
            book.reconcile(key, store.read(segment_id), store.stamp)
            _, change = book.add_click(key, ras, Click(tuple(ras), n != 1), store.read(segment_id))
            store.write(book, segment_id, change)
    seconds = time.perf_counter() - started
    grown, peak = rss_bytes("VmRSS") - resident, rss_bytes("VmHWM") - resident
    full = volume.array.size  # one full-volume uint8 array
    cache = sum(int(e.element_size() * e.nelement()) if hasattr(e, "element_size") else np.asarray(e).nbytes
                for e in embeddings._items.values())
    print(f"{segments} segments x {clicks} clicks ({seconds:.1f} s): resident memory +{grown / 2**30:.2f} GB "
          f"(peak +{peak / 2**30:.2f} GB; target < 1 GB above the volume's {volume.array.nbytes / 2**30:.2f} GB): "
          f"sessions and bookkeeping {book.nbytes / 2**20:.0f} MB, {len(embeddings)} embeddings "
          f"{cache / 2**20:.0f} MB, the segments themselves {store.nbytes / 2**20:.0f} MB; the layout before kept "
          f"{3 * segments * full / 2**30:.2f} GB of full-volume masks besides its undo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=10, help="cached clicks to time after the first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--max-rois", type=int, default=1)
    parser.add_argument("--segments", type=int, default=5, help="segments of 3 clicks each for the memory run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    volume = synthetic_ct()
    predictor = TorchPredictor(build_sam_med3d(), select_device(args.device))
    lesion_ras = volume.ijk_to_ras_points([[256 + 100, 256 - 14, 155]])[0]
    rng = np.random.default_rng(1)
    nearby = [lesion_ras + rng.uniform(-25, 25, size=3) for _ in range(args.clicks)]
    print(f"volume {volume.array.shape[::-1]} voxels at {volume.spacing.round(2).tolist()} mm, "
          f"device {predictor.device}, {torch.get_num_threads()} torch threads, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}")

    # Warm torch up on a throwaway session (first-call allocations), as an application would once at start-up.
    InteractiveSession(predictor, volume, max_rois=1).add_click(lesion_ras)

    resident = rss_bytes("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    session = InteractiveSession(predictor, volume, max_rois=args.max_rois)
    opened = time.perf_counter() - started
    firsts = [session.add_click(lesion_ras)]
    cached = [session.add_click(point, positive=bool(n % 2 == 0)) for n, point in enumerate(nearby)]
    growth = rss_bytes("VmHWM") - resident
    # More first clicks, each on a fresh session: also what every click costs when each one re-encodes (reference).
    firsts += [InteractiveSession(predictor, volume, max_rois=args.max_rois).add_click(p) for p in nearby[:2]]
    first = sorted(firsts, key=lambda p: p.timings["total"])[len(firsts) // 2]
    cached = [p for p in cached if p.rois == firsts[0].rois]  # clicks that opened no ROI

    def phases(timings) -> str:
        names = ("preprocess", "encode", "decode", "paste")
        return ", ".join(f"{name} {timings[name] * 1000:.0f} ms" for name in names)

    print(f"session opened (CT/MR decision '{session.modality}'): {opened * 1000:.0f} ms")
    print(f"first click: median {first.timings['total']:.3f} s, min "
          f"{min(p.timings['total'] for p in firsts):.3f} s of {len(firsts)} (target <= 1.3 s), rois "
          f"{first.rois}: {phases(first.timings)}")
    per_cached = statistics.median(p.timings["total"] for p in cached)
    totals = [p.timings["total"] * 1000 for p in cached]
    print(f"cached click: median {per_cached * 1000:.1f} ms, min {min(totals):.1f}, max {max(totals):.1f} ms of "
          f"{len(cached)} (target <= 50 ms): "
          + phases({name: statistics.median(p.timings[name] for p in cached) for name in cached[0].timings}))
    print(f"peak memory growth over the session's {1 + len(cached)} clicks: {growth / 2**30:.2f} GB "
          f"(target <= 1.5 GB); {len(session.frames)} ROI(s) encoded")
    print(f"10 clicks re-encoding every click (as the reference): {10 * first.timings['total']:.1f} s; "
          f"with the cached embedding: {first.timings['total'] + 9 * per_cached:.1f} s")
    del session, firsts, cached, first
    segments_memory(predictor, volume, args.segments, 3, args.max_rois)


if __name__ == "__main__":
    main()
