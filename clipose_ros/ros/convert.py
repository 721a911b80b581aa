"""ROS message <-> numpy conversion, and results -> TF / Detection3D / Marker messages.

This is the one small place for what ``cv_bridge``, ``tf2_ros`` and ``message_filters`` would
do: none of them is on PyPI, so on a machine that runs the ROS 2 runtime from wheels they do not
import. When ``tf2_ros`` / ``message_filters`` do import (a sourced ROS 2), the node uses them
(:func:`make_transform_broadcaster`, :func:`make_synchronizer`). Image conversion is always ours:
it is a zero-copy ``np.frombuffer`` view, and the checks that come with it (encoding, step,
buffer length, byte order) name exactly what is wrong with a bad message, which is what the node
logs when it rejects one.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np
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
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import (
    BoundingBox3D,
    Detection3D,
    Detection3DArray,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
)
from visualization_msgs.msg import Marker, MarkerArray

from clipose_ros.categories import CATEGORIES, CLASS_IDS
from clipose_ros.core.boxes import object_box
from clipose_ros.core.structures import Frame, ObjectPose
from clipose_ros.core.visualize import OVERLAY_COLORS

RGB_ENCODINGS = ("rgb8", "bgr8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
# bytes per pixel, numpy dtype, channels
_ENCODINGS = {
    "rgb8": (3, np.uint8, 3),
    "bgr8": (3, np.uint8, 3),
    "16UC1": (2, np.uint16, 1),
    "mono16": (2, np.uint16, 1),
    "32FC1": (4, np.float32, 1),
}
MARKER_BOX, MARKER_AXES, MARKER_LABEL = 0, 1, 2


class InputError(ValueError):
    """An input message set the node must reject. ``kind`` groups reasons for throttling."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# Every ``InputError.kind`` frame_from_messages raises (the node counts each on /diagnostics).
REFUSAL_KINDS = ("encoding", "size", "buffer", "frame_id", "intrinsics", "stamp", "depth",
                 "depth_units")
STREAM_LABELS = {"rgb": "RGB image", "depth": "depth image", "camera_info": "camera_info"}
# Median depth (m) a scene seen by an RGB-D camera can have; outside it the units are wrong.
DEPTH_PLAUSIBLE_M = (0.05, 20.0)
# Valid 16UC1 pixels at 65535 beyond this fraction: the sensor is saturated or codes "no data".
SATURATED_FRACTION = 0.25
DEPTH_SAMPLES = 4096  # pixels the unit check looks at (a regular grid)
# A principal point further than this fraction of the image size outside it is refused.
PRINCIPAL_POINT_MARGIN = 0.1


def describe(stream: str, topics: Mapping[str, str] | None = None, frame_id: str | None = None
             ) -> str:
    """``'depth image on /cam/depth (frame 'x')'``: the words every refusal starts with, so that
    the user knows which stream is broken even when RGB and depth share a frame id."""
    text = STREAM_LABELS.get(stream, stream)
    topic = (topics or {}).get(stream)
    if topic:
        text += f" on {topic}"
    if frame_id:
        text += f" (frame {frame_id!r})"
    return text


# ---------------------------------------------------------------------------- time and frames


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a quaternion (x, y, z, w); normalises it first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def pose_message(R: np.ndarray, t: np.ndarray) -> Pose:
    q = quaternion_from_matrix(R)
    return Pose(
        position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def pose_from_message(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    o, p = pose.orientation, pose.position
    return matrix_from_quaternion([o.x, o.y, o.z, o.w]), np.array([p.x, p.y, p.z])


# ---------------------------------------------------------------------------- images in


def image_to_array(msg: Image, allowed: Sequence[str], name: str | None = None) -> np.ndarray:
    """(H, W[, C]) view of an Image's pixels, after checking everything a bad message breaks.

    ``name`` starts every refusal message (default: the image and its frame id).
    """
    if name is None:
        name = "image" if not msg.header.frame_id else f"image in frame {msg.header.frame_id!r}"
    if msg.encoding not in allowed:
        raise InputError(
            "encoding", f"{name}: encoding {msg.encoding!r} is not supported here "
            f"(accepted: {', '.join(allowed)})"
        )
    bpp, dtype, channels = _ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError("size", f"{name}: empty image {w}x{h}")
    if step < w * bpp:
        raise InputError(
            "buffer", f"{name}: step {step} is smaller than width {w} x {bpp} bytes per pixel"
        )
    if len(msg.data) != step * h:
        raise InputError(
            "buffer", f"{name}: data holds {len(msg.data)} bytes, but step {step} x height {h} "
            f"= {step * h} (truncated or padded message)"
        )
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * bpp]
    arr = raw.view(dtype) if raw.flags.c_contiguous else np.ascontiguousarray(raw).view(dtype)
    if bpp > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        arr = arr.byteswap()
    return arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)


