"""Find an open laptop's lid in its depth points and turn the predicted pose about the up axis
to it.

The pose network gets a laptop's up axis right but often not where the hinge runs when the
image border cuts the laptop (shipped network, 200 generated test frames, ground-truth masks:
37 % of the cut laptops more than 10 deg off, against 5 % of the whole ones; the errors are
turns about the up axis, some of 90 or 180 deg). The lid is plain geometry, though: a flat
panel hinged on the base, so the hinge (the NOCS laptop's z axis) lies in the lid's plane and
the lid's normal, flattened onto the base (made perpendicular to the up axis), is the x axis up
to its sign (x runs from the hinge to the typing edge).

Steps, for one laptop:

1. lid points: those higher above the predicted box's bottom than ``above`` times its height
   (the base, keyboard and the table round a spilling mask sit lower);
2. the lid's plane: the plane through three of them that most of them lie within
   ``inlier_m`` of (RANSAC, a fixed number of draws from a seeded generator, so the same
   points give the same pose), refined by a least-squares fit to its inliers; fewer than
   ``min_inlier_fraction`` of the lid points on it, or a lid lying flat (a closed laptop: its
   normal is the up axis and says nothing about the turn), keeps the network's pose;
3. the new x axis: the normal made perpendicular to the up axis, signed to lie within 90 deg
   of the network's x (the network's sign was right for most laptops it turned wrongly;
   taking it from where the base lies was worse on validation frames).

Chosen on 300 generated validation frames (not test; 176 laptops with ground-truth masks, 137
found by the shipped segmenter), laptops within 10 deg and 5 cm: ground-truth masks 83.0 ->
90.3 % (cut by the border 68 -> 82 %, whole 93 -> 96 %), segmenter masks 66.4 -> 70.8 % (what
is left there is the segmenter's masks pulling the centre, not rotation: 89 % within 10 deg).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipose_ros.geometry import rotation_from_y


@dataclass(frozen=True)
class LidSearch:
    """Thresholds of :func:`find_lid` (chosen on validation frames, not test)."""

    # Lid points: above this fraction of the box height over the box's bottom.
    above: float = 0.3
    min_points: int = 40
    inlier_m: float = 0.01  # a lid panel with its screen is about 1 cm thick
    iterations: int = 100
    min_inlier_fraction: float = 0.5
    # The lid normal's part across the up axis must be at least this long (unit normal): a
    # nearly closed laptop's lid lies flat and fixes no turn.
    min_tilt: float = 0.3
    max_points: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class Lid:
    """A laptop lid found in the depth points, with the evidence for it."""

    x_axis: np.ndarray  # unit vector (camera frame): the lid normal across the up axis, signed
    normal: np.ndarray  # unit normal of the lid's plane (camera frame)
    points: int  # lid points on the plane
    inlier_fraction: float  # their share of the lid points
    turn_deg: float  # how far x turns about the up axis from the prediction's to the lid's


def plane_inliers(
    points: np.ndarray, inlier_m: float, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask (M,) of the points within ``inlier_m`` of the plane through three of them
    that the most points lie near (``iterations`` random draws, all scored at once)."""
    picks = rng.integers(0, len(points), size=(iterations, 3))
    a, b, c = points[picks[:, 0]], points[picks[:, 1]], points[picks[:, 2]]
    normals = np.cross(b - a, c - a)
    length = np.linalg.norm(normals, axis=1)
    usable = length > 1e-12  # a point drawn twice, or three on a line, span no plane
    if not usable.any():
        return np.zeros(len(points), dtype=bool)
    normals = normals[usable] / length[usable, None]
    offsets = np.einsum("ij,ij->i", normals, a[usable])
    # (M, draws) distances, summed per coordinate: a BLAS product of this shape runs its
    # thread pool and is ten times slower on a CPU the network keeps busy
    dist = sum(np.outer(points[:, k], normals[:, k]) for k in range(3)) - offsets
    near = np.abs(dist) < inlier_m
    return near[:, int(np.argmax(near.sum(axis=0)))]


def find_lid(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    search: LidSearch | None = None,
) -> Lid | None:
    """The lid of one laptop, or None if no flat, tilted lid is seen.

    ``points`` (M, 3) are the laptop's depth points in the camera frame (metres); ``R``, ``t``,
    ``size`` the predicted pose (NOCS laptop frame: y up, hinge along z, typing edge at +x).
    """
    cfg = search or LidSearch()
    points = np.asarray(points, dtype=np.float64)
    up = np.asarray(R, dtype=np.float64)[:, 1]
    height = (points - np.asarray(t, dtype=np.float64)) @ up
    lid = points[height > (cfg.above - 0.5) * float(size[1])]
    if len(lid) < cfg.min_points:
        return None
    rng = np.random.default_rng(cfg.seed)
    if len(lid) > cfg.max_points:
        lid = lid[np.linspace(0, len(lid) - 1, cfg.max_points).astype(np.int64)]
    on_plane = plane_inliers(lid, cfg.inlier_m, cfg.iterations, rng)
    share = float(on_plane.mean())
    if share < cfg.min_inlier_fraction or on_plane.sum() < cfg.min_points:
        return None
    panel = lid[on_plane]
    # least-squares normal of the inliers: the direction they spread least along
    normal = np.linalg.eigh(np.cov((panel - panel.mean(axis=0)).T))[1][:, 0]
    across = normal - float(normal @ up) * up
    tilt = float(np.linalg.norm(across))
    if tilt < cfg.min_tilt:
        return None
    x_axis = across / tilt
    predicted_x = rotation_from_y(up, R[:, 0])[:, 0]
    if x_axis @ predicted_x < 0.0:
        x_axis = -x_axis
    turn = float(np.degrees(np.arccos(np.clip(x_axis @ predicted_x, -1.0, 1.0))))
    return Lid(x_axis=x_axis, normal=normal, points=int(on_plane.sum()), inlier_fraction=share,
               turn_deg=turn)


def turn_to_lid(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    search: LidSearch | None = None,
) -> tuple[np.ndarray, Lid | None]:
    """``R`` turned about its up axis so that x is the lid's normal across it, and the lid
    found; with none seen ``R`` is returned unchanged. The up axis is kept as predicted."""
    lid = find_lid(points, R, t, size, search)
    if lid is None:
        return R, None
    return rotation_from_y(R[:, 1], lid.x_axis), lid
