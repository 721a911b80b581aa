"""pose_node over real DDS, as separate processes: end to end against ground truth, bad input,
parameters refused at start, and the launch file / parameter file against the declarations.

The plumbing tests run the real PoseNode with test doubles for the models (test/node_doubles.py:
ground-truth masks, and the NOCS-map reference fitted to the received depth). The end-to-end
test of the product runs the default models (DEFAULT_POSE_MODEL, models/yoloseg_coco_nocs.onnx).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from file_modules import load_file_module
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import NodeProcess, Recorder
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from clipose_ros.categories import SYMMETRIC_CATEGORIES
from clipose_ros.core.scoring import summarise
from clipose_ros.core.uncertainty import UNDEFINED_ANGLE_VARIANCE
from clipose_ros.data.replay import load_frames, render_scenes
from clipose_ros.ros import convert as rc
from clipose_ros.ros import processes
from clipose_ros.ros.monitor import Monitor
from clipose_ros.ros.parameters import (
    CAMERA_PARAMS,
    DEFAULT_POSE_MODEL,
    POSE_NODE_PARAMS,
    PoseNodeConfig,
    foreign_thresholds_warning,
)
from clipose_ros.ros.processes import ros_environment

ROOT = Path(__file__).resolve().parents[1]
DOUBLES = str(Path(__file__).with_name("node_doubles.py"))
SHIPPED = (ROOT / DEFAULT_POSE_MODEL, ROOT / "models" / "yoloseg_coco_nocs.onnx")
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
PARAMS_FILE = str(ROOT / "config" / "pose.yaml")


@pytest.fixture(scope="module")
def ros():
    # DDS settings for this process too (loopback, this run's domain, the large-image
    # profile): read when the context's participant is created.
    os.environ.update(ros_environment(os.environ))
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Two rendered scenes (640x480, 3-4 objects each, noisy depth), shared by the tests."""
    return render_scenes(tmp_path_factory.mktemp("scenes"), 2, 1, seed=11, min_objects=3,
                         max_objects=4)


def child_env() -> dict[str, str]:
    """DDS settings, and this source tree first on the path: node_doubles.py runs as a script,
    so without it the node would import whichever clipose_ros the venv has installed."""
    env = ros_environment(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def start(cmd: list[str], log: Path) -> NodeProcess:
    return NodeProcess(cmd, log, child_env())


def ros_args(params: dict, namespace: str = "") -> list[str]:
    args = ["--ros-args", "--params-file", PARAMS_FILE]
    for key, value in params.items():
        args += ["-p", f"{key}:={str(value).lower() if isinstance(value, bool) else value}"]
    return args + (["-r", f"__ns:={namespace}"] if namespace else [])


def camera_cmd(params: dict, namespace: str = "/camera") -> list[str]:
    return [sys.executable, "-m", "clipose_ros.ros.synthetic_camera", *ros_args(params, namespace)]


def check_end_to_end(frames: list[dict], tf: list, prefix: str, min_frames: int) -> dict:
    """What holds whatever the models: output headers, ids stable while a scene stays in view,
    one TF frame per detection with the same pose. Returns the accuracy summary (10 deg, 5 cm).
    """
    scored = [f for f in frames if f["matches"] is not None]
    assert len(scored) >= min_frames, f"only {len(scored)} output frames matched ground truth"
    summary = summarise(scored, max_rot_deg=10.0, max_trans_cm=5.0)
    assert summary["objects_with_changing_id"] == 0, summary
    assert all(f["frame_id"] == "camera_color_optical_frame" for f in scored)
    # TF: one transform per detection, same stamp, child frame <prefix><id>, same pose.
    by_stamp = {}
    for msg in tf:
        for t in msg.transforms:
            if t.child_frame_id.startswith(prefix):
                by_stamp.setdefault(rc.stamp_to_ns(t.header.stamp), {})[t.child_frame_id] = t
    checked = 0
    for f in scored:
        if f["stamp_ns"] not in by_stamp:
            continue
        transforms = by_stamp[f["stamp_ns"]]
        assert set(transforms) == {prefix + p.key for p in f["preds"]}
        for p in f["preds"]:
            t = transforms[prefix + p.key]
            assert t.header.frame_id == "camera_color_optical_frame"
            tr = t.transform.translation
            assert [tr.x, tr.y, tr.z] == pytest.approx(p.t, abs=1e-9)
            q = t.transform.rotation
            assert np.allclose(rc.matrix_from_quaternion([q.x, q.y, q.z, q.w]), p.R, atol=1e-9)
        checked += 1
    assert checked >= min_frames // 2, "TF messages did not come with the detections"
    return summary


# ---------------------------------------------------------------------------- end to end


def frames_per_scene(monitor) -> dict[str, int]:
    frames, _ = monitor.snapshot()
    counts: dict[str, int] = {}
    for f in frames:
        if f["matches"]:
            key = f["matches"][0].truth_id.split("#")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="class")
