"""Refit the mug handle search's confidence (``HandleCalibration`` in core/mug_handle.py) for a
pose file, on labelled validation frames (never the test frames).

For every mug (ground-truth masks) with a visible handle that the search finds, it records the
spread of the handle's directions and whether the turn is right (within 10 deg of the label,
``metrics.rotation_error_deg``), fits ``P(right) = 1 / (1 + (spread / mid) ** slope)`` by
logistic regression on log(spread), and prints the constants with a calibration table and the
median error of the right turns.

    .venv/bin/python scripts/fit_handle_confidence.py --data /work/data/synth_val2/train \\
        [--model models/clipose_pose_clip.pt] [--max-frames 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipose_ros import metrics
from clipose_ros.categories import CAMERA_INTRINSICS, CLASS_IDS
from clipose_ros.core.estimators import CliposeEstimator
from clipose_ros.core.mug_handle import HandleCalibration
from clipose_ros.core.segmentation import build_segmenter
from clipose_ros.data import nocs_format as nf
from clipose_ros.ros.parameters import DEFAULT_POSE_MODEL
from clipose_ros.tools.evaluate import load_frame


def mug_samples(data: Path, model: Path, max_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(spread in degrees, turn error in degrees) of every visible-handle mug with a handle
    found, each matched to the labelled mug nearest its predicted centre."""
    estimator = CliposeEstimator(str(model))
    masks = build_segmenter("gt")
    spread, error = [], []
    for prefix in tqdm(nf.list_frames(data, labelled=True)[:max_frames], unit="frame"):
        frame, label = load_frame(prefix, CAMERA_INTRINSICS, False)
        mugs = [i for i in masks.segment(frame) if i.class_id == CLASS_IDS["mug"]]
        truth = [i for i in range(len(label)) if label.class_ids[i] == CLASS_IDS["mug"]]
        for inst in mugs:
            poses = estimator.estimate(frame, [inst])
            if not poses or estimator.handles[0] is None:
                continue
            pose = poses[0]
            i = min(truth, key=lambda k: np.linalg.norm(label.opencv_pose(k)[1] - pose.t))
            if not label.handle_visibility[i]:
                continue
            gt = metrics.compose_rt(*label.opencv_pose(i), 1.0)
            spread.append(estimator.handles[0].spread_deg)
            error.append(metrics.rotation_error_deg(gt, pose.matrix(), symmetric=False))
    return np.array(spread), np.array(error)


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50) -> np.ndarray:
    """(w0, w1) of P(y) = sigmoid(w0 + w1 x) by Newton's method (a tiny ridge keeps it finite
    when the classes separate)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        hessian = (X.T * (p * (1.0 - p))) @ X + 1e-6 * np.eye(2)
        w += np.linalg.solve(hessian, X.T @ (y - p))
    return w


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled validation folder")
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_POSE_MODEL),
                        help=f"exported pose file (the node's default, {DEFAULT_POSE_MODEL})")
    parser.add_argument("--max-frames", type=int, default=None)
    args = parser.parse_args(argv)
    spread, error = mug_samples(args.data, args.model, args.max_frames)
    right = (error <= 10.0).astype(np.float64)
    if len(spread) < 10 or right.all() or not right.any():
        raise SystemExit(f"{len(spread)} mugs with a handle found, {int(right.sum())} right: "
                         "too few, or one outcome only, to fit")
    w0, w1 = fit_logistic(np.log(spread), right)
    # sigmoid(w0 + w1 log s) = 1 / (1 + (s / mid) ** slope) with slope = -w1, mid = exp(-w0/w1)
    fitted = HandleCalibration(spread_mid_deg=float(np.exp(-w0 / w1)), slope=float(-w1),
                               right_turn_error_deg=float(np.median(error[right > 0])))
    print(f"{len(spread)} mugs, {int(right.sum())} turned right; right turns' median error "
          f"{fitted.right_turn_error_deg:.1f} deg")
    print(f"HandleCalibration(spread_mid_deg={fitted.spread_mid_deg:.1f}, "
          f"slope={fitted.slope:.1f}, right_turn_error_deg={fitted.right_turn_error_deg:.1f})")
    predicted = fitted.right_turn_chance(spread)
    for lo, hi in ((0.0, 0.5), (0.5, 0.9), (0.9, 1.01)):
        m = (predicted >= lo) & (predicted < hi)
        if m.any():
            print(f"  predicted {lo:.1f}-{min(hi, 1.0):.1f}: {m.sum()} mugs, "
                  f"{100 * right[m].mean():.0f} % right")

if __name__ == "__main__":
    main()
