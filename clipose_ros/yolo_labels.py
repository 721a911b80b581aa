"""YOLO-seg training labels from NOCS-format frames (``clipose-yolo-labels``).

One place for the conversion, used twice: ``clipose-synth`` writes the labels of the frames it
renders, and this tool converts any NOCS-format folder (CAMERA25, REAL275, ours) afterwards, so a
user with the real datasets trains the segmenter with the same commands as on synthetic data.

Output layout (the one ultralytics expects)::

    OUT/images/<split>/<frame key>.png -> the frame's _color.png (relative symlink, or a copy)
    OUT/labels/<split>/<frame key>.txt    one line per instance: class index, polygon
    OUT/data.yaml                         path, train, val, names (index i = NOCS class id i + 1)

A label line is ``<class index> x1 y1 x2 y2 ...``: the class index is the NOCS class id minus one
(``data.yaml`` names the six categories in NOCS order) and the polygon is the instance's largest
outer contour in coordinates normalised by the image width and height.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from clipose_ros.categories import CATEGORIES
from clipose_ros.data import nocs_format as nf
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.yolo_labels")
DATA_YAML = "data.yaml"


def instance_polygon(
    mask: np.ndarray, instance_id: int, bbox: Sequence[int] | None = None
) -> np.ndarray | None:
    """The largest outer contour of ``mask == instance_id`` as (k, 2) integer pixel (x, y), or
    None when the instance has no region of at least three contour points.

    ``bbox`` (y1, x1, y2, x2, end exclusive), when known, limits the search to that window
    (grown by the one-pixel margin ``findContours`` treats as empty): much faster on large images.
    Occluded objects can fall apart into pieces; only the largest piece is kept, so that every
    polygon lies inside its instance (joining the pieces would draw bridges across other objects).
    """
    h, w = mask.shape
    if bbox is None:
        rows, cols = np.nonzero(mask == instance_id)
        if len(rows) == 0:
            return None
        bbox = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    y1, x1, y2, x2 = (int(v) for v in bbox)
    y1, x1, y2, x2 = max(y1 - 1, 0), max(x1 - 1, 0), min(y2 + 1, h), min(x2 + 1, w)
    binary = (mask[y1:y2, x1:x2] == instance_id).view(np.uint8)
    contours, _ = cv2.findContours(
        binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x1, y1)
    )
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return contour if len(contour) >= 3 else None


def polygon_line(class_index: int, polygon: np.ndarray, width: int, height: int) -> str:
    """One YOLO-seg label line: class index and the polygon normalised to 0..1."""
    coords = " ".join(f"{x / width:.5f} {y / height:.5f}" for x, y in polygon)
    return f"{class_index} {coords}"


def yolo_lines(
    mask: np.ndarray,
    instance_ids: Sequence[int],
    class_ids: Sequence[int],
    bboxes: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """YOLO-seg label lines of one frame: NOCS class ids 1..6 become class indices 0..5;
    instances of other class ids (0 = background/distractor in some datasets) or without a
    visible region are left out."""
    h, w = mask.shape
    lines = []
    for k, (iid, cid) in enumerate(zip(instance_ids, class_ids, strict=True)):
        if not 1 <= int(cid) <= len(CATEGORIES):
            continue
        polygon = instance_polygon(mask, int(iid), None if bboxes is None else bboxes[k])
        if polygon is not None:
            lines.append(polygon_line(int(cid) - 1, polygon, w, h))
    return lines


def write_data_yaml(yolo_root: Path) -> Path | None:
    """``yolo_root/data.yaml`` for the splits under ``images/``: train on ``train``, validate
    on ``test`` (or ``val``). Ultralytics needs both keys; a dataset with one split names it
    for both, with a comment saying so. Returns the path (None when there is no split yet)."""
    images = Path(yolo_root) / "images"
    splits = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    if not splits:
        return None
    train = "train" if "train" in splits else splits[0]
    val = next((s for s in ("test", "val") if s in splits), splits[0])
    lines = [f"path: {Path(yolo_root).resolve()}", f"train: images/{train}", f"val: images/{val}"]
    if train == val:
        lines.insert(0, f"# only the '{train}' split exists: it serves as train and val")
    lines.append("names:")
    lines += [f"  {i}: {name}" for i, name in enumerate(CATEGORIES)]
    path = Path(yolo_root) / DATA_YAML
    path.write_text("\n".join(lines) + "\n")
    return path


def link_image(image: Path, link: Path, copy: bool = False) -> None:
    """Place ``image`` at ``link``: a relative symlink (no duplicate data), or a copy."""
    if link.is_symlink() or link.exists():
        link.unlink()
    if copy:
        shutil.copyfile(image, link)
    else:
        link.symlink_to(os.path.relpath(image, link.parent))


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
