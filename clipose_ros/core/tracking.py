"""Stable object ids across frames, with optional pose smoothing. No ROS.

A grasp pipeline follows one object's TF frame ``<prefix><class>_<id>``: the tracker keeps that
id while the object stays in view (same class, nearest centre within ``match_distance_m``) and
through short gaps (``max_missed`` frames), and says when a track ends (the node then deletes
its markers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clipose_ros.categories import SYMMETRIC_CATEGORIES
from clipose_ros.core.structures import ObjectPose


def _align_about_y(R_new: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
    """``R_new`` turned about its own y axis to be closest to ``R_ref`` (symmetric objects
    have no preferred angle about y, so frame-to-frame values may jump; this removes that)."""
    M = R_new.T @ R_ref
    theta = np.arctan2(M[0, 2] - M[2, 0], M[0, 0] + M[2, 2])
    c, s = np.cos(theta), np.sin(theta)
    return R_new @ np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _blend_rotation(R_old: np.ndarray, R_new: np.ndarray, keep: float) -> np.ndarray:
    """Weighted mean of two rotations (``keep`` on the old one), projected back onto SO(3)."""
    U, _, Vt = np.linalg.svd(keep * R_old + (1.0 - keep) * R_new)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


@dataclass
class Track:
    track_id: int
    pose: ObjectPose
    missed: int = 0
    hits: int = 1


@dataclass
class TrackerConfig:
    """``match_distance_m``: largest centre jump between frames for the same object;
    ``max_missed``: frames an object may go unseen and keep its id; ``smoothing``: weight of
    the previous pose in an exponential average (0 = off)."""

    match_distance_m: float = 0.10
    max_missed: int = 5
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.match_distance_m <= 0:
            raise ValueError(f"match_distance_m must be > 0, got {self.match_distance_m}")
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {self.max_missed}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")


class PoseTracker:
    """Stable ids by class and 3D centre distance (greedy nearest pairs), with a gap tolerance.

    ``update`` returns the poses of this frame with ``key = "<class>_<id>"`` and the keys of the
    tracks that ended (unseen for more than ``max_missed`` frames).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = 1

    def reset(self) -> list[str]:
        ended = [self._key(t) for t in self.tracks]
        self.tracks = []
        return ended

    @staticmethod
    def _key(track: Track) -> str:
        return f"{track.pose.class_name}_{track.track_id}"

    def update(self, poses: list[ObjectPose]) -> tuple[list[ObjectPose], list[str]]:
        cfg = self.config
        pairs = []
        for i, p in enumerate(poses):
            for j, tr in enumerate(self.tracks):
                if tr.pose.class_id != p.class_id:
                    continue
                d = float(np.linalg.norm(np.asarray(p.t) - tr.pose.t))
                if d <= cfg.match_distance_m:
                    pairs.append((d, i, j))
        pairs.sort()
        det_to_track: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, i, j in pairs:
            if i not in det_to_track and j not in used_tracks:
                det_to_track[i] = j
                used_tracks.add(j)
        out: list[ObjectPose] = []
        for i, p in enumerate(poses):
            if i in det_to_track:
                tr = self.tracks[det_to_track[i]]
                tr.pose = self._smooth(tr.pose, p)
                tr.missed = 0
                tr.hits += 1
            else:
                tr = Track(self.next_id, self._copy(p))
                self.next_id += 1
                self.tracks.append(tr)
                used_tracks.add(len(self.tracks) - 1)
            tr.pose.key = self._key(tr)
            out.append(tr.pose)
        ended = []
        kept = []
        for j, tr in enumerate(self.tracks):
            if j not in used_tracks:
                tr.missed += 1
            if tr.missed > cfg.max_missed:
                ended.append(self._key(tr))
            else:
                kept.append(tr)
        self.tracks = kept
        return out, ended

    @staticmethod
    def _copy(p: ObjectPose) -> ObjectPose:
        return replace(
            p, R=np.array(p.R, dtype=np.float64), t=np.array(p.t, dtype=np.float64),
            size=np.array(p.size, dtype=np.float64), bbox=np.asarray(p.bbox), key="",
            axis_confidence=np.array(p.axis_confidence, dtype=np.float64),
        )

    def _smooth(self, old: ObjectPose, new: ObjectPose) -> ObjectPose:
        out = self._copy(new)
        keep = self.config.smoothing
        if keep <= 0:
            return out
        R_new = out.R
        if new.class_name in SYMMETRIC_CATEGORIES:
            R_new = _align_about_y(R_new, old.R)
        out.R = _blend_rotation(old.R, R_new, keep)
        out.t = keep * old.t + (1.0 - keep) * out.t
        out.size = keep * old.size + (1.0 - keep) * out.size
        return out
