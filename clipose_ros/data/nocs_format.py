"""Files of one frame in the NOCS on-disk layout (CAMERA25 / REAL275, and our synthetic scenes).

A frame ``<dir>/<XXXX>`` consists of

- ``XXXX_color.png``  RGB image (stored as PNG, read back as RGB uint8)
- ``XXXX_depth.png``  uint16 depth in millimetres, 0 = invalid
- ``XXXX_mask.png``   uint8 instance ids, 255 = background
- ``XXXX_coord.png``  NOCS map: RGB = (x + 0.5, y + 0.5, 0.5 - z) scaled to 0..255 (NOCS
  stores z flipped; :func:`read_coord` undoes it)
- ``XXXX_meta.txt``   one line ``instance_id class_id model_name`` per instance
- ``XXXX_label.pkl``  ground truth, a dict in the layout of the widely used preprocessed
  labels (object-deformnet / SPD), with extra keys of our own:

  ``instance_ids`` (n,) int, ``class_ids`` (n,) int 1..6, ``bboxes`` (n, 4) int as
  ``y1, x1, y2, x2``, ``scales`` (n,) float scale factor s in metres, ``rotations`` (n, 3, 3),
  ``translations`` (n, 3) metres, ``model_list`` list of model names, ``handle_visibility``
  (n,) int; ours adds ``nocs_extents`` (n, 3) extents of the labelled box in its own units,
  and ``camera_convention``: ``"opencv"`` (x right, y down, z forward). Files without that key
  are assumed OpenCV-frame, as the SPD labels are.

The pose convention is ``p_cam = s * R @ p_nocs + t`` (DESIGN.md).

Mugs (SPD convention, as GPV-Pose, HS-Pose and CLIPose train and evaluate): the label's
``R, t, s`` and extents refer to a box symmetric about the mug body's axis, not to the tight box
of the coordinate map. Per model, ``p_label = scale * (p_coord + shift)`` with ``shift`` along x
(SPD's ``mug_meta``: ``model name -> [shift, scale]``, in ``obj_models/mug_meta.pkl``); see
:func:`symmetric_label_frame` and :func:`label_pose_from_coord_pose`.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.categories import CAMERA_INTRINSICS, REAL_INTRINSICS

log = logging.getLogger("clipose.nocs_format")
BACKGROUND_ID = 255
CAMERA25_NO_DEPTH_MM = 32001  # the "no depth" value of the CAMERA25 composite depth maps
INTRINSICS_FILE = "intrinsics.txt"  # optional per-folder 3x3 K, whitespace separated
# The original NOCS code back-projects with x and y negated; labels in that frame carry
# camera_convention "nocs_flipped" and convert with p_cv = FLIP_XY @ p_flipped.
FLIP_XY = np.diag([-1.0, -1.0, 1.0])
CAMERA_CONVENTIONS = ("opencv", "nocs_flipped")
SUFFIXES = ("color.png", "depth.png", "mask.png", "coord.png", "meta.txt", "label.pkl")
LABEL_KEYS = (
    "instance_ids",
    "class_ids",
    "bboxes",
    "scales",
    "rotations",
    "translations",
    "model_list",
    "handle_visibility",
)
# The SPD training labels omit handle visibility (only their test labels carry it): such
# handles count as visible, as the NOCS evaluation does for every non-REAL frame.
OPTIONAL_LABEL_KEYS = ("handle_visibility",)


class NocsFormatError(ValueError):
    """A NOCS-format file is missing or malformed; the message names the file."""


@dataclass
class FrameLabel:
    """Ground truth of one frame, one row per instance."""

    instance_ids: np.ndarray
    class_ids: np.ndarray
    bboxes: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    model_list: list[str]
    handle_visibility: np.ndarray
    nocs_extents: np.ndarray | None = None
    camera_convention: str = "opencv"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instance_ids)

    def opencv_pose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) of instance ``i`` in the OpenCV camera frame, whatever the file's convention."""
        R, t = self.rotations[i], self.translations[i]
        if self.camera_convention == "nocs_flipped":
            return FLIP_XY @ R, FLIP_XY @ t
        if self.camera_convention != "opencv":
            raise NocsFormatError(f"unknown camera convention {self.camera_convention!r}")
        return R, t

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in LABEL_KEYS}
        out["nocs_extents"] = self.nocs_extents
        out["camera_convention"] = self.camera_convention
        out.update(self.extra)
        return out


def frame_path(prefix: str | Path, suffix: str) -> Path:
    """``<prefix>_<suffix>``, e.g. ``scene_1/0000`` + ``color.png``."""
    return Path(f"{prefix}_{suffix}")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise NocsFormatError(f"missing NOCS file: {path}")
    return path


def _imread(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(_require(path)), flags)
    if image is None:
        raise NocsFormatError(f"cannot decode image (corrupt or not a PNG): {path}")
    return image


