"""``clipose-demo`` (``make demo``): the synthetic camera and the pose node as two processes
over DDS, watched live against ground truth.

It starts the same two nodes with the same parameter file (``config/pose.yaml``) as
``ros2 launch clipose_ros pose.launch.py use_synthetic_camera:=true``, which needs launch_ros (not
on PyPI). Every second it prints input and output rate, latency p50/p95 (from the node's
``/diagnostics``), dropped frames, objects, and rotation / translation error of the published
detections against the camera's ground truth. At the end it prints a summary and writes
``summary.json`` and overlay PNGs (the node's debug image, ground-truth boxes added in white)
into ``--out``. DDS stays on loopback, in a random domain unless ROS_DOMAIN_ID is set.

:func:`score_frame` and :class:`Monitor` are shared with the tests and ``bench/node_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipose_ros.categories import CATEGORIES
from clipose_ros.core.structures import ObjectPose
from clipose_ros.geometry import rotation_angle_deg
from clipose_ros.ros.synthetic_camera import SENSOR_CHOICES

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Match:
    """One ground-truth object of one frame and the prediction matched to it (if any)."""

    truth_id: str
    class_name: str
    pred_id: str | None
    rot_deg: float = float("nan")
    trans_cm: float = float("nan")

    def within(self, max_rot_deg: float, max_trans_cm: float) -> bool:
        return self.pred_id is not None and self.rot_deg <= max_rot_deg and (
            self.trans_cm <= max_trans_cm)


def rotation_error_deg(R_truth: np.ndarray, R_pred: np.ndarray, symmetric: bool) -> float:
    """Geodesic angle, or the angle between the y axes when rotation about y is unobservable."""
    if not symmetric:
        return rotation_angle_deg(R_truth, R_pred)
    cos = float(np.dot(R_truth[:, 1], R_pred[:, 1]))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def score_frame(
    truths: list[ObjectPose], preds: list[ObjectPose], symmetric: list[bool],
    match_radius_m: float = 0.10,
) -> list[Match]:
    """Pair predictions with ground truth of the same class, nearest centres first (each used
    once, at most ``match_radius_m`` apart), and measure rotation and translation errors."""
    pairs = sorted(
        (float(np.linalg.norm(np.asarray(p.t) - g.t)), i, j)
        for i, g in enumerate(truths) for j, p in enumerate(preds)
        if p.class_id == g.class_id
    )
    taken_t, taken_p, out = set(), set(), {}
    for d, i, j in pairs:
        if d > match_radius_m or i in taken_t or j in taken_p:
            continue
        taken_t.add(i)
        taken_p.add(j)
        g, p = truths[i], preds[j]
        out[i] = Match(g.key, g.class_name, p.key, rotation_error_deg(g.R, p.R, symmetric[i]),
                       100.0 * d)
    return [out.get(i, Match(g.key, g.class_name, None)) for i, g in enumerate(truths)]


def _make_monitor_class():
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    from clipose_ros.ros import convert as rc
    from clipose_ros.ros.synthetic_camera import TRUTH_TOPIC, truth_is_symmetric

    class Monitor(Node):
        """Subscribes to ground truth, detections, /tf and /diagnostics; scores each output
        frame against the ground truth of the same stamp."""

        def __init__(self, detections: str = "clipose/detections",
                     truth: str = f"camera/{TRUTH_TOPIC}", name: str = "clipose_monitor") -> None:
            super().__init__(name)
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
            self.lock = threading.Lock()
            self.truth: dict[int, Detection3DArray] = {}
            self.frames: list[dict] = []  # one entry per scored output frame
            self.unscored = 0
            self.tf: list[TFMessage] = []
            self.diagnostics: dict[str, str] = {}
            self.diag_msgs = 0
            self.create_subscription(Detection3DArray, truth, self._on_truth, qos)
            self.create_subscription(Detection3DArray, detections, self._on_detections, qos)
            self.create_subscription(TFMessage, "/tf", self._on_tf,
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

        def _on_truth(self, msg) -> None:
            with self.lock:
                self.truth[rc.stamp_to_ns(msg.header.stamp)] = msg
                if len(self.truth) > 200:
                    for k in sorted(self.truth)[:-200]:
                        del self.truth[k]

        def _on_tf(self, msg) -> None:
            with self.lock:
                self.tf.append(msg)
                del self.tf[:-500]

        def _on_diag(self, msg) -> None:
            for status in msg.status:
                if "pose estimation" in status.name:
                    with self.lock:
                        self.diagnostics = {kv.key: kv.value for kv in status.values}
                        self.diagnostics["_level"] = str(int.from_bytes(status.level, "little")
                                                         if isinstance(status.level, bytes)
                                                         else status.level)
                        self.diagnostics["_message"] = status.message
                        self.diag_msgs += 1

        def _on_detections(self, msg) -> None:
            stamp = rc.stamp_to_ns(msg.header.stamp)
            with self.lock:
                truth_msg = self.truth.get(stamp)
            received = time.time_ns()
            preds = rc.poses_from_detections(msg)
            entry = {"stamp_ns": stamp, "received_ns": received, "preds": preds,
                     "frame_id": msg.header.frame_id, "matches": None}
            if truth_msg is not None:
                truths = rc.poses_from_detections(truth_msg)
                symmetric = [truth_is_symmetric(t.key) for t in truths]
                entry["matches"] = score_frame(truths, preds, symmetric)
            with self.lock:
                if truth_msg is None:
                    self.unscored += 1
                self.frames.append(entry)

        def snapshot(self) -> tuple[list[dict], dict[str, str]]:
            with self.lock:
                return list(self.frames), dict(self.diagnostics)

    return Monitor


def monitor_class():
    return _make_monitor_class()


def summarise(frames: list[dict], max_rot_deg: float = 10.0, max_trans_cm: float = 5.0) -> dict:
    """Found fraction (same class, within the error bounds), error medians and id stability."""
    matches = [m for f in frames if f["matches"] for m in f["matches"]]
    paired = [m for m in matches if m.pred_id is not None]
    # Ids must hold while a scene stays in view: count them per run of consecutive frames of
    # one scene (a scene shown again later is a new run, and may get new ids).
    ids: dict[tuple[int, str], set] = defaultdict(set)
    run, last_scene = 0, None
    for f in frames:
        if not f["matches"]:
            continue
        scene = f["matches"][0].truth_id.split("#")[0]
        run += scene != last_scene
        last_scene = scene
        for m in f["matches"]:
            if m.pred_id is not None:
                ids[(run, m.truth_id)].add(m.pred_id)
    per_class = {}
    for name in CATEGORIES:
        mine = [m for m in matches if m.class_name == name]
        if mine:
            per_class[name] = {
                "objects": len(mine),
                "found": sum(m.within(max_rot_deg, max_trans_cm) for m in mine) / len(mine),
            }

    def median(values):
        return float(np.median(values)) if values else float("nan")

    return {
        "frames_scored": sum(1 for f in frames if f["matches"] is not None),
        "ground_truth_objects": len(matches),
        "found_fraction": (sum(m.within(max_rot_deg, max_trans_cm) for m in matches)
                           / len(matches)) if matches else float("nan"),
        "paired_fraction": len(paired) / len(matches) if matches else float("nan"),
        "rotation_error_deg_median": median([m.rot_deg for m in paired]),
        "translation_error_cm_median": median([m.trans_cm for m in paired]),
        "rotation_error_deg_p90": float(np.percentile([m.rot_deg for m in paired], 90))
        if paired else float("nan"),
        "translation_error_cm_p90": float(np.percentile([m.trans_cm for m in paired], 90))
        if paired else float("nan"),
        "objects_with_one_id": sum(len(v) == 1 for v in ids.values()),
        "objects_with_changing_id": sum(len(v) > 1 for v in ids.values()),
        "bounds": {"rotation_deg": max_rot_deg, "translation_cm": max_trans_cm},
        "per_class": per_class,
    }


# ---------------------------------------------------------------------------- processes


DDS_VARIABLES = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID",
                 "FASTDDS_DEFAULT_PROFILES_FILE")


def ros_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with DDS on loopback, a domain of its own and, for
    Fast DDS, the large-image shared-memory profile, unless the caller set them already."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 100)))
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
        profile = config_file("fastdds_large_images.xml")
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def config_file(name: str = "pose.yaml") -> Path:
    """A file of config/ in the source tree, else in the installed share dir."""
    source = PACKAGE_ROOT / "config" / name
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("clipose_ros")) / "config" / name


def node_commands(params_file: Path, camera_overrides: dict | None = None,
                  node_overrides: dict | None = None, pose_node: list[str] | None = None,
                  namespace: str = "") -> dict[str, list[str]]:
    """The two processes the launch file starts, as plain commands."""
    def ros_args(overrides: dict | None) -> list[str]:
        args = ["--ros-args", "--params-file", str(params_file)]
        for key, value in (overrides or {}).items():
            if isinstance(value, bool):
                value = str(value).lower()
            args += ["-p", f"{key}:={value}"]
        return args

    ns = namespace.rstrip("/")
    camera = [sys.executable, "-m", "clipose_ros.ros.synthetic_camera", *ros_args(camera_overrides),
              "-r", f"__ns:={ns}/camera"]
    node = (pose_node or [sys.executable, "-m", "clipose_ros.ros.node"]) + ros_args(node_overrides)
    if ns:
        node += ["-r", f"__ns:={ns}"]
    return {"synthetic_camera": camera, "pose_node": node}


def start_processes(commands: dict[str, list[str]], log_dir: Path, env: dict[str, str]):
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in commands.items():
        log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True), log)
    return procs


def stop_processes(procs) -> dict[str, int | None]:
    codes = {}
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        codes[name] = proc.returncode
        log.close()
    return codes


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return "(no log)"


def _save_overlay(monitor, path: Path, timeout_s: float = 5.0) -> bool:
    """Subscribe to the debug image for one frame (the node draws it only while someone
    listens), add the ground-truth boxes of that stamp in white, write a PNG."""
    import cv2
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from clipose_ros.core.visualize import draw_pose
    from clipose_ros.ros import convert as rc

    got: dict[str, object] = {}
    sub = monitor.create_subscription(Image, "clipose/debug_image",
                                      lambda m: got.setdefault("image", m),
                                      qos_profile_sensor_data)
    info_sub = monitor.create_subscription(CameraInfo, "camera/color/camera_info",
                                           lambda m: got.setdefault("info", m),
                                           qos_profile_sensor_data)
    deadline = time.monotonic() + timeout_s
    while len(got) < 2 and time.monotonic() < deadline:
        rclpy.spin_once(monitor, timeout_sec=0.1)
    monitor.destroy_subscription(sub)
    monitor.destroy_subscription(info_sub)
    if "image" not in got:
        return False
    msg = got["image"]
    image = np.array(rc.rgb_from_image(msg))
    with monitor.lock:
        truth = monitor.truth.get(rc.stamp_to_ns(msg.header.stamp))
    if truth is not None and "info" in got:
        K = rc.intrinsics_from_camera_info(got["info"])
        layer = image.copy()
        for det in truth.detections:
            R, centre = rc.pose_from_message(det.bbox.center)
            size = np.array([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z])
            draw_pose(layer, K, R, centre, size, (255, 255, 255), axes=False)
        image = cv2.addWeighted(image, 0.45, layer, 0.55, 0.0)  # truth half-transparent
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[:, :, ::-1])
    return True


def run_demo(args: argparse.Namespace) -> dict:
    import rclpy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = ros_environment()
    os.environ.update({k: env[k] for k in DDS_VARIABLES if k in env})
    camera = {"rate_hz": args.rate, "scenes": args.scenes, "seed": args.seed,
              "hold_s": args.hold}
    if args.source:
        camera["source"] = str(Path(args.source).resolve())
    if args.sensor:
        camera["sensor"] = args.sensor
    node = {"device": args.device}
    if args.pose_model:
        node["pose_model"] = args.pose_model
    if args.segmenter_weights:
        node["segmenter_weights"] = args.segmenter_weights
    pose_node = args.pose_node.split() if args.pose_node else None
    commands = node_commands(config_file(), camera, node, pose_node)
    print(f"demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} (loopback only); logs in {out}/logs")
    for name, cmd in commands.items():
        print(f"demo: {name}: {' '.join(cmd)}")
    procs = start_processes(commands, out / "logs", env)
    rclpy.init()
    monitor = monitor_class()()
    start = time.monotonic()
    overlays, lines, seen = [], [], 0
    next_line, next_overlay = start + 1.0, start + 8.0
    failed = None
    try:
        while time.monotonic() - start < args.duration + 60 and failed is None:
            rclpy.spin_once(monitor, timeout_sec=0.05)
            for name, (proc, _) in procs.items():
                if proc.poll() is not None:
                    failed = name
            frames, diag = monitor.snapshot()
            if frames and not seen:
                seen = 1
                print(f"demo: first result after {time.monotonic() - start:.1f} s (start-up); "
                      f"streaming for {args.duration:g} s")
                start = time.monotonic()  # the duration counts from the first result
                next_line, next_overlay = start + 1.0, start + 2.0
            now = time.monotonic()
            if seen and now - start >= args.duration:
                break
            if now >= next_line:
                next_line = max(next_line + 1.0, now + 0.5)
                recent = [f for f in frames if f["received_ns"] > time.time_ns() - 1e9]
                s = summarise(recent)
                line = (f"t={now - start:5.1f}s in {diag.get('input_hz', '-'):>5} Hz  "
                        f"out {diag.get('output_hz', '-'):>5} Hz  latency p50/p95 "
                        f"{diag.get('latency_p50_ms', '-')}/{diag.get('latency_p95_ms', '-')} ms"
                        f"  dropped {diag.get('frames_dropped', '-')}  objects "
                        f"{diag.get('objects', '-')}  rot err {s['rotation_error_deg_median']:.1f}"
                        f" deg  trans err {s['translation_error_cm_median']:.1f} cm")
                print(line, flush=True)
                lines.append(line)
            if seen and now >= next_overlay and len(overlays) < args.overlays:
                path = out / f"overlay_{len(overlays):02d}.png"
                if _save_overlay(monitor, path):
                    overlays.append(str(path))
                next_overlay = time.monotonic() + max(args.duration / max(args.overlays, 1), 1.0)
    finally:
        frames, diag = monitor.snapshot()
        monitor.destroy_node()
        rclpy.try_shutdown()
        codes = stop_processes(procs)
    if failed:
        log = out / "logs" / f"{failed}.log"
        raise SystemExit(f"demo: {failed} stopped (exit code {codes[failed]}); last lines of "
                         f"{log}:\n{_tail(log)}")
    if not frames:
        raise SystemExit(f"demo: no detections received in {args.duration + 60:g} s; see "
                         f"{out}/logs:\n{_tail(out / 'logs' / 'pose_node.log')}")
    summary = summarise(frames)
    summary.update({
        "duration_s": args.duration,
        "output_frames": len(frames),
        "diagnostics": diag,
        "overlays": overlays,
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "domain_id": env["ROS_DOMAIN_ID"],
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"demo summary: {len(frames)} output frames in {args.duration:g} s; "
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
        f"  wrote {out / 'summary.json'} and {len(overlays)} overlays ({out}/overlay_*.png)"
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of streaming")
    parser.add_argument("--rate", type=float, default=10.0, help="camera frames per second")
    parser.add_argument("--scenes", type=int, default=6, help="rendered scenes")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default="", help="replay this NOCS-format folder instead")
    parser.add_argument("--sensor", default="", choices=("", *SENSOR_CHOICES),
                        help="sensor model of the rendered scenes (none: ideal frames; "
                             "default: config/pose.yaml's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlays", type=int, default=4, help="overlay PNGs to write")
    parser.add_argument("--pose-model", default="", help="instead of config/pose.yaml's")
    parser.add_argument("--segmenter-weights", default="", help="instead of config/pose.yaml's")
    parser.add_argument("--pose-node", default="",
                        help="command that starts a pose node instead of clipose_ros.ros.node "
                             "(ROS arguments are appended)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.scenes < 1:
        parser.error("--duration and --rate must be > 0, --scenes >= 1")
    run_demo(args)


if __name__ == "__main__":
    main()
