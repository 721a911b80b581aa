"""Instance segmenters behind one interface (:class:`clipose_ros.core.stages.Segmenter`):
``segment(frame) -> [Instance]``.

- :class:`YoloSegmenter`: an ultralytics YOLO-seg model (``.pt`` through ultralytics and torch;
  the ONNX export through OpenVINO or ONNX Runtime; an OpenVINO IR folder), with its own
  letterbox, NMS and mask decoding so that every format shares one code path and masks come out
  at the frame's full resolution.
- :class:`GroundTruthMasks` and :class:`ResultFileMasks`: masks read from files beside a
  NOCS-format frame (the dataset's own ``_mask.png``; NOCS results pickles or SPD's Mask R-CNN
  files), for offline evaluation.
- :func:`build_segmenter`: the ``--masks gt | FOLDER | yolo:WEIGHTS`` specification.

The weights formats are read by :mod:`clipose_ros.core.yolo_backends`; training and export are
``clipose-train-seg`` (:mod:`clipose_ros.tools.train_seg`). No ROS imports.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES, CLASS_IDS
from clipose_ros.core.stages import Segmenter
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.core.yolo_backends import SegmenterWeightsError, load_backend
from clipose_ros.data import nocs_format as nf

log = logging.getLogger("clipose.segmentation")

# For ultralytics' COCO-trained segmentation weights: the NOCS categories COCO has.
COCO_CLASS_MAP: dict[str, str] = {"bottle": "bottle", "bowl": "bowl", "cup": "mug",
                                  "laptop": "laptop"}
LETTERBOX_FILL = 114  # the grey ultralytics pads with in training


def parse_class_thresholds(text: str) -> dict[str, float]:
    """``"laptop:0.3 bowl:0.35"`` (entries apart by spaces or commas) as ``{class: score}``;
    empty means none. A string, not a map, so that it passes unchanged through launch
    arguments, YAML and ``ros2 param set``. A ValueError names the entry it cannot use."""
    thresholds: dict[str, float] = {}
    for entry in text.replace(",", " ").split():
        name, sep, value = entry.partition(":")
        if not sep or not name or not value:
            raise ValueError(f"class_score_thresholds: {entry!r} is not CLASS:SCORE "
                             f"(e.g. 'laptop:0.3 bowl:0.35')")
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"class_score_thresholds: {value!r} in {entry!r} is not a "
                             "number") from None
        if name in thresholds:
            raise ValueError(f"class_score_thresholds: {name!r} is given twice")
        thresholds[name] = score
    return check_class_thresholds(thresholds)


def check_class_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """Known category names and scores in [0, 1], or a ValueError naming the entry."""
    for name, score in thresholds.items():
        if name not in CLASS_IDS:
            raise ValueError(f"class_score_thresholds: unknown class {name!r}; the classes "
                             f"are {', '.join(CATEGORIES)}")
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"class_score_thresholds: {name}:{score}: the score must lie in "
                             "[0, 1]")
    return {name: float(score) for name, score in thresholds.items()}


def drop_nested_boxes(boxes: np.ndarray, classes: np.ndarray,
                      max_containment: float) -> np.ndarray:
    """Which of ``boxes`` (x, y, w, h; best first) to keep: not those lying more than
    ``max_containment`` of their area inside a kept box of the same class.

    Why: NMS compares IoU, and a box around a part of an object (a laptop's lid or keyboard, a
    camera's lens) has a small IoU with the whole object's box, so it survives NMS as a second
    object. On 600 generated validation frames this drops 72 unmatched detections against 5
    matched ones (``models/yoloseg_coco_nocs.md``).
    """
    keep = np.ones(len(boxes), bool)
    if max_containment >= 1.0:
        return keep
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = np.maximum(boxes[:, 2] * boxes[:, 3], 1e-9)
    for i in range(1, len(boxes)):
        better = np.flatnonzero(keep[:i] & (classes[:i] == classes[i]))
        if len(better) == 0:
            continue
        overlap = (np.clip(np.minimum(x2[better], x2[i]) - np.maximum(x1[better], x1[i]), 0, None)
                   * np.clip(np.minimum(y2[better], y2[i]) - np.maximum(y1[better], y1[i]), 0,
                             None))
        keep[i] = overlap.max() <= max_containment * area[i]
    return keep


def format_class_thresholds(thresholds: Mapping[str, float]) -> str:
    """The string :func:`parse_class_thresholds` reads back, in category order."""
    return " ".join(f"{name}:{thresholds[name]:g}" for name in CATEGORIES if name in thresholds)


def is_coco_model(names: Mapping[int, str]) -> bool:
    """A model with COCO's 80 classes (then :data:`COCO_CLASS_MAP` is the default map)."""
    return len(names) == 80 and names.get(41) == "cup" and names.get(63) == "laptop"


def resolve_class_map(
    names: Mapping[int, str], class_map: Mapping[str, str | int] | None = None
) -> dict[int, int]:
    """Model class index -> NOCS class id (1..6).

    ``class_map`` maps model class names to category names (or ids); by default a model class
    counts when its name is one of the six categories. Other model classes are ignored. Raises
    ``ValueError`` when nothing maps, listing the model's names, since such a model would
    silently find nothing.
    """
    out: dict[int, int] = {}
    for index, name in names.items():
        if class_map is None:
            target: str | int | None = name if name in CLASS_IDS else None
        else:
            target = class_map.get(name)
        if target is None:
            continue
        if isinstance(target, str):
            if target not in CLASS_IDS:
                raise ValueError(f"class_map maps {name!r} to {target!r}, which is not a "
                                 f"category ({', '.join(CATEGORIES)})")
            target = CLASS_IDS[target]
        if not 1 <= int(target) <= len(CATEGORIES):
            raise ValueError(f"class_map maps {name!r} to class id {target} (valid: 1..6)")
        out[int(index)] = int(target)
    if not out:
        shown = ", ".join(list(names.values())[:12]) + (" ..." if len(names) > 12 else "")
        hint = ("pass class_map={model name: category}, e.g. COCO_CLASS_MAP for COCO weights"
                if class_map is None else f"class_map keys {sorted(class_map)} match none")
        raise ValueError(f"no class of the model ({shown}) maps to a category "
                         f"({', '.join(CATEGORIES)}): {hint}")
    return out


# --- geometry of the letterbox and the masks


def input_shape_for(height: int, width: int, imgsz: int, stride: int = 32) -> tuple[int, int]:
    """Network input (h, w) for a frame: long side ``imgsz``, the other side the smallest
    multiple of ``stride`` that holds the scaled image (640x480 at 320 -> 256x320)."""
    r = imgsz / max(height, width)
    h = int(np.ceil(round(height * r) / stride) * stride)
    w = int(np.ceil(round(width * r) / stride) * stride)
    return h, w


def letterbox(
    rgb: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio, pad centred with grey; returns (image, scale, (left,
    top)). A pixel at x in the frame lands at x * scale + left in the network input."""
    h, w = rgb.shape[:2]
    r = min(shape[0] / h, shape[1] / w)
    nh, nw = round(h * r), round(w * r)
    top, left = (shape[0] - nh) // 2, (shape[1] - nw) // 2
    out = np.full((shape[0], shape[1], 3), LETTERBOX_FILL, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r, (left, top)


class Placement(NamedTuple):
    """Where a frame sits in the network input: both sizes (h, w), the letterbox scale and
    padding (left, top); a frame pixel x lands at ``x * scale + left``."""

    frame_hw: tuple[int, int]
    input_hw: tuple[int, int]
    scale: float
    pad: tuple[int, int]


class YoloSegmenter:
    """An ultralytics YOLO-seg model as a :class:`Segmenter`.

    ``imgsz`` is the long side of the network input for ``.pt`` weights (exported files have
    their fixed input size); ``score_threshold`` drops weak detections before NMS, and
    ``class_score_thresholds`` (category name -> score) replaces it for the classes it names;
    ``min_mask_area`` (pixels, full resolution) drops specks; ``class_map`` maps the model's
    class names to categories (default: names that are categories, or :data:`COCO_CLASS_MAP`
    for a model with COCO's 80 classes). NMS is class-agnostic by default: one object gets one
    category. ``max_containment``: a box lying more than this share inside a better one of its
    class is dropped as a part of that object (:func:`drop_nested_boxes`; 1 keeps all).
    ``threads`` caps the CPU threads of the back-end (None: its default; for ``.pt`` weights
    this is torch's process-wide setting). ``last_timings`` holds ``segment_ms`` (all of it)
    and its parts ``preprocess_ms``, ``inference_ms``, ``postprocess_ms`` after every call.
    """

    def __init__(
        self,
        weights: str | Path,
        device: str = "cpu",
        imgsz: int = 320,
        score_threshold: float = 0.5,
        min_mask_area: int = 100,
        class_map: Mapping[str, str | int] | None = None,
        class_score_thresholds: Mapping[str, float] | None = None,
        iou_threshold: float = 0.7,
        agnostic_nms: bool = True,
        max_containment: float = 0.8,
        max_detections: int = 30,
        backend: str = "auto",
        threads: int | None = None,
        openvino_precision: str = "auto",
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"score_threshold {score_threshold} and iou_threshold "
                             f"{iou_threshold} must lie in [0, 1]")
        if not 0.0 < max_containment <= 1.0:
            raise ValueError(f"max_containment {max_containment} must lie in (0, 1]")
        if imgsz < 32 or min_mask_area < 0 or max_detections < 1:
            raise ValueError(f"need imgsz >= 32 (got {imgsz}), min_mask_area >= 0 (got "
                             f"{min_mask_area}), max_detections >= 1 (got {max_detections})")
        class_score_thresholds = check_class_thresholds(class_score_thresholds or {})
        self.weights = Path(weights)
        self.model = load_backend(self.weights, device, backend, threads, openvino_precision)
        if class_map is None and is_coco_model(self.model.names):
            class_map = COCO_CLASS_MAP
        try:
            self.class_ids = resolve_class_map(self.model.names, class_map)
        except ValueError as err:
            raise ValueError(f"{self.weights}: {err}") from err
        self.model_classes = np.array(sorted(self.class_ids), dtype=np.int64)
        self.nocs_ids = np.array([self.class_ids[i] for i in self.model_classes], dtype=np.int64)
        self.imgsz = imgsz
        self.score_threshold = score_threshold
        self.class_score_thresholds = class_score_thresholds
        self.min_mask_area = min_mask_area
        self.iou_threshold = iou_threshold
        self.max_containment = max_containment
        self.agnostic_nms = agnostic_nms
        self.max_detections = max_detections
        self.last_timings: dict[str, float] = {}
        log.info("segmenter %s (%s back-end), classes %s", self.weights, self.model.backend_name,
                 {self.model.names[i]: CATEGORIES[c - 1] for i, c in self.class_ids.items()})

    @property
    def backend(self) -> str:
        return self.model.backend_name

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The network input size used for a frame of this size."""
        if self.model.fixed_shape is not None:
            return self.model.fixed_shape
        return input_shape_for(height, width, self.imgsz, self.model.stride)

    def segment(self, frame: Frame) -> list[Instance]:
        rgb = frame.rgb
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"frame.rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        t0 = time.perf_counter()
        image, r, pad = letterbox(rgb, self.input_shape(*rgb.shape[:2]))
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        x *= 1.0 / 255.0
        t1 = time.perf_counter()
        pred, proto = self.model(x)
        t2 = time.perf_counter()
        placement = Placement(rgb.shape[:2], image.shape[:2], r, pad)
        instances = self._decode(pred[0], proto[0], placement)
        t3 = time.perf_counter()
        self.last_timings = {
            "segment_ms": 1000 * (t3 - t0),
            "preprocess_ms": 1000 * (t1 - t0),
            "inference_ms": 1000 * (t2 - t1),
            "postprocess_ms": 1000 * (t3 - t2),
        }
        return instances

    def _decode(self, pred: np.ndarray, proto: np.ndarray, placement: Placement) -> list[Instance]:
        """Boxes, scores, NMS (:meth:`_detect`), then each survivor's mask (:meth:`_masks`)."""
        nc, nm = len(self.model.names), proto.shape[0]
        if pred.shape[0] != 4 + nc + nm:
            raise SegmenterWeightsError(
                f"{self.weights}: output has {pred.shape[0]} channels, expected 4 + {nc} classes "
                f"+ {nm} mask coefficients (an end-to-end/NMS-free export is not supported)"
            )
        sel, class_ids, scores = self._detect(pred[:4 + nc])
        if len(sel) == 0:
            return []
        return self._masks(pred, proto, nc, sel, class_ids, scores, placement)

    def _detect(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anchors kept by score, NMS and :func:`drop_nested_boxes` (best first, at most
        ``max_detections``), with their NOCS class ids and scores; ``pred`` holds the box and
        class rows."""
        none = np.zeros(0, np.int64)
        scores_all = pred[4:][self.model_classes]  # (n mapped classes, anchors)
        best = scores_all.argmax(axis=0)
        scores = scores_all[best, np.arange(scores_all.shape[1])]
        floor = np.array([self.class_score_thresholds.get(CATEGORIES[c - 1], self.score_threshold)
                          for c in self.nocs_ids])  # per mapped class
        keep = np.flatnonzero(scores >= floor[best])
        if len(keep) == 0:
            return none, none, np.zeros(0)
        cx, cy, bw, bh = pred[:4, keep]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        classes = best[keep]
        if self.agnostic_nms:
            chosen = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(),
                                      float(floor.min()), self.iou_threshold)
        else:
            chosen = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores[keep].tolist(),
                                             classes.tolist(), float(floor.min()),
                                             self.iou_threshold)
        chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
        chosen = chosen[drop_nested_boxes(boxes[chosen], classes[chosen],
                                          self.max_containment)][: self.max_detections]
        sel = keep[chosen]
        return sel, self.nocs_ids[classes[chosen]], scores[sel]

    def _masks(self, pred: np.ndarray, proto: np.ndarray, nc: int, sel: np.ndarray,
               class_ids: np.ndarray, scores: np.ndarray, placement: Placement) -> list[Instance]:
        """Each selected anchor's mask, evaluated only inside its box, directly at full
        resolution (bilinear in the prototype logits, threshold at 0 = sigmoid 0.5); specks
        below ``min_mask_area`` are dropped."""
        nm = proto.shape[0]
        coeffs = pred[4 + nc:, sel].T  # (k, nm)
        ph, pw = proto.shape[1:]
        logits = (coeffs @ proto.reshape(nm, -1)).reshape(-1, ph, pw).astype(np.float32)
        s = placement.input_hw[1] / pw  # prototype stride (4 for YOLOv8/11-seg)
        H, W = placement.frame_hw
        left, top = placement.pad
        r = placement.scale
        instances = []
        for k, j in enumerate(sel):
            # The box in frame pixels (clipped); the mask is evaluated only inside it.
            x1 = int(np.floor(max((pred[0, j] - pred[2, j] / 2 - left) / r, 0)))
            y1 = int(np.floor(max((pred[1, j] - pred[3, j] / 2 - top) / r, 0)))
            x2 = int(np.ceil(min((pred[0, j] + pred[2, j] / 2 - left) / r, W)))
            y2 = int(np.ceil(min((pred[1, j] + pred[3, j] / 2 - top) / r, H)))
            if x2 <= x1 or y2 <= y1:
                continue
            # Frame pixel centre (u + 0.5) -> input u*r + left -> prototype cell coordinate.
            M = np.array([[r / s, 0.0, ((x1 + 0.5) * r + left) / s - 0.5],
                          [0.0, r / s, ((y1 + 0.5) * r + top) / s - 0.5]])
            crop = cv2.warpAffine(logits[k], M, (x2 - x1, y2 - y1),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
            inside = crop > 0
            area = int(np.count_nonzero(inside))
            if area == 0 or area < self.min_mask_area:
                continue
            rows = np.flatnonzero(inside.any(axis=1))
            cols = np.flatnonzero(inside.any(axis=0))
            mask = np.zeros((H, W), dtype=bool)
            mask[y1:y2, x1:x2] = inside
            bbox = np.array([y1 + rows[0], x1 + cols[0], y1 + rows[-1] + 1, x1 + cols[-1] + 1])
            instances.append(Instance(int(class_ids[k]), float(scores[k]), mask, bbox))
        return instances


# --- masks from files (offline evaluation)


def _frame_prefix(frame: Frame, who: str) -> Path:
    prefix = Path(frame.frame_id)
    if not frame.frame_id or not nf.frame_path(prefix, "color.png").is_file():
        raise ValueError(
            f"{who} reads masks from files beside a NOCS-format frame: Frame.frame_id must be the "
            f"frame's path prefix (.../0000), got {frame.frame_id!r}"
        )
    return prefix


class GroundTruthMasks:
    """Instances from the frame's own ``_mask.png`` and label: the pose-only evaluation.

    ``frame.frame_id`` must be the frame's NOCS path prefix (as ``clipose-eval`` loads it).
    """

    def __init__(self) -> None:
        self.last_timings: dict[str, float] = {}  # files are read, nothing to time

    def segment(self, frame: Frame) -> list[Instance]:
        prefix = _frame_prefix(frame, "GroundTruthMasks")
        label = nf.read_label(prefix)
        mask = nf.read_mask(prefix)
        return [
            Instance(int(c), 1.0, mask == iid, np.asarray(b), model_name=str(m))
            for iid, c, b, m in zip(
                label.instance_ids, label.class_ids, label.bboxes, label.model_list, strict=True
            )
        ]


class ResultFileMasks:
    """Instances from per-frame mask files: a pickle with class ids (n,), scores (n,), masks
    (H, W, n) and boxes (n, 4, y1 x1 y2 x2), under the NOCS results keys (``pred_class_ids``,
    ``pred_scores``, ``pred_masks``, ``pred_bboxes``) or those of the Mask R-CNN results that
    SPD distributes (``class_ids``, ``scores``, ``masks``, ``rois``).

    A frame ``.../test/scene_1/0000`` is looked up as ``results_<key>.pkl`` or ``<key>.pkl``
    with ``key`` built from the trailing parts of its path, longest first: ``test_scene_1_0000``
    (SPD's names), ``scene_1_0000`` (NOCS results), ``0000``; a prepared download's
    ``Real/test/scene_1/0000`` also finds NOCS's ``results_real_test_scene_1_0000.pkl``.
    """

    KEYS = {
        "masks": ("pred_masks", "masks"),
        "class_ids": ("pred_class_ids", "class_ids"),
        "scores": ("pred_scores", "scores"),
        "boxes": ("pred_bboxes", "rois"),
    }
    MAX_KEY_PARTS = 4

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"mask folder does not exist: {folder}")
        self.folder = folder
        self.last_timings: dict[str, float] = {}  # files are read, nothing to time

    def find(self, prefix: Path) -> Path:
        parts = prefix.parts
        for n in range(min(self.MAX_KEY_PARTS, len(parts)), 0, -1):
            key = "_".join(parts[-n:])
            # lower case too: NOCS names its REAL results results_real_test_scene_1_0000.pkl,
            # the download's folders are Real/test/scene_1
            for name in dict.fromkeys((f"results_{key}.pkl", f"{key}.pkl",
                                       f"results_{key.lower()}.pkl")):
                if (self.folder / name).is_file():
                    return self.folder / name
        raise nf.NocsFormatError(
            f"no mask file for frame {prefix} in {self.folder} (tried results_<key>.pkl and "
            f"<key>.pkl for key {'_'.join(parts[-2:])} and its longer/shorter forms)"
        )

    def segment(self, frame: Frame) -> list[Instance]:
        path = self.find(_frame_prefix(frame, "ResultFileMasks"))
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)
            fields = {}
            for field, candidates in self.KEYS.items():
                found = [k for k in candidates if k in data]
                if not found:
                    raise KeyError(f"none of the keys {candidates}")
                fields[field] = np.asarray(data[found[0]])
            class_ids = fields["class_ids"].reshape(-1)
            scores = fields["scores"].reshape(-1)
            boxes = fields["boxes"].reshape(-1, 4)
            masks = fields["masks"].astype(bool)
        except Exception as err:  # noqa: BLE001 - any failure here means a bad mask file
            raise nf.NocsFormatError(f"cannot read mask file {path}: {err}") from err
        if len(class_ids) == 0:  # a frame without detections
            return []
        if masks.ndim != 3 or masks.shape[2] != len(class_ids):
            raise nf.NocsFormatError(
                f"{path}: pred_masks shape {masks.shape} does not hold {len(class_ids)} masks"
            )
        return [
            Instance(int(class_ids[i]), float(scores[i]), masks[:, :, i], boxes[i])
            for i in range(len(class_ids))
        ]


def build_segmenter(spec: str, **yolo_kwargs) -> Segmenter:
    """``gt`` -> :class:`GroundTruthMasks`; ``yolo:WEIGHTS`` -> :class:`YoloSegmenter` (with
    ``yolo_kwargs``, unused by the others); anything else is a folder of mask files
    (:class:`ResultFileMasks`)."""
    if spec == "gt":
        return GroundTruthMasks()
    if spec.startswith("yolo:"):
        return YoloSegmenter(spec[len("yolo:"):], **yolo_kwargs)
    path = Path(spec)
    if path.is_file():
        raise ValueError(f"--masks {spec}: a file; give a folder of mask pickles, or "
                         f"yolo:{spec} for segmentation weights")
    return ResultFileMasks(path)


