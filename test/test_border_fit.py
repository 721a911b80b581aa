"""core/border_fit.py: a box whose object the image border cuts slides back to where the
visible far end says it is; nothing else moves."""

from __future__ import annotations

import numpy as np
import pytest

from clipose_ros.core.border_fit import fit_to_far_side
from clipose_ros.geometry import rotation_about_axis
from clipose_ros.points import cut_sides

K = np.array([[577.5, 0.0, 319.5], [0.0, 577.5, 239.5], [0.0, 0.0, 1.0]])
H, W = 480, 640


def _visible_box_points(R, t, size, n=40_000, seed=0):
    """Points on the box's faces that project inside the image (no self-occlusion model: the
    far-end face is what matters here), the mask they cover and their depth image (nearest
    point per pixel, 0 elsewhere)."""
    rng = np.random.default_rng(seed)
    local = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, size=n)
    local[np.arange(n), face] = np.sign(local[np.arange(n), face]) * 0.5
    points = (local * size) @ R.T + t
    uvw = points @ K.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    rows, cols = v[inside].astype(int), u[inside].astype(int)
    mask = np.zeros((H, W), dtype=bool)
    mask[rows, cols] = True
    depth = np.full((H, W), np.inf, dtype=np.float32)
    np.minimum.at(depth, (rows, cols), points[inside, 2].astype(np.float32))
    depth[~mask] = 0.0
    return points[inside], mask, depth


@pytest.fixture(scope="module")
def laptop_cut_on_the_right():
    R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.radians(25.0))
    size = np.array([0.30, 0.20, 0.34])
    t = np.array([0.42, 0.05, 0.9])  # its right part is beyond the image's right border
    points, mask, _ = _visible_box_points(R, t, size)
    return R, t, size, points, mask


def test_cut_sides_reads_the_mask_at_the_borders(laptop_cut_on_the_right):
    *_, mask = laptop_cut_on_the_right
    assert cut_sides(mask).tolist() == [False, True, False, False]
    inner = np.zeros((H, W), dtype=bool)
    inner[100:200, 50:638] = True  # last column 637, 2 px short of 639: a segmenter's mask
    assert cut_sides(inner).tolist() == [False, True, False, False]
    assert cut_sides(inner, margin_px=1).tolist() == [False, False, False, False]
    assert not cut_sides(np.zeros((H, W), dtype=bool)).any()


def test_a_box_centred_on_the_visible_part_moves_back_to_the_object(laptop_cut_on_the_right):
    R, t_true, size, points, mask = laptop_cut_on_the_right
    pulled = t_true - np.array([0.07, 0.0, 0.0])  # 7 cm towards the part in view
    fitted = fit_to_far_side(points, R, pulled, size, cut_sides(mask))
    # It moves along the box axis nearest the far side (here the object's x, 25 deg off the
    # image's), so the part of the miss along that axis goes and the rest stays.
    moved = fitted - pulled
    axis = R[:, 0]
    assert abs(abs(moved @ axis) - np.linalg.norm(moved)) < 1e-9
    assert abs((fitted - t_true) @ axis) < 0.005
    assert np.linalg.norm(fitted - t_true) < 0.5 * np.linalg.norm(pulled - t_true)
    assert fitted[0] > pulled[0]  # towards the cut (right) side


def test_nothing_moves_without_a_cut_or_when_the_far_end_is_reached(laptop_cut_on_the_right):
    R, t_true, size, points, mask = laptop_cut_on_the_right
    uncut = np.zeros(4, dtype=bool)
    pulled = t_true - np.array([0.07, 0.0, 0.0])
    assert np.array_equal(fit_to_far_side(points, R, pulled, size, uncut), pulled)
    # The right pose: the far face is reached already (up to the point sampling).
    refit = fit_to_far_side(points, R, t_true, size, cut_sides(mask))
    assert np.linalg.norm(refit - t_true) < 0.003
    # Beyond the truth towards the cut: never pushed further, never pulled back.
    pushed = t_true + np.array([0.05, 0.0, 0.0])
    assert np.array_equal(fit_to_far_side(points, R, pushed, size, cut_sides(mask)), pushed)
    # Cut on the left and the right only: no far side to go by.
    both = np.array([True, True, False, False])
    assert np.array_equal(fit_to_far_side(points, R, pulled, size, both), pulled)


def test_a_bottom_cut_moves_the_box_down(laptop_cut_on_the_right):
    R, _, size, *_ = laptop_cut_on_the_right
    t_true = np.array([0.0, 0.33, 0.8])  # the lower part below the image
    points, mask, _ = _visible_box_points(R, t_true, size, seed=1)
    assert cut_sides(mask).tolist() == [False, False, False, True]
    pulled = t_true - np.array([0.0, 0.06, 0.0])
    fitted = fit_to_far_side(points, R, pulled, size, cut_sides(mask))
    assert np.linalg.norm(fitted - t_true) < 0.01 and fitted[1] > pulled[1]


def test_the_estimator_moves_only_the_centre_and_only_of_cut_objects(laptop_cut_on_the_right):
    """The shipped estimator on a depth image of the box: with ``border_fit`` the cut object's
    centre may move (towards the cut), rotation and size never; an object in full view and
    ``border_fit=False`` leave the network's pose."""
    from pathlib import Path

    from clipose_ros.categories import CLASS_IDS
    from clipose_ros.core.estimators import CliposeEstimator
    from clipose_ros.core.structures import Frame, Instance

    R, t, size, *_ = laptop_cut_on_the_right
    model = Path(__file__).resolve().parents[1] / "models" / "clipose_pose.pt"
    frames = []
    for centre in (t, t - np.array([0.3, 0.0, 0.0])):  # cut on the right; in full view
        _, mask, depth = _visible_box_points(R, centre, size)
        ys, xs = np.nonzero(mask)
        inst = Instance(CLASS_IDS["laptop"], 1.0, mask, np.array([ys.min(), xs.min(), ys.max(),
                                                                  xs.max()]))
        frames.append((Frame(np.zeros((H, W, 3), np.uint8), depth, K), inst))
    on = CliposeEstimator(str(model), border_fit=True)
    off = CliposeEstimator(str(model), border_fit=False)
    for (frame, inst), cut in zip(frames, (True, False), strict=True):
        (a,), (b,) = on.estimate(frame, [inst]), off.estimate(frame, [inst])
        assert off.border_moved == [0.0]
        assert np.allclose(a.R, b.R) and np.allclose(a.size, b.size)
        assert on.border_moved[0] == pytest.approx(np.linalg.norm(a.t - b.t))
        if cut:
            assert a.t[0] >= b.t[0]  # never away from the cut (right)
        else:
            assert on.border_moved == [0.0] and np.array_equal(a.t, b.t)
