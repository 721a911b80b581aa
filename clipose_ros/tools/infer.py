"""``clipose-infer``: the node's pipeline, offline, on RGB-D data as users have it.

Inputs (one kind per run):

- ``--rgb A.png --depth B.png``: one pair (depth PNG / NPY / EXR);
- ``--folder DIR`` (repeatable): ``X_color.png`` + ``X_depth.{png,npy,exr}`` pairs below DIR
  (NOCS-format folders included: their label's K is used), or ``rgb/`` + ``depth/``
  sub-folders with the same file stems;
- ``--bag PATH`` (repeatable): rosbag2 recordings (``.db3`` / ``.mcap``, directory or file),
  colour and depth paired by header stamp, K from the bag's camera_info.

Why offline: to see what the model makes of a user's own recording without starting a ROS
graph, and to get numbers (poses per frame, timings) that can be compared between runs.

Writes to ``--out``: ``poses.jsonl`` (one line per processed frame), ``overlays/`` (every Nth
frame, drawn as the node's debug image), ``summary.json`` and ``infer.log``. A bad input item (an
unreadable file, a frame without intrinsics, a corrupt message) is reported by name and skipped;
the rest is processed. The exit status is 0 when at least one frame was processed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from clipose_ros.core.structures import Frame, ObjectPose

if TYPE_CHECKING:
    from clipose_ros.core.pipeline import PosePipeline

log = logging.getLogger("clipose.infer")

# Median valid depth an RGB-D camera plausibly sees (metres): the depth-unit guess uses it.
# Tighter than the node's refusal range (ros/convert.py, 0.05-20 m) on purpose: a unit is only
# assumed where the rescaled depth is typical (50 m read as millimetres would give 5 cm).
PLAUSIBLE_DEPTH_M = (0.1, 10.0)
RGB_TAGS = ("color", "colour", "rgb", "image")
DEPTH_SUFFIXES = (".png", ".npy", ".exr", ".tif", ".tiff")
RGB_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FOLDER_CAMERA_INFO = ("camera_info.yaml", "camera_info.yml")
# realsense2_camera 4.x publishes under /camera/camera/..., older releases under /camera/...
DEFAULT_RGB_TOPICS = ("/camera/camera/color/image_raw", "/camera/color/image_raw")
DEFAULT_DEPTH_TOPICS = ("/camera/camera/aligned_depth_to_color/image_raw",
                        "/camera/aligned_depth_to_color/image_raw")
DEFAULT_INFO_TOPICS = ("/camera/camera/color/camera_info", "/camera/color/camera_info")
IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class SkipItem(Exception):
    """One input item (a frame, a file, a message) that cannot be used; the message names it."""


class SourceError(Exception):
    """A whole input (folder, bag) that cannot be used, e.g. a topic it lacks."""


@dataclass
class Item:
    """One frame to process: a name unique in the run, where it comes from, how to load it."""

    name: str
    source: str
    load: Callable[[], Frame]
    stamp_ns: int | None = None
    depth_source: str | None = None  # the depth file, when it is one


@dataclass
class Report:
    """Problems met on the way: every one logged; repeated warnings of one kind only once at
    WARNING level (the count is in the summary), so a 10 000-frame bag does not flood."""

    problems: list[dict] = field(default_factory=list)
    warning_counts: Counter = field(default_factory=Counter)

    def problem(self, where: str, message: str) -> None:
        self.problems.append({"where": where, "message": message})
        log.error("%s: %s", where, message)

    def warn(self, kind: str, message: str) -> None:
        self.warning_counts[kind] += 1
        if self.warning_counts[kind] == 1:
            log.warning("%s (said once; the summary counts how often)", message)
        else:
            log.debug(message)


# ---------------------------------------------------------------------------- depth and K


def _unit(scale: float) -> str:
    return {1.0: "metres", 0.001: "millimetres", 0.0001: "0.1 mm"}.get(
        round(scale, 12), f"{scale:g} m per unit")


def guess_depth_scale(raw_median: float, scale: float) -> float | None:
    """The metres per unit, ``scale`` / 1000 or x 1000, that makes a median of ``raw_median``
    depth units a distance an RGB-D camera sees (:data:`PLAUSIBLE_DEPTH_M`); None: neither."""
    low, high = PLAUSIBLE_DEPTH_M
    for alt in (scale * 1e-3, scale * 1e3):
        if low <= raw_median * alt <= high:
            return alt
    return None


def assumed_unit_message(where: str, scale: float, raw_median: float, alt: float) -> str:
    """The warning that says which depth unit was assumed instead of the stated one."""
    return (f"{where}: with depth scale {scale:g} ({_unit(scale)}) the median depth is "
            f"{raw_median * scale:.4g} m, not what an RGB-D camera sees; assuming {_unit(alt)} "
            f"(scale {alt:g}, median {raw_median * alt:.2f} m). Set --depth-scale to the "
            "depth's unit if this guess is wrong")


def depth_to_metres(
    raw: np.ndarray, scale: float, where: str, report: Report | None = None
) -> np.ndarray:
    """float32 metres (0 = invalid) from raw depth values times ``scale``.

    Depth stated in the wrong unit (a float file in millimetres, a PNG declared in metres) gives
    a median depth no RGB-D camera sees; when a factor of 1000 either way makes it plausible,
    that is assumed and a warning says so, rather than posing objects kilometres away.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise SkipItem(f"{where}: depth must have one channel, got shape {raw.shape}")
    depth = raw.astype(np.float32)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    valid = depth > 0
    if not valid.any():
        raise SkipItem(f"{where}: depth has no valid pixel (all zero, negative or non-finite)")
    raw_median = float(np.median(depth[valid]))
    median = raw_median * scale
    low, high = PLAUSIBLE_DEPTH_M
    if not low <= median <= high:
        alt = guess_depth_scale(raw_median, scale)
        if alt is not None:
            message = assumed_unit_message(where, scale, raw_median, alt)
            if report is not None:
                report.warn("depth_scale", message)
            else:
                log.warning(message)
            scale = alt
        else:
            message = (f"{where}: median depth {median:.4g} m with scale {scale:g} is outside "
                       f"{low}-{high} m in every unit tried; kept as stated")
            if report is not None:
                report.warn("depth_range", message)
            else:
                log.warning(message)
    depth *= np.float32(scale)
    return depth


