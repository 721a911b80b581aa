"""Find a mug's handle in its depth points and turn the predicted pose about the up axis to it.

The pose network gets a mug's up axis right (within 10 deg for 96 % of the test mugs) but not
where the handle points (19 % within 10 deg; models/clipose_pose.md). The handle is plain
geometry, though: with the up axis and the centre from the network, the body is a circle in
the plane across the axis and the handle is the cluster of points that stick out beyond it.

Steps, for one mug (labels put ``t`` on the body axis, so ``size[2] / 2`` is the body radius and
``size[0] / 2`` the handle's reach):

1. project the points onto the plane across the predicted up axis ``R[:, 1]``, about ``t``;
2. re-centre: fit a circle (centre and radius, least squares on the points near the body
   surface, a few Gauss-Newton steps), since a centre a few millimetres off makes one side of
   the body look like a handle; an implausible fit keeps the network's centre;
3. handle points: farther than ``radius_ratio`` times the predicted body radius from the
   fitted centre, within the handle's reach and a height band that leaves out the mug's foot
   (a mask that spills onto the table puts a ring of points there), taken from the mask's
   points and from those in a band of pixels around the mask (:func:`ring_points`; a
   segmenter's mask often stops short of the handle, and structured-light depth can sit a
   few pixels beside the colour image);
4. their directions: the densest cone of ± ``cluster_deg`` must hold ``min_share`` of them and at
   least ``min_points``; its mean direction is the new x axis. Otherwise the pose is kept (no
   handle seen: the handle is hidden, a hole in the depth, or the points are too few).

Measured on held-out generated frames (shipped network, 59 validation mugs with a visible
handle): x axis within 10 deg for 78 % instead of 19 % (README, "Pose network"). The height
band and the ring (2026-12-05; 300 validation frames, visible-handle mugs within 10 deg and
5 cm): segmenter masks 40 -> 80 %, ground-truth masks 69 -> 82 %.

How far to trust a handle found (:func:`handle_confidence`): either the cone holds the handle
and the turn is right to a few degrees, or it holds something else (a piece of the body the
circle fit left over, the rim, stray depth) and the turn is off by tens of degrees. What tells
them apart is how tightly the cone's directions gather: a handle is a narrow bar, what is
mistaken for one is spread along the rim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipose_ros.geometry import backproject_pixels, rotation_from_y, valid_depth_pixels


@dataclass(frozen=True)
class HandleSearch:
    """Thresholds of :func:`find_handle` (chosen on validation frames, not test)."""

    radius_ratio: float = 1.1
    reach_margin: float = 1.3
    # Heights of handle points from the mask, in half heights of the mug about its centre: the
    # lowest quarter is left out (a mask that spills onto the table adds points round the foot).
    band: tuple[float, float] = (-0.5, 1.1)
    min_points: int = 10
    min_share: float = 0.5
    cluster_deg: float = 30.0
    fit_steps: int = 6
    max_points: int = 4096
    # Points around the mask (``ring_points``): a segmenter's mask often stops short of a thin
    # handle. They count only within the handle's height band (``ring_band``: from, to, in
    # half heights of the mug about its centre), which leaves out the table round its foot.
    ring: bool = True
    ring_band: tuple[float, float] = (-0.3, 0.8)


@dataclass(frozen=True)
class HandleCalibration:
    """How the spread of a handle's directions maps to the chance that the turn to it is right
    (within 10 deg): ``1 / (1 + (spread / spread_mid_deg) ** slope)``, and the turn error when
    it is. Fitted by ``scripts/fit_handle_confidence.py`` (refit it for a new pose file or a
    new search) on 119 generated validation mugs with a visible handle and a handle found
    (``synth_val2``, seed 11: none of the training or test scenes; the shipped pose file of
    2026-12-04 20:20, the search with its height band and ring of 2026-12-05): predicted
    above 0.9, 98 % were right; below 0.5, none. Right turns are off by a median 2.8 deg."""

    spread_mid_deg: float = 11.3
    slope: float = 4.2
    right_turn_error_deg: float = 2.8

    def right_turn_chance(self, spread_deg: np.ndarray | float) -> np.ndarray | float:
        """The chance that the turn to a handle of this spread (degrees) is right."""
        return 1.0 / (1.0 + (np.asarray(spread_deg) / self.spread_mid_deg) ** self.slope)


def _fit_circle(p2: np.ndarray, radius: float, steps: int) -> tuple[np.ndarray, float]:
    """Centre and radius of the circle through the 2D points near ``radius`` about the origin.

    Points far off the current circle (the handle, stray depth) are left out of each step.
    Returns the origin and ``radius`` when the fit runs away (partial arcs can be ill-posed).
    """
    centre, r = np.zeros(2), radius
    for _ in range(steps):
        offset = p2 - centre
        dist = np.linalg.norm(offset, axis=1) + 1e-12
        residual = dist - r
        near = np.abs(residual) < max(0.15 * radius, 3.0 * float(np.median(np.abs(residual))))
        if near.sum() < 3:
            break
        jac = np.concatenate([-offset[near] / dist[near, None], -np.ones((near.sum(), 1))], 1)
        step = np.linalg.lstsq(jac.T @ jac, -jac.T @ residual[near], rcond=None)[0]
        centre, r = centre + step[:2], r + step[2]
    if not np.all(np.isfinite(centre)) or np.linalg.norm(centre) > 0.5 * radius or not (
        0.5 * radius < r < 1.5 * radius
    ):
        return np.zeros(2), radius
    return centre, float(r)


@dataclass(frozen=True)
class Handle:
    """A handle found in a mug's depth points, with the evidence for it."""

    direction: np.ndarray  # unit vector (camera frame) from the body axis to the handle
    points: int  # points in the handle's cone
    share: float  # their share of the points outside the body
    spread_deg: float  # circular standard deviation of their directions about the axis


