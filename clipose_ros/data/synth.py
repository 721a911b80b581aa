"""Synthetic NOCS-format RGB-D scenes with exact ground truth (``clipose-synth``).

Objects of the six categories (procedural shape families, ``shapes.py``) rest on a table with
random yaw, among optional distractors; a camera looks at them from random elevations and
distances. Every frame is written in the NOCS layout (``nocs_format.py``) with a label pickle,
plus the instance meshes and YOLO segmentation labels for training a segmenter.

Two kinds of frames: *clean* (``SynthConfig()``, the Python default, and ``clipose-synth
--clean``): the original generator, bit for bit: a large plain table, ideal rendering, a light
Kinect-style depth noise. *Realistic* (``clipose-synth``'s default, ``SynthConfig(sensor=...,
scene="room")``): a room (finite table with edges, floor, walls, marker boards, boxes, clutter,
materials from matte to glossy, camera mostly at 0.7-1.4 m) seen through a depth sensor and
colour camera model (``sensor.py``: structured-light or active-stereo preset). The labels
(masks, NOCS maps, poses) are exact in both.

Output layout::

    OUT/<split>/<scene:05d>/<frame:04d>_{color,depth,mask,coord}.png, _meta.txt, _label.pkl
    OUT/obj_models/<split>/<model_name>.obj   NOCS-space mesh; .json beside it: params, scale,
                                              label frame (shift, scale; identity but for mugs)
    OUT/obj_models/mug_meta.pkl               SPD's mug_meta: model name -> [shift, scale]
    OUT/yolo/images/<split>/<scene>_<frame>.png -> the colour image (symlink)
    OUT/yolo/labels/<split>/<scene>_<frame>.txt, OUT/yolo/data.yaml
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import multiprocessing as mp
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import trimesh
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from clipose_ros.categories import CAMERA_INTRINSICS, CATEGORIES, CLASS_IDS
from clipose_ros.data import nocs_format as nf
from clipose_ros.data import render as render_module
from clipose_ros.data import sensor as sensor_module
from clipose_ros.data.render import (
    Light,
    RenderObject,
    RenderOutput,
    add_depth_noise,
    fast_normal,
    render,
    rotate_rows,
)
from clipose_ros.data.shapes import ShapeInstance, make_instance
from clipose_ros.data.yolo_format import link_image, write_data_yaml, yolo_lines
from clipose_ros.geometry import look_at, rotation_about_axis
from clipose_ros.logs import log_to_terminal_and_file

log = logging.getLogger("clipose.synth")
HANDLE_PART = 1
RGB_NOISE_SIGMA = 2.0  # grey levels
# Lossless PNG, tuned for write speed: zlib level 1 with run-length matching and the SUB row
# filter writes a noisy colour frame ~2x faster than libpng's adaptive filter choice at level 1,
# and the files come out smaller. (The filter flag needs OpenCV >= 4.12; older builds, as
# chosen beside a ROS install's NumPy 1.x, write with the default filter.)
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
TABLE_HALF_SIZE = 1.5  # metres
SCENES = ("plain", "room")
# Room scenes: camera distance to the objects 0.4-1.5 m, most (85 %) at 0.7-1.4 m, as REAL275
# (objects at 0.9-1.3 m) with margin on both sides.
ROOM_DISTANCE_M = (0.4, 1.5)
ROOM_BULK_M = (0.7, 1.4)
ROOM_BULK_SHARE = 0.85
FLOOR_BELOW_TABLE_M = 0.75


@dataclass
class SynthConfig:
    """Scene statistics; the defaults follow the issue's ranges."""

    width: int = 640
    height: int = 480
    intrinsics: list = field(default_factory=lambda: CAMERA_INTRINSICS.tolist())
    min_objects: int = 1
    max_objects: int = 6
    instances_per_category: int = 50
    elevation_deg: tuple[float, float] = (15.0, 75.0)
    distance_m: tuple[float, float] = (0.4, 1.2)
    max_distractors: int = 3
    depth_noise: bool = True
    min_visible_pixels: int = 64
    min_handle_pixels: int = 20
    placement_radius_m: float = 0.3
    # Realism (issue 11). sensor: a preset of sensor.PRESETS, or None for the clean frames;
    # sensor_off: effects of the preset switched off (sensor.EFFECTS); scene: "plain" (the
    # original large table) or "room". With a sensor, depth_noise=False switches off all of its
    # depth effects (the colour effects stay).
    sensor: str | None = None
    sensor_off: tuple[str, ...] = ()
    scene: str = "plain"

    def __post_init__(self) -> None:
        problems = []
        if self.sensor is not None and self.sensor not in sensor_module.PRESETS:
            problems.append(f"unknown sensor preset {self.sensor!r}; known: "
                            f"{sorted(sensor_module.PRESETS)}")
        unknown = set(self.sensor_off) - set(sensor_module.EFFECTS)
        if unknown:
            problems.append(f"unknown sensor effects {sorted(unknown)}; known: "
                            f"{list(sensor_module.EFFECTS)}")
        if self.scene not in SCENES:
            problems.append(f"scene must be one of {SCENES}, not {self.scene!r}")
        if self.width < 16 or self.height < 16:
            problems.append(f"image size {self.width}x{self.height} is below 16x16")
        if not 1 <= self.min_objects <= self.max_objects:
            problems.append(f"need 1 <= min_objects ({self.min_objects}) <= max_objects "
                            f"({self.max_objects})")
        if self.instances_per_category < 1 or self.max_distractors < 0:
            problems.append("instances_per_category must be >= 1 and max_distractors >= 0")
        if not 0 < self.elevation_deg[0] <= self.elevation_deg[1] < 90:
            problems.append(f"elevation range {self.elevation_deg} must lie in (0, 90) degrees")
        if not 0 < self.distance_m[0] <= self.distance_m[1]:
            problems.append(f"distance range {self.distance_m} must be positive and ordered")
        if np.asarray(self.intrinsics).shape != (3, 3):
            problems.append("intrinsics must be a 3x3 matrix")
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))
        self.sensor_off = tuple(self.sensor_off)

    def sensor_preset(self) -> sensor_module.SensorPreset | None:
        """The sensor preset with this config's effects switched off (None: clean frames)."""
        if self.sensor is None:
            return None
        off = set(self.sensor_off)
        if not self.depth_noise:
            off |= set(sensor_module.DEPTH_EFFECTS)
        return sensor_module.preset(self.sensor).without(*off)


