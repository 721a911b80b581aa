"""``clipose-train-seg``: train the YOLO-seg segmenter offline, validate it, export it.

:func:`train_yolo` trains the nano model from its ultralytics YAML (or fine-tunes a ``.pt``) on
YOLO-seg labels (``clipose-yolo-labels``, or the ones ``clipose-synth`` writes), fully offline;
:func:`validate_yolo` scores it; :func:`export_yolo` writes the fixed-size ONNX / OpenVINO files
the node runs (:mod:`clipose_ros.core.segmentation`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from clipose_ros.core.yolo_backends import GET_WEIGHTS_HINT, SegmenterWeightsError
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.train_seg")


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


def main(argv: list[str] | None = None) -> None:
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
    main()
