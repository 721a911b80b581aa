"""``synthetic_camera``: the package's embedded default input, and its ground truth.

Streams generated scenes (rendered once at start with the project's generator,
``clipose_ros.data.synth``) or the frames of any NOCS-format folder as RGB (``rgb8``), depth
(``16UC1`` millimetres or ``32FC1`` metres) and camera_info at ``rate_hz``, and publishes the
ground-truth poses of every frame as a ``vision_msgs/Detection3DArray`` with the same header on
``ground_truth/detections``. Frames are read and converted to messages once, up front; while
streaming, only headers change, so the camera costs almost nothing next to the pose node.

Each frame is held for ``hold_s`` seconds (a static scene for that long), then the next one
follows; ``loop`` starts over at the end.

Ground-truth ``Detection3D.id`` is ``<frame>#<instance id>``, with ``#sym`` appended when the
rotation about the object's y axis is not observable (bottle, bowl, can, and a mug whose handle
is hidden), so checkers score those by the y axis only, as the NOCS evaluation does. The
hypothesis pose is the labelled object frame; ``bbox`` is the tight box of the object (for our
generated mugs computed exactly from the model's label frame in ``obj_models/``).

The loading part (:func:`load_frames`, :func:`render_scenes`) needs no ROS.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipose_ros.categories import CLASS_IDS, is_symmetric
from clipose_ros.core.boxes import object_box
from clipose_ros.core.structures import ObjectPose
from clipose_ros.data import nocs_format as nf
from clipose_ros.ros.node import Param, ParameterError, declare_parameters, run_node

RGB_TOPIC = "color/image_raw"
DEPTH_TOPIC = "aligned_depth_to_color/image_raw"
INFO_TOPIC = "color/camera_info"
TRUTH_TOPIC = "ground_truth/detections"
SYMMETRIC_SUFFIX = "#sym"


@dataclass
class ReplayFrame:
    """One frame to replay: images, intrinsics and ground truth (camera frame)."""

    key: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) uint16, 0 = invalid
    K: np.ndarray
    truth: list[ObjectPose] = field(default_factory=list)  # key = ground-truth id
    boxes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # tight boxes
    prefix: Path | None = None


def truth_is_symmetric(truth_id: str) -> bool:
    """Whether a ground-truth id says the rotation about y is unobservable."""
    return truth_id.endswith(SYMMETRIC_SUFFIX)


def _model_info(root: Path, model: str) -> dict | None:
    """``obj_models/<split>/<model>.json`` of our generator, looked up beside/above ``root``."""
    for base in (root, *root.parents[:2]):
        for path in (base / "obj_models").glob(f"*/{model}.json"):
            return json.loads(path.read_text())
    return None


def _truth(root: Path, prefix: Path, label: nf.FrameLabel, key: str):
    truth, boxes = [], []
    for i in range(len(label)):
        R, t = label.opencv_pose(i)
        s = float(label.scales[i])
        extents = nf.instance_extents(prefix, label, i)
        class_id = int(label.class_ids[i])
        symmetric = is_symmetric(class_id, bool(label.handle_visibility[i]))
        pose = ObjectPose(
            class_id=class_id, score=1.0, R=np.asarray(R, np.float64),
            t=np.asarray(t, np.float64), size=s * extents, bbox=label.bboxes[i], nocs_scale=s,
            key=f"{key}#{int(label.instance_ids[i])}" + (SYMMETRIC_SUFFIX if symmetric else ""),
        )
        box = object_box(pose)
        info = _model_info(root, label.model_list[i]) if class_id == CLASS_IDS["mug"] else None
        if info and "label_shift" in info and "nocs_extents" in info:
            # p_label = label_scale * (p_coord + shift): the tight (coordinate-map) box is
            # centred at p_coord = 0, i.e. at s_coord * shift in the object frame.
            s_coord = s * float(info["label_scale"])
            offset = s_coord * np.asarray(info["label_shift"], np.float64)
            box = (pose.t + pose.R @ offset, s_coord * np.asarray(info["nocs_extents"]))
        truth.append(pose)
        boxes.append(box)
    return truth, boxes


def load_frames(
    folder: str | Path, intrinsics: str = "camera", max_frames: int | None = None
) -> list[ReplayFrame]:
    """Every frame below a NOCS-format folder (labelled frames carry ground truth)."""
    root = Path(folder)
    default_K = nf.resolve_intrinsics(intrinsics)
    frames = []
    for prefix in nf.list_frames(root)[:max_frames]:
        key = str(prefix.relative_to(root)).replace("/", "_")
        rgb = nf.read_color(prefix)
        depth_mm = np.round(nf.read_depth(prefix) * 1000.0).astype(np.uint16)
        truth, boxes, K = [], [], default_K
        if nf.frame_path(prefix, "label.pkl").is_file():
            label = nf.read_label(prefix)
            K = nf.frame_intrinsics(prefix, label, default_K)
            truth, boxes = _truth(root, prefix, label, key)
        else:
            K = nf.read_folder_intrinsics(prefix.parent)
            K = default_K if K is None else K
        frames.append(ReplayFrame(key, rgb, depth_mm, np.asarray(K, np.float64), truth, boxes,
                                  prefix))
    return frames


def render_scenes(
    out: Path, scenes: int, frames_per_scene: int = 1, seed: int = 0, min_objects: int = 3,
    max_objects: int = 5, depth_noise: bool = True, distractors: bool = True,
    sensor: str | None = None,
) -> Path:
    """Render test-split scenes with the project's generator into ``out``; returns the folder
    of frames (``out/test``). ``sensor``: a realism preset (room scene, sensor artefacts, as
    ``clipose-synth --preset``), or None for the ideal frames on a plain table."""
    from clipose_ros.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        min_objects=min_objects, max_objects=max_objects, depth_noise=depth_noise,
        max_distractors=SynthConfig.max_distractors if distractors else 0,
        sensor=sensor, scene="plain" if sensor is None else "room",
    )
    generate(out, "test", scenes, frames_per_scene, seed=seed, workers=0, cfg=cfg,
             progress=False)
    return out / "test"


# "none" and the presets of clipose_ros.data.sensor (not imported here: it loads the renderer).
SENSOR_CHOICES = ("none", "active-stereo", "structured-light")

CAMERA_PARAMS: tuple[Param, ...] = (
    Param("source", "", "NOCS-format folder to replay; empty: render scenes with the generator",
          read_only=True),
    Param("intrinsics", "camera", "K for folder frames with none stored (camera | real)",
          choices=("camera", "real"), read_only=True),
    Param("scenes", 4, "Scenes to render", 1, 1000, read_only=True),
    Param("frames_per_scene", 1, "Views rendered per scene", 1, 100, read_only=True),
    Param("seed", 0, "Seed of the rendered scenes", 0, 2**31 - 1, read_only=True),
    Param("min_objects", 3, "Fewest objects per rendered scene", 1, 6, read_only=True),
    Param("max_objects", 5, "Most objects per rendered scene", 1, 6, read_only=True),
    Param("depth_noise", True, "Depth noise in rendered frames (with a sensor: all of its "
          "depth effects)", read_only=True),
    Param("sensor", "structured-light", "Sensor model of rendered frames: a realism preset of "
          "clipose-synth (room scene, depth holes, offsets, correlated noise, colour camera "
          "effects; the shipped models are trained on structured-light), or none for ideal "
          "frames on a plain table",
          choices=SENSOR_CHOICES, read_only=True),
    Param("distractors", True, "Non-category clutter in rendered scenes", read_only=True),
    Param("max_frames", 0, "Replay at most this many frames (0: all)", 0, 1_000_000,
          read_only=True),
    Param("rate_hz", 10.0, "Frames published per second", 0.1, 200.0, read_only=True),
    Param("hold_s", 5.0, "Seconds each frame is repeated before the next (static scene)", 0.0,
          3600.0, read_only=True),
    Param("loop", True, "Start over after the last frame (else keep the last one)",
          read_only=True),
    Param("wait_for_subscriber", True, "Start streaming (and the first frame's hold time) only "
          "once something subscribes to the RGB topic, so a slow-starting node sees frame 0",
          read_only=True),
    Param("depth_encoding", "16UC1", "Depth encoding: 16UC1 (mm) or 32FC1 (m)",
          choices=("16UC1", "32FC1"), read_only=True),
    Param("frame_id", "camera_color_optical_frame", "Optical frame id of the images",
          read_only=True),
)


def _make_camera_class():
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection3DArray

    from clipose_ros.ros import convert as rc

    class SyntheticCamera(Node):
        """Publishes the prepared frames; see the module docstring."""

        def __init__(self, **node_kwargs) -> None:
            super().__init__("synthetic_camera", **node_kwargs)
            p = declare_parameters(self, CAMERA_PARAMS)
            if p["min_objects"] > p["max_objects"]:
                raise ParameterError(
                    f"min_objects ({p['min_objects']}) > max_objects ({p['max_objects']})")
            self.params = p
            self._tmp: str | None = None
            start = time.perf_counter()
            if p["source"]:
                folder = Path(p["source"]).expanduser()
                if not folder.is_dir():
                    raise ParameterError(f"source: folder {folder} does not exist")
            else:
                self._tmp = tempfile.mkdtemp(prefix="clipose_synthetic_camera_")
                folder = render_scenes(
                    Path(self._tmp), p["scenes"], p["frames_per_scene"], p["seed"],
                    p["min_objects"], p["max_objects"], p["depth_noise"], p["distractors"],
                    None if p["sensor"] == "none" else p["sensor"],
                )
            try:
                frames = load_frames(folder, p["intrinsics"], p["max_frames"] or None)
            except nf.NocsFormatError as err:
                raise ParameterError(f"source: {err}") from err
            self.frames = frames
            # Messages built once; publishing only stamps the shared header.
            self.header = Header(frame_id=p["frame_id"])
            self.messages = []
            for f in frames:
                depth = (f.depth_mm if p["depth_encoding"] == "16UC1"
                         else f.depth_mm.astype(np.float32) / np.float32(1000.0))
                h, w = f.depth_mm.shape
                self.messages.append((
                    rc.image_message(f.rgb, "rgb8", self.header),
                    rc.image_message(depth, p["depth_encoding"], self.header),
                    rc.camera_info_message(f.K, w, h, self.header),
                    rc.detection_array(self.header, f.truth, [t.key for t in f.truth],
                                       f.boxes),
                ))
            qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
            self.rgb_pub = self.create_publisher(Image, RGB_TOPIC, qos)
            self.depth_pub = self.create_publisher(Image, DEPTH_TOPIC, qos)
            self.info_pub = self.create_publisher(CameraInfo, INFO_TOPIC, qos)
            self.truth_pub = self.create_publisher(
                Detection3DArray, TRUTH_TOPIC, QoSProfile(depth=10,
                                                          reliability=ReliabilityPolicy.RELIABLE))
            self.index = 0
            self.published = 0
            self.streaming = False
            self.frame_started = time.monotonic()
            self.create_timer(1.0 / p["rate_hz"], self._tick)
            n_objects = sum(len(f.truth) for f in frames)
            self.get_logger().info(
                f"synthetic_camera: {len(frames)} frames ({n_objects} labelled objects) from "
                f"{'rendered scenes' if self._tmp else folder} ready in "
                f"{time.perf_counter() - start:.1f} s; {p['rate_hz']:g} Hz, {p['hold_s']:g} s "
                "per frame"
            )

        def _tick(self) -> None:
            p = self.params
            if not self.streaming:
                if p["wait_for_subscriber"] and self.rgb_pub.get_subscription_count() == 0:
                    return
                self.streaming = True
                self.frame_started = time.monotonic()
                self.get_logger().info("synthetic_camera: streaming")
            if time.monotonic() - self.frame_started >= p["hold_s"] and (
                p["loop"] or self.index < len(self.frames) - 1
            ):
                self.index = (self.index + 1) % len(self.frames)
                self.frame_started = time.monotonic()
            rgb, depth, info, truth = self.messages[self.index]
            self.header.stamp = self.get_clock().now().to_msg()
            for msg in (rgb, depth, info, truth):
                msg.header = self.header
            for det in truth.detections:
                det.header = self.header
            self.rgb_pub.publish(rgb)
            self.depth_pub.publish(depth)
            self.info_pub.publish(info)
            self.truth_pub.publish(truth)
            self.published += 1

        def destroy_node(self) -> None:
            if getattr(self, "_tmp", None):
                shutil.rmtree(self._tmp, ignore_errors=True)
            super().destroy_node()

    return SyntheticCamera


def main(args: list[str] | None = None) -> None:
    """``synthetic_camera`` entry point (``ros2 run clipose_ros synthetic_camera``)."""
    sys.exit(run_node(lambda: _make_camera_class()(), args if args is not None else sys.argv,
                      "synthetic_camera"))


if __name__ == "__main__":
    main()
