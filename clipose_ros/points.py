"""One points preparation for training, evaluation and the node: mask + depth -> (N, 3) points.

The pose network must see the same kind of input at run time as in training, so the reader
(``data/dataset.py``), the training cache (``model/cache.py``) and ``CliposeEstimator`` all call
:func:`prepare_points` with the :class:`PointsConfig` stored in the model file.

Steps (our own choices, stated here):

1. optional mask erosion by ``erode_px`` pixels (drops the mixed foreground/background depth
   of a segmenter's mask edge; kept only when enough pixels survive it);
2. back-projection of the mask pixels with valid depth (OpenCV camera frame, metres);
3. outlier rejection: points farther from the median point than ``outlier_factor`` times the
   median such distance (and at least ``outlier_floor_m``) are dropped. A mask that bleeds
   onto the background puts a few points far behind the object; they would pull the centroid
   on which the translation is regressed;
4. sampling to ``n_points``: without repetition when there are enough points; otherwise
   every point once plus random repeats (so no part of a small object is lost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2
import numpy as np

from clipose_ros.geometry import backproject_pixels, valid_depth_pixels
from clipose_ros.model.config import dataclass_from_dict

NUM_POINTS = 1028
# Bumped whenever the preparation's output changes for the same input; part of the training
# cache key and of the exported model's metadata.
PREPARATION_VERSION = 1


@dataclass(frozen=True)
class PointsConfig:
    """Parameters of :func:`prepare_points` (stored in model files and cache keys)."""

    n_points: int = NUM_POINTS
    min_points: int = 50
    erode_px: int = 0
    outlier_factor: float = 3.0
    outlier_floor_m: float = 0.05

    def __post_init__(self) -> None:
        if self.n_points < 1 or self.min_points < 1:
            raise ValueError("PointsConfig: n_points and min_points must be positive")
        if self.erode_px < 0:
            raise ValueError("PointsConfig: erode_px must be >= 0")
        if self.outlier_factor <= 0 or self.outlier_floor_m < 0:
            raise ValueError("PointsConfig: outlier_factor must be > 0 and outlier_floor_m >= 0")

    def to_dict(self) -> dict:
        return {**asdict(self), "version": PREPARATION_VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> PointsConfig:
        """From a config section, a model file's or a cache's metadata: unknown keys are
        refused (like the other config readers), and so is a ``version`` other than this
        code's :data:`PREPARATION_VERSION` (points prepared another way)."""
        d = dict(d)
        version = d.pop("version", PREPARATION_VERSION)
        if version != PREPARATION_VERSION:
            raise ValueError(f"points preparation version {version} is not this code's "
                             f"{PREPARATION_VERSION}: the data was prepared another way")
        return dataclass_from_dict(cls, d, "points")


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Boolean mask eroded by ``pixels`` (a (2p+1)-square kernel)."""
    if pixels <= 0:
        return mask.astype(bool)
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def sample_to(count: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``count`` items: a random subset when ``count >= n``, else every
    item once (shuffled) followed by ``n - count`` random repeats."""
    if count <= 0:
        raise ValueError("cannot sample points from an empty set")
    if count >= n:
        return rng.choice(count, size=n, replace=False)
    return np.concatenate([rng.permutation(count), rng.integers(0, count, size=n - count)])


def reject_outliers(points: np.ndarray, factor: float, floor_m: float) -> np.ndarray:
    """Keep points within ``max(factor * median distance, floor_m)`` of the median point."""
    if len(points) < 4:
        return points
    centre = np.median(points, axis=0)
    dist = np.linalg.norm(points - centre, axis=1)
    keep = dist <= max(factor * float(np.median(dist)), floor_m)
    return points[keep]


# Image sides, in the order of ``cut_sides``: left, right, top, bottom, as camera-frame
# directions (OpenCV: x right, y down).
SIDE_DIRECTIONS = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0]])


def cut_sides(mask: np.ndarray, margin_px: int = 2) -> np.ndarray:
    """(4,) bool: whether the mask reaches the left, right, top, bottom image border (within
    ``margin_px`` pixels; a segmenter's mask may stop a pixel or two short of it)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros(4, dtype=bool)
    h, w = mask.shape
    return np.array([
        cols[0] <= margin_px,
        cols[-1] >= w - 1 - margin_px,
        rows[0] <= margin_px,
        rows[-1] >= h - 1 - margin_px,
    ])


def cut_direction(cut: np.ndarray) -> np.ndarray:
    """(3,) camera-frame direction towards the image border(s) that cut an object (the sum of
    the cut sides' directions: zero when nothing is cut or when the cuts cancel). A pose
    network with ``NetConfig.cut_input`` reads it: where the object goes on out of view."""
    return np.asarray(cut, dtype=float) @ SIDE_DIRECTIONS


class PreparedPoints(NamedTuple):
    """What :func:`prepare_points` gives: ``points`` (n_points, 3) float32 in the camera frame
    (from :func:`object_points`: all usable points, float64), or None when the instance has
    too few; ``count``, the usable points it had; ``reason``,
    empty on success, else why there are no points."""

    points: np.ndarray | None
    count: int
    reason: str


def object_points(
    depth: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    config: PointsConfig | None = None,
) -> PreparedPoints:
    """Steps 1-3: every usable point of one instance (float64, not sampled), or None with the
    reason. The mug handle search (``core/mug_handle.py``) looks at all of them."""
    cfg = config or PointsConfig()
    if depth.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from depth shape {depth.shape}")
    rows, cols = valid_depth_pixels(depth, mask)
    if len(rows) < cfg.min_points:
        return PreparedPoints(None, len(rows),
                              f"{len(rows)} mask pixels with valid depth < {cfg.min_points}")
    if cfg.erode_px:
        er, ec = valid_depth_pixels(depth, erode(mask, cfg.erode_px))
        if len(er) >= cfg.min_points:
            rows, cols = er, ec
    points = backproject_pixels(depth, K, rows, cols)
    points = reject_outliers(points, cfg.outlier_factor, cfg.outlier_floor_m)
    if len(points) < cfg.min_points:
        return PreparedPoints(None, len(points), f"{len(points)} points after outlier "
                                                 f"rejection < {cfg.min_points}")
    return PreparedPoints(points, len(points), "")


def sample_points(
    cloud: PreparedPoints, config: PointsConfig, rng: np.random.Generator
) -> PreparedPoints:
    """Step 4: ``config.n_points`` float32 points drawn from :func:`object_points`' result."""
    if cloud.points is None:
        return cloud
    picked = cloud.points[sample_to(len(cloud.points), config.n_points, rng)]
    return PreparedPoints(picked.astype(np.float32), cloud.count, "")


def prepare_points(
    depth: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    config: PointsConfig | None = None,
    rng: np.random.Generator | None = None,
) -> PreparedPoints:
    """The points of one instance as ``config`` (default :class:`PointsConfig`) prepares them.

    ``rng`` defaults to a fixed seed, so that run-time results are reproducible.
    """
    cfg = config or PointsConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    return sample_points(object_points(depth, mask, K, cfg), cfg, rng)
