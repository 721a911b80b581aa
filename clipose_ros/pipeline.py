"""The perception core of the node: frame -> instances -> poses -> tracked objects. No ROS.

``PosePipeline`` chains a segmenter (``segment(frame) -> [Instance]``), the pose estimator
(``estimate(frame, instances) -> [ObjectPose]``, batched over a frame's instances) and a
tracker that gives every physical object an id that survives short gaps, so a grasp pipeline
can follow one object across frames. Each stage is timed per frame. Usable from a notebook:

    pipeline = build_pipeline("models/clipose_pose.pt", "models/yoloseg_coco_nocs.pt")
    result = pipeline.process(Frame(rgb, depth, K))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from clipose_ros.categories import CLASS_IDS, SYMMETRIC_CATEGORIES
from clipose_ros.estimators import PoseEstimator
from clipose_ros.geometry import valid_depth_pixels
from clipose_ros.structures import Frame, Instance, ObjectPose

log = logging.getLogger("clipose.pipeline")

# A mug's label frame (SPD convention) has its origin on the body axis and a box symmetric
# about it: x extent = 2 * (body radius r + handle reach h), z extent = 2 r (the body's
# diameter). The tight box around the real mug spans [-r, r + h] along x, so each estimate's
# own z / x ratio, r / (r + h), turns one box into the other for the published bbox.
# One colour per category (RGB, 0..1): markers, debug image and demo overlays share them.
OVERLAY_COLORS = {
    "bottle": (0.12, 0.47, 0.71),
    "bowl": (1.0, 0.5, 0.05),
    "camera": (0.17, 0.63, 0.17),
    "can": (0.84, 0.15, 0.16),
    "laptop": (0.58, 0.4, 0.74),
    "mug": (0.89, 0.47, 0.76),
}
STAGES = ("segment_ms", "points_ms", "pose_ms", "track_ms", "total_ms")


class Segmenter(Protocol):
    def segment(self, frame: Frame) -> list[Instance]: ...


def object_box(pose: ObjectPose) -> tuple[np.ndarray, np.ndarray]:
    """Centre (camera frame) and full metric size of the box that tightly holds the object.

    It is the pose's own box (centred on the object origin) except for mugs, whose origin is on
    the body axis: their tight box is shifted towards the handle (+x) and narrower in x.
    """
    size = np.asarray(pose.size, dtype=np.float64)
    if pose.class_id != CLASS_IDS["mug"]:
        return np.asarray(pose.t, dtype=np.float64), size
    rho = float(np.clip(size[2] / max(size[0], 1e-9), 0.0, 1.0))  # r / (r + h)
    half_x = size[0] / 2.0
    offset = np.array([(1.0 - rho) * half_x / 2.0, 0.0, 0.0])
    tight = np.array([(1.0 + rho) * half_x, size[1], size[2]])
    return np.asarray(pose.t, dtype=np.float64) + np.asarray(pose.R) @ offset, tight


# ---------------------------------------------------------------------------- tracking


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
        return ObjectPose(
            class_id=p.class_id, score=p.score, R=np.array(p.R, dtype=np.float64),
            t=np.array(p.t, dtype=np.float64), size=np.array(p.size, dtype=np.float64),
            bbox=np.asarray(p.bbox), nocs_scale=p.nocs_scale,
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


# ---------------------------------------------------------------------------- pipeline


@dataclass
class PipelineResult:
    """What one frame gave: tracked poses seen in it, tracks that ended, the instances the
    segmenter found, why instances were skipped, and the stage timings in milliseconds."""

    poses: list[ObjectPose]
    ended: list[str]
    instances: list[Instance]
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class PosePipeline:
    """segment -> drop unusable instances (with the reason) -> batched pose -> track."""

    def __init__(
        self,
        segmenter: Segmenter,
        estimator: PoseEstimator,
        tracker: TrackerConfig | None = None,
        min_score: float = 0.0,
        min_points: int = 50,
    ) -> None:
        if min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {min_points}")
        self.segmenter = segmenter
        self.estimator = estimator
        self.tracker = PoseTracker(tracker)
        self.min_score = min_score
        self.min_points = min_points

    def warm_up(self, height: int = 480, width: int = 640, runs: int = 2) -> float:
        """Run the segmenter and the estimator on a synthetic frame (a box on a plane), so that
        the first camera frame does not pay for lazy set-up (TorchScript profiling runs, memory
        pools). Returns the milliseconds it took; the tracker stays empty."""
        start = time.perf_counter()
        K = np.array([[width * 0.9, 0, width / 2], [0, width * 0.9, height / 2], [0, 0, 1]])
        depth = np.full((height, width), 0.9, np.float32)
        mask = np.zeros((height, width), bool)
        y1, x1, y2, x2 = height // 3, width // 3, 2 * height // 3, 2 * width // 3
        mask[y1:y2, x1:x2] = True
        depth[mask] = 0.7
        frame = Frame(np.full((height, width, 3), 128, np.uint8), depth, K)
        instance = Instance(1, 1.0, mask, np.array([y1, x1, y2, x2]))
        for _ in range(runs):
            self.segmenter.segment(frame)
            self.estimator.estimate(frame, [instance, instance])
        return (time.perf_counter() - start) * 1e3

    def process(self, frame: Frame) -> PipelineResult:
        start = time.perf_counter()
        instances = self.segmenter.segment(frame)
        t_seg = time.perf_counter()
        usable, skipped = [], []
        for inst in instances:
            if inst.score < self.min_score:
                continue
            n = len(valid_depth_pixels(frame.depth, inst.mask)[0])
            if n < self.min_points:
                skipped.append(
                    f"{inst.class_name} (score {inst.score:.2f}): {n} mask pixels with valid "
                    f"depth < min_points {self.min_points}"
                )
                continue
            usable.append(inst)
        poses = self.estimator.estimate(frame, usable) if usable else []
        t_pose = time.perf_counter()
        if len(poses) < len(usable):
            skipped.append(f"the estimator gave no pose for {len(usable) - len(poses)} of "
                           f"{len(usable)} instances")
        tracked, ended = self.tracker.update(poses)
        end = time.perf_counter()
        estimate_ms = (t_pose - t_seg) * 1e3
        split = getattr(self.estimator, "last_timings", None) or {}
        points_ms = float(split.get("points_ms", 0.0)) if usable else 0.0
        pose_ms = float(split["pose_ms"]) if usable and "pose_ms" in split else (
            estimate_ms - points_ms)
        timings = dict(
            segment_ms=(t_seg - start) * 1e3,
            points_ms=points_ms,
            pose_ms=pose_ms,
            track_ms=(end - t_pose) * 1e3,
            total_ms=(end - start) * 1e3,
        )
        return PipelineResult(tracked, ended, instances, skipped, timings)


def build_pipeline(
    pose_model: str | Path,
    segmenter_weights: str | Path,
    device: str = "cpu",
    imgsz: int = 320,
    score_threshold: float = 0.5,
    min_mask_area: int = 100,
    min_points: int = 50,
    tracker: TrackerConfig | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> PosePipeline:
    """The shipped pipeline: YOLO-seg segmenter + exported CLIPose model, both on ``device``.

    ``threads`` caps the segmenter back-end's CPU threads (None: its default). Missing or
    unusable files raise the loaders' errors (``ModelFileError``,
    ``SegmenterWeightsError``: RuntimeErrors naming the file and how to get one).
    """
    from clipose_ros.estimators import CliposeEstimator
    from clipose_ros.segmentation import YoloSegmenter

    estimator = CliposeEstimator(str(pose_model), device=device, seed=seed)
    segmenter = YoloSegmenter(
        str(segmenter_weights), device=device, imgsz=imgsz, score_threshold=score_threshold,
        min_mask_area=min_mask_area, threads=threads,
    )
    return PosePipeline(segmenter, estimator, tracker, score_threshold, min_points)


def draw_overlay(rgb: np.ndarray, K: np.ndarray, poses: list[ObjectPose]) -> np.ndarray:
    """A copy of ``rgb`` with each object's box, axes (at the object origin) and label drawn."""
    import cv2

    from clipose_ros.geometry import project
    from clipose_ros.visualize import AXIS_COLORS, draw_pose

    image = np.ascontiguousarray(rgb).copy()
    for p in poses:
        centre, size = object_box(p)
        color = tuple(int(255 * c) for c in OVERLAY_COLORS[p.class_name])
        label = f"{p.key or p.class_name} {p.score:.2f}"
        draw_pose(image, K, p.R, centre, size, color, label, axes=False)
        t = np.asarray(p.t, dtype=np.float64)
        if t[2] <= 0.01:
            continue
        tips = t + (np.asarray(p.R) * (0.5 * float(np.max(p.size)))).T
        if np.any(tips[:, 2] <= 0.01):
            continue
        uv = np.round(project(np.vstack([t, tips]), K)).astype(np.int32)
        for axis in range(3):
            cv2.line(image, tuple(map(int, uv[0])), tuple(map(int, uv[axis + 1])),
                     AXIS_COLORS[axis], 2, cv2.LINE_AA)
    return image

