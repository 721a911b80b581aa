"""Segmenters: class mapping, thresholds, full-resolution masks, weights errors, a tiny training
run loaded back in every format, and clipose-eval with a segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipose_ros.core import segmentation
from clipose_ros.core.estimators import NocsMapEstimator
from clipose_ros.core.segmentation import (
    COCO_CLASS_MAP,
    GroundTruthMasks,
    YoloSegmenter,
    build_segmenter,
    drop_nested_boxes,
    format_class_thresholds,
    input_shape_for,
    letterbox,
    parse_class_thresholds,
    resolve_class_map,
)
from clipose_ros.core.structures import Frame
from clipose_ros.core.yolo_backends import SegmenterWeightsError
from clipose_ros.data import nocs_format as nf
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.tools import train_seg
from clipose_ros.tools.evaluate import main as eval_main
from clipose_ros.tools.evaluate import run_evaluation

NAMES = {0: "bottle", 1: "bowl", 2: "camera", 3: "can", 4: "laptop", 5: "mug", 6: "person"}


def test_class_map_defaults_to_category_names_and_checks_at_load():
    assert resolve_class_map(NAMES) == {i: i + 1 for i in range(6)}
    coco = {0: "person", 39: "bottle", 41: "cup", 45: "bowl", 63: "laptop", 73: "book"}
    assert resolve_class_map(coco, COCO_CLASS_MAP) == {39: 1, 41: 6, 45: 2, 63: 5}
    assert resolve_class_map({0: "tin"}, {"tin": 4}) == {0: 4}
    with pytest.raises(ValueError, match="person, cup") as err:
        resolve_class_map({0: "person", 1: "cup"})
    assert "COCO_CLASS_MAP" in str(err.value)
    with pytest.raises(ValueError, match="'teapot', which is not a category"):
        resolve_class_map({0: "cup"}, {"cup": "teapot"})
    with pytest.raises(ValueError, match="match none"):
        resolve_class_map(NAMES, {"cup": "mug"})


def test_letterbox_geometry():
    assert input_shape_for(480, 640, 320) == (256, 320)
    assert input_shape_for(640, 480, 320) == (320, 256)
    assert input_shape_for(480, 640, 640) == (480, 640)
    image, r, (left, top) = letterbox(np.zeros((480, 640, 3), np.uint8), (256, 320))
    assert image.shape == (256, 320, 3) and r == 0.5 and (left, top) == (0, 8)
    assert (image[:8] == segmentation.LETTERBOX_FILL).all() and (image[8:248] == 0).all()


class FakeModel:
    """A fixed-input back-end with hand-made outputs: 7 classes (6 categories + person), 2 mask
    prototypes on a stride-4 grid. Prototype 0 is +1 everywhere; prototype 1 is +1 left of
    network-input x = 160 and -1 right of it."""

    backend_name = "fake"
    task = "segment"
    stride = 32
    names = NAMES

    def __init__(self, input_hw=(256, 320)):
        self.fixed_shape = input_hw
        h, w = input_hw
        self.proto = np.ones((1, 2, h // 4, w // 4), np.float32)
        self.proto[0, 1, :, 40:] = -1.0
        self.dets = []  # (cx, cy, w, h, class index, score, (coefficient 0, coefficient 1))
        self.seen_shapes = []

    def __call__(self, x):
        self.seen_shapes.append(x.shape)
        pred = np.zeros((1, 4 + 7 + 2, 50), np.float32)
        for a, (cx, cy, bw, bh, cls, score, coef) in enumerate(self.dets):
            pred[0, :4, a] = cx, cy, bw, bh
            pred[0, 4 + cls, a] = score
            pred[0, 11:, a] = coef
        return pred, self.proto


@pytest.fixture
def fake(monkeypatch):
    model = FakeModel()
    monkeypatch.setattr(segmentation, "load_backend", lambda *args, **kwargs: model)
    return model


def _frame(h=480, w=640):
    return Frame(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.float32), np.eye(3))


def test_thresholds_class_mapping_nms_and_full_resolution_masks(fake):
    # A 640x480 frame enters a 256x320 network input at scale 0.5, 8 rows of padding on top.
    fake.dets = [
        (100, 108, 40, 40, 5, 0.9, (1, 0)),  # mug: frame box x 160..240, y 160..240
        (102, 108, 40, 40, 5, 0.8, (1, 0)),  # its duplicate: removed by NMS
        (101, 108, 40, 40, 6, 0.95, (1, 0)),  # person: not a category, ignored, suppresses nothing
        (200, 60, 40, 40, 1, 0.3, (1, 0)),  # bowl below the score threshold
        (250, 200, 4, 4, 3, 0.9, (1, 0)),  # can with a 8x8 px mask: below min_mask_area
        (140, 168, 80, 20, 0, 0.7, (0, 1)),  # bottle, x 200..360: mask only left of x = 320
    ]
    seg = YoloSegmenter("weights.onnx", score_threshold=0.5, min_mask_area=100)
    out = seg.segment(_frame())
    assert fake.seen_shapes[-1] == (1, 3, 256, 320)
    assert [(i.class_name, round(i.score, 2)) for i in out] == [("mug", 0.9), ("bottle", 0.7)]
    mug, bottle = out
    assert mug.mask.shape == (480, 640) and mug.mask.dtype == bool
    assert mug.mask.sum() == 80 * 80 and mug.mask[160:240, 160:240].all()
    assert list(mug.bbox) == [160, 160, 240, 240]
    cols = np.flatnonzero(bottle.mask.any(axis=0))
    assert cols[0] == 200 and 318 <= cols[-1] + 1 <= 322  # the prototype edge, at full resolution
    assert list(bottle.bbox) == [300, 200, 340, cols[-1] + 1]
    assert set(seg.last_timings) >= {"segment_ms", "preprocess_ms", "inference_ms"}
    # Thresholds are parameters: a lower score keeps the bowl, area 0 keeps the can.
    loose = YoloSegmenter("weights.onnx", score_threshold=0.2, min_mask_area=0)
    assert sorted(i.class_name for i in loose.segment(_frame())) == ["bottle", "bowl", "can",
                                                                     "mug"]
    # Class-aware NMS keeps overlapping boxes of different categories.
    fake.dets.append((100, 108, 40, 40, 1, 0.6, (1, 0)))  # a bowl on the mug
    assert len(YoloSegmenter("weights.onnx").segment(_frame())) == 2
    assert len(YoloSegmenter("weights.onnx", agnostic_nms=False).segment(_frame())) == 3


def test_class_score_thresholds_replace_the_threshold_for_the_classes_named(fake):
    """A laptop at 0.35 is published with ``laptop:0.3``, a camera at 0.45 is not (its class
    keeps the global 0.5), and a class can also be held above the global threshold."""
    fake.dets = [
        (60, 60, 40, 40, 4, 0.35, (1, 0)),  # laptop
        (160, 60, 40, 40, 2, 0.45, (1, 0)),  # camera
        (260, 60, 40, 40, 5, 0.6, (1, 0)),  # mug
    ]
    plain = YoloSegmenter("weights.onnx", score_threshold=0.5)
    assert [i.class_name for i in plain.segment(_frame())] == ["mug"]
    seg = YoloSegmenter("weights.onnx", score_threshold=0.5,
                        class_score_thresholds={"laptop": 0.3, "mug": 0.7})
    assert [i.class_name for i in seg.segment(_frame())] == ["laptop"]
    seg.class_score_thresholds = {}  # what the node sets on a live change
    assert [i.class_name for i in seg.segment(_frame())] == ["mug"]
    with pytest.raises(ValueError, match="unknown class 'cup'"):
        YoloSegmenter("weights.onnx", class_score_thresholds={"cup": 0.3})


def test_a_box_inside_a_better_box_of_its_class_is_dropped_as_a_part_of_it(fake):
    """A laptop's lid boxed on its own survives NMS (small IoU with the whole laptop) but is a
    part of the laptop; a mug in front of the laptop, inside its box, is another object."""
    fake.dets = [
        (100, 100, 120, 80, 4, 0.9, (1, 0)),  # laptop
        (100, 80, 100, 36, 4, 0.6, (1, 0)),  # its lid, all inside: dropped
        (120, 110, 30, 30, 5, 0.7, (1, 0)),  # a mug inside the laptop's box: kept
        (170, 100, 60, 40, 4, 0.8, (1, 0)),  # a laptop half over the first: kept
    ]
    out = YoloSegmenter("weights.onnx", min_mask_area=0).segment(_frame())
    assert sorted((i.class_name, round(i.score, 1)) for i in out) == [
        ("laptop", 0.8), ("laptop", 0.9), ("mug", 0.7)]
    keep_all = YoloSegmenter("weights.onnx", min_mask_area=0, max_containment=1.0)
    assert len(keep_all.segment(_frame())) == 4
    boxes = np.array([[0, 0, 10, 10], [1, 1, 8, 8], [5, 0, 10, 10]], float)
    assert drop_nested_boxes(boxes, np.zeros(3, int), 0.8).tolist() == [True, False, True]
    assert drop_nested_boxes(boxes, np.array([0, 1, 0]), 0.8).tolist() == [True, True, True]


@pytest.mark.parametrize(("text", "message"), [
    ("laptop=0.3", "is not CLASS:SCORE"),
    ("laptop:", "is not CLASS:SCORE"),
    ("cup:0.3", "unknown class 'cup'"),
    ("laptop:high", "'high' in 'laptop:high' is not a number"),
    ("laptop:1.5", "must lie in"),
    ("laptop:nan", "must lie in"),
    ("laptop:0.3 laptop:0.4", "given twice"),
])
def test_class_score_thresholds_refuse_what_they_cannot_use(text, message):
    with pytest.raises(ValueError, match=message):
        parse_class_thresholds(text)


def test_class_score_thresholds_round_trip():
    parsed = parse_class_thresholds(" mug:0.45,laptop:0.3  bowl:0.35 ")
    assert parsed == {"mug": 0.45, "laptop": 0.3, "bowl": 0.35}
    assert format_class_thresholds(parsed) == "bowl:0.35 laptop:0.3 mug:0.45"
    assert parse_class_thresholds(format_class_thresholds(parsed)) == parsed
    assert parse_class_thresholds("") == {}


def test_masks_match_upsampling_the_whole_prototype_image(fake):
    """The box-only warp equals the plain way: upsample all logits to the network input, undo
    the letterbox, resize to the frame, threshold, keep the box."""
    import cv2

    rng = np.random.default_rng(3)
    smooth = cv2.GaussianBlur(rng.normal(size=(2, 64, 80)).transpose(1, 2, 0), (0, 0), 4)
    fake.proto = (smooth.transpose(2, 0, 1)[None] * 40).astype(np.float32)
    fake.dets = [(150, 120, 180, 150, 4, 0.9, (1, 0)), (240, 60, 60, 80, 1, 0.8, (0.5, -1))]
    got = YoloSegmenter("weights.onnx", min_mask_area=0).segment(_frame())
    assert len(got) == 2
    for inst, (cx, cy, bw, bh, _, _, coef) in zip(got, fake.dets, strict=True):
        logits = np.tensordot(np.array(coef, np.float32), fake.proto[0], axes=1)
        full = cv2.resize(logits, (320, 256), interpolation=cv2.INTER_LINEAR)[8:248]
        full = cv2.resize(full, (640, 480), interpolation=cv2.INTER_LINEAR) > 0
        box = np.zeros_like(full)
        box[int((cy - bh / 2 - 8) * 2):int((cy + bh / 2 - 8) * 2),
            int((cx - bw / 2) * 2):int((cx + bw / 2) * 2)] = True
        expected = full & box
        iou = (expected & inst.mask).sum() / (expected | inst.mask).sum()
        assert expected.sum() > 2000 and iou > 0.97


def test_masks_follow_a_frame_of_another_aspect_ratio(fake):
    # 300x800 letterboxes into 256x320 at scale 0.4 with 68 rows of padding on top.
    fake.dets = [(160, 168, 160, 40, 4, 0.9, (1, 0))]  # frame x 200..600, y 200..300
    (laptop,) = YoloSegmenter("weights.onnx").segment(_frame(300, 800))
    assert laptop.mask.shape == (300, 800)
    assert list(laptop.bbox) == [200, 200, 300, 600]
    with pytest.raises(ValueError, match="uint8"):
        YoloSegmenter("weights.onnx").segment(
            Frame(np.zeros((4, 4, 3)), np.zeros((4, 4), np.float32), np.eye(3))
        )


def test_missing_truncated_and_foreign_weights_name_the_file(tmp_path):
    with pytest.raises(SegmenterWeightsError, match="not found.*nowhere.pt.*clipose-train-seg"):
        YoloSegmenter(tmp_path / "nowhere.pt")
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(SegmenterWeightsError, match="lfs.pt.*truncated"):
        YoloSegmenter(tmp_path / "lfs.pt")
    (tmp_path / "junk.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SegmenterWeightsError, match="cannot load.*junk.pt"):
        YoloSegmenter(tmp_path / "junk.pt")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(SegmenterWeightsError, match="junk.onnx"):
            YoloSegmenter(tmp_path / "junk.onnx", backend=backend)
    (tmp_path / "weights.tflite").write_bytes(b"x" * 2048)
    with pytest.raises(SegmenterWeightsError, match="cannot load.*weights.tflite"):
        YoloSegmenter(tmp_path / "weights.tflite")
    (tmp_path / "weights.h5").write_bytes(b"x" * 2048)
    with pytest.raises(SegmenterWeightsError, match="unknown weights format"):
        YoloSegmenter(tmp_path / "weights.h5")
    with pytest.raises(ValueError, match="yolo:"):
        build_segmenter(str(tmp_path / "junk.pt"))


def test_file_segmenters_need_a_nocs_frame_path():
    with pytest.raises(ValueError, match="frame_id must be the frame's path prefix"):
        GroundTruthMasks().segment(_frame())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A handful of generated frames, a few training iterations at 64 px, exported to ONNX."""
    root = tmp_path_factory.mktemp("seg_train")
    cfg = SynthConfig(depth_noise=False, max_distractors=0)
    generate(root, "train", 4, 2, seed=5, cfg=cfg, progress=False)
    generate(root, "test", 2, 1, seed=6, cfg=cfg, progress=False)
    weights = train_seg.train_yolo(
        root / "yolo" / "data.yaml", root / "run", imgsz=64, epochs=1, batch=4, cache=False,
        val=False, verbose=False,
    )
    onnx = train_seg.export_yolo(weights, "onnx", (96, 96))  # 640x480 at long side 96
    return root, weights, onnx