def system(ros, scenes, tmp_path_factory):
    """Camera (two static scenes, 5 s each, no loop) and the doubles node, watched."""
    logs = tmp_path_factory.mktemp("e2e_logs")
    camera = start(camera_cmd({"source": str(scenes), "rate_hz": 5.0, "hold_s": 5.0,
                               "loop": False}), logs / "camera.log")
    node = start([sys.executable, DOUBLES, str(scenes), *ros_args({})], logs / "node.log")
    monitor = Monitor()
    recorder = Recorder("e2e_recorder")
    recorder.listen("markers", MarkerArray, "clipose/markers", RELIABLE)
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(monitor)
    import threading

    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    truth_frames = {f.key for f in load_frames(scenes)}
    try:
        # Both scenes seen, each for several output frames (the scene changes after 5 s).
        recorder.wait_for(
            lambda: {k for k, n in frames_per_scene(monitor).items() if n >= 6}
            >= truth_frames,
            60, "several scored output frames of both scenes", (camera, node))
        yield monitor, recorder, camera, node, scenes
    finally:
        executor.shutdown()
        monitor.destroy_node()
        recorder.close()
        node.stop()
        camera.stop()


class TestEndToEndWithDoubles:
    """Camera and node processes, static scenes, a scene change: ids, TF, markers, debug image,
    diagnostics."""

    def test_poses_match_ground_truth_with_stable_ids_and_tf(self, system):
        monitor = system[0]
        frames, _ = monitor.snapshot()
        with monitor.lock:
            tf = list(monitor.tf)
        summary = check_end_to_end(frames, tf, "clipose/", min_frames=12)
        assert summary["found_fraction"] >= 0.9, summary  # the issue's bar
        # The doubles fit the NOCS map to the received depth: close to exact.
        assert summary["found_fraction"] == 1.0, summary
        assert summary["translation_error_cm_median"] < 0.5, summary

    def test_markers_of_vanished_objects_are_deleted(self, system):
        monitor, recorder = system[:2]
        frames, _ = monitor.snapshot()
        first_scene_keys = {p.key for p in frames[0]["preds"]}
        deleted = recorder.wait_for(
            lambda: {m.ns.split("/", 1)[1] for a in recorder.get("markers") for m in a.markers
                     if m.action == Marker.DELETE},
            15, "DELETE markers after the scene change")
        assert first_scene_keys & deleted, (first_scene_keys, deleted)
        added = [m for a in recorder.get("markers") for m in a.markers if m.action == Marker.ADD]
        assert {m.type for m in added} == {Marker.CUBE, Marker.LINE_LIST, Marker.TEXT_VIEW_FACING}

    def test_debug_image_only_while_subscribed(self, system):
        monitor, recorder, _, node, scenes = system
        from rclpy.qos import qos_profile_sensor_data

        assert monitor.snapshot()[1]["debug_images"] == "0"  # nobody listened so far
        recorder.listen("debug", Image, "clipose/debug_image", qos_profile_sensor_data)
        image = recorder.wait_for(lambda: recorder.get("debug"), 15, "a debug image",
                                  (node,))[-1]
        assert (image.width, image.height, image.encoding) == (640, 480, "rgb8")
        assert image.header.frame_id == "camera_color_optical_frame"
        # Same header as the detections of that frame; boxes drawn on the camera image.
        stamp = rc.stamp_to_ns(image.header.stamp)
        frame = recorder.wait_for(
            lambda: [f for f in monitor.snapshot()[0] if f["stamp_ns"] == stamp], 5,
            "the detections with the debug image's stamp")[0]
        assert frame["preds"]
        originals = [f.rgb for f in load_frames(scenes)]
        drawn = rc.rgb_from_image(image)
        changed = min(np.mean(np.any(drawn != o, axis=2)) for o in originals)
        assert 0.002 < changed < 0.3

    def test_diagnostics_report_rates_latency_and_models(self, system):
        monitor, recorder = system[:2]
        diag = recorder.wait_for(lambda: monitor.snapshot()[1], 10, "diagnostics")
        assert float(diag["output_hz"]) > 0 and float(diag["input_hz"]) > 0
        assert int(diag["frames_processed"]) >= 12
        assert float(diag["latency_p50_ms"]) > 0
        assert float(diag["latency_p95_ms"]) >= float(diag["latency_p50_ms"])
        for key in ("frames_dropped", "frames_rejected", "device", "pose_model",
                    "segmenter_weights", "segment_p50_ms", "pose_p50_ms", "publish_p50_ms"):
            assert key in diag, key


SHIPPED_SCENES = 6


