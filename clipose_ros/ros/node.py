"""``pose_node``: RGB-D in, 9D object poses out as TF, Detection3DArray, markers and a debug image.

A thin shell around :class:`clipose_ros.core.pipeline.PosePipeline`:

- inputs: RGB, depth and camera_info, synchronised by stamp (approximate, ``sync_slop``),
  sensor-data QoS unless ``reliable_qos``; each set is checked (sizes, frame ids, encodings,
  buffers, stamps, intrinsics, usable depth in plausible units) and a bad one is refused with a
  throttled warning that names the stream and says why; a message that never makes a set is
  counted and reported, and so is a stamp far from the node's clock (kept out of the latency);
- perception runs on a worker thread fed by a one-slot "latest set" buffer: while the model is
  busy, older sets are replaced (and counted as dropped), so latency never piles up;
- outputs carry the input image's header; TF child frames are ``<frame_prefix><class>_<id>`` with
  ids kept by the tracker; markers of objects whose tracks ended are deleted; the debug image is
  drawn only while someone subscribes; ``/diagnostics`` reports rates, latency, drops and models.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipose_ros.core.pipeline import PosePipeline, build_pipeline
from clipose_ros.core.tracking import TrackerConfig
from clipose_ros.core.visualize import draw_overlay

PACKAGE = "clipose_ros"
DEFAULT_POSE_MODEL = "models/clipose_pose.pt"
# COCO-pretrained, fine-tuned to the six categories: finds real objects (models/
# yoloseg_coco_nocs.md; AGPL-3.0 weights). The ONNX export runs on OpenVINO on a CPU; with
# device cuda pass models/yoloseg_coco_nocs.pt. models/yoloseg_synth.* is the from-scratch
# alternative (generated frames only, Apache-2.0).
DEFAULT_SEGMENTER_WEIGHTS = "models/yoloseg_coco_nocs.onnx"
# Input topics (relative: a namespace applies); remap them to your camera's.
RGB_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "camera/color/camera_info"
# Output topics (relative) and the fixed ones.
DETECTIONS_TOPIC = "clipose/detections"
MARKERS_TOPIC = "clipose/markers"
DEBUG_IMAGE_TOPIC = "clipose/debug_image"
DIAGNOSTICS_TOPIC = "/diagnostics"


@dataclass(frozen=True)
class Param:
    """One declared parameter: default, what it does, its range, whether it may change live."""

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False


POSE_NODE_PARAMS: tuple[Param, ...] = (
    Param("pose_model", DEFAULT_POSE_MODEL, "Exported CLIPose TorchScript file (absolute, or "
          "relative to the working directory, the source tree or the package share dir)",
          read_only=True),
    Param("segmenter_weights", DEFAULT_SEGMENTER_WEIGHTS, "YOLO-seg weights (same lookup): .onnx "
          "runs on OpenVINO / ONNX Runtime (fastest on a CPU), .pt on PyTorch (use it with cuda)",
          read_only=True),
    Param("device", "cpu", "Torch device: cpu, cuda, cuda:N, or auto (cuda when present)",
          read_only=True),
    Param("num_threads", 0, "CPU threads of torch and the segmenter back-end (0: their "
          "defaults)", 0, 256, read_only=True),
    Param("imgsz", 320, "Segmenter input size in pixels (a multiple of 32)", 64, 1280,
          read_only=True),
    Param("score_threshold", 0.5, "Minimum segmentation score of an object", 0.0, 1.0),
    Param("min_mask_area", 100, "Smallest mask (pixels) the segmenter keeps", 1, 1_000_000,
          read_only=True),
    Param("min_points", 50, "Fewest mask pixels with valid depth for a pose", 4, 1_000_000),
    Param("track_match_distance", 0.1, "Largest centre jump (m) between frames for one object",
          0.001, 5.0),
    Param("track_max_missed", 5, "Frames an object may go unseen and keep its id", 0, 10_000),
    Param("smoothing", 0.0, "Weight of the previous pose in per-object smoothing (0: off)",
          0.0, 0.99),
    Param("frame_prefix", "clipose/", "Prefix of the object TF frames <prefix><class>_<id>"),
    Param("publish_tf", True, "Broadcast camera -> object transforms on /tf"),
    Param("publish_markers", True, "Publish the MarkerArray for RViz"),
    Param("reliable_qos", False, "Subscribe with reliable QoS instead of sensor-data (best "
          "effort)", read_only=True),
    Param("sync_slop", 0.05, "Largest stamp difference (s) within one RGB/depth/info set",
          0.0, 5.0, read_only=True),
    Param("depth_scale", 0.0, "Metres per depth unit; 0: by encoding (16UC1 millimetres, 32FC1 "
          "metres). Set it for a driver that breaks the convention, e.g. 0.001 for 32FC1 "
          "millimetres", 0.0, 1000.0),
    Param("stamp_tolerance", 5.0, "Largest difference (s) between an input stamp and the node's "
          "clock; beyond it the set is reported and left out of the latency statistic", 0.1,
          1e9),
    Param("sync_queue_size", 10, "Messages kept per input topic for synchronisation", 1, 1000,
          read_only=True),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages", 0.1, 60.0,
          read_only=True),
    Param("warn_throttle", 5.0, "Seconds between two warnings of the same kind", 0.0, 3600.0),
    Param("seed", 0, "Seed of the point sampling (reproducible poses)", 0, 2**31 - 1,
          read_only=True),
)


class ParameterError(ValueError):
    """A parameter value the node refuses at start; the message names the key."""


def resolve_model_path(value: str) -> Path:
    """A model path as given if it exists, else under the source tree, else the share dir."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    source = Path(__file__).resolve().parents[2] / path
    if source.exists():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory(PACKAGE)) / path
        if shared.exists():
            return shared
    except Exception:  # noqa: BLE001 - not installed through colcon: no share dir to look in
        pass
    return source  # does not exist: the loader's error names it and says how to get one


