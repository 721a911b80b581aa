"""Generator throughput: frames/s at 640x480 with 4 objects, 1 and 2 worker processes.

Usage: .venv/bin/python bench/synth_speed.py [--frames 40] [--repeats 3]
Prints the median over repeats and the 2-worker / 1-worker ratio, measured in one run.

Every run is a cold start, as a fresh ``clipose-synth`` run is: the per-process caches (shape
instances, camera rays, ...) are emptied first, as forked workers would otherwise inherit the
parent's warm ones. So the time includes building and exporting the procedural shapes drawn from
the per-category pool of ``SynthConfig.instances_per_category`` (50) instances, and every frame is
written to disk (PNGs, label pickle, meta, YOLO label and link).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from clipose_ros.data.synth import SynthConfig, clear_process_caches, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = SynthConfig(min_objects=4, max_objects=4)
    medians = {}
    for workers in (1, 2):
        runs = []
        for r in range(args.repeats):
            clear_process_caches()
            with tempfile.TemporaryDirectory() as tmp:
                fps = generate(
                    Path(tmp), "train", args.frames // 4, 4, seed=r, workers=workers,
                    cfg=cfg, progress=False,
                )
            runs.append(fps)
        medians[workers] = statistics.median(runs)
        print(f"workers={workers}: median {medians[workers]:.2f} frames/s "
              f"(runs: {', '.join(f'{x:.2f}' for x in runs)})")
    print(f"ratio 2 workers / 1 worker: {medians[2] / medians[1]:.2f}")


if __name__ == "__main__":
    main()
