"""Instance segmenters behind one interface: ``segment(frame) -> [Instance]``.

- :class:`YoloSegmenter`: an ultralytics YOLO-seg model (``.pt`` through ultralytics and torch;
  the ONNX export through OpenVINO or ONNX Runtime; an OpenVINO IR folder), with its own
  letterbox, NMS and mask decoding so that every format shares one code path and masks come out
  at the frame's full resolution.
- :class:`GroundTruthMasks` and :class:`ResultFileMasks`: masks read from files beside a
  NOCS-format frame (the dataset's own ``_mask.png``; NOCS results pickles or SPD's Mask R-CNN
  files), for offline evaluation.
- :func:`build_segmenter`: the ``--masks gt | FOLDER | yolo:WEIGHTS`` specification.
- :func:`train_yolo` and :func:`export_yolo` (``clipose-train-seg``): train the nano model from
  its ultralytics YAML on YOLO-seg labels (``clipose-yolo-labels``), fully offline, and export it.

No ROS imports. Ultralytics is imported lazily, and told never to reach the network or pip.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES, CLASS_IDS
from clipose_ros.core.stages import Segmenter
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data import nocs_format as nf
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.segmentation")

# No hub downloads, no pip installs, no DNS probe: the machines this runs on are offline, and a
# robot should never fetch code at run time. Users can still override these in the environment.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

GET_WEIGHTS_HINT = (
    "The package ships models/yoloseg_coco_nocs.pt (and .onnx; COCO-pretrained, AGPL-3.0) and "
    "models/yoloseg_synth.pt (and .onnx; trained on its synthetic scenes only); "
    "train your own with `clipose-yolo-labels` + `clipose-train-seg` (README, 'Segmentation'), "
    "or pass any ultralytics YOLO-seg .pt / .onnx / *_openvino_model folder."
)
# For ultralytics' COCO-trained segmentation weights: the NOCS categories COCO has.
COCO_CLASS_MAP: dict[str, str] = {"bottle": "bottle", "bowl": "bowl", "cup": "mug",
                                  "laptop": "laptop"}
LETTERBOX_FILL = 114  # the grey ultralytics pads with in training


def is_coco_model(names: Mapping[int, str]) -> bool:
    """A model with COCO's 80 classes (then :data:`COCO_CLASS_MAP` is the default map)."""
    return len(names) == 80 and names.get(41) == "cup" and names.get(63) == "laptop"


class SegmenterWeightsError(RuntimeError):
    """Segmentation weights are missing, unreadable or not a YOLO-seg model; names the file."""


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


# --- model back-ends: NCHW float32 in, (predictions (1, 4+nc+nm, A), prototypes (1, nm, h, w))


def _parse_literal(value: object) -> object:
    return ast.literal_eval(value) if isinstance(value, str) else value


class _TorchBackend:
    """An ultralytics ``.pt`` checkpoint, fused, in eval mode; any input size (stride 32)."""

    fixed_shape: tuple[int, int] | None = None

    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        import torch
        from ultralytics.nn.tasks import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        try:
            model, _ = load_checkpoint(str(path), device=device, fuse=True)
        except Exception as err:  # noqa: BLE001 - any failure means an unusable file
            raise SegmenterWeightsError(
                f"cannot load segmentation weights {path}: {type(err).__name__}: {err}. "
                f"{GET_WEIGHTS_HINT}"
            ) from err
        self.torch = torch
        self.model = model.float().eval()
        self.device = device
        self.task = getattr(model, "task", "")
        self.names = dict(model.names)
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.train_imgsz = getattr(model, "args", {}).get("imgsz")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            y = self.model(self.torch.from_numpy(x).to(self.device))
        pred, proto = y[0] if isinstance(y[0], (tuple, list)) else y[:2]
        return pred.float().cpu().numpy(), proto.float().cpu().numpy()


