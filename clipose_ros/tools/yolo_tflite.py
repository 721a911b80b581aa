"""``clipose-import-yolo-tflite``: an int8 TFLite YOLOv8-seg export back into a float, trainable
ultralytics model.

The only COCO-pretrained segmentation weights at hand are an int8 TFLite export (batch norm
folded into the convolutions). To fine-tune them they must become an ultralytics ``.pt`` again:

1. OpenVINO reads the TFLite file; each int8 weight tensor with its scales and zero points is
   evaluated into one float tensor, and the bias ``Add`` after each convolution gives the bias.
2. The convolutions of both graphs are matched by their place in the graph, not by list order
   (inside C2f blocks and the heads the orders differ): each convolution gets a key from its
   weight shape, stride and, recursively, the keys of the convolutions that feed it and that it
   feeds. The keys are unique in YOLOv8-seg; an export of another architecture is refused.
3. Batch norm comes back as an exact identity around the folded weights, re-centred on the
   statistics of calibration images, so that the model computes the same function in eval mode
   and nearly the same in train mode (where batch norm uses batch statistics); fine-tuning then
   starts from the COCO function rather than from a batch-normalised distortion of it.

No ROS imports. The converted weights are Ultralytics' COCO weights: AGPL-3.0.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES
from clipose_ros.core.segmentation import letterbox
from clipose_ros.core.yolo_backends import coco_names, tflite_metadata_names
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.yolo_tflite")

LICENCE_NOTE = (
    "Weights derived from Ultralytics' COCO-trained YOLOv8n-seg (AGPL-3.0); any model trained "
    "from them carries AGPL-3.0."
)
CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


class TfliteImportError(RuntimeError):
    """The TFLite file cannot be read or does not match the target architecture."""


@dataclass
class ConvNode:
    """One convolution of a graph: its weights and its neighbours among the convolutions."""

    name: str
    transposed: bool
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def match_convolutions(
    graph_a: dict[str, ConvNode], graph_b: dict[str, ConvNode]
) -> dict[str, str]:
    """Name in ``graph_a`` -> name in ``graph_b``, by structural keys (see module docstring).

    Raises :class:`TfliteImportError` when the graphs differ or a key is not unique.
    """

    def keys(graph: dict[str, ConvNode]) -> dict[str, str]:
        cache: dict[tuple[str, str], str] = {}

        def key(name: str, direction: str) -> str:
            """Shape and stride, and recursively the keys of the neighbours that way."""
            if (name, direction) not in cache:
                node = graph[name]
                cache[name, direction] = _digest(
                    node.transposed, node.weight_shape, node.stride,
                    sorted(key(n, direction) for n in getattr(node, direction)))
            return cache[name, direction]

        return {name: _digest(key(name, "parents"), key(name, "children")) for name in graph}

    keys_a, keys_b = keys(graph_a), keys(graph_b)
    by_key_b: dict[str, list[str]] = {}
    for name, key in keys_b.items():
        by_key_b.setdefault(key, []).append(name)
    mapping: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    for name, key in keys_a.items():
        seen.setdefault(key, []).append(name)
    for key, names in seen.items():
        targets = by_key_b.get(key, [])
        if len(names) != 1 or len(targets) != 1:
            shape = graph_a[names[0]].weight_shape
            raise TfliteImportError(
                f"convolution {names[0]} (weights {shape}) has {len(targets)} structural "
                f"counterpart(s) in the target model and {len(names) - 1} twin(s) of its own: "
                "the TFLite file is not an export of this architecture"
            )
        mapping[names[0]] = targets[0]
    if len(mapping) != len(graph_b):
        raise TfliteImportError(
            f"the TFLite graph has {len(graph_a)} convolutions, the target model {len(graph_b)}"
        )
    return mapping


# --- the TFLite side (through OpenVINO)


@dataclass
class TfliteGraph:
    convs: dict[str, ConvNode]
    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]


def _constant_value(output) -> np.ndarray | None:
    """The value of a weight subgraph (int8 constant, Convert, scale, zero point), or None
    when it depends on the input. OpenVINO keeps such decompression chains unfolded."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return np.asarray(node.get_data()).astype(np.float32)
    inputs = [_constant_value(i.get_source_output()) for i in node.inputs()]
    if any(v is None for v in inputs):
        return None
    if kind == "Convert":
        return inputs[0]
    if kind in ("Multiply", "Subtract", "Add"):
        op = {"Multiply": np.multiply, "Subtract": np.subtract, "Add": np.add}[kind]
        return op(inputs[0], inputs[1]).astype(np.float32)
    if kind == "Reshape":
        return inputs[0].reshape(tuple(node.get_output_shape(0)))
    if kind == "Transpose":
        return np.transpose(inputs[0], inputs[1].astype(int))
    return None


