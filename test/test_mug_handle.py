"""The mug handle search turns a mug's pose to the handle seen in its depth points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from clipose_ros.categories import CAMERA_INTRINSICS, CLASS_IDS
from clipose_ros.core.estimators import CliposeEstimator
from clipose_ros.core.mug_handle import (
    Handle,
    HandleCalibration,
    HandleSearch,
    find_handle,
    handle_confidence,
    ring_points,
    turn_to_handle,
)
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data import nocs_format as nf
from clipose_ros.data.render import Light, RenderObject, render
from clipose_ros.data.shapes import PART_HANDLE, make_instance
from clipose_ros.geometry import (
    backproject_pixels,
    project,
    rotation_about_axis,
    rotation_angle_deg,
)

K = np.asarray(CAMERA_INTRINSICS, dtype=np.float64)
H, W = 480, 640
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "clipose_pose.pt"


def _tilted(yaw_deg: float, elevation_deg: float = 30.0) -> np.ndarray:
    """Label-frame rotation of an upright mug seen from ``elevation_deg`` above, turned by yaw."""
    upright = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # y up in image
    tilt = rotation_about_axis(np.array([1.0, 0.0, 0.0]), np.radians(elevation_deg))
    return tilt @ upright @ rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.radians(yaw_deg))


def _rendered_mug(index: int, yaw_deg: float, scale: float = 0.22, handle_mask: bool = False):
    """A generated mug rendered alone: (depth, mask, R, t, size, handle pixels), in its label
    frame (body axis at the origin, handle at +x); ``handle_mask``: the handle's pixels (H, W)
    instead of their count."""
    inst = make_instance("mug", "test", index)
    shift, nocs_scale = nf.symmetric_label_frame(inst.mesh.vertices)
    mesh = trimesh.Trimesh(nocs_scale * (inst.mesh.vertices + shift), inst.mesh.faces,
                           process=False)
    R, t = _tilted(yaw_deg), np.array([0.02, 0.03, 0.7])
    colors = np.full((int(inst.part_ids.max()) + 1, 3), 0.6)
    out = render([RenderObject(mesh, R, t, scale, colors, part_ids=inst.part_ids)], K, H, W,
                 Light(direction=np.array([0.3, -0.5, -1.0])))
    mask = out.depth > 0
    size = scale * 2.0 * np.abs(mesh.vertices).max(axis=0)
    handle = (out.part == PART_HANDLE) & mask
    return out.depth, mask, R, t, size, handle if handle_mask else int(handle.sum())


def _points(depth, mask):
    rows, cols = np.nonzero(mask)
    return backproject_pixels(depth, K, rows, cols)


@pytest.mark.parametrize("index", [0, 3, 7])
@pytest.mark.parametrize("yaw", [-120.0, -60.0, 0.0, 180.0])
def test_handle_found_from_a_wrong_yaw_and_an_offset_centre(index, yaw):
    depth, mask, R, t, size, handle_px = _rendered_mug(index, yaw)
    assert handle_px > 100, "the test views are chosen with the handle in sight"
    # The network's typical mug error: up axis nearly right, yaw far off, centre a few mm off.
    wrong = R @ rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.radians(100.0))
    wrong = rotation_about_axis(np.array([0.0, 0.0, 1.0]), np.radians(3.0)) @ wrong
    turned, handle = turn_to_handle(_points(depth, mask), wrong, t + [0.004, -0.002, 0.003],
                                    size * 1.05)
    assert handle is not None
    # the evidence: one compact cluster holds most of the points outside the body
    assert handle.share > 0.5 and handle.spread_deg < 30.0
    # a clean rendered handle: the turn is trusted (at most exp(-3 deg / 0.1 rad) = 0.59)
    assert handle_confidence(handle, 0.1) > 0.4
    np.testing.assert_allclose(turned[:, 0], handle.direction, atol=1e-9)
    assert rotation_angle_deg(turned, R) < 8.0
    np.testing.assert_allclose(turned @ turned.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(turned) == pytest.approx(1.0)
    np.testing.assert_allclose(turned[:, 1], wrong[:, 1] / np.linalg.norm(wrong[:, 1]))


def test_hidden_handle_keeps_the_pose():
    # Handle straight away from the camera, behind the body: no handle points, no change.
    depth, mask, R, t, size, handle_px = _rendered_mug(0, 90.0)
    assert handle_px == 0
    wrong = R @ rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.radians(70.0))
    points = _points(depth, mask)
    assert find_handle(points, wrong, t, size) is None
    turned, handle = turn_to_handle(points, wrong, t, size)
    assert handle is None and turned is wrong
    # Cut the handle out of a view where it shows: the search must say it sees none.
    depth, mask, R, t, size, handle_px = _rendered_mug(0, 0.0)
    assert handle_px > 100
    points = _points(depth, mask)
    q = points - t
    across = np.linalg.norm(q - np.outer(q @ R[:, 1], R[:, 1]), axis=1)
    assert find_handle(points, wrong, t, size) is not None
    assert find_handle(points[across < 0.5 * size[2] * 1.02], wrong, t, size) is None


def test_too_few_or_degenerate_points_give_no_handle():
    R, t, size = np.eye(3), np.zeros(3), np.array([0.12, 0.1, 0.09])
    assert find_handle(np.zeros((3, 3)), R, t, size) is None
    ring = np.array([[0.045 * np.cos(a), 0.0, 0.045 * np.sin(a)]
                     for a in np.linspace(0, 2 * np.pi, 200)])
    assert find_handle(ring, R, t, size) is None  # a bare cylinder has no handle


def test_estimator_turns_only_mugs_and_can_be_switched_off():
    depth, mask, R, t, size, _ = _rendered_mug(3, 0.0)
    frame = Frame(np.zeros((H, W, 3), np.uint8), depth.astype(np.float32), K)
    ys, xs = np.nonzero(mask)
    box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    mug, bowl = (Instance(CLASS_IDS[c], 1.0, mask, box) for c in ("mug", "bowl"))
    on = CliposeEstimator(str(SHIPPED))
    off = CliposeEstimator(str(SHIPPED), mug_handle=False)
    (mug_on, bowl_on), (mug_off, bowl_off) = (e.estimate(frame, [mug, bowl]) for e in (on, off))
    assert on.handle_seen == [True, False] and off.handle_seen == [False, False]
    np.testing.assert_array_equal(bowl_on.R, bowl_off.R)
    np.testing.assert_array_equal(mug_on.t, mug_off.t)
    # The up axis stays the network's; the turn about it points x at the handle.
    np.testing.assert_allclose(mug_on.R[:, 1], mug_off.R[:, 1] / np.linalg.norm(
        mug_off.R[:, 1]), atol=1e-9)
    assert rotation_angle_deg(mug_on.R, R) < 10.0


def test_handle_confidence_falls_with_the_spread_of_the_handle_directions():
    cal = HandleCalibration()
    best = np.exp(-np.radians(cal.right_turn_error_deg) / 0.1)

    def conf(points, spread_deg, scale=0.1):
        return handle_confidence(Handle(np.array([1.0, 0.0, 0.0]), points, 0.8, spread_deg),
                                 scale)

    assert conf(40, 0.01) == pytest.approx(best, rel=1e-6)
    # a spread at the calibration's midpoint: even odds of a right turn
    assert conf(40, cal.spread_mid_deg) == pytest.approx(best / 2)
    assert conf(40, 4.0) > 0.9 * best and conf(40, 20.0) < 0.1 * best
    assert conf(40, 4.0, scale=0.2) > conf(40, 4.0)  # the network's scale carries over


def _wrong_yaw(R: np.ndarray) -> np.ndarray:
    """The network's typical mug error: up axis nearly right, the turn about it far off."""
    wrong = R @ rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.radians(100.0))
    return rotation_about_axis(np.array([0.0, 0.0, 1.0]), np.radians(3.0)) @ wrong


