"""The perception core of the node: frame -> instances -> poses -> tracked objects. No ROS.

``PosePipeline`` chains a segmenter (``segment(frame) -> [Instance]``), the pose estimator
(``estimate(frame, instances) -> [ObjectPose]``, batched over a frame's instances; both
interfaces in :mod:`clipose_ros.core.stages`) and a tracker (:mod:`clipose_ros.core.tracking`)
that gives every physical object an id that survives short gaps, so a grasp pipeline can follow
one object across frames. Each stage is timed per frame. Usable from a notebook:

    pipeline = build_pipeline("models/clipose_pose.pt", "models/yoloseg_coco_nocs.pt")
    result = pipeline.process(Frame(rgb, depth, K))

``min_points`` (the node parameter of that name) is the one run-time threshold on the mask
pixels with valid depth: the pipeline drops instances below it, saying why, and hands it to the
estimator (for the exported model it replaces the value stored in the model file, which is the
training-time filter and the default of an estimator used on its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipose_ros.core.stages import PoseEstimator, Segmenter
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.core.tracking import PoseTracker, TrackerConfig
from clipose_ros.geometry import valid_depth_pixels

log = logging.getLogger("clipose.pipeline")

STAGES = ("segment_ms", "points_ms", "pose_ms", "track_ms", "total_ms")


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
        class_min_scores: Mapping[str, float] | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.estimator = estimator
        self.tracker = PoseTracker(tracker)
        self.min_score = min_score
        # per category name, replacing min_score for the classes it names
        self.class_min_scores = dict(class_min_scores or {})
        self.min_points = min_points

    def set_score_thresholds(self, score: float, per_class: Mapping[str, float]) -> None:
        """The one place the score rule (``per_class`` entry, else ``score``) changes: here
        and in the segmenter, which applies the same rule before its NMS when it has one (the
        YOLO segmenter does; masks from labels do not)."""
        from clipose_ros.core.segmentation import check_class_thresholds

        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {score}")
        per_class = check_class_thresholds(per_class)
        self.min_score = score
        self.class_min_scores = dict(per_class)
        if hasattr(self.segmenter, "class_score_thresholds"):
            self.segmenter.score_threshold = score
            self.segmenter.class_score_thresholds = dict(per_class)

    @property
    def min_points(self) -> int:
        """Fewest mask pixels with valid depth for a pose; setting it sets the estimator's."""
        return self._min_points

    @min_points.setter
    def min_points(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"min_points must be >= 1, got {value}")
        self._min_points = int(value)
        self.estimator.min_points = int(value)

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
            if inst.score < self.class_min_scores.get(inst.class_name, self.min_score):
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
        split = self.estimator.last_timings
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


def set_pose_subsets(estimator, subsets: int) -> None:
    """``estimator.subsets`` under the name users set it by (node parameter, build_pipeline
    argument): an out-of-range value raises ValueError starting ``pose_subsets:``."""
    try:
        estimator.subsets = subsets
    except ValueError as err:
        raise ValueError(f"pose_subsets: {err}") from err


def build_pipeline(
    pose_model: str | Path,
    segmenter_weights: str | Path,
    device: str = "cpu",
    imgsz: int = 320,
    score_threshold: float = 0.5,
    min_mask_area: int = 100,
    min_points: int = 50,
    class_score_thresholds: Mapping[str, float] | None = None,
    tracker: TrackerConfig | None = None,
    seed: int = 0,
    threads: int | None = None,
    mug_handle: bool = True,
    pose_subsets: int = 2,
    border_fit: bool = True,
    laptop_lid: bool = True,
    box_fit: bool = True,
) -> PosePipeline:
    """The shipped pipeline: YOLO-seg segmenter + exported CLIPose model, both on ``device``.

    ``class_score_thresholds`` (category name -> score) replaces ``score_threshold`` for the
    classes it names. ``threads`` caps the segmenter back-end's CPU threads (None: its
    default); ``mug_handle`` is the estimator's handle search (``core/mug_handle.py``),
    ``border_fit`` its fit of border-cut objects (``core/border_fit.py``), ``laptop_lid`` its
    turn of laptops to the lid plane (``core/laptop_lid.py``), ``box_fit`` its slide of each
    box over the object's points (``core/box_fit.py``), ``pose_subsets`` its number of point
    subsets (a ValueError names the range the model file allows). Missing or unusable files
    raise the loaders' errors (``ModelFileError``, ``SegmenterWeightsError``: RuntimeErrors
    naming the file and how to get one).
    """
    from clipose_ros.core.estimators import CliposeEstimator
    from clipose_ros.core.segmentation import YoloSegmenter

    estimator = CliposeEstimator(str(pose_model), device=device, seed=seed, mug_handle=mug_handle,
                                 border_fit=border_fit, laptop_lid=laptop_lid,
                                 box_fit=box_fit)
    set_pose_subsets(estimator, pose_subsets)
    segmenter = YoloSegmenter(
        str(segmenter_weights), device=device, imgsz=imgsz, score_threshold=score_threshold,
        min_mask_area=min_mask_area, threads=threads,
        class_score_thresholds=class_score_thresholds,
    )
    return PosePipeline(segmenter, estimator, tracker, score_threshold, min_points,
                        segmenter.class_score_thresholds)
