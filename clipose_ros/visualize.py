"""Pose overlays for people: posed 3D boxes and object axes drawn on the RGB image.

Used by ``clipose-eval --vis`` and meant for the node's debug image.
"""

from __future__ import annotations

import cv2
import numpy as np

from clipose_ros.geometry import box_corners, project

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
