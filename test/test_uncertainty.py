"""The pose covariance the node publishes, from the network's axis confidences."""

from __future__ import annotations

import numpy as np
import pytest

from clipose_ros.categories import CLASS_IDS
from clipose_ros.core.structures import ObjectPose
from clipose_ros.core.uncertainty import (
    DEFAULT_CONF_SCALE_RAD,
    UNDEFINED_ANGLE_VARIANCE,
    angle_stddev,
    pose_covariance,
)
from clipose_ros.geometry import rotation_about_axis

SCALE = 0.1  # the training default, loss.conf_scale_rad


def posed(name: str, conf: tuple[float, float], R: np.ndarray | None = None) -> ObjectPose:
    return ObjectPose(CLASS_IDS[name], 0.9, np.eye(3) if R is None else R, np.zeros(3),
                      np.ones(3) * 0.1, axis_confidence=np.array(conf, dtype=np.float64))


def test_a_confidence_stands_for_the_angle_its_training_target_gives():
    # trained towards exp(-angle / s): 0.5 means an error of s ln 2
    assert angle_stddev(0.5, SCALE) == pytest.approx(SCALE * np.log(2))
    assert angle_stddev(1.0, SCALE) == pytest.approx(np.radians(0.5))  # never exact
    assert angle_stddev(0.0, SCALE) == pytest.approx(np.pi)  # never more than a half turn
    assert angle_stddev(0.9, SCALE) < angle_stddev(0.6, SCALE)


def test_each_axis_confidence_sets_the_rotation_it_governs_in_the_camera_frame():
    R = rotation_about_axis([0.3, 1.0, -0.5], 1.2)
    cov = pose_covariance(posed("camera", (0.9, 0.4), R), SCALE, 0.02)
    np.testing.assert_allclose(cov, cov.T, atol=1e-15)
    assert np.all(np.linalg.eigvalsh(cov) >= -1e-15)
    np.testing.assert_allclose(cov[:3, :3], np.eye(3) * 0.02**2)
    assert np.all(cov[:3, 3:] == 0)
    rot = cov[3:, 3:]
    x, y, z = R.T  # the object's axes in the camera frame
    # the turn about the object's y axis: from the x confidence; tilts of y: from y's
    assert y @ rot @ y == pytest.approx(angle_stddev(0.4, SCALE) ** 2)
    assert x @ rot @ x == pytest.approx(angle_stddev(0.9, SCALE) ** 2)
    assert z @ rot @ z == pytest.approx(angle_stddev(0.9, SCALE) ** 2)
    assert x @ rot @ y == pytest.approx(0.0, abs=1e-12)


def test_an_undefined_turn_and_an_unknown_confidence():
    R = rotation_about_axis([1.0, 0.0, 0.2], 0.7)
    bowl = pose_covariance(posed("bowl", (0.8, np.nan), R), SCALE, 0.01)
    assert R[:, 1] @ bowl[3:, 3:] @ R[:, 1] == pytest.approx(UNDEFINED_ANGLE_VARIANCE)
    assert R[:, 0] @ bowl[3:, 3:] @ R[:, 0] == pytest.approx(angle_stddev(0.8, SCALE) ** 2)
    # no confidences at all: ROS's "covariance unknown", all zeros
    unknown = ObjectPose(CLASS_IDS["mug"], 0.9, R, np.zeros(3), np.ones(3))
    assert not pose_covariance(unknown, SCALE, 0.01).any()


def test_default_scale_is_the_trainings():
    """Files without loss metadata are read on the scale training uses by default."""
    from clipose_ros.model.losses import LossWeights

    assert LossWeights().conf_scale_rad == DEFAULT_CONF_SCALE_RAD
