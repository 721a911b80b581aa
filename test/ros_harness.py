"""Helpers for tests over real DDS: node processes with logs, and an in-test node that records
what it hears on a background executor thread."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


class NodeProcess:
    """A ROS node in its own process (session), output in a log file; stopped with SIGINT."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Recorder:
    """An rclpy node spun on its own thread; ``listen`` records messages per key."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(name)
        self.lock = threading.Lock()
        self.messages: dict[str, list] = defaultdict(list)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, key: str, msg_type, topic: str, qos) -> None:
        def record(msg) -> None:
            with self.lock:
                self.messages[key].append(msg)
        self.node.create_subscription(msg_type, topic, record, qos)

    def get(self, key: str) -> list:
        with self.lock:
            return list(self.messages[key])

    def clear(self, key: str) -> None:
        with self.lock:
            self.messages[key].clear()

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str,
                 procs: tuple[NodeProcess, ...] = ()) -> object:
        """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            for p in procs:
                if not p.alive():
                    raise AssertionError(f"{p.cmd[:3]} exited while waiting for {what}:\n"
                                         f"{p.output()[-3000:]}")
            time.sleep(0.05)
        logs = "\n".join(p.output()[-2000:] for p in procs)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.thread.join(timeout=5)
