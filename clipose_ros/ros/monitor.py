"""The demo's watcher: a node that scores the pose node's output against the camera's truth.

:class:`Monitor` subscribes to the synthetic camera's ground truth, the pose node's detections,
``/tf`` and ``/diagnostics``, and scores each output frame against the ground truth of the
same stamp (:func:`clipose_ros.core.scoring.score_frame`). ``clipose-demo``, the node tests and
``bench/node_speed.py`` use it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from clipose_ros.core.scoring import score_frame
from clipose_ros.core.visualize import draw_pose
from clipose_ros.data.replay import truth_is_symmetric
from clipose_ros.ros import convert as rc
from clipose_ros.ros.synthetic_camera import TRUTH_TOPIC


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
        # the covariance of the hypothesis poses_from_detections reads the pose from
        covariances = [np.asarray(rc.best_hypothesis(d).pose.covariance,
                                  dtype=np.float64).reshape(6, 6)
                       for d in msg.detections if d.results]
        entry = {"stamp_ns": stamp, "received_ns": received, "preds": preds,
                 "covariances": covariances, "frame_id": msg.header.frame_id, "matches": None}
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

    def save_overlay(self, path: Path, timeout_s: float = 5.0) -> bool:
        """Subscribe to the debug image for one frame (the node draws it only while someone
        listens), add the ground-truth boxes of that stamp in white, write a PNG."""
        got: dict[str, object] = {}
        sub = self.create_subscription(Image, "clipose/debug_image",
                                       lambda m: got.setdefault("image", m),
                                       qos_profile_sensor_data)
        info_sub = self.create_subscription(CameraInfo, "camera/color/camera_info",
                                            lambda m: got.setdefault("info", m),
                                            qos_profile_sensor_data)
        deadline = time.monotonic() + timeout_s
        while len(got) < 2 and time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.1)
        self.destroy_subscription(sub)
        self.destroy_subscription(info_sub)
        if "image" not in got:
            return False
        msg = got["image"]
        image = np.array(rc.rgb_from_image(msg))
        with self.lock:
            truth = self.truth.get(rc.stamp_to_ns(msg.header.stamp))
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
