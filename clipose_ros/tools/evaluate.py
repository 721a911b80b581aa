"""``clipose-eval``: score a pose estimator on a NOCS-format test folder, the NOCS way.

For every frame: instance masks from a segmenter (``segmentation.py``: ground truth, per-frame
mask files in the NOCS results format, or a YOLO-seg model), then the estimator, then one result
pickle in the NOCS results convention. At the end:
``metrics.json`` (both IoU modes), a per-class table per mode on the terminal, and one PNG of
AP curves per mode. Everything lands in ``--out``, with a log file.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from clipose_ros import metrics
from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.core.estimators import CliposeEstimator, NocsMapEstimator
from clipose_ros.core.segmentation import GroundTruthMasks as GroundTruthMasks
from clipose_ros.core.segmentation import ResultFileMasks as ResultFileMasks
from clipose_ros.core.segmentation import build_segmenter, parse_class_thresholds
from clipose_ros.core.stages import PoseEstimator, Segmenter
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.core.visualize import draw_pose
from clipose_ros.core.yolo_backends import SegmenterWeightsError
from clipose_ros.data import nocs_format as nf
from clipose_ros.logs import log_to_terminal_and_file
from clipose_ros.model.loader import ModelFileError

log = logging.getLogger("clipose.eval")


def frame_key(root: Path, prefix: Path) -> str:
    """``scene_1/0000`` -> ``scene_1_0000``: a flat, unique name per frame."""
    return str(prefix.relative_to(root)).replace("/", "_")


def load_frame(
    prefix: Path, default_K: np.ndarray, with_nocs_map: bool
) -> tuple[Frame, nf.FrameLabel]:
    """The frame's images and its ground truth (K as ``nocs_format.frame_intrinsics`` says)."""
    label = nf.read_label(prefix)
    K = nf.frame_intrinsics(prefix, label, default_K)
    frame = Frame(
        rgb=nf.read_color(prefix),
        depth=nf.read_depth(prefix),
        K=K,
        frame_id=str(prefix),
        nocs_map=nf.read_coord(prefix) if with_nocs_map else None,
    )
    return frame, label


def attach_model_names(prefix: Path, label: nf.FrameLabel, instances: list[Instance]) -> None:
    """Name each unnamed instance after the ground-truth instance its mask overlaps most.

    Only the NOCS-map reference needs model names (a mug's label frame is per model).
    """
    unnamed = [inst for inst in instances if not inst.model_name]
    if not unnamed:
        return
    gt = nf.read_mask(prefix)
    models = dict(zip(label.instance_ids.tolist(), label.model_list, strict=True))
    for inst in unnamed:
        ids, counts = np.unique(gt[inst.mask], return_counts=True)
        keep = ids != nf.BACKGROUND_ID
        if keep.any():
            best = int(ids[keep][np.argmax(counts[keep])])
            inst.model_name = str(models.get(best, ""))


def find_mug_meta(data: Path) -> Path | None:
    """``obj_models/mug_meta.pkl`` beside the split folder (ours: OUT/obj_models; NOCS/SPD:
    data/obj_models next to data/Real/test or data/CAMERA/val)."""
    for parent in (data.parent, data.parent.parent):
        path = parent / "obj_models" / nf.MUG_META_FILE
        if path.is_file():
            return path
    return None


def frame_result(
    prefix: Path,
    label: nf.FrameLabel,
    poses: list[ObjectPose],
    model_extents: dict[str, np.ndarray] | None = None,
    ranking: str = "detection",
) -> dict:
    """The NOCS-convention result dict of one frame (gt in the OpenCV frame).

    ``pred_scores`` rank the predictions: the detector's score (``ranking="detection"``), or
    that times the pose network's rotation confidence (``"pose"``; 1 where an estimator has
    none). The confidences are kept as ``pred_pose_confidences`` either way.
    """
    n = len(label)
    gt_extents = np.array(
        [nf.instance_extents(prefix, label, i, model_extents) for i in range(n)]
    ).reshape(n, 3)
    gt_pose = [label.opencv_pose(i) for i in range(n)]
    gt_R = np.array([p[0] for p in gt_pose]).reshape(n, 3, 3)
    gt_t = np.array([p[1] for p in gt_pose]).reshape(n, 3)
    # The NOCS convention: RT carries s, scales are NOCS extents. A size-only estimate is the
    # same box as s = 1 with metric extents.
    pred_s = np.array([p.nocs_scale if np.isfinite(p.nocs_scale) else 1.0 for p in poses])
    pred_extents = np.array([p.size / s for p, s in zip(poses, pred_s, strict=True)])
    return metrics.make_result(
        label.class_ids,
        gt_R,
        gt_t,
        label.scales,
        gt_extents,
        [p.class_id for p in poses],
        [ranking_score(p, ranking) for p in poses],
        np.array([p.R for p in poses]).reshape(-1, 3, 3),
        np.array([p.t for p in poses]).reshape(-1, 3),
        pred_s.reshape(-1),
        pred_extents.reshape(-1, 3),
        gt_handle_visibility=label.handle_visibility,
        gt_bboxes=label.bboxes,
        pred_bboxes=np.array([p.bbox for p in poses]).reshape(-1, 4),
        pred_pose_confidences=np.array([p.pose_confidence for p in poses], dtype=np.float64),
    )


