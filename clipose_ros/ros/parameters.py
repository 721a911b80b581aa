"""The parameters of the two nodes, and the checks of their values. No ROS imports.

``pose_node`` declares :data:`POSE_NODE_PARAMS`, ``synthetic_camera`` :data:`CAMERA_PARAMS`
(with descriptions and ranges, so ``ros2 param describe`` shows them; ``config/pose.yaml``
sets them, the launch file overrides a few). ``clipose-infer`` reads the pose node's defaults
from here, without rclpy, so that it runs the pipeline exactly as the node does.

``min_points`` is the one threshold on an instance's mask pixels with valid depth at run time:
the node hands it to its pipeline, which drops instances below it and sets the estimator's
(replacing the value the exported model file stores, which is the training-time filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipose_ros.core.tracking import TrackerConfig

PACKAGE = "clipose_ros"
DEFAULT_POSE_MODEL = "models/clipose_pose_clip.pt"
# COCO-pretrained, fine-tuned to the six categories: finds real objects (models/
# yoloseg_coco_nocs.md; AGPL-3.0 weights). The ONNX export runs on OpenVINO on a CPU; with
# device cuda pass models/yoloseg_coco_nocs.pt. models/yoloseg_synth.* is the from-scratch
# alternative (generated frames only, Apache-2.0).
DEFAULT_SEGMENTER_WEIGHTS = "models/yoloseg_coco_nocs.onnx"
# Best F1 per class of that segmenter on 600 generated validation frames
# (scripts/choose_class_thresholds.py; models/yoloseg_coco_nocs.md, "Score threshold per class").
DEFAULT_CLASS_SCORE_THRESHOLDS = "bottle:0.25 bowl:0.45 camera:0.4 can:0.35 laptop:0.35 mug:0.4"


@dataclass(frozen=True)
class Param:
    """One declared parameter: default, what it does, its range, whether it may change live."""

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False


def param(
    default: Any,
    description: str,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    read_only: bool = False,
) -> Any:
    """A field of a node's config that carries what declaring it as a ROS parameter needs."""
    return field(default=default, metadata={"description": description, "low": low,
                                            "high": high, "choices": choices,
                                            "read_only": read_only})


def params_of(config: type) -> tuple[Param, ...]:
    """The declarations of a node config's fields, in their order."""
    return tuple(Param(f.name, f.default, **f.metadata) for f in fields(config))


