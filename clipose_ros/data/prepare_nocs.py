"""``clipose-prepare-nocs``: the NOCS download (CAMERA25 / REAL275) as users unpack it, turned
into the labelled NOCS-format folders that ``clipose-train`` and ``clipose-eval`` read.

Why a preparation step rather than a reader of the raw layout: the raw frames carry no poses.
A pose comes from a RANSAC similarity fit of the coordinate map to the depth (tens of ms per
instance) or from a ``gts`` pickle matched to the frame's instances by class and box; the mug
label frame needs the object models. Doing that once, in parallel and resumably, keeps the
training reader's index a matter of unpickling labels (as for our own and SPD's folders).

Input (``--nocs-root DATA``, each part can also be given on its own)::

    DATA/CAMERA/{train,val}/<scene>/XXXX_{color,coord,depth,mask}.png, XXXX_meta.txt
    DATA/camera_full_depths/{train,val}/<scene>/XXXX_composed.png
    DATA/Real/{train,test}/scene_*/XXXX_{color,coord,depth,mask}.png, XXXX_meta.txt
    DATA/gts/{val,real_test}/results_*_<scene>_XXXX.pkl        (NOCS ground-truth poses)
    DATA/obj_models/{train,val,real_train,real_test}/          (object models, optional)

Output (``--out OUT``) keeps the download's relative layout, so Mask R-CNN result files find
their frames (``OUT/Real/test/scene_1/0000`` <-> ``results_test_scene_1_0000.pkl``)::

    OUT/CAMERA/{train,val}/<scene>/XXXX_{color,coord,mask}.png   links to the download
    OUT/CAMERA/.../XXXX_depth.png      link to the composed depth (camera_full_depths)
    OUT/CAMERA/.../XXXX_meta.txt       the six categories only (distractors left out)
    OUT/.../XXXX_label.pkl             SPD's label keys + nocs_extents, K, provenance
    OUT/obj_models/mug_meta.pkl        SPD's mug re-label per model (when models allow it)
    OUT/prepare_nocs.log, OUT/prepare_nocs_status.jsonl   what was done, skipped and why

Poses are ``p_cam = s R p_nocs + t`` in the OpenCV camera frame (DESIGN.md). Frames are
rejected as SPD's preprocessing rejects them (an instance box wider than 600 or taller than
440 px: a rendering error; no instance of the six categories with >= 64 depth pixels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from clipose_ros.categories import CAMERA_INTRINSICS, CLASS_IDS, REAL_INTRINSICS
from clipose_ros.data import nocs_format as nf
from clipose_ros.geometry import backproject_pixels, ransac_umeyama, umeyama

log = logging.getLogger("clipose.prepare_nocs")

STATUS_FILE = "prepare_nocs_status.jsonl"
SETTINGS_FILE = "prepare_settings.json"
MODEL_INFO_FILE = "model_info.json"
# SPD's preprocessing facts: frames with an instance box larger than this are rendering errors,
# instances with fewer depth pixels are too occluded to label, and one CAMERA mug model is
# unusable (improper model).
MAX_BOX_W, MAX_BOX_H = 600, 440
BAD_MODELS = frozenset({"b9be7cfe653740eb7633a2dd89cec754"})
# Six CAMERA mug models whose body axis the general rule misplaces; SPD fixes their shift by
# hand (values from SPD's shape_data.py, in tight-box NOCS units).
MUG_SHIFT_EXCEPTIONS = {
    "3a7439cfaa9af51faf1af397e14a566d": (0.115, 0.0, 0.0),
    "5b0c679eb8a2156c4314179664d18101": (0.083, 0.0, -0.044),
    "649a51c711dc7f3b32e150233fdd42e9": (0.0, 0.0, -0.017),
    "bf2b5e941b43d030138af902bc222a59": (0.0534, 0.0, 0.0),
    "ca198dc3f7dc0cacec6338171298c66b": (0.120, 0.0, 0.0),
    "f42a9784d165ad2f5e723252788c3d6e": (0.117, 0.0, -0.026),
}
GTS_NAME = re.compile(r"results_.*?((?:scene_)?\d+)_(\d{4})\.pkl$")
MUG = CLASS_IDS["mug"]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FitConfig:
    """Similarity fit of a coordinate map to depth and the checks on it."""

    inlier_threshold_m: float = 0.01  # RANSAC inlier distance
    iterations: int = 200
    max_ransac_points: int = 4000  # hypotheses are scored on a subset; the refit uses all
    min_pixels: int = 64  # SPD: fewer valid depth pixels -> the instance is left out
    min_inlier_ratio: float = 0.5  # below: the fit is bad and the frame is rejected
    handle_margin: float = 0.02  # NOCS units beyond the body radius that count as handle
    handle_min_pixels: int = 10
    gts_box_tolerance_px: int = 5  # SPD: sum of |box - gts box| for a gts match


@dataclass(frozen=True)
class SplitSpec:
    """One split of the download and where its parts are."""

    name: str  # camera_train, camera_val, real_train, real_test
    source: Path  # folder of scene folders
    out_rel: Path  # relative output folder (CAMERA/train, Real/test, ...)
    K: np.ndarray
    full_depths: Path | None  # camera_full_depths/<split> (CAMERA only)
    gts: Path | None  # gts/<val|real_test>
    models: Path | None  # obj_models/<subset>
    model_kind: str  # camera (ShapeNet synset/id/model.obj, z flipped) | real (name.obj + .txt)


@dataclass
class PrepareConfig:
    """Command-line settings of ``clipose-prepare-nocs``."""

    out: Path
    nocs_root: Path | None = None
    camera: Path | None = None
    real: Path | None = None
    camera_full_depths: Path | None = None
    gts: Path | None = None
    obj_models: Path | None = None
    mug_meta: Path | None = None
    splits: tuple[str, ...] = ()
    workers: int = 2
    link: str = "symlink"  # symlink | hardlink | copy
    max_frames: int | None = None
    camera_depth: str = "composed"  # composed | objects (the RGBA objects-only depth)
    estimate_handles: bool = True
    redo: bool = False  # prepare every frame again, whatever earlier runs did
    fit: FitConfig = field(default_factory=FitConfig)


class PrepareError(RuntimeError):
    """The download cannot be prepared as asked (names the folder or file)."""


# ----------------------------------------------------------------------------- locating parts


def _first_dir(*candidates: Path | None) -> Path | None:
    return next((c for c in candidates if c is not None and c.is_dir()), None)


def _camera_dir(cfg: PrepareConfig) -> Path | None:
    if cfg.camera is not None or cfg.nocs_root is None:
        return cfg.camera
    root = cfg.nocs_root
    if (root / "CAMERA").is_dir():
        return root / "CAMERA"
    # a CAMERA folder given as the root itself: train/ or val/ holding 5-digit scene folders
    for split in ("train", "val"):
        if (root / split).is_dir() and any(
            re.fullmatch(r"\d{5}", p.name) for p in (root / split).iterdir()
        ):
            return root
    return None


def locate_splits(cfg: PrepareConfig) -> list[SplitSpec]:
    """The splits to prepare, with every part found (or None when absent)."""
    root = cfg.nocs_root
    cam = _camera_dir(cfg)
    real = cfg.real or (_first_dir(root / "Real", root / "real") if root else None)
    full = cfg.camera_full_depths or _first_dir(
        root / "camera_full_depths" if root else None,
        cam / "camera_full_depths" if cam else None,
        cam.parent / "camera_full_depths" if cam else None,
    )
    gts = cfg.gts or (_first_dir(root / "gts") if root else None)
    models = cfg.obj_models or (_first_dir(root / "obj_models") if root else None)
    table = [
        ("camera_train", cam, "train", "CAMERA/train", CAMERA_INTRINSICS, None, "train", "camera"),
        ("camera_val", cam, "val", "CAMERA/val", CAMERA_INTRINSICS, "val", "val", "camera"),
        ("real_train", real, "train", "Real/train", REAL_INTRINSICS, None, "real_train", "real"),
        ("real_test", real, "test", "Real/test", REAL_INTRINSICS, "real_test", "real_test", "real"),
    ]
    specs = []
    for name, base, sub, out_rel, K, gts_sub, model_sub, kind in table:
        if cfg.splits and name not in cfg.splits:
            continue
        source = base / sub if base is not None else None
        if source is None or not source.is_dir():
            if cfg.splits:
                raise PrepareError(f"split {name}: folder {source or '(not found)'} does not exist")
            continue
        specs.append(SplitSpec(
            name, source, Path(out_rel), K,
            full / sub if kind == "camera" and full is not None else None,
            _first_dir(gts / gts_sub) if gts is not None and gts_sub else None,
            _first_dir(models / model_sub) if models is not None else None,
            kind,
        ))
    if not specs:
        raise PrepareError(
            f"no NOCS split found (looked for CAMERA/train|val and Real/train|test below "
            f"{root}); give --nocs-root or --camera/--real"
        )
    return specs


# ----------------------------------------------------------------------------- object models


def read_obj_vertices(path: Path) -> np.ndarray:
    """Vertices (n, 3) of a Wavefront OBJ: the extremes of a mesh are at its vertices, which is
    all the box extents and the mug body axis need."""
    rows = [line[2:] for line in path.read_text(errors="replace").splitlines()
            if line.startswith("v ")]
    if not rows:
        raise nf.NocsFormatError(f"object model has no vertices: {path}")
    try:
        return np.array([r.split()[:3] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise nf.NocsFormatError(f"malformed vertex in object model {path}: {err}") from err


def model_files(spec: SplitSpec) -> dict[str, Path]:
    """Model name -> OBJ file of a split's object models."""
    if spec.models is None:
        return {}
    if spec.model_kind == "camera":
        return {p.parent.name: p for p in sorted(spec.models.glob("*/*/model.obj"))}
    return {p.stem: p for p in sorted(spec.models.glob("*.obj"))}


