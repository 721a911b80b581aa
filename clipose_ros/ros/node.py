"""``pose_node``: RGB-D in, 9D object poses out as TF, Detection3DArray, markers and a debug image.

A thin shell around :class:`clipose_ros.core.pipeline.PosePipeline`, its parameters in
:mod:`clipose_ros.ros.parameters`:

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
import dataclasses
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from clipose_ros.categories import CATEGORIES
from clipose_ros.core.pipeline import PosePipeline, build_pipeline, set_pose_subsets
from clipose_ros.core.segmentation import parse_class_thresholds
from clipose_ros.core.uncertainty import DEFAULT_CONF_SCALE_RAD, pose_covariance
from clipose_ros.core.visualize import draw_overlay
from clipose_ros.ros import convert as rc
from clipose_ros.ros.parameters import (
    POSE_NODE_PARAMS,
    PoseNodeConfig,
    check_frame_prefix,
    foreign_thresholds_warning,
    resolve_device,
    resolve_model_path,
    tracker_config,
)
from clipose_ros.ros.runtime import (
    RateMeter,
    WarningThrottle,
    declare_parameters,
    percentile,
    run_node,
)

# Input topics (relative: a namespace applies); remap them to your camera's.
RGB_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "camera/color/camera_info"
# Output topics (relative) and the fixed ones.
DETECTIONS_TOPIC = "clipose/detections"
MARKERS_TOPIC = "clipose/markers"
DEBUG_IMAGE_TOPIC = "clipose/debug_image"
DIAGNOSTICS_TOPIC = "/diagnostics"


STREAMS = ("rgb", "depth", "camera_info")
# Bytes per pixel of the smallest encoding each image stream accepts (rgb8, 16UC1).
MIN_BYTES_PER_PIXEL = {"rgb": 3, "depth": 2}
PENDING_TIMEOUT_S = 2.0  # an input message unmatched this long is reported as unsynchronised
PAUSE = ("pause",)  # in the worker's slot: the node was paused, end the tracks


def fastdds_segment_limit(env: dict[str, str] | None = None) -> tuple[int, str] | None:
    """(bytes, profile file) of the largest Fast DDS shared-memory segment the profile in
    ``FASTDDS_DEFAULT_PROFILES_FILE`` sets, or None (another RMW, no profile, no SHM segment).

    A sample larger than the segment does not travel between processes on one machine, so the
    node can say why images never arrive when camera_info announces bigger ones.
    """
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


class PoseNode(Node):
    """See the module docstring. ``pipeline`` injects a ready pipeline (tests)."""

    def __init__(self, pipeline: PosePipeline | None = None, **node_kwargs) -> None:
        super().__init__("pose_node", **node_kwargs)
        self.config = PoseNodeConfig(**declare_parameters(self, POSE_NODE_PARAMS))
        p = self.config
        check_frame_prefix(p.frame_prefix)
        self.warn = WarningThrottle(self.get_logger(), p.warn_throttle)
        self.pipeline = self._pipeline(pipeline)
        self._apply_settings(p)  # before the warm-up, so that it runs what the frames will
        foreign = foreign_thresholds_warning(p.class_score_thresholds, p.segmenter_weights)
        if foreign and pipeline is None:
            self.get_logger().warning(foreign)
        warm_ms = self.pipeline.warm_up()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._init_statistics()
        self._init_topics()
        self._slot = None
        self._last_header = None  # of the last frame published: where ended markers go
        self._cond = threading.Condition()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="clipose-worker", daemon=True)
        self._worker.start()
        self.create_timer(p.diagnostics_period, self._diagnostics)
        self.get_logger().info(
            f"pose_node ready on {self.device}: inputs {self.topics['rgb']}, "
            f"{self.topics['depth']}, {self.topics['camera_info']}; models "
            f"{self.model_files['pose_model']}, {self.model_files['segmenter_weights']} "
            f"(warm-up {warm_ms:.0f} ms)"
        )

    def _pipeline(self, injected: PosePipeline | None) -> PosePipeline:
        """The injected pipeline, or the shipped one built from the parameters (device and
        model files checked; ``model_files`` and ``device`` say what runs)."""
        p = self.config
        if p.num_threads > 0:
            import torch

            torch.set_num_threads(p.num_threads)
        self.model_files = {"pose_model": "(injected)", "segmenter_weights": "(injected)"}
        self.device = p.device
        if injected is not None:
            return injected
        self.device = resolve_device(p.device)
        pose_model = resolve_model_path(p.pose_model)
        weights = resolve_model_path(p.segmenter_weights)
        self.model_files = {"pose_model": str(pose_model), "segmenter_weights": str(weights)}
        # what can change while running is set by _apply_settings, for this and injected ones
        return build_pipeline(
            pose_model, weights, device=self.device, imgsz=p.imgsz,
            min_mask_area=p.min_mask_area, seed=p.seed, threads=p.num_threads or None,
        )

    def _init_statistics(self) -> None:
        """Counters, rates and the per-stream bookkeeping of unsynchronised messages (read by
        the diagnostics timer, written by the callbacks and the worker)."""
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

    def _init_topics(self) -> None:
        """The synchronised subscriptions and the publishers."""
        p = self.config
        qos = (QoSProfile(depth=p.sync_queue_size, reliability=ReliabilityPolicy.RELIABLE)
               if p.reliable_qos else qos_profile_sensor_data)
        self.topics = {
            "rgb": self.resolve_topic_name(RGB_TOPIC),
            "depth": self.resolve_topic_name(DEPTH_TOPIC),
            "camera_info": self.resolve_topic_name(INFO_TOPIC),
        }
        self._sync = rc.make_synchronizer(
            self, (Image, Image, CameraInfo), (RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC), qos,
            p.sync_queue_size, p.sync_slop, self._on_synced,
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

    def _apply_settings(self, config: PoseNodeConfig) -> None:
        """The one place the settings that may change while running reach the pipeline: at
        start (also into an injected pipeline) and on every parameter change. Everything is
        checked before anything changes, so a ValueError (tracking, frame prefix,
        ``class_score_thresholds`` or an out-of-range ``pose_subsets``) leaves the running
        settings as they were."""
        tracker = tracker_config(config)
        check_frame_prefix(config.frame_prefix)
        class_scores = parse_class_thresholds(config.class_score_thresholds)
        estimator = self.pipeline.estimator
        if hasattr(estimator, "mug_handle"):  # the CLIPose estimator's; test doubles lack them
            set_pose_subsets(estimator, config.pose_subsets)
            estimator.mug_handle = config.mug_handle
            estimator.border_fit = config.border_fit
            estimator.laptop_lid = config.laptop_lid
            estimator.box_fit = config.box_fit
        if (config.score_threshold != self.config.score_threshold
                and len(class_scores) == len(CATEGORIES)):
            self.get_logger().warning(
                f"score_threshold {config.score_threshold} changes nothing: "
                f"class_score_thresholds names every class ({config.class_score_thresholds!r}); "
                "set class_score_thresholds to '' for one threshold for all classes")
        pausing = self.config.enabled and not config.enabled
        self.config = config
        if pausing and hasattr(self, "_cond"):  # the worker ends the tracks, in its own thread
            with self._cond:
                self._slot = PAUSE
                self._cond.notify()
        self.pipeline.set_score_thresholds(config.score_threshold, class_scores)
        self.pipeline.min_points = config.min_points
        self.pipeline.tracker.config = tracker
        self.warn.period = config.warn_throttle

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Live changes of thresholds, tracking and output switches (others are read-only)."""
        own = {f.name for f in dataclasses.fields(PoseNodeConfig)}
        new = dataclasses.replace(self.config, **{p.name: p.value for p in params if p.name in own})
        try:
            self._apply_settings(new)
        except ValueError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs

    def _incompatible_qos(self, topic: str, policy: str) -> None:
        hint = ("the publisher is best effort: set reliable_qos:=false" if policy ==
                "RELIABILITY" and self.config.reliable_qos else "match the publisher's QoS")
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
            f"unsynchronised: no complete set within sync_slop={self.config.sync_slop} "
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
        if not self.config.enabled:
            with self._stats_lock:
                self.counts["paused"] += 1
            return
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
        tolerance = self.config.stamp_tolerance
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
                if msgs is PAUSE:
                    self._end_tracks()
                    continue
                self._process(*msgs)
            except Exception as err:  # noqa: BLE001 - a failing frame must not stop the node
                with self._stats_lock:
                    self.counts["failed"] += 1
                self.warn("exception", f"frame failed: {type(err).__name__}: {err}", "error")

    def _end_tracks(self) -> None:
        """On pause: forget the tracked objects and delete their markers, so that RViz does not
        show boxes of a scene nobody looks at (their TF frames simply stop)."""
        ended = self.pipeline.tracker.reset()
        if ended and self._last_header is not None and self.config.publish_markers:
            self.marker_pub.publish(rc.marker_array(self._last_header, [], ended, "clipose"))

    def _process(self, rgb_msg, depth_msg, info_msg, stamp_ok: bool = True) -> None:
        try:
            frame = rc.frame_from_messages(
                rgb_msg, depth_msg, info_msg, depth_scale=self.config.depth_scale,
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
        self._last_header = header
        p = self.config
        if p.publish_tf and result.poses:
            self.send_tf(rc.tf_message(header, result.poses, p.frame_prefix))
        scale = getattr(self.pipeline.estimator, "conf_scale_rad", DEFAULT_CONF_SCALE_RAD)
        covariances = [pose_covariance(q, scale, p.translation_stddev) for q in result.poses]
        self.det_pub.publish(rc.detection_array(header, result.poses, covariances=covariances))
        if p.publish_markers:
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
        if not self.config.enabled:
            message = "paused (enabled is false)"
        if not recent:
            level, message = DiagnosticStatus.WARN, "no input"
        elif recent != set(self.topics) or now - self.last_synced > 2.0:
            missing = sorted(set(self.topics) - recent)
            why = (f"nothing received on {', '.join(self.topics[m] for m in missing)}"
                   if missing else f"stamps never within sync_slop={self.config.sync_slop}"
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
            "frames_paused": str(counts["paused"]),
            "enabled": str(self.config.enabled).lower(),
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


def main(args: list[str] | None = None) -> None:
    """``pose_node`` entry point (``ros2 run clipose_ros pose_node``)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_node(PoseNode, args if args is not None else sys.argv))


if __name__ == "__main__":
    main()
