"""Image / CameraInfo messages -> numpy and a checked :class:`Frame`, with no ROS import.

The functions read message fields only (``header.stamp.sec``, ``encoding``, ``step``, ``data``,
``k`` ...), so they take rclpy messages in the node and the dataclasses ``rosbags`` deserialises
from a recording in ``clipose-infer`` alike: one set of checks for live topics and bags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipose_ros.structures import Frame

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


class InputError(ValueError):
    """An input message set the node (or clipose-infer) must reject; ``kind`` groups reasons
    (for throttling)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ---------------------------------------------------------------------------- images in


def image_to_array(msg: Any, allowed: Sequence[str]) -> np.ndarray:
    """(H, W[, C]) view of an Image's pixels, after checking everything a bad message breaks."""
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


def rgb_from_image(msg: Any) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an rgb8 or bgr8 Image."""
    arr = image_to_array(msg, RGB_ENCODINGS)
    # A contiguous copy for bgr8: OpenCV and torch refuse or copy negative-stride views anyway.
    return np.ascontiguousarray(arr[:, :, ::-1]) if msg.encoding == "bgr8" else arr


def depth_from_image(msg: Any) -> np.ndarray:
    """Depth in metres (float32, 0 = invalid) from 16UC1/mono16 millimetres or 32FC1 metres."""
    arr = image_to_array(msg, DEPTH_ENCODINGS)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * np.float32(0.001)
    depth = arr.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def intrinsics_from_camera_info(msg: Any) -> np.ndarray:
    """K (3x3) from a CameraInfo, refused when it cannot be a pinhole camera."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
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
    return K


def frame_from_messages(rgb_msg: Any, depth_msg: Any, info_msg: Any) -> Frame:
    """One checked :class:`Frame` from a synchronised RGB / depth / camera_info set.

    Raises :class:`InputError` saying why when sizes, frame ids, encodings, buffers or
    intrinsics disagree, or when the depth image has no valid pixel at all.
    """
    if (rgb_msg.height, rgb_msg.width) != (depth_msg.height, depth_msg.width):
        raise InputError(
            "size", f"RGB is {rgb_msg.width}x{rgb_msg.height} but depth is "
            f"{depth_msg.width}x{depth_msg.height}: depth must be registered to the colour image"
        )
    if rgb_msg.header.frame_id != depth_msg.header.frame_id:
        raise InputError(
            "frame_id", f"RGB frame {rgb_msg.header.frame_id!r} and depth frame "
            f"{depth_msg.header.frame_id!r} differ: use depth aligned to the colour camera"
        )
    if info_msg.width and info_msg.height and (info_msg.height, info_msg.width) != (
        rgb_msg.height, rgb_msg.width
    ):
        raise InputError(
            "size", f"camera_info is for {info_msg.width}x{info_msg.height} images but RGB is "
            f"{rgb_msg.width}x{rgb_msg.height}"
        )
    K = intrinsics_from_camera_info(info_msg)
    rgb = rgb_from_image(rgb_msg)
    depth = depth_from_image(depth_msg)
    if not np.any(depth > 0):
        raise InputError(
            "depth", f"depth ({depth_msg.encoding}) has no valid pixel: all zero or non-finite"
        )
    return Frame(
        rgb=rgb, depth=depth, K=K, stamp_ns=stamp_to_ns(rgb_msg.header.stamp),
        frame_id=rgb_msg.header.frame_id,
    )


