"""Test doubles for the node's segmenter and estimator, and a pose_node process that uses them.

They stand in for the shipped models so that the ROS plumbing is tested on its own:

- ``GroundTruthSegmenter`` recognises a frame of a NOCS-format folder by its RGB pixels and
  returns that frame's ground-truth instance masks (an unknown image gives no instances);
- ``NocsMapLookupEstimator`` looks the frame up the same way and runs the project's NOCS-map
  reference (Umeyama + RANSAC between the coordinate map and the received depth), so the pose
  is computed from the depth that came through DDS, not copied from the labels.

Run as a script, ``python node_doubles.py FOLDER [--delay S] --ros-args ...`` starts the real
PoseNode with a pipeline made of these doubles.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from clipose_ros.core.estimators import NocsMapEstimator
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.data import nocs_format as nf


def image_key(rgb: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16).hexdigest()


class FolderIndex:
    """Frames of a NOCS-format folder by the hash of their colour image."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder)
        self.prefixes = {image_key(nf.read_color(p)): p for p in nf.list_frames(self.root)}

    def find(self, frame: Frame) -> Path | None:
        return self.prefixes.get(image_key(frame.rgb))


class GroundTruthSegmenter:
    """The frame's ground-truth masks; ``delay_s`` makes it as slow as a real model."""

    def __init__(self, index: FolderIndex, delay_s: float = 0.0) -> None:
        self.index = index
        self.delay_s = delay_s
        self.last_timings: dict[str, float] = {}  # test doubles: nothing to time

    def segment(self, frame: Frame) -> list[Instance]:
        if self.delay_s:
            time.sleep(self.delay_s)
        prefix = self.index.find(frame)
        if prefix is None:
            return []
        label = nf.read_label(prefix)
        mask = nf.read_mask(prefix)
        out = []
        for iid, cid, box, model in zip(label.instance_ids, label.class_ids, label.bboxes,
                                        label.model_list, strict=True):
            out.append(Instance(int(cid), 1.0, mask == iid, np.asarray(box), model_name=model))
        return out


class NocsMapLookupEstimator:
    """NOCS-map reference on the frame's coordinate map (looked up) and the received depth."""

    needs_nocs_map = False

    def __init__(self, index: FolderIndex) -> None:
        self.index = index
        meta_path = index.root.parent / "obj_models" / nf.MUG_META_FILE
        mug_meta = nf.load_mug_meta(meta_path) if meta_path.is_file() else None
        # Few RANSAC rounds: the masks are exact, so almost every pixel is an inlier.
        self.reference = NocsMapEstimator(iterations=20, mug_meta=mug_meta)
        self.last_timings: dict[str, float] = {}

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]:
        start = time.perf_counter()
        prefix = self.index.find(frame)
        if prefix is None:
            return []
        frame.nocs_map = nf.read_coord(prefix)
        mid = time.perf_counter()
        poses = self.reference.estimate(frame, instances)
        self.last_timings = {"points_ms": 1e3 * (mid - start),
                             "pose_ms": 1e3 * (time.perf_counter() - mid)}
        return poses


def doubles_pipeline(folder: str | Path, delay_s: float = 0.0):
    from clipose_ros.core.pipeline import PosePipeline

    index = FolderIndex(folder)
    return PosePipeline(GroundTruthSegmenter(index, delay_s), NocsMapLookupEstimator(index))


def main(argv: list[str]) -> int:
    from clipose_ros.ros.node import PoseNode
    from clipose_ros.ros.runtime import run_node

    folder = argv[1]
    delay = 0.0
    if len(argv) > 3 and argv[2] == "--delay":
        delay = float(argv[3])
    pipeline = doubles_pipeline(folder, delay)
    return run_node(lambda: PoseNode(pipeline=pipeline), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
