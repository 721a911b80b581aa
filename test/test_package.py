"""The package metadata colcon and ros2 run rely on is valid and points at real code."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
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


def test_every_console_entry_point_resolves_to_a_callable():
    scripts = [ep for ep in entry_points(group="console_scripts") if ep.value.startswith(
        "clipose_ros")]
    assert {ep.name for ep in scripts} >= {"clipose-synth", "clipose-eval"}
    for ep in scripts:
        module, _, attr = ep.value.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), ep.value
