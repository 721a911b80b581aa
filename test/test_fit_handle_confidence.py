"""The handle-confidence refit recovers a known calibration: a new pose file is refitted with it,
and the shipped constants come from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "fit_handle_confidence", ROOT / "scripts" / "fit_handle_confidence.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_fit_recovers_midpoint_and_slope():
    rng = np.random.default_rng(0)
    spread = np.exp(rng.uniform(np.log(1.0), np.log(30.0), 4000))
    right = rng.random(4000) < 1.0 / (1.0 + (spread / 9.0) ** 4.5)
    w0, w1 = _script().fit_logistic(np.log(spread), right.astype(np.float64))
    assert np.exp(-w0 / w1) == pytest.approx(9.0, rel=0.05)
    assert -w1 == pytest.approx(4.5, rel=0.1)
