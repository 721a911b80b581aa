"""The publishing side of test_ros_runtime.py, run as its own process.

``build_messages`` is shared with the test so both sides agree on the expected content.
"""

from __future__ import annotations

import sys
import time


def build_messages():
    """A Detection3DArray and a TFMessage with a distinct, non-default value in every field."""
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import (
        Point,
        Pose,
        PoseWithCovariance,
        Quaternion,
        Transform,
        TransformStamped,
        Vector3,
    )
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import (
        BoundingBox3D,
        Detection3D,
        Detection3DArray,
        ObjectHypothesis,
        ObjectHypothesisWithPose,
    )

    stamp = Time(sec=1700000123, nanosec=456789)
    header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
    detections = []
    for i, name in enumerate(["mug", "laptop"]):
        q = Quaternion(x=0.1 * (i + 1), y=-0.2, z=0.3, w=0.9273618495495704)
        pose = Pose(position=Point(x=0.11 + i, y=-0.22, z=0.83), orientation=q)
        covariance = [0.001 * (k + 1) * (i + 1) for k in range(36)]
        hyp = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=name, score=0.875 - 0.25 * i),
            pose=PoseWithCovariance(pose=pose, covariance=covariance),
        )
        bbox = BoundingBox3D(center=pose, size=Vector3(x=0.146 + i, y=0.083, z=0.114))
        detections.append(
            Detection3D(header=header, results=[hyp], bbox=bbox, id=f"{name}_{i + 7}")
        )
    array = Detection3DArray(header=header, detections=detections)
    tf = TFMessage(
        transforms=[
            TransformStamped(
                header=header,
                child_frame_id=f"clipose/{d.id}",
                transform=Transform(
                    translation=Vector3(
                        x=d.bbox.center.position.x,
                        y=d.bbox.center.position.y,
                        z=d.bbox.center.position.z,
                    ),
                    rotation=d.bbox.center.orientation,
                ),
            )
            for d in detections
        ]
    )
    return array, tf


def main(duration_s: float) -> None:
    """Publish both messages at 20 Hz for ``duration_s`` (the test kills us when satisfied)."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    rclpy.init()
    node = rclpy.create_node("dds_peer_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    tf_qos = QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
    )
    det_pub = node.create_publisher(Detection3DArray, "detections", qos)
    tf_pub = node.create_publisher(TFMessage, "/tf", tf_qos)
    array, tf = build_messages()
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        det_pub.publish(array)
        tf_pub.publish(tf)
        time.sleep(0.05)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
