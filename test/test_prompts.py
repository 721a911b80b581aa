"""Pose-aware prompts and pretraining captions: conventions checked against independent code."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clipose_ros.model.prompts import (
    CoarsePose,
    canonical_symmetric_rotation,
    caption,
    coarse_pose,
    euler_xyz_from_rotation,
    pose_prompt,
    pose_prompts,
    rotation_from_euler_xyz,
    zero_shot_prompts,
)

NUM = r"(-?\d+\.\d\d)"
PROMPT_RE = re.compile(
    rf"a point-cloud model of a (\w+)(, symmetric about its y axis)?, rotation Euler angles "
    rf"<{NUM}, {NUM}, {NUM}>, translation vector <{NUM}, {NUM}, {NUM}>$"
)


def parse(prompt: str) -> tuple[str, bool, np.ndarray, np.ndarray]:
    m = PROMPT_RE.match(prompt)
    assert m, prompt
    vals = np.array([float(v) for v in m.groups()[2:]])
    return m.group(1), m.group(2) is not None, vals[:3], vals[3:]


def test_known_pose_gives_the_documented_text():
    # The rotation is built by SciPy from the angles (extrinsic x-y-z, degrees), not by our code.
    R = Rotation.from_euler("xyz", [-103.73, 58.98, 71.62], degrees=True).as_matrix()
    text = pose_prompt("mug", R, np.array([0.1063, 0.4878, 0.4132]))
    assert text == (
        "a point-cloud model of a mug, rotation Euler angles <-103.73, 58.98, 71.62>, "
        "translation vector <10.63, 48.78, 41.32>"
    )
    assert pose_prompt(6, R, [0.1063, 0.4878, 0.4132]) == text  # class id 6 = mug


def test_euler_convention_is_extrinsic_xyz_rz_ry_rx():
    a, b, c = np.radians([20.0, -35.0, 110.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    R = rz @ ry @ rx  # first about camera x, then y, then z (fixed axes)
    np.testing.assert_allclose(euler_xyz_from_rotation(R), [20.0, -35.0, 110.0], atol=1e-9)
    np.testing.assert_allclose(rotation_from_euler_xyz([20, -35, 110]), R, atol=1e-12)


def test_random_rotations_round_trip_through_the_text():
    rng = np.random.default_rng(3)
    for R in Rotation.random(200, random_state=4).as_matrix():
        t = rng.uniform(-1, 1, 3)
        name, sym, angles, t_cm = parse(pose_prompt("camera", R, t))
        assert (name, sym) == ("camera", False)
        assert -180 < angles[0] <= 180 and -90 <= angles[1] <= 90 and -180 < angles[2] <= 180
        back = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
        err = np.degrees(np.arccos(np.clip((np.trace(back.T @ R) - 1) / 2, -1, 1)))
        assert err < 0.02  # two decimals of a degree
        np.testing.assert_allclose(t_cm, 100 * t, atol=0.0051)


@pytest.mark.parametrize("beta", [90.0, -90.0])
def test_gimbal_lock_sets_first_angle_to_zero(beta):
    R = Rotation.from_euler("xyz", [30.0, beta, 20.0], degrees=True).as_matrix()
    _, _, angles, _ = parse(pose_prompt("laptop", R, [0, 0, 0.5]))
    assert angles[0] == 0.0 and angles[1] == beta
    back = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(back, R, atol=1e-3)


def test_symmetric_prompt_ignores_rotation_about_y():
    R = Rotation.from_euler("xyz", [40.0, -20.0, 75.0], degrees=True).as_matrix()
    t = [0.05, -0.02, 0.7]
    texts = set()
    for theta in np.linspace(0, 2 * np.pi, 7)[:-1]:
        Ry = Rotation.from_rotvec([0, theta, 0]).as_matrix()
        texts.add(pose_prompt("bottle", R @ Ry, t))
        assert pose_prompt("camera", R @ Ry, t) != pose_prompt("camera", R, t) or theta == 0
    assert len(texts) == 1
    text = texts.pop()
    assert ", symmetric about its y axis," in text
    _, sym, angles, _ = parse(text)
    back = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(back[:, 1], R[:, 1], atol=1e-3)  # the y axis is kept
    # the free angle: object x = camera x projected onto the plane normal to y
    y = R[:, 1]
    x_ref = np.array([1.0, 0, 0]) - y[0] * y
    np.testing.assert_allclose(back[:, 0], x_ref / np.linalg.norm(x_ref), atol=1e-3)


def test_mug_with_hidden_handle_is_described_as_symmetric():
    R = Rotation.from_euler("xyz", [10.0, 20.0, 30.0], degrees=True).as_matrix()
    Ry = Rotation.from_rotvec([0, 1.0, 0]).as_matrix()
    hidden = pose_prompts([6, 6], np.stack([R, R @ Ry]), np.zeros((2, 3)) + 0.5, [True, True])
    assert hidden[0] == hidden[1] and "symmetric" in hidden[0]
    visible = pose_prompts([6, 6], np.stack([R, R @ Ry]), np.zeros((2, 3)) + 0.5, [False, False])
    assert visible[0] != visible[1] and "symmetric" not in visible[0]


def test_canonical_rotation_when_y_is_along_camera_x():
    R = Rotation.from_euler("z", -90, degrees=True).as_matrix()  # object y = camera x
    C = canonical_symmetric_rotation(R)
    np.testing.assert_allclose(C.T @ C, np.eye(3), atol=1e-12)
    assert np.linalg.det(C) == pytest.approx(1.0)
    np.testing.assert_allclose(C[:, 1], R[:, 1], atol=1e-12)
    np.testing.assert_allclose(abs(C[:, 0] @ [0, 0, 1.0]), 1.0, atol=1e-12)  # camera z used


def test_no_negative_zero_and_bad_inputs():
    assert "-0.00" not in pose_prompt("can", np.eye(3), [-1e-6, 0.0, 0.3])
    with pytest.raises(ValueError, match="translation"):
        pose_prompt("can", np.eye(3), [0.0, np.nan, 0.3])
    with pytest.raises(ValueError, match="unknown category"):
        pose_prompt("spoon", np.eye(3), [0, 0, 1])
    with pytest.raises(ValueError, match="class id"):
        pose_prompt(7, np.eye(3), [0, 0, 1])
    with pytest.raises(ValueError, match="batch sizes"):
        pose_prompts([1, 2], np.stack([np.eye(3)] * 3), np.zeros((2, 3)))


def test_longest_prompt_fits_the_clip_context():
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # OpenAI BPE, bundled with open_clip
    R = Rotation.from_euler("xyz", [-179.99, -89.99, -179.99], degrees=True).as_matrix()
    longest = pose_prompt("bottle", R, [-9.9999, -9.9999, -9.9999])  # symmetric phrase + 6 signs
    tokens = tokenizer([longest])
    assert int(tokens[0, -1]) == 0  # padding left: nothing was cut


def test_coarse_pose_and_captions():
    t = np.array([0.0, 0.0, 0.6])  # straight ahead of the camera
    upright = np.diag([1.0, -1.0, -1.0])  # object y = camera -y (up in the image), x = right
    pose = coarse_pose("mug", upright, t)
    assert pose == CoarsePose("from the side", "pointing right")
    assert (
        caption("mug", "red", pose)
        == "a photo of a red mug, seen from the side, handle pointing right"
    )
    tilt = Rotation.from_euler("x", 50, degrees=True).as_matrix() @ upright  # top towards camera
    assert coarse_pose("mug", tilt, t).elevation == "from above"
    toward = Rotation.from_euler("y", 90, degrees=True).as_matrix() @ upright  # x -> -z
    assert coarse_pose("camera", toward, t).part_direction == "facing the camera"
    assert caption("camera", None, coarse_pose("camera", toward, t)).endswith(
        "lens facing the camera"
    )
    assert coarse_pose("bottle", upright, t).part_direction is None
    hidden = coarse_pose("mug", upright, t, handle_visible=False)
    assert caption("mug", "blue", hidden, handle_visible=False).endswith("handle hidden")
    assert caption("bowl", None, None) == "a photo of a bowl"
    assert "a photo of a laptop" in zero_shot_prompts("laptop")
