"""``clipose-demo`` (``make demo``): the synthetic camera and the pose node as two processes
over DDS, watched live against ground truth.

It starts the same two nodes with the same parameter file (``config/pose.yaml``) as
``ros2 launch clipose_ros pose.launch.py use_synthetic_camera:=true``, which needs launch_ros (not
on PyPI). Every second it prints input and output rate, latency p50/p95 (from the node's
``/diagnostics``), dropped frames, objects, and rotation / translation error of the published
detections against the camera's ground truth. At the end it prints a summary and writes
``summary.json`` and overlay PNGs (the node's debug image, ground-truth boxes added in white)
into ``--out``. DDS stays on loopback, in a random domain unless ROS_DOMAIN_ID is set.

The processes come from :mod:`clipose_ros.ros.processes`, the watcher is
:class:`clipose_ros.ros.monitor.Monitor`, the scores :mod:`clipose_ros.core.scoring`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipose_ros.core.scoring import per_class_line, summarise
from clipose_ros.ros import processes
from clipose_ros.ros.entry_points import require_ros
from clipose_ros.ros.parameters import SENSOR_CHOICES


@dataclass
class DemoConfig:
    """What ``clipose-demo`` runs (its command-line options)."""

    out: Path = Path("demo_out")
    duration: float = 30.0  # seconds of streaming, counted from the first result
    rate: float = 10.0  # camera frames per second
    scenes: int = 6  # rendered scenes
    hold: float = 5.0  # seconds per scene
    seed: int = 0
    source: str = ""  # replay this NOCS-format folder instead
    sensor: str = ""  # sensor model of the rendered scenes; "": config/pose.yaml's
    device: str = ""  # "": cpu, unless --param device=... says otherwise
    overlays: int = 4  # overlay PNGs to write
    pose_model: str = ""  # instead of config/pose.yaml's
    segmenter_weights: str = ""  # instead of config/pose.yaml's
    pose_node: list[str] = field(default_factory=list)  # command instead of the pose node
    params: dict = field(default_factory=dict)  # further pose_node parameters (--param)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.duration <= 0 or self.rate <= 0 or self.scenes < 1:
            raise ValueError("--duration and --rate must be > 0, --scenes >= 1")
        if self.sensor not in ("", *SENSOR_CHOICES):
            raise ValueError(f"--sensor {self.sensor!r}: one of {', '.join(SENSOR_CHOICES)}")
        for name in ("device", "pose_model", "segmenter_weights"):
            if getattr(self, name) and name in self.params:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} and --param {name}=... both set {name}: give one")

    def commands(self) -> dict[str, list[str]]:
        """The camera and pose node commands, with this run's parameter overrides."""
        camera = {"rate_hz": self.rate, "scenes": self.scenes, "seed": self.seed,
                  "hold_s": self.hold}
        if self.source:
            camera["source"] = str(Path(self.source).resolve())
        if self.sensor:
            camera["sensor"] = self.sensor
        node = {"device": self.device or "cpu", **self.params}
        if self.pose_model:
            node["pose_model"] = self.pose_model
        if self.segmenter_weights:
            node["segmenter_weights"] = self.segmenter_weights
        return processes.node_commands(processes.config_file(), camera, node,
                                       self.pose_node or None)


def status_line(elapsed: float, frames: list[dict], diag: dict[str, str]) -> str:
    """The once-a-second line: the node's rates, latency and drops, the last second's errors."""
    recent = [f for f in frames if f["received_ns"] > time.time_ns() - 1e9]
    s = summarise(recent)
    return (f"t={elapsed:5.1f}s in {diag.get('input_hz', '-'):>5} Hz  "
            f"out {diag.get('output_hz', '-'):>5} Hz  latency p50/p95 "
            f"{diag.get('latency_p50_ms', '-')}/{diag.get('latency_p95_ms', '-')} ms"
            f"  dropped {diag.get('frames_dropped', '-')}  objects "
            f"{diag.get('objects', '-')}  rot err {s['rotation_error_deg_median']:.1f}"
            f" deg  trans err {s['translation_error_cm_median']:.1f} cm")


def watch(monitor, procs: dict, cfg: DemoConfig) -> tuple[str | None, list[str]]:
    """Spin the monitor until ``cfg.duration`` s after the first result (or a process stops):
    a status line a second, an overlay every ``duration / overlays`` s. Returns the name of a
    process that stopped (None) and the overlay files."""
    import rclpy

    start = time.monotonic()
    overlays: list[str] = []
    seen = False
    next_line, next_overlay = start + 1.0, start + 8.0
    while time.monotonic() - start < cfg.duration + 60:
        rclpy.spin_once(monitor, timeout_sec=0.05)
        for name, (proc, _) in procs.items():
            if proc.poll() is not None:
                return name, overlays
        frames, diag = monitor.snapshot()
        if frames and not seen:
            seen = True
            print(f"demo: first result after {time.monotonic() - start:.1f} s (start-up); "
                  f"streaming for {cfg.duration:g} s")
            start = time.monotonic()  # the duration counts from the first result
            next_line, next_overlay = start + 1.0, start + 2.0
        now = time.monotonic()
        if seen and now - start >= cfg.duration:
            break
        if now >= next_line:
            next_line = max(next_line + 1.0, now + 0.5)
            print(status_line(now - start, frames, diag), flush=True)
        if seen and now >= next_overlay and len(overlays) < cfg.overlays:
            path = cfg.out / f"overlay_{len(overlays):02d}.png"
            if monitor.save_overlay(path):
                overlays.append(str(path))
            next_overlay = time.monotonic() + max(cfg.duration / max(cfg.overlays, 1), 1.0)
    return None, overlays


