#!/usr/bin/env bash
# The COCO-initialised segmenter runs of issue 16 (models/yoloseg_coco_nocs.md): one arm per call.
#
# 1. clipose-import-yolo-tflite turns the int8 COCO YOLOv8n-seg TFLite file into a float
#    six-class model: the classifiers of bottle, bowl, mug (cup), laptop and can (bottle)
#    start from COCO's, camera from scratch; batch norms re-centred on 256 training frames at
#    the training size (made once per run root and shared by the arms).
# 2. clipose-train-seg fine-tunes it on the generated frames' YOLO-seg labels, 416 px, batch 8,
#    AdamW lr 0.001 (cosine), for a wall-clock budget; a quarter of the training frames per
#    epoch so that ultralytics' time mode can fit the schedule (and its decay) to the budget.
#
# Arms: full (everything trained), backbone-frozen (layers 0-9 fixed, their batch norms in
# eval mode), head-only (backbone and neck fixed: only the segmentation head learns),
# coco-classes-kept (as head-only, but the classification branch's hidden layers and the
# classifier rows of bottle, bowl, mug and laptop also fixed: those four keep COCO's scores,
# can and camera are learnt on top of COCO's features, boxes and masks adapt).
# The weights derive from Ultralytics' COCO weights: AGPL-3.0.
#
# Usage: scripts/train_yoloseg_coco.sh DATA_ROOT RUN_ROOT ARM HOURS [START_WEIGHTS]
#   e.g. scripts/train_yoloseg_coco.sh /work/data/synth_v3 /work/data/seg_arms head-only 0.33
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$1"; RUNS="$2"; ARM="$3"; HOURS="$4"
TFLITE="${TFLITE:-$ROOT/../shared/weights/yolov8n-seg-coco-int8.tflite}"
cd "$ROOT"
mkdir -p "$RUNS"
START="${5:-$RUNS/coco_nocs_start.pt}"
if [ ! -f "$START" ]; then
    .venv/bin/python -m clipose_ros.tools.yolo_tflite "$TFLITE" "$START" --classes nocs \
        --calibration "$DATA/train" --calibration-count 256 --calibration-imgsz 416
fi
case "$ARM" in
    full) FREEZE=();;
    backbone-frozen) FREEZE=(--freeze 10);;
    head-only) FREEZE=(--freeze 22);;
    coco-classes-kept) FREEZE=(--keep-classes bottle bowl mug laptop);;
    *) echo "unknown arm $ARM (full | backbone-frozen | head-only | coco-classes-kept)" >&2
       exit 2;;
esac
exec .venv/bin/python -m clipose_ros.tools.train_seg \
    --data "$DATA/yolo/data.yaml" --out "$RUNS/$ARM" --model "$START" \
    --imgsz 416 --batch 8 --lr0 0.001 --epochs 4 --hours "$HOURS" --fraction 0.25 --no-val \
    "${FREEZE[@]}"