@dataclass
class PlacedObject:
    instance: ShapeInstance
    R_world: np.ndarray
    t_world: np.ndarray
    style: dict = field(default_factory=dict)  # RenderObject appearance keywords


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process and Python run (unlike ``hash``)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


@lru_cache(maxsize=512)
def cached_instance(category: str, split: str, index: int) -> ShapeInstance:
    return make_instance(category, split, index)


def clear_process_caches() -> None:
    """Forget everything cached per process (instances, table mesh, camera rays, noise table),
    so the next frame starts as cold as in a fresh process; for honest benchmarks."""
    cached_instance.cache_clear()
    _table_mesh.cache_clear()
    render_module.clear_caches()


def _random_color(rng: np.random.Generator, saturation: tuple[float, float] = (0.2, 0.9)):
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*saturation) * 255, rng.uniform(60, 240)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0


def _appearance(category: str, rng: np.random.Generator, room: bool = False) -> dict:
    """Colours and material of an object; ``room``: the realistic scenes' range (less
    saturated colours as in real rooms, matte to glossy)."""
    saturation = (0.1, 0.75) if room else (0.2, 0.9)
    colors = np.stack([_random_color(rng, saturation) for _ in range(3)])
    patterns = ["plain", "stripes", "checker", "band"]
    weights = [0.4, 0.2, 0.1, 0.3] if category in ("bottle", "can") else [0.6, 0.2, 0.15, 0.05]
    return dict(
        colors=colors,
        pattern=str(rng.choice(patterns, p=weights)),
        pattern_freq=float(rng.uniform(3, 10)),
        specular=float(rng.uniform(0.0, 0.8 if room else 0.5)),
        shininess=float(rng.uniform(5, 60)),
    )


@lru_cache(maxsize=1)
def _table_mesh() -> trimesh.Trimesh:
    """The table slab, built once per process (its face normals are cached on the mesh)."""
    mesh = trimesh.creation.box([2 * TABLE_HALF_SIZE, 0.02, 2 * TABLE_HALF_SIZE])
    mesh.face_normals  # noqa: B018 - computes and caches the normals once
    return mesh


def _distractor_mesh(rng: np.random.Generator) -> trimesh.Trimesh:
    size = rng.uniform(0.03, 0.12, size=3)
    kind = rng.integers(0, 3)
    if kind == 0:
        return trimesh.creation.box(size)
    if kind == 1:
        return trimesh.creation.cylinder(radius=size[0] / 2, height=size[1], sections=24)
    return trimesh.creation.icosphere(subdivisions=2, radius=size[0] / 2)


