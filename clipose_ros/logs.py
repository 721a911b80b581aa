"""Logging set-up shared by the command-line tools: terminal plus a log file in the output."""

from __future__ import annotations

import csv
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


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """One row per epoch/evaluation; the header is the union of keys in first-seen order, so a
    column added later (e.g. validation every N epochs) still gets its place."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
