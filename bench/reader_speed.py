"""Dataset reader throughput: per-instance samples/s (points + CLIP crop + labels).

Usage: .venv/bin/python bench/reader_speed.py [--scenes 10] [--repeats 3]
Generates a small synthetic split first, then reads it with and without the training
augmentations, in this process and through a 2-worker DataLoader. Prints medians over repeats
and the augmentation and worker ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from clipose_ros.data.dataset import NocsInstanceDataset
from clipose_ros.data.synth import generate


def samples_per_second(dataset: NocsInstanceDataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    n = sum(len(batch["class_id"]) for batch in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), "train", args.scenes, 4, seed=0, workers=2, progress=False)
        results = {}
        for train in (False, True):
            dataset = NocsInstanceDataset(Path(tmp) / "train", train=train, seed=0)
            for workers in (0, 2):
                runs = [samples_per_second(dataset, workers) for _ in range(args.repeats)]
                results[train, workers] = statistics.median(runs)
                print(f"augment={train!s:5} workers={workers}: median "
                      f"{results[train, workers]:.0f} samples/s over {len(dataset)} instances")
    print(f"ratio augmented / plain (in process): {results[True, 0] / results[False, 0]:.2f}")
    print(f"ratio 2 workers / in process (augmented): {results[True, 2] / results[True, 0]:.2f}")


if __name__ == "__main__":
    main()