def model_points(path: Path, kind: str) -> np.ndarray:
    """Model vertices in the tight-box NOCS frame of the coordinate maps.

    CAMERA (ShapeNet) models are already normalised, with z opposite to NOCS; REAL models are
    metric and are scaled by the diagonal of the box in their ``<name>.txt`` (as SPD does).
    """
    pts = read_obj_vertices(path)
    if kind == "camera":
        return pts * np.array([1.0, 1.0, -1.0])
    box_file = path.with_suffix(".txt")
    if not box_file.is_file():
        raise nf.NocsFormatError(f"REAL model {path} has no box file {box_file}")
    try:
        dims = np.loadtxt(box_file, dtype=np.float64).reshape(-1)[:3]
    except ValueError as err:
        raise nf.NocsFormatError(f"malformed box file {box_file}: {err}") from err
    return pts / np.linalg.norm(dims)


def model_info(path: Path, kind: str, is_mug: bool) -> dict:
    """Tight-box NOCS extents of a model and, for a mug, SPD's ``(shift, scale)``."""
    pts = model_points(path, kind)
    info: dict = {"extents": (pts.max(0) - pts.min(0)).tolist()}
    if is_mug:
        name = path.parent.name if kind == "camera" else path.stem
        if name in MUG_SHIFT_EXCEPTIONS:
            shift = np.array(MUG_SHIFT_EXCEPTIONS[name])
            scale = 1.0 / float(np.linalg.norm(2.0 * np.abs(pts + shift).max(axis=0)))
        else:
            shift, scale = nf.symmetric_label_frame(pts)
        info["mug"] = [shift.tolist(), scale]
    return info