def rgb_from_image(msg: Image, name: str | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an rgb8 or bgr8 Image."""
    arr = image_to_array(msg, RGB_ENCODINGS, name)
    # A contiguous copy for bgr8: OpenCV and torch refuse or copy negative-stride views anyway.
    return np.ascontiguousarray(arr[:, :, ::-1]) if msg.encoding == "bgr8" else arr


def default_depth_scale(encoding: str) -> float:
    """Metres per depth unit the ROS convention gives an encoding (REP 118: 16UC1 mm, 32FC1 m)."""
    return 1.0 if encoding == "32FC1" else 0.001


def _depth_metres(arr: np.ndarray, scale: float) -> np.ndarray:
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * np.float32(scale)
    depth = arr.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    if scale != 1.0:
        depth *= np.float32(scale)
    return depth


def depth_from_image(msg: Image, scale: float = 0.0, name: str | None = None) -> np.ndarray:
    """Depth in metres (float32, 0 = invalid) from 16UC1/mono16 millimetres or 32FC1 metres;
    ``scale`` > 0 replaces the encoding's metres per unit (drivers that break the convention)."""
    arr = image_to_array(msg, DEPTH_ENCODINGS, name)
    return _depth_metres(arr, scale or default_depth_scale(msg.encoding))


def check_depth_units(raw: np.ndarray, encoding: str, scale: float, where: str) -> int:
    """Refuse depth whose median cannot be a scene in metres: wrong units or saturation.

    Looks at a grid of about :data:`DEPTH_SAMPLES` pixels (all valid pixels when the grid
    holds few), so it costs a fraction of a millisecond at 640x480. ``raw`` is in the message's
    own units, ``scale`` the metres per unit in use, ``where`` names the topic. Returns the
    number of valid pixels looked at: 0 when the image has none (the caller refuses that).
    """
    step = max(1, int(np.sqrt(raw.size / DEPTH_SAMPLES)))
    sample = raw[::step, ::step]
    integer = raw.dtype == np.uint16
    valid = sample[sample > 0] if integer else sample[np.isfinite(sample) & (sample > 0)]
    if valid.size < 50:  # sparse depth: the grid misses it
        valid = raw[raw > 0] if integer else raw[np.isfinite(raw) & (raw > 0)]
        if not valid.size:
            return 0
    if integer:
        saturated = np.count_nonzero(valid == 65535) / valid.size
        if saturated > SATURATED_FRACTION:
            raise InputError(
                "depth_units", f"depth on {where} ({encoding}): {100 * saturated:.0f} % of "
                "the valid pixels read 65535, the largest 16-bit value: the sensor is "
                "saturated or the driver codes 'no data' as 65535 (it should publish 0), or its "
                "depth unit is too fine for the range; check the driver's depth units and range "
                "settings"
            )
    median = float(np.median(valid))
    metres = median * scale
    low, high = DEPTH_PLAUSIBLE_M
    if low <= metres <= high:
        return int(valid.size)
    plausible = f"plausible {low:g} .. {high:g} m"
    if metres > high and low <= median * 0.001 <= high:
        hint = ("values look like millimetres; set depth_scale:=0.001 or publish metres"
                if encoding == "32FC1" and scale == 1.0 else
                f"values look like millimetres read with depth_scale {scale:g}; set "
                "depth_scale:=0.001")
    elif metres < low and integer and low <= median <= high:
        hint = (f"raw median {median:g}: values look like metres, but {encoding} depth holds "
                "millimetres (metres in a 16-bit integer lose everything below 1 m); publish "
                "millimetres or 32FC1 metres")
    else:
        hint = f"check the depth units (depth_scale is {scale:g} m per unit here)"
    raise InputError(
        "depth_units", f"depth median {metres:.4g} m on {where} ({encoding}), outside the "
        f"{plausible}: {hint}"
    )


def intrinsics_from_camera_info(
    msg: CameraInfo, width: int | None = None, height: int | None = None,
    where: str | None = None,
) -> np.ndarray:
    """K (3x3) from a CameraInfo, refused when it cannot be a pinhole camera (or, given the
    image size, when its principal point lies far outside that image)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if where is None:
        where = f"camera_info (frame {msg.header.frame_id!r})"
    if not np.all(np.isfinite(K)):
        raise InputError("intrinsics", f"{where}: K has non-finite entries {K.ravel().tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(
            "intrinsics", f"{where}: focal lengths fx={K[0, 0]}, fy={K[1, 1]} must be > 0 "
            "(an uncalibrated camera publishes K = 0)"
        )
    if K[2, 2] != 1.0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0:
        raise InputError("intrinsics", f"{where}: K is not a pinhole matrix: {K.ravel().tolist()}")
    if width and height:
        m = PRINCIPAL_POINT_MARGIN
        cx, cy = K[0, 2], K[1, 2]
        if not (-m * width <= cx <= (1 + m) * width and -m * height <= cy <= (1 + m) * height):
            raise InputError(
                "intrinsics", f"{where}: principal point (cx={cx:g}, cy={cy:g}) lies far outside "
                f"the {width}x{height} image: K belongs to another resolution or is filled in "
                "the wrong order (K is row-major: fx 0 cx 0 fy cy 0 0 1)"
            )
    return K


def frame_from_messages(
    rgb_msg: Image, depth_msg: Image, info_msg: CameraInfo, *, depth_scale: float = 0.0,
    topics: Mapping[str, str] | None = None,
) -> Frame:
    """One checked :class:`Frame` from a synchronised RGB / depth / camera_info set.

    Raises :class:`InputError` saying why, and naming the stream (``topics`` maps rgb, depth,
    camera_info to topic names), when sizes, frame ids, encodings, buffers, stamps or
    intrinsics disagree, when the depth has no valid pixel, or when its median is not a
    plausible distance in metres (:func:`check_depth_units`). ``depth_scale`` > 0 replaces
    the depth encoding's metres per unit.
    """
    rgb_id, depth_id, info_id = (m.header.frame_id for m in (rgb_msg, depth_msg, info_msg))
    rgb_name = describe("rgb", topics, rgb_id)
    depth_name = describe("depth", topics, depth_id)
    info_name = describe("camera_info", topics, info_id)
    for name, frame_id in ((rgb_name, rgb_id), (depth_name, depth_id)):
        if not frame_id.strip():
            raise InputError(
                "frame_id", f"{name}: empty header.frame_id: the poses, TF and markers would "
                "carry frame_id '', which tf2 rejects; set the camera driver's frame id (e.g. "
                "camera_color_optical_frame)"
            )
    if (rgb_msg.height, rgb_msg.width) != (depth_msg.height, depth_msg.width):
        raise InputError(
            "size", f"RGB is {rgb_msg.width}x{rgb_msg.height} but depth is "
            f"{depth_msg.width}x{depth_msg.height}: depth must be registered to the colour image "
            f"({rgb_name}; {depth_name})"
        )
    if rgb_id != depth_id:
        raise InputError(
            "frame_id", f"RGB frame {rgb_id!r} and depth frame {depth_id!r} differ: use depth "
            f"aligned to the colour camera ({describe('rgb', topics)}; "
            f"{describe('depth', topics)})"
        )
    if info_id != rgb_id:
        raise InputError(
            "frame_id", f"{info_name}: frame {info_id!r} differs from the images' frame "
            f"{rgb_id!r}: use the camera_info of the colour camera the depth is aligned to"
        )
    if not info_msg.width or not info_msg.height:
        raise InputError(
            "size", f"{info_name}: width x height is {info_msg.width}x{info_msg.height}: the "
            "driver does not say which resolution K belongs to (fill width and height)"
        )
    if (info_msg.height, info_msg.width) != (rgb_msg.height, rgb_msg.width):
        raise InputError(
            "size", f"camera_info is for {info_msg.width}x{info_msg.height} images but RGB is "
            f"{rgb_msg.width}x{rgb_msg.height} ({info_name}; {rgb_name})"
        )
    stamp_ns = stamp_to_ns(rgb_msg.header.stamp)
    if stamp_ns == 0:
        raise InputError(
            "stamp", f"{rgb_name}: header.stamp is 0 (never set): outputs and TF would carry "
            "stamp 0; make the driver stamp its messages"
        )
    K = intrinsics_from_camera_info(info_msg, rgb_msg.width, rgb_msg.height, info_name)
    rgb = rgb_from_image(rgb_msg, rgb_name)
    raw = image_to_array(depth_msg, DEPTH_ENCODINGS, depth_name)
    scale = depth_scale or default_depth_scale(depth_msg.encoding)
    where = (topics or {}).get("depth") or "the depth topic"
    if not check_depth_units(raw, depth_msg.encoding, scale, where):
        raise InputError(
            "depth", f"depth ({depth_msg.encoding}) has no valid pixel: all zero or non-finite "
            f"({depth_name})"
        )
    depth = _depth_metres(raw, scale)
    return Frame(rgb=rgb, depth=depth, K=K, stamp_ns=stamp_ns, frame_id=rgb_id)


# ---------------------------------------------------------------------------- images out


def image_message(array: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image holding ``array`` (C-contiguous copy when needed) in ``encoding``."""
    bpp, dtype, channels = _ENCODINGS[encoding]
    arr = np.ascontiguousarray(array, dtype=dtype)
    if arr.ndim != (3 if channels > 1 else 2) or (channels > 1 and arr.shape[2] != channels):
        raise ValueError(f"array of shape {arr.shape} does not fit encoding {encoding}")
    h, w = arr.shape[:2]
    return Image(
        header=header, height=h, width=w, encoding=encoding,
        is_bigendian=int(sys.byteorder == "big"), step=w * bpp, data=arr.tobytes(),
    )


def camera_info_message(K: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    """A distortion-free CameraInfo for an ideal pinhole camera K."""
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(
        header=header, width=int(width), height=int(height), distortion_model="plumb_bob",
        d=[0.0] * 5, k=K.ravel().tolist(), r=np.eye(3).ravel().tolist(), p=P.ravel().tolist(),
    )


# ---------------------------------------------------------------------------- results out


def tf_message(header: Header, poses: Sequence[ObjectPose], prefix: str) -> TFMessage:
    """camera frame -> ``<prefix><class>_<id>`` per object (the object frame, not the box)."""
    transforms = []
    for p in poses:
        pose = pose_message(p.R, p.t)
        transforms.append(TransformStamped(
            header=header,
            child_frame_id=f"{prefix}{p.key}",
            transform=Transform(
                translation=Vector3(x=pose.position.x, y=pose.position.y, z=pose.position.z),
                rotation=pose.orientation,
            ),
        ))
    return TFMessage(transforms=transforms)


def detection_array(
    header: Header,
    poses: Sequence[ObjectPose],
    ids: Sequence[str] | None = None,
    boxes: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    covariances: Sequence[np.ndarray] | None = None,
) -> Detection3DArray:
    """One Detection3D per object: category name and detection score, the object frame's pose
    (with its 6 x 6 covariance when given, else zeros: unknown) in the hypothesis, the posed
    box (centre, full size in metres) in ``bbox``, the id in ``id``.

    Ids default to the poses' keys, boxes to :func:`clipose_ros.core.boxes.object_box`.
    """
    detections = []
    for i, p in enumerate(poses):
        centre, size = boxes[i] if boxes is not None else object_box(p)
        with_covariance = PoseWithCovariance(pose=pose_message(p.R, p.t))
        if covariances is not None:
            with_covariance.covariance = np.asarray(covariances[i], dtype=np.float64).reshape(36)
        hypothesis = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=p.class_name, score=float(p.score)),
            pose=with_covariance,
        )
        bbox = BoundingBox3D(
            center=pose_message(p.R, centre),
            size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
        )
        detections.append(Detection3D(
            header=header, results=[hypothesis], bbox=bbox,
            id=ids[i] if ids is not None else p.key,
        ))
    return Detection3DArray(header=header, detections=detections)