def resolve_device(device: str) -> str:
    """Check a torch device name against this machine; 'auto' picks cuda when present."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device: {device!r} requested but torch sees no CUDA device on this machine "
                "(use device:=cpu or device:=auto)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ParameterError(
                f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ParameterError(f"device: {device!r} is not cpu, cuda, cuda:N or auto")


def check_frame_prefix(prefix: str) -> None:
    """tf2 refuses frame ids with a leading slash or whitespace: refuse such a prefix early."""
    if prefix.startswith("/") or any(c.isspace() for c in prefix):
        raise ParameterError(
            f"frame_prefix: {prefix!r} would make TF frame ids that tf2 rejects (no leading "
            "'/', no whitespace), e.g. use 'clipose/'"
        )


def declare_parameters(node, specs: tuple[Param, ...]) -> dict[str, Any]:
    """Declare ``specs`` with descriptions and ranges; returns the values (overrides applied).

    rclpy refuses an out-of-range override itself; choices are checked here. Either way a
    :class:`ParameterError` names the key, the value and what is allowed.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.exceptions import ParameterException

    values = {}
    for p in specs:
        descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only)
        if p.low is not None and isinstance(p.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(p.low), to_value=float(p.high))
            ]
        elif p.low is not None and isinstance(p.default, int) and not isinstance(p.default, bool):
            descriptor.integer_range = [
                IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)
            ]
        if p.choices:
            descriptor.additional_constraints = f"one of {', '.join(p.choices)}"
        try:
            value = node.declare_parameter(p.name, p.default, descriptor).value
        except ParameterException as err:
            allowed = f" (allowed: {p.low} .. {p.high})" if p.low is not None else ""
            raise ParameterError(f"parameter {p.name}: refused: {err}{allowed}") from err
        if p.choices and value not in p.choices:
            raise ParameterError(
                f"parameter {p.name}: {value!r} is not one of {', '.join(p.choices)}"
            )
        values[p.name] = value
    return values