@dataclass(frozen=True)
class PoseNodeConfig:
    """The pose node's parameters, typed (``config/pose.yaml``; README, "Parameters").

    ``min_points`` is the one run-time threshold on the mask pixels with valid depth of an
    instance: it replaces the value the exported model file stores (the training-time filter).
    """

    pose_model: str = param(DEFAULT_POSE_MODEL, "Exported CLIPose TorchScript file (absolute, "
        "or relative to the working directory, the source tree or the package share dir)",
        read_only=True)
    segmenter_weights: str = param(DEFAULT_SEGMENTER_WEIGHTS, "YOLO-seg weights (same lookup): "
        ".onnx runs on OpenVINO / ONNX Runtime (fastest on a CPU), .pt on PyTorch (use it with "
        "cuda)", read_only=True)
    device: str = param("cpu", "Torch device: cpu, cuda, cuda:N, or auto (cuda when present)",
        read_only=True)
    num_threads: int = param(0, "CPU threads of torch and the segmenter back-end (0: their "
        "defaults)", 0, 256, read_only=True)
    imgsz: int = param(320, "Segmenter input size in pixels (a multiple of 32)", 64, 1280,
        read_only=True)
    enabled: bool = param(True, "Estimate and publish poses; false pauses the node (input sets "
        "are counted as frames_paused and dropped, no model runs, the objects' markers are "
        "deleted) to free the CPU or GPU, e.g. while the arm moves")
    score_threshold: float = param(0.5, "Minimum segmentation score of an object", 0.0, 1.0)
    class_score_thresholds: str = param(DEFAULT_CLASS_SCORE_THRESHOLDS, "Per-class minimum "
        "scores that replace score_threshold for the classes named, as CLASS:SCORE entries apart "
        "by spaces (the default: chosen for the default segmenter on generated validation "
        "frames; empty: score_threshold for all)")
    min_mask_area: int = param(100, "Smallest mask (pixels) the segmenter keeps", 1, 1_000_000,
        read_only=True)
    min_points: int = param(50, "Fewest mask pixels with valid depth for a pose (the one "
        "run-time threshold: it replaces the value stored in the model file)", 4, 1_000_000)
    pose_subsets: int = param(2, "Disjoint point subsets the pose network runs on per object, "
        "poses averaged (1: once; 2: about 2x the pose time, more accurate)", 1, 8)
    mug_handle: bool = param(True, "Turn each mug's pose about its up axis to the handle found "
        "in its depth points (the network alone often misplaces the handle)")
    box_fit: bool = param(True, "Slide each object's box the least distance that puts its depth "
        "points inside it (a segmenter mask that spills onto the background pulls the network's "
        "centre off the object)")
    border_fit: bool = param(True, "For an object the image border cuts, move its box towards "
        "the cut until the points on its far side reach the box (the network centres it on the "
        "part it sees)")
    laptop_lid: bool = param(True, "Turn each laptop's pose about its up axis to the lid plane "
        "found in its depth points (the network alone often turns laptops the image border cuts)")
    translation_stddev: float = param(0.01, "Standard deviation (m) stated for each object's "
        "position in the Detection3D covariance (the rotation's comes from the network's axis "
        "confidences; README, \"Pose confidence\")", 0.0, 10.0)
    track_match_distance: float = param(0.1, "Largest centre jump (m) between frames for one "
        "object", 0.001, 5.0)
    track_max_missed: int = param(5, "Frames an object may go unseen and keep its id", 0, 10_000)
    smoothing: float = param(0.0, "Weight of the previous pose in per-object smoothing (0: off)",
        0.0, 0.99)
    frame_prefix: str = param("clipose/", "Prefix of the object TF frames <prefix><class>_<id>")
    publish_tf: bool = param(True, "Broadcast camera -> object transforms on /tf")
    publish_markers: bool = param(True, "Publish the MarkerArray for RViz")
    reliable_qos: bool = param(False, "Subscribe with reliable QoS instead of sensor-data (best "
        "effort)", read_only=True)
    sync_slop: float = param(0.05, "Largest stamp difference (s) within one RGB/depth/info set",
        0.0, 5.0, read_only=True)
    depth_scale: float = param(0.0, "Metres per depth unit; 0: by encoding (16UC1 millimetres, "
        "32FC1 metres). Set it for a driver that breaks the convention, e.g. 0.001 for 32FC1 "
        "millimetres", 0.0, 1000.0)
    stamp_tolerance: float = param(5.0, "Largest difference (s) between an input stamp and the "
        "node's clock; beyond it the set is reported and left out of the latency statistic", 0.1,
        1e9)
    sync_queue_size: int = param(10, "Messages kept per input topic for synchronisation", 1, 1000,
        read_only=True)
    diagnostics_period: float = param(1.0, "Seconds between /diagnostics messages", 0.1, 60.0,
        read_only=True)
    warn_throttle: float = param(5.0, "Seconds between two warnings of the same kind", 0.0, 3600.0)
    seed: int = param(0, "Seed of the point sampling (reproducible poses)", 0, 2**31 - 1,
        read_only=True)

POSE_NODE_PARAMS: tuple[Param, ...] = params_of(PoseNodeConfig)


# "none" and the presets of clipose_ros.data.sensor (not imported here: it loads the renderer).
SENSOR_CHOICES = ("none", "active-stereo", "structured-light")