def best_hypothesis(det):
    """The detection's highest-scoring ``ObjectHypothesisWithPose`` (None without results): what
    a reader of the array takes as the detection's class, pose and covariance."""
    return max(det.results, key=lambda r: r.hypothesis.score) if det.results else None


def poses_from_detections(msg: Detection3DArray) -> list[ObjectPose]:
    """ObjectPoses back from a Detection3DArray (best hypothesis each; ``key`` = ``id``).

    ``size`` is the bbox size; for mugs that is the tight box (see ``core.boxes.object_box``).
    """
    poses = []
    for det in msg.detections:
        best = best_hypothesis(det)
        if best is None:
            continue
        name = best.hypothesis.class_id
        if name not in CLASS_IDS:
            raise ValueError(f"detection {det.id!r}: unknown class {name!r} (known: {CATEGORIES})")
        R, t = pose_from_message(best.pose.pose)
        s = det.bbox.size
        poses.append(ObjectPose(
            class_id=CLASS_IDS[name], score=float(best.hypothesis.score), R=R, t=t,
            size=np.array([s.x, s.y, s.z]), key=det.id,
        ))
    return poses


def _color(name: str, alpha: float) -> ColorRGBA:
    r, g, b = OVERLAY_COLORS[name]
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def marker_array(
    header: Header, poses: Sequence[ObjectPose], removed: Sequence[str], namespace: str
) -> MarkerArray:
    """Box, axes and label per object (namespace ``<namespace>/<key>``, ids 0..2); DELETE
    markers for the objects whose tracks ended, so nothing stale stays in RViz."""
    markers = []
    for key in removed:
        for marker_id in (MARKER_BOX, MARKER_AXES, MARKER_LABEL):
            markers.append(Marker(
                header=header, ns=f"{namespace}/{key}", id=marker_id, action=Marker.DELETE
            ))
    for p in poses:
        ns = f"{namespace}/{p.key}"
        centre, size = object_box(p)
        box = Marker(header=header, ns=ns, id=MARKER_BOX, type=Marker.CUBE, action=Marker.ADD)
        box.pose = pose_message(p.R, centre)
        box.scale = Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2]))
        box.color = _color(p.class_name, 0.35)
        axes = Marker(header=header, ns=ns, id=MARKER_AXES, type=Marker.LINE_LIST,
                      action=Marker.ADD)
        axes.pose = pose_message(p.R, p.t)
        axes.scale = Vector3(x=0.004, y=0.0, z=0.0)
        axis_len = 0.6 * float(np.max(p.size))
        for k, rgb in enumerate(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))):
            tip = [0.0, 0.0, 0.0]
            tip[k] = axis_len
            axes.points += [Point(), Point(x=tip[0], y=tip[1], z=tip[2])]
            axes.colors += [ColorRGBA(r=rgb[0], g=rgb[1], b=rgb[2], a=1.0)] * 2
        label = Marker(header=header, ns=ns, id=MARKER_LABEL, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD)
        # Above the object in the camera frame (y points down).
        label.pose = Pose(position=Point(
            x=float(centre[0]), y=float(centre[1] - 0.6 * np.max(size) - 0.02),
            z=float(centre[2]),
        ))
        label.pose.orientation.w = 1.0
        label.scale = Vector3(x=0.0, y=0.0, z=0.03)
        label.color = _color(p.class_name, 1.0)
        label.text = f"{p.key} {p.score:.2f}"
        markers += [box, axes, label]
    return MarkerArray(markers=markers)


