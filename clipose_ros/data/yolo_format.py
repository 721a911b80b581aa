"""The YOLO-seg label format of NOCS-format frames: one polygon line per instance, data.yaml.

Shared by the generator (``clipose-synth`` writes the labels of the frames it renders) and
``clipose-yolo-labels`` (any NOCS-format folder afterwards), so it sits here in ``data/``, below
both. A label line is ``<class index> x1 y1 x2 y2 ...``: the class index is the NOCS class id
minus one (``data.yaml`` names the six categories in NOCS order) and the polygon is the
instance's largest outer contour in coordinates normalised by the image width and height.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES

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
