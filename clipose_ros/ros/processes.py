"""The launch file's two nodes as plain processes, DDS on loopback. No ROS imports.

``ros2 launch clipose_ros pose.launch.py`` needs launch_ros, which is not on PyPI; where it is
missing, ``clipose-demo``, ``bench/node_speed.py`` and the node tests start the same two nodes
(``synthetic_camera`` and ``pose_node``, with ``config/pose.yaml``) through
:func:`node_commands` and :func:`start_processes`, in an environment from :func:`ros_environment`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


DDS_VARIABLES = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID",
                 "FASTDDS_DEFAULT_PROFILES_FILE")


def ros_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with DDS on loopback, a domain of its own and, for
    Fast DDS, the large-image shared-memory profile, unless the caller set them already."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(10, 100)))
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
        profile = config_file("fastdds_large_images.xml")
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def config_file(name: str = "pose.yaml") -> Path:
    """A file of config/ in the source tree, else in the installed share dir."""
    source = PACKAGE_ROOT / "config" / name
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("clipose_ros")) / "config" / name


def node_commands(params_file: Path, camera_overrides: dict | None = None,
                  node_overrides: dict | None = None, pose_node: list[str] | None = None,
                  namespace: str = "") -> dict[str, list[str]]:
    """The two processes the launch file starts, as plain commands."""
    def ros_args(overrides: dict | None) -> list[str]:
        args = ["--ros-args", "--params-file", str(params_file)]
        for key, value in (overrides or {}).items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, str):  # quoted, so '' or '0.5' stay strings for rcl's YAML
                value = json.dumps(value)
            args += ["-p", f"{key}:={value}"]
        return args

    ns = namespace.rstrip("/")
    camera = [sys.executable, "-m", "clipose_ros.ros.synthetic_camera", *ros_args(camera_overrides),
              "-r", f"__ns:={ns}/camera"]
    node = (pose_node or [sys.executable, "-m", "clipose_ros.ros.node"]) + ros_args(node_overrides)
    if ns:
        node += ["-r", f"__ns:={ns}"]
    return {"synthetic_camera": camera, "pose_node": node}


def parse_node_params(items: list[str]) -> dict:
    """``NAME=VALUE`` strings (``--param`` options) as pose_node parameter overrides, values read
    as YAML like the parameter file's (for a string parameter, the text itself, so that
    ``NAME=`` is the empty string). An unknown name or a missing ``=`` raises ValueError
    before any process starts, rather than a node that refuses it later."""
    import yaml

    from clipose_ros.ros.parameters import POSE_NODE_PARAMS

    known = {p.name: p for p in POSE_NODE_PARAMS}
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        if name not in known:
            raise ValueError(f"--param {item!r}: pose_node has no parameter {name!r} "
                             f"(it has: {', '.join(sorted(known))})")
        params[name] = yaml.safe_load(value)
        if isinstance(known[name].default, str):  # NAME= and NAME=0.5 are strings here
            params[name] = "" if params[name] is None else str(params[name])
    return params


def start_processes(commands: dict[str, list[str]], log_dir: Path, env: dict[str, str]):
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in commands.items():
        log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True), log)
    return procs


def stop_processes(procs) -> dict[str, int | None]:
    codes = {}
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        codes[name] = proc.returncode
        log.close()
    return codes


def tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of a log file (or a note that there is none)."""
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return "(no log)"