def test_tiny_training_loads_back_in_every_format(tiny_run):
    root, weights, onnx = tiny_run
    assert weights.is_file() and onnx.suffix == ".onnx"
    prefix = nf.list_frames(root / "test")[0]
    frame = Frame(nf.read_color(prefix), nf.read_depth(prefix), np.eye(3))
    # Untrained weights: keep every candidate, compare the formats on the same decoding.
    kwargs = dict(imgsz=96, score_threshold=0.0, min_mask_area=0, max_detections=5)
    results, raw = {}, {}
    for path, backend in ((weights, "torch"), (onnx, "onnxruntime"), (onnx, "openvino")):
        seg = YoloSegmenter(path, backend=backend, openvino_precision="f32", **kwargs)
        assert seg.backend == backend and seg.input_shape(480, 640) == (96, 96)
        assert seg.class_ids == {i: i + 1 for i in range(6)}
        results[backend] = seg.segment(frame)
        assert all(i.mask.shape == (480, 640) for i in results[backend])
        image, _, _ = letterbox(frame.rgb, (96, 96))
        raw[backend] = [np.array(a) for a in seg.model(
            np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        )]
    assert results["torch"], "score threshold 0 keeps candidates"
    for backend in ("onnxruntime", "openvino"):
        # Same network output (untrained masks sit at logit ~0, so compare outputs, not masks).
        for a, b in zip(raw["torch"], raw[backend], strict=True):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= 1e-3 * max(np.abs(a).max(), 1.0)
        got = results[backend]
        assert len(got) == len(results["torch"])
        for a, b in zip(results["torch"], got, strict=True):
            assert a.class_id == b.class_id and a.score == pytest.approx(b.score, abs=1e-4)


def test_clipose_eval_runs_with_a_segmenter(tiny_run, tmp_path):
    root, weights, onnx = tiny_run
    seg = YoloSegmenter(weights, imgsz=96, score_threshold=0.0, min_mask_area=0,
                        max_detections=1)
    scores = run_evaluation(root / "test", NocsMapEstimator(), seg, tmp_path / "a",
                            progress=False)
    assert scores["segmenter"] == "YoloSegmenter" and scores["segment_ms_median"] > 0
    assert len(list((tmp_path / "a" / "results").glob("*.pkl"))) == 2
    eval_main(["--data", str(root / "test"), "--out", str(tmp_path / "b"), "--vis", "0",
               "--max-frames", "1", "--masks", f"yolo:{onnx}", "--seg-score-threshold", "1.0"])
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["segmenter"] == "YoloSegmenter"
    classes = saved["modes"]["exact"]["classes"]
    assert sum(c["num_pred"] for k, c in classes.items() if k != "mean") == 0  # score >= 1.0
    with pytest.raises(SystemExit, match="not found"):
        eval_main(["--data", str(root / "test"), "--out", str(tmp_path / "c"),
                   "--masks", f"yolo:{tmp_path / 'missing.onnx'}"])