RANKINGS = ("detection", "pose")


def ranking_score(pose: ObjectPose, ranking: str) -> float:
    """The score a prediction is ranked by in the APs (see :func:`frame_result`)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, not {ranking!r}")
    if ranking == "pose" and np.isfinite(pose.pose_confidence):
        return float(pose.score * pose.pose_confidence)
    return float(pose.score)


GT_COLOR = (0, 220, 0)
PRED_COLOR = (255, 140, 0)


def write_overlay(path: Path, frame: Frame, result: dict, poses: list[ObjectPose]) -> None:
    """Ground-truth boxes (green) and estimates (orange, with class and score) on the image."""
    image = frame.rgb.copy()
    for RT, extents in zip(result["gt_RTs"], result["gt_scales"], strict=True):
        s = np.cbrt(np.linalg.det(RT[:3, :3]))
        draw_pose(image, frame.K, RT[:3, :3] / s, RT[:3, 3], s * extents, GT_COLOR, axes=False)
    for p in poses:
        draw_pose(image, frame.K, p.R, p.t, p.size, PRED_COLOR, f"{p.class_name} {p.score:.2f}")
    cv2.imwrite(str(path), image[:, :, ::-1])


def run_evaluation(
    data: Path,
    estimator: PoseEstimator,
    masks: Segmenter,
    out: Path,
    default_K: np.ndarray = CAMERA_INTRINSICS,
    max_frames: int | None = None,
    progress: bool = True,
    vis_frames: int = 0,
    model_extents: dict[str, np.ndarray] | None = None,
    ranking: str = "detection",
    iou_modes: tuple[str, ...] = metrics.IOU_MODES,
) -> dict:
    """Run ``estimator`` over every frame below ``data`` and score it; returns the metrics.

    ``ranking``: what orders the predictions in the APs (:func:`frame_result`); ``iou_modes``:
    the 3D IoU definitions scored (``metrics.KNOWN_IOU_MODES``; ``oriented`` is slower).

    The first ``vis_frames`` frames are also drawn with their boxes into ``out/vis``. A
    segmenter that times itself (``last_timings["segment_ms"]``) gets its median into the
    metrics.
    """
    frames = nf.list_frames(data, labelled=True)[:max_frames]
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    segment_ms = []
    start = time.perf_counter()
    if vis_frames:
        (out / "vis").mkdir(exist_ok=True)
    for index, prefix in enumerate(
        tqdm(frames, unit="frame", desc="evaluate", disable=not progress)
    ):
        frame, label = load_frame(prefix, default_K, estimator.needs_nocs_map)
        instances = masks.segment(frame)
        if "segment_ms" in masks.last_timings:
            segment_ms.append(masks.last_timings["segment_ms"])
        if estimator.needs_nocs_map:
            attach_model_names(prefix, label, instances)
        poses = estimator.estimate(frame, instances)
        result = frame_result(prefix, label, poses, model_extents, ranking)
        result["image_path"] = str(prefix)
        key = frame_key(data, prefix)
        metrics.save_result(results_dir / f"results_{key}.pkl", result)
        results.append(result)
        if index < vis_frames:
            write_overlay(out / "vis" / f"{key}.png", frame, result, poses)
    elapsed = time.perf_counter() - start
    log.info("%d frames estimated in %.1f s", len(frames), elapsed)
    scores = metrics.evaluate(results, iou_modes)
    scores["data"] = str(data)
    scores["estimator"] = type(estimator).__name__
    scores["segmenter"] = type(masks).__name__
    scores["ranking"] = ranking
    if segment_ms:
        scores["segment_ms_median"] = float(np.median(segment_ms))
        log.info("segmentation: median %.1f ms per frame", scores["segment_ms_median"])
    (out / "metrics.json").write_text(json.dumps(scores, indent=1, allow_nan=False))
    for mode in iou_modes:
        metrics.plot_ap_curves(scores, out / f"ap_curves_{mode}.png", mode)
    return scores


def build_estimator(name: str, data: Path | None = None, mug_meta: Path | None = None,
                    model: Path | None = None, mug_handle: bool = True,
                    subsets: int = 2, border_fit: bool = True,
                    laptop_lid: bool = True, box_fit: bool = True) -> PoseEstimator:
    if name == "nocs-map":
        path = mug_meta or (find_mug_meta(data) if data is not None else None)
        if path is None:
            log.warning("no obj_models/%s found: mug poses stay in the coordinate-map frame",
                        nf.MUG_META_FILE)
        return NocsMapEstimator(mug_meta=nf.load_mug_meta(path) if path else None)
    if name == "clipose":
        if model is None:
            raise ValueError("--estimator clipose needs --model PATH (e.g. models/clipose_pose.pt)")
        return CliposeEstimator(str(model), mug_handle=mug_handle, subsets=subsets,
                                border_fit=border_fit, laptop_lid=laptop_lid, box_fit=box_fit)
    raise ValueError(f"unknown estimator {name!r} (available: nocs-map, clipose)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="NOCS-format test folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--estimator", default="nocs-map",
        help="nocs-map: Umeyama+RANSAC from the frames' NOCS maps (ceiling reference); "
        "clipose: the exported pose network given by --model",
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="exported pose model for --estimator clipose (clipose-export output)",
    )
    parser.add_argument(
        "--no-mug-handle", action="store_true",
        help="clipose: keep the network's mug rotation (no handle search in the depth points)",
    )
    parser.add_argument(
        "--no-border-fit", action="store_true",
        help="clipose: keep the network's centre for objects the image border cuts (no fit of "
        "the box to their far side)",
    )
    parser.add_argument(
        "--no-box-fit", action="store_true",
        help="clipose: keep the network's centre (no slide of the box over the object's points)",
    )
    parser.add_argument(
        "--no-laptop-lid", action="store_true",
        help="clipose: keep the network's turn of laptops about their up axis (no lid plane fit)",
    )
    parser.add_argument(
        "--subsets", type=int, default=2,
        help="clipose: disjoint point subsets the network runs on, poses averaged (the node's "
        "pose_subsets; 1: the network once)",
    )
    parser.add_argument(
        "--masks", default="gt",
        help="'gt' for ground-truth masks, a folder of NOCS-results / SPD Mask R-CNN mask "
        "pickles, or yolo:WEIGHTS for a YOLO-seg model (.pt, .onnx, *_openvino_model)",
    )
    parser.add_argument(
        "--seg-score-threshold", type=float, default=0.5,
        help="yolo masks: minimum detection score (0.5 = the node's default)",
    )
    parser.add_argument(
        "--seg-class-thresholds", default="",
        help="yolo masks: per-class scores over --seg-score-threshold, e.g. 'laptop:0.3 "
        "bowl:0.35' (the node's class_score_thresholds)",
    )
    parser.add_argument(
        "--seg-max-containment", type=float, default=0.8,
        help="yolo masks: drop a box lying more than this share inside a better box of its "
        "class (1: keep all)",
    )
    parser.add_argument("--seg-imgsz", type=int, default=320, help="yolo masks: input long side")
    parser.add_argument(
        "--intrinsics", choices=["camera", "real"], default="camera",
        help="camera for frames with neither a K in the label nor a folder intrinsics.txt",
    )
    parser.add_argument(
        "--model-extents", type=Path, default=None,
        help="JSON or pickle: model name -> NOCS extents, for labels that store only scales",
    )
    parser.add_argument(
        "--mug-meta", type=Path, default=None,
        help="SPD's mug_meta.pkl for the NOCS-map reference (default: obj_models/ beside --data)",
    )
    parser.add_argument(
        "--ranking", choices=RANKINGS, default="detection",
        help="what orders the predictions in the APs: the detector's score, or that times the "
        "pose network's rotation confidence (with ground-truth masks every detection scores 1 "
        "and each AP is then about the hit rate squared)",
    )
    parser.add_argument(
        "--oriented-iou", action="store_true",
        help="also score with the true overlap of the boxes as oriented (IoU mode 'oriented'; "
        "the published tables use 'nocs', the axis-aligned fix is 'exact')",
    )
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument(
        "--vis", type=int, default=8, help="draw boxes on the first N frames into OUT/vis"
    )
    args = parser.parse_args(argv)
    log_to_terminal_and_file(args.out, "eval.log")
    try:
        estimator = build_estimator(
            args.estimator, args.data, args.mug_meta, args.model, not args.no_mug_handle,
            args.subsets, not args.no_border_fit, not args.no_laptop_lid, not args.no_box_fit,
        )
        masks = build_segmenter(
            args.masks, score_threshold=args.seg_score_threshold, imgsz=args.seg_imgsz,
            class_score_thresholds=parse_class_thresholds(args.seg_class_thresholds),
            max_containment=args.seg_max_containment,
        )
        model_extents = (
            nf.load_model_extents(args.model_extents) if args.model_extents else None
        )
        scores = run_evaluation(
            args.data, estimator, masks, args.out, nf.resolve_intrinsics(args.intrinsics),
            args.max_frames, vis_frames=args.vis, model_extents=model_extents,
            ranking=args.ranking,
            iou_modes=metrics.KNOWN_IOU_MODES if args.oriented_iou else metrics.IOU_MODES,
        )
    except (
        nf.NocsFormatError, FileNotFoundError, ValueError, SegmenterWeightsError, ModelFileError
    ) as err:
        raise SystemExit(f"clipose-eval: {err}") from err
    for mode in scores["modes"]:
        print(metrics.format_table(scores, mode))
    print(f"metrics: {args.out / 'metrics.json'}; AP curves: {args.out}/ap_curves_*.png; "
          f"overlays: {args.out / 'vis'}")


if __name__ == "__main__":
    main()