def _is_mug_model(spec: SplitSpec, name: str, path: Path) -> bool:
    if spec.model_kind == "camera":
        return path.parent.parent.name == "03797390"  # ShapeNet synset of mugs
    return "mug" in name


def _model_info_job(args: tuple[str, str, str, bool]) -> tuple[str, dict | str]:
    name, path, kind, is_mug = args
    try:
        return name, model_info(Path(path), kind, is_mug)
    except (OSError, nf.NocsFormatError) as err:
        return name, f"{err}"


def load_model_table(specs: list[SplitSpec], cfg: PrepareConfig, pool) -> dict[str, dict]:
    """Model name -> {extents, mug: [shift, scale]} from the object models (cached in
    ``OUT/obj_models/model_info.json``); an SPD ``mug_meta.pkl`` given or found beside the
    models overrides the computed mug frames."""
    cache = cfg.out / "obj_models" / MODEL_INFO_FILE
    table: dict[str, dict] = json.loads(cache.read_text()) if cache.is_file() else {}
    jobs: list[tuple[str, str, str, bool]] = []
    for spec in specs:
        for name, path in model_files(spec).items():
            if name not in table:
                jobs.append((name, str(path), spec.model_kind, _is_mug_model(spec, name, path)))
    for name, info in tqdm(pool.imap_unordered(_model_info_job, jobs, chunksize=4),
                           total=len(jobs), desc="object models", unit="model",
                           disable=not jobs):
        if isinstance(info, str):
            log.warning("object model %s left out: %s", name, info)
        else:
            table[name] = info
    if jobs:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(table))
    spd = cfg.mug_meta or next(
        (s.models.parent / nf.MUG_META_FILE for s in specs
         if s.models is not None and (s.models.parent / nf.MUG_META_FILE).is_file()), None)
    if spd is not None:
        for name, (shift, scale) in nf.load_mug_meta(spd).items():
            table.setdefault(name, {})["mug"] = [shift.tolist(), scale]
        log.info("mug label frames from %s", spd)
    mugs = {k: (np.array(v["mug"][0]), float(v["mug"][1])) for k, v in table.items() if "mug" in v}
    if mugs:
        nf.write_mug_meta(cfg.out / "obj_models" / nf.MUG_META_FILE, mugs)
    return table


# ----------------------------------------------------------------------------- one instance


@dataclass
class Fit:
    """A similarity fit ``depth points ~ s R coords + t`` and its quality."""

    s: float
    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray  # bool per pixel
    median_residual_m: float

    @property
    def inlier_ratio(self) -> float:
        return float(self.inliers.mean())


def fit_coords_to_depth(
    coords: np.ndarray, points: np.ndarray, fit: FitConfig, rng: np.random.Generator
) -> Fit:
    """RANSAC over a subset (hypotheses are cheap to score on a few thousand pixels), then a
    least-squares refit on every inlier of the whole instance."""
    n = len(coords)
    sub = rng.choice(n, size=min(n, fit.max_ransac_points), replace=False)
    s, R, t, _ = ransac_umeyama(
        coords[sub], points[sub], rng, fit.inlier_threshold_m, fit.iterations
    )
    residual = np.linalg.norm(points - (s * coords @ R.T + t), axis=1)
    inliers = residual < fit.inlier_threshold_m
    if inliers.sum() >= 4:
        s, R, t = umeyama(coords[inliers], points[inliers])
        residual = np.linalg.norm(points - (s * coords @ R.T + t), axis=1)
        inliers = residual < fit.inlier_threshold_m
    return Fit(s, R, t, inliers, float(np.median(residual)))