@dataclass
class Fixture:
    """A static part of a room scene: table, floor, wall, board or box (world frame)."""

    kind: str  # table | floor | wall | board | box
    mesh: trimesh.Trimesh
    R_world: np.ndarray
    t_world: np.ndarray
    style: dict
    wall_plane: tuple[np.ndarray, float] | None = None  # inward normal n, offset: n.x + c >= 0


def _free_spot(rng: np.random.Generator, footprints: list, radius: float,
               spread: float) -> np.ndarray | None:
    """A table position (x, z) whose footprint circle clears all others; None after 100 tries."""
    for _ in range(100):
        xz = rng.uniform(-1, 1, size=2) * (spread + 0.05 * len(footprints))
        if all(np.linalg.norm(xz - c) > radius + r + 0.01 for c, r in footprints):
            footprints.append((xz, radius))
            return xz
    return None


def _place_objects(
    cfg: SynthConfig, split: str, rng: np.random.Generator,
    footprints: list | None = None,
) -> tuple[list[PlacedObject], list[tuple[trimesh.Trimesh, np.ndarray, np.ndarray]]]:
    """Objects and distractors on the table (world y up, table top at y = 0), non-intersecting
    by their footprint circles (collected in ``footprints``)."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[PlacedObject] = []
    footprints = [] if footprints is None else footprints

    def free_spot(radius: float) -> np.ndarray | None:
        return _free_spot(rng, footprints, radius, cfg.placement_radius_m)

    for _ in range(n):
        category = str(rng.choice(CATEGORIES))
        inst = cached_instance(category, split, int(rng.integers(cfg.instances_per_category)))
        radius = 0.5 * float(np.hypot(inst.size[0], inst.size[2]))
        xz = free_spot(radius)
        if xz is None:
            continue
        R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * np.pi))
        t = np.array([xz[0], inst.size[1] / 2, xz[1]])
        placed.append(PlacedObject(inst, R, t))

    distractors = []
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        mesh = _distractor_mesh(rng)
        ext = mesh.extents
        xz = free_spot(0.5 * float(np.hypot(ext[0], ext[2])))
        if xz is None:
            continue
        R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * np.pi))
        distractors.append((mesh, R, np.array([xz[0], -mesh.bounds[0, 1], xz[1]])))
    return placed, distractors


def _grey_color(rng: np.random.Generator, value: tuple[float, float],
                saturation: float = 0.15) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(0, saturation) * 255,
                      rng.uniform(*value) * 255]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0


def _table_style(rng: np.random.Generator) -> tuple[str, dict]:
    """A room table's material: glossy black (as REAL275's), wood, or matte light laminate."""
    kind = str(rng.choice(["glossy_black", "wood", "laminate"], p=[0.5, 0.25, 0.25]))
    if kind == "glossy_black":
        return kind, dict(colors=_grey_color(rng, (0.03, 0.12), 0.1)[None], pattern="plain",
                          specular=float(rng.uniform(0.5, 0.9)),
                          shininess=float(rng.uniform(30, 90)))
    if kind == "wood":
        hsv = np.uint8([[[rng.integers(8, 22), rng.uniform(0.3, 0.6) * 255,
                          rng.uniform(0.3, 0.75) * 255]]])
        color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
        return kind, dict(colors=color[None], pattern="grain",
                          pattern_freq=float(rng.uniform(4, 12)),
                          specular=float(rng.uniform(0.05, 0.35)),
                          shininess=float(rng.uniform(10, 40)))
    return kind, dict(colors=_grey_color(rng, (0.55, 0.9))[None], pattern="plain",
                      specular=float(rng.uniform(0.0, 0.2)), shininess=10.0)


def _panel(width: float, height: float, tile: float = 0.25) -> trimesh.Trimesh:
    """A flat rectangle in the x-y plane centred at the origin, split into ~``tile``-sized
    squares: compact triangles keep the ray-casting hierarchy tight (long slivers slow it)."""
    nx, ny = max(1, round(width / tile)), max(1, round(height / tile))
    xs = np.linspace(-width / 2, width / 2, nx + 1)
    ys = np.linspace(-height / 2, height / 2, ny + 1)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    vertices = np.column_stack([grid, np.zeros(len(grid))])
    idx = np.arange((nx + 1) * (ny + 1)).reshape(nx + 1, ny + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return trimesh.Trimesh(vertices, faces, process=False)


def _room_fixtures(rng: np.random.Generator, footprints: list) -> list[Fixture]:
    """Table with edges, floor, four walls around it, marker boards and boxes on the table.

    The table top is y = 0 around the origin; walls stand 0-0.25 m beyond the table edges (so a
    camera on one side sees the far wall 0.2-0.6 m behind the objects); frames drop the walls
    the camera stands behind (:func:`_visible_fixtures`).
    """
    half = rng.uniform(0.45, 0.75, size=2)  # table half extents along x and z
    kind, style = _table_style(rng)
    fixtures = [Fixture("table", trimesh.creation.box([2 * half[0], 0.03, 2 * half[1]]),
                        np.eye(3), np.array([0.0, -0.015, 0.0]), style)]
    floor_y = -FLOOR_BELOW_TABLE_M
    fixtures.append(Fixture(
        "floor", _panel(3.0, 3.0), rotation_about_axis(np.array([1.0, 0.0, 0.0]), np.pi / 2),
        np.array([0.0, floor_y, 0.0]),
        dict(colors=_grey_color(rng, (0.2, 0.6), 0.3)[None], pattern="plain",
             specular=float(rng.uniform(0.0, 0.3)), shininess=20.0, casts_shadow=False)))
    wall_color = _grey_color(rng, (0.6, 0.95), 0.12)
    height = 2.5
    for axis in (0, 2):
        for sign in (-1.0, 1.0):
            offset = half[0 if axis == 0 else 1] + rng.uniform(0.0, 0.25)
            # The panel's normal (z) along the wall's axis: about y by 90 degrees for x walls.
            R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), np.pi / 2 if axis == 0 else 0.0)
            t = np.zeros(3)
            t[axis] = sign * offset
            t[1] = floor_y + height / 2
            normal = np.zeros(3)
            normal[axis] = -sign  # pointing into the room
            fixtures.append(Fixture(
                "wall", _panel(3.0, height), R, t,
                dict(colors=wall_color[None], pattern="plain", specular=0.02, shininess=5.0,
                     casts_shadow=False, receives_shadow=False),
                wall_plane=(normal, offset)))
    for _ in range(int(rng.integers(0, 3))):  # flat marker / calibration boards
        side = rng.uniform(0.12, 0.3, size=2)
        xz = _free_spot(rng, footprints, 0.5 * float(np.hypot(*side)), 0.35)
        if xz is None:
            continue
        R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * np.pi))
        fixtures.append(Fixture(
            "board", trimesh.creation.box([side[0], 0.004, side[1]]), R,
            np.array([xz[0], 0.002, xz[1]]),
            dict(colors=_grey_color(rng, (0.85, 0.97), 0.05)[None], pattern="marker",
                 pattern_freq=float(rng.uniform(25, 50)), specular=0.02, shininess=5.0)))
    for _ in range(int(rng.integers(0, 3))):  # boxes
        size = rng.uniform(0.06, 0.25, size=3)
        xz = _free_spot(rng, footprints, 0.5 * float(np.hypot(size[0], size[2])), 0.35)
        if xz is None:
            continue
        R = rotation_about_axis(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * np.pi))
        style = _appearance("box", rng, room=True)
        fixtures.append(Fixture("box", trimesh.creation.box(size), R,
                                np.array([xz[0], size[1] / 2, xz[1]]), style))
    return fixtures


def _visible_fixtures(fixtures: list[Fixture], eye: np.ndarray) -> list[Fixture]:
    """The fixtures a camera at ``eye`` can see: walls it stands behind are left out."""
    keep = []
    for f in fixtures:
        if f.wall_plane is not None:
            normal, offset = f.wall_plane
            if float(normal @ eye) + offset < 0.05:
                continue
        keep.append(f)
    return keep


def _camera_pose(cfg: SynthConfig, placed: list[PlacedObject], rng: np.random.Generator):
    target = np.mean([p.t_world for p in placed], axis=0) + rng.normal(0, 0.03, 3)
    elevation = np.radians(rng.uniform(*cfg.elevation_deg))
    azimuth = rng.uniform(0, 2 * np.pi)
    if cfg.scene == "room":
        bulk = rng.random() < ROOM_BULK_SHARE
        distance = rng.uniform(*(ROOM_BULK_M if bulk else ROOM_DISTANCE_M))
    else:
        distance = rng.uniform(*cfg.distance_m)
    ce, se = np.cos(elevation), np.sin(elevation)
    direction = np.array([ce * np.sin(azimuth), se, ce * np.cos(azimuth)])
    eye = target + distance * direction
    R_wc = look_at(eye, target, np.array([0.0, 1.0, 0.0]))
    roll = rotation_about_axis(np.array([0.0, 0.0, 1.0]), np.radians(rng.normal(0, 3)))
    return R_wc @ roll, eye


def render_frame(
    cfg: SynthConfig,
    placed: list[PlacedObject],
    distractors: list,
    table: dict,
    rng: np.random.Generator,
    fixtures: list[Fixture] | None = None,
    debug: bool = False,
) -> dict:
    """Render one view; returns images and per-instance ground truth (camera frame).

    ``fixtures`` (room scenes) replace the plain table. ``debug`` adds ``frame["debug"]``: the
    ideal depth and colour, the object index per pixel and the surface kind per object index
    (``category`` names, ``distractor``, and the fixture kinds), for measuring realism.
    The random draws keep one order (camera, distractor looks, light, background, sensor), so
    that a seed gives the same frame as before this function was split up.
    """
    K = np.asarray(cfg.intrinsics)
    preset = cfg.sensor_preset()
    R_wc, eye = _camera_pose(cfg, placed, rng)
    R_cw = R_wc.T
    objects, kinds = _scene_objects(placed, distractors, table, fixtures, R_cw, eye, rng)
    light, background = _scene_light(R_cw, rooms=fixtures is not None, rng=rng)
    antialias = preset is not None and "antialias" in preset.effects
    out = render(objects, K, cfg.height, cfg.width, light, background,
                 aa_samples=preset.colour.aa_samples if antialias else 0,
                 surface_info=preset is not None or debug)
    mask, coord, instances = _instance_labels(cfg, placed, objects, out)
    rgb, depth, record = _sensor_images(cfg, preset, out, K, rng)
    shape = (cfg.height, cfg.width)
    frame = dict(
        rgb=rgb, depth=depth, mask=mask.reshape(shape),
        coord=coord.reshape(*shape, 3), instances=instances, K=K,
    )
    if record is not None:
        frame["sensor"] = record
    if debug:
        frame["debug"] = dict(
            ideal_depth=out.depth, ideal_rgb=out.rgb, object_index=out.object_index,
            kinds=kinds, albedo=out.albedo, gloss=out.gloss, normal=out.normal,
        )
    return frame


def _scene_objects(
    placed: list[PlacedObject],
    distractors: list,
    table: dict,
    fixtures: list[Fixture] | None,
    R_cw: np.ndarray,
    eye: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[RenderObject], list[str]]:
    """Everything to render, in the camera frame, and its surface kind. The category objects
    come first, so that their render index is their index in ``placed``."""

    def to_camera(R_w: np.ndarray, t_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return R_cw @ R_w, R_cw @ (t_w - eye)

    objects = []
    for p in placed:
        R, t = to_camera(p.R_world, p.t_world)
        objects.append(
            RenderObject(
                p.instance.mesh, R, t, p.instance.scale,
                part_ids=p.instance.part_ids, **p.style,
            )
        )
    kinds = [p.instance.category for p in placed]
    if fixtures is None:
        R, t = to_camera(np.eye(3), np.array([0.0, -0.01, 0.0]))
        objects.append(RenderObject(_table_mesh(), R, t, 1.0, **table))
        kinds.append("table")
    for mesh, R_w, t_w in distractors:
        R, t = to_camera(R_w, t_w)
        style = _appearance("distractor", rng, room=fixtures is not None)
        objects.append(RenderObject(mesh, R, t, 1.0, **style))
        kinds.append("distractor")
    for f in _visible_fixtures(fixtures or [], eye):
        R, t = to_camera(f.R_world, f.t_world)
        objects.append(RenderObject(f.mesh, R, t, 1.0, **f.style))
        kinds.append(f.kind)
    return objects, kinds


def _scene_light(
    R_cw: np.ndarray, rooms: bool, rng: np.random.Generator
) -> tuple[Light, tuple[np.ndarray, np.ndarray]]:
    """A random key light (camera frame) and background gradient colours."""
    light_world = np.array([rng.uniform(-1, 1), rng.uniform(1, 2.5), rng.uniform(-1, 1)])
    if not rooms:
        light = Light(R_cw @ light_world, ambient=rng.uniform(0.25, 0.5),
                      diffuse=rng.uniform(0.5, 0.9))
    else:  # rooms: more diffuse light (walls and ceiling bounce it), softer shadows
        light = Light(R_cw @ light_world, ambient=rng.uniform(0.4, 0.6),
                      diffuse=rng.uniform(0.35, 0.6))
    background = (_random_color(rng, (0.0, 0.3)), _random_color(rng, (0.0, 0.3)))
    return light, background


def _instance_labels(
    cfg: SynthConfig, placed: list[PlacedObject], objects: list[RenderObject], out: RenderOutput
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Instance mask, NOCS coordinate map (flat, one row per pixel) and per-instance labels of
    the objects seen by at least ``cfg.min_visible_pixels`` pixels."""
    width = cfg.width
    mask = np.full(cfg.height * width, nf.BACKGROUND_ID, dtype=np.uint8)
    coord = np.zeros((cfg.height * width, 3), dtype=np.float32)
    points = out.points.reshape(-1, 3)
    instances = []
    for index, p in enumerate(placed):
        pixels = out.object_pixels[index]
        count = len(pixels)
        if count < cfg.min_visible_pixels:
            continue
        obj = objects[index]
        instance_id = len(instances) + 1
        mask[pixels] = instance_id
        pts = points[pixels].astype(np.float64)
        coord[pixels] = (rotate_rows(pts - obj.t, obj.R) / obj.scale).astype(np.float32)
        rows, cols = np.divmod(pixels, width)
        handle_visible = 1
        if p.instance.category == "mug":
            handle_pixels = int(np.count_nonzero(out.part.reshape(-1)[pixels] == HANDLE_PART))
            handle_visible = int(handle_pixels >= cfg.min_handle_pixels)
        # Labels in the label frame (the mug's symmetric box); the coord map stays tight-box.
        shift, label_scale = p.instance.label_frame
        s_label, t_label = nf.label_pose_from_coord_pose(
            p.instance.scale, obj.R, obj.t, shift, label_scale
        )
        instances.append(
            dict(
                instance_id=instance_id,
                class_id=CLASS_IDS[p.instance.category],
                model=p.instance.name,
                bbox=[int(rows[0]), int(cols.min()), int(rows[-1]) + 1, int(cols.max()) + 1],
                scale=float(s_label),
                R=obj.R,
                t=t_label,
                nocs_extents=np.asarray(p.instance.label_extents, dtype=np.float64),
                handle_visibility=handle_visible,
                visible_pixels=count,
            )
        )
    return mask, coord, instances


