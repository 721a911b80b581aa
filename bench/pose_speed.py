"""Speed and memory of the exported pose model (not a test: numbers depend on the machine).

For batch sizes 1, 4, 8, 16 (1028 points each): median milliseconds per call, objects per
second, and the peak extra memory of a call (CPU: growth of the resident set size, sampled
every millisecond from ``/proc/self/statm``; CUDA: ``max_memory_allocated``).
Also the points preparation (mask + depth -> points) per object, which runs before the model,
and the mug handle search (``core/mug_handle.py``) that follows it for each mug, the laptop lid
fit (``core/laptop_lid.py``) for each laptop, the slide of a box over its points
(``core/box_fit.py``) and the fit of an object the image border cuts (``core/border_fit.py``).

    .venv/bin/python bench/pose_speed.py --model models/clipose_pose_clip.pt --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.core.border_fit import fit_to_far_side
from clipose_ros.core.box_fit import contain_points
from clipose_ros.core.laptop_lid import turn_to_lid
from clipose_ros.core.mug_handle import ring_points, turn_to_handle
from clipose_ros.model.loader import load_pose_model
from clipose_ros.points import PointsConfig, cut_sides, prepare_points
from clipose_ros.ros.parameters import DEFAULT_POSE_MODEL


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size every millisecond while active."""

    def __enter__(self) -> PeakRss:
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def bench_model(
    model, n: int, batch: int, device: str, repeats: int, cut_input: bool = False
) -> dict:
    g = torch.Generator().manual_seed(batch)
    pts = torch.randn(batch, n, 3, generator=g) * torch.tensor([0.05, 0.04, 0.03])
    pts = (pts + torch.tensor([0.0, 0.0, 0.7])).to(device)
    cls = (torch.arange(batch) % 6 + 1).to(device)
    inputs = [pts, cls]
    if cut_input:  # a file that reads the cut direction (NetConfig.cut_input): half are cut
        inputs.append((torch.arange(batch) % 2).float()[:, None].expand(-1, 3).to(device))
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(*inputs)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with PeakRss() as mem:
            for _ in range(repeats):
                start = time.perf_counter()
                model(*inputs)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else (mem.peak - mem.base) / 2**20
    )
    return {
        "batch": batch,
        "median_ms": round(ms, 2),
        "objects_per_s": round(batch * 1e3 / ms, 1),
        "peak_extra_mb": round(peak, 1),
    }