def read_depth_file(path: Path) -> tuple[np.ndarray, float]:
    """Raw depth values and the scale their type implies (integers: mm, floats: metres)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise SkipItem(f"{path}: depth file missing")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - any read failure: name the file
            raise SkipItem(f"{path}: cannot read the NPY depth ({err})") from err
    elif suffix == ".exr":
        from clipose_ros.data.exr import ExrError, read_exr_depth

        try:
            raw = read_exr_depth(path)
        except ExrError as err:
            # An OpenCV built with OpenEXR reads the codecs ours does not (PIZ, DWA, tiles).
            os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise SkipItem(str(err)) from err
        except OSError as err:
            raise SkipItem(f"{path}: cannot read the EXR depth ({err})") from err
    else:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise SkipItem(f"{path}: cannot read the depth image (corrupt or not an image)")
        if raw.ndim == 3 and np.issubdtype(raw.dtype, np.floating):
            raw = raw[:, :, 0]  # EXR/TIFF writers often repeat depth in every channel
    if raw.ndim == 3 and raw.dtype == np.uint8 and path.name.endswith("_depth.png"):
        # CAMERA25's objects-only depth, mm packed into two 8-bit channels: the NOCS reader's.
        from clipose_ros.data import nocs_format as nf

        return nf.read_depth(path.with_name(path.name[: -len("_depth.png")])), 1.0
    if raw.ndim != 2:
        raise SkipItem(f"{path}: depth must have one channel, got shape {raw.shape} "
                       "(a colour image given as depth?)")
    if np.issubdtype(raw.dtype, np.integer):
        return raw, 0.001
    if np.issubdtype(raw.dtype, np.floating):
        return raw, 1.0
    raise SkipItem(f"{path}: depth of type {raw.dtype} (expected integer mm or float metres)")


def read_rgb_file(path: Path) -> np.ndarray:
    import cv2

    path = Path(path)
    if not path.is_file():
        raise SkipItem(f"{path}: colour image missing")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SkipItem(f"{path}: cannot read the colour image (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Intrinsics:
    """K, the image size it was calibrated for (None: unknown) and where it came from."""

    K: np.ndarray
    size: tuple[int, int] | None  # (width, height)
    origin: str


def _matrix(value: Any, path: Path, key: str) -> np.ndarray:
    data = value.get("data") if isinstance(value, dict) else value
    try:
        K = np.asarray(data, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {key} is not 9 numbers: {data!r}") from err
    return K


def load_camera_info_yaml(path: Path) -> Intrinsics:
    """K from a ROS camera_info YAML: the calibration file format (``camera_matrix``,
    ``image_width``) or a CameraInfo message dumped by ``ros2 topic echo`` (``k``, ``width``)."""
    import yaml

    from clipose_ros.data.nocs_format import resolve_intrinsics

    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"camera_info file {path} cannot be read: {err}") from err
    if not docs or not isinstance(docs[0], dict):
        raise ValueError(f"camera_info file {path} holds no mapping")
    doc = docs[0]
    for key, w_key, h_key in (("camera_matrix", "image_width", "image_height"),
                              ("k", "width", "height"), ("K", "width", "height")):
        if key in doc:
            K = _matrix(doc[key], path, key)
            width, height = int(doc.get(w_key) or 0), int(doc.get(h_key) or 0)
            break
    else:
        raise ValueError(f"camera_info file {path} has neither camera_matrix nor k "
                         f"(keys: {sorted(doc)})")
    try:
        K = resolve_intrinsics(K)
    except ValueError as err:
        raise ValueError(f"camera_info file {path}: {err}") from err
    return Intrinsics(K, (width, height) if width and height else None, str(path))


def check_intrinsics(K: Intrinsics, width: int, height: int, where: str) -> None:
    """Refuse K made for another image size: poses would be silently off otherwise."""
    if K.size is not None and K.size != (width, height):
        raise SkipItem(f"{where}: the intrinsics from {K.origin} are for {K.size[0]}x"
                       f"{K.size[1]} images but the frame is {width}x{height}")
    cx, cy = K.K[0, 2], K.K[1, 2]
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise SkipItem(f"{where}: principal point ({cx:g}, {cy:g}) from {K.origin} lies "
                       f"outside the {width}x{height} image: intrinsics of another resolution?")


def make_frame(rgb: np.ndarray, depth: np.ndarray, K: Intrinsics, where: str, name: str,
               stamp_ns: int = 0) -> Frame:
    """A checked Frame: sizes agree, K fits the image."""
    h, w = rgb.shape[:2]
    if depth.shape != (h, w):
        raise SkipItem(f"{where}: depth is {depth.shape[1]}x{depth.shape[0]} but the colour "
                       f"image is {w}x{h}: depth must be registered to the colour image")
    check_intrinsics(K, w, h, where)
    return Frame(rgb=rgb, depth=depth, K=K.K, stamp_ns=stamp_ns, frame_id=name)


# ---------------------------------------------------------------------------- pairs and folders


def pair_item(rgb_path: Path, depth_path: Path, K: Intrinsics | None, scale: float | None,
              report: Report, name: str | None = None,
              folder_K: Callable[[], Intrinsics | None] | None = None) -> Item:
    """An Item for one colour + depth file pair."""
    rgb_path, depth_path = Path(rgb_path), Path(depth_path)

    def load() -> Frame:
        intr = K if K is not None else (folder_K() if folder_K else None)
        if intr is None:
            raise SkipItem(f"{rgb_path}: no intrinsics: pass --camera-info FILE, --fx --fy "
                           "--cx --cy, or --intrinsics real|camera (or put camera_info.yaml "
                           "beside the images)")
        rgb = read_rgb_file(rgb_path)
        raw, implied = read_depth_file(depth_path)
        depth = depth_to_metres(raw, implied if scale is None else scale, str(depth_path),
                                report)
        return make_frame(rgb, depth, intr, f"{rgb_path} + {depth_path.name}",
                          name or rgb_path.stem)

    return Item(name or rgb_path.stem, str(rgb_path), load, depth_source=str(depth_path))


def _depth_partner(rgb: Path, base: str) -> Path | None:
    """``<base>_depth.*`` beside the colour image; for CAMERA25 (``<root>/CAMERA/<split>/
    <scene>/``, or without ``CAMERA``) the composed depth in ``<root>/camera_full_depths/<split>/
    <scene>/<base>_composed.png`` first: the real background's depth with the objects, what
    the field uses, rather than the objects-only depth beside the image."""
    split, scene = rgb.parent.parent.name, rgb.parent.name
    for ancestor in list(rgb.parents)[2:4]:
        composed = ancestor / "camera_full_depths" / split / scene / f"{base}_composed.png"
        if composed.is_file():
            return composed
    for suffix in DEPTH_SUFFIXES:
        candidate = rgb.with_name(f"{base}_depth{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _folder_intrinsics(folder: Path) -> Intrinsics | None:
    from clipose_ros.data.nocs_format import INTRINSICS_FILE, read_folder_intrinsics

    for name in FOLDER_CAMERA_INFO:
        if (folder / name).is_file():
            return load_camera_info_yaml(folder / name)
    K = read_folder_intrinsics(folder)
    return None if K is None else Intrinsics(K, None, str(folder / INTRINSICS_FILE))


def folder_items(root: Path, K: Intrinsics | None, scale: float | None,
                 report: Report) -> list[Item]:
    """Pairs below ``root`` (see the module docstring), sorted by path. A colour image without
    a depth partner is reported; a NOCS label's K is used when no K is given."""
    from clipose_ros.data import nocs_format as nf

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"folder {root} does not exist")
    pattern = re.compile(rf"^(?P<base>.+)_(?:{'|'.join(RGB_TAGS)})$", re.IGNORECASE)
    items: list[Item] = []
    cache: dict[Path, Intrinsics | None] = {}

    def by_folder(folder: Path) -> Callable[[], Intrinsics | None]:
        chain = [folder, *[f for f in folder.parents if f.is_relative_to(root)]]

        def get() -> Intrinsics | None:
            for f in chain:  # the image's folder, then its parents up to ``root``
                if f not in cache:
                    try:
                        cache[f] = _folder_intrinsics(f)
                    except ValueError as err:
                        raise SkipItem(str(err)) from err
                if cache[f] is not None:
                    return cache[f]
            return None
        return get

    def nocs_K(prefix: Path, folder: Callable[[], Intrinsics | None]):
        def get() -> Intrinsics | None:
            label = nf.frame_path(prefix, "label.pkl")
            if label.is_file():
                try:
                    raw = nf.read_label(prefix).extra.get("K")
                except nf.NocsFormatError as err:
                    report.warn("label", f"{err}; its K is not used")
                    raw = None
                if raw is not None:
                    return Intrinsics(nf.resolve_intrinsics(np.asarray(raw).reshape(3, 3)),
                                      None, str(label))
            return folder()
        return get

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in RGB_SUFFIXES)
    claimed: set[Path] = set()
    for path in files:
        m = pattern.match(path.stem)
        if not m:
            continue
        depth = _depth_partner(path, m["base"])
        name = str(path.relative_to(root).with_name(m["base"])).replace(os.sep, "_")
        if depth is None:
            report.problem(str(path), f"no depth partner ({m['base']}_depth with one of "
                           f"{', '.join(DEPTH_SUFFIXES)}): skipped")
            continue
        claimed.update((path, depth))
        items.append(pair_item(path, depth, K, scale, report, name,
                               nocs_K(path.with_name(m["base"]), by_folder(path.parent))))
    # rgb/ + depth/ sub-folders with equal stems (the layout many recorders write)
    for rgb_dir in sorted({p.parent for p in files if p not in claimed}):
        if rgb_dir.name.lower() not in RGB_TAGS + ("images", "colors"):
            continue
        depth_dir = rgb_dir.parent / "depth"
        if not depth_dir.is_dir():
            continue
        depths = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() in DEPTH_SUFFIXES}
        for path in sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in RGB_SUFFIXES):
            rel = path.relative_to(root)
            if path.stem not in depths:
                report.problem(str(path), f"no depth image {depth_dir}/{path.stem}.* : skipped")
                continue
            name = str(rel.with_suffix("")).replace(os.sep, "_")
            items.append(pair_item(path, depths[path.stem], K, scale, report, name,
                                   by_folder(rgb_dir.parent)))
    if not items:
        raise SourceError(f"folder {root}: no colour/depth pairs found (X_color.png + "
                          "X_depth.png|npy|exr, or rgb/ + depth/ with equal file names)")
    return items