def read_tflite_graph(path: Path) -> TfliteGraph:
    """The convolutions of a TFLite file with float weights and biases (dequantised)."""
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        raise TfliteImportError(f"TFLite file not found: {path}")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as err:  # noqa: BLE001 - any failure means an unusable file
        raise TfliteImportError(f"OpenVINO cannot read {path}: {err}") from err
    convs: dict[str, ConvNode] = {}
    weights: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in CONV_TYPES]
    for op in ops:
        name = op.get_friendly_name()
        weight = _constant_value(op.input(1).get_source_output())
        if weight is None:
            raise TfliteImportError(f"{path}: convolution {name} has non-constant weights")
        if op.get_type_name() == "GroupConvolution":
            raise TfliteImportError(f"{path}: grouped convolution {name} is not supported")
        transposed = op.get_type_name() == "ConvolutionBackpropData"
        convs[name] = ConvNode(name, transposed, tuple(weight.shape),
                               tuple(op.get_attributes()["strides"]))
        weights[name] = weight
        bias = np.zeros(weight.shape[1] if transposed else weight.shape[0], np.float32)
        consumers = list(op.output(0).get_target_inputs())
        if len(consumers) == 1 and consumers[0].get_node().get_type_name() == "Add":
            add = consumers[0].get_node()
            other = add.input(1 - consumers[0].get_index()).get_source_output()
            value = _constant_value(other)
            if value is not None and value.size == bias.size:
                bias = value.reshape(-1)
        biases[name] = bias

    conv_names = {op.get_friendly_name() for op in ops}
    for op in ops:
        parents: set[str] = set()
        stack = [op.input(0).get_source_output().get_node()]
        visited: set[str] = set()
        while stack:
            node = stack.pop()
            node_name = node.get_friendly_name()
            if node_name in visited:
                continue
            visited.add(node_name)
            if node_name in conv_names:
                parents.add(node_name)
                continue
            if node.get_type_name() in ("Constant", "Parameter"):
                continue
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
        name = op.get_friendly_name()
        convs[name].parents = sorted(parents)
        for p in parents:
            convs[p].children.append(name)
    return TfliteGraph(convs, weights, biases)


# --- the ultralytics side


def torch_conv_graph(model, imgsz: int = 128) -> dict[str, ConvNode]:
    """The convolutions of an ultralytics model and who feeds whom, from one forward pass's
    autograd graph (every op between two convolutions is transparent)."""
    import torch

    modules = {name: m for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    out_fn: dict[object, str] = {}
    in_fn: dict[str, object] = {}
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: in_fn.__setitem__(name, args[0].grad_fn)))
        handles.append(module.register_forward_hook(
            lambda mod, args, out, name=name: out_fn.__setitem__(out.grad_fn, name)))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, imgsz, imgsz, requires_grad=True)
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    graph = {
        name: ConvNode(name, isinstance(m, torch.nn.ConvTranspose2d), tuple(m.weight.shape),
                       tuple(m.stride))
        for name, m in modules.items()
    }
    for name in modules:
        parents: set[str] = set()
        stack = [in_fn.get(name)]
        visited: set[int] = set()
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in visited:
                continue
            visited.add(id(fn))
            if fn in out_fn:
                parents.add(out_fn[fn])
                continue
            stack.extend(next_fn for next_fn, _ in fn.next_functions)
        graph[name].parents = sorted(parents)
        for p in parents:
            graph[p].children.append(name)
    return graph


def _drop(graph: dict[str, ConvNode], name: str) -> None:
    del graph[name]
    for node in graph.values():
        node.parents = [p for p in node.parents if p != name]
        node.children = [c for c in node.children if c != name]


def _conv_and_norm(model, conv_name: str):
    """The batch norm that follows an ultralytics ``Conv`` block's convolution, if any."""
    parent_name, _, leaf = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return getattr(parent, "bn", None) if leaf == "conv" else None