def find_handle(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    search: HandleSearch | None = None,
    ring: np.ndarray | None = None,
) -> Handle | None:
    """The handle of one mug, or None if none is seen.

    ``points`` (M, 3) are the mug's depth points in the camera frame (metres); ``R``, ``t``,
    ``size`` the predicted pose (the direction is perpendicular to ``R[:, 1]``). ``ring``
    (K, 3): depth points just outside the mask (:func:`ring_points`), used as handle
    candidates only, within the narrower height band.
    """
    cfg = search or HandleSearch()
    points = _thin(np.asarray(points, dtype=np.float64), cfg.max_points)
    if len(points) < cfg.min_points:
        return None
    n_mask = len(points)
    if ring is not None and len(ring):
        points = np.concatenate([points, _thin(np.asarray(ring, np.float64), cfg.max_points)])
    across, up, depth_axis = rotation_from_y(R[:, 1], R[:, 0]).T
    rel = points - np.asarray(t, dtype=np.float64)
    height = rel @ up
    p2 = np.stack([rel @ across, rel @ depth_axis], axis=1)
    body_radius = 0.5 * float(size[2])
    centre, _ = _fit_circle(p2[:n_mask], body_radius, cfg.fit_steps)
    offset = p2 - centre
    dist = np.linalg.norm(offset, axis=1)
    half_height = 0.5 * float(size[1])
    low = np.full(len(points), cfg.band[0])
    high = np.full(len(points), cfg.band[1])
    low[n_mask:], high[n_mask:] = cfg.ring_band
    in_band = (height > low * half_height) & (height < high * half_height)
    out = (
        (dist > cfg.radius_ratio * body_radius)
        & (dist < 0.5 * float(size[0]) * cfg.reach_margin)
        & in_band
    )
    if out.sum() < cfg.min_points:
        return None
    angle = np.arctan2(offset[out, 1], offset[out, 0])
    densest = _densest_cone(angle, np.radians(cfg.cluster_deg))
    if densest.sum() < cfg.min_points or densest.mean() < cfg.min_share:
        return None
    mean = np.array([np.cos(angle[densest]).mean(), np.sin(angle[densest]).mean()])
    resultant = float(np.linalg.norm(mean))  # 1 for a single direction, less for a spread
    mean /= resultant
    return Handle(
        direction=mean[0] * across + mean[1] * depth_axis,
        points=int(densest.sum()),
        share=float(densest.mean()),
        spread_deg=float(np.degrees(np.sqrt(-2.0 * np.log(min(resultant, 1.0))))),
    )