def read_color(prefix: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    path = frame_path(prefix, "color.png")
    image = _imread(path, cv2.IMREAD_COLOR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise NocsFormatError(f"colour image is not 3-channel: {path} has shape {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(prefix: str | Path) -> np.ndarray:
    """Depth in metres, float32 (H, W), 0 where invalid.

    Handles the NOCS quirk of depth PNGs stored as 3 channels (depth packed in two of them).
    """
    path = frame_path(prefix, "depth.png")
    raw = _imread(path, cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3:  # CAMERA25 composites: high byte in channel 1, low byte in channel 2 (BGR)
        raw = raw[:, :, 1].astype(np.uint16) * 256 + raw[:, :, 2].astype(np.uint16)
        raw[raw == CAMERA25_NO_DEPTH_MM] = 0
    if raw.dtype != np.uint16:
        raise NocsFormatError(f"depth image must be uint16 millimetres: {path} is {raw.dtype}")
    return raw.astype(np.float32) / 1000.0


def read_mask(prefix: str | Path) -> np.ndarray:
    """Instance id image uint8 (H, W); 255 = background."""
    path = frame_path(prefix, "mask.png")
    mask = _imread(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask[:, :, 2]
    return mask


def read_coord(prefix: str | Path) -> np.ndarray:
    """NOCS map as float32 (H, W, 3) coordinates in [-0.5, 0.5] (background is meaningless)."""
    path = frame_path(prefix, "coord.png")
    coord = _imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]  # stored RGB, cv2 reads BGR
    coord = coord.astype(np.float32) / 255.0 - 0.5
    # NOCS stores z flipped in the PNG (1 - z), the convention all NOCS readers undo.
    coord[:, :, 2] = -coord[:, :, 2]
    return coord


def encode_coord(coord: np.ndarray) -> np.ndarray:
    """Inverse of :func:`read_coord` up to quantisation: NOCS coords -> BGR uint8 for cv2."""
    rgb = coord.astype(np.float64).copy()
    rgb[:, :, 2] = -rgb[:, :, 2]
    rgb = np.clip(np.round((rgb + 0.5) * 255.0), 0, 255).astype(np.uint8)
    return rgb[:, :, ::-1]


def read_meta(prefix: str | Path) -> list[tuple[int, int, str]]:
    """``(instance_id, class_id, model_name)`` per line of ``XXXX_meta.txt``."""
    path = _require(frame_path(prefix, "meta.txt"))
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 3:
            raise NocsFormatError(f"{path}:{line_no}: expected 'instance_id class_id model_name'")
        # CAMERA25 lines carry the ShapeNet synset before the model id: take the last field.
        try:
            rows.append((int(parts[0]), int(parts[1]), parts[3] if len(parts) >= 4 else parts[2]))
        except ValueError as err:
            raise NocsFormatError(f"{path}:{line_no}: {err}") from err
    return rows


def read_label(prefix: str | Path) -> FrameLabel:
    """Load ``XXXX_label.pkl``; raises :class:`NocsFormatError` naming the file when malformed."""
    path = _require(frame_path(prefix, "label.pkl"))
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise NocsFormatError(f"cannot read label pickle {path}: {err}") from err
    if not isinstance(raw, dict):
        raise NocsFormatError(f"label pickle {path} does not hold a dict")
    missing = [k for k in LABEL_KEYS if k not in raw and k not in OPTIONAL_LABEL_KEYS]
    if missing:
        raise NocsFormatError(f"label pickle {path} lacks keys {missing}")
    n = len(raw["instance_ids"])
    extents = raw.get("nocs_extents")
    known = LABEL_KEYS + ("nocs_extents", "camera_convention")
    extra = {k: v for k, v in raw.items() if k not in known}
    try:
        label = FrameLabel(
            instance_ids=np.asarray(raw["instance_ids"], dtype=np.int64).reshape(n),
            class_ids=np.asarray(raw["class_ids"], dtype=np.int64).reshape(n),
            bboxes=np.asarray(raw["bboxes"], dtype=np.int64).reshape(n, 4),
            scales=np.asarray(raw["scales"], dtype=np.float64).reshape(n),
            rotations=np.asarray(raw["rotations"], dtype=np.float64).reshape(n, 3, 3),
            translations=np.asarray(raw["translations"], dtype=np.float64).reshape(n, 3),
            model_list=list(raw["model_list"]),
            handle_visibility=np.asarray(
                raw.get("handle_visibility", np.ones(n)), dtype=np.int64
            ).reshape(n),
            nocs_extents=(
                None if extents is None else np.asarray(extents, np.float64).reshape(n, 3)
            ),
            camera_convention=raw.get("camera_convention", "opencv"),
            extra=extra,
        )
    except (ValueError, TypeError) as err:
        raise NocsFormatError(f"label pickle {path} has inconsistent arrays: {err}") from err
    if len(label.model_list) != n:
        raise NocsFormatError(
            f"label pickle {path}: {n} instance ids but {len(label.model_list)} model names"
        )
    if label.camera_convention not in CAMERA_CONVENTIONS:
        raise NocsFormatError(
            f"label pickle {path}: unknown camera_convention {label.camera_convention!r} "
            f"(known: {CAMERA_CONVENTIONS})"
        )
    return label


def write_label(prefix: str | Path, label: FrameLabel) -> None:
    with open(frame_path(prefix, "label.pkl"), "wb") as f:
        pickle.dump(label.to_dict(), f)


def write_meta(prefix: str | Path, rows: list[tuple[int, int, str]]) -> None:
    text = "".join(f"{iid} {cid} {name}\n" for iid, cid, name in rows)
    frame_path(prefix, "meta.txt").write_text(text)


def list_frames(root: str | Path, labelled: bool = False) -> list[Path]:
    """Frame prefixes (``.../0000``) below ``root``, sorted, found by their ``_color.png``.

    With ``labelled``, only frames that have a ``_label.pkl`` (the SPD preprocessing writes
    labels only for the frames it accepts); the others are counted in the log.
    """
    root = Path(root)
    if not root.is_dir():
        raise NocsFormatError(f"dataset folder does not exist: {root}")
    prefixes = sorted(p.with_name(p.name[: -len("_color.png")]) for p in root.rglob("*_color.png"))
    if not prefixes:
        raise NocsFormatError(f"no *_color.png frames below {root}")
    if labelled:
        kept = [p for p in prefixes if frame_path(p, "label.pkl").is_file()]
        if len(kept) < len(prefixes):
            log.info("%s: %d of %d frames have no label and are skipped", root,
                     len(prefixes) - len(kept), len(prefixes))
        if not kept:
            raise NocsFormatError(f"no frame below {root} has a *_label.pkl")
        prefixes = kept
    return prefixes


def resolve_intrinsics(intrinsics: np.ndarray | str) -> np.ndarray:
    """3x3 float64 intrinsics from an array or the benchmark names ``"camera"`` / ``"real"``."""
    if isinstance(intrinsics, str):
        named = {"camera": CAMERA_INTRINSICS, "real": REAL_INTRINSICS}
        key = intrinsics.lower()
        if key not in named:
            raise ValueError(f"unknown intrinsics name {intrinsics!r}; use 'camera' or 'real'")
        return named[key].astype(np.float64).copy()
    K = np.asarray(intrinsics, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics must be a finite 3x3 matrix with fx, fy > 0, got {K}")
    return K


def read_folder_intrinsics(folder: Path) -> np.ndarray | None:
    """The folder's ``intrinsics.txt`` (3x3), or None when it has none."""
    path = Path(folder) / INTRINSICS_FILE
    if not path.is_file():
        return None
    try:
        return resolve_intrinsics(np.loadtxt(path, dtype=np.float64).reshape(3, 3))
    except ValueError as err:
        raise NocsFormatError(f"malformed intrinsics file {path}: {err}") from err


def frame_intrinsics(
    prefix: str | Path,
    label: FrameLabel,
    default_K: np.ndarray,
    folder_cache: dict[Path, np.ndarray | None] | None = None,
) -> np.ndarray:
    """K of a frame, first match wins: the label's ``K`` (our generator stores it), the
    folder's ``intrinsics.txt``, then ``default_K`` (the benchmark's camera)."""
    if label.extra.get("K") is not None:
        try:
            return resolve_intrinsics(np.asarray(label.extra["K"], np.float64).reshape(3, 3))
        except ValueError as err:
            path = frame_path(prefix, "label.pkl")
            raise NocsFormatError(f"label pickle {path} has a malformed K: {err}") from err
    folder = Path(prefix).parent
    cache = {} if folder_cache is None else folder_cache
    if folder not in cache:
        cache[folder] = read_folder_intrinsics(folder)
    folder_K = cache[folder]
    if folder_K is not None:
        return folder_K
    if folder not in _DEFAULT_K_WARNED:  # wrong intrinsics would pass silently otherwise
        _DEFAULT_K_WARNED.add(folder)
        log.warning(
            "%s: no K in the labels and no %s; using the default intrinsics fx=%.2f cx=%.2f "
            "(pass the right ones, e.g. --intrinsics real for REAL275)",
            folder, INTRINSICS_FILE, default_K[0, 0], default_K[0, 2],
        )
    return default_K


_DEFAULT_K_WARNED: set[Path] = set()


def instance_extents(
    prefix: str | Path,
    label: FrameLabel,
    i: int,
    model_extents: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """NOCS box extents (3,) of instance ``i``, first match wins: the label's ``nocs_extents``
    (ours), its ``size`` (the SPD test labels keep the model extents there), then
    ``model_extents[model_name]`` (for labels that store only scales)."""
    path = frame_path(prefix, "label.pkl")
    if label.nocs_extents is not None:
        e = label.nocs_extents[i]
    elif label.extra.get("size") is not None:
        try:
            e = np.asarray(label.extra["size"], np.float64).reshape(len(label), 3)[i]
        except ValueError as err:
            raise NocsFormatError(f"label pickle {path} has a malformed 'size': {err}") from err
    else:
        model = label.model_list[i]
        if not model_extents or model not in model_extents:
            raise NocsFormatError(
                f"label pickle {path} has neither nocs_extents nor size, and model {model!r} "
                "has no entry in the model extents; pass them (model name -> NOCS box extents) "
                "for labels that store only scales"
            )
        e = np.asarray(model_extents[model], np.float64).reshape(3)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise NocsFormatError(
            f"{path}: instance {label.instance_ids[i]} has invalid NOCS extents {e}"
        )
    return e


def load_model_extents(path: str | Path) -> dict[str, np.ndarray]:
    """Model name -> NOCS extents (3,), from a JSON object or a pickled dict."""
    path = Path(path)
    if not path.is_file():
        raise NocsFormatError(f"model extents file does not exist: {path}")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            with open(path, "rb") as f:
                raw = pickle.load(f)
        return {str(k): np.asarray(v, np.float64).reshape(3) for k, v in dict(raw).items()}
    except Exception as err:  # noqa: BLE001 - any failure means a bad file
        raise NocsFormatError(f"cannot read model extents from {path}: {err}") from err


# --------------------------------------------------------------------------- mug label frame

MUG_META_FILE = "mug_meta.pkl"  # in obj_models/, as SPD's preprocessing writes it


def symmetric_label_frame(model_points: np.ndarray) -> tuple[np.ndarray, float]:
    """SPD's mug re-label from a model's tight-box NOCS points: ``(shift, scale)``.

    The body's axis is found from the z extent (the plain diameter) and the -x side (the body
    wall opposite the handle): ``shift`` moves it to x = 0, and ``scale`` makes the box that is
    symmetric about it (2 max|x|, 2 max|y|, 2 max|z|) have diagonal 1.
    """
    pts = np.asarray(model_points, dtype=np.float64).reshape(-1, 3)
    shift_x = (pts[:, 2].min() - pts[:, 2].max()) / 2.0 - pts[:, 0].min()
    shift = np.array([shift_x, 0.0, 0.0])
    size = 2.0 * np.abs(pts + shift).max(axis=0)
    return shift, float(1.0 / np.linalg.norm(size))


def label_pose_from_coord_pose(
    s: float, R: np.ndarray, t: np.ndarray, shift: np.ndarray, scale: float
) -> tuple[float, np.ndarray]:
    """Coordinate-map pose ``(s, R, t)`` -> label pose ``(s', t')``; R is the same.

    From ``p_cam = s R p_coord + t`` and ``p_label = scale (p_coord + shift)``:
    ``p_cam = (s / scale) R p_label + (t - s R shift)`` (SPD writes exactly this).
    """
    return s / scale, np.asarray(t, np.float64) - s * np.asarray(R) @ np.asarray(shift)


def coord_pose_from_label_pose(
    s_label: float, R: np.ndarray, t_label: np.ndarray, shift: np.ndarray, scale: float
) -> tuple[float, np.ndarray]:
    """Inverse of :func:`label_pose_from_coord_pose`."""
    s = s_label * scale
    return s, np.asarray(t_label, np.float64) + s * np.asarray(R) @ np.asarray(shift)


def write_mug_meta(path: str | Path, meta: Mapping[str, tuple[np.ndarray, float]]) -> None:
    """SPD's ``mug_meta.pkl``: model name -> ``[shift (3,), scale]``."""
    with open(path, "wb") as f:
        pickle.dump({k: [np.asarray(v[0], np.float64), float(v[1])] for k, v in meta.items()}, f)


def load_mug_meta(path: str | Path) -> dict[str, tuple[np.ndarray, float]]:
    """Read a ``mug_meta.pkl`` (ours or SPD's) into model name -> ``(shift (3,), scale)``."""
    path = Path(path)
    if not path.is_file():
        raise NocsFormatError(f"mug meta file does not exist: {path}")
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
        return {
            str(k): (np.asarray(v[0], np.float64).reshape(3), float(v[1])) for k, v in raw.items()
        }
    except Exception as err:  # noqa: BLE001 - any unpickling or shape problem means a bad file
        raise NocsFormatError(
            f"cannot read mug meta from {path} (expected model name -> [shift (3,), scale]): "
            f"{err}"
        ) from err