# ---------------------------------------------------------------------------- bags


def _ros_convert():
    """The node's message -> numpy conversion and checks, applied to the messages ``rosbags``
    decodes (they have the same fields). It needs the ROS message packages of the project's
    environment (``scripts/setup_env.sh`` installs them from wheels), not rclpy or a ROS
    install."""
    try:
        from clipose_ros.ros import convert as ros_convert
    except ImportError as err:
        raise SourceError(f"reading bags uses the node's message checks (ros_convert), which "
                          f"need the ROS message packages: {err}; run scripts/setup_env.sh "
                          "or source a ROS 2 install") from err
    return ros_convert


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    # sensor_msgs/Image and CameraInfo are the same in every ROS 2 distribution.
    return get_typestore(Stores.LATEST)


def _pick_topic(wanted: tuple[str, ...], available: dict[str, str], msgtype: str,
                what: str, bag: Path) -> str:
    for topic in wanted:
        for name in (topic, topic.lstrip("/"), "/" + topic.lstrip("/")):
            if name in available:
                if available[name] != msgtype:
                    raise SourceError(f"bag {bag}: {what} topic {name} carries "
                                      f"{available[name]}, not {msgtype}")
                return name
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(available.items())) or "none"
    raise SourceError(f"bag {bag}: no {what} topic {' or '.join(wanted)}; the bag's topics: "
                      f"{listing} (choose one with --{what}-topic)")