class WarningThrottle:
    """At most one message per ``kind`` every ``period`` seconds, with the count suppressed."""

    def __init__(self, log, period: float) -> None:
        self.log = log
        self.period = period
        self.last: dict[str, float] = {}
        self.suppressed: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, kind: str, message: str, level: str = "warning") -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(kind, -1e9) < self.period:
                self.suppressed[kind] += 1
                return
            self.last[kind] = now
            extra = self.suppressed.pop(kind, 0)
        text = message + (f" ({extra} more like it since the last message)" if extra else "")
        # rclpy ties a severity to each call site: one call per level.
        if level == "info":
            self.log.info(text)
        elif level == "error":
            self.log.error(text)
        else:
            self.log.warning(text)


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window = window_s
        self.times: collections.deque = collections.deque()
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        with self.lock:
            while self.times and now - self.times[0] > self.window:
                self.times.popleft()
            if len(self.times) < 2:
                return 0.0
            return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-6)


def percentile(values, q: float) -> float:
    return float(np.percentile(list(values), q)) if len(values) else float("nan")


STREAMS = ("rgb", "depth", "camera_info")
# Bytes per pixel of the smallest encoding each image stream accepts (rgb8, 16UC1).
MIN_BYTES_PER_PIXEL = {"rgb": 3, "depth": 2}
PENDING_TIMEOUT_S = 2.0  # an input message unmatched this long is reported as unsynchronised


def fastdds_segment_limit(env: dict[str, str] | None = None) -> tuple[int, str] | None:
    """(bytes, profile file) of the largest Fast DDS shared-memory segment the profile in
    ``FASTDDS_DEFAULT_PROFILES_FILE`` sets, or None (another RMW, no profile, no SHM segment).

    A sample larger than the segment does not travel between processes on one machine, so the
    node can say why images never arrive when camera_info announces bigger ones.
    """
    import xml.etree.ElementTree as ET

    env = os.environ if env is None else env
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    path = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    if not path or not Path(path).is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    sizes = []
    for descriptor in root.iter():
        if not descriptor.tag.endswith("transport_descriptor"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in descriptor}
        if fields.get("type") == "SHM" and fields.get("segment_size", "").isdigit():
            sizes.append(int(fields["segment_size"]))
    return (max(sizes), path) if sizes else None


def size_hint(width: int, height: int, limit: tuple[int, str] | None) -> str:
    """Why RGB/depth may never arrive: camera_info announces images beyond the DDS limit."""
    if limit is None or not width or not height:
        return ""
    rgb_bytes = MIN_BYTES_PER_PIXEL["rgb"] * width * height
    if MIN_BYTES_PER_PIXEL["depth"] * width * height <= limit[0] and rgb_bytes <= limit[0]:
        return ""
    mib = 1024 * 1024
    return (f"; camera_info announces {width}x{height} images ({rgb_bytes / mib:.1f} MiB as "
            f"rgb8, {2 * width * height / mib:.1f} MiB as 16UC1), more than the "
            f"{limit[0] / mib:.1f} MiB shared-memory segment of the Fast DDS profile {limit[1]}: "
            "such images do not arrive between processes (raise segment_size there, or lower "
            "the camera resolution)")


