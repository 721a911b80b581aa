"""The handle-confidence refit recovers a known calibration: a new pose file is refitted with it,
and the shipped constants come from it."""

from __future__ import annotations

import numpy as np
import pytest
from file_modules import load_file_module


def _script():
    return load_file_module("scripts/fit_handle_confidence.py", "fit_handle_confidence")


def test_logistic_fit_recovers_midpoint_and_slope():
    rng = np.random.default_rng(0)
    spread = np.exp(rng.uniform(np.log(1.0), np.log(30.0), 4000))
    right = rng.random(4000) < 1.0 / (1.0 + (spread / 9.0) ** 4.5)
    w0, w1 = _script().fit_logistic(np.log(spread), right.astype(np.float64))
    assert np.exp(-w0 / w1) == pytest.approx(9.0, rel=0.05)
    assert -w1 == pytest.approx(4.5, rel=0.1)