def _listed_topics(path: Path) -> dict[str, str]:
    """Topic -> type from the bag's own index, or {} when it cannot be opened normally."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(path) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except Exception:  # noqa: BLE001 - damaged: read_bag's fallbacks will say what is wrong
        return {}


def _nearest(stamps: list[int], value: int) -> int | None:
    """Index of the stamp nearest ``value`` in a sorted list (None when empty)."""
    if not stamps:
        return None
    i = bisect.bisect_left(stamps, value)
    if i == 0:
        return 0
    if i == len(stamps):
        return len(stamps) - 1
    return i if stamps[i] - value < value - stamps[i - 1] else i - 1


def pair_by_stamp(rgb: list[int], depth: list[int], slop_ns: int) -> list[tuple[int, int]]:
    """(rgb index, depth index) pairs of mutually nearest stamps within ``slop_ns``.

    Mutual nearest keeps one depth image from being used for two colour images when a stream
    drops frames; both lists sorted ascending.
    """
    pairs = []
    for i, s in enumerate(rgb):
        j = _nearest(depth, s)
        if j is None or abs(depth[j] - s) > slop_ns:
            continue
        if _nearest(rgb, depth[j]) == i:
            pairs.append((i, j))
    return pairs


def _index_bag(path: Path, topics: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
               K: Intrinsics | None, report: Report, store) -> tuple[dict, dict, dict]:
    """The first pass over a bag, headers only: (image topic -> [(header stamp, ordinal)],
    topic -> message type, camera_info topic -> [(header stamp, message)]). Only the wanted
    topics are decoded where the bag's index lists them; a corrupt message is named and
    skipped."""
    from clipose_ros.data.bag_io import BagError, read_bag

    rc = _ros_convert()
    stamps: dict[str, list[tuple[int, int]]] = {}
    types: dict[str, str] = {}
    infos: dict[str, list[tuple[int, Any]]] = {}
    rgb_wanted, depth_wanted, info_wanted = topics
    listed = _listed_topics(path)
    chosen: set[str] | None = None  # decode only these (None: the bag's index is unreadable)
    if listed:  # a missing topic is said before the bag is read
        chosen = {_pick_topic(rgb_wanted, listed, IMAGE_TYPE, "rgb", path),
                  _pick_topic(depth_wanted, listed, IMAGE_TYPE, "depth", path)}
        if K is None:
            chosen.add(_pick_topic(info_wanted, listed, INFO_TYPE, "info", path))
    try:
        for ordinal, rec in enumerate(read_bag(path, report.problem)):
            types.setdefault(rec.topic, rec.msgtype)
            if rec.msgtype not in (IMAGE_TYPE, INFO_TYPE) or (
                    chosen is not None and rec.topic not in chosen):
                continue
            try:
                msg = store.deserialize_cdr(rec.raw, rec.msgtype)
            except Exception as err:  # noqa: BLE001 - a corrupt message: name it, skip it
                report.problem(f"{path} {rec.topic}", f"message #{ordinal} (log time "
                               f"{rec.log_ns}) cannot be decoded as {rec.msgtype}: "
                               f"{type(err).__name__}: {err}")
                continue
            stamp = rc.stamp_to_ns(msg.header.stamp)
            if rec.msgtype == INFO_TYPE:
                infos.setdefault(rec.topic, []).append((stamp, msg))
            else:
                stamps.setdefault(rec.topic, []).append((stamp, ordinal))
    except BagError as err:
        raise SourceError(str(err)) from err
    return stamps, types, infos


def bag_items(path: Path, topics: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
              K: Intrinsics | None, scale: float | None, slop_s: float,
              report: Report) -> tuple[list[int], Callable[[], Iterator[Item]]]:
    """Read the bag's stamps, pair colour and depth, and return (the pairs' colour stamps,
    a generator of Items reading the bag a second time).

    Two passes keep memory small: the first decodes headers only (:func:`_index_bag`), the
    second holds a pair's two messages until both are read.
    """
    from clipose_ros.data.bag_io import read_bag

    path = Path(path)
    store = _typestore()
    stamps, types, infos = _index_bag(path, topics, K, report, store)
    rgb_wanted, depth_wanted, info_wanted = topics
    rgb_topic = _pick_topic(rgb_wanted, types, IMAGE_TYPE, "rgb", path)
    depth_topic = _pick_topic(depth_wanted, types, IMAGE_TYPE, "depth", path)
    info_topic = None
    if K is None:
        info_topic = _pick_topic(info_wanted, types, INFO_TYPE, "info", path)
    info_by_topic = sorted(infos.get(info_topic, []), key=lambda x: x[0]) if info_topic else []
    rgb = sorted(stamps.get(rgb_topic, []))
    depth = sorted(stamps.get(depth_topic, []))
    pairs = pair_by_stamp([s for s, _ in rgb], [s for s, _ in depth], int(slop_s * 1e9))
    unpaired = len(rgb) - len(pairs)
    if unpaired:
        report.problem(f"{path} {rgb_topic}", f"{unpaired} of {len(rgb)} colour images have no "
                       f"depth image on {depth_topic} within {slop_s * 1e3:g} ms: not processed")
    log.info("bag %s: %s (%d) + %s (%d) -> %d pairs; K from %s", path, rgb_topic, len(rgb),
             depth_topic, len(depth), len(pairs), K.origin if K else info_topic)
    if K is None and not info_by_topic:
        raise SourceError(f"bag {path}: topic {info_topic} holds no readable camera_info "
                          "message; pass --camera-info FILE or --fx --fy --cx --cy")
    info_stamps = [s for s, _ in info_by_topic]
    wanted: dict[int, int] = {}  # ordinal -> pair index
    for k, (i, j) in enumerate(pairs):
        wanted[rgb[i][1]] = k
        wanted[depth[j][1]] = k
    pair_stamps = [rgb[i][0] for i, _ in pairs]
    name = path.name if path.is_dir() else path.stem
    # The streams' topics, so that the node's refusals name them (ros_convert.describe).
    streams = {"rgb": rgb_topic, "depth": depth_topic}
    if info_topic:
        streams["camera_info"] = info_topic

    def info_for(stamp: int, rgb_msg: Any):
        if K is not None:
            # Given intrinsics as a camera_info of the colour camera: its frame, and the size
            # they were calibrated for (the image's own when unknown), as the checks expect.
            w, h = K.size or (int(rgb_msg.width), int(rgb_msg.height))
            return SimpleNamespace(k=K.K.ravel().tolist(), width=w, height=h,
                                   header=SimpleNamespace(frame_id=rgb_msg.header.frame_id))
        return info_by_topic[_nearest(info_stamps, stamp)][1]

    def items() -> Iterator[Item]:
        held: dict[int, dict[str, Any]] = {}
        quiet = Report()  # the first pass reported the bag's damage already
        for ordinal, rec in enumerate(read_bag(path, quiet.problem)):
            k = wanted.get(ordinal)
            if k is None:
                continue
            slot = held.setdefault(k, {})
            slot["rgb" if rec.topic == rgb_topic else "depth"] = (ordinal, rec)
            if len(slot) < 2:
                continue
            del held[k]
            yield _bag_item(path, name, slot, pair_stamps[k], info_for, store, scale, report,
                            streams, K)

    return pair_stamps, items


def _valid_median(raw: np.ndarray) -> float | None:
    """Median of the valid (finite, > 0) raw depth values; None when there is none."""
    with np.errstate(invalid="ignore"):
        valid = raw[np.isfinite(raw) & (raw > 0)]
    return float(np.median(valid)) if valid.size else None


def _frame_in_guessed_unit(rc, refusal, rgb_msg, depth_msg, info, scale: float | None,
                           streams: dict[str, str], where: str, report: Report) -> Frame | None:
    """The frame the node's checks accept with the depth unit infer guesses (the stated unit
    x 1000 or / 1000, as for files), warned once and counted as ``depth_scale``; None when
    ``refusal`` is not about the depth's unit or no such unit passes the checks. Saturated
    depth (65535) is refused by the checks at every unit, so it stays refused."""
    if refusal.kind != "depth_units":
        return None
    stated = scale or rc.default_depth_scale(depth_msg.encoding)
    median = _valid_median(rc.image_to_array(depth_msg, rc.DEPTH_ENCODINGS))
    alt = None if median is None else guess_depth_scale(median, stated)
    if alt is None:
        return None
    try:
        frame = rc.frame_from_messages(rgb_msg, depth_msg, info, depth_scale=alt,
                                       topics=streams)
    except rc.InputError:
        return None
    report.warn("depth_scale", assumed_unit_message(where, stated, median, alt))
    return frame


def _bag_item(path: Path, name: str, slot: dict, stamp: int, info_for, store,
              scale: float | None, report: Report, streams: dict[str, str],
              K: Intrinsics | None) -> Item:
    rc = _ros_convert()
    (rgb_ord, rgb_rec), (depth_ord, depth_rec) = slot["rgb"], slot["depth"]
    where = (f"{path} {rgb_rec.topic} #{rgb_ord} + {depth_rec.topic} #{depth_ord} "
             f"(stamp {stamp})")

    def load() -> Frame:
        rgb_msg = store.deserialize_cdr(rgb_rec.raw, rgb_rec.msgtype)
        depth_msg = store.deserialize_cdr(depth_rec.raw, depth_rec.msgtype)
        info = info_for(stamp, rgb_msg)
        try:
            # The node's checks and conversion; ``scale``: the unit the user states (--depth-scale).
            frame = rc.frame_from_messages(rgb_msg, depth_msg, info, depth_scale=scale or 0.0,
                                           topics=streams)
        except rc.InputError as err:
            frame = _frame_in_guessed_unit(rc, err, rgb_msg, depth_msg, info, scale, streams,
                                           where, report)
            if frame is None:
                given = (f" (this camera_info is made from {K.origin})"
                         if K is not None and "camera_info" in str(err) else "")
                raise SkipItem(f"{where}: {err}{given}") from err
        w, h = frame.rgb.shape[1], frame.rgb.shape[0]
        check_intrinsics(Intrinsics(frame.K, None, "camera_info"), w, h, where)
        return frame

    return Item(f"{name}@{stamp}", str(path), load, stamp)


# ---------------------------------------------------------------------------- run


def pose_record(p: ObjectPose) -> dict:
    """One object of a frame, JSON-ready: the pose convention of DESIGN.md (R, t in metres,
    size = metric box extents along the object axes) and the tracker's id."""
    return {
        "class": p.class_name,
        "class_id": int(p.class_id),
        "score": round(float(p.score), 6),
        "R": np.asarray(p.R, dtype=float).tolist(),
        "t": np.asarray(p.t, dtype=float).tolist(),
        "size": np.asarray(p.size, dtype=float).tolist(),
        "id": p.key,
    }