# ---------------------------------------------------------------------------- tf2_ros stand-in


def make_transform_broadcaster(node) -> Callable[[TFMessage], None]:
    """A function that sends a TFMessage on /tf: tf2_ros's broadcaster when it imports, else a
    publisher with the same QoS (reliable, keep last 100, volatile)."""
    try:
        from tf2_ros import TransformBroadcaster
    except ImportError:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        publisher = node.create_publisher(TFMessage, "/tf", qos)
        return publisher.publish
    broadcaster = TransformBroadcaster(node)
    return lambda msg: broadcaster.sendTransform(list(msg.transforms))


# ---------------------------------------------------------------------------- message_filters


class ApproximateSync:
    """Approximate-time synchronisation of N topics (what message_filters'
    ApproximateTimeSynchronizer does, for machines where it does not import).

    Each topic keeps its newest ``queue_size`` messages. When a message arrives, the other
    queues are searched for the message closest in stamp; if every topic has one within
    ``slop`` seconds of it, the set is emitted and everything up to it is dropped from the
    queues, so a set is emitted at most once and never older than one already emitted.
    """

    def __init__(
        self, n_topics: int, queue_size: int, slop_s: float, callback: Callable[..., None]
    ) -> None:
        if n_topics < 2 or queue_size < 1 or slop_s < 0:
            raise ValueError("ApproximateSync: need >= 2 topics, queue_size >= 1, slop >= 0")
        self.queues: list[deque] = [deque(maxlen=queue_size) for _ in range(n_topics)]
        self.slop_ns = int(slop_s * 1e9)
        self.callback = callback
        self.lock = threading.Lock()

    def add(self, index: int, msg, stamp_ns: int | None = None) -> None:
        """Feed the message of topic ``index`` (stamp from its header unless given)."""
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else stamp_ns
        with self.lock:
            self.queues[index].append((stamp, msg))
            chosen = []
            for j, queue in enumerate(self.queues):
                if j == index:
                    chosen.append((stamp, msg))
                    continue
                best = min(queue, key=lambda item: abs(item[0] - stamp), default=None)
                if best is None or abs(best[0] - stamp) > self.slop_ns:
                    return
                chosen.append(best)
            for queue, (s, _) in zip(self.queues, chosen, strict=True):
                while queue and queue[0][0] <= s:
                    queue.popleft()
        self.callback(*(m for _, m in chosen))


