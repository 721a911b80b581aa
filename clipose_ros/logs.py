"""Logging set-up shared by the command-line tools: terminal plus a log file in the output."""

from __future__ import annotations

import logging
from pathlib import Path


def log_to_terminal_and_file(out_dir: Path, filename: str) -> Path:
    """INFO to the terminal and to ``out_dir/filename`` (created); returns the log path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(path)],
        force=True,
    )
    return path