def print_summary(summary: dict, cfg: DemoConfig) -> None:
    diag = summary["diagnostics"]
    print(
        f"demo summary: {summary['output_frames']} output frames in {cfg.duration:g} s; "
        f"node input {diag.get('input_hz')} Hz, output {diag.get('output_hz')} Hz, latency "
        f"p50/p95 {diag.get('latency_p50_ms')}/{diag.get('latency_p95_ms')} ms, dropped "
        f"{diag.get('frames_dropped')}, rejected {diag.get('frames_rejected')}\n"
        f"  per frame (p50): segment {diag.get('segment_p50_ms')} ms, points "
        f"{diag.get('points_p50_ms')} ms, pose {diag.get('pose_p50_ms')} ms, publish "
        f"{diag.get('publish_p50_ms')} ms\n"
        f"  ground truth: {summary['ground_truth_objects']} object-frames, "
        f"{100 * summary['found_fraction']:.1f} % found within 10 deg / 5 cm, median error "
        f"{summary['rotation_error_deg_median']:.1f} deg / "
        f"{summary['translation_error_cm_median']:.2f} cm; ids: "
        f"{summary['objects_with_one_id']} objects kept one id, "
        f"{summary['objects_with_changing_id']} changed\n"
        f"  per class (detected / found %): {per_class_line(summary['per_class'])}\n"
        f"  wrote {cfg.out / 'summary.json'} and {len(summary['overlays'])} overlays "
        f"({cfg.out}/overlay_*.png)"
    )


def run_demo(cfg: DemoConfig) -> dict:
    """Start the two nodes, watch them for ``cfg.duration`` s, write and return the summary."""
    import rclpy  # ROS imports here, once main has checked that ROS is there

    from clipose_ros.ros.monitor import Monitor

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    env = processes.ros_environment()
    os.environ.update({k: env[k] for k in processes.DDS_VARIABLES if k in env})
    commands = cfg.commands()
    print(f"demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} (loopback only); logs in {out}/logs")
    for name, cmd in commands.items():
        print(f"demo: {name}: {' '.join(cmd)}")
    procs = processes.start_processes(commands, out / "logs", env)
    rclpy.init()
    monitor = Monitor()
    try:
        failed, overlays = watch(monitor, procs, cfg)
    finally:
        frames, diag = monitor.snapshot()
        monitor.destroy_node()
        rclpy.try_shutdown()
        codes = processes.stop_processes(procs)
    if failed:
        log = out / "logs" / f"{failed}.log"
        raise SystemExit(f"demo: {failed} stopped (exit code {codes[failed]}); last lines of "
                         f"{log}:\n{processes.tail(log)}")
    if not frames:
        raise SystemExit(f"demo: no detections received in {cfg.duration + 60:g} s; see "
                         f"{out}/logs:\n{processes.tail(out / 'logs' / 'pose_node.log')}")
    summary = summarise(frames)
    summary.update({
        "duration_s": cfg.duration,
        "output_frames": len(frames),
        "diagnostics": diag,
        "overlays": overlays,
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "domain_id": env["ROS_DOMAIN_ID"],
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print_summary(summary, cfg)
    return summary


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--duration", type=float, default=defaults.duration,
                        help="seconds of streaming")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="camera frames per second")
    parser.add_argument("--scenes", type=int, default=defaults.scenes, help="rendered scenes")
    parser.add_argument("--hold", type=float, default=defaults.hold, help="seconds per scene")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--source", default="", help="replay this NOCS-format folder instead")
    parser.add_argument("--sensor", default="", choices=("", *SENSOR_CHOICES),
                        help="sensor model of the rendered scenes (none: ideal frames; "
                             "default: config/pose.yaml's)")
    parser.add_argument("--device", default=defaults.device, help="torch device (default cpu)")
    parser.add_argument("--overlays", type=int, default=defaults.overlays,
                        help="overlay PNGs to write")
    parser.add_argument("--pose-model", default="", help="instead of config/pose.yaml's")
    parser.add_argument("--segmenter-weights", default="", help="instead of config/pose.yaml's")
    parser.add_argument("--pose-node", default="",
                        help="command that starts a pose node instead of clipose_ros.ros.node "
                             "(ROS arguments are appended)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pose_node parameter instead of config/pose.yaml's (repeatable), "
                             "e.g. --param score_threshold=0.3")
    values = vars(parser.parse_args(argv))
    try:
        values.update(pose_node=values["pose_node"].split(),
                      params=processes.parse_node_params(values.pop("param")))
        return DemoConfig(**values)
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    require_ros("clipose-demo")
    run_demo(cfg)


if __name__ == "__main__":
    main()