@pytest.mark.parametrize("yaw", [-60.0, 0.0])
def test_handle_cut_off_by_the_mask_is_found_around_it(yaw):
    # A segmenter's mask that stops at the body: the handle's pixels are left out of it.
    depth, mask, R, t, size, handle = _rendered_mug(3, yaw, handle_mask=True)
    assert handle.sum() > 100
    cut = mask & ~handle
    points, wrong = _points(depth, cut), _wrong_yaw(R)
    assert find_handle(points, wrong, t, size) is None  # the mask's points hold no handle
    ring = ring_points(depth, cut, K, t, size)
    assert len(ring) >= handle.sum() * 0.9  # the ring reaches the whole handle ...
    assert not cut[tuple(np.round(project(ring, K)).astype(int).T[::-1])].any()  # ... outside
    turned, found = turn_to_handle(points, wrong, t, size, ring=ring)
    assert found is not None and rotation_angle_deg(turned, R) < 8.0
    # pixels that belong to another object are not the handle
    assert len(ring_points(depth, cut, K, t, size, others=handle)) == len(ring) - handle.sum()
    assert find_handle(points, wrong, t, size, ring=ring_points(
        depth, cut, K, t, size, others=handle)) is None


def test_table_round_the_foot_is_not_a_handle():
    # Handle hidden behind the body; a mask that spills onto the table in front of the foot
    # (a patch of table points at the mug's base, within the handle's reach) and table all
    # round it in the ring: neither may be taken for a handle.
    depth, mask, R, t, size, handle_px = _rendered_mug(0, 90.0)
    assert handle_px == 0
    up, toward = R[:, 1], -t / np.linalg.norm(t)
    toward = toward - (toward @ up) * up
    toward /= np.linalg.norm(toward)
    side = np.cross(up, toward)
    rng = np.random.default_rng(0)
    radius, base = 0.5 * size[2], t - 0.5 * size[1] * up

    def table(n, angles):
        r = rng.uniform(1.2 * radius, 0.5 * size[0] * 1.2, n)
        return base + (r * np.cos(angles))[:, None] * toward + (r * np.sin(angles))[:, None] * side

    spill = table(200, rng.uniform(-0.4, 0.4, 200))
    around = table(2000, rng.uniform(-np.pi, np.pi, 2000))
    points = np.vstack([_points(depth, mask), spill])
    wrong = _wrong_yaw(R)
    assert find_handle(points, wrong, t, size, HandleSearch(band=(-1.1, 1.1))) is not None
    assert find_handle(points, wrong, t, size) is None
    assert find_handle(points, wrong, t, size, ring=around) is None
