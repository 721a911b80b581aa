"""Import a Python file that is not in a package (scripts/, launch/) for a test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_file_module(relative_path: str, name: str) -> ModuleType:
    """The module in ``ROOT / relative_path``, executed under ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
