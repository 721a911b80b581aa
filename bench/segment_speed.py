"""Segmentation speed per weights format: 640x480 frame in, full-resolution masks out.

Usage:
  .venv/bin/python bench/segment_speed.py [--weights models/yoloseg_synth.pt]
      [--onnx models/yoloseg_synth.onnx] [--data /work/data/synth_v2/test] [--frames 60]
      [--threads 2] [--out bench_out/segment_speed.json]

Runs ``YoloSegmenter.segment`` (letterbox, network, NMS, masks at the frame's resolution) on real
frames for each back-end that loads here: PyTorch (.pt), ONNX Runtime and OpenVINO (f32 and, on
CPUs with AVX512-BF16, OpenVINO's default bfloat16) on the ONNX export, CUDA where present; and,
for reference, ultralytics' own ``predict`` on the .pt with full-resolution masks. Prints the
median ms per frame (and its parts) per format, and how closely each format's masks agree with
the PyTorch ones (mean mask IoU of matched detections), since a faster precision must not
silently change the output. Also prints the load average: numbers taken beside another job are
not comparable to an idle machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from clipose_ros.core.segmentation import YoloSegmenter
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data import nocs_format as nf
from clipose_ros.data.synth import SynthConfig, generate


def load_frames(data: Path | None, n: int) -> list[Frame]:
    if data is None or not data.is_dir():
        data = Path("bench_out/segment_speed_frames")
        if not data.is_dir():
            generate(data, "test", max(n // 4, 1), 4, seed=7, cfg=SynthConfig(), progress=False)
        data = data / "test"
    prefixes = nf.list_frames(data)[:n]
    return [Frame(nf.read_color(p), np.zeros(nf.read_color(p).shape[:2], np.float32),
                  np.eye(3)) for p in prefixes]


def mask_agreement(ref: list[list[Instance]], got: list[list[Instance]]) -> float:
    """Mean IoU of each reference mask with the best same-class mask of the other format
    (0 for a missing one)."""
    ious = []
    for a_list, b_list in zip(ref, got, strict=True):
        for a in a_list:
            best = 0.0
            for b in b_list:
                if b.class_id == a.class_id:
                    inter = np.count_nonzero(a.mask & b.mask)
                    best = max(best, inter / max(np.count_nonzero(a.mask | b.mask), 1))
            ious.append(best)
    return float(np.mean(ious)) if ious else float("nan")


def time_segmenter(seg: YoloSegmenter, frames: list[Frame], warmup: int = 5) -> dict:
    for frame in frames[:warmup]:
        seg.segment(frame)
    parts: dict[str, list[float]] = {}
    outputs = []
    for frame in frames:
        outputs.append(seg.segment(frame))
        for key, value in seg.last_timings.items():
            parts.setdefault(key, []).append(value)
    row = {k: statistics.median(v) for k, v in parts.items()}
    row["detections_per_frame"] = float(np.mean([len(o) for o in outputs]))
    return row | {"_outputs": outputs}


def time_ultralytics_predict(weights: Path, frames: list[Frame], imgsz: int, threads: int,
                             warmup: int = 5) -> dict:
    """ultralytics' generic predict with full-resolution masks (retina_masks), for reference."""
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    model = YOLO(str(weights), task="segment")
    kwargs = dict(imgsz=imgsz, conf=0.5, retina_masks=True, verbose=False, device="cpu")
    for frame in frames[:warmup]:
        model.predict(frame.rgb[:, :, ::-1], **kwargs)
    times = []
    for frame in frames:
        start = time.perf_counter()
        result = model.predict(frame.rgb[:, :, ::-1], **kwargs)[0]
        if result.masks is not None:
            result.masks.data.cpu().numpy()
        times.append(1000 * (time.perf_counter() - start))
    return {"segment_ms": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("models/yoloseg_synth.pt"))
    parser.add_argument("--onnx", type=Path, default=None,
                        help="ONNX export (default: the weights' name with .onnx)")
    parser.add_argument("--data", type=Path, default=Path("/work/data/synth_v2/test"),
                        help="NOCS-format frames (rendered here when missing)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path("bench_out/segment_speed.json"))
    args = parser.parse_args()
    onnx = args.onnx or args.weights.with_suffix(".onnx")
    frames = load_frames(args.data, args.frames)
    load_before = os.getloadavg()
    configs = [("PyTorch (.pt)", args.weights, "torch", "auto", "cpu")]
    if onnx.is_file():
        configs += [
            ("ONNX Runtime (.onnx)", onnx, "onnxruntime", "auto", "cpu"),
            ("OpenVINO f32 (.onnx)", onnx, "openvino", "f32", "cpu"),
            ("OpenVINO default precision (.onnx)", onnx, "openvino", "auto", "cpu"),
        ]
    try:
        import torch

        if torch.cuda.is_available():
            configs.append(("PyTorch CUDA (.pt)", args.weights, "torch", "auto", "cuda"))
    except ImportError:
        pass
    rows, reference = {}, None
    for name, path, backend, precision, device in configs:
        try:
            seg = YoloSegmenter(path, device=device, imgsz=args.imgsz, backend=backend,
                                threads=args.threads, openvino_precision=precision)
        except Exception as err:  # noqa: BLE001 - a format that does not load here is reported
            rows[name] = {"error": str(err)}
            continue
        row = time_segmenter(seg, frames)
        outputs = row.pop("_outputs")
        if reference is None:
            reference = outputs
        row["mask_iou_vs_pytorch"] = mask_agreement(reference, outputs)
        row["input_hw"] = list(seg.input_shape(480, 640))
        if backend == "openvino":
            name = f"{name}: {seg.model.precision}"
        rows[name] = row
    rows["ultralytics predict (.pt, reference)"] = time_ultralytics_predict(
        args.weights, frames, args.imgsz, args.threads
    )
    load_after = os.getloadavg()
    print(f"{len(frames)} frames 640x480, {args.threads} threads, imgsz {args.imgsz}; "
          f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
          f"({os.cpu_count()} cores)")
    print("| format | input | median ms/frame | network | pre | post | masks IoU vs .pt |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | - | does not load: {row['error'][:80]} | | | | |")
            continue
        hw = "x".join(map(str, row.get("input_hw", [])))
        cells = [f"{row.get(k, float('nan')):.1f}" for k in
                 ("segment_ms", "inference_ms", "preprocess_ms", "postprocess_ms")]
        iou = row.get("mask_iou_vs_pytorch")
        print(f"| {name} | {hw} | {' | '.join(cells)} | "
              f"{'-' if iou is None else f'{iou:.3f}'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(rows=rows, load_before=load_before,
                                        load_after=load_after, frames=len(frames),
                                        threads=args.threads), indent=1))


if __name__ == "__main__":
    main()
