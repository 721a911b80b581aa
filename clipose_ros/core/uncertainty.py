"""A pose's covariance from the pose network's axis confidences, for ``PoseWithCovariance``.

The network learns each axis confidence as ``exp(-angle error / s)`` (``s``: the training's
``loss.conf_scale_rad``, stored in the model file), so a confidence ``c`` stands for an angle
error of about ``-s ln c``; that is the standard deviation used here. The tilt of the object's
y axis (confidence of y) is a rotation about the object's x and z axes, the turn about y
(confidence of x) one about its y axis; a turn that is undefined (symmetric classes, a mug
whose handle was not found) gets the variance of an angle spread evenly over the circle.
The block is turned into the camera frame, the frame ``PoseWithCovariance`` states it in.

Translation has no learnt confidence: its standard deviation is a fixed figure the user sets
(the node's ``translation_stddev``). A pose without confidences (estimators without them,
model files from before 2026-12-04) gets an all-zero matrix, ROS's "covariance unknown".
"""

from __future__ import annotations

import numpy as np

from clipose_ros.core.structures import ObjectPose

UNDEFINED_ANGLE_VARIANCE = np.pi**2 / 3.0  # an angle uniform on (-pi, pi]
MIN_ANGLE_STDDEV = np.radians(0.5)  # a confidence of 1 does not mean an exact rotation
# the training default (model/losses.py LossWeights), for model files that do not store theirs
DEFAULT_CONF_SCALE_RAD = 0.1


def angle_stddev(confidence: float, conf_scale_rad: float) -> float:
    """Angle error (rad) a confidence in (0, 1] stands for, between 0.5° and pi."""
    c = float(np.clip(confidence, np.finfo(np.float64).tiny, 1.0))
    return float(np.clip(-conf_scale_rad * np.log(c), MIN_ANGLE_STDDEV, np.pi))


def pose_covariance(
    pose: ObjectPose, conf_scale_rad: float, translation_stddev: float
) -> np.ndarray:
    """6 x 6 covariance (x, y, z, rotation about x, y, z; camera frame), zeros if unknown."""
    cov = np.zeros((6, 6))
    conf_y, conf_x = (float(v) for v in pose.axis_confidence)
    if np.isnan(conf_y):
        return cov
    tilt = angle_stddev(conf_y, conf_scale_rad) ** 2
    turn = UNDEFINED_ANGLE_VARIANCE if np.isnan(conf_x) else angle_stddev(
        conf_x, conf_scale_rad) ** 2
    R = np.asarray(pose.R, dtype=np.float64)
    cov[:3, :3] = np.eye(3) * translation_stddev**2
    cov[3:, 3:] = R @ np.diag([tilt, turn, tilt]) @ R.T
    return cov