def bench_points(repeats: int) -> float:
    """Median ms of prepare_points for a 150x120-pixel object in a 640x480 frame."""
    depth = np.zeros((480, 640), np.float32)
    mask = np.zeros((480, 640), bool)
    yy, xx = np.mgrid[180:300, 250:400]
    depth[180:300, 250:400] = 0.7 + 0.0002 * (yy - 180) + 0.0001 * (xx - 250)
    mask[180:300, 250:400] = True
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prepare_points(depth, mask, CAMERA_INTRINSICS, PointsConfig(), rng)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_handle(repeats: int, count: int = 15000) -> float:
    """Median ms of the handle search on a mug-like cloud: the camera-facing half of a
    4.5 cm-radius body and a handle beside it, ``count`` points (a mug at 0.7 m), with the
    band of pixels round its mask (``ring_points``) over a background 20 cm behind."""
    rng = np.random.default_rng(0)
    body = int(0.9 * count)
    angle = rng.uniform(0.0, np.pi, body) + np.pi  # the half facing the camera (-z)
    height = rng.uniform(-0.045, 0.045, body)
    points = np.stack([0.045 * np.cos(angle), height, 0.045 * np.sin(angle)], axis=1)
    arc = rng.uniform(-np.pi / 2, np.pi / 2, count - body)
    handle = np.stack([0.055 + 0.02 * np.cos(arc), 0.025 * np.sin(arc),
                       rng.uniform(-0.006, 0.006, count - body)], axis=1)
    cloud = np.concatenate([points, handle]) + np.array([0.0, 0.0, 0.7])
    R, t, size = np.eye(3), np.array([0.0, 0.0, 0.7]), np.array([0.15, 0.09, 0.09])
    uv = cloud @ CAMERA_INTRINSICS.T
    cols, rows = np.round(uv[:, :2] / uv[:, 2:]).astype(np.int64).T
    mask = np.zeros((480, 640), dtype=bool)
    mask[rows, cols] = True
    depth = np.where(mask, 0.7, 0.9).astype(np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ring = ring_points(depth, mask, CAMERA_INTRINSICS, t, size)
        turn_to_handle(cloud, R, t, size, ring=ring)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_laptop_lid(repeats: int, count: int = 30000) -> float:
    """Median ms of the lid fit of one laptop: ``count`` points (a laptop at 0.8 m), half on a
    34 x 30 cm base, half on a lid hinged at its back edge and opened 110 deg, 3 mm noise."""
    rng = np.random.default_rng(0)
    half = count // 2
    base = np.column_stack([rng.uniform(-0.15, 0.15, half), np.full(half, -0.09),
                            rng.uniform(-0.17, 0.17, half)])
    along = rng.uniform(0.0, 0.3, count - half)  # up the lid from the hinge at x = -0.15
    opening = np.radians(110.0)
    lid = np.column_stack([-0.15 + along * np.cos(opening), -0.09 + along * np.sin(opening),
                           rng.uniform(-0.17, 0.17, count - half)])
    points = np.concatenate([base, lid]) + rng.normal(0.0, 0.003, size=(count, 3))
    R = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # y up in the image
    points = points @ R.T + np.array([0.0, 0.0, 0.8])
    turned = R @ np.array([[np.cos(0.5), 0.0, np.sin(0.5)], [0.0, 1.0, 0.0],
                           [-np.sin(0.5), 0.0, np.cos(0.5)]])  # 29 deg off about y
    t, size = np.array([0.0, 0.0, 0.8]), np.array([0.34, 0.2, 0.34])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        turn_to_lid(points, turned, t, size)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_border_fit(repeats: int, count: int = 30000) -> float:
    """Median ms of the border fit of one cut object: the mask's border test on a 640x480
    mask and the fit on ``count`` points (a laptop at 0.8 m)."""
    rng = np.random.default_rng(0)
    points = rng.uniform([-0.1, -0.1, 0.7], [0.2, 0.05, 0.9], size=(count, 3))
    mask = np.zeros((480, 640), dtype=bool)
    mask[200:400, 450:] = True  # cut on the right
    R, t, size = np.eye(3), np.array([0.02, -0.02, 0.8]), np.array([0.34, 0.2, 0.3])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit_to_far_side(points, R, t, size, cut_sides(mask))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_box_fit(repeats: int, count: int = 30000) -> float:
    """Median ms of the slide of one box over ``count`` points (a laptop at 0.8 m) whose
    third nearest the camera's right is a wall behind it: the slower, spread-wider case."""
    rng = np.random.default_rng(0)
    points = rng.uniform([-0.17, -0.1, 0.65], [0.17, 0.1, 0.95], size=(count, 3))
    points[: count // 3, 0] += 0.3  # spilled onto the background: wider than the box
    R, t, size = np.eye(3), np.array([0.05, 0.0, 0.8]), np.array([0.34, 0.2, 0.3])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        contain_points(points, R, t, size)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_POSE_MODEL))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        model, meta = load_pose_model(args.model, device)
        for b in (int(x) for x in args.batches.split(",")):
            row = {
                "device": device,
                **bench_model(model, meta["n_points"], b, device, args.repeats,
                              bool(meta.get("net", {}).get("cut_input", False))),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    points_ms = bench_points(args.repeats)
    handle_ms = bench_handle(args.repeats)
    lid_ms = bench_laptop_lid(args.repeats)
    border_ms = bench_border_fit(args.repeats)
    box_ms = bench_box_fit(args.repeats)
    load = os.getloadavg()[0]
    print(f"prepare_points: {points_ms:.2f} ms per object (640x480 frame, 18000-pixel mask)")
    print(f"mug handle search: {handle_ms:.2f} ms per mug (15000 points, with the ring)")
    print(f"laptop lid fit: {lid_ms:.2f} ms per laptop (30000 points)")
    print(f"box fit: {box_ms:.2f} ms per object (30000 points, a third spilled)")
    print(f"border fit: {border_ms:.2f} ms per cut object (30000 points, 640x480 mask)")
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load:.1f}")
    print("| device | batch | median ms | objects/s | peak extra MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['device']} | {r['batch']} | {r['median_ms']} | {r['objects_per_s']} | "
            f"{r['peak_extra_mb']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "prepare_points_ms": points_ms,
                    "mug_handle_ms": handle_ms,
                    "laptop_lid_ms": lid_ms,
                    "border_fit_ms": border_ms,
                    "box_fit_ms": box_ms,
                    "threads": args.threads,
                    "load_average": load,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