def handle_visible(coords: np.ndarray, extents: np.ndarray, shift: np.ndarray | None,
                   fit: FitConfig) -> bool:
    """Whether a mug's handle shows in its visible coordinate-map pixels (tight-box frame).

    The body is a cylinder of diameter ``extents_z`` whose axis is where SPD's re-label puts
    the origin (``-shift``; without models, the -x wall plus the radius, the same rule); the
    handle is what lies beyond the radius towards +x.
    """
    radius = extents[2] / 2.0
    axis_x = -shift[0] if shift is not None else -extents[0] / 2.0 + radius
    beyond = coords[:, 0] - axis_x > radius + fit.handle_margin
    return int(beyond.sum()) >= max(fit.handle_min_pixels, int(0.01 * len(coords)))


def mug_label_pose(s: float, R: np.ndarray, t: np.ndarray, extents: np.ndarray,
                   shift: np.ndarray, scale: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Tight-box pose and extents -> SPD's mug label frame ``p_label = scale (p + shift)``.

    The tight box is centred, so the box symmetric about the body axis has extents
    ``scale (extents + 2 |shift|)`` (unit diagonal when the extents are the model's)."""
    s_label, t_label = nf.label_pose_from_coord_pose(s, R, t, shift, scale)
    return s_label, t_label, scale * (np.asarray(extents) + 2.0 * np.abs(shift))


def instance_box(inst: np.ndarray) -> np.ndarray:
    """``y1, x1, y2, x2`` of a mask, end exclusive (as SPD's labels)."""
    rows = np.nonzero(inst.any(axis=1))[0]
    cols = np.nonzero(inst.any(axis=0))[0]
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], dtype=np.int64)


def match_gts(gts: dict, class_id: int, box: np.ndarray, used: set[int], tol: int) -> int | None:
    """Index of the ``gts`` instance of this class whose box is within ``tol`` px (summed over
    the four sides, as SPD matches), nearest first; None when there is none."""
    best, best_diff = None, tol + 1
    for j, (c, b) in enumerate(zip(gts["gt_class_ids"], gts["gt_bboxes"], strict=True)):
        diff = int(np.abs(np.asarray(b, np.int64) - box).sum())
        if int(c) == class_id and j not in used and diff < best_diff:
            best, best_diff = j, diff
    return best


def gts_pose(gts: dict, j: int, coords: np.ndarray, points: np.ndarray
             ) -> tuple[float, np.ndarray, np.ndarray, str]:
    """``(s, R, t, convention)`` of gts instance ``j`` in the OpenCV frame.

    NOCS writes ``gt_RTs`` in the OpenCV frame (its code flips its back-projection back); a
    file in the flipped frame (x, y negated) is recognised by which reading puts the
    instance's coordinates nearer its depth points (the translation alone cannot tell for an
    object on the optical axis, where the two readings differ by a half turn about z).
    """
    rt = np.asarray(gts["gt_RTs"][j], np.float64)
    s = float(np.cbrt(np.linalg.det(rt[:3, :3])))
    R, t = rt[:3, :3] / s, rt[:3, 3]

    def residual(R_: np.ndarray, t_: np.ndarray) -> float:
        return float(np.median(np.linalg.norm(points - (s * coords @ R_.T + t_), axis=1)))

    if residual(nf.FLIP_XY @ R, nf.FLIP_XY @ t) < residual(R, t):
        return s, nf.FLIP_XY @ R, nf.FLIP_XY @ t, "nocs_flipped"
    return s, R, t, "opencv"


# ----------------------------------------------------------------------------- one frame


@dataclass
class FrameJob:
    """One frame to prepare: the split, the frame's path below it and its gts file."""

    split: int
    rel: str  # <scene>/XXXX
    gts: str | None = None


@dataclass
class Outcome:
    """What became of one frame (the main process logs it and appends it to the status)."""

    frame: str
    status: str  # done | rejected | error
    reason: str = ""
    instances: int = 0
    warnings: list[str] = field(default_factory=list)
    fit_median_mm: list[float] = field(default_factory=list)
    gts_fit_dt_mm: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # instances left out, and why

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def frame_sources(spec: SplitSpec, rel: str, cfg: PrepareConfig) -> dict[str, Path]:
    """Source file per output suffix; ``fit_depth`` is the depth the poses are fitted to."""
    prefix = spec.source / rel
    src = {s: nf.frame_path(prefix, s) for s in ("color.png", "coord.png", "mask.png",
                                                   "meta.txt")}
    src["fit_depth"] = nf.frame_path(prefix, "depth.png")
    src["depth.png"] = src["fit_depth"]
    if spec.model_kind == "camera" and cfg.camera_depth == "composed":
        if spec.full_depths is None:
            raise PrepareError(
                f"{spec.name}: no camera_full_depths folder (looked beside {spec.source.parent});"
                " give --camera-full-depths, or --camera-depth objects to train on the "
                "objects-only depth"
            )
        src["depth.png"] = spec.full_depths / f"{rel}_composed.png"
    return src


