"""NOCS-format frames and their ground truth, as the synthetic camera replays them. No ROS.

:func:`render_scenes` renders test-split scenes with the project's generator; :func:`load_frames`
reads any NOCS-format folder into :class:`ReplayFrame` s (images, K, the labelled poses and the
tight boxes of the objects). Ground-truth ids are ``<frame>#<instance id>``, with ``#sym``
appended when the rotation about the object's y axis is not observable (bottle, bowl, can, and a
mug whose handle is hidden), so checkers score those by the y axis only, as the NOCS evaluation
does. For our generated mugs the tight box is computed exactly from the model's label frame in
``obj_models/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipose_ros.categories import CLASS_IDS, is_symmetric
from clipose_ros.core.boxes import object_box
from clipose_ros.core.structures import ObjectPose
from clipose_ros.data import nocs_format as nf

SYMMETRIC_SUFFIX = "#sym"


@dataclass
class ReplayFrame:
    """One frame to replay: images, intrinsics and ground truth (camera frame)."""

    key: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) uint16, 0 = invalid
    K: np.ndarray
    truth: list[ObjectPose] = field(default_factory=list)  # key = ground-truth id
    boxes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # tight boxes
    prefix: Path | None = None


def truth_is_symmetric(truth_id: str) -> bool:
    """Whether a ground-truth id says the rotation about y is unobservable."""
    return truth_id.endswith(SYMMETRIC_SUFFIX)


def _model_info(root: Path, model: str) -> dict | None:
    """``obj_models/<split>/<model>.json`` of our generator, looked up beside/above ``root``."""
    for base in (root, *root.parents[:2]):
        for path in (base / "obj_models").glob(f"*/{model}.json"):
            return json.loads(path.read_text())
    return None


def _truth(root: Path, prefix: Path, label: nf.FrameLabel, key: str):
    truth, boxes = [], []
    for i in range(len(label)):
        R, t = label.opencv_pose(i)
        s = float(label.scales[i])
        extents = nf.instance_extents(prefix, label, i)
        class_id = int(label.class_ids[i])
        symmetric = is_symmetric(class_id, bool(label.handle_visibility[i]))
        pose = ObjectPose(
            class_id=class_id, score=1.0, R=np.asarray(R, np.float64),
            t=np.asarray(t, np.float64), size=s * extents, bbox=label.bboxes[i], nocs_scale=s,
            key=f"{key}#{int(label.instance_ids[i])}" + (SYMMETRIC_SUFFIX if symmetric else ""),
        )
        box = object_box(pose)
        info = _model_info(root, label.model_list[i]) if class_id == CLASS_IDS["mug"] else None
        if info and "label_shift" in info and "nocs_extents" in info:
            # p_label = label_scale * (p_coord + shift): the tight (coordinate-map) box is
            # centred at p_coord = 0, i.e. at s_coord * shift in the object frame.
            s_coord = s * float(info["label_scale"])
            offset = s_coord * np.asarray(info["label_shift"], np.float64)
            box = (pose.t + pose.R @ offset, s_coord * np.asarray(info["nocs_extents"]))
        truth.append(pose)
        boxes.append(box)
    return truth, boxes


def load_frames(
    folder: str | Path, intrinsics: str = "camera", max_frames: int | None = None
) -> list[ReplayFrame]:
    """Every frame below a NOCS-format folder (labelled frames carry ground truth)."""
    root = Path(folder)
    default_K = nf.resolve_intrinsics(intrinsics)
    frames = []
    for prefix in nf.list_frames(root)[:max_frames]:
        key = str(prefix.relative_to(root)).replace("/", "_")
        rgb = nf.read_color(prefix)
        depth_mm = np.round(nf.read_depth(prefix) * 1000.0).astype(np.uint16)
        truth, boxes, K = [], [], default_K
        if nf.frame_path(prefix, "label.pkl").is_file():
            label = nf.read_label(prefix)
            K = nf.frame_intrinsics(prefix, label, default_K)
            truth, boxes = _truth(root, prefix, label, key)
        else:
            K = nf.read_folder_intrinsics(prefix.parent)
            K = default_K if K is None else K
        frames.append(ReplayFrame(key, rgb, depth_mm, np.asarray(K, np.float64), truth, boxes,
                                  prefix))
    return frames


def render_scenes(
    out: Path, scenes: int, frames_per_scene: int = 1, seed: int = 0, min_objects: int = 3,
    max_objects: int = 5, depth_noise: bool = True, distractors: bool = True,
    sensor: str | None = None,
) -> Path:
    """Render test-split scenes with the project's generator into ``out``; returns the folder
    of frames (``out/test``). ``sensor``: a realism preset (room scene, sensor artefacts, as
    ``clipose-synth --preset``), or None for the ideal frames on a plain table."""
    # Imported here: the generator loads the renderer, which replaying a folder does not need.
    from clipose_ros.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        min_objects=min_objects, max_objects=max_objects, depth_noise=depth_noise,
        max_distractors=SynthConfig.max_distractors if distractors else 0,
        sensor=sensor, scene="plain" if sensor is None else "room",
    )
    generate(out, "test", scenes, frames_per_scene, seed=seed, workers=0, cfg=cfg,
             progress=False)
    return out / "test"
