"""core/laptop_lid.py: a laptop's pose turns about its up axis to the lid plane seen in its
depth points, also when the image border cuts the laptop; nothing else changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipose_ros.categories import CAMERA_INTRINSICS, CLASS_IDS
from clipose_ros.core.estimators import CliposeEstimator
from clipose_ros.core.laptop_lid import LidSearch, find_lid, plane_inliers, turn_to_lid
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data.render import Light, RenderObject, render
from clipose_ros.data.shapes import make_instance
from clipose_ros.geometry import backproject_pixels, rotation_about_axis, rotation_angle_deg
from clipose_ros.points import cut_sides

K = np.asarray(CAMERA_INTRINSICS, dtype=np.float64)
H, W = 480, 640
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "clipose_pose.pt"
Y = np.array([0.0, 1.0, 0.0])


def _seen_from_above(yaw_deg: float, elevation_deg: float = 35.0) -> np.ndarray:
    """Rotation of an upright laptop seen from ``elevation_deg`` above, turned by ``yaw_deg``."""
    upright = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # y up in image
    tilt = rotation_about_axis(np.array([1.0, 0.0, 0.0]), np.radians(elevation_deg))
    return tilt @ upright @ rotation_about_axis(Y, np.radians(yaw_deg))


def _rendered_laptop(index: int, yaw_deg: float, t=(0.0, 0.05, 0.9)):
    """A generated test laptop rendered alone: (depth, mask, R, t, size), NOCS laptop frame."""
    inst = make_instance("laptop", "test", index)
    R, t = _seen_from_above(yaw_deg), np.asarray(t, dtype=np.float64)
    colors = np.full((int(inst.part_ids.max()) + 1, 3), 0.5)
    out = render([RenderObject(inst.mesh, R, t, inst.scale, colors, part_ids=inst.part_ids)],
                 K, H, W, Light(direction=np.array([0.3, -0.5, -1.0])))
    low, high = inst.mesh.bounds
    return out.depth, out.depth > 0, R, t, inst.scale * (high - low)


def _points(depth, mask):
    rows, cols = np.nonzero(mask)
    return backproject_pixels(depth, K, rows, cols)


def _turned(R: np.ndarray, yaw_deg: float, tilt_deg: float = 2.0) -> np.ndarray:
    """The network's typical laptop error: turned about the up axis, up axis a little off."""
    wrong = R @ rotation_about_axis(Y, np.radians(yaw_deg))
    return rotation_about_axis(np.array([0.0, 0.0, 1.0]), np.radians(tilt_deg)) @ wrong


@pytest.mark.parametrize("index", [0, 4])
@pytest.mark.parametrize("yaw", [-140.0, -50.0, 20.0, 110.0])
@pytest.mark.parametrize("error", [-60.0, 25.0])
def test_the_turn_about_the_up_axis_comes_back(index, yaw, error):
    depth, mask, R, t, size = _rendered_laptop(index, yaw)
    wrong = _turned(R, error)
    # centre and size a little off, as predicted
    turned, lid = turn_to_lid(_points(depth, mask), wrong, t + [0.01, -0.005, 0.01], size * 1.05)
    assert lid is not None and lid.inlier_fraction > 0.5
    # the up axis stays the prediction's; the turn about it is the lid's, to a few degrees
    np.testing.assert_allclose(turned[:, 1], wrong[:, 1], atol=1e-9)
    assert rotation_angle_deg(turned, R) < 5.0 < rotation_angle_deg(wrong, R)
    assert np.linalg.det(turned) == pytest.approx(1.0)
    np.testing.assert_allclose(turned.T @ turned, np.eye(3), atol=1e-9)


def test_a_laptop_the_image_border_cuts_is_turned_from_what_is_in_view():
    depth, mask, R, t, size = _rendered_laptop(2, 60.0, t=(0.3, 0.05, 0.75))
    assert cut_sides(mask)[1], "the laptop's right part is outside the image"
    wrong = _turned(R, 40.0)
    turned, lid = turn_to_lid(_points(depth, mask), wrong, t, size)
    assert lid is not None
    assert rotation_angle_deg(turned, R) < 5.0


def test_no_lid_keeps_the_pose():
    R, t, size = np.eye(3), np.zeros(3), np.array([0.3, 0.2, 0.3])
    rng = np.random.default_rng(0)
    # too few points above the base
    assert find_lid(rng.normal(size=(10, 3)) * 0.05, R, t, size) is None
    # a closed laptop: its top is a plane across the up axis, which fixes no turn
    closed = np.column_stack([rng.uniform(-0.15, 0.15, 3000), np.full(3000, 0.05),
                              rng.uniform(-0.15, 0.15, 3000)])
    assert find_lid(closed, R, t, size) is None
    # no plane at all above the base: a scattered blob
    blob = rng.uniform(-0.15, 0.15, size=(3000, 3)) + [0.0, 0.05, 0.0]
    assert find_lid(blob, R, t, size) is None
    turned, lid = turn_to_lid(blob, R, t, size)
    assert lid is None and turned is R


def test_plane_inliers_finds_the_plane_among_outliers():
    rng = np.random.default_rng(1)
    plane = np.column_stack([rng.uniform(-1, 1, 600), rng.uniform(-1, 1, 600),
                             rng.normal(0, 0.002, 600)])
    outliers = rng.uniform(-1, 1, size=(400, 3))
    points = np.concatenate([plane, outliers])
    on = plane_inliers(points, 0.01, 100, np.random.default_rng(0))
    assert on[:600].mean() > 0.97 and on[600:].mean() < 0.05
    # the same points and seed give the same answer (the node's poses do not flicker)
    search = LidSearch()
    tilted = points @ rotation_about_axis(np.array([1.0, 0.0, 0.0]), np.radians(60.0)).T
    first = find_lid(tilted + [0, 0.2, 0], np.eye(3), np.zeros(3), np.array([1, 0.4, 1]), search)
    again = find_lid(tilted + [0, 0.2, 0], np.eye(3), np.zeros(3), np.array([1, 0.4, 1]), search)
    assert first is not None and np.array_equal(first.x_axis, again.x_axis)


def test_the_estimator_turns_only_laptops_and_can_be_switched_off():
    depth, mask, R, t, size = _rendered_laptop(1, 60.0, t=(0.3, 0.05, 0.75))
    frame = Frame(np.zeros((H, W, 3), np.uint8), depth.astype(np.float32), K)
    ys, xs = np.nonzero(mask)
    box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    laptop, camera = (Instance(CLASS_IDS[c], 1.0, mask, box) for c in ("laptop", "camera"))
    # the box fits follow the rotation: off here, so that the centres compare
    on = CliposeEstimator(str(SHIPPED), border_fit=False, box_fit=False)
    off = CliposeEstimator(str(SHIPPED), border_fit=False, box_fit=False, laptop_lid=False)
    (lap_on, cam_on), (lap_off, cam_off) = (e.estimate(frame, [laptop, camera]) for e in (on, off))
    assert on.lids[0] is not None and on.lids[1] is None and off.lids == [None, None]
    np.testing.assert_array_equal(cam_on.R, cam_off.R)
    np.testing.assert_array_equal(lap_on.t, lap_off.t)
    np.testing.assert_allclose(lap_on.R[:, 1], lap_off.R[:, 1] / np.linalg.norm(
        lap_off.R[:, 1]), atol=1e-9)
    assert rotation_angle_deg(lap_on.R, R) < 10.0