def _onnx_metadata(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - any failure means an unusable file
        raise SegmenterWeightsError(
            f"cannot read ONNX file {path}: {err}. {GET_WEIGHTS_HINT}"
        ) from err
    return {p.key: p.value for p in model.metadata_props}


class _ExportedBackend:
    """Shared metadata handling of the exported (fixed input size) formats."""

    def _set_metadata(self, meta: Mapping, path: Path, input_shape: list) -> None:
        if "names" not in meta:
            raise SegmenterWeightsError(
                f"{path} carries no class names (not an ultralytics export?). {GET_WEIGHTS_HINT}"
            )
        self.names = {int(k): str(v) for k, v in _parse_literal(meta["names"]).items()}
        self.task = str(meta.get("task", ""))
        self.stride = int(_parse_literal(meta.get("stride", 32)))
        h, w = input_shape[-2:]
        if not (isinstance(h, int) and isinstance(w, int)) or h <= 0 or w <= 0:
            raise SegmenterWeightsError(
                f"{path} has a dynamic input shape {input_shape}; export with a fixed imgsz "
                "(clipose-train-seg --export does)"
            )
        self.fixed_shape = (h, w)
        self.train_imgsz = None


class _OnnxRuntimeBackend(_ExportedBackend):
    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001
            raise SegmenterWeightsError(
                f"ONNX Runtime cannot load {path}: {err}. {GET_WEIGHTS_HINT}"
            ) from err
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self._set_metadata(meta, path, self.session.get_inputs()[0].shape)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, proto = self.session.run(None, {self.input_name: x})[:2]
        return pred, proto


def _compile_on_cpu(model_file: Path, threads: int | None, precision: str):
    """(model, compiled model, infer request) of any file OpenVINO reads, compiled for low
    latency on the CPU; an unreadable file raises :class:`SegmenterWeightsError` naming it."""
    import openvino as ov

    core = ov.Core()
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        model = core.read_model(str(model_file))
        compiled = core.compile_model(model, "CPU", config)
    except Exception as err:  # noqa: BLE001 - any failure means an unusable file
        raise SegmenterWeightsError(
            f"OpenVINO cannot load {model_file}: {err}. {GET_WEIGHTS_HINT}"
        ) from err
    return model, compiled, compiled.create_infer_request()


class _OpenVinoBackend(_ExportedBackend):
    """OpenVINO on the CPU: reads the ONNX export directly, or an ``*_openvino_model`` IR."""

    def __init__(
        self, path: Path, device: str, threads: int | None, precision: str = "auto"
    ) -> None:
        if device != "cpu":
            raise ValueError(f"the OpenVINO back-end runs on the CPU only (device {device!r})")
        if path.is_dir():
            xml = sorted(path.glob("*.xml"))
            if not xml:
                raise SegmenterWeightsError(f"no OpenVINO .xml model in {path}. {GET_WEIGHTS_HINT}")
            model_file = xml[0]
            meta_file = path / "metadata.yaml"
            import yaml

            meta = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else {}
        else:
            model_file = path
            meta = _onnx_metadata(path) if path.suffix == ".onnx" else {}
        model, self.compiled, self.request = _compile_on_cpu(model_file, threads, precision)
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        shape = model.input(0).get_partial_shape()
        dims = [d.get_length() if d.is_static else -1 for d in shape]
        self._set_metadata(meta, path, dims)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data, self.request.get_output_tensor(1).data


class _TfliteBackend(_ExportedBackend):
    """An ultralytics TFLite export (float or int8) through OpenVINO on the CPU: NHWC in,
    boxes normalised to the input size, prototypes NHWC; brought to the common layout here.
    Class names from the export's metadata, else COCO's for an 80-class model."""

    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        from clipose_ros.tools.yolo_tflite import coco_names, tflite_metadata_names

        if device != "cpu":
            raise ValueError(f"a .tflite model runs on the CPU only (device {device!r})")
        model, self.compiled, self.request = _compile_on_cpu(path, threads, "f32")
        self.precision = "f32"
        shape = [d.get_length() if d.is_static else -1 for d in model.input(0).get_partial_shape()]
        if len(shape) != 4 or shape[3] != 3:
            raise SegmenterWeightsError(f"{path}: input shape {shape} is not NHWC RGB")
        outputs = [tuple(o.get_partial_shape().to_shape()) for o in model.outputs]
        if len(outputs) < 2:
            raise SegmenterWeightsError(f"{path}: {len(outputs)} output(s); a YOLO-seg export "
                                        "has predictions and mask prototypes")
        names = tflite_metadata_names(path)
        if names is None:
            nc = outputs[0][1] - 4 - outputs[1][3]
            if nc != 80:
                raise SegmenterWeightsError(f"{path} carries no class names and has {nc} classes "
                                            "(only COCO's 80 are assumed)")
            names = coco_names()
        self._set_metadata({"names": names, "task": "segment"}, path,
                           [shape[0], shape[3], shape[1], shape[2]])
        h, w = self.fixed_shape
        self.box_scale = np.array([w, h, w, h], dtype=np.float32)[:, None]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.request.infer({0: np.ascontiguousarray(x.transpose(0, 2, 3, 1))})
        pred = self.request.get_output_tensor(0).data.copy()
        proto = self.request.get_output_tensor(1).data.transpose(0, 3, 1, 2)
        if pred[0, :4].max() <= 2.0:  # normalised boxes (ultralytics' TF exports)
            pred[0, :4] *= self.box_scale
        return pred, np.ascontiguousarray(proto)


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tflite")
# OpenVINO's own choice ("auto") is bfloat16 on CPUs with AVX512-BF16 (as here), else f32.
OPENVINO_PRECISIONS = ("auto", "f32", "bf16")


def load_backend(
    weights: Path, device: str, backend: str, threads: int | None, precision: str = "auto"
):
    """The back-end for a weights file; ``auto``: ``.pt`` -> torch, ``.onnx`` -> OpenVINO on
    the CPU (the fastest here, see README) else ONNX Runtime, a folder -> OpenVINO IR."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    if not weights.exists():
        raise SegmenterWeightsError(
            f"segmentation weights not found: {weights}. {GET_WEIGHTS_HINT}"
        )
    if weights.is_file() and weights.stat().st_size < 1024:
        raise SegmenterWeightsError(
            f"segmentation weights {weights} are {weights.stat().st_size} bytes: truncated, or a "
            f"Git LFS pointer. {GET_WEIGHTS_HINT}"
        )
    suffix = weights.suffix.lower()
    if backend == "auto":
        if weights.is_dir() or suffix == ".xml":
            backend = "openvino"
        elif suffix == ".onnx":
            backend = "openvino" if device == "cpu" and _openvino_available() else "onnxruntime"
        elif suffix == ".pt":
            backend = "torch"
        elif suffix == ".tflite":
            backend = "tflite"
        else:
            raise SegmenterWeightsError(
                f"{weights}: unknown weights format {suffix or '(folder)'!r}; expected an "
                f"ultralytics .pt, an .onnx or .tflite export or an *_openvino_model folder. "
                f"{GET_WEIGHTS_HINT}"
            )
    cls = {"torch": _TorchBackend, "onnxruntime": _OnnxRuntimeBackend,
           "openvino": _OpenVinoBackend, "tflite": _TfliteBackend}[backend]
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r} (use {OPENVINO_PRECISIONS})")
    model = (_OpenVinoBackend(weights, device, threads, precision) if backend == "openvino"
             else cls(weights, device, threads))
    if model.task and model.task != "segment":
        raise SegmenterWeightsError(
            f"{weights} is an ultralytics '{model.task}' model, not a segmentation ('segment') "
            f"model. {GET_WEIGHTS_HINT}"
        )
    model.backend_name = backend
    return model


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


class YoloSegmenter:
    """An ultralytics YOLO-seg model as a :class:`Segmenter`.

    ``imgsz`` is the long side of the network input for ``.pt`` weights (exported files have
    their fixed input size); ``score_threshold`` drops weak detections before NMS;
    ``min_mask_area`` (pixels, full resolution) drops specks; ``class_map`` maps the model's
    class names to categories (default: names that are categories, or :data:`COCO_CLASS_MAP`
    for a model with COCO's 80 classes). NMS is class-agnostic by default: one object gets one
    category. ``threads`` caps the CPU threads of the back-end (None: its default; for ``.pt``
    weights this is torch's process-wide setting). ``last_timings`` holds
    ``segment_ms`` (all of it) and its parts ``preprocess_ms``, ``inference_ms``,
    ``postprocess_ms`` after every call.
    """

    def __init__(
        self,
        weights: str | Path,
        device: str = "cpu",
        imgsz: int = 320,
        score_threshold: float = 0.5,
        min_mask_area: int = 100,
        class_map: Mapping[str, str | int] | None = None,
        iou_threshold: float = 0.7,
        agnostic_nms: bool = True,
        max_detections: int = 30,
        backend: str = "auto",
        threads: int | None = None,
        openvino_precision: str = "auto",
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"score_threshold {score_threshold} and iou_threshold "
                             f"{iou_threshold} must lie in [0, 1]")
        if imgsz < 32 or min_mask_area < 0 or max_detections < 1:
            raise ValueError(f"need imgsz >= 32 (got {imgsz}), min_mask_area >= 0 (got "
                             f"{min_mask_area}), max_detections >= 1 (got {max_detections})")
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
        self.min_mask_area = min_mask_area
        self.iou_threshold = iou_threshold
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
        instances = self._decode(pred[0], proto[0], rgb.shape[:2], image.shape[:2], r, pad)
        t3 = time.perf_counter()
        self.last_timings = {
            "segment_ms": 1000 * (t3 - t0),
            "preprocess_ms": 1000 * (t1 - t0),
            "inference_ms": 1000 * (t2 - t1),
            "postprocess_ms": 1000 * (t3 - t2),
        }
        return instances

    def _decode(
        self,
        pred: np.ndarray,
        proto: np.ndarray,
        frame_hw: tuple[int, int],
        input_hw: tuple[int, int],
        r: float,
        pad: tuple[int, int],
    ) -> list[Instance]:
        """Boxes, scores, NMS, then each survivor's mask evaluated only inside its box, directly
        at full resolution (bilinear in the prototype logits, threshold at 0 = sigmoid 0.5)."""
        nc, nm = len(self.model.names), proto.shape[0]
        if pred.shape[0] != 4 + nc + nm:
            raise SegmenterWeightsError(
                f"{self.weights}: output has {pred.shape[0]} channels, expected 4 + {nc} classes "
                f"+ {nm} mask coefficients (an end-to-end/NMS-free export is not supported)"
            )
        scores_all = pred[4:4 + nc][self.model_classes]  # (n mapped classes, anchors)
        best = scores_all.argmax(axis=0)
        scores = scores_all[best, np.arange(scores_all.shape[1])]
        keep = np.flatnonzero(scores >= self.score_threshold)
        if len(keep) == 0:
            return []
        cx, cy, bw, bh = pred[:4, keep]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        classes = best[keep]
        if self.agnostic_nms:
            chosen = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(),
                                      self.score_threshold, self.iou_threshold)
        else:
            chosen = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores[keep].tolist(),
                                             classes.tolist(), self.score_threshold,
                                             self.iou_threshold)
        chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)[: self.max_detections]
        if len(chosen) == 0:
            return []
        sel = keep[chosen]
        coeffs = pred[4 + nc:, sel].T  # (k, nm)
        ph, pw = proto.shape[1:]
        logits = (coeffs @ proto.reshape(nm, -1)).reshape(-1, ph, pw).astype(np.float32)
        s = input_hw[1] / pw  # prototype stride (4 for YOLOv8/11-seg)
        H, W = frame_hw
        left, top = pad
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
            instances.append(Instance(int(self.nocs_ids[classes[chosen[k]]]),
                                      float(scores[j]), mask, bbox))
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


# --- training and export (clipose-train-seg)


def train_yolo(
    data: Path,
    out: Path,
    model: str = "yolov8n-seg.yaml",
    imgsz: int = 320,
    epochs: int = 30,
    hours: float | None = None,
    batch: int = 16,
    workers: int = 0,
    cache: bool = True,
    seed: int = 0,
    fraction: float = 1.0,
    keep_classes: Sequence[str] = (),
    **overrides,
) -> Path:
    """Train an ultralytics YOLO-seg model on ``data`` (a data.yaml); returns the best weights.

    A model YAML (``yolov8n-seg.yaml``, ``yolo11n-seg.yaml``) builds untrained; a ``.pt`` path
    fine-tunes from it. Offline and CPU-friendly settings: no pretrained download, no AMP check
    (it downloads a model), no plots (they download a font), an optimizer step every batch
    (``nbs = batch``: on a CPU budget updates are scarce), a short warm-up, mosaic off only for
    the last epoch, images cached in RAM. ``hours`` caps wall-clock training (ultralytics then
    fits the epoch count and learning-rate schedule to the time). ``keep_classes`` (names of
    the starting model's classes) keeps their scores as the starting weights give them:
    backbone, neck and the classification branch's hidden layers stay fixed, and only the other
    classes' classifier rows and the box and mask branches learn (for COCO weights: what COCO
    knows stays COCO's). ``overrides`` go to ``YOLO.train`` unchanged.
    """
    from ultralytics import YOLO

    data, out = Path(data), Path(out)
    if not data.is_file():
        raise FileNotFoundError(f"dataset file not found: {data} (clipose-yolo-labels writes it)")
    from_yaml = model.endswith((".yaml", ".yml"))
    if not from_yaml and not Path(model).is_file():
        raise SegmenterWeightsError(f"starting weights not found: {model}. {GET_WEIGHTS_HINT}")
    args = dict(
        data=str(data), imgsz=imgsz, epochs=epochs, batch=batch, workers=workers,
        device="cpu", amp=False, plots=False, pretrained=not from_yaml,
        nbs=batch, warmup_epochs=0.5, close_mosaic=1, cache="ram" if cache else False,
        project=str(out.resolve()), name="train", exist_ok=True, seed=seed, fraction=fraction,
        optimizer="AdamW", lr0=0.002, cos_lr=True, verbose=True,
    )
    if hours:
        args["time"] = hours
    args.update(overrides)
    yolo = YOLO(model, task="segment")
    if keep_classes:
        args["freeze"] = keep_classes_freeze_list(yolo.model)
        yolo.add_callback("on_train_start",
                          lambda trainer: hold_classifier_rows(trainer.model, keep_classes))
    log.info("training %s on %s: %s", model, data, args)
    start = time.perf_counter()
    yolo.train(**args)
    weights_dir = out / "train" / "weights"
    best = weights_dir / "best.pt"
    if not best.is_file():
        best = weights_dir / "last.pt"
    log.info("training took %.1f min; weights %s", (time.perf_counter() - start) / 60, best)
    return best


def keep_classes_freeze_list(model) -> list[int | str]:
    """ultralytics ``freeze`` entries for ``keep_classes``: every layer before the head, and
    the hidden layers of the head's classification branch (``<head>.cv3.<level>.<0|1>``)."""
    head_index = len(model.model) - 1
    head = model.model[-1]
    hidden = [f"{head_index}.cv3.{level}.{j}" for level in range(head.nl)
              for j in range(len(head.cv3[level]) - 1)]
    return [*range(head_index), *hidden]


def hold_classifier_rows(model, class_names: Sequence[str]) -> None:
    """Zero the gradients of these classes' rows in the last classification convolutions, so
    that (with the layers before them frozen) their scores stay the starting model's."""
    import torch

    index = {name: i for i, name in model.names.items()}
    unknown = [n for n in class_names if n not in index]
    if unknown:
        raise ValueError(f"keep_classes {unknown}: not classes of the model ({list(index)})")
    rows = torch.tensor([index[n] for n in class_names])
    for branch in model.model[-1].cv3:
        for param in (branch[-1].weight, branch[-1].bias):
            param.register_hook(lambda grad, rows=rows: grad.index_fill(0, rows, 0.0))
    log.info("classifier rows of %s held at the starting weights", list(class_names))


def validate_yolo(weights: Path, data: Path, imgsz: int, batch: int = 8) -> dict:
    """Box and mask mAP of ``weights`` on the ``val`` split of ``data``, per class too."""
    from ultralytics import YOLO

    res = YOLO(str(weights), task="segment").val(
        data=str(data), imgsz=imgsz, batch=batch, device="cpu", plots=False, workers=0,
        verbose=False, project=str(Path(weights).parent.parent), name="val", exist_ok=True,
    )
    names = res.names
    per_class = {}
    for i, c in enumerate(res.ap_class_index):
        per_class[names[int(c)]] = {
            "mask_mAP50": float(res.seg.all_ap[i, 0]),
            "mask_mAP50-95": float(res.seg.all_ap[i].mean()),
            "box_mAP50": float(res.box.all_ap[i, 0]),
        }
    return {
        "mask_mAP50": float(res.seg.map50),
        "mask_mAP50-95": float(res.seg.map),
        "box_mAP50": float(res.box.map50),
        "box_mAP50-95": float(res.box.map),
        "per_class": per_class,
        "imgsz": imgsz,
    }


def export_yolo(weights: Path, fmt: str, input_hw: tuple[int, int] = (256, 320)) -> Path:
    """Export ``weights`` to ``onnx`` or ``openvino`` with a fixed input (h, w): 256x320 holds
    a 4:3 frame at long side 320 with 16 rows of padding. Returns the written path."""
    from ultralytics import YOLO

    if fmt not in ("onnx", "openvino"):
        raise ValueError(f"export format {fmt!r}: use onnx or openvino")
    kwargs = {"simplify": False} if fmt == "onnx" else {}
    written = YOLO(str(weights), task="segment").export(
        format=fmt, imgsz=list(input_hw), dynamic=False, device="cpu", **kwargs
    )
    return Path(written)


def train_main(argv: list[str] | None = None) -> None:
    """``clipose-train-seg``: train, validate, copy the weights out, export."""
    parser = argparse.ArgumentParser(description="Train the YOLO-seg segmenter (offline).")
    parser.add_argument("--data", type=Path, required=True, help="data.yaml (clipose-yolo-labels)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (logs, checkpoints)")
    parser.add_argument("--model", default="yolov8n-seg.yaml",
                        help="ultralytics model YAML (untrained) or a .pt to fine-tune from")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hours", type=float, default=None,
                        help="wall-clock cap; epochs and schedule are fitted to it")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr0", type=float, default=0.002, help="AdamW learning rate")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the train split")
    parser.add_argument("--keep-classes", nargs="+", default=[], metavar="NAME",
                        help="classes whose scores stay the starting weights' (backbone, neck "
                             "and classifier hidden layers fixed; e.g. bottle bowl mug laptop "
                             "for a COCO start from clipose-import-yolo-tflite --classes nocs)")
    parser.add_argument("--freeze", type=int, default=None,
                        help="keep the first N layers fixed (10: the YOLOv8 backbone, 22: "
                             "backbone and neck); for fine-tuning pretrained weights")
    parser.add_argument("--no-val", action="store_true",
                        help="validate only after the last epoch (saves time per epoch)")
    parser.add_argument("--weights-out", type=Path, default=None,
                        help="copy the final .pt here (e.g. models/yoloseg_synth.pt)")
    parser.add_argument("--export", nargs="*", default=[], choices=["onnx", "openvino"],
                        help="formats to export the final weights to (beside --weights-out)")
    parser.add_argument("--export-hw", type=int, nargs=2, default=[256, 320],
                        metavar=("H", "W"), help="fixed input size of the exports")
    args = parser.parse_args(argv)
    log_to_terminal_and_file(args.out, "train_seg.log")
    try:
        start = time.perf_counter()
        best = train_yolo(args.data, args.out, args.model, args.imgsz, args.epochs, args.hours,
                          args.batch, fraction=args.fraction, val=not args.no_val,
                          lr0=args.lr0, keep_classes=args.keep_classes,
                          **({"freeze": args.freeze} if args.freeze else {}))
        minutes = (time.perf_counter() - start) / 60
        final = best
        if args.weights_out:
            args.weights_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(best, args.weights_out)
            final = args.weights_out
        scores = validate_yolo(final, args.data, args.imgsz)
        scores.update(train_minutes=round(minutes, 1), data=str(args.data), model=args.model)
        (args.out / "val_metrics.json").write_text(json.dumps(scores, indent=1))
        log.info("validation: mask mAP50 %.3f, mask mAP50-95 %.3f", scores["mask_mAP50"],
                 scores["mask_mAP50-95"])
        for fmt in args.export:
            log.info("exported %s", export_yolo(final, fmt, tuple(args.export_hw)))
    except (FileNotFoundError, SegmenterWeightsError, ValueError) as err:
        raise SystemExit(f"clipose-train-seg: {err}") from err


if __name__ == "__main__":
    train_main()
