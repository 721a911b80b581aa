"""Pose overlays for people: posed 3D boxes, object axes and labels drawn on the RGB image.

One colour per category (:data:`OVERLAY_COLORS`), shared by the node's debug image and markers
(``ros/convert.py``), ``clipose-infer`` and the demo. :func:`draw_overlay` is the node's debug
image; :func:`draw_pose` one box (``clipose-eval --vis``, ground truth in the demo).
"""

from __future__ import annotations

import cv2
import numpy as np

from clipose_ros.core.boxes import object_box
from clipose_ros.core.structures import ObjectPose
from clipose_ros.geometry import box_corners, project

# One colour per category (RGB, 0..1): markers, debug image and demo overlays share them.
OVERLAY_COLORS = {
    "bottle": (0.12, 0.47, 0.71),
    "bowl": (1.0, 0.5, 0.05),
    "camera": (0.17, 0.63, 0.17),
    "can": (0.84, 0.15, 0.16),
    "laptop": (0.58, 0.4, 0.74),
    "mug": (0.89, 0.47, 0.76),
}

# Box edges as corner index pairs for geometry.box_corners' order (x slowest, z fastest).
BOX_EDGES = (
    (0, 1), (2, 3), (4, 5), (6, 7),  # along z
    (0, 2), (1, 3), (4, 6), (5, 7),  # along y
    (0, 4), (1, 5), (2, 6), (3, 7),  # along x
)
AXIS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # x red, y green, z blue (RGB)


def draw_pose(
    rgb: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    color: tuple[int, int, int],
    label: str = "",
    axes: bool = True,
) -> np.ndarray:
    """Draw the posed metric box (and the object axes) in place on an RGB uint8 image.

    Nothing is drawn for a box with a corner behind the camera (z <= 1 cm).
    """
    corners = box_corners(size) @ np.asarray(R).T + t
    if np.any(corners[:, 2] <= 0.01):
        return rgb
    uv = np.round(project(corners, K)).astype(np.int32)
    for a, b in BOX_EDGES:
        cv2.line(rgb, tuple(map(int, uv[a])), tuple(map(int, uv[b])), color, 2, cv2.LINE_AA)
    if axes:
        origin = np.round(project(np.asarray(t)[None], K)[0]).astype(np.int32)
        for axis in range(3):
            tip_3d = t + np.asarray(R)[:, axis] * 0.5 * float(np.asarray(size)[axis])
            tip = np.round(project(tip_3d[None], K)[0]).astype(np.int32)
            cv2.line(rgb, tuple(map(int, origin)), tuple(map(int, tip)), AXIS_COLORS[axis], 2,
                     cv2.LINE_AA)
    if label:
        top = uv[np.argmin(uv[:, 1])]
        cv2.putText(rgb, label, (int(top[0]), max(int(top[1]) - 5, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return rgb


def draw_overlay(rgb: np.ndarray, K: np.ndarray, poses: list[ObjectPose]) -> np.ndarray:
    """A copy of ``rgb`` with each object's tight box (:func:`~clipose_ros.core.boxes.object_box`),
    axes (at the object origin) and label ``<key> <score>`` drawn in its category's colour."""
    image = np.ascontiguousarray(rgb).copy()
    for p in poses:
        centre, size = object_box(p)
        color = tuple(int(255 * c) for c in OVERLAY_COLORS[p.class_name])
        label = f"{p.key or p.class_name} {p.score:.2f}"
        draw_pose(image, K, p.R, centre, size, color, label, axes=False)
        t = np.asarray(p.t, dtype=np.float64)
        if t[2] <= 0.01:
            continue
        tips = t + (np.asarray(p.R) * (0.5 * float(np.max(p.size)))).T
        if np.any(tips[:, 2] <= 0.01):
            continue
        uv = np.round(project(np.vstack([t, tips]), K)).astype(np.int32)
        for axis in range(3):
            cv2.line(image, tuple(map(int, uv[0])), tuple(map(int, uv[axis + 1])),
                     AXIS_COLORS[axis], 2, cv2.LINE_AA)
    return image