def calibration_batches(images: Sequence[Path], imgsz: int, batch: int = 8) -> Iterable:
    """Letterboxed RGB batches (N, 3, imgsz, imgsz) in [0, 1] for batch-norm statistics."""
    import torch

    for start in range(0, len(images), batch):
        arrays = []
        for path in images[start:start + batch]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("calibration image %s is unreadable; skipped", path)
                continue
            rgb, _, _ = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (imgsz, imgsz))
            arrays.append(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
        if arrays:
            yield torch.from_numpy(np.stack(arrays))


def convert(
    tflite: Path,
    model_yaml: str = "yolov8n-seg.yaml",
    calibration_images: Sequence[Path] = (),
    calibration_imgsz: int = 640,
):
    """An ultralytics segmentation model holding the TFLite file's weights (eval mode).

    With ``calibration_images``, each restored batch norm is centred on the per-channel mean
    and spread of its convolution's output over those images; without, it is the plain identity
    (mean 0, variance 1 - eps), which computes the same function in eval mode.
    """
    import torch
    from ultralytics.nn.tasks import SegmentationModel

    graph = read_tflite_graph(tflite)
    names = tflite_metadata_names(tflite)
    model = SegmentationModel(model_yaml, nc=len(names) if names else 80, verbose=False)
    target = torch_conv_graph(model)
    # Fixed convolutions (the DFL's arange kernel) are not weights to import, and the TFLite
    # graph wires them to more inputs than the torch graph shows (a split of one concatenation).
    for name in [n for n in target if not model.get_submodule(n).weight.requires_grad]:
        fixed = model.get_submodule(name).weight.detach().numpy()
        twins = [n for n, w in graph.weights.items()
                 if w.shape == fixed.shape and np.allclose(w, fixed, atol=1e-3)]
        if len(twins) != 1:
            raise TfliteImportError(f"the fixed convolution {name} has {len(twins)} copies in "
                                    f"{tflite}")
        _drop(target, name)
        _drop(graph.convs, twins[0])
    mapping = match_convolutions(graph.convs, target)
    log.info("matched %d convolutions of %s onto %s", len(mapping), tflite, model_yaml)

    with torch.no_grad():
        for src, dst in mapping.items():
            module = model.get_submodule(dst)
            module.weight.copy_(torch.from_numpy(graph.weights[src]))
            bias = torch.from_numpy(graph.biases[src])
            norm = _conv_and_norm(model, dst)
            if norm is not None:
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias)
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
            elif module.bias is not None:
                module.bias.copy_(bias)
            elif np.abs(graph.biases[src]).max() > 1e-6:
                raise TfliteImportError(f"{dst} has no bias but the TFLite convolution does")
    model.names = names or coco_names()
    model.eval()
    if calibration_images:
        recentre_batch_norms(model, calibration_images, calibration_imgsz)
    return model


def recentre_batch_norms(model, images: Sequence[Path], imgsz: int) -> int:
    """Centre each identity batch norm on its input's statistics over ``images`` while keeping
    the eval-mode function: mean m, variance v, weight sqrt(v + eps), bias b + m."""
    import torch

    sums: dict[str, list] = {}
    handles = []
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}

    def hook(name):
        def record(mod, args):
            x = args[0].double()
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + x.sum(dim=(0, 2, 3))
            s[1] = s[1] + (x * x).sum(dim=(0, 2, 3))
            s[2] += x.numel() // x.shape[1]
        return record

    for name, norm in norms.items():
        handles.append(norm.register_forward_pre_hook(hook(name)))
    count = 0
    try:
        with torch.no_grad():
            for batch in calibration_batches(list(images), imgsz):
                model(batch)
                count += len(batch)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise TfliteImportError("no readable calibration image")
    with torch.no_grad():
        for name, norm in norms.items():
            s0, s1, n = sums[name]
            mean = (s0 / n).float()  # the convolution's output, before the folded bias
            var = ((s1 / n) - (s0 / n) ** 2).clamp_min(1e-6).float()
            scale = torch.sqrt(var + norm.eps)
            norm.bias.add_(mean)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(scale)
    log.info("batch norms re-centred on %d calibration images", count)
    return count


# COCO class each NOCS category's classifier starts from: the four COCO has; a can is closest
# to a bottle (a standing cylinder); COCO has no camera, which starts from the usual prior.
NOCS_FROM_COCO: dict[str, str | None] = {
    "bottle": "bottle", "bowl": "bowl", "camera": None, "can": "bottle", "laptop": "laptop",
    "mug": "cup",
}