def frame_record(item: Item, index: int, frame: Frame, result) -> dict:
    """One line of poses.jsonl: where the frame came from, its size and K, the poses, the
    instances skipped and why, the stage timings."""
    return {
        "frame": item.name, "source": item.source, "depth": item.depth_source,
        "stamp_ns": item.stamp_ns,
        "index": index, "width": int(frame.rgb.shape[1]),
        "height": int(frame.rgb.shape[0]), "K": np.asarray(frame.K).tolist(),
        "objects": [pose_record(p) for p in result.poses],
        "skipped_instances": result.skipped,
        "timings_ms": {k: round(v, 3) for k, v in result.timings.items()},
    }


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {"median": float(np.median(a)), "mean": float(a.mean()),
            "p95": float(np.percentile(a, 95))}


def run_inference(items: Iterable[Item], pipeline: PosePipeline | None, out: Path,
                  overlay_every: int = 10, report: Report | None = None,
                  total: int | None = None, progress: bool = True,
                  max_frames: int | None = None) -> dict:
    """Process ``items`` in order with ``pipeline``; write poses.jsonl, overlays and
    summary.json under ``out``; returns the summary. A bad item is reported and skipped."""
    from tqdm import tqdm

    from clipose_ros.core.pipeline import STAGES
    from clipose_ros.core.visualize import draw_overlay

    report = report or Report()
    out = Path(out)
    overlays = out / "overlays"
    if overlay_every > 0:
        overlays.mkdir(parents=True, exist_ok=True)
    per_class: Counter = Counter()
    timings: dict[str, list[float]] = {k: [] for k in STAGES}
    load_ms: list[float] = []
    frames = skipped = 0
    start = time.perf_counter()
    bar = tqdm(total=total if max_frames is None else min(total or max_frames, max_frames),
               unit="frame", disable=not progress, desc="clipose-infer")
    with open(out / "poses.jsonl", "w") as jsonl:
        for index, item in enumerate(items):
            if max_frames is not None and frames + skipped >= max_frames:
                break
            bar.update(1)
            t0 = time.perf_counter()
            try:
                frame = item.load()
            except SkipItem as err:
                report.problem(item.source, str(err))
                skipped += 1
                continue
            except Exception as err:  # noqa: BLE001 - a bad item must not end the run
                report.problem(item.source, f"{item.name}: {type(err).__name__}: {err}")
                skipped += 1
                continue
            load_ms.append((time.perf_counter() - t0) * 1e3)
            result = pipeline.process(frame)
            for k in STAGES:
                timings[k].append(result.timings.get(k, float("nan")))
            per_class.update(p.class_name for p in result.poses)
            jsonl.write(json.dumps(frame_record(item, index, frame, result)) + "\n")
            if overlay_every > 0 and frames % overlay_every == 0:
                import cv2

                image = draw_overlay(frame.rgb, frame.K, result.poses)
                safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", item.name)
                cv2.imwrite(str(overlays / f"{safe}.png"), image[:, :, ::-1])
            frames += 1
    bar.close()
    wall = time.perf_counter() - start
    summary = {
        "frames_processed": frames,
        "frames_skipped": skipped,
        "objects": sum(per_class.values()),
        "objects_per_class": dict(sorted(per_class.items())),
        "wall_s": round(wall, 3),
        "frames_per_s": round(frames / wall, 3) if wall > 0 else None,
        "timings_ms": {k: _stats(v) for k, v in timings.items()} | {"load_ms": _stats(load_ms)},
        "warnings": dict(report.warning_counts),
        "problems": report.problems,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _intrinsics_from_args(args: argparse.Namespace) -> Intrinsics | None:
    from clipose_ros.data.nocs_format import resolve_intrinsics

    given = [args.fx, args.fy, args.cx, args.cy]
    if args.camera_info is not None:
        return load_camera_info_yaml(args.camera_info)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError("--fx --fy --cx --cy go together: all four are needed")
        K = np.array([[args.fx, 0, args.cx], [0, args.fy, args.cy], [0, 0, 1]], np.float64)
        return Intrinsics(resolve_intrinsics(K), None, "--fx --fy --cx --cy")
    if args.intrinsics is not None:
        return Intrinsics(resolve_intrinsics(args.intrinsics), (640, 480),
                          f"--intrinsics {args.intrinsics}")
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from clipose_ros.ros.parameters import DEFAULT_POSE_MODEL, DEFAULT_SEGMENTER_WEIGHTS

    parser = argparse.ArgumentParser(
        prog="clipose-infer", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Output: <out>/poses.jsonl, overlays/, summary.json, infer.log (README: "
               "'Offline inference on your own data').",
    )
    src = parser.add_argument_group("input (one kind)")
    src.add_argument("--rgb", type=Path, help="colour image of one pair")
    src.add_argument("--depth", type=Path, help="depth of one pair (.png, .npy, .exr)")
    src.add_argument("--folder", type=Path, action="append", help="folder of pairs (repeatable)")
    src.add_argument("--bag", type=Path, action="append",
                     help="rosbag2 recording, directory or .db3/.mcap file (repeatable)")
    cam = parser.add_argument_group("camera")
    cam.add_argument("--camera-info", type=Path, help="ROS camera_info YAML (overrides a bag's)")
    for k in ("fx", "fy", "cx", "cy"):
        cam.add_argument(f"--{k}", type=float)
    cam.add_argument("--intrinsics", choices=["real", "camera"],
                     help="the REAL275 / CAMERA25 camera (640x480)")
    cam.add_argument("--depth-scale", type=float, default=None,
                     help="metres per depth unit, e.g. 0.001 for millimetre PNGs (default: "
                          "integer files mm, float files m, bags as their encoding says)")
    bag = parser.add_argument_group("bag topics")
    bag.add_argument("--rgb-topic", default=None,
                     help=f"default: the first present of {', '.join(DEFAULT_RGB_TOPICS)}")
    bag.add_argument("--depth-topic", default=None,
                     help=f"default: the first present of {', '.join(DEFAULT_DEPTH_TOPICS)}")
    bag.add_argument("--info-topic", default=None,
                     help=f"default: the first present of {', '.join(DEFAULT_INFO_TOPICS)}")
    bag.add_argument("--slop", type=float, default=0.02,
                     help="largest colour/depth stamp difference of a pair, s (0.02)")
    model = parser.add_argument_group("models (the node's defaults)")
    model.add_argument("--pose-model", default=DEFAULT_POSE_MODEL,
                       help=f"exported pose model ({DEFAULT_POSE_MODEL})")
    model.add_argument("--segmenter", default=DEFAULT_SEGMENTER_WEIGHTS,
                       help=f".onnx (CPU, fastest) or .pt (use it with --device cuda) "
                            f"({DEFAULT_SEGMENTER_WEIGHTS})")
    model.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    model.add_argument("--threads", type=int, default=0,
                       help="CPU threads of torch and the segmenter (0: their defaults; 1 "
                            "is much faster on a machine busy with other jobs)")
    model.add_argument("--score-threshold", type=float, default=None,
                       help="default: the node's")
    model.add_argument("--class-score-thresholds", default=None,
                       help="per-class scores over --score-threshold, e.g. 'laptop:0.3 "
                       "bowl:0.35' (default: the node's)")
    parser.add_argument("--out", type=Path, default=Path("infer_out"),
                        help="output folder (infer_out)")
    parser.add_argument("--overlay-every", type=int, default=10,
                        help="write an overlay of every Nth processed frame (10; 0: none)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="stop after this many frames")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    kinds = [args.rgb is not None or args.depth is not None, bool(args.folder), bool(args.bag)]
    if sum(kinds) != 1:
        parser.error("give one kind of input: --rgb and --depth, --folder, or --bag")
    if kinds[0] and (args.rgb is None or args.depth is None):
        parser.error("a pair needs both --rgb and --depth")
    if args.overlay_every < 0:
        parser.error("--overlay-every must be >= 0")
    if args.depth_scale is not None and not args.depth_scale > 0:
        parser.error("--depth-scale must be > 0")
    return args


def build_items(args: argparse.Namespace, K: Intrinsics | None,
                report: Report) -> tuple[Iterator[Item], int]:
    """The run's Items (lazily for bags) and how many there are."""
    if args.rgb is not None:
        return iter([pair_item(args.rgb, args.depth, K, args.depth_scale, report)]), 1
    if args.folder:
        items: list[Item] = []
        for folder in args.folder:
            try:
                found = folder_items(folder, K, args.depth_scale, report)
            except (SourceError, ValueError) as err:
                report.problem(str(folder), str(err))
                continue
            if len(args.folder) > 1:  # names unique across the folders (overlay file names)
                for item in found:
                    item.name = f"{Path(folder).resolve().name}_{item.name}"
            items += found
        return iter(items), len(items)
    topics = (
        (args.rgb_topic,) if args.rgb_topic else DEFAULT_RGB_TOPICS,
        (args.depth_topic,) if args.depth_topic else DEFAULT_DEPTH_TOPICS,
        (args.info_topic,) if args.info_topic else DEFAULT_INFO_TOPICS,
    )
    generators, total = [], 0
    for bag in args.bag:
        try:
            stamps, gen = bag_items(bag, topics, K, args.depth_scale, args.slop, report)
        except SourceError as err:
            report.problem(str(bag), str(err))
            continue
        generators.append(gen)
        total += len(stamps)
    return (item for gen in generators for item in gen()), total


def main(argv: list[str] | None = None) -> None:
    from clipose_ros.core.pipeline import build_pipeline
    from clipose_ros.core.segmentation import parse_class_thresholds
    from clipose_ros.logs import log_to_terminal_and_file
    from clipose_ros.ros.parameters import (
        ParameterError,
        PoseNodeConfig,
        foreign_thresholds_warning,
        resolve_device,
        resolve_model_path,
        tracker_config,
    )

    args = parse_args(argv)
    log_path = log_to_terminal_and_file(args.out, "infer.log")
    report = Report()
    try:
        K = _intrinsics_from_args(args)
    except ValueError as err:
        sys.exit(f"clipose-infer: {err}")
    items, total = build_items(args, K, report)
    if total == 0:
        run_inference([], None, args.out, 0, report, 0, progress=False)  # summary.json
        first = report.problems[0]["message"] if report.problems else "no input"
        sys.exit(f"clipose-infer: nothing to process: {first} ({len(report.problems)} "
                 f"problem(s), all in {log_path})")
    node = PoseNodeConfig()  # the node's defaults: the pipeline runs as in the node
    try:
        device = resolve_device(args.device)
    except ParameterError as err:  # worded for the node's parameters: reword for flags
        sys.exit(f"clipose-infer: {str(err).replace('device:=', '--device ')}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    pose_model = resolve_model_path(args.pose_model)
    segmenter = resolve_model_path(args.segmenter)
    score = node.score_threshold if args.score_threshold is None else args.score_threshold
    class_scores = (node.class_score_thresholds if args.class_score_thresholds is None
                    else args.class_score_thresholds)
    foreign = foreign_thresholds_warning(class_scores, args.segmenter)
    if foreign:
        log.warning("%s (here: --class-score-thresholds)", foreign)
    try:
        pipeline = build_pipeline(
            pose_model, segmenter, device=device, imgsz=node.imgsz, score_threshold=score,
            min_mask_area=node.min_mask_area, min_points=node.min_points,
            tracker=tracker_config(node),
            seed=node.seed, threads=args.threads or None, mug_handle=node.mug_handle,
            pose_subsets=node.pose_subsets, border_fit=node.border_fit,
            laptop_lid=node.laptop_lid, box_fit=node.box_fit,
            class_score_thresholds=parse_class_thresholds(class_scores),
        )
    except (RuntimeError, ValueError) as err:
        sys.exit(f"clipose-infer: {err}")
    warm_ms = pipeline.warm_up()  # as the node does, so the first frame's timing is honest
    log.info("models: %s, %s on %s (warm-up %.0f ms); %d frames to process", pose_model,
             segmenter, device, warm_ms, total)
    summary = run_inference(items, pipeline, args.out, args.overlay_every, report, total,
                            progress=not args.no_progress, max_frames=args.max_frames)
    summary.update(pose_model=str(pose_model), segmenter=str(segmenter), device=device,
                   score_threshold=score, class_score_thresholds=class_scores)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("%d frames processed, %d skipped, %d problems; objects per class %s; %.2f "
             "frames/s; results in %s", summary["frames_processed"], summary["frames_skipped"],
             len(summary["problems"]), summary["objects_per_class"],
             summary["frames_per_s"] or 0.0, args.out)
    if summary["frames_processed"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
