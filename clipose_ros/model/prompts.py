"""Text for the CLIP teacher: pose-aware prompts (pose training) and image captions (pretraining).

Pose-aware prompt, one per instance, fed to the frozen text encoder (one line)::

    a point-cloud model of a mug, rotation Euler angles <-103.73, 58.98, 71.62>,
    translation vector <10.63, 48.78, 41.32>

Conventions (the text encoder can only learn a mapping that is a function of the pose, so the
numbers must be unique per pose and stable):

- Rotation ``R`` is the label rotation of ``p_cam = s R p_nocs + t`` (columns = the object's
  x, y, z axes in the camera optical frame: x right, y down, z forward).
- Euler angles ``<a, b, c>`` in **degrees**, **extrinsic x-y-z** about the fixed camera axes:
  first ``a`` about camera x, then ``b`` about camera y, then ``c`` about camera z, i.e.
  ``R = Rz(c) @ Ry(b) @ Rx(a)`` (SciPy: ``Rotation.from_euler("xyz", [a, b, c], degrees=True)``,
  lower case = extrinsic). Ranges: ``a, c`` in (-180, 180], ``b`` in [-90, 90]. At gimbal lock
  (``|b| = 90``) ``a`` is set to 0 and ``c`` carries the remaining rotation.
- Translation ``<x, y, z>`` is ``t`` in **centimetres**, camera optical frame.
- Two decimals, no negative zero.
- Symmetric instances (bottle, bowl, can, and a mug whose handle is hidden): the rotation about
  the object's y axis is not defined, so before the angles are computed the free angle is fixed
  by a rule that depends on the y axis alone: the object's x axis is taken as the camera's x
  axis projected onto the plane normal to the object's y axis (the camera's z axis when y is
  within 0.06 degrees of camera x). Two poses that differ only by a turn about y thus get the
  same text, and the prompt says so: ``a point-cloud model of a bottle, symmetric about its y
  axis, rotation Euler angles <...>, translation vector <...>``.

Image captions for ``clipose-pretrain-clip`` state category, colour and a coarse pose that a
64-pixel crop can show: the viewing elevation relative to the object's up axis and, for objects
with a distinguishing part (mug handle, camera lens, laptop front edge), where that part points
in the image. See :func:`caption`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipose_ros.categories import CATEGORIES, SYMMETRIC_CATEGORIES, class_name
from clipose_ros.geometry import rotation_from_y

POSE_PROMPT_TEMPLATE = (
    "a point-cloud model of a {category}{symmetry}, rotation Euler angles <{a}, {b}, {c}>, "
    "translation vector <{x}, {y}, {z}>"
)
SYMMETRY_PHRASE = ", symmetric about its y axis"
_GIMBAL_EPS = 1e-6  # |cos b| below which the x-y-z decomposition is degenerate
_PARALLEL_EPS = 1e-3  # |projected camera x| below which camera z is used instead (~0.06 deg)

# Caption vocabulary (pretraining). Part at the object's +x axis, per category (OBJECT_AXES).
PART_AT_PLUS_X: dict[str, str] = {"mug": "handle", "camera": "lens", "laptop": "front edge"}
ELEVATIONS: tuple[str, ...] = ("from below", "from the side", "from above", "from the top")
DIRECTIONS: tuple[str, ...] = (
    "facing the camera",
    "pointing right",
    "facing away",
    "pointing left",
)
COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink",
    "white", "grey", "black",
)  # fmt: skip
# Caption openings: training draws one at random, zero-shot averages over all of them.
CAPTION_PREFIXES: tuple[str, ...] = ("a photo of a", "a", "a rendering of a")
ZERO_SHOT_TEMPLATES: tuple[str, ...] = tuple(f"{p} {{}}" for p in CAPTION_PREFIXES)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(b: float) -> np.ndarray:
    c, s = math.cos(b), math.sin(b)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(c_: float) -> np.ndarray:
    c, s = math.cos(c_), math.sin(c_)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_euler_xyz(angles_deg: Sequence[float]) -> np.ndarray:
    """``Rz(c) @ Ry(b) @ Rx(a)`` for ``(a, b, c)`` in degrees (the prompts' convention)."""
    a, b, c = (math.radians(float(v)) for v in angles_deg)
    return _rot_z(c) @ _rot_y(b) @ _rot_x(a)


def euler_xyz_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_from_euler_xyz`: ``(a, b, c)`` degrees (see module docstring)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise ValueError(f"rotation must be a finite 3x3 matrix, got shape {R.shape}")
    sb = float(np.clip(-R[2, 0], -1.0, 1.0))
    b = math.asin(sb)
    if math.hypot(R[2, 1], R[2, 2]) > _GIMBAL_EPS:
        a = math.atan2(R[2, 1], R[2, 2])
        c = math.atan2(R[1, 0], R[0, 0])
    else:  # b = +-90 deg: only c - a (b > 0) or c + a (b < 0) is defined; take a = 0
        a = 0.0
        c = math.atan2(-R[0, 1], R[1, 1])
    return math.degrees(a), math.degrees(b), math.degrees(c)


def canonical_symmetric_rotation(R: np.ndarray) -> np.ndarray:
    """The representative of ``{R @ Ry(theta)}`` used for y-symmetric objects (module docstring).

    Keeps the y axis (second column) and turns x towards the camera's x axis.
    """
    return rotation_from_y(np.asarray(R, dtype=np.float64)[:, 1], eps=_PARALLEL_EPS)


def _fmt(v: float) -> str:
    text = f"{v:.2f}"
    return "0.00" if text == "-0.00" else text


def pose_prompt(
    category: str | int,
    R: np.ndarray,
    t: np.ndarray,
    symmetric: bool | None = None,
) -> str:
    """The pose-aware prompt of one instance (``t`` in metres; conventions in the module doc).

    ``category`` is a name or a class id 1..6; ``symmetric`` defaults to the category's rule
    (bottle, bowl, can); pass the sample's ``symmetric`` flag to also treat a mug whose
    handle is hidden as symmetric.
    """
    name = class_name(category) if not isinstance(category, str) else category
    if name not in CATEGORIES:
        raise ValueError(f"unknown category {name!r}; expected one of {CATEGORIES}")
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f"translation must be 3 finite numbers (metres), got {t}")
    sym = name in SYMMETRIC_CATEGORIES if symmetric is None else bool(symmetric)
    R = np.asarray(R, dtype=np.float64)
    if sym:
        R = canonical_symmetric_rotation(R)
    a, b, c = euler_xyz_from_rotation(R)
    x, y, z = (100.0 * float(v) for v in t)
    return POSE_PROMPT_TEMPLATE.format(
        category=name,
        symmetry=SYMMETRY_PHRASE if sym else "",
        a=_fmt(a),
        b=_fmt(b),
        c=_fmt(c),
        x=_fmt(x),
        y=_fmt(y),
        z=_fmt(z),
    )


def pose_prompts(
    class_ids: Sequence[int] | np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    symmetric: Sequence[bool] | np.ndarray | None = None,
) -> list[str]:
    """:func:`pose_prompt` for a batch (arrays or CPU tensors: (B,), (B, 3, 3), (B, 3))."""
    ids = np.asarray(class_ids).reshape(-1)
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    t = np.asarray(t, dtype=np.float64).reshape(-1, 3)
    if not len(ids) == len(R) == len(t):
        raise ValueError(f"batch sizes differ: {len(ids)} ids, {len(R)} rotations, {len(t)} t")
    sym = [None] * len(ids) if symmetric is None else [bool(s) for s in np.asarray(symmetric)]
    return [pose_prompt(int(c), r, v, s) for c, r, v, s in zip(ids, R, t, sym, strict=True)]


# ---------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class CoarsePose:
    """What a caption says about the pose: elevation bin and, if any, the part's direction."""

    elevation: str
    part_direction: str | None


def coarse_pose(
    category: str, R: np.ndarray, t: np.ndarray, handle_visible: bool = True
) -> CoarsePose:
    """Elevation of the camera over the object's equator (bins at -25, 25, 60 degrees) and the
    image direction of the +x part (quadrants around the view ray); the direction is None for
    symmetric categories and for a mug whose handle is hidden."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    view = t / max(float(np.linalg.norm(t)), 1e-9)  # camera -> object
    elev = math.degrees(math.asin(float(np.clip(R[:, 1] @ -view, -1.0, 1.0))))
    elevation = ELEVATIONS[int(np.searchsorted([-25.0, 25.0, 60.0], elev))]
    part = PART_AT_PLUS_X.get(category)
    if (
        part is None
        or category in SYMMETRIC_CATEGORIES
        or (category == "mug" and not handle_visible)
    ):
        return CoarsePose(elevation, None)
    x = R[:, 0]
    right = np.array([1.0, 0.0, 0.0]) - view[0] * view
    right /= max(float(np.linalg.norm(right)), 1e-9)
    phi = math.degrees(math.atan2(float(x @ right), float(x @ -view)))  # 0 = towards camera
    quadrant = int(((phi + 45.0) % 360.0) // 90.0)  # 0 facing, 1 right, 2 away, 3 left
    return CoarsePose(elevation, DIRECTIONS[quadrant])


def caption(
    category: str,
    colour: str | None,
    pose: CoarsePose | None,
    handle_visible: bool = True,
    prefix: str = CAPTION_PREFIXES[0],
) -> str:
    """``a photo of a red mug, seen from above, handle pointing left`` (parts may be omitted:
    ``colour=None`` or ``pose=None`` drop them, which the pretraining uses as caption dropout
    so that the short zero-shot prompts are in its distribution)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    text = f"{prefix} {colour + ' ' if colour else ''}{category}"
    if pose is not None:
        text += f", seen {pose.elevation}"
        part = PART_AT_PLUS_X.get(category)
        if pose.part_direction is not None and part is not None:
            text += f", {part} {pose.part_direction}"
        elif category == "mug" and not handle_visible:
            text += ", handle hidden"
    return text


def zero_shot_prompts(category: str) -> list[str]:
    """The prompts whose mean text feature stands for ``category`` in zero-shot evaluation."""
    return [tpl.format(category) for tpl in ZERO_SHOT_TEMPLATES]
