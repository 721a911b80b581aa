"""The ROS 2 runtime, the generated interfaces and the DDS harness work across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from dds_peer import build_messages
from rclpy.qos import QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray


def assert_same_message(received, expected, path: str = "msg") -> None:
    """Recursive field-by-field equality, naming the first field that differs."""
    fields = getattr(expected, "get_fields_and_field_types", None)
    if fields is None:
        if isinstance(expected, list | tuple | np.ndarray) and not isinstance(expected, str):
            assert len(received) == len(expected), f"{path}: length differs"
            for i, (r, e) in enumerate(zip(received, expected, strict=True)):
                assert_same_message(r, e, f"{path}[{i}]")
        else:
            assert received == expected, f"{path}: {received!r} != {expected!r}"
        return
    assert type(received).__name__ == type(expected).__name__, f"{path}: type differs"
    for name in fields():
        assert_same_message(getattr(received, name), getattr(expected, name), f"{path}.{name}")


def test_detections_and_tf_round_trip_between_processes():
    peer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("dds_peer.py")), "40"],
        env=dict(os.environ),
    )
    rclpy.init()
    node = rclpy.create_node("dds_round_trip_listener")
    got: dict[str, object] = {}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(
        Detection3DArray, "detections", lambda m: got.setdefault("det", m), qos
    )
    node.create_subscription(TFMessage, "/tf", lambda m: got.setdefault("tf", m), qos)
    try:
        deadline = time.monotonic() + 40
        while len(got) < 2 and time.monotonic() < deadline and peer.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        peer.terminate()
        peer.wait(timeout=10)
        node.destroy_node()
        rclpy.shutdown()
    assert set(got) == {"det", "tf"}, f"received only {sorted(got)} from the peer process"
    expected_det, expected_tf = build_messages()
    assert_same_message(got["det"], expected_det, "Detection3DArray")
    assert_same_message(got["tf"], expected_tf, "TFMessage")
    # The checks above compare against values that are not defaults, so a dropped field fails.
    assert got["det"].detections[1].results[0].pose.covariance[35] == pytest.approx(0.072)
