"""Pose estimators behind one interface: ``estimate(frame, instances) -> [ObjectPose]``.

``NocsMapEstimator`` is the non-learned reference every NOCS user knows: it fits a similarity
transform between an instance's NOCS coordinates and its back-projected depth (Umeyama inside
RANSAC). Fed ground-truth NOCS maps it is the project's ceiling reference and the generator's
consistency check; fed predicted NOCS maps it is the original NOCS method's pose stage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from clipose_ros.categories import CLASS_IDS
from clipose_ros.geometry import backproject_pixels, ransac_umeyama, valid_depth_pixels
from clipose_ros.structures import Frame, Instance, ObjectPose

log = logging.getLogger("clipose.estimators")


class PoseEstimator(Protocol):
    """Anything that turns segmented instances of a frame into 9D poses.

    ``needs_nocs_map`` tells frame loaders to fill ``Frame.nocs_map`` (extra I/O otherwise).
    """

    needs_nocs_map: bool

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]: ...


class NocsMapEstimator:
    """Similarity fit between ``frame.nocs_map`` and depth, per instance.

    Instances with fewer than ``min_points`` usable pixels, or whose fit keeps too few inliers,
    give no pose (a missed detection), with a log message saying why.

    Mugs: coordinate maps are tight-box NOCS, labels are on the body axis (SPD convention).
    With ``mug_meta`` (model name -> ``(shift, scale)``, SPD's ``mug_meta.pkl``) and the
    instance's ``model_name``, the coordinates are moved into the label frame before the fit,
    exactly as SPD re-labels, so the pose is in the label convention. Without it the fit stays
    in the tight box (a warning says so once).
    """

    needs_nocs_map = True

    def __init__(
        self,
        inlier_threshold_m: float = 0.01,
        iterations: int = 150,
        min_points: int = 30,
        seed: int = 0,
        mug_meta: Mapping[str, tuple[np.ndarray, float]] | None = None,
    ) -> None:
        self.inlier_threshold_m = inlier_threshold_m
        self.iterations = iterations
        self.min_points = min_points
        self.rng = np.random.default_rng(seed)
        self.mug_meta = dict(mug_meta or {})
        self._warned_mug = False

    def _label_coords(self, inst: Instance, coords: np.ndarray) -> np.ndarray:
        """Coordinate-map points in the frame the labels use (changes mugs only)."""
        if inst.class_id != CLASS_IDS["mug"]:
            return coords
        frame = self.mug_meta.get(inst.model_name)
        if frame is None:
            if not self._warned_mug:
                log.warning(
                    "mug %r has no mug_meta entry: its pose stays in the tight box of the "
                    "coordinate map, not in the label frame (pass the dataset's mug_meta.pkl)",
                    inst.model_name,
                )
                self._warned_mug = True
            return coords
        shift, scale = frame
        return scale * (coords + shift)

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]:
        if frame.nocs_map is None:
            raise ValueError("NocsMapEstimator needs frame.nocs_map (NOCS coordinates per pixel)")
        poses = []
        for inst in instances:
            rows, cols = valid_depth_pixels(frame.depth, inst.mask)
            if len(rows) < self.min_points:
                log.info("class %d: %d usable pixels, no pose", inst.class_id, len(rows))
                continue
            dst = backproject_pixels(frame.depth, frame.K, rows, cols)
            src = self._label_coords(inst, frame.nocs_map[rows, cols].astype(np.float64))
            s, R, t, inliers = ransac_umeyama(
                src, dst, self.rng, self.inlier_threshold_m, self.iterations
            )
            if inliers.sum() < self.min_points // 2:
                log.info("class %d: %d inliers, no pose", inst.class_id, int(inliers.sum()))
                continue
            # Box extents in NOCS units from the inlier coordinates, as the NOCS code does
            # (about the label-frame origin, so a mug's box is symmetric about its body axis).
            extents = 2.0 * np.abs(src[inliers]).max(axis=0)
            poses.append(
                ObjectPose(
                    class_id=inst.class_id,
                    score=inst.score,
                    R=R,
                    t=t,
                    size=s * extents,
                    bbox=np.asarray(inst.bbox),
                    nocs_scale=s,
                )
            )
        return poses