def _event_callbacks(topic: str, on_incompatible: Callable[[str, str], None] | None):
    """Subscription event callbacks that report an incompatible publisher QoS, or None."""
    if on_incompatible is None:
        return None
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:  # Humble
        from rclpy.qos_event import SubscriptionEventCallbacks
    from rclpy.qos import qos_policy_name_from_kind

    def incompatible(info) -> None:
        on_incompatible(topic, qos_policy_name_from_kind(info.last_policy_kind))

    return SubscriptionEventCallbacks(incompatible_qos=incompatible)


def make_synchronizer(
    node, msg_types: Sequence[type], topics: Sequence[str], qos, queue_size: int, slop_s: float,
    callback: Callable[..., None], raw_callbacks: Sequence[Callable[[object], None]] = (),
    on_incompatible: Callable[[str, str], None] | None = None,
):
    """Subscriptions to ``topics`` synchronised by stamp; returns what keeps them alive.

    message_filters' ApproximateTimeSynchronizer when it imports, else :class:`ApproximateSync`.
    ``raw_callbacks[i]`` (optional) also sees every message of topic i as it arrives (the node
    counts input rates with it); ``on_incompatible(topic, policy)`` hears of publishers whose
    QoS cannot reach the subscription (silent otherwise).
    """
    def tap(i: int, feed: Callable[[object], None]) -> Callable[[object], None]:
        def receive(msg) -> None:
            if i < len(raw_callbacks):
                raw_callbacks[i](msg)
            feed(msg)
        return receive

    try:
        import message_filters
    except ImportError:
        sync = ApproximateSync(len(topics), queue_size, slop_s, callback)
        subs = [
            node.create_subscription(t, topic, tap(i, lambda m, i=i: sync.add(i, m)), qos,
                                     event_callbacks=_event_callbacks(topic, on_incompatible))
            for i, (t, topic) in enumerate(zip(msg_types, topics, strict=True))
        ]
        return sync, subs

    def subscriber(t, topic):
        events = _event_callbacks(topic, on_incompatible)
        try:
            return message_filters.Subscriber(node, t, topic, qos_profile=qos,
                                              event_callbacks=events)
        except TypeError:  # older message_filters pass no extra arguments on
            return message_filters.Subscriber(node, t, topic, qos_profile=qos)

    filters = [subscriber(t, topic) for t, topic in zip(msg_types, topics, strict=True)]
    sync = message_filters.ApproximateTimeSynchronizer(filters, queue_size, slop_s)
    sync.registerCallback(callback)
    for i, f in enumerate(filters):
        if i < len(raw_callbacks):
            f.registerCallback(raw_callbacks[i])
    return sync, filters
