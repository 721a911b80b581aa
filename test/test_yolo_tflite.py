"""clipose-import-yolo-tflite: the float copy of the int8 COCO model gives the TFLite file's
detections, is refused for another architecture, and starts training where the COCO model is."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from clipose_ros.core.segmentation import letterbox
from clipose_ros.core.yolo_backends import load_backend
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.metrics import box_iou_2d, mask_iou
from clipose_ros.tools.yolo_tflite import (
    TfliteImportError,
    convert,
    match_convolutions,
    save_checkpoint,
    torch_conv_graph,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
TFLITE = SHARED / "weights" / "yolov8n-seg-coco-int8.tflite"
SAMPLES = SHARED / "real_samples"
needs_shared = pytest.mark.skipif(
    not TFLITE.is_file() or not SAMPLES.is_dir(),
    reason=f"the COCO TFLite weights and real samples are not at {SHARED} (shared folder absent)",
)


def _detections(backend, rgb: np.ndarray, min_score: float = 0.25) -> list[dict]:
    """All 80 classes: class, score, box (x1 y1 x2 y2, input pixels) and mask at prototype
    resolution inside the box, after per-class NMS."""
    image, _, _ = letterbox(rgb, backend.fixed_shape or (640, 640))
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    pred, proto = backend(x)
    pred, proto = pred[0], proto[0]
    nm = proto.shape[0]
    cls_scores = pred[4:-nm]
    cls, score = cls_scores.argmax(0), cls_scores.max(0)
    keep = np.flatnonzero(score >= min_score)
    boxes = np.stack([pred[0] - pred[2] / 2, pred[1] - pred[3] / 2, pred[2], pred[3]], 1)[keep]
    chosen = cv2.dnn.NMSBoxesBatched(boxes.tolist(), score[keep].tolist(), cls[keep].tolist(),
                                     min_score, 0.7)
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    out = []
    stride = image.shape[1] / proto.shape[2]
    for j in keep[chosen]:
        x1, y1 = pred[0, j] - pred[2, j] / 2, pred[1, j] - pred[3, j] / 2
        x2, y2 = x1 + pred[2, j], y1 + pred[3, j]
        logits = np.tensordot(pred[-nm:, j], proto, axes=1)
        inside = np.zeros_like(logits, dtype=bool)
        rows = slice(int(y1 / stride), int(np.ceil(y2 / stride)))
        inside[rows, int(x1 / stride):int(np.ceil(x2 / stride))] = True
        out.append({"cls": int(cls[j]), "score": float(score[j]),
                    "box": np.array([x1, y1, x2, y2]), "mask": (logits > 0) & inside})
    return out


def _images() -> list[tuple[str, np.ndarray]]:
    paths = [SAMPLES / "real275_cppf" / "0000_color.png",
             SAMPLES / "d435_mug_sarnet" / "0000_image.png",
             *sorted((SAMPLES / "camera25_train" / "train" / "00000").glob("*_color.png"))]
    return [(p.name if "camera25" not in str(p) else f"CAMERA {p.name}",
             cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in paths]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco")
    calibration = sorted((SAMPLES / "camera25_train" / "train" / "00000").glob("*_color.png"))
    model = convert(TFLITE, calibration_images=calibration, calibration_imgsz=320)
    return save_checkpoint(model, out / "coco.pt", TFLITE)


@needs_shared
def test_converted_model_gives_the_tflite_detections(converted, tmp_path):
    generate(tmp_path / "synth", "test", 2, 1, seed=3, cfg=SynthConfig(), progress=False)
    frames = _images() + [
        (p.name, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))
        for p in sorted((tmp_path / "synth" / "test").rglob("*_color.png"))
    ]
    tflite = load_backend(TFLITE, "cpu", "tflite", threads=2)
    torch_model = load_backend(converted, "cpu", "torch", threads=2)
    torch_model.fixed_shape = tflite.fixed_shape
    confident = 0
    for name, rgb in frames:
        a, b = _detections(tflite, rgb), _detections(torch_model, rgb)
        for source, other in ((a, b), (b, a)):
            for det in source:
                if det["score"] <= 0.5:
                    continue
                confident += 1
                same = [o for o in other if o["cls"] == det["cls"]]
                assert same, f"{name}: class {det['cls']} ({det['score']:.2f}) found by one only"
                best = max(same, key=lambda o: box_iou_2d(det["box"], o["box"]))
                assert box_iou_2d(det["box"], best["box"]) >= 0.9, name
                assert mask_iou(det["mask"], best["mask"]) >= 0.85, name
    assert confident >= 10  # the real frames hold confident COCO objects (laptop, cups, bowls)


@needs_shared
def test_real275_frame_objects_with_the_converted_model(converted):
    """The COCO copy, through the segmenter users run, finds the sample frame's laptop, mugs
    and bowls (COCO has no can)."""
    from clipose_ros.core.segmentation import YoloSegmenter
    from clipose_ros.core.structures import Frame

    seg = YoloSegmenter(converted, imgsz=640, threads=2)
    rgb = cv2.cvtColor(cv2.imread(str(SAMPLES / "real275_cppf" / "0000_color.png")),
                       cv2.COLOR_BGR2RGB)
    found = seg.segment(Frame(rgb, np.ones(rgb.shape[:2], np.float32), np.eye(3)))
    names = sorted(i.class_name for i in found)
    assert names.count("mug") >= 1 and names.count("bowl") == 2 and names.count("laptop") == 1


def test_another_architecture_is_refused():
    from ultralytics.nn.tasks import SegmentationModel

    v8 = torch_conv_graph(SegmentationModel("yolov8n-seg.yaml", nc=80, verbose=False))
    v11 = torch_conv_graph(SegmentationModel("yolo11n-seg.yaml", nc=80, verbose=False))
    assert len(match_convolutions(v8, v8)) == len(v8)
    with pytest.raises(TfliteImportError, match="not an export of this architecture"):
        match_convolutions(v11, v8)


@needs_shared
def test_recentred_batch_norm_keeps_the_function_in_train_mode(converted, tmp_path):
    """Train-mode batch norm (batch statistics) changes the plain identity model's output a
    lot and the re-centred model's only a little: fine-tuning starts from the COCO model."""
    import torch

    images = sorted((SAMPLES / "camera25_train" / "train" / "00000").glob("*_color.png"))[:8]
    batch = torch.from_numpy(np.stack([
        letterbox(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (320, 320))[0]
        .transpose(2, 0, 1) for p in images]).astype(np.float32) / 255.0)

    def drift(model) -> float:
        """Relative change of the class logits and mask prototypes, eval -> train mode."""
        with torch.no_grad():
            model.eval()
            ref = model(batch)[1]
            model.train()
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.0  # batch statistics, without changing the stored ones
            out = model(batch)
        return max(float((out[k] - ref[k]).abs().mean() / ref[k].abs().mean())
                   for k in ("scores", "proto"))

    plain = convert(TFLITE)
    recentred = torch.load(converted, weights_only=False)["model"].float()
    assert drift(recentred) < 0.15 < drift(plain)