def to_nocs_classes(model):
    """A six-class (NOCS order) copy of a COCO model: every weight kept, and the classifier
    rows of the categories COCO has taken from their COCO classes (:data:`NOCS_FROM_COCO`), so
    that fine-tuning starts from what the COCO model already finds. The hidden layers of the
    classification branch keep COCO's width (ultralytics' fine-tuning transfers them so)."""
    import copy

    import torch

    coco_index = {name: i for i, name in model.names.items()}
    missing = [c for c in NOCS_FROM_COCO.values() if c and c not in coco_index]
    if missing:
        raise TfliteImportError(f"the model has no class {missing} (not a COCO model?)")
    nocs = copy.deepcopy(model)
    head = nocs.model[-1]
    nc = len(CATEGORIES)
    with torch.no_grad():
        for branch in head.cv3:
            old = branch[-1]
            new = torch.nn.Conv2d(old.in_channels, nc, 1)
            stride_prior = new.bias.clone()
            for row, category in enumerate(CATEGORIES):
                coco = NOCS_FROM_COCO[category]
                if coco is None:
                    # ultralytics' prior for an unseen class (few objects per image), and
                    # small random weights: the class is learnt from the data alone.
                    stride_prior[row] = float(old.bias.min())
                    new.weight[row].normal_(0.0, 0.01)
                else:
                    new.weight[row] = old.weight[coco_index[coco]]
                    stride_prior[row] = old.bias[coco_index[coco]]
            new.bias.copy_(stride_prior)
            branch[-1] = new
    head.nc = nc
    head.no = nc + head.reg_max * 4
    nocs.yaml["nc"] = nc
    nocs.names = dict(enumerate(CATEGORIES))
    return nocs.eval()


def save_checkpoint(model, out: Path, source: Path) -> Path:
    """An ultralytics checkpoint (float32) that ``YOLO(out)`` loads, trains and exports."""
    import copy
    from datetime import datetime

    import torch
    import ultralytics

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float()
    model.args = {"task": "segment", "imgsz": 640}
    model.task = "segment"
    torch.save({
        "model": model,
        "ema": None,
        "epoch": -1,
        "optimizer": None,
        "train_args": {"task": "segment", "imgsz": 640, "model": str(source)},
        "date": datetime.now(UTC).isoformat(),
        "version": ultralytics.__version__,
        "license": LICENCE_NOTE,
        "docs": f"converted from {source.name} by clipose-import-yolo-tflite",
    }, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """``clipose-import-yolo-tflite IN.tflite OUT.pt``."""
    parser = argparse.ArgumentParser(
        description="Turn an int8 TFLite YOLOv8-seg export into a float ultralytics .pt. "
        + LICENCE_NOTE)
    parser.add_argument("tflite", type=Path, help="the .tflite file")
    parser.add_argument("out", type=Path, help="the .pt to write")
    parser.add_argument("--model-yaml", default="yolov8n-seg.yaml",
                        help="ultralytics architecture of the export")
    parser.add_argument("--calibration", type=Path, nargs="*", default=[],
                        help="images or folders of *_color.png / *.jpg / *.png used to centre the "
                             "restored batch norms (recommended before fine-tuning)")
    parser.add_argument("--calibration-count", type=int, default=64,
                        help="at most this many calibration images (spread over the list)")
    parser.add_argument("--calibration-imgsz", type=int, default=640,
                        help="square letterbox size of the calibration images (the training "
                             "imgsz you will fine-tune at)")
    parser.add_argument("--classes", choices=["coco", "nocs"], default="coco",
                        help="coco: the 80 COCO classes as exported; nocs: the six categories, "
                             "classifiers of bottle, bowl, mug (cup), laptop and can (bottle) "
                             "started from COCO's, ready to fine-tune on NOCS-format labels")
    args = parser.parse_args(argv)
    log_to_terminal_and_file(args.out.parent, "import_yolo_tflite.log")
    images = find_images(args.calibration, args.calibration_count)
    try:
        model = convert(args.tflite, args.model_yaml, images, args.calibration_imgsz)
        if args.classes == "nocs":
            model = to_nocs_classes(model)
    except TfliteImportError as err:
        raise SystemExit(f"clipose-import-yolo-tflite: {err}") from err
    written = save_checkpoint(model, args.out, args.tflite)
    log.info("wrote %s (%d classes). %s", written, len(model.names), LICENCE_NOTE)


def find_images(paths: Sequence[Path], limit: int) -> list[Path]:
    """Image files named directly or found in folders (colour frames only), evenly thinned."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                                and not p.name.endswith(("_depth.png", "_mask.png", "_coord.png",
                                                         "_composed.png"))))
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"clipose-import-yolo-tflite: calibration path not found: {path}")
    if len(found) > limit > 0:
        found = [found[i] for i in np.linspace(0, len(found) - 1, limit).astype(int)]
    return found


if __name__ == "__main__":
    main()
