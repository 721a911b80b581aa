"""Pose overlays land where the posed box projects."""

from __future__ import annotations

import numpy as np

from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.core.visualize import draw_pose
from clipose_ros.geometry import box_corners, project, rotation_about_axis


def test_box_edges_are_drawn_at_the_projected_corners_only():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), 0.4)
    t, size = np.array([0.05, -0.02, 0.8]), np.array([0.15, 0.09, 0.11])
    draw_pose(image, CAMERA_INTRINSICS, R, t, size, (255, 128, 0), axes=False)
    uv = np.round(project(box_corners(size) @ R.T + t, CAMERA_INTRINSICS)).astype(int)
    for u, v in uv:
        assert image[v, u].any(), f"corner ({u}, {v}) not drawn"
    drawn = np.argwhere(image.any(axis=2))
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    assert np.all(drawn[:, 1] >= lo[0] - 2) and np.all(drawn[:, 1] <= hi[0] + 2)
    assert np.all(drawn[:, 0] >= lo[1] - 2) and np.all(drawn[:, 0] <= hi[1] + 2)
    assert image[240, 0].sum() == 0  # far from the box: untouched


def test_box_behind_the_camera_draws_nothing():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    draw_pose(image, CAMERA_INTRINSICS, np.eye(3), np.array([0, 0, -0.5]), np.ones(3) * 0.1,
              (255, 255, 255))
    assert not image.any()