@pytest.fixture(scope="module")
def shipped(ros, tmp_path_factory):
    """The product as `make demo` runs it: synthetic camera (6 rendered scenes with
    config/pose.yaml's sensor model, structured light, fixed seed, 2.5 s each) and pose_node
    with the shipped models, watched for all six scenes."""
    missing = [str(p) for p in SHIPPED if not p.is_file()]
    assert not missing, f"shipped model files missing: {missing}"
    logs = tmp_path_factory.mktemp("shipped_logs")
    camera = start(camera_cmd({"scenes": SHIPPED_SCENES, "seed": 7, "min_objects": 3,
                               "max_objects": 5, "rate_hz": 5.0, "hold_s": 2.5,
                               "loop": False}), logs / "camera.log")
    node = start([sys.executable, "-m", "clipose_ros.ros.node", *ros_args({})], logs / "node.log")
    monitor = Monitor(name="shipped_monitor")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rclpy.spin_once(monitor, timeout_sec=0.1)
            counts = frames_per_scene(monitor)
            if len(counts) == SHIPPED_SCENES and min(counts.values()) >= 3:
                break
            assert node.alive(), node.output()[-3000:]
            assert camera.alive(), camera.output()[-3000:]
        frames, _ = monitor.snapshot()
        with monitor.lock:
            tf = list(monitor.tf)
        yield frames, tf
    finally:
        monitor.destroy_node()
        node.stop()
        camera.stop()


def test_end_to_end_with_the_shipped_models(shipped):
    """Plumbing as with the doubles, and accuracy floors under what the shipped models measured
    here (models/clipose_pose.md and clipose_pose_clip.md, models/yoloseg_coco_nocs.md): a
    regression guard, not the bar."""
    frames, tf = shipped
    summary = check_end_to_end(frames, tf, "clipose/", min_frames=3 * SHIPPED_SCENES)
    print("shipped models end to end:", {k: v for k, v in summary.items() if k != "per_class"})
    # Measured here on the camera's default structured-light frames with the COCO-based
    # segmenter (yoloseg_coco_nocs, chosen for real frames): 57 % of objects detected with the
    # right class within 10 cm, 45 % within 10 deg and 5 cm, median 2.0 deg / 0.70 cm (the same
    # in two runs, 2026-12-04; the previous pose file: 51 %, 2.4 deg / 1.4 cm; one bottle with
    # a third of its mask is what the two files differ by). The
    # from-scratch segmenter, trained on such frames only, gave 73 % and 71 % here but finds
    # nothing in real frames.
    assert summary["paired_fraction"] >= 0.5, summary
    assert summary["found_fraction"] >= 0.42, summary
    assert summary["translation_error_cm_median"] < 3.0, summary
    assert summary["rotation_error_deg_median"] < 10.0, summary
    # Each detection's covariance: zeros (no confidence) or the position's standard deviation
    # (translation_stddev 0.01 m) and a rotation block from the axis confidences, whose turn
    # about y is undefined for the symmetric classes (core/uncertainty.py).
    stated = 0
    for f in frames:
        for pose, cov in zip(f["preds"], f["covariances"], strict=True):
            if not cov.any():
                continue
            stated += 1
            np.testing.assert_allclose(cov[:3, :3], np.eye(3) * 1e-4, atol=1e-12)
            np.testing.assert_allclose(cov, cov.T, atol=1e-12)
            assert np.all(np.linalg.eigvalsh(cov[3:, 3:]) > 0)
            if pose.class_name in SYMMETRIC_CATEGORIES:
                turn = pose.R[:, 1] @ cov[3:, 3:] @ pose.R[:, 1]
                assert turn == pytest.approx(UNDEFINED_ANGLE_VARIANCE, rel=1e-6)
    assert stated > 0, "no detection stated a covariance"


@pytest.mark.xfail(strict=True, reason="the default models find 51 % of the objects within "
                   "10 deg and 5 cm here, of 62 % detected at all (2026-12-05 09:40, per-class "
                   "score thresholds; 47 % of 57 % at 0.5 for all on 08:05): the segmenter is "
                   "the limit (model cards); the issue's bar is 90 %. Remove this mark when the "
                   "models reach it.")
def test_shipped_models_meet_the_issues_bar(shipped):
    frames, tf = shipped
    summary = summarise([f for f in frames if f["matches"] is not None], 10.0, 5.0)
    assert summary["found_fraction"] >= 0.9, summary


# ---------------------------------------------------------------------------- bad input


BAD_NS = "/bad"
BAD_TOPICS = {"rgb": f"{BAD_NS}/camera/color/image_raw",
              "depth": f"{BAD_NS}/camera/aligned_depth_to_color/image_raw",
              "info": f"{BAD_NS}/camera/color/camera_info"}


