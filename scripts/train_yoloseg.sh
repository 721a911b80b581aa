#!/usr/bin/env bash
# The run behind models/yoloseg_synth.{pt,onnx} (see models/yoloseg_synth.md).
#
# Data: clipose-synth train/test splits (their YOLO-seg labels and data.yaml come with them;
# for CAMERA25/REAL275 run clipose-yolo-labels first). YOLO11n-seg built from its ultralytics
# YAML (no pretrained weights), 320 px, batch 8, at most 0.95 h of wall clock on the CPU,
# validated on the test split (unseen instances), exported to ONNX with a fixed 256x320 input.
#
# Usage: scripts/train_yoloseg.sh [DATA_ROOT] [RUN_DIR]   (defaults: /work/data/synth_v2, runs/yoloseg)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:-/work/data/synth_v2}"
RUN="${2:-$ROOT/runs/yoloseg}"
cd "$ROOT"
exec .venv/bin/python -m clipose_ros.tools.train_seg \
    --data "$DATA/yolo/data.yaml" --out "$RUN" \
    --model yolo11n-seg.yaml --imgsz 320 --batch 8 --lr0 0.0015 --epochs 8 --hours 0.95 \
    --no-val --weights-out models/yoloseg_synth.pt --export onnx --export-hw 256 320
