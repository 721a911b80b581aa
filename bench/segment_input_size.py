"""What the segmenter's input size buys on real frames and costs on the CPU.

Usage:
  .venv/bin/python bench/segment_input_size.py --weights models/yoloseg_coco_nocs.pt
      [--sizes 320 416 480 640] [--threads 2] [--frames 40] [--out bench_out/segment_input_size]

For each long side: exports the weights to ONNX at the fixed input a 640x480 frame needs
(e.g. 416 -> 320x416), times ``YoloSegmenter`` through OpenVINO (the node's CPU default: its own
precision choice, bfloat16 on CPUs that have it) on generated 640x480 frames (median ms per
frame: letterbox, network, NMS, full-resolution masks), and runs the real-sample checks of
``bench/real_frames.py`` (REAL275 objects found and false positives, the D435 mug's mask IoU,
CAMERA mask mAP50). Run it on an idle machine: the times are meaningless beside a training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_frames  # noqa: E402 - the sibling benchmark script
import segment_speed  # noqa: E402

from clipose_ros.core.segmentation import YoloSegmenter, input_shape_for
from clipose_ros.tools.train_seg import export_yolo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="ultralytics .pt")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 480, 640])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--score", type=float, default=0.5)
    parser.add_argument("--data", type=Path, default=Path("/work/data/synth_v3/test"))
    parser.add_argument("--samples", type=Path, default=real_frames.ROOT.parent / "shared"
                        / "real_samples")
    parser.add_argument("--out", type=Path, default=Path("bench_out/segment_input_size"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames = segment_speed.load_frames(args.data, args.frames)
    rows = []
    for size in args.sizes:
        hw = input_shape_for(480, 640, size)
        copy = args.out / f"{args.weights.stem}_{hw[0]}x{hw[1]}.pt"
        shutil.copyfile(args.weights, copy)
        onnx = export_yolo(copy, "onnx", hw)
        seg = YoloSegmenter(onnx, threads=args.threads, score_threshold=args.score)
        timing = segment_speed.time_segmenter(seg, frames)
        timing.pop("_outputs")
        folder = args.out / f"{hw[0]}x{hw[1]}"
        folder.mkdir(exist_ok=True)
        r275 = real_frames.real275(seg, args.samples, folder)
        d435 = real_frames.d435(seg, args.samples, folder)
        cam = real_frames.camera25(seg, args.samples, folder)
        rows.append({"input_hw": list(hw), "segment_ms": timing["segment_ms"],
                     "inference_ms": timing["inference_ms"],
                     "precision": seg.model.precision,
                     "real275_found": r275["found"], "real275_fp": len(r275["false_positives"]),
                     "d435_mask_iou": d435["mask_iou"], "camera25_mask_mAP50": cam["mask_mAP50"]})
    load = os.getloadavg()
    print(f"{args.weights}, {len(frames)} frames, {args.threads} threads, score >= {args.score}; "
          f"load average after: {load[0]:.1f}")
    print("| input | OpenVINO precision | ms/frame | network ms | REAL275 found / 6 | false pos. "
          "| D435 mask IoU | CAMERA mask mAP50 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input_hw'][0]}x{r['input_hw'][1]} | {r['precision']} | "
              f"{r['segment_ms']:.1f} | {r['inference_ms']:.1f} | {r['real275_found']} | "
              f"{r['real275_fp']} | {r['d435_mask_iou']:.3f} | {r['camera25_mask_mAP50']:.3f} |")
    (args.out / "segment_input_size.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
