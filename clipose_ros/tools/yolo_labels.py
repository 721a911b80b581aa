"""YOLO-seg training labels from NOCS-format frames (``clipose-yolo-labels``).

One place for the conversion, used twice: ``clipose-synth`` writes the labels of the frames it
renders, and this tool converts any NOCS-format folder (CAMERA25, REAL275, ours) afterwards, so a
user with the real datasets trains the segmenter with the same commands as on synthetic data.

Output layout (the one ultralytics expects)::

    OUT/images/<split>/<frame key>.png -> the frame's _color.png (relative symlink, or a copy)
    OUT/labels/<split>/<frame key>.txt    one line per instance: class index, polygon
    OUT/data.yaml                         path, train, val, names (index i = NOCS class id i + 1)

The label lines and ``data.yaml`` are written by ``clipose_ros.data.yolo_format`` (shared with the
generator).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipose_ros.data import nocs_format as nf
from clipose_ros.data.yolo_format import DATA_YAML, link_image, write_data_yaml, yolo_lines
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.yolo_labels")


def frame_stem(root: Path, prefix: Path) -> str:
    """``scene_1/0000`` below ``root`` -> ``scene_1_0000``: a flat, unique file name."""
    return str(prefix.relative_to(root)).replace(os.sep, "_")


@dataclass
class ConvertStats:
    frames: int = 0
    instances: int = 0
    skipped_instances: int = 0  # other class ids, or no visible region

    def add(self, other: ConvertStats) -> None:
        self.frames += other.frames
        self.instances += other.instances
        self.skipped_instances += other.skipped_instances


def _convert_frame(job: tuple[Path, Path, Path, str, bool]) -> ConvertStats:
    root, prefix, out, split, copy = job
    mask = nf.read_mask(prefix)
    rows = nf.read_meta(prefix)
    present = set(np.unique(mask).tolist())
    ids = [iid for iid, _, _ in rows if iid in present]
    classes = [cid for iid, cid, _ in rows if iid in present]
    lines = yolo_lines(mask, ids, classes)
    stem = frame_stem(root, prefix)
    link_image(nf.frame_path(prefix, "color.png"), out / "images" / split / f"{stem}.png", copy)
    (out / "labels" / split / f"{stem}.txt").write_text("".join(f"{x}\n" for x in lines))
    return ConvertStats(1, len(lines), len(rows) - len(lines))


def convert(
    data: Path,
    out: Path,
    split: str,
    copy: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> ConvertStats:
    """Write YOLO-seg images and labels of every frame below ``data`` as split ``split`` of
    ``out``, then (re)write ``out/data.yaml``. Needs ``_color.png``, ``_mask.png`` and
    ``_meta.txt`` per frame (the label pickle is not needed)."""
    data, out = Path(data), Path(out)
    if not split or os.sep in split or split.startswith("."):
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    frames = nf.list_frames(data)
    for sub in ("images", "labels"):
        (out / sub / split).mkdir(parents=True, exist_ok=True)
    jobs = [(data, prefix, out, split, copy) for prefix in frames]
    stats = ConvertStats()
    bar = tqdm(total=len(jobs), unit="frame", desc=f"yolo labels {split}", disable=not progress)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for s in pool.imap_unordered(_convert_frame, jobs, chunksize=16):
                stats.add(s)
                bar.update()
    else:
        for job in jobs:
            stats.add(_convert_frame(job))
            bar.update()
    bar.close()
    write_data_yaml(out)
    log.info("%s -> %s (split %s): %d frames, %d instances, %d skipped (other class ids or not "
             "visible)", data, out, split, stats.frames, stats.instances, stats.skipped_instances)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="NOCS-format folder (e.g. CAMERA/train, Real/test, synth/train)")
    parser.add_argument("--out", type=Path, required=True, help="YOLO dataset folder")
    parser.add_argument("--split", required=True,
                        help="split name in OUT (train, test or val; data.yaml validates on "
                             "test, else val)")
    parser.add_argument("--copy", action="store_true", help="copy images instead of symlinking")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    log_to_terminal_and_file(args.out, "yolo_labels.log")
    try:
        stats = convert(args.data, args.out, args.split, args.copy, args.workers)
    except (nf.NocsFormatError, ValueError, OSError) as err:
        raise SystemExit(f"clipose-yolo-labels: {err}") from err
    print(f"{stats.frames} frames, {stats.instances} instances -> {args.out / DATA_YAML}")


if __name__ == "__main__":
    main()
