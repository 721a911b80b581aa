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

The frames and their ground truth come from :mod:`clipose_ros.data.replay` (no ROS); the
parameters are :data:`clipose_ros.ros.parameters.CAMERA_PARAMS`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from clipose_ros.data import nocs_format as nf
from clipose_ros.data.replay import load_frames, render_scenes
from clipose_ros.ros import convert as rc
from clipose_ros.ros.parameters import CAMERA_PARAMS, CameraConfig, ParameterError
from clipose_ros.ros.runtime import declare_parameters, run_node

RGB_TOPIC = "color/image_raw"
DEPTH_TOPIC = "aligned_depth_to_color/image_raw"
INFO_TOPIC = "color/camera_info"
TRUTH_TOPIC = "ground_truth/detections"


class SyntheticCamera(Node):
    """Publishes the prepared frames; see the module docstring."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("synthetic_camera", **node_kwargs)
        p = CameraConfig(**declare_parameters(self, CAMERA_PARAMS))
        self.config = p
        self._tmp: str | None = None
        start = time.perf_counter()
        if p.source:
            folder = Path(p.source).expanduser()
            if not folder.is_dir():
                raise ParameterError(f"source: folder {folder} does not exist")
        else:
            self._tmp = tempfile.mkdtemp(prefix="clipose_synthetic_camera_")
            folder = render_scenes(
                Path(self._tmp), p.scenes, p.frames_per_scene, p.seed,
                p.min_objects, p.max_objects, p.depth_noise, p.distractors,
                None if p.sensor == "none" else p.sensor,
            )
        try:
            frames = load_frames(folder, p.intrinsics, p.max_frames or None)
        except nf.NocsFormatError as err:
            raise ParameterError(f"source: {err}") from err
        self.frames = frames
        # Messages built once; publishing only stamps the shared header.
        self.header = Header(frame_id=p.frame_id)
        self.messages = []
        for f in frames:
            depth = (f.depth_mm if p.depth_encoding == "16UC1"
                     else f.depth_mm.astype(np.float32) / np.float32(1000.0))
            h, w = f.depth_mm.shape
            self.messages.append((
                rc.image_message(f.rgb, "rgb8", self.header),
                rc.image_message(depth, p.depth_encoding, self.header),
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
        self.create_timer(1.0 / p.rate_hz, self._tick)
        n_objects = sum(len(f.truth) for f in frames)
        self.get_logger().info(
            f"synthetic_camera: {len(frames)} frames ({n_objects} labelled objects) from "
            f"{'rendered scenes' if self._tmp else folder} ready in "
            f"{time.perf_counter() - start:.1f} s; {p.rate_hz:g} Hz, {p.hold_s:g} s "
            "per frame"
        )

    def _tick(self) -> None:
        p = self.config
        if not self.streaming:
            if p.wait_for_subscriber and self.rgb_pub.get_subscription_count() == 0:
                return
            self.streaming = True
            self.frame_started = time.monotonic()
            self.get_logger().info("synthetic_camera: streaming")
        if time.monotonic() - self.frame_started >= p.hold_s and (
            p.loop or self.index < len(self.frames) - 1
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


def main(args: list[str] | None = None) -> None:
    """``synthetic_camera`` entry point (``ros2 run clipose_ros synthetic_camera``)."""
    sys.exit(run_node(SyntheticCamera, args if args is not None else sys.argv,
                      "synthetic_camera"))


if __name__ == "__main__":
    main()
