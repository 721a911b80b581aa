"""The package metadata colcon and ros2 run rely on is valid and points at real code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_ament_python():
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "clipose_ros"
    assert package.get_build_type() == "ament_python"
    exec_deps = {d.name for d in package.exec_depends}
    assert {"rclpy", "vision_msgs", "tf2_msgs", "tf2_ros", "sensor_msgs"} <= exec_deps
    assert (ROOT / "resource" / "clipose_ros").is_file()
    assert "script_dir=$base/lib/clipose_ros" in (ROOT / "setup.cfg").read_text()


def console_scripts() -> dict[str, str]:
    """name -> "module:function" of setup.py's console scripts (the source tree's, which colcon
    and ``pip install -e`` install; an environment installed before a move still has the old
    ones until it is set up again)."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    lines = ast.literal_eval(value)
                    return dict(tuple(s.strip() for s in line.split("=")) for line in lines)
    raise AssertionError("setup.py declares no console_scripts")


def test_every_console_entry_point_resolves_to_a_callable():
    scripts = console_scripts()
    assert set(scripts) >= {"clipose-synth", "clipose-eval", "pose_node", "synthetic_camera"}
    for name, value in scripts.items():
        module, _, attr = value.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), (name, value)


def test_a_missing_ros_runtime_gives_one_clear_message(monkeypatch, capsys):
    """The node entry points check ROS 2's Python packages before importing the node modules
    (which import rclpy at the top): one line naming what is missing, exit status 2."""
    import importlib.util

    import pytest

    from clipose_ros.ros import entry_points

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rclpy" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        entry_points.pose_node([])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("pose_node: ROS 2's Python runtime is missing here (no rclpy)")
    assert "make setup" in message and "\n" not in message