@dataclass(frozen=True)
class CameraConfig:
    """The synthetic camera's parameters, typed."""

    source: str = param("", "NOCS-format folder to replay; empty: render scenes with the "
        "generator", read_only=True)
    intrinsics: str = param("camera", "K for folder frames with none stored (camera | real)",
        choices=("camera", "real"), read_only=True)
    scenes: int = param(4, "Scenes to render", 1, 1000, read_only=True)
    frames_per_scene: int = param(1, "Views rendered per scene", 1, 100, read_only=True)
    seed: int = param(0, "Seed of the rendered scenes", 0, 2**31 - 1, read_only=True)
    min_objects: int = param(3, "Fewest objects per rendered scene", 1, 6, read_only=True)
    max_objects: int = param(5, "Most objects per rendered scene", 1, 6, read_only=True)
    depth_noise: bool = param(True, "Depth noise in rendered frames (with a sensor: all of its "
        "depth effects)", read_only=True)
    sensor: str = param("structured-light", "Sensor model of rendered frames: a realism preset "
        "of clipose-synth (room scene, depth holes, offsets, correlated noise, colour camera "
        "effects; the shipped models are trained on structured-light), or none for ideal frames "
        "on a plain table", choices=SENSOR_CHOICES, read_only=True)
    distractors: bool = param(True, "Non-category clutter in rendered scenes", read_only=True)
    max_frames: int = param(0, "Replay at most this many frames (0: all)", 0, 1_000_000,
        read_only=True)
    rate_hz: float = param(10.0, "Frames published per second", 0.1, 200.0, read_only=True)
    hold_s: float = param(5.0, "Seconds each frame is repeated before the next (static scene)",
        0.0, 3600.0, read_only=True)
    loop: bool = param(True, "Start over after the last frame (else keep the last one)",
        read_only=True)
    wait_for_subscriber: bool = param(True, "Start streaming (and the first frame's hold time) "
        "only once something subscribes to the RGB topic, so a slow-starting node sees frame 0",
        read_only=True)
    depth_encoding: str = param("16UC1", "Depth encoding: 16UC1 (mm) or 32FC1 (m)",
        choices=("16UC1", "32FC1"), read_only=True)
    frame_id: str = param("camera_color_optical_frame", "Optical frame id of the images",
        read_only=True)

    def __post_init__(self) -> None:
        if self.min_objects > self.max_objects:
            raise ParameterError(
                f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")


CAMERA_PARAMS: tuple[Param, ...] = params_of(CameraConfig)


class ParameterError(ValueError):
    """A parameter value the node refuses at start; the message names the key."""


def resolve_model_path(value: str) -> Path:
    """A model path as given if it exists, else under the source tree, else the share dir."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    source = Path(__file__).resolve().parents[2] / path
    if source.exists():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory(PACKAGE)) / path
        if shared.exists():
            return shared
    except Exception:  # noqa: BLE001 - not installed through colcon: no share dir to look in
        pass
    return source  # does not exist: the loader's error names it and says how to get one


def resolve_device(device: str) -> str:
    """Check a torch device name against this machine; 'auto' picks cuda when present."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device: {device!r} requested but torch sees no CUDA device on this machine "
                "(use device:=cpu or device:=auto)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ParameterError(
                f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ParameterError(f"device: {device!r} is not cpu, cuda, cuda:N or auto")


def check_frame_prefix(prefix: str) -> None:
    """tf2 refuses frame ids with a leading slash or whitespace: refuse such a prefix early."""
    if prefix.startswith("/") or any(c.isspace() for c in prefix):
        raise ParameterError(
            f"frame_prefix: {prefix!r} would make TF frame ids that tf2 rejects (no leading "
            "'/', no whitespace), e.g. use 'clipose/'"
        )


def tracker_config(config: PoseNodeConfig) -> TrackerConfig:
    """The tracker settings of a pose node configuration."""
    return TrackerConfig(config.track_match_distance, config.track_max_missed, config.smoothing)


def foreign_thresholds_warning(class_score_thresholds: str, segmenter_weights: str) -> str | None:
    """A warning when the shipped per-class thresholds run with other segmenter weights: they
    were chosen for the default weights' scores (any of their formats, same file stem), and
    another model's scores mean something else. None when that is not the case."""
    if class_score_thresholds != DEFAULT_CLASS_SCORE_THRESHOLDS:
        return None
    if Path(str(segmenter_weights)).stem == Path(DEFAULT_SEGMENTER_WEIGHTS).stem:
        return None
    return (
        f"class_score_thresholds is the default ({DEFAULT_CLASS_SCORE_THRESHOLDS!r}), chosen for "
        f"{DEFAULT_SEGMENTER_WEIGHTS}, but segmenter_weights is {segmenter_weights}: "
        "choose thresholds for these weights (scripts/choose_class_thresholds.py) or set "
        "class_score_thresholds to '' for score_threshold alone"
    )