@pytest.fixture(scope="class")
def bench(ros, scenes, tmp_path_factory):
    """The doubles node in /bad (reliable inputs, a slow model), and a tester node that
    publishes hand-made sets to it."""
    logs = tmp_path_factory.mktemp("bad_logs")
    params = {"reliable_qos": True, "warn_throttle": 0.5, "frame_prefix": "bad/",
              "sync_slop": 0.01}
    node = start([sys.executable, DOUBLES, str(scenes), "--delay", "0.25",
                  *ros_args(params, BAD_NS)], logs / "node.log")
    rec = Recorder("bad_input_tester")
    rec.listen("det", Detection3DArray, f"{BAD_NS}/clipose/detections", RELIABLE)
    rec.listen("rosout", Log, "/rosout", QoSProfile(
        depth=1000, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    rec.listen("diag", DiagnosticArray, "/diagnostics", 10)
    rec.listen("markers", MarkerArray, f"{BAD_NS}/clipose/markers", RELIABLE)
    pubs = {
        "rgb": rec.node.create_publisher(Image, BAD_TOPICS["rgb"], 10),
        "depth": rec.node.create_publisher(Image, BAD_TOPICS["depth"], 10),
        "info": rec.node.create_publisher(CameraInfo, BAD_TOPICS["info"], 10),
    }
    frame = load_frames(scenes)[0]
    try:
        rec.wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 20,
                     "the node's subscriptions", (node,))
        yield {"node": node, "rec": rec, "pubs": pubs, "frame": frame}
    finally:
        rec.close()
        node.stop()


class TestBadInput:
    """Each bad set: the node stays up, says why on /rosout, and handles the next good set."""

    @staticmethod
    def send(bench, rgb=None, depth=None, info=None, skip=(), stamp_ns=None, frame_ids=None,
             offsets=None) -> int:
        """Publish one set (defaults: the good frame, stamped now, in the camera's frame);
        ``frame_ids`` / ``offsets`` (ns) change one message's header; returns the set's stamp."""
        f = bench["frame"]
        stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
        header = Header(frame_id="camera_color_optical_frame", stamp=rc.ns_to_stamp(stamp_ns))
        msgs = {
            "rgb": rgb or rc.image_message(f.rgb, "rgb8", header),
            "depth": depth or rc.image_message(f.depth_mm, "16UC1", header),
            "info": info or rc.camera_info_message(f.K, 640, 480, header),
        }
        for key, msg in msgs.items():
            msg.header = Header(
                frame_id=(frame_ids or {}).get(key, header.frame_id),
                stamp=rc.ns_to_stamp(stamp_ns + (offsets or {}).get(key, 0)))
            if key not in skip:
                bench["pubs"][key].publish(msg)
        return stamp_ns

    def outputs(self, bench, stamp_ns: int) -> list:
        return [m for m in bench["rec"].get("det") if rc.stamp_to_ns(m.header.stamp) == stamp_ns]

    def node_says(self, bench, words: str, since: float, timeout: float = 10.0) -> str:
        def find():
            return [m.msg for m in bench["rec"].get("rosout")
                    if m.name == "bad.pose_node" and words in m.msg
                    and m.stamp.sec + m.stamp.nanosec * 1e-9 >= since - 0.5]
        return bench["rec"].wait_for(find, timeout, f"pose_node saying {words!r}",
                                     (bench["node"],))[0]

    def recovers(self, bench) -> None:
        stamp = self.send(bench)
        out = bench["rec"].wait_for(lambda: self.outputs(bench, stamp), 15,
                                    "detections for the good frame after a bad one",
                                    (bench["node"],))
        assert len(out[0].detections) >= 2
        assert bench["node"].alive()

    def bad_case(self, bench, words: str, **kwargs) -> str:
        time.sleep(0.6)  # past warn_throttle, so this case's warning is not suppressed
        since = time.time()
        self.send(bench, **kwargs)
        said = self.node_says(bench, words, since)
        self.recovers(bench)
        return said

    def refused(self, bench, words: str, stream: str, **kwargs) -> str:
        """A bad set: the specific message, naming the broken stream's topic; no output for it;
        the next good set processed."""
        time.sleep(0.6)  # past warn_throttle
        since = time.time()
        stamp = self.send(bench, **kwargs)
        said = self.node_says(bench, words, since)
        assert BAD_TOPICS[stream] in said, said
        self.recovers(bench)  # reliable and in order: an output of the bad set came before
        assert not self.outputs(bench, stamp), f"output published for the refused set: {said}"
        return said

    def diagnostics(self, bench, after: float = 0.0) -> dict[str, str]:
        """The values of the newest /diagnostics status of /bad/pose_node stamped after
        ``after`` (wall time, s)."""
        def newest():
            for m in reversed(bench["rec"].get("diag")):
                if m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 < after:
                    break
                for status in m.status:
                    if status.name.startswith(f"{BAD_NS}/pose_node"):
                        return {kv.key: kv.value for kv in status.values}
            return None
        return bench["rec"].wait_for(newest, 10, "diagnostics", (bench["node"],))

    def set_param(self, bench, name, value):
        from rclpy.parameter import Parameter
        from rclpy.parameter_client import AsyncParameterClient

        client = AsyncParameterClient(bench["rec"].node, f"{BAD_NS}/pose_node")
        future = client.set_parameters([Parameter(name, value=value)])
        bench["rec"].wait_for(future.done, 10, f"setting {name}", (bench["node"],))
        return future.result().results[0]

    def images(self, bench):
        f = bench["frame"]
        header = Header()
        rgb = rc.image_message(f.rgb, "rgb8", header)
        depth = rc.image_message(f.depth_mm, "16UC1", header)
        info = rc.camera_info_message(f.K, 640, 480, header)
        return rgb, depth, info

    def test_good_frame_first(self, bench):
        self.recovers(bench)

    def test_mismatched_sizes(self, bench):
        depth = rc.image_message(bench["frame"].depth_mm[::2, ::2], "16UC1", Header())
        said = self.bad_case(bench, "RGB is 640x480 but depth is 320x240", depth=depth)
        assert "input refused" in said

    def test_unknown_encoding(self, bench):
        rgb, _, _ = self.images(bench)
        rgb.encoding = "yuv422"
        said = self.bad_case(bench, "encoding 'yuv422' is not supported", rgb=rgb)
        assert BAD_TOPICS["rgb"] in said, said

    def test_truncated_buffer(self, bench):
        _, depth, _ = self.images(bench)
        depth.data = bytes(depth.data)[: len(depth.data) // 2]
        said = self.bad_case(bench, "truncated or padded", depth=depth)
        # RGB and depth share the frame id: only the topic says which stream is broken.
        assert BAD_TOPICS["depth"] in said and BAD_TOPICS["rgb"] not in said, said

    def test_all_zero_depth(self, bench):
        depth = rc.image_message(np.zeros((480, 640), np.uint16), "16UC1", Header())
        self.bad_case(bench, "no valid pixel", depth=depth)

    def test_nan_depth(self, bench):
        depth = rc.image_message(np.full((480, 640), np.nan, np.float32), "32FC1", Header())
        self.bad_case(bench, "depth (32FC1) has no valid pixel", depth=depth)

    def test_intrinsics_with_zeros(self, bench):
        _, _, info = self.images(bench)
        info.k = [0.0] * 9
        self.bad_case(bench, "focal lengths fx=0.0", info=info)

    def test_missing_camera_info(self, bench):
        time.sleep(2.2)  # let the last camera_info age past the 2 s window
        since = time.time()
        for _ in range(12):
            self.send(bench, skip=("info",))
            time.sleep(0.2)
        self.node_says(bench, "nothing received on /bad/camera/color/camera_info", since)
        self.recovers(bench)

    def test_empty_segmentation(self, bench):
        rng = np.random.default_rng(5)
        unknown = rc.image_message(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), "rgb8",
                                   Header())
        time.sleep(0.6)
        since = time.time()
        stamp = self.send(bench, rgb=unknown)
        out = bench["rec"].wait_for(lambda: self.outputs(bench, stamp), 10,
                                    "an (empty) detection array", (bench["node"],))
        assert out[0].detections == []
        self.node_says(bench, "no objects segmented", since)
        self.recovers(bench)

    def test_mask_with_too_few_points(self, bench):
        sparse = np.zeros((480, 640), np.uint16)
        rows, cols = np.nonzero(bench["frame"].depth_mm)
        sparse[rows[::4000], cols[::4000]] = bench["frame"].depth_mm[rows[::4000], cols[::4000]]
        depth = rc.image_message(sparse, "16UC1", Header())
        said = self.bad_case(bench, "mask pixels with valid depth < min_points", depth=depth)
        assert "object skipped" in said

    def test_publisher_with_incompatible_qos_is_named(self, bench):
        from rclpy.qos import qos_profile_sensor_data

        since = time.time()
        pub = bench["rec"].node.create_publisher(  # best effort; the node asks for reliable
            CameraInfo, f"{BAD_NS}/camera/color/camera_info", qos_profile_sensor_data)
        try:
            said = self.node_says(bench, "offers a QoS incompatible", since)
            assert "/bad/camera/color/camera_info" in said and "RELIABILITY" in said
        finally:
            bench["rec"].node.destroy_publisher(pub)
        self.recovers(bench)

    def test_live_parameters_apply_to_the_next_frame_and_ranges_hold(self, bench):
        from rclpy.parameter import Parameter
        from rclpy.parameter_client import AsyncParameterClient

        client = AsyncParameterClient(bench["rec"].node, f"{BAD_NS}/pose_node")
        rec = bench["rec"]

        def set_param(name, value):
            future = client.set_parameters([Parameter(name, value=value)])
            rec.wait_for(future.done, 10, f"setting {name}", (bench["node"],))
            return future.result().results[0]

        try:
            assert set_param("min_points", 1_000_000).successful
            time.sleep(0.6)
            since = time.time()
            stamp = self.send(bench)
            out = rec.wait_for(lambda: self.outputs(bench, stamp), 10, "output",
                               (bench["node"],))
            assert out[0].detections == []
            self.node_says(bench, "< min_points 1000000", since)
            refused = set_param("track_match_distance", -1.0)
            assert not refused.successful
            assert not set_param("imgsz", 640).successful  # read-only
            refused = set_param("class_score_thresholds", "cup:0.3")
            assert not refused.successful and "unknown class 'cup'" in refused.reason
            since = time.time()  # the default names every class: say the global does nothing
            assert set_param("score_threshold", 0.6).successful
            self.node_says(bench, "score_threshold 0.6 changes nothing", since)
            assert set_param("class_score_thresholds", "laptop:0.25").successful
        finally:
            assert set_param("min_points", 50).successful
            assert set_param("score_threshold", PoseNodeConfig().score_threshold).successful
            assert set_param("class_score_thresholds",
                             PoseNodeConfig().class_score_thresholds).successful
        self.recovers(bench)

    def test_paused_node_runs_nothing_counts_the_sets_and_resumes(self, bench):
        """enabled:=false: the markers of the tracked objects are deleted, sets are counted
        and dropped, nothing is published; enabled:=true: the next set gives poses again."""
        rec = bench["rec"]

        def deletions():
            return sum(m.action == Marker.DELETE for msg in rec.get("markers") for m in msg.markers)

        self.recovers(bench)  # objects tracked
        time.sleep(0.3)
        before = deletions()
        try:
            assert self.set_param(bench, "enabled", False).successful
            rec.wait_for(lambda: deletions() >= before + 3, 10,
                         "the tracked objects' markers deleted on pause", (bench["node"],))
            stamps = [self.send(bench) for _ in range(3)]
            values = rec.wait_for(
                lambda: (v := self.diagnostics(bench, after=time.time()))
                and int(v["frames_paused"]) >= 3 and v, 10, "the paused sets counted")
            assert values["enabled"] == "false"
            assert not any(self.outputs(bench, s) for s in stamps), "published while paused"
        finally:
            assert self.set_param(bench, "enabled", True).successful
        self.recovers(bench)

    def test_burst_faster_than_the_model_drops_old_frames(self, bench):
        rec = bench["rec"]

        def dropped():
            values = [kv.value for m in rec.get("diag") for s in m.status
                      if s.name.startswith("/bad/pose_node") for kv in s.values
                      if kv.key == "frames_dropped"]
            return int(values[-1]) if values else None

        before = rec.wait_for(lambda: dropped() is not None, 10, "diagnostics") and dropped()
        stamps = []
        for _ in range(12):  # ~4 ms apart; the doubled model takes > 250 ms per frame
            stamps.append(self.send(bench))
            time.sleep(0.004)
        rec.wait_for(lambda: self.outputs(bench, stamps[-1]), 15,
                     "the newest frame of the burst processed", (bench["node"],))
        processed = [s for s in stamps if self.outputs(bench, s)]
        assert len(processed) < len(stamps) / 2, "the node queued the burst instead of dropping"
        # Replaced sets are counted (DDS may also have merged some of the burst's samples).
        rec.wait_for(lambda: dropped() >= before + 3, 5, "the drops counted in /diagnostics")
        assert bench["node"].alive()


    # ------------------------------------------------------------ input sanity (issue 21)

    def test_32fc1_depth_in_millimetres_is_refused(self, bench):
        depth = rc.image_message(bench["frame"].depth_mm.astype(np.float32), "32FC1", Header())
        said = self.refused(bench, "values look like millimetres; set depth_scale:=0.001",
                            "depth", depth=depth)
        assert "depth median" in said and "(32FC1)" in said

    def test_16uc1_depth_in_metres_is_refused(self, bench):
        metres = np.round(bench["frame"].depth_mm / 1000.0).astype(np.uint16)
        depth = rc.image_message(metres, "16UC1", Header())
        said = self.refused(bench, "values look like metres", "depth", depth=depth)
        assert "(16UC1)" in said

    def test_saturated_16uc1_depth_is_refused(self, bench):
        depth = rc.image_message(np.full((480, 640), 65535, np.uint16), "16UC1", Header())
        self.refused(bench, "100 % of the valid pixels read 65535", "depth", depth=depth)

    def test_depth_scale_reads_a_driver_that_publishes_32fc1_millimetres(self, bench):
        f = bench["frame"]
        try:
            assert self.set_param(bench, "depth_scale", 0.001).successful
            depth = rc.image_message(f.depth_mm.astype(np.float32), "32FC1", Header())
            stamp = self.send(bench, depth=depth)
            out = bench["rec"].wait_for(lambda: self.outputs(bench, stamp), 15,
                                        "detections from 32FC1 millimetres with depth_scale",
                                        (bench["node"],))
            zs = [d.results[0].pose.pose.position.z for d in out[0].detections]
            assert len(zs) >= 2 and all(0.2 < z < 3.0 for z in zs), zs
        finally:
            assert self.set_param(bench, "depth_scale", 0.0).successful
        assert not self.set_param(bench, "depth_scale", -1.0).successful  # range holds
        self.recovers(bench)

    def test_stamp_zero_is_refused(self, bench):
        self.refused(bench, "header.stamp is 0", "rgb", stamp_ns=0)

    def test_stamps_far_from_the_clock_are_reported_and_kept_out_of_the_latency(self, bench):
        day = 86_400 * 10**9
        for offset, words in ((-day, "s (24.00 h) behind the node's clock"),
                              (3600 * 10**9, "s (1.00 h) ahead of the node's clock"),
                              (-2 * day, "s (48.00 h) behind the node's clock")):
            time.sleep(0.6)
            since = time.time()
            stamp = self.send(bench, stamp_ns=time.time_ns() + offset)
            said = self.node_says(bench, words, since)
            assert BAD_TOPICS["rgb"] in said and "stamp_tolerance=5.0" in said, said
            # Processed (a replayed bag still gets its poses), with the set's own stamp.
            bench["rec"].wait_for(lambda s=stamp: self.outputs(bench, s), 15,
                                  "the far-stamped set's output", (bench["node"],))
        for _ in range(3):
            self.recovers(bench)
        diag = self.diagnostics(bench, after=time.time())
        assert int(diag["stamps_out_of_tolerance"]) >= 3, diag
        # A day's "latency" in the window would read 8.6e7 ms (the issue: 14 years).
        assert 0 < float(diag["latency_p95_ms"]) < 10_000, diag

    def test_empty_frame_id_is_refused(self, bench):
        empty = {"rgb": "", "depth": "", "info": ""}
        said = self.refused(bench, "empty header.frame_id", "rgb", frame_ids=empty)
        assert "tf2 rejects" in said

    def test_camera_info_of_another_frame_is_refused(self, bench):
        said = self.refused(bench, "differs from the images' frame", "info",
                            frame_ids={"info": "camera_depth_optical_frame"})
        assert "'camera_depth_optical_frame'" in said

    def test_camera_info_without_size_is_refused(self, bench):
        _, _, info = self.images(bench)
        info.width = info.height = 0
        self.refused(bench, "width x height is 0x0", "info", info=info)

    def test_principal_point_far_outside_the_image_is_refused(self, bench):
        _, _, info = self.images(bench)
        k = list(info.k)
        k[2], k[5] = 1900.0, 240.0  # K of a wider image
        info.k = k
        self.refused(bench, "principal point (cx=1900, cy=240) lies far outside the 640x480",
                     "info", info=info)

    def test_a_pair_too_far_apart_to_sync_is_counted_and_reported(self, bench):
        before = int(self.diagnostics(bench)["unsynced_depth"])
        time.sleep(4.0)  # no other depth within 3 s of the next set's stamp
        said = self.refused(bench, "dropped unsynchronised", "rgb", offsets={"depth": -3 * 10**9})
        assert "nearest depth -3.000 s" in said and "sync_slop=0.01" in said, said
        diag = self.diagnostics(bench, after=time.time())
        assert int(diag["unsynced_depth"]) > before and int(diag["frames_unsynced"]) >= 1, diag

    def test_images_beyond_the_dds_segment_are_named_when_nothing_arrives(self, bench):
        big = rc.camera_info_message(bench["frame"].K * [[6.25], [6.25], [1]], 4000, 3000,
                                     Header())
        time.sleep(2.2)  # the last images age past the 2 s window
        since = time.time()
        for _ in range(12):
            self.send(bench, info=big, skip=("rgb", "depth"))
            time.sleep(0.25)
        said = self.node_says(bench, "camera_info announces 4000x3000 images", since)
        missing = said.split("nothing received on ", 1)[1].split(";")[0]
        assert set(missing.split(", ")) == {BAD_TOPICS["rgb"], BAD_TOPICS["depth"]}, said
        assert "34.3 MiB as rgb8" in said and "16.0 MiB shared-memory segment" in said, said
        assert "fastdds_large_images.xml" in said, said
        self.recovers(bench)

    def test_diagnostics_count_every_kind_of_refusal_and_drop(self, bench):
        diag = self.diagnostics(bench, after=time.time())
        for kind in rc.REFUSAL_KINDS:
            assert f"rejected_{kind}" in diag, kind
        for key in ("frames_dropped", "frames_failed", "frames_unsynced", "unsynced_rgb",
                    "unsynced_depth", "unsynced_camera_info", "stamps_out_of_tolerance"):
            assert key in diag, key
        # What the cases above sent (this class runs in order, on one node).
        assert int(diag["rejected_depth_units"]) >= 3, diag
        assert int(diag["rejected_frame_id"]) >= 2, diag
        assert int(diag["rejected_stamp"]) >= 1 and int(diag["rejected_buffer"]) >= 1, diag
        assert int(diag["rejected_intrinsics"]) >= 2 and int(diag["rejected_size"]) >= 2, diag
        assert int(diag["frames_rejected"]) == sum(
            int(diag[f"rejected_{kind}"]) for kind in rc.REFUSAL_KINDS), diag


# ---------------------------------------------------------------------------- start-up checks


def run_until_exit(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=child_env())


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"device": "tpu"}, "device: 'tpu' is not cpu, cuda, cuda:N or auto"),
        ({"frame_prefix": "/clipose/"}, "frame_prefix: '/clipose/' would make TF frame ids"),
        ({"pose_model": "/nonexistent/clipose_pose.pt"}, "/nonexistent/clipose_pose.pt"),
        ({"pose_subsets": 3}, "pose_subsets: subsets must be 1..2"),
        ({"class_score_thresholds": "laptop:0.3 cup:0.3"}, "unknown class 'cup'"),
    ],
)
def test_invalid_parameters_stop_start_up_with_a_message(params, words):
    if "pose_model" in params and importlib.util.find_spec("clipose_ros.model") is None:
        pytest.skip("the pose model loader is not in the package yet")
    result = run_until_exit([sys.executable, "-m", "clipose_ros.ros.node", *ros_args(params)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pose_node: cannot start" in result.stderr and words in result.stderr


def test_camera_refuses_inconsistent_parameters():
    result = run_until_exit([sys.executable, "-m", "clipose_ros.ros.synthetic_camera",
                             *ros_args({"min_objects": 5, "max_objects": 2})])
    assert result.returncode == 2
    assert "min_objects (5) > max_objects (2)" in result.stderr


def test_parameter_file_and_launch_file_match_the_declarations():
    config = yaml.safe_load((ROOT / "config" / "pose.yaml").read_text())
    declared = {p.name: p for p in POSE_NODE_PARAMS}
    assert set(config["/**/pose_node"]["ros__parameters"]) == set(declared)
    assert set(config["/**/synthetic_camera"]["ros__parameters"]) == {p.name for p in CAMERA_PARAMS}
    for name, value in config["/**/pose_node"]["ros__parameters"].items():
        assert type(value) is type(declared[name].default), name
    launch = load_file_module("launch/pose.launch.py", "pose_launch")  # needs no launch_ros
    assert set(launch.NODE_PARAMETERS) <= set(declared)
    assert set(launch.NODE_PARAMETERS) <= set(launch.ARGUMENTS)
    for name in launch.NODE_PARAMETERS:  # launch defaults = the node's defaults
        assert str(declared[name].default) == launch.ARGUMENTS[name][0], name
    assert set(launch.STRING_PARAMETERS) == {  # passed as text, never read as YAML
        name for name in launch.NODE_PARAMETERS if isinstance(declared[name].default, str)}
    assert {"namespace", "rgb_topic", "depth_topic", "camera_info_topic", "pose_model",
            "segmenter_weights", "device", "score_threshold", "use_synthetic_camera",
            "use_rviz"} <= set(launch.ARGUMENTS)
    from clipose_ros.ros.node import DEPTH_TOPIC, INFO_TOPIC, RGB_TOPIC

    assert set(launch.TOPIC_REMAPS.values()) == {RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC}
    readme = (ROOT / "README.md").read_text()
    for p in POSE_NODE_PARAMS:  # the README's parameter table: every parameter, its default
        default = str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        assert f"| `{p.name}` | `{default}` |" in readme, f"README parameter table: {p.name}"
    rviz = yaml.safe_load((ROOT / "config" / "clipose.rviz").read_text())
    topics = {d.get("Topic", {}).get("Value") for d in rviz["Visualization Manager"]["Displays"]}
    assert {"/clipose/markers", "/clipose/debug_image"} <= topics


def test_shipped_class_thresholds_with_other_segmenter_weights_are_warned_about():
    """The default per-class thresholds belong to the default segmenter (any of its formats);
    with other weights the node and clipose-infer say so, naming the fix."""
    default = PoseNodeConfig()
    for weights in (default.segmenter_weights, "models/yoloseg_coco_nocs.pt",
                    "/abs/path/yoloseg_coco_nocs.onnx"):
        assert foreign_thresholds_warning(default.class_score_thresholds, weights) is None
    message = foreign_thresholds_warning(default.class_score_thresholds,
                                         "models/yoloseg_synth.onnx")
    assert "models/yoloseg_synth.onnx" in message
    assert "choose_class_thresholds.py" in message and "''" in message
    for own in ("", "mug:0.3"):  # thresholds the user chose are theirs
        assert foreign_thresholds_warning(own, "models/yoloseg_synth.onnx") is None


def test_demo_param_overrides_reach_the_pose_node_command_and_unknown_names_are_refused():
    """`clipose-demo --param NAME=VALUE` (as `bench/node_speed.py --param`): the value, read as
    YAML, is passed to pose_node after the parameter file, so it wins; a misspelt name stops
    the command before any process starts, naming the parameter."""
    from clipose_ros.tools.demo import parse_args

    cfg = parse_args(["--param", "score_threshold=0.3", "--param", "box_fit=false"])
    node = cfg.commands()["pose_node"]
    assert node.index("score_threshold:=0.3") > node.index("--params-file")
    assert "box_fit:=false" in node
    # strings are quoted for rcl: an empty one stays a string (a bare ':=' stops rcl)
    cfg = parse_args(["--param", 'class_score_thresholds=""', "--param", "device=cpu"])
    node = cfg.commands()["pose_node"]
    assert 'class_score_thresholds:=""' in node and 'device:="cpu"' in node
    assert processes.parse_node_params(["class_score_thresholds="]) == {
        "class_score_thresholds": ""}  # what a shell leaves of class_score_thresholds=""
    with pytest.raises(SystemExit):  # one setting from two options: refused, not ranked
        parse_args(["--device", "cpu", "--param", "device=cuda"])
    assert parse_args(["--param", "device=auto"]).commands()["pose_node"][-1] == 'device:="auto"'
    for bad, message in (("score=0.3", "no parameter 'score'"), ("box_fit", "NAME=VALUE")):
        with pytest.raises(ValueError, match=message):
            processes.parse_node_params([bad])
