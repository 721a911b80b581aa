"""End-to-end speed of pose_node over DDS: sustained frames/s, stamp-to-TF latency, stage split,
memory growth.

The synthetic camera streams 640x480 frames with 4 objects faster than the node can follow
(``--rate``, default 30 Hz), so the node's output rate is what it sustains; its one-slot buffer
drops the rest. Latency is measured in this process as TF arrival time minus the image stamp
(camera, node and this listener share the machine's clock). The stage split (segmentation,
points preparation, pose network, publishing) is the node's own median per stage from
/diagnostics. Memory is the node process's resident set size at ``--memory-after`` seconds and
at the end.

    .venv/bin/python bench/node_speed.py                    # 10 minutes, the README's numbers
    .venv/bin/python bench/node_speed.py --short            # 25 s smoke run
    .venv/bin/python bench/node_speed.py --device cuda      # GPU figures where CUDA exists
    .venv/bin/python bench/node_speed.py --param pose_subsets=1  # any node parameter

Results: a table on the terminal and JSON in ``--out`` (default bench_out/node_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from clipose_ros.ros.processes import (
    DDS_VARIABLES,
    config_file,
    node_commands,
    parse_node_params,
    ros_environment,
    start_processes,
    stop_processes,
)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured")
    parser.add_argument("--short", action="store_true", help="25 s run, memory after 10 s")
    parser.add_argument("--memory-after", type=float, default=60.0,
                        help="seconds into the run of the first memory sample")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objects", type=int, default=4, help="objects per rendered scene")
    parser.add_argument("--source", default="", help="replay this NOCS-format folder instead")
    parser.add_argument("--pose-node", default="", help="command starting another pose node")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pose_node parameter (repeatable), e.g. --param pose_subsets=1")
    parser.add_argument("--out", type=Path, default=Path("bench_out/node_speed.json"))
    args = parser.parse_args(argv)
    if args.short:
        args.duration, args.memory_after, args.warmup = 25.0, 10.0, 3.0

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from clipose_ros.ros.convert import stamp_to_ns

    env = ros_environment()
    os.environ.update({k: env[k] for k in DDS_VARIABLES if k in env})
    camera = {"rate_hz": args.rate, "scenes": 3, "seed": 3, "min_objects": args.objects,
              "max_objects": args.objects, "hold_s": 3600.0 if args.source else 20.0,
              "distractors": False}
    if args.source:
        camera["source"] = str(Path(args.source).resolve())
    try:
        node_params = {"device": args.device, **parse_node_params(args.param)}
    except ValueError as err:
        parser.error(str(err))
    commands = node_commands(config_file(), camera, node_params,
                             args.pose_node.split() if args.pose_node else None)
    log_dir = args.out.parent / "node_speed_logs"
    procs = start_processes(commands, log_dir, env)
    node_pid = procs["pose_node"][0].pid

    rclpy.init()
    listener = rclpy.create_node("node_speed_listener")
    lock = threading.Lock()
    latencies: list[tuple[float, float]] = []  # (receive time, latency ms), one per stamp
    seen_stamps: set[int] = set()
    diag: dict[str, str] = {}

    def on_tf(msg) -> None:
        now = time.time_ns()
        for t in msg.transforms:
            stamp = stamp_to_ns(t.header.stamp)
            with lock:
                if stamp not in seen_stamps:
                    seen_stamps.add(stamp)
                    latencies.append((time.monotonic(), (now - stamp) / 1e6))

    def on_diag(msg) -> None:
        for status in msg.status:
            if "pose estimation" in status.name:
                with lock:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in status.values})

    listener.create_subscription(TFMessage, "/tf", on_tf,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    listener.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(listener)
    threading.Thread(target=executor.spin, daemon=True).start()

    print(f"node_speed: waiting for the first TF (logs in {log_dir})", flush=True)
    try:
        deadline = time.monotonic() + 180
        while not latencies:
            stopped = [name for name, (p, _) in procs.items() if p.poll() is not None]
            if stopped or time.monotonic() > deadline:
                why = f"{', '.join(stopped)} stopped" if stopped else "timed out"
                raise SystemExit(f"node_speed: no TF from the node ({why}); see {log_dir}")
            time.sleep(0.2)
        t0 = time.monotonic() + args.warmup
        time.sleep(args.warmup)
        memory = {}
        next_report = time.monotonic() + 10
        while time.monotonic() - t0 < args.duration:
            time.sleep(0.5)
            elapsed = time.monotonic() - t0
            if "first" not in memory and elapsed >= args.memory_after:
                memory["first"] = (round(elapsed), rss_mb(node_pid))
            if time.monotonic() >= next_report:
                next_report += 10
                with lock:
                    n = sum(1 for t, _ in latencies if t >= t0)
                print(f"  {elapsed:5.0f} s: {n / elapsed:.2f} frames/s, "
                      f"RSS {rss_mb(node_pid):.0f} MiB", flush=True)
        memory["end"] = (round(time.monotonic() - t0), rss_mb(node_pid))
        with lock:
            window = [lat for t, lat in latencies if t >= t0]
            stages = dict(diag)
    finally:
        executor.shutdown()
        listener.destroy_node()
        rclpy.try_shutdown()
        stop_processes(procs)

    fps = len(window) / args.duration
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "device": args.device,
        "image": "640x480",
        "objects_per_frame": args.objects,
        "camera_rate_hz": args.rate,
        "duration_s": args.duration,
        "frames_per_s": fps,
        "latency_stamp_to_tf_ms": {"p50": float(np.percentile(window, 50)),
                                   "p95": float(np.percentile(window, 95))},
        "stage_p50_ms": {k[: -len("_p50_ms")]: float(v) for k, v in stages.items()
                         if k.endswith("_p50_ms") and k[:-7] in
                         ("segment", "points", "pose", "track", "publish", "total")},
        "frames_dropped": int(stages.get("frames_dropped", 0)),
        "memory_rss_mib": {f"after_{m[0]}s": m[1] for m in memory.values()},
        "commands": {k: " ".join(v) for k, v in commands.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    s = result["stage_p50_ms"]
    mem = list(result["memory_rss_mib"].items())
    print("\n| device | frames/s | latency p50 / p95 (ms) | segment / points / pose / publish "
          "(ms, p50) | RSS " + " -> ".join(k for k, _ in mem) + " (MiB) |")
    print("|---|---|---|---|---|")
    print(f"| {args.device} | {fps:.1f} | {result['latency_stamp_to_tf_ms']['p50']:.0f} / "
          f"{result['latency_stamp_to_tf_ms']['p95']:.0f} | {s.get('segment', float('nan')):.1f}"
          f" / {s.get('points', float('nan')):.1f} / {s.get('pose', float('nan')):.1f} / "
          f"{s.get('publish', float('nan')):.1f} | "
          + " -> ".join(f"{v:.0f}" for _, v in mem) + " |")
    print(f"node_speed: wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