def _make_node_class():
    """The rclpy Node subclass (built lazily so that importing this module needs no rclpy)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    from clipose_ros.ros import convert as rc

    class PoseNode(Node):
        """See the module docstring. ``pipeline`` injects a ready pipeline (tests)."""

        def __init__(self, pipeline: PosePipeline | None = None, **node_kwargs) -> None:
            super().__init__("pose_node", **node_kwargs)
            self.params = declare_parameters(self, POSE_NODE_PARAMS)
            p = self.params
            check_frame_prefix(p["frame_prefix"])
            self.warn = WarningThrottle(self.get_logger(), p["warn_throttle"])
            if p["num_threads"] > 0:
                import torch

                torch.set_num_threads(p["num_threads"])
            self.model_files = {"pose_model": "(injected)", "segmenter_weights": "(injected)"}
            self.device = p["device"]
            if pipeline is None:
                self.device = resolve_device(p["device"])
                pose_model = resolve_model_path(p["pose_model"])
                weights = resolve_model_path(p["segmenter_weights"])
                self.model_files = {"pose_model": str(pose_model),
                                    "segmenter_weights": str(weights)}
                pipeline = build_pipeline(
                    pose_model, weights, device=self.device, imgsz=p["imgsz"],
                    score_threshold=p["score_threshold"], min_mask_area=p["min_mask_area"],
                    min_points=p["min_points"], tracker=self._tracker_config(p), seed=p["seed"],
                    threads=p["num_threads"] or None,
                )
            self.pipeline = pipeline
            warm_ms = pipeline.warm_up()
            self.pipeline.min_score = p["score_threshold"]
            self.pipeline.min_points = p["min_points"]
            self.pipeline.tracker.config = self._tracker_config(p)
            self.add_on_set_parameters_callback(self._on_set_parameters)

            # Statistics (read by the diagnostics timer, written by callbacks and the worker).
            self._stats_lock = threading.Lock()
            self.in_rate = RateMeter()
            self.out_rate = RateMeter()
            self.latency_ms: collections.deque = collections.deque(maxlen=300)
            self.stage_ms: dict[str, collections.deque] = collections.defaultdict(
                lambda: collections.deque(maxlen=300))
            self.counts: collections.Counter = collections.Counter()
            self.rejected: collections.Counter = collections.Counter()
            self.unsynced: collections.Counter = collections.Counter()  # per stream
            self.last_arrival: dict[str, float] = {}
            # Messages not yet in a synchronised set (stamp, arrival), the stamps seen lately and
            # those already synchronised, per stream: what tells a dropped pair from a late one.
            self._pending_lock = threading.Lock()
            self._pending = {name: collections.deque() for name in STREAMS}
            self._recent = {name: collections.deque(maxlen=50) for name in STREAMS}
            self._synced = {name: collections.deque(maxlen=50) for name in STREAMS}
            self.info_size = (0, 0)  # width, height the last camera_info announced
            self.dds_limit = fastdds_segment_limit()
            self.last_synced = 0.0
            self.last_objects = 0

            qos = (QoSProfile(depth=p["sync_queue_size"], reliability=ReliabilityPolicy.RELIABLE)
                   if p["reliable_qos"] else qos_profile_sensor_data)
            self.topics = {
                "rgb": self.resolve_topic_name(RGB_TOPIC),
                "depth": self.resolve_topic_name(DEPTH_TOPIC),
                "camera_info": self.resolve_topic_name(INFO_TOPIC),
            }
            self._sync = rc.make_synchronizer(
                self, (Image, Image, CameraInfo), (RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC), qos,
                p["sync_queue_size"], p["sync_slop"], self._on_synced,
                raw_callbacks=[self._arrival("rgb"), self._arrival("depth"),
                               self._arrival("camera_info")],
                on_incompatible=self._incompatible_qos,
            )
            out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
            self.det_pub = self.create_publisher(Detection3DArray, DETECTIONS_TOPIC, out_qos)
            self.marker_pub = self.create_publisher(MarkerArray, MARKERS_TOPIC, out_qos)
            self.debug_pub = self.create_publisher(
                Image, DEBUG_IMAGE_TOPIC, qos_profile_sensor_data)
            self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
            self.send_tf = rc.make_transform_broadcaster(self)
            self._diag_types = (DiagnosticArray, DiagnosticStatus, KeyValue)

            self._slot = None
            self._cond = threading.Condition()
            self._running = True
            self._worker = threading.Thread(target=self._work, name="clipose-worker", daemon=True)
            self._worker.start()
            self.create_timer(p["diagnostics_period"], self._diagnostics)
            self.get_logger().info(
                f"pose_node ready on {self.device}: inputs {self.topics['rgb']}, "
                f"{self.topics['depth']}, {self.topics['camera_info']}; models "
                f"{self.model_files['pose_model']}, {self.model_files['segmenter_weights']} "
                f"(warm-up {warm_ms:.0f} ms)"
            )

        @staticmethod
        def _tracker_config(p: dict) -> TrackerConfig:
            return TrackerConfig(p["track_match_distance"], p["track_max_missed"], p["smoothing"])

        def _on_set_parameters(self, params) -> SetParametersResult:
            """Live changes of thresholds, tracking and output switches (others are read-only)."""
            new = dict(self.params)
            for param in params:
                new[param.name] = param.value
            try:
                tracker = self._tracker_config(new)
                check_frame_prefix(new["frame_prefix"])
            except ValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
            self.params = new
            self.pipeline.min_score = new["score_threshold"]
            self.pipeline.min_points = new["min_points"]
            self.pipeline.tracker.config = tracker
            self.warn.period = new["warn_throttle"]
            segmenter = self.pipeline.segmenter
            if hasattr(segmenter, "score_threshold"):
                segmenter.score_threshold = new["score_threshold"]
            return SetParametersResult(successful=True)

        # ------------------------------------------------------------------ inputs

        def _incompatible_qos(self, topic: str, policy: str) -> None:
            hint = ("the publisher is best effort: set reliable_qos:=false" if policy ==
                    "RELIABILITY" and self.params["reliable_qos"] else "match the publisher's QoS")
            self.warn("qos", f"a publisher on {self.resolve_topic_name(topic)} offers a QoS "
                             f"incompatible with this subscription ({policy}); nothing arrives "
                             f"from it: {hint}")

        def _arrival(self, name: str):
            def seen(msg) -> None:
                now = time.monotonic()
                self.last_arrival[name] = now
                if name == "rgb":
                    self.in_rate.tick()
                elif name == "camera_info":
                    self.info_size = (int(msg.width), int(msg.height))
                stamp = rc.stamp_to_ns(msg.header.stamp)
                evicted = None
                with self._pending_lock:
                    self._recent[name].append(stamp)
                    # message_filters may call the set's callback before this one.
                    if stamp not in self._synced[name]:
                        pending = self._pending[name]
                        if len(pending) >= 1000:
                            evicted = pending.popleft()[0]
                        pending.append((stamp, now))
                if evicted is not None:
                    self._report_unsynced(name, evicted)
            return seen

        def _report_unsynced(self, name: str, stamp: int) -> None:
            """Count and (throttled) name a message that never made a set: the synchroniser
            dropped it because no message of another stream came within sync_slop of it."""
            with self._stats_lock:
                self.unsynced[name] += 1
            with self._pending_lock:
                recent = {o: list(self._recent[o]) for o in STREAMS if o != name}
            near = []
            for other, stamps in recent.items():
                label = "RGB" if other == "rgb" else other
                if stamps:
                    gap = min((s - stamp for s in stamps), key=abs) / 1e9
                    near.append(f"nearest {label} {gap:+.3f} s")
                else:
                    near.append(f"no {label} received")
            self.warn("unsynced", (
                f"{rc.describe(name, self.topics)} stamped {stamp / 1e9:.3f} dropped "
                f"unsynchronised: no complete set within sync_slop={self.params['sync_slop']} "
                f"s ({', '.join(near)}): a message of the set was lost or late, or the streams' "
                "stamps differ by more than sync_slop (if always, raise it to a frame period)"))

        def _on_synced(self, rgb, depth, info) -> None:
            """Executor thread: put the newest set in the slot (replacing an unprocessed one)."""
            self.last_synced = time.monotonic()
            stamps = [rc.stamp_to_ns(m.header.stamp) for m in (rgb, depth, info)]
            dropped = []
            with self._pending_lock:
                for name, stamp in zip(STREAMS, stamps, strict=True):
                    self._synced[name].append(stamp)
                    pending = self._pending[name]
                    # The synchroniser discards what is older than the set it emits.
                    dropped += [(name, s) for s, _ in pending if s < stamp]
                    kept = [item for item in pending if item[0] > stamp]
                    pending.clear()
                    pending.extend(kept)
            for name, stamp in dropped:
                self._report_unsynced(name, stamp)
            stamp_ok = self._check_stamp(stamps[0])
            with self._cond:
                if self._slot is not None:
                    with self._stats_lock:
                        self.counts["dropped"] += 1
                self._slot = (rgb, depth, info, stamp_ok)
                self._cond.notify()

        def _check_stamp(self, stamp_ns: int) -> bool:
            """False (with a throttled warning) for a stamp far from the node's clock: such a
            set is still processed, but its latency would ruin the /diagnostics statistic."""
            if stamp_ns == 0:
                return False  # refused in frame_from_messages, with its own message
            age = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
            tolerance = self.params["stamp_tolerance"]
            if abs(age) <= tolerance:
                return True
            with self._stats_lock:
                self.counts["stamp_out_of_tolerance"] += 1
            where = "behind" if age > 0 else "ahead of"
            self.warn("stamp_tolerance", (
                f"{rc.describe('rgb', self.topics)}: stamp {stamp_ns / 1e9:.3f} is "
                f"{abs(age):.1f} s ({abs(age) / 3600:.2f} h) {where} the node's clock (more "
                f"than stamp_tolerance={tolerance} s): a bag played without --clock and "
                "use_sim_time, a camera clock not synchronised with this machine, or a driver "
                "stamping with its own time base; poses are published with this stamp, its "
                "latency is left out of /diagnostics"))
            return False

        # ------------------------------------------------------------------ worker

        def _work(self) -> None:
            while True:
                with self._cond:
                    while self._slot is None and self._running:
                        self._cond.wait(0.5)
                    if not self._running:
                        return
                    msgs, self._slot = self._slot, None
                try:
                    self._process(*msgs)
                except Exception as err:  # noqa: BLE001 - a failing frame must not stop the node
                    with self._stats_lock:
                        self.counts["failed"] += 1
                    self.warn("exception", f"frame failed: {type(err).__name__}: {err}", "error")

        def _process(self, rgb_msg, depth_msg, info_msg, stamp_ok: bool = True) -> None:
            try:
                frame = rc.frame_from_messages(
                    rgb_msg, depth_msg, info_msg, depth_scale=self.params["depth_scale"],
                    topics=self.topics)
            except rc.InputError as err:
                with self._stats_lock:
                    self.rejected[err.kind] += 1
                self.warn(err.kind, f"input refused: {err}")
                return
            result = self.pipeline.process(frame)
            if not result.instances:
                self.warn("empty", "no objects segmented in this frame", "info")
            for reason in result.skipped:
                self.warn("skipped", f"object skipped: {reason}", "info")
            start = time.perf_counter()
            header = rgb_msg.header
            p = self.params
            if p["publish_tf"] and result.poses:
                self.send_tf(rc.tf_message(header, result.poses, p["frame_prefix"]))
            self.det_pub.publish(rc.detection_array(header, result.poses))
            if p["publish_markers"]:
                self.marker_pub.publish(
                    rc.marker_array(header, result.poses, result.ended, "clipose"))
            if self.debug_pub.get_subscription_count() > 0:
                image = draw_overlay(frame.rgb, frame.K, result.poses)
                self.debug_pub.publish(rc.image_message(image, "rgb8", header))
                with self._stats_lock:
                    self.counts["debug_images"] += 1
            publish_ms = (time.perf_counter() - start) * 1e3
            with self._stats_lock:
                for key, value in result.timings.items():
                    self.stage_ms[key].append(value)
                self.stage_ms["publish_ms"].append(publish_ms)
                if stamp_ok:  # a stamp far off would poison the window for minutes
                    now_ns = self.get_clock().now().nanoseconds
                    self.latency_ms.append((now_ns - frame.stamp_ns) / 1e6)
                self.counts["processed"] += 1
                self.last_objects = len(result.poses)
            self.out_rate.tick()

        # ------------------------------------------------------------------ diagnostics

        def _diagnostics(self) -> None:
            DiagnosticArray, DiagnosticStatus, KeyValue = self._diag_types
            now = time.monotonic()
            level, message = DiagnosticStatus.OK, "running"
            stale = []
            with self._pending_lock:
                for name, pending in self._pending.items():
                    while pending and now - pending[0][1] > PENDING_TIMEOUT_S:
                        stale.append((name, pending.popleft()[0]))
            for name, stamp in stale:
                self._report_unsynced(name, stamp)
            recent = {k for k, t in self.last_arrival.items() if now - t < 2.0}
            if not recent:
                level, message = DiagnosticStatus.WARN, "no input"
            elif recent != set(self.topics) or now - self.last_synced > 2.0:
                missing = sorted(set(self.topics) - recent)
                why = (f"nothing received on {', '.join(self.topics[m] for m in missing)}"
                       if missing else f"stamps never within sync_slop={self.params['sync_slop']}"
                       " s of each other")
                if {"rgb", "depth"} & set(missing) and "camera_info" in recent:
                    why += size_hint(*self.info_size, self.dds_limit)
                level, message = DiagnosticStatus.WARN, f"inputs not synchronised: {why}"
                self.warn("sync", f"no synchronised RGB/depth/camera_info set in 2 s: {why}")
            with self._stats_lock:
                latency = list(self.latency_ms)
                stages = {key: list(series) for key, series in self.stage_ms.items()}
                counts = collections.Counter(self.counts)
                rejected = collections.Counter(self.rejected)
                unsynced = collections.Counter(self.unsynced)
                objects = self.last_objects
            values = {
                "input_hz": f"{self.in_rate.rate():.2f}",
                "output_hz": f"{self.out_rate.rate():.2f}",
                "latency_p50_ms": f"{percentile(latency, 50):.1f}",
                "latency_p95_ms": f"{percentile(latency, 95):.1f}",
                "frames_processed": str(counts["processed"]),
                "frames_dropped": str(counts["dropped"]),
                "frames_rejected": str(sum(rejected.values())),
                "frames_failed": str(counts["failed"]),
                "frames_unsynced": str(unsynced["rgb"]),
                "stamps_out_of_tolerance": str(counts["stamp_out_of_tolerance"]),
                "debug_images": str(counts["debug_images"]),
                "objects": str(objects),
                "device": self.device,
                **self.model_files,
            }
            for kind in sorted(set(rc.REFUSAL_KINDS) | set(rejected)):
                values[f"rejected_{kind}"] = str(rejected[kind])
            for name in STREAMS:
                values[f"unsynced_{name}"] = str(unsynced[name])
            for key, series in sorted(stages.items()):
                values[f"{key[:-3]}_p50_ms"] = f"{percentile(series, 50):.2f}"
            status = DiagnosticStatus(
                level=level, name=f"{self.get_fully_qualified_name()}: pose estimation",
                message=message, hardware_id=self.device,
                values=[KeyValue(key=k, value=v) for k, v in values.items()],
            )
            msg = DiagnosticArray(status=[status])
            msg.header.stamp = self.get_clock().now().to_msg()
            self.diag_pub.publish(msg)

        def destroy_node(self) -> None:
            if hasattr(self, "_worker"):  # not when start-up failed half-way
                with self._cond:
                    self._running = False
                    self._cond.notify()
                self._worker.join(timeout=5.0)
            super().destroy_node()

    return PoseNode, rclpy


_NODE_CLASS = None


def pose_node_class():
    """The PoseNode class (rclpy imported on first use)."""
    global _NODE_CLASS
    if _NODE_CLASS is None:
        _NODE_CLASS = _make_node_class()[0]
    return _NODE_CLASS


def run_node(make_node, args: list[str] | None = None, name: str = "pose_node") -> int:
    """rclpy init, build the node, spin until shutdown; start-up errors exit with status 2."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    try:
        node = make_node()
    except (ParameterError, RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"{name}: cannot start: {err}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> None:
    """``pose_node`` entry point (``ros2 run clipose_ros pose_node``)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_node(lambda: pose_node_class()(), args if args is not None else sys.argv))


if __name__ == "__main__":
    main()