def _read_frame(src: dict[str, Path]) -> tuple:
    """Decoded (fit depth, mask, coordinates, meta) of a frame; raises NocsFormatError naming
    the bad file."""
    missing = [str(p) for p in src.values() if not p.is_file()]
    if missing:
        raise nf.NocsFormatError(f"missing file(s): {', '.join(sorted(set(missing)))}")
    prefix = Path(str(src["meta.txt"])[: -len("_meta.txt")])
    depth, mask, coord = nf.read_depth(prefix), nf.read_mask(prefix), nf.read_coord(prefix)
    stored = cv2.imread(str(src["depth.png"]), cv2.IMREAD_UNCHANGED)
    if stored is None:
        raise nf.NocsFormatError(f"cannot decode image (corrupt or not a PNG): {src['depth.png']}")
    color = nf.read_color(prefix)  # decoded once here, so a corrupt one is named now
    for name, arr in (("mask.png", mask), ("coord.png", coord), ("depth.png", stored),
                      ("color.png", color)):
        if arr.shape[:2] != depth.shape:
            raise nf.NocsFormatError(
                f"{src[name]} has shape {arr.shape[:2]} but {src['fit_depth']} {depth.shape}"
            )
    return depth, mask, coord, nf.read_meta(prefix)


def _load_gts(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            gts = pickle.load(f)
        for key in ("gt_class_ids", "gt_bboxes", "gt_RTs"):
            gts[key] = np.asarray(gts[key])
        return gts
    except Exception as err:  # noqa: BLE001 - any unpickling or key problem: a bad file
        raise nf.NocsFormatError(f"cannot read gts pickle {path}: {err}") from err


def label_instances(spec: SplitSpec, inputs: tuple, gts: dict | None, table: dict[str, dict],
                    cfg: PrepareConfig, out: Outcome) -> dict[str, list] | None:
    """Per kept instance: pose, extents, handle and provenance; None for a bad rendering."""
    depth, mask, coord, meta = inputs
    rng = np.random.default_rng(0)
    present = set(np.unique(mask).tolist()) - {nf.BACKGROUND_ID}
    rows: dict[str, list] = {k: [] for k in (
        "instance_ids", "class_ids", "bboxes", "scales", "rotations", "translations",
        "model_list", "handle_visibility", "nocs_extents", "pose_source", "label_frame",
        "handle_source", "fit_inlier_ratio", "fit_median_residual_mm")}
    used: set[int] = set()
    for iid, cid, model in meta:
        if cid == 0 or iid not in present:
            out.count("distractor" if cid == 0 else "not_visible")
            continue
        if not 1 <= cid <= 6:
            raise nf.NocsFormatError(f"{spec.source}/{out.frame}_meta.txt: class id {cid}")
        if model in BAD_MODELS:
            out.count("bad_model")
            continue
        inst = mask == iid
        box = instance_box(inst)
        if box[3] - box[1] > MAX_BOX_W or box[2] - box[0] > MAX_BOX_H:
            out.reason = f"instance {iid} covers {box[3] - box[1]}x{box[2] - box[0]} px " \
                "(a rendering error, as SPD rejects)"
            return None
        r, c = np.nonzero(inst & (depth > 0))
        if len(r) < cfg.fit.min_pixels:
            out.count("too_few_pixels")
            continue
        coords = coord[r, c].astype(np.float64)
        points = backproject_pixels(depth, spec.K, r, c)
        fit = fit_coords_to_depth(coords, points, cfg.fit, rng)
        if fit.inlier_ratio < cfg.fit.min_inlier_ratio:
            out.reason = (f"instance {iid} ({model}): coordinate-map fit keeps "
                          f"{fit.inlier_ratio:.0%} inliers within {cfg.fit.inlier_threshold_m} m")
            return None
        _add_instance(rows, (iid, cid, model, box), coords[fit.inliers], points[fit.inliers],
                      fit, gts, used, table.get(model, {}), cfg, out)
    return rows


def _add_instance(rows: dict[str, list], ident: tuple, coords: np.ndarray, points: np.ndarray,
                  fit: Fit, gts: dict | None, used: set[int], info: dict, cfg: PrepareConfig,
                  out: Outcome) -> None:
    """Append one instance's label: the gts pose when one matches, else the fit."""
    iid, cid, model, box = ident
    s, R, t, source = fit.s, fit.R, fit.t, "coord_fit"
    seen = 2.0 * np.abs(coords).max(axis=0)  # the centred tight box, from the visible pixels
    extents = np.asarray(info.get("extents", seen), np.float64)
    if np.any(seen > extents + 0.03):  # a coordinate map outside its model's box
        out.warnings.append(f"instance {iid}: coordinate map spans {np.round(seen, 3)}, beyond "
                            f"the extents {np.round(extents, 3)} of model {model}")
    handle, handle_source = 1, "assumed_visible"
    j = match_gts(gts, cid, box, used, cfg.fit.gts_box_tolerance_px) if gts else None
    if j is not None:
        used.add(j)
        s, R, t, convention = gts_pose(gts, j, coords, points)
        source = "gts" if convention == "opencv" else "gts_flipped"
        out.gts_fit_dt_mm.append(1e3 * float(np.linalg.norm(t - fit.t)))
        if "extents" not in info and "gt_scales" in gts:
            extents = np.asarray(gts["gt_scales"][j], np.float64).reshape(3)
        if "gt_handle_visibility" in gts:
            handle, handle_source = int(gts["gt_handle_visibility"][j]), "gts"
    elif gts is not None:
        out.warnings.append(f"instance {iid} (class {cid}) has no gts match: fitted pose")
    mug = info.get("mug")
    if cid == MUG:
        shift = np.asarray(mug[0], np.float64) if mug else None
        if handle_source != "gts" and cfg.estimate_handles:
            handle = int(handle_visible(coords, extents, shift, cfg.fit))
            handle_source = "estimated"
        if mug:
            s, t, extents = mug_label_pose(s, R, t, extents, shift, float(mug[1]))
        else:
            out.count("mug_in_tight_box")
    for key, value in (
        ("instance_ids", iid), ("class_ids", cid), ("bboxes", box), ("scales", s),
        ("rotations", R), ("translations", t), ("model_list", model),
        ("handle_visibility", handle), ("nocs_extents", extents), ("pose_source", source),
        ("label_frame", "nocs" if cid != MUG else "spd_mug_meta" if mug else "tight_box"),
        ("handle_source", handle_source), ("fit_inlier_ratio", fit.inlier_ratio),
        ("fit_median_residual_mm", 1e3 * fit.median_residual_m),
    ):
        rows[key].append(value)
    out.fit_median_mm.append(1e3 * fit.median_residual_m)


def place(src: Path, dst: Path, mode: str) -> None:
    """Put ``src`` at ``dst`` as a symlink (absolute), a hard link or a copy."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def write_frame(out_prefix: Path, src: dict[str, Path], rows: dict[str, list],
                spec: SplitSpec, cfg: PrepareConfig) -> None:
    """Images linked, meta of the kept instances, and the label last (atomically): a frame
    with a label is complete, which is what resuming relies on."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("color.png", "coord.png", "mask.png", "depth.png"):
        place(src[suffix], nf.frame_path(out_prefix, suffix), cfg.link)
    nf.write_meta(out_prefix, list(zip(rows["instance_ids"], rows["class_ids"],
                                       rows["model_list"], strict=True)))
    n = len(rows["instance_ids"])
    depth_source = ("camera_full_depths" if src["depth.png"] != src["fit_depth"]
                    else "objects_only" if spec.model_kind == "camera" else "sensor")
    label = nf.FrameLabel(
        instance_ids=np.array(rows["instance_ids"], np.int64),
        class_ids=np.array(rows["class_ids"], np.int64),
        bboxes=np.array(rows["bboxes"], np.int64).reshape(n, 4),
        scales=np.array(rows["scales"], np.float64),
        rotations=np.array(rows["rotations"], np.float64).reshape(n, 3, 3),
        translations=np.array(rows["translations"], np.float64).reshape(n, 3),
        model_list=[str(m) for m in rows["model_list"]],
        handle_visibility=np.array(rows["handle_visibility"], np.int64),
        nocs_extents=np.array(rows["nocs_extents"], np.float64).reshape(n, 3),
        camera_convention="opencv",
        extra={
            "K": spec.K.copy(),
            "pose_source": rows["pose_source"],
            "label_frame": rows["label_frame"],
            "handle_source": rows["handle_source"],
            "fit_inlier_ratio": np.array(rows["fit_inlier_ratio"]),
            "fit_median_residual_mm": np.array(rows["fit_median_residual_mm"]),
            "depth_source": depth_source,
            "source": str(src["meta.txt"])[: -len("_meta.txt")],
        },
    )
    tmp = nf.frame_path(out_prefix, "label.pkl.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(label.to_dict(), f)
    os.replace(tmp, nf.frame_path(out_prefix, "label.pkl"))


_CONTEXT: dict = {}


def _init_worker(specs: list[SplitSpec], cfg: PrepareConfig, table: dict) -> None:
    _CONTEXT.update(specs=specs, cfg=cfg, table=table)
    cv2.setNumThreads(1)


def prepare_frame(job: FrameJob) -> Outcome:
    """Label one frame and write it (in a worker); every failure becomes an Outcome."""
    spec: SplitSpec = _CONTEXT["specs"][job.split]
    cfg: PrepareConfig = _CONTEXT["cfg"]
    out = Outcome(frame=f"{spec.out_rel}/{job.rel}", status="error")
    try:
        src = frame_sources(spec, job.rel, cfg)
        inputs = _read_frame(src)
        rows = label_instances(spec, inputs, _load_gts(job.gts), _CONTEXT["table"], cfg, out)
        if rows is None:
            out.status = "rejected"
            return out
        if not rows["instance_ids"]:
            out.status, out.reason = "rejected", "no instance of the six categories to label"
            return out
        write_frame(cfg.out / spec.out_rel / job.rel, src, rows, spec, cfg)
        out.status, out.instances = "done", len(rows["instance_ids"])
    except (nf.NocsFormatError, OSError, ValueError, np.linalg.LinAlgError) as err:
        out.reason = str(err)
    return out


# ----------------------------------------------------------------------------- the whole run


def list_split_frames(spec: SplitSpec) -> list[str]:
    """``<scene>/XXXX`` of every frame of a split, found by any of its files (so a frame
    missing its colour image is still named)."""
    found = set()
    for pattern in ("*/*_meta.txt", "*/*_color.png"):
        for p in spec.source.glob(pattern):
            found.add(f"{p.parent.name}/{p.name.split('_')[0]}")
    return sorted(found)


def gts_index(folder: Path | None) -> dict[str, Path]:
    """``<scene>/XXXX`` -> gts pickle, from names ``results_<split>_<scene>_XXXX.pkl``."""
    index: dict[str, Path] = {}
    for p in sorted(folder.glob("*.pkl")) if folder is not None else []:
        m = GTS_NAME.search(p.name)
        if m:
            index[f"{m.group(1)}/{m.group(2)}"] = p
    return index


def read_status(out: Path) -> dict[str, str]:
    """Frame -> last status from earlier runs (rejections are final, errors are retried)."""
    path = out / STATUS_FILE
    status: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                status[row["frame"]] = row["status"]
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by an interrupted run
    return status


def plan_jobs(specs: list[SplitSpec], cfg: PrepareConfig) -> tuple[list[FrameJob], int]:
    """Frames still to do (resuming: labelled or rejected frames are skipped), and how many
    were skipped."""
    previous = {} if cfg.redo else read_status(cfg.out)
    jobs, done = [], 0
    for i, spec in enumerate(specs):
        gts = gts_index(spec.gts)
        if spec.gts is not None:
            log.info("%s: %d gts pickles in %s", spec.name, len(gts), spec.gts)
        for rel in list_split_frames(spec)[: cfg.max_frames]:
            frame = f"{spec.out_rel}/{rel}"
            label = nf.frame_path(cfg.out / frame, "label.pkl")
            if not cfg.redo and (label.is_file() or previous.get(frame) == "rejected"):
                done += 1
                continue
            if spec.gts is not None and rel not in gts:
                log.warning("%s: no gts pickle for %s; poses from the coordinate map", spec.name,
                            frame)
            jobs.append(FrameJob(i, rel, str(gts[rel]) if rel in gts else None))
    return jobs, done


def split_settings(spec: SplitSpec, cfg: PrepareConfig, table: dict[str, dict]) -> dict:
    """What a split's labels depend on, to tell a resumable run from a changed one."""
    names = set(model_files(spec)) if spec.models is not None else set(table)
    mugs = sorted((k, v["mug"]) for k, v in table.items() if "mug" in v and k in names)
    return {
        "source": str(spec.source),
        "depth": str(spec.full_depths) if cfg.camera_depth == "composed" else "objects",
        "gts": str(spec.gts) if spec.gts else None,
        "models": str(spec.models) if spec.models else None,
        "mug_frames": hashlib.sha1(json.dumps(mugs).encode()).hexdigest()[:16],
        "fit": asdict(cfg.fit),
        "estimate_handles": cfg.estimate_handles,
    }


def check_settings(specs: list[SplitSpec], cfg: PrepareConfig, table: dict[str, dict]) -> None:
    """Refuse to resume a split whose labels were made with other settings (e.g. a first run
    without object models would leave its mugs in the tight box); ``--redo`` starts over."""
    path = cfg.out / SETTINGS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    for spec in specs:
        now = split_settings(spec, cfg, table)
        before = stored.get(spec.name)
        if before is not None and before != now and not cfg.redo:
            changed = sorted(k for k in now if before.get(k) != now[k])
            raise PrepareError(
                f"{cfg.out} holds {spec.name} prepared with other settings ({', '.join(changed)}"
                f" changed, see {path}): give another --out, or --redo to prepare it again"
            )
        stored[spec.name] = now
    path.write_text(json.dumps(stored, indent=1))


def _record(out: Outcome, status_file, summary: dict) -> None:
    status_file.write(json.dumps({"frame": out.frame, "status": out.status,
                                  "reason": out.reason, "instances": out.instances}) + "\n")
    split = summary.setdefault(out.frame.rsplit("/", 2)[0], {
        "done": 0, "rejected": 0, "error": 0, "instances": 0, "left_out": {},
        "fit_median_mm": [], "gts_fit_dt_mm": []})
    split[out.status] += 1
    split["instances"] += out.instances
    for k, v in out.counts.items():
        split["left_out"][k] = split["left_out"].get(k, 0) + v
    split["fit_median_mm"] += out.fit_median_mm
    split["gts_fit_dt_mm"] += out.gts_fit_dt_mm
    if out.status == "error":
        log.error("%s: %s (frame left out)", out.frame, out.reason)
    elif out.status == "rejected":
        log.info("%s rejected: %s", out.frame, out.reason)
    for w in out.warnings:
        log.warning("%s: %s", out.frame, w)


def _summarise(summary: dict) -> dict:
    for split in summary.values():
        for key in ("fit_median_mm", "gts_fit_dt_mm"):
            values = split.pop(key)
            split[f"{key}_median"] = float(np.median(values)) if values else None
            split[f"{key}_p95"] = float(np.percentile(values, 95)) if values else None
    return summary


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Prepare every split found; returns the summary (also in ``OUT/prepare_summary.json``)."""
    if cfg.link not in ("symlink", "hardlink", "copy"):
        raise PrepareError(f"--link must be symlink, hardlink or copy, got {cfg.link!r}")
    if cfg.camera_depth not in ("composed", "objects"):
        raise PrepareError(f"--camera-depth must be composed or objects, got {cfg.camera_depth}")
    specs = locate_splits(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        frame_sources(spec, "check/0000", cfg)  # a CAMERA split without composed depths stops
        log.info("%s: %s (depth: %s, gts: %s, models: %s)", spec.name, spec.source,
                 spec.full_depths or "own", spec.gts, spec.models)
        if spec.models is None:
            log.warning("%s: no object models: extents from the coordinate maps; mugs keep the "
                        "tight box of the coordinate map unless a mug_meta.pkl is given",
                        spec.name)
    workers = max(1, int(cfg.workers))
    # forkserver/spawn: forking a parent whose OpenCV or OpenMP threads run can deadlock
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        table = load_model_table(specs, cfg, pool)
    check_settings(specs, cfg, table)
    jobs, done_before = plan_jobs(specs, cfg)
    log.info("%d frames to prepare (%d done in earlier runs), %d workers", len(jobs),
             done_before, workers)
    summary: dict = {}
    with open(cfg.out / STATUS_FILE, "a") as status_file, \
            ctx.Pool(workers, _init_worker, (specs, cfg, table)) as pool:
        for out in tqdm(pool.imap_unordered(prepare_frame, jobs, chunksize=4), total=len(jobs),
                        desc="prepare", unit="frame", disable=not progress):
            _record(out, status_file, summary)
            status_file.flush()
    summary = _summarise(summary)
    summary_path = cfg.out / "prepare_summary.json"
    summary_path.write_text(json.dumps({"skipped_as_done": done_before, "splits": summary},
                                       indent=1))
    for name, split in summary.items():
        log.info("%s: %s", name, json.dumps(split))
    return summary


def main(argv: list[str] | None = None) -> None:
    from clipose_ros.logs import log_to_terminal_and_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nocs-root", type=Path, default=None,
                        help="the unpacked download (holding CAMERA/, camera_full_depths/, "
                        "Real/, gts/, obj_models/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    for part in ("camera", "real", "camera-full-depths", "gts", "obj-models"):
        parser.add_argument(f"--{part}", type=Path, default=None,
                            help=f"the {part} folder when it is not below --nocs-root")
    parser.add_argument("--mug-meta", type=Path, default=None,
                        help="SPD's mug_meta.pkl (overrides the mug frames computed from models)")
    parser.add_argument("--splits", nargs="+", default=[],
                        choices=["camera_train", "camera_val", "real_train", "real_test"],
                        help="default: every split found")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--link", default="symlink", choices=["symlink", "hardlink", "copy"],
                        help="how images reach OUT (symlink: no extra disk)")
    parser.add_argument("--camera-depth", default="composed", choices=["composed", "objects"],
                        help="CAMERA depth written for training: camera_full_depths (composed, "
                        "what the field trains on) or the objects-only depth")
    parser.add_argument("--max-frames", type=int, default=None, help="per split (for a try)")
    parser.add_argument("--inlier-threshold", type=float, default=0.01,
                        help="RANSAC inlier distance in metres (REAL depth is noisier)")
    parser.add_argument("--redo", action="store_true",
                        help="prepare every frame again (after a change of models or settings)")
    parser.add_argument("--no-handle-estimate", action="store_true",
                        help="mugs without gts handle visibility count as handle visible")
    args = parser.parse_args(argv)
    log_to_terminal_and_file(args.out, "prepare_nocs.log")
    cfg = PrepareConfig(
        out=args.out, nocs_root=args.nocs_root, camera=args.camera, real=args.real,
        camera_full_depths=args.camera_full_depths, gts=args.gts, obj_models=args.obj_models,
        mug_meta=args.mug_meta, splits=tuple(args.splits), workers=args.workers,
        link=args.link, max_frames=args.max_frames, camera_depth=args.camera_depth,
        estimate_handles=not args.no_handle_estimate, redo=args.redo,
        fit=FitConfig(inlier_threshold_m=args.inlier_threshold),
    )
    try:
        summary = prepare(cfg)
    except (PrepareError, nf.NocsFormatError) as err:
        raise SystemExit(f"clipose-prepare-nocs: {err}") from err
    for name, split in summary.items():
        print(f"{name}: {split['done']} frames labelled ({split['instances']} instances), "
              f"{split['rejected']} rejected, {split['error']} with bad files (see "
              f"{args.out / 'prepare_nocs.log'})")


if __name__ == "__main__":
    main()