@needs_shared
def test_keep_classes_fine_tuning_holds_the_coco_classifier(converted, tmp_path):
    """Fine-tuning the six-class COCO copy with keep_classes: the kept classes' classifier rows
    and everything before the head stay the starting weights, while the camera and can rows and
    the box branch learn."""
    import torch

    from clipose_ros.tools.train_seg import train_yolo
    from clipose_ros.tools.yolo_tflite import to_nocs_classes

    start_model = to_nocs_classes(torch.load(converted, weights_only=False)["model"].float())
    start = save_checkpoint(start_model, tmp_path / "nocs6.pt", TFLITE)
    generate(tmp_path / "data", "train", 3, 2, seed=4, cfg=SynthConfig(max_distractors=0),
             progress=False)
    kept = ["bottle", "bowl", "mug", "laptop"]
    weights = train_yolo(tmp_path / "data" / "yolo" / "data.yaml", tmp_path / "run",
                         str(start), imgsz=96, epochs=1, batch=2, cache=False, val=False,
                         verbose=False, keep_classes=kept, lr0=0.01, warmup_epochs=0)
    before = start_model.state_dict()
    after = torch.load(weights, weights_only=False)["model"].float().state_dict()

    def changed(key: str, rows=slice(None)) -> float:
        """Largest change, relative to the tensor's largest value."""
        return float((after[key][rows] - before[key][rows]).abs().max()
                     / before[key].abs().max())

    # ultralytics stores half-precision weights: held tensors differ by its rounding (< 1e-3).
    cls = "model.22.cv3.0.2.weight"
    kept_rows = [list(start_model.names.values()).index(n) for n in kept]
    assert changed(cls, kept_rows) < 1e-3
    assert changed(cls, [2, 3]) > 1e-2  # camera, can
    assert changed("model.22.cv3.0.0.conv.weight") < 1e-3  # classifier hidden layer
    assert changed("model.0.conv.weight") < 1e-3 and changed("model.15.cv2.conv.weight") < 1e-3
    assert changed("model.22.cv2.0.2.weight") > 1e-2  # the box branch learns
