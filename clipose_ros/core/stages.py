"""The two interfaces the pipeline chains: a segmenter and a pose estimator. No ROS.

Both report the milliseconds of their last call in ``last_timings`` (a stated part of the
interface: the pipeline, the node's ``/diagnostics``, ``clipose-eval`` and ``clipose-infer``
read it), and the estimator exposes the ``min_points`` threshold that the pipeline sets.
"""

from __future__ import annotations

from typing import Protocol

from clipose_ros.core.structures import Frame, Instance, ObjectPose


class Segmenter(Protocol):
    """Anything that finds the category instances in a frame: NOCS class id, score, a mask at
    the frame's resolution and the mask's box (y1, x1, y2, x2, end exclusive).

    ``last_timings``: milliseconds of the last :meth:`segment` call, ``segment_ms`` (all of
    it) and any parts the segmenter measures; empty when it measures nothing (masks read from
    files), in which case callers time the call themselves.
    """

    last_timings: dict[str, float]

    def segment(self, frame: Frame) -> list[Instance]: ...


class PoseEstimator(Protocol):
    """Anything that turns segmented instances of a frame into 9D poses, batched per frame.

    ``needs_nocs_map`` tells frame loaders to fill ``Frame.nocs_map`` (extra I/O otherwise).
    ``min_points``: fewest mask pixels with valid depth an instance needs for a pose; a
    :class:`~clipose_ros.core.pipeline.PosePipeline` sets it to its own ``min_points`` (the
    node parameter), so one value decides at run time. ``last_timings``: milliseconds of the
    last :meth:`estimate` call split into ``points_ms`` (input preparation) and ``pose_ms``
    (the model); empty when the estimator does not split its time (the pipeline then counts
    all of it as ``pose_ms``).
    """

    needs_nocs_map: bool
    min_points: int
    last_timings: dict[str, float]

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]: ...
