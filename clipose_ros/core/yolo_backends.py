"""Model back-ends of the YOLO-seg segmenter: one call signature for every weights format.

A back-end takes the letterboxed NCHW float32 input and returns the raw YOLO-seg outputs,
predictions (1, 4 + classes + mask coefficients, anchors) and mask prototypes (1, nm, h, w):

- ``.pt``: ultralytics and torch (any input size, stride 32);
- ``.onnx``: OpenVINO on the CPU (the fastest here), else ONNX Runtime;
- an ``*_openvino_model`` folder or ``.xml``: OpenVINO IR;
- ``.tflite``: an ultralytics TFLite export (float or int8) through OpenVINO.

:func:`load_backend` picks one; :class:`~clipose_ros.core.segmentation.YoloSegmenter` does the
letterbox, NMS and mask decoding once for all of them. Ultralytics is imported lazily, and told
never to reach the network or pip.
"""

from __future__ import annotations

import ast
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

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


class SegmenterWeightsError(RuntimeError):
    """Segmentation weights are missing, unreadable or not a YOLO-seg model; names the file."""


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


def coco_names() -> dict[int, str]:
    """The 80 COCO class names in ultralytics' order, from its own dataset file."""
    import ultralytics
    import yaml

    cfg = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
    return {int(k): str(v) for k, v in yaml.safe_load(cfg.read_text())["names"].items()}


def tflite_metadata_names(path: Path) -> dict[int, str] | None:
    """Class names stored by an ultralytics export (a metadata zip appended to the file)."""
    try:
        with zipfile.ZipFile(path) as z:
            text = z.read(z.namelist()[0]).decode()
    except (zipfile.BadZipFile, IndexError, KeyError, OSError):
        return None
    try:
        meta = ast.literal_eval(text)
        return {int(k): str(v) for k, v in meta["names"].items()}
    except (ValueError, SyntaxError, KeyError, TypeError, AttributeError):
        return None


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