def _sensor_images(
    cfg: SynthConfig,
    preset: sensor_module.SensorPreset | None,
    out: RenderOutput,
    K: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """The camera's colour and depth images from the ideal render: the sensor preset's effects,
    or (no preset) the original Gaussian noise; plus the preset's record of what it did."""
    if preset is None:
        depth = add_depth_noise(out.depth, rng) if cfg.depth_noise else out.depth
        rgb = fast_normal(rng, out.rgb.shape)
        rgb *= RGB_NOISE_SIGMA
        rgb += out.rgb
        np.clip(rgb, 0, 255, out=rgb)
        return rgb.astype(np.uint8), depth, None
    # One draw per frame, whatever the effects: switching an effect changes nothing else.
    seed = int(rng.integers(2**63))
    depth, record = sensor_module.apply_depth_sensor(
        preset, out.depth, K, out.albedo, out.gloss, out.normal, seed)
    rgb = sensor_module.apply_colour_camera(preset, out.rgb, seed)
    return rgb, depth, record


def write_frame(prefix: Path, frame: dict) -> None:
    """Write one rendered frame in the NOCS layout."""
    png = PNG_PARAMS
    cv2.imwrite(str(nf.frame_path(prefix, "color.png")), frame["rgb"][:, :, ::-1], png)
    depth_mm = np.clip(np.round(frame["depth"] * 1000.0), 0, 65535).astype(np.uint16)
    cv2.imwrite(str(nf.frame_path(prefix, "depth.png")), depth_mm, png)
    mask = frame["mask"]
    cv2.imwrite(str(nf.frame_path(prefix, "mask.png")), mask, png)
    # Encode the NOCS map on the object pixels only; the background stays 0.
    foreground = np.flatnonzero(mask.reshape(-1) != nf.BACKGROUND_ID)
    encoded = np.zeros((*mask.shape, 3), dtype=np.uint8)
    coord = frame["coord"].reshape(-1, 3)[foreground]
    encoded.reshape(-1, 3)[foreground] = nf.encode_coord(coord[None])[0]
    cv2.imwrite(str(nf.frame_path(prefix, "coord.png")), encoded, png)
    inst = frame["instances"]
    nf.write_meta(prefix, [(i["instance_id"], i["class_id"], i["model"]) for i in inst])
    label = nf.FrameLabel(
        instance_ids=np.array([i["instance_id"] for i in inst], dtype=np.int64),
        class_ids=np.array([i["class_id"] for i in inst], dtype=np.int64),
        bboxes=np.array([i["bbox"] for i in inst], dtype=np.int64).reshape(-1, 4),
        scales=np.array([i["scale"] for i in inst], dtype=np.float64),
        rotations=np.array([i["R"] for i in inst], dtype=np.float64).reshape(-1, 3, 3),
        translations=np.array([i["t"] for i in inst], dtype=np.float64).reshape(-1, 3),
        model_list=[i["model"] for i in inst],
        handle_visibility=np.array([i["handle_visibility"] for i in inst], dtype=np.int64),
        nocs_extents=np.array([i["nocs_extents"] for i in inst], dtype=np.float64).reshape(-1, 3),
        extra={
            "K": frame["K"],
            "visible_pixels": np.array([i["visible_pixels"] for i in inst], dtype=np.int64),
        },
    )
    if "sensor" in frame:  # the preset and this frame's depth-colour offset
        label.extra["sensor"] = frame["sensor"]
    nf.write_label(prefix, label)


def _write_model(out: Path, split: str, inst: ShapeInstance) -> None:
    folder = out / "obj_models" / split
    path = folder / f"{inst.name}.obj"
    if path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    shift, label_scale = inst.label_frame
    info = dict(
        category=inst.category,
        params=inst.params,
        scale=inst.scale,
        nocs_extents=np.asarray(inst.nocs_extents).tolist(),
        size_m=np.asarray(inst.size).tolist(),
        # p_label = label_scale * (p_nocs + label_shift); identity but for mugs (mug_meta.pkl)
        label_shift=np.asarray(shift).tolist(),
        label_scale=float(label_scale),
        label_extents=np.asarray(inst.label_extents).tolist(),
    )
    tmp = folder / f".{inst.name}.{os.getpid()}"
    inst.mesh.export(str(tmp) + ".obj")
    Path(str(tmp) + ".json").write_text(json.dumps(info, indent=1))
    os.replace(str(tmp) + ".json", folder / f"{inst.name}.json")
    os.replace(str(tmp) + ".obj", path)


def build_scene(cfg: SynthConfig, split: str, rng: np.random.Generator) -> tuple:
    """The static content of one scene: (placed objects, distractors, table style, fixtures);
    fixtures are None for plain scenes."""
    placed: list[PlacedObject] = []
    while not placed:
        footprints: list = []
        placed, distractors = _place_objects(cfg, split, rng, footprints)
    room = cfg.scene == "room"
    for p in placed:
        p.style = _appearance(p.instance.category, rng, room=room)
    table = dict(
        colors=np.stack([_random_color(rng, (0.0, 0.5))]),
        pattern=str(rng.choice(["plain", "checker", "stripes", "grain"])),
        pattern_freq=float(rng.uniform(2, 12)),
        specular=0.05,
    )
    fixtures = _room_fixtures(rng, footprints) if room else None
    return placed, distractors, table, fixtures


def generate_scene(args: tuple) -> int:
    """Render and write all frames of one scene; returns the number of frames written."""
    cfg, out, split, scene, frames, seed = args
    rng = np.random.default_rng(stable_seed(seed, split, scene))
    placed, distractors, table, fixtures = build_scene(cfg, split, rng)
    for p in placed:
        _write_model(out, split, p.instance)
    scene_dir = out / split / f"{scene:05d}"
    scene_dir.mkdir(parents=True, exist_ok=True)
    yolo_img = out / "yolo" / "images" / split
    yolo_lbl = out / "yolo" / "labels" / split
    yolo_img.mkdir(parents=True, exist_ok=True)
    yolo_lbl.mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        frame = None
        for _ in range(10):  # a view that shows at least one object
            frame = render_frame(cfg, placed, distractors, table, rng, fixtures)
            if frame["instances"]:
                break
        prefix = scene_dir / f"{f:04d}"
        write_frame(prefix, frame)
        stem = f"{scene:05d}_{f:04d}"
        link_image(nf.frame_path(prefix, "color.png"), yolo_img / f"{stem}.png")
        inst = frame["instances"]
        lines = yolo_lines(frame["mask"], [i["instance_id"] for i in inst],
                           [i["class_id"] for i in inst], [i["bbox"] for i in inst])
        (yolo_lbl / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return frames


def write_mug_meta(out: Path) -> None:
    """Collect every mug model's label frame into ``obj_models/mug_meta.pkl`` (SPD's file).

    Written once after the workers finish, from the per-model JSON files, so parallel workers
    never write the same file.
    """
    meta = {}
    for info_path in sorted((out / "obj_models").glob("*/*.json")):
        info = json.loads(info_path.read_text())
        if info.get("category") == "mug":
            meta[info_path.stem] = (np.asarray(info["label_shift"]), float(info["label_scale"]))
    if meta:
        nf.write_mug_meta(out / "obj_models" / nf.MUG_META_FILE, meta)


def _tune_malloc() -> None:
    """Keep freed heap memory in the process instead of handing it back to the OS (glibc only).

    Each frame allocates and frees ~50 MB of image-sized numpy temporaries; with glibc's default
    adaptive thresholds most of it is unmapped or trimmed and page-faulted back in on the next
    frame, which cost ~20 ms of kernel time per frame. Serving blocks up to 32 MB from the heap
    and trimming only beyond 256 MB free removes nearly all of those faults; the process simply
    keeps its peak heap (well under 256 MB here).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def _init_worker() -> None:
    """Pool worker set-up: single-threaded BLAS and the malloc tuning of :func:`_tune_malloc`.

    The Embree binding casts rays on the calling thread and the OpenCV calls here (PNG writes,
    contours of small windows) are single-threaded. ``cv2.setNumThreads`` is deliberately not
    called: in a forked child it deadlocks on the parent's thread-pool state.
    """
    # A stray large matmul would otherwise start a busy-waiting 2-thread BLAS pool in each
    # worker while the workers already fill the cores (that cost the old renderer ~2x).
    threadpool_limits(limits=1)
    _tune_malloc()


def generate(
    out: Path,
    split: str,
    scenes: int,
    frames_per_scene: int = 1,
    seed: int = 0,
    workers: int = 1,
    cfg: SynthConfig | None = None,
    progress: bool = True,
) -> float:
    """Generate ``scenes`` scenes; returns frames per second of wall time."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_config.json").write_text(
        json.dumps(dict(asdict(cfg), split=split, seed=seed), indent=1)
    )
    jobs = [(cfg, out, split, s, frames_per_scene, seed) for s in range(scenes)]
    start = time.perf_counter()
    bar = tqdm(total=scenes * frames_per_scene, unit="frame", disable=not progress, desc=split)
    if workers >= 1:
        # Worker processes even for one worker: the per-process tuning stays out of the caller.
        with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            for n in pool.imap_unordered(generate_scene, jobs):
                bar.update(n)
    else:  # workers=0: in this process, for debugging and profiling
        for job in jobs:
            bar.update(generate_scene(job))
    bar.close()
    elapsed = time.perf_counter() - start
    write_data_yaml(out / "yolo")
    write_mug_meta(out)
    fps = scenes * frames_per_scene / elapsed
    n_frames = scenes * frames_per_scene
    log.info("%s: %d frames in %.1f s (%.2f frames/s)", split, n_frames, elapsed, fps)
    return fps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--frames-per-scene", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes (0: render in this process, for debugging)",
    )
    parser.add_argument("--instances-per-category", type=int, default=50)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--no-depth-noise", action="store_true",
                        help="exact depth (with a preset: all its depth effects off)")
    parser.add_argument("--no-distractors", action="store_true")
    parser.add_argument(
        "--preset", choices=sorted(sensor_module.PRESETS), default="structured-light",
        help="depth sensor and colour camera model (sensor.py): structured-light is REAL275's "
             "camera, active-stereo a RealSense D4xx",
    )
    parser.add_argument(
        "--clean", action="store_true",
        help="the original ideal frames (plain table, no sensor model), bit for bit as before "
             "the realism presets; --preset and --disable are then ignored",
    )
    parser.add_argument("--scene", choices=SCENES, default=None,
                        help="room (default with a preset) or plain (default with --clean)")
    parser.add_argument("--disable", nargs="+", default=[], metavar="EFFECT",
                        choices=sensor_module.EFFECTS,
                        help="switch off effects of the preset: "
                             + ", ".join(sensor_module.EFFECTS))
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.frames_per_scene < 1 or args.workers < 0:
        parser.error("--scenes and --frames-per-scene must be >= 1 and --workers >= 0")
    log_to_terminal_and_file(args.out, "synth.log")
    try:
        cfg = SynthConfig(
            instances_per_category=args.instances_per_category,
            max_objects=args.max_objects,
            depth_noise=not args.no_depth_noise,
            max_distractors=0 if args.no_distractors else SynthConfig.max_distractors,
            sensor=None if args.clean else args.preset,
            sensor_off=() if args.clean else tuple(args.disable),
            scene=args.scene or ("plain" if args.clean else "room"),
        )
    except ValueError as err:
        parser.error(str(err))
    generate(args.out, args.split, args.scenes, args.frames_per_scene, args.seed, args.workers, cfg)


if __name__ == "__main__":
    main()
