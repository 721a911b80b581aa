"""Plain data passed between the stages of the perception core (no ROS imports).

frame -> segmenter -> [Instance] -> pose estimator -> [ObjectPose]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipose_ros.categories import class_name


@dataclass
class Frame:
    """One aligned RGB-D frame. ``depth`` is in metres with 0 (or non-finite) = invalid."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres
    K: np.ndarray  # (3, 3)
    stamp_ns: int = 0
    frame_id: str = ""
    # Optional per-pixel NOCS coordinates (H, W, 3), e.g. from a dataset's coord maps; used
    # by the NOCS-map estimator.
    nocs_map: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"rgb must be (H, W, 3), got {self.rgb.shape}")
        if self.depth.shape != self.rgb.shape[:2]:
            raise ValueError(
                f"depth {self.depth.shape} and rgb {self.rgb.shape[:2]} sizes differ"
            )
        if np.asarray(self.K).shape != (3, 3):
            raise ValueError(f"K must be 3x3, got {np.asarray(self.K).shape}")


@dataclass
class Instance:
    """A segmented object: NOCS class id (1..6), detection score, mask and 2D box."""

    class_id: int
    score: float
    mask: np.ndarray  # (H, W) bool
    bbox: np.ndarray  # (4,) y1, x1, y2, x2 as in the NOCS files
    # Object model behind the instance, when a dataset knows it (the NOCS-map reference needs
    # it to put a mug's coordinate-map fit into the label frame); "" otherwise.
    model_name: str = ""

    @property
    def class_name(self) -> str:
        return class_name(self.class_id)


@dataclass
class ObjectPose:
    """9D pose of one object: ``p_cam = R @ (size * p_unit_box) + t``.

    ``size`` is the metric box extents along the object axes (metres); ``nocs_scale`` is the
    NOCS scale factor ``s`` when the estimator knows it (NaN otherwise). ``score`` is the
    detector's. ``axis_confidence`` is the pose network's own estimate, in [0, 1], that its
    object y axis (first) and its turn about y (second) are right; NaN where it has none: the
    second for the symmetric classes and for a mug whose handle was not found (the turn about
    y is then undefined), both for estimators without confidences.
    """

    class_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    size: np.ndarray
    bbox: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    nocs_scale: float = float("nan")
    key: str = ""
    axis_confidence: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))

    @property
    def pose_confidence(self) -> float:
        """Confidence that the rotation is right as far as it is defined (NaN: unknown)."""
        y, x = (float(v) for v in self.axis_confidence)
        return y if np.isnan(x) else y * x

    @property
    def class_name(self) -> str:
        return class_name(self.class_id)

    def matrix(self) -> np.ndarray:
        """4x4 rigid transform object -> camera (no scale)."""
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.t
        return T
