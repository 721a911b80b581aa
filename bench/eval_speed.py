"""Speed of the NOCS metrics: evaluate() on synthetic result frames, the two default IoU
modes, then the optional ``oriented`` one alone, in one run (and their ratio).

Usage: .venv/bin/python bench/eval_speed.py [--frames 500] [--objects 5] [--repeats 5]
Prints the median seconds over repeats and frames/s of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.spatial.transform import Rotation

from clipose_ros.categories import CATEGORIES
from clipose_ros.metrics import IOU_MODES, OPTIONAL_IOU_MODES, evaluate, make_result


def random_frame(rng: np.random.Generator, n: int) -> dict:
    """n objects of random classes with predictions a few degrees and millimetres off."""
    class_ids = rng.integers(1, len(CATEGORIES) + 1, n)
    R = Rotation.random(n, random_state=rng).as_matrix()
    t = np.column_stack([np.linspace(-0.4, 0.4, n), rng.uniform(-0.1, 0.1, n),
                         rng.uniform(0.6, 1.2, n)])
    s = rng.uniform(0.1, 0.3, n)
    extents = rng.uniform(0.3, 0.8, (n, 3))
    dR = Rotation.from_rotvec(rng.normal(0, 0.05, (n, 3))).as_matrix()
    return make_result(
        class_ids, R, t, s, extents, class_ids, rng.uniform(0.3, 1.0, n),
        R @ dR, t + rng.normal(0, 0.01, (n, 3)), s, extents,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, args.objects) for _ in range(args.frames)]
    medians = {}
    for modes in (IOU_MODES, OPTIONAL_IOU_MODES):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate(frames, modes)
            times.append(time.perf_counter() - start)
        median = medians[modes] = statistics.median(times)
        print(f"evaluate(): {args.frames} frames x {args.objects} objects, IoU modes "
              f"{', '.join(modes)}: median {median:.3f} s ({args.frames / median:.0f} frames/s) "
              f"over {args.repeats} runs")
    ratio = medians[OPTIONAL_IOU_MODES] / medians[IOU_MODES]
    print(f"{', '.join(OPTIONAL_IOU_MODES)} alone costs {ratio:.1f}x the two default modes")

if __name__ == "__main__":
    main()
