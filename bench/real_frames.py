"""The segmenter, and the whole pipeline, on the few real frames at hand (`../shared/real_samples`).

Usage:
  .venv/bin/python bench/real_frames.py [--weights models/yoloseg_coco_nocs.onnx] [--imgsz 320]
      [--pose-model models/clipose_pose_clip.pt] [--score S] [--class-scores "laptop:0.35 ..."]
      [--samples ../shared/real_samples]
      [--out bench_out/real_frames]

What it reports (also in ``<out>/real_frames.json`` and ``real_frames.md``), with overlays
(``*_seg.png``: masks, classes and scores; ``real275_poses.png``: the pipeline's posed boxes):

- REAL275 frame: per object listed in the samples' README (class and a box read by eye), whether
  a detection of the right class covers it (box IoU >= 0.5), and every other detection as a
  false positive with its class, score and box;
- D435 mug: the IoU of the best mug mask with the frame's mask;
- ten CAMERA frames (real backgrounds, rendered objects): mask mAP50 over the six categories
  against their masks and meta (class 0 is a distractor, not ground truth);
- the pipeline (segmenter + pose network) on the REAL275 frame: which objects it publishes,
  with their axis confidences (for a mug the turn's is the handle search's, none if no handle);
- the pipeline on the D435 frame: the mug's pose, whether a handle was found (points, spread)
  and which way its x axis points in the image (the handle is on the mug's left there, by eye).

These frames are for looking and smoke tests: a handful of real frames says little about
accuracy, and nothing should be tuned on them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES
from clipose_ros.core.pipeline import PosePipeline, build_pipeline
from clipose_ros.core.segmentation import (
    YoloSegmenter,
    format_class_thresholds,
    parse_class_thresholds,
)
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.geometry import project
from clipose_ros.metrics import box_iou_2d as box_iou
from clipose_ros.metrics import mask_ap, mask_iou
from clipose_ros.ros.parameters import DEFAULT_POSE_MODEL, PoseNodeConfig

ROOT = Path(__file__).resolve().parents[1]
REAL275_K = np.array([[591.0125, 0, 322.525], [0, 590.16775, 244.11084], [0, 0, 1]])
D435_K = np.array([[606.9066, 0, 319.9248], [0, 606.2557, 240.7983], [0, 0, 1]])
CAMERA_K = np.array([[577.5, 0, 319.5], [0, 577.5, 239.5], [0, 0, 1]])
# The REAL275 sample's objects as its README lists them: class, box (x1, y1, x2, y2), +-10 px.
REAL275_OBJECTS = [
    ("black laptop", "laptop", (93, 117, 312, 312)),
    ("brown mug", "mug", (125, 262, 205, 355)),
    ("blue-and-white bowl", "bowl", (290, 188, 365, 242)),
    ("white bowl", "bowl", (370, 195, 440, 248)),
    ("white mug", "mug", (438, 188, 502, 247)),
    ("white can", "can", (378, 113, 408, 178)),
]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180)]


def xyxy(inst: Instance) -> tuple[int, int, int, int]:
    y1, x1, y2, x2 = (int(v) for v in inst.bbox)
    return x1, y1, x2, y2


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"real_frames: cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_depth_mm(path: Path) -> np.ndarray:
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
        raise SystemExit(f"real_frames: {path} is not a uint16 depth image")
    return depth.astype(np.float32) / 1000.0


def draw_instances(rgb: np.ndarray, instances: list[Instance]) -> np.ndarray:
    """Masks tinted by class, with class and score at the box corner."""
    image = rgb.copy()
    for inst in instances:
        color = np.array(PALETTE[inst.class_id - 1], np.float32)
        image[inst.mask] = (0.5 * image[inst.mask] + 0.5 * color).astype(np.uint8)
        x1, y1, x2, y2 = xyxy(inst)
        cv2.rectangle(image, (x1, y1), (x2, y2), tuple(int(c) for c in color), 2)
        cv2.putText(image, f"{inst.class_name} {inst.score:.2f}", (x1, max(y1 - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return image


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def real275(seg: YoloSegmenter, samples: Path, out: Path) -> dict:
    folder = samples / "real275_cppf"
    rgb = read_rgb(folder / "0000_color.png")
    depth = read_depth_mm(folder / "0000_depth.png")
    found = seg.segment(Frame(rgb, depth, REAL275_K))
    save_rgb(out / "real275_seg.png", draw_instances(rgb, found))
    used: set[int] = set()
    objects = []
    for label, category, box in REAL275_OBJECTS:
        candidates = [(box_iou(box, xyxy(d)), i) for i, d in enumerate(found)
                      if i not in used and d.class_name == category]
        iou, index = max(candidates, default=(0.0, -1))
        hit = iou >= 0.5
        if hit:
            used.add(index)
        objects.append({"object": label, "class": category, "found": hit,
                        "box_iou": round(iou, 3),
                        "score": round(found[index].score, 3) if hit else None})
    false_positives = [
        {"class": d.class_name, "score": round(d.score, 3), "box_xyxy": list(xyxy(d)),
         "overlaps": max(((round(box_iou(box, xyxy(d)), 2), label)
                          for label, _, box in REAL275_OBJECTS), default=(0, ""))}
        for i, d in enumerate(found) if i not in used
    ]
    return {"objects": objects, "found": sum(o["found"] for o in objects),
            "false_positives": false_positives}


def d435(seg: YoloSegmenter, samples: Path, out: Path) -> dict:
    folder = samples / "d435_mug_sarnet"
    rgb = read_rgb(folder / "0000_image.png")
    depth = read_depth_mm(folder / "0000_depth.png")
    truth = cv2.imread(str(folder / "0000_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    found = seg.segment(Frame(rgb, depth, D435_K))
    save_rgb(out / "d435_seg.png", draw_instances(rgb, found))
    mugs = [d for d in found if d.class_name == "mug"]
    best = max((mask_iou(d.mask, truth) for d in mugs), default=0.0)
    return {"mug_found": bool(mugs) and best >= 0.5, "mask_iou": round(best, 3),
            "detections": [(d.class_name, round(d.score, 3)) for d in found]}


def camera25(seg: YoloSegmenter, samples: Path, out: Path) -> dict:
    folder = samples / "camera25_train" / "train" / "00000"
    frames = []
    first = None
    for color in sorted(folder.glob("*_color.png")):
        prefix = str(color)[: -len("_color.png")]
        rgb = read_rgb(color)
        ids = cv2.imread(prefix + "_mask.png", cv2.IMREAD_UNCHANGED)
        if ids.ndim == 3:
            ids = ids[:, :, 2]
        truths = []
        for line in Path(prefix + "_meta.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and 1 <= int(parts[1]) <= len(CATEGORIES):
                mask = ids == int(parts[0])
                if mask.any():
                    truths.append((int(parts[1]), mask))
        found = seg.segment(Frame(rgb, np.zeros(rgb.shape[:2], np.float32), CAMERA_K))
        frames.append(([(d.class_id, d.score, d.mask) for d in found], truths))
        if first is None:
            first = draw_instances(rgb, found)
    if first is not None:
        save_rgb(out / "camera25_seg.png", first)
    scores = mask_ap(frames, 0.5)
    return {"frames": len(frames), "mask_mAP50": scores["mAP"], "per_class": scores["per_class"],
            "n_gt": scores["n_gt"]}


def pipeline_real275(pipe: PosePipeline, samples: Path, out: Path) -> dict:
    from clipose_ros.core.visualize import draw_overlay

    folder = samples / "real275_cppf"
    rgb = read_rgb(folder / "0000_color.png")
    depth = read_depth_mm(folder / "0000_depth.png")
    pipe.tracker.reset()  # each frame stands alone
    result = pipe.process(Frame(rgb, depth, REAL275_K))
    save_rgb(out / "real275_poses.png", draw_overlay(rgb, REAL275_K, result.poses))
    published = []
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    for p in result.poses:
        # The posed box projected into the image, against the listed box of the same class.
        corners = (np.asarray(p.R) @ (signs * np.asarray(p.size)).T).T + np.asarray(p.t)
        uv = (REAL275_K @ corners.T).T
        uv = uv[:, :2] / np.maximum(uv[:, 2:], 1e-6)
        projected = (*uv.min(0), *uv.max(0))
        near = [label for label, category, box in REAL275_OBJECTS
                if category == p.class_name and box_iou(box, projected) >= 0.3]
        published.append({"class": p.class_name, "score": round(p.score, 3),
                          "t_m": [round(float(x), 3) for x in p.t],
                          "size_m": [round(float(x), 3) for x in p.size],
                          # (up axis, turn about it); None: unknown or undefined
                          "axis_confidence": [None if np.isnan(c) else round(float(c), 3)
                                              for c in p.axis_confidence],
                          "on_object": near[0] if near else None})
    # laptops: the lid plane found in the depth and how far it turned the network's pose
    lids = [{"points": lid.points, "inlier_fraction": round(lid.inlier_fraction, 3),
             "turn_deg": round(lid.turn_deg, 2)} for lid in pipe.estimator.lids if lid]
    return {"published": published, "skipped": result.skipped, "lids": lids,
            "phantoms": sum(p["on_object"] is None for p in published)}


def pipeline_d435(pipe: PosePipeline, samples: Path, out: Path) -> dict:
    from clipose_ros.core.visualize import draw_overlay

    folder = samples / "d435_mug_sarnet"
    rgb = read_rgb(folder / "0000_image.png")
    depth = read_depth_mm(folder / "0000_depth.png")
    truth = cv2.imread(str(folder / "0000_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    pipe.tracker.reset()
    result = pipe.process(Frame(rgb, depth, D435_K))
    save_rgb(out / "d435_poses.png", draw_overlay(rgb, D435_K, result.poses))
    mugs = []
    for p, handle in zip(result.poses, pipe.estimator.handles, strict=True):
        if p.class_name != "mug":
            continue
        # the x axis as the image shows it: from the centre's pixel to the pixel 5 cm along x
        uv = project(np.array([p.t, p.t + 0.05 * p.R[:, 0]]), D435_K)
        step = (uv[1] - uv[0]) / max(float(np.linalg.norm(uv[1] - uv[0])), 1e-9)
        centre = np.round(uv[0]).astype(int)
        inside = (0 <= centre[1] < truth.shape[0] and 0 <= centre[0] < truth.shape[1]
                  and bool(truth[centre[1], centre[0]]))
        mugs.append({"score": round(p.score, 3), "t_m": [round(float(x), 3) for x in p.t],
                     "centre_on_mug": inside,
                     "x_axis_in_image": [round(float(x), 2) for x in step],
                     "handle": None if handle is None else
                     {"points": handle.points, "spread_deg": round(handle.spread_deg, 1)},
                     "axis_confidence": [None if np.isnan(c) else round(float(c), 3)
                                         for c in p.axis_confidence]})
    return {"mugs": mugs, "others": [p.class_name for p in result.poses if p.class_name != "mug"]}


def markdown(report: dict) -> str:
    r, d, c, p = (report[k] for k in ("real275", "d435", "camera25", "pipeline"))
    lines = [f"# Real frames: `{report['weights']}` (input {report['input_hw']}, score >= "
             f"{report['score']}; per class: {report['class_scores'] or 'none'})", "",
             f"REAL275 frame: **{r['found']} / {len(r['objects'])}** objects found with the right "
             f"class, **{len(r['false_positives'])}** false positive(s)", "",
             "| object | class | found | box IoU | score |", "|---|---|---|---|---|"]
    lines += [f"| {o['object']} | {o['class']} | {'yes' if o['found'] else 'no'} | "
              f"{o['box_iou']} | {o['score'] if o['score'] is not None else '-'} |"
              for o in r["objects"]]
    lines += [f"- false positive: {f['class']} {f['score']} at {f['box_xyxy']}"
              for f in r["false_positives"]]
    lines += ["", f"D435 mug: found {d['mug_found']}, mask IoU **{d['mask_iou']}**", "",
              f"CAMERA frames ({c['frames']}): mask mAP50 **{c['mask_mAP50']:.3f}** "
              f"(per class: " + ", ".join(f"{k} {v:.2f}" for k, v in c["per_class"].items()
                                         if v is not None) + ")", "",
              f"Pipeline on the REAL275 frame: {len(p['published'])} objects published, "
              f"{p['phantoms']} not on a listed object"]
    lines += [f"- {x['class']} {x['score']} on {x['on_object']}, t {x['t_m']} m, size "
              f"{x['size_m']} m, axis confidence (y, x) {x['axis_confidence']}"
              for x in p["published"]]
    lines += [f"- laptop lid in the depth: {x['points']} points on its plane "
              f"({100 * x['inlier_fraction']:.0f} %), turned the network's pose by "
              f"{x['turn_deg']}°" for x in p["lids"]]
    m = report["pipeline_d435"]
    lines += ["", f"Pipeline on the D435 frame: {len(m['mugs'])} mug(s), other objects "
                  f"{m['others'] or 'none'}"]
    lines += [f"- mug {x['score']}, centre on the mug {x['centre_on_mug']}, x axis in the image "
              f"(u, v) {x['x_axis_in_image']} (handle on the left: about (-1, 0)), handle "
              f"{x['handle']}, axis confidence (y, x) {x['axis_confidence']}" for x in m["mugs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "models/yoloseg_coco_nocs.onnx")
    parser.add_argument("--imgsz", type=int, default=320, help="long side, for .pt weights")
    parser.add_argument("--pose-model", type=Path, default=ROOT / DEFAULT_POSE_MODEL)
    parser.add_argument("--score", type=float, default=None,
                        help="the node's score_threshold (default: the node's)")
    parser.add_argument("--class-scores", default=None,
                        help="the node's class_score_thresholds, e.g. 'laptop:0.3' (default: "
                        "the node's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=Path, default=ROOT.parent / "shared" / "real_samples")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "real_frames")
    parser.add_argument("--no-pipeline", action="store_true", help="segmenter only")
    args = parser.parse_args(argv)
    if not args.samples.is_dir():
        sys.exit(f"real_frames: no real samples at {args.samples} (the shared folder); "
                 "pass --samples")
    args.out.mkdir(parents=True, exist_ok=True)
    node = PoseNodeConfig()
    score = node.score_threshold if args.score is None else args.score
    class_scores = parse_class_thresholds(
        node.class_score_thresholds if args.class_scores is None else args.class_scores)
    seg = YoloSegmenter(args.weights, imgsz=args.imgsz, score_threshold=score,
                        threads=args.threads, class_score_thresholds=class_scores)
    report = {"weights": str(args.weights), "score": score,
              "class_scores": format_class_thresholds(class_scores),
              "input_hw": list(seg.input_shape(480, 640)),
              "real275": real275(seg, args.samples, args.out),
              "d435": d435(seg, args.samples, args.out),
              "camera25": camera25(seg, args.samples, args.out)}
    if args.no_pipeline:
        report["pipeline"] = {"published": [], "skipped": [], "lids": [], "phantoms": 0}
        report["pipeline_d435"] = {"mugs": [], "others": []}
    else:
        pipe = build_pipeline(args.pose_model, args.weights, imgsz=args.imgsz,
                              score_threshold=score, threads=args.threads,
                              class_score_thresholds=class_scores)
        report["pipeline"] = pipeline_real275(pipe, args.samples, args.out)
        report["pipeline_d435"] = pipeline_d435(pipe, args.samples, args.out)
    (args.out / "real_frames.json").write_text(json.dumps(report, indent=1))
    (args.out / "real_frames.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