def _thin(points: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of the points, evenly spread over their order."""
    if len(points) <= most:
        return points
    return points[np.linspace(0, len(points) - 1, most).astype(np.int64)]


def ring_points(
    depth: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    search: HandleSearch | None = None,
    others: np.ndarray | None = None,
) -> np.ndarray:
    """Camera-frame depth points (K, 3) in a band around ``mask`` as wide as the handle can
    reach beyond the body at the mug's distance: where a handle cut off by the segmenter is.
    Pixels in ``others`` (the objects' masks; this mug's own may be among them) are left out;
    far background fails :func:`find_handle`'s 3D tests."""
    import cv2

    cfg = search or HandleSearch()
    z = float(t[2])
    reach_m = 0.5 * float(size[0]) * cfg.reach_margin - 0.5 * float(size[2])
    if not np.isfinite(z) or z <= 0 or reach_m <= 0:
        return np.zeros((0, 3))
    width = int(np.ceil(max(K[0, 0], K[1, 1]) * reach_m / z)) + 2
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros((0, 3))
    top, left = max(rows.min() - width, 0), max(cols.min() - width, 0)
    bottom = min(rows.max() + width + 1, mask.shape[0])
    right = min(cols.max() + width + 1, mask.shape[1])
    outside = ~mask[top:bottom, left:right].astype(bool)
    # distance of each pixel to the mask: linear time whatever the width (a dilation is not)
    distance = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    band = outside & (distance <= width)
    if others is not None:
        band &= ~others[top:bottom, left:right].astype(bool)
    sub = depth[top:bottom, left:right]
    r, c = valid_depth_pixels(sub, band)
    return backproject_pixels(depth, K, r + top, c + left) if len(r) else np.zeros((0, 3))


def _densest_cone(angle: np.ndarray, half_width: float, bins: int = 180) -> np.ndarray:
    """Which of the angles (radians) lie within ``half_width`` of the direction that has the
    most of them within ``half_width`` (a circular window over a fine histogram: linear time)."""
    counts = np.bincount(((angle + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins,
                         minlength=bins)
    reach = int(round(half_width / (2 * np.pi) * bins))
    window = np.convolve(np.concatenate([counts[-reach:], counts, counts[:reach]]),
                         np.ones(2 * reach + 1, dtype=np.int64), mode="valid")
    centre = (np.argmax(window) + 0.5) / bins * 2 * np.pi - np.pi
    # The first best window can sit at the edge of a narrow cluster: centre it on its points.
    inside = np.abs(np.angle(np.exp(1j * (angle - centre)))) <= half_width
    centre = np.angle(np.exp(1j * angle[inside]).sum())
    return np.abs(np.angle(np.exp(1j * (angle - centre)))) <= half_width


def handle_confidence(
    handle: Handle, conf_scale_rad: float, calibration: HandleCalibration | None = None
) -> float:
    """Confidence in the turn to ``handle`` on the pose network's scale, which learns each axis
    confidence as ``exp(-angle error / conf_scale_rad)``: the chance that the turn is right
    times that value at a right turn's error (a wrong turn's is near zero)."""
    cal = calibration or HandleCalibration()
    right = cal.right_turn_chance(handle.spread_deg)
    return float(right * np.exp(-np.radians(cal.right_turn_error_deg) / conf_scale_rad))


def turn_to_handle(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: np.ndarray,
    search: HandleSearch | None = None,
    ring: np.ndarray | None = None,
) -> tuple[np.ndarray, Handle | None]:
    """``R`` turned about its up axis so that x points at the handle, and the handle found.

    The up axis is kept as predicted; with no handle seen ``R`` is returned unchanged.
    """
    handle = find_handle(points, R, t, size, search, ring)
    if handle is None:
        return R, None
    return rotation_from_y(R[:, 1], handle.direction), handle
