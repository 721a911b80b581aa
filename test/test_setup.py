"""The set-up step refuses a half-configured ROS instead of half-installing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fake_ros_distro_fails_clearly_and_installs_nothing(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AMENT", "ROS"))}
    env.update(ROS_DISTRO="fake-distro", VENV=str(venv), PYTHON=sys._base_executable)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_env.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ROS_DISTRO=fake-distro is set" in result.stderr
    assert "cannot import: rclpy" in result.stderr
    assert "unset ROS_DISTRO" in result.stderr
    assert not venv.exists(), "set-up created a virtual environment before failing"
