"""What the two nodes share at run time: parameter declaration, spinning, throttled warnings,
rates. Imports rclpy (the parameter specifications themselves are in ``parameters``, ROS-free).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from clipose_ros.ros.parameters import Param, ParameterError


def declare_parameters(node: Node, specs: tuple[Param, ...]) -> dict[str, Any]:
    """Declare ``specs`` with descriptions and ranges; returns the values (overrides applied).

    rclpy refuses an out-of-range override itself; choices are checked here. Either way a
    :class:`ParameterError` names the key, the value and what is allowed.
    """
    values = {}
    for p in specs:
        descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only)
        if p.low is not None and isinstance(p.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(p.low), to_value=float(p.high))
            ]
        elif p.low is not None and isinstance(p.default, int) and not isinstance(p.default, bool):
            descriptor.integer_range = [
                IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)
            ]
        if p.choices:
            descriptor.additional_constraints = f"one of {', '.join(p.choices)}"
        try:
            value = node.declare_parameter(p.name, p.default, descriptor).value
        except ParameterException as err:
            allowed = f" (allowed: {p.low} .. {p.high})" if p.low is not None else ""
            raise ParameterError(f"parameter {p.name}: refused: {err}{allowed}") from err
        if p.choices and value not in p.choices:
            raise ParameterError(
                f"parameter {p.name}: {value!r} is not one of {', '.join(p.choices)}"
            )
        values[p.name] = value
    return values


class WarningThrottle:
    """At most one message per ``kind`` every ``period`` seconds, with the count suppressed."""

    def __init__(self, log, period: float) -> None:
        self.log = log
        self.period = period
        self.last: dict[str, float] = {}
        self.suppressed: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, kind: str, message: str, level: str = "warning") -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(kind, -1e9) < self.period:
                self.suppressed[kind] += 1
                return
            self.last[kind] = now
            extra = self.suppressed.pop(kind, 0)
        text = message + (f" ({extra} more like it since the last message)" if extra else "")
        # rclpy ties a severity to each call site: one call per level.
        if level == "info":
            self.log.info(text)
        elif level == "error":
            self.log.error(text)
        else:
            self.log.warning(text)


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window = window_s
        self.times: collections.deque = collections.deque()
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        with self.lock:
            while self.times and now - self.times[0] > self.window:
                self.times.popleft()
            if len(self.times) < 2:
                return 0.0
            return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-6)


def percentile(values, q: float) -> float:
    return float(np.percentile(list(values), q)) if len(values) else float("nan")


def run_node(make_node: Callable[[], Node], args: list[str] | None = None,
             name: str = "pose_node") -> int:
    """rclpy init, build the node, spin until shutdown; start-up errors exit with status 2."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except (ParameterError, RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"{name}: cannot start: {err}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
