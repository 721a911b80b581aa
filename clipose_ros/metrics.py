"""NOCS evaluation protocol: 3D IoU, rotation / translation error, matching and AP.

Why this module exists: published category-level pose numbers (NOCS, SPD, GPV-Pose, HS-Pose, ...)
all come from one family of evaluation scripts. To compare with them we reproduce that protocol,
including a known quirk of its 3D IoU, and we also offer the corrected IoU. Every number this
module hands out is labelled with the IoU mode that produced it (see ``IOU_MODES``).

Result files follow the NOCS convention (one dict / pickle per frame), so results written here can
be scored by any NOCS-style evaluation script and vice versa:

==========================  =========  =====================================================
key                         shape      meaning
==========================  =========  =====================================================
``gt_class_ids``            (n,)       NOCS class ids 1..6
``gt_bboxes``               (n, 4)     2D boxes (y1, x1, y2, x2), not used by the metrics
``gt_RTs``                  (n, 4, 4)  ``[[s R, t], [0, 0, 0, 1]]``, metres
``gt_scales``               (n, 3)     NOCS box extents (tight box, unit diagonal)
``gt_handle_visibility``    (n,)       0 = mug handle hidden (mug treated as symmetric)
``pred_class_ids``          (m,)
``pred_bboxes``             (m, 4)
``pred_scores``             (m,)
``pred_RTs``                (m, 4, 4)
``pred_scales``             (m, 3)
==========================  =========  =====================================================

The 3D box of an instance is the box with extents ``scales`` (NOCS units) centred at the origin,
posed by its RT (which carries the scale ``s``): metric size = ``s * scales``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .categories import CATEGORIES, is_symmetric

# ------------------------------------------------------------------------------------------------
# Protocol constants (grids as in the common NOCS / SPD evaluation code)
# ------------------------------------------------------------------------------------------------

IOU_MODES: tuple[str, ...] = ("nocs", "exact")  # reported by default, as published tables are
# On request (clipose-eval --oriented-iou): the true volume overlap of the two posed boxes,
# turned as they are. Slower (a convex hull per pair), so not in every report.
OPTIONAL_IOU_MODES: tuple[str, ...] = ("oriented",)
KNOWN_IOU_MODES: tuple[str, ...] = IOU_MODES + OPTIONAL_IOU_MODES
IOU_MODE_DESCRIPTIONS: dict[str, str] = {
    "nocs": (
        "original NOCS 3D IoU: per-corner max/min over (x, y, z) of the 3x8 corner array "
        "(np.amax/amin(axis=0)), 8-factor 'volumes'; lenient, dominated by depth"
    ),
    "exact": "IoU of the camera-frame axis-aligned bounds of the two posed boxes (per-axis fix)",
    "oriented": "IoU of the volumes of the two posed boxes as oriented (true box overlap)",
}
IOU_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)
ROTATION_THRESHOLDS_DEG: np.ndarray = np.arange(0.0, 61.0, 1.0)
TRANSLATION_THRESHOLDS_CM: np.ndarray = np.arange(0, 21) * 0.5
IOU_POSE_GATE: float = 0.1  # pose APs only see pairs matched at this IoU threshold
SYMMETRY_STEPS: int = 20  # rotations of the prediction about its y axis (18 degree steps)

METRIC_KEYS: tuple[str, ...] = (
    "IoU25",
    "IoU50",
    "IoU75",
    "5deg2cm",
    "5deg5cm",
    "10deg2cm",
    "10deg5cm",
)
RECALL_KEY = "recall_IoU10"
_METRIC_LABELS = {
    "IoU25": "IoU25",
    "IoU50": "IoU50",
    "IoU75": "IoU75",
    "5deg2cm": "5°2cm",
    "5deg5cm": "5°5cm",
    "10deg2cm": "10°2cm",
    "10deg5cm": "10°5cm",
    RECALL_KEY: "Rec@0.1",
}
# Indices into the grids (looked up once, so a grid change cannot silently shift a metric).
_IOU_IDX = {"IoU25": 25, "IoU50": 50, "IoU75": 75}
_GATE_IDX = 10
_POSE_IDX = {"5deg2cm": (5, 4), "5deg5cm": (5, 10), "10deg2cm": (10, 4), "10deg5cm": (10, 10)}
assert np.isclose(IOU_THRESHOLDS[_GATE_IDX], IOU_POSE_GATE)
assert all(np.isclose(IOU_THRESHOLDS[i], int(k[3:]) / 100) for k, i in _IOU_IDX.items())

# Pose grids used internally: the last entry is "any" (NOCS uses 360 deg / 100 cm for this).
_DEG_EXT = np.append(ROTATION_THRESHOLDS_DEG, np.inf)
_CM_EXT = np.append(TRANSLATION_THRESHOLDS_CM, np.inf)

GT_KEYS = ("gt_class_ids", "gt_bboxes", "gt_RTs", "gt_scales", "gt_handle_visibility")
PRED_KEYS = ("pred_class_ids", "pred_bboxes", "pred_scores", "pred_RTs", "pred_scales")
RESULT_KEYS = GT_KEYS + PRED_KEYS

# Corner order of the NOCS ``get_3d_bbox`` (rows of its 8x3 array before the transpose). The
# order matters for the ``nocs`` IoU, which compares the two boxes corner index by corner index.
_CORNER_SIGNS = np.array(
    [
        [+1, +1, +1],
        [+1, +1, -1],
        [-1, +1, +1],
        [-1, +1, -1],
        [+1, -1, +1],
        [+1, -1, -1],
        [-1, -1, +1],
        [-1, -1, -1],
    ],
    dtype=np.float64,
)


def _y_rotations(n: int = SYMMETRY_STEPS) -> np.ndarray:
    """(n, 3, 3) rotations about y by 2*pi*k/n, in the NOCS code's form (k = 0 is identity)."""
    th = 2.0 * np.pi * np.arange(n) / float(n)
    c, s = np.cos(th), np.sin(th)
    z, o = np.zeros(n), np.ones(n)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], 1)


_RY = _y_rotations()

# ------------------------------------------------------------------------------------------------
# Result dicts: build, validate, save, load
# ------------------------------------------------------------------------------------------------


def compose_rt(R: np.ndarray, t: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    """NOCS-style RT ``[[s R, t], [0, 0, 0, 1]]`` for one (3,3) or many (n,3,3) poses."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    RT = np.zeros(R.shape[:-2] + (4, 4))
    RT[..., :3, :3] = s[..., None, None] * R
    RT[..., :3, 3] = t
    RT[..., 3, 3] = 1.0
    return RT


def _as_array(d: Mapping[str, Any], key: str, shape: tuple[int | None, ...], dtype) -> np.ndarray:
    """Fetch ``d[key]`` as an array of ``shape`` (None = free); ValueError naming the key."""
    if key not in d:
        raise ValueError(f"result is missing key {key!r}")
    try:
        a = np.asarray(d[key], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key}: cannot convert to {np.dtype(dtype).name} array ({exc})") from exc
    if a.size == 0 and shape[0] == 0:  # empty lists / (0,) arrays of NOCS pickles
        return a.reshape(tuple(0 if n is None else n for n in shape))
    ok = a.ndim == len(shape) and all(
        n is None or n == m for n, m in zip(shape, a.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if n is None else str(n) for n in shape) + ")"
        raise ValueError(f"{key}: expected shape {want}, got {a.shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{key}: contains non-finite values")
    return a


def _check_rts(key: str, RT: np.ndarray) -> None:
    """Every RT must be 4x4, end in [0,0,0,1], and hold a proper scaled rotation."""
    last = RT[:, 3, :]
    bad = np.nonzero(np.any(np.abs(last - np.array([0.0, 0.0, 0.0, 1.0])) > 1e-6, axis=1))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{key}[{i}]: last row is {last[i].tolist()}, expected [0, 0, 0, 1]")
    det = np.linalg.det(RT[:, :3, :3]) if len(RT) else np.zeros(0)
    bad = np.nonzero(det <= 0)[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{key}[{i}]: rotation part has determinant {det[i]:.3g} <= 0")


def validate_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """Check one NOCS-convention frame dict and return a normalised copy (numpy, float64).

    Raises ValueError naming the offending key, so a bad result file is caught at load time and
    not as a silent wrong number. Extra keys (image path, masks, ...) are kept untouched.
    """
    if not isinstance(result, Mapping):
        raise ValueError(f"result must be a dict, got {type(result).__name__}")
    out = dict(result)
    for prefix in ("gt", "pred"):
        ids = _as_array(result, f"{prefix}_class_ids", (None,), np.int64)
        n = len(ids)
        bad = (ids < 1) | (ids > len(CATEGORIES))
        if np.any(bad):
            raise ValueError(
                f"{prefix}_class_ids: {int(ids[bad][0])} is not a NOCS class id "
                f"(1..{len(CATEGORIES)})"
            )
        out[f"{prefix}_class_ids"] = ids
        out[f"{prefix}_bboxes"] = _as_array(result, f"{prefix}_bboxes", (n, 4), np.float64)
        RT = _as_array(result, f"{prefix}_RTs", (n, 4, 4), np.float64)
        _check_rts(f"{prefix}_RTs", RT)
        out[f"{prefix}_RTs"] = RT
        sc = _as_array(result, f"{prefix}_scales", (n, 3), np.float64)
        if np.any(sc <= 0):
            raise ValueError(f"{prefix}_scales: box extents must be > 0")
        out[f"{prefix}_scales"] = sc
        if prefix == "gt":
            hv = _as_array(result, "gt_handle_visibility", (n,), np.float64)
            out["gt_handle_visibility"] = hv.astype(np.int64)
        else:
            out["pred_scores"] = _as_array(result, "pred_scores", (n,), np.float64)
    return out


def _check_pose_inputs(prefix: str, n: int, R, t, s, extents) -> tuple[np.ndarray, ...]:
    R = _as_array({f"{prefix}_R": R}, f"{prefix}_R", (n, 3, 3), np.float64)
    t = _as_array({f"{prefix}_t": t}, f"{prefix}_t", (n, 3), np.float64)
    s = _as_array({f"{prefix}_s": s}, f"{prefix}_s", (n,), np.float64)
    e = _as_array({f"{prefix}_extents": extents}, f"{prefix}_extents", (n, 3), np.float64)
    if n:
        err = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2))
        bad = np.nonzero((err > 1e-4) | (np.linalg.det(R) < 0))[0]
        if bad.size:
            raise ValueError(f"{prefix}_R[{int(bad[0])}]: not a proper rotation matrix")
    if np.any(s <= 0):
        raise ValueError(f"{prefix}_s: scale factors must be > 0")
    return R, t, s, e


def make_result(
    gt_class_ids: Sequence[int] | np.ndarray,
    gt_R: np.ndarray,
    gt_t: np.ndarray,
    gt_s: np.ndarray,
    gt_extents: np.ndarray,
    pred_class_ids: Sequence[int] | np.ndarray,
    pred_scores: Sequence[float] | np.ndarray,
    pred_R: np.ndarray,
    pred_t: np.ndarray,
    pred_s: np.ndarray,
    pred_extents: np.ndarray,
    *,
    gt_handle_visibility: Sequence[int] | np.ndarray | None = None,
    gt_bboxes: np.ndarray | None = None,
    pred_bboxes: np.ndarray | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a validated NOCS-convention frame dict from our pose form (R, t, s, NOCS extents).

    ``p_cam = s R p_nocs + t``; the RT stored is ``[[s R, t], [0, 0, 0, 1]]`` and the scales are
    the NOCS extents (metric size / s), exactly what NOCS-style scripts expect. Handle visibility
    defaults to 1 (visible), 2D boxes to zeros. ``extra`` keys (e.g. ``image_path``) are kept.
    """
    gt_ids = np.asarray(gt_class_ids, dtype=np.int64).reshape(-1)
    pr_ids = np.asarray(pred_class_ids, dtype=np.int64).reshape(-1)
    n, m = len(gt_ids), len(pr_ids)
    gR, gt_tt, gs, ge = _check_pose_inputs("gt", n, gt_R, gt_t, gt_s, gt_extents)
    pR, pt, ps, pe = _check_pose_inputs("pred", m, pred_R, pred_t, pred_s, pred_extents)
    result = dict(extra)
    result.update(
        gt_class_ids=gt_ids,
        gt_bboxes=np.zeros((n, 4), np.int32) if gt_bboxes is None else gt_bboxes,
        gt_RTs=compose_rt(gR, gt_tt, gs),
        gt_scales=ge,
        gt_handle_visibility=(
            np.ones(n, np.int64) if gt_handle_visibility is None else gt_handle_visibility
        ),
        pred_class_ids=pr_ids,
        pred_bboxes=np.zeros((m, 4), np.int32) if pred_bboxes is None else pred_bboxes,
        pred_scores=pred_scores,
        pred_RTs=compose_rt(pR, pt, ps),
        pred_scales=pe,
    )
    return validate_result(result)


def save_result(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write one frame dict as a pickle (validated first, so no bad file reaches disk)."""
    data = validate_result(result)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read one frame pickle (ours or any NOCS-style one) and validate it.

    Pickles can run code on load: only read result files you trust.
    """
    with open(path, "rb") as f:
        data = pickle.load(f)
    return validate_result(data)


# ------------------------------------------------------------------------------------------------
# Geometry: corners, 3D IoU, pose errors
# ------------------------------------------------------------------------------------------------


def box_corners(RT: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Corners (..., 8, 3) of the box with extents ``scales`` posed by ``RT`` (NOCS order)."""
    RT = np.asarray(RT, dtype=np.float64)
    local = _CORNER_SIGNS * (np.asarray(scales, dtype=np.float64)[..., None, :] / 2.0)
    return local @ np.swapaxes(RT[..., :3, :3], -1, -2) + RT[..., None, :3, 3]


# The 12 edges of a box as pairs of corner indices (corners differing in one sign).
_BOX_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                       if np.sum(_CORNER_SIGNS[i] != _CORNER_SIGNS[j]) == 1])


def _inside(points: np.ndarray, centre: np.ndarray, axes: np.ndarray, half: np.ndarray,
            tol: float) -> np.ndarray:
    """Which of ``points`` (n, 3) lie in the box (``axes`` as unit columns)."""
    return np.all(np.abs((points - centre) @ axes) <= half + tol, axis=1)


def _edge_face_points(corners: np.ndarray, centre: np.ndarray, axes: np.ndarray,
                      half: np.ndarray) -> np.ndarray:
    """Where the edges of the box with ``corners`` cross the face planes of the other box."""
    p0, p1 = corners[_BOX_EDGES[:, 0]], corners[_BOX_EDGES[:, 1]]
    a0, a1 = (p0 - centre) @ axes, (p1 - centre) @ axes  # (12, 3) in the other box's frame
    out = []
    for sign in (-1.0, 1.0):
        plane = sign * half  # (3,): one face per axis
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (plane - a0) / (a1 - a0)  # (12, 3)
        ok = np.isfinite(t) & (t >= 0.0) & (t <= 1.0)
        e, k = np.nonzero(ok)
        out.append(p0[e] + t[e, k, None] * (p1[e] - p0[e]))
    return np.concatenate(out)


def oriented_box_overlap(centre1: np.ndarray, axes1: np.ndarray, half1: np.ndarray,
                         centre2: np.ndarray, axes2: np.ndarray, half2: np.ndarray) -> float:
    """Volume shared by two oriented boxes (centre, unit axes as columns, half extents).

    The overlap is convex; its vertices are the corners of each box inside the other and the
    points where one box's edges cross the other's faces. Their convex hull's volume is the
    overlap (zero when fewer than four points or all in a plane).
    """
    if np.linalg.norm(centre1 - centre2) > np.linalg.norm(half1) + np.linalg.norm(half2):
        return 0.0
    tol = 1e-9 * max(float(np.max(half1)), float(np.max(half2)), 1e-12)
    box1, box2 = (centre1, axes1, half1), (centre2, axes2, half2)
    c1 = centre1 + (_CORNER_SIGNS * half1) @ axes1.T
    c2 = centre2 + (_CORNER_SIGNS * half2) @ axes2.T
    candidates = np.concatenate(
        [c1, c2, _edge_face_points(c1, *box2), _edge_face_points(c2, *box1)])
    points = candidates[_inside(candidates, *box1, tol) & _inside(candidates, *box2, tol)]
    if len(points) < 4:
        return 0.0
    from scipy.spatial import ConvexHull, QhullError

    try:
        return float(ConvexHull(points).volume)
    except QhullError:  # flat: the boxes only touch
        return 0.0


def _box_frame(RT: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, unit axes (columns) and half extents of the box ``scales`` posed by ``RT``."""
    M = RT[:3, :3]
    norms = np.linalg.norm(M, axis=0)
    return RT[:3, 3], M / norms, np.asarray(scales, np.float64) * norms / 2.0


def _oriented_iou_matrix(pred_RTs: np.ndarray, pred_scales: np.ndarray, gt_RTs: np.ndarray,
                         gt_scales: np.ndarray, sym: np.ndarray,
                         pairs: np.ndarray | None) -> np.ndarray:
    """(P, G) true box IoU; for a symmetric ground truth the best over the prediction turned
    about its own y axis in ``SYMMETRY_STEPS`` steps, as the other modes do. Only the
    ``pairs`` (P, G) asked for are computed (the rest stay 0): each takes a hull or twenty."""
    P, G = len(pred_RTs), len(gt_RTs)
    out = np.zeros((P, G))
    gts = [_box_frame(gt_RTs[g], gt_scales[g]) for g in range(G)]
    for p in range(P):
        centre, axes, half = _box_frame(pred_RTs[p], pred_scales[p])
        volume = 8.0 * np.prod(half)
        for g, (gc, ga, gh) in enumerate(gts):
            if pairs is not None and not pairs[p, g]:
                continue
            union_base = volume + 8.0 * np.prod(gh)
            turns = _RY if sym[g] else _RY[:1]
            best = 0.0
            for Ry in turns:
                inter = oriented_box_overlap(centre, axes @ Ry, half, gc, ga, gh)
                best = max(best, inter / (union_base - inter) if union_base > inter else 0.0)
            out[p, g] = best
    return out


def _bounds(corners: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper 'bounds' of posed corners (..., 8, 3) as the chosen IoU mode defines them."""
    if mode == "nocs":
        # NOCS: amin/amax(axis=0) of the 3x8 array -> per corner, over its x, y, z: (..., 8)
        return corners.min(axis=-1), corners.max(axis=-1)
    if mode == "exact":
        # per axis, over the 8 corners: (..., 3)
        return corners.min(axis=-2), corners.max(axis=-2)
    raise ValueError(f"unknown IoU mode {mode!r}; expected one of {KNOWN_IOU_MODES}")


def _iou_from_bounds(lo1, hi1, lo2, hi2) -> np.ndarray:
    """Overlap / union of two 'boxes' given by broadcastable bounds, product over the last axis."""
    inter = np.prod(np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0.0, None), axis=-1)
    union = np.prod(hi1 - lo1, axis=-1) + np.prod(hi2 - lo2, axis=-1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_matrix(
    pred_RTs: np.ndarray,
    pred_scales: np.ndarray,
    gt_RTs: np.ndarray,
    gt_scales: np.ndarray,
    gt_symmetric: np.ndarray | Sequence[bool],
    mode: str,
    pairs: np.ndarray | None = None,
) -> np.ndarray:
    """3D IoU (P, G) of every prediction with every ground truth under ``mode``.

    For a symmetric ground truth the IoU is the best over ``SYMMETRY_STEPS`` rotations of the
    *prediction* about its own y axis (RT_pred @ Ry), as in the NOCS code. ``pairs`` (P, G
    bool) may name the pairs that are needed (same class): ``oriented`` leaves the others 0,
    the cheap modes compute all.
    """
    pred_RTs = np.asarray(pred_RTs, dtype=np.float64).reshape(-1, 4, 4)
    gt_RTs = np.asarray(gt_RTs, dtype=np.float64).reshape(-1, 4, 4)
    sym = np.asarray(gt_symmetric, dtype=bool).reshape(-1)
    P, G = len(pred_RTs), len(gt_RTs)
    if P == 0 or G == 0:
        return np.zeros((P, G))
    if mode == "oriented":
        return _oriented_iou_matrix(pred_RTs, np.asarray(pred_scales, np.float64).reshape(P, 3),
                                    gt_RTs, np.asarray(gt_scales, np.float64).reshape(G, 3), sym,
                                    pairs)
    local = _CORNER_SIGNS * (np.asarray(pred_scales, dtype=np.float64).reshape(P, 1, 3) / 2.0)
    K = SYMMETRY_STEPS if sym.any() else 1
    # local corners rotated about y (object frame), then posed: (P, K, 8, 3)
    rotated = np.einsum("pcj,kij->pkci", local, _RY[:K])
    world = np.einsum("pij,pkcj->pkci", pred_RTs[:, :3, :3], rotated)
    world += pred_RTs[:, None, None, :3, 3]
    lo_p, hi_p = _bounds(world, mode)  # (P, K, d)
    lo_g, hi_g = _bounds(box_corners(gt_RTs, np.asarray(gt_scales).reshape(-1, 3)), mode)
    iou = _iou_from_bounds(
        lo_p[:, :, None], hi_p[:, :, None], lo_g[None, None], hi_g[None, None]
    )  # (P, K, G)
    return np.where(sym[None, :], iou.max(axis=1), iou[:, 0])


def iou_3d(
    pred_RT: np.ndarray,
    gt_RT: np.ndarray,
    pred_scales: np.ndarray,
    gt_scales: np.ndarray,
    mode: str = "exact",
    symmetric: bool = False,
) -> float:
    """3D IoU of two posed boxes (the first, the prediction, is the one rotated if symmetric).

    ``mode="exact"``: the axis-aligned overlap of the two posed boxes' camera-frame bounds, bounds
    taken per axis (min/max over the 8 corners): the later papers' one-axis fix. It equals the
    true box IoU when both boxes are axis-aligned in the camera frame, and is the IoU of their
    axis-aligned hulls otherwise.

    ``mode="nocs"``: the original NOCS ``asymmetric_3d_iou`` arithmetic. Its corner array is 3x8
    (rows x, y, z) and it takes ``np.amax/np.amin(corners, axis=0)``, i.e. for each of the 8
    corners the max and min over that corner's own (x, y, z): two 8-vectors ``lo``, ``hi`` per
    box. Overlap = prod over the 8 entries of ``min(hi1, hi2) - max(lo1, lo2)`` (0 if any entry
    is negative), volume = prod over the 8 entries of ``hi - lo``, IoU = overlap /
    (vol1 + vol2 - overlap). Corners are paired by index (NOCS corner order). In a camera frame
    with the object in front, ``hi`` is mostly the corner's depth and ``lo`` its smaller image
    coordinate, so the number is not a volume ratio: lateral errors are forgiven, depth errors
    enter through eight factors.
    """
    return float(
        iou_matrix(
            np.asarray(pred_RT)[None],
            np.asarray(pred_scales)[None],
            np.asarray(gt_RT)[None],
            np.asarray(gt_scales)[None],
            [symmetric],
            mode,
        )[0, 0]
    )


def _unscaled_rotations(RTs: np.ndarray) -> np.ndarray:
    M = RTs[:, :3, :3]
    return M / np.cbrt(np.linalg.det(M))[:, None, None]


def pose_error_matrix(
    pred_RTs: np.ndarray, gt_RTs: np.ndarray, gt_symmetric: np.ndarray | Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation error (deg) and translation error (cm), each (P, G), for all pairs.

    Scale is removed by dividing the 3x3 by cbrt(det). For a symmetric ground truth the rotation
    error is the angle between the two y axes (rotation about y is unobservable).
    """
    pred_RTs = np.asarray(pred_RTs, dtype=np.float64).reshape(-1, 4, 4)
    gt_RTs = np.asarray(gt_RTs, dtype=np.float64).reshape(-1, 4, 4)
    sym = np.asarray(gt_symmetric, dtype=bool).reshape(-1)
    if len(pred_RTs) == 0 or len(gt_RTs) == 0:
        z = np.zeros((len(pred_RTs), len(gt_RTs)))
        return z, z.copy()
    Rp, Rg = _unscaled_rotations(pred_RTs), _unscaled_rotations(gt_RTs)
    cos_full = (np.einsum("pij,gij->pg", Rp, Rg) - 1.0) / 2.0  # trace(Rp Rg^T)
    yp, yg = Rp[:, :, 1], Rg[:, :, 1]
    cos_y = (yp @ yg.T) / (np.linalg.norm(yp, axis=1)[:, None] * np.linalg.norm(yg, axis=1))
    cos = np.where(sym[None, :], cos_y, cos_full)
    deg = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    cm = 100.0 * np.linalg.norm(pred_RTs[:, None, :3, 3] - gt_RTs[None, :, :3, 3], axis=-1)
    return deg, cm


def rotation_error_deg(RT_1: np.ndarray, RT_2: np.ndarray, symmetric: bool = False) -> float:
    """Rotation error in degrees between two (scaled) RTs; y-axis angle if ``symmetric``."""
    deg, _ = pose_error_matrix(np.asarray(RT_1)[None], np.asarray(RT_2)[None], [symmetric])
    return float(deg[0, 0])


def translation_error_cm(RT_1: np.ndarray, RT_2: np.ndarray) -> float:
    """Distance of the two centres in cm (RT translations are metres)."""
    return float(100.0 * np.linalg.norm(np.asarray(RT_1)[:3, 3] - np.asarray(RT_2)[:3, 3]))


# ------------------------------------------------------------------------------------------------
# Matching and AP
# ------------------------------------------------------------------------------------------------


def _greedy_match(pref: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching at many thresholds at once.

    Predictions (rows of ``pref``) are taken in order (already sorted by score); each takes the
    still-free ground truth with the lowest ``pref`` among the pairs admissible at a threshold
    (``ok[..., i, j]``). Returns the matched gt index per prediction, (..., P), -1 if none.
    """
    *lead, P, G = ok.shape
    taken = np.zeros((*lead, G), dtype=bool)
    match = np.full((*lead, P), -1, dtype=np.int64)
    if G == 0:
        return match
    cols = np.arange(G)
    for i in range(P):
        avail = ok[..., i, :] & ~taken
        has = avail.any(axis=-1)
        j = np.where(avail, pref[i], np.inf).argmin(axis=-1)
        match[..., i] = np.where(has, j, -1)
        taken |= has[..., None] & (cols == j[..., None])
    return match


def _voc_ap(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> np.ndarray:
    """VOC all-point AP (fraction) of the last axis of ``tp`` (..., N) ranked by score.

    Precision envelope, then area under the recall/precision steps, as the NOCS code does
    (recall padded with 0 and 1, precision with 0 and 0). One deviation: predictions with equal
    scores form one operating point (precision and recall taken at the end of the tied block),
    so the AP does not depend on the order of the frames when scores tie (e.g. ground-truth
    masks, all scored 1). With distinct scores it equals the NOCS value.
    """
    order = np.argsort(-scores, kind="stable")
    tp = tp[..., order].astype(np.float64)
    n = tp.shape[-1]
    ranked = scores[order]
    block_end = np.append(ranked[1:] != ranked[:-1], True) if n else np.zeros(0, dtype=bool)
    ctp = np.cumsum(tp, axis=-1)[..., block_end]
    prec = ctp / np.arange(1, n + 1)[block_end]
    rec = ctp / max(n_gt, 1)
    lead = tp.shape[:-1]
    zeros, ones = np.zeros(lead + (1,)), np.ones(lead + (1,))
    prec = np.concatenate([zeros, prec, zeros], axis=-1)
    rec = np.concatenate([zeros, rec, ones], axis=-1)
    env = np.flip(np.maximum.accumulate(np.flip(prec, -1), axis=-1), -1)
    return np.sum((rec[..., 1:] - rec[..., :-1]) * env[..., 1:], axis=-1)


class _ClassAccumulator:
    """Per-class, per-mode match flags pooled over frames."""

    def __init__(self) -> None:
        self.n_gt = 0
        self.n_gt_gate = 0  # gts matched at the IoU gate (pose AP denominator)
        self.iou_tp: list[np.ndarray] = []  # (T, p)
        self.scores: list[np.ndarray] = []
        self.pose_tp: list[np.ndarray] = []  # (D+1, S+1, p_gated)
        self.pose_scores: list[np.ndarray] = []

    def summary(self) -> dict[str, Any]:
        T, D, S = len(IOU_THRESHOLDS), len(_DEG_EXT), len(_CM_EXT)
        num_pred = int(sum(len(s) for s in self.scores))
        out: dict[str, Any] = {"num_gt": self.n_gt, "num_pred": num_pred}
        if self.n_gt == 0:  # missing: no ground truth, AP undefined
            out.update({k: None for k in METRIC_KEYS}, **{RECALL_KEY: None, "curves": None})
            return out
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        tp = np.concatenate(self.iou_tp, axis=-1) if self.iou_tp else np.zeros((T, 0), bool)
        iou_ap = 100.0 * _voc_ap(tp, scores, self.n_gt)
        pscores = np.concatenate(self.pose_scores) if self.pose_scores else np.zeros(0)
        ptp = np.concatenate(self.pose_tp, axis=-1) if self.pose_tp else np.zeros((D, S, 0), bool)
        # No gt detected at the gate: nothing can be scored for pose; report 0, not undefined.
        pose_ap = (
            100.0 * _voc_ap(ptp, pscores, self.n_gt_gate) if self.n_gt_gate else np.zeros((D, S))
        )
        for k, i in _IOU_IDX.items():
            out[k] = float(iou_ap[i])
        for k, (d, s) in _POSE_IDX.items():
            out[k] = float(pose_ap[d, s])
        out[RECALL_KEY] = 100.0 * self.n_gt_gate / self.n_gt
        out["curves"] = {
            "ap_vs_iou": iou_ap.tolist(),
            "ap_vs_rotation_deg": pose_ap[:-1, -1].tolist(),  # any translation
            "ap_vs_translation_cm": pose_ap[-1, :-1].tolist(),  # any rotation
        }
        return out


def _mean_entry(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    present = [name for name, e in entries.items() if e["num_gt"] > 0]
    out: dict[str, Any] = {
        "num_gt": int(sum(e["num_gt"] for e in entries.values())),
        "num_pred": int(sum(e["num_pred"] for e in entries.values())),
        "classes_averaged": present,
    }
    keys = METRIC_KEYS + (RECALL_KEY,)
    if not present:
        out.update({k: None for k in keys}, curves=None)
        return out
    for k in keys:
        out[k] = float(np.mean([entries[c][k] for c in present]))
    out["curves"] = {
        name: np.mean([entries[c]["curves"][name] for c in present], axis=0).tolist()
        for name in entries[present[0]]["curves"]
    }
    return out


def _accumulate_frame(
    fr: Mapping[str, Any], acc: dict[str, dict[int, _ClassAccumulator]], modes: Sequence[str]
) -> None:
    """Add one validated frame's matches to the per-mode, per-class accumulators
    (see :func:`evaluate`)."""
    iou_thr = IOU_THRESHOLDS[:, None, None]
    deg_thr = _DEG_EXT[:, None, None, None]
    cm_thr = _CM_EXT[None, :, None, None]
    g_ids, p_ids = fr["gt_class_ids"], fr["pred_class_ids"]
    if len(g_ids) == 0 and len(p_ids) == 0:
        return
    sym = np.array(
        [
            is_symmetric(int(c), bool(h))
            for c, h in zip(g_ids, fr["gt_handle_visibility"], strict=True)
        ],
        dtype=bool,
    )
    # Frame-wide matrices, computed once; cross-class entries are simply never used.
    deg, cm = pose_error_matrix(fr["pred_RTs"], fr["gt_RTs"], sym)
    same_class = p_ids[:, None] == g_ids[None, :]
    ious = {
        m: iou_matrix(fr["pred_RTs"], fr["pred_scales"], fr["gt_RTs"], fr["gt_scales"], sym, m,
                      same_class)
        for m in modes
    }
    for c in np.union1d(g_ids, p_ids):
        gi = np.nonzero(g_ids == c)[0]
        pi = np.nonzero(p_ids == c)[0]
        pi = pi[np.argsort(-fr["pred_scores"][pi], kind="stable")]
        scores = fr["pred_scores"][pi]
        d_c, cm_c = deg[np.ix_(pi, gi)], cm[np.ix_(pi, gi)]
        for m in modes:
            a = acc[m][int(c)]
            a.n_gt += len(gi)
            iou_c = ious[m][np.ix_(pi, gi)]
            match = _greedy_match(-iou_c, iou_c[None] > iou_thr)  # (T, p)
            a.iou_tp.append(match >= 0)
            a.scores.append(scores)
            gate = match[_GATE_IDX]
            gp = np.nonzero(gate >= 0)[0]  # preds matched at the gate, score order kept
            gg = np.unique(gate[gp])  # the gts they matched
            a.n_gt_gate += len(gg)
            if len(gp) == 0:
                continue
            dd, cc = d_c[np.ix_(gp, gg)], cm_c[np.ix_(gp, gg)]
            pmatch = _greedy_match(dd + cc, (dd[None, None] <= deg_thr) & (cc <= cm_thr))
            a.pose_tp.append(pmatch >= 0)
            a.pose_scores.append(scores[gp])


def evaluate(
    results: Sequence[Mapping[str, Any]], modes: Sequence[str] = IOU_MODES
) -> dict[str, Any]:
    """Score frames with the NOCS protocol under each IoU mode; JSON-serialisable output.

    Per (frame, class): predictions sorted by score, greedy matching against ground truth at
    every IoU threshold (a pair matches when IoU > threshold, strictly, as in the NOCS code).
    Pose APs see only predictions and ground truths matched at IoU > 0.1 and match those pairs
    greedily (by score; each prediction takes the free gt with the smallest deg + cm error that
    satisfies err_deg <= thr and err_cm <= thr), so a missed object costs recall, not pose AP.
    AP is VOC all-point per class; "mean" averages classes with ground truth only (a class
    without ground truth has ``None`` metrics and is listed in ``missing_classes``).

    Returns ``{"protocol", "num_frames", "grids", "modes": {mode: {"mode", "iou_mode",
    "classes": {name | "mean": {...}}, "missing_classes"}}}``; APs and recall in percent.
    """
    modes = tuple(modes)
    for m in modes:
        if m not in KNOWN_IOU_MODES:
            raise ValueError(f"unknown IoU mode {m!r}; expected one of {KNOWN_IOU_MODES}")
    frames = []
    for k, r in enumerate(results):
        try:
            frames.append(validate_result(r))
        except ValueError as exc:
            raise ValueError(f"frame {k}: {exc}") from exc

    acc = {m: {c: _ClassAccumulator() for c in range(1, len(CATEGORIES) + 1)} for m in modes}
    for fr in frames:
        _accumulate_frame(fr, acc, modes)

    out: dict[str, Any] = {
        "protocol": "NOCS",
        "num_frames": len(frames),
        "grids": {
            "iou": IOU_THRESHOLDS.tolist(),
            "rotation_deg": ROTATION_THRESHOLDS_DEG.tolist(),
            "translation_cm": TRANSLATION_THRESHOLDS_CM.tolist(),
            "iou_pose_gate": IOU_POSE_GATE,
            "symmetry_steps": SYMMETRY_STEPS,
        },
        "modes": {},
    }
    for m in modes:
        entries = {CATEGORIES[c - 1]: a.summary() for c, a in acc[m].items()}
        mean = _mean_entry(entries)
        out["modes"][m] = {
            "mode": m,
            "iou_mode": IOU_MODE_DESCRIPTIONS[m],
            "classes": {**entries, "mean": mean},
            "missing_classes": [n for n, e in entries.items() if e["num_gt"] == 0],
        }
    return out


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def _mode_block(metrics: Mapping[str, Any], mode: str) -> Mapping[str, Any]:
    try:
        return metrics["modes"][mode]
    except KeyError:
        have = list(metrics.get("modes", {}))
        raise ValueError(f"metrics hold no IoU mode {mode!r} (have {have})") from None


def format_table(metrics: Mapping[str, Any], mode: str) -> str:
    """Per-class terminal table (rows: classes + mean) of the 7 metrics and recall@IoU0.1."""
    block = _mode_block(metrics, mode)
    cols = METRIC_KEYS + (RECALL_KEY,)
    head = f"{'class':<8}{'#gt':>6}" + "".join(f"{_METRIC_LABELS[k]:>9}" for k in cols)
    lines = [
        f"NOCS metrics [3D IoU mode: {mode}] - {metrics.get('num_frames', '?')} frames",
        f"  ({block['iou_mode']})",
        head,
        "-" * len(head),
    ]
    for name, e in block["classes"].items():
        if name == "mean":
            lines.append("-" * len(head))
        vals = "".join(f"{'n/a':>9}" if e[k] is None else f"{e[k]:>9.1f}" for k in cols)
        lines.append(f"{name:<8}{e['num_gt']:>6}{vals}")
    if block["missing_classes"]:
        missing = ", ".join(block["missing_classes"])
        lines.append(f"missing (no ground truth, not averaged): {missing}")
    return "\n".join(lines)


def plot_ap_curves(metrics: Mapping[str, Any], path: str | os.PathLike, mode: str) -> None:
    """Save one PNG with AP vs IoU, vs rotation (deg) and vs translation (cm), per class + mean.

    Uses the Agg canvas directly (no pyplot, no global backend switch), so it is safe on
    headless machines and inside other programs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    block = _mode_block(metrics, mode)
    grids = metrics["grids"]
    panels = (
        ("ap_vs_iou", grids["iou"], "3D IoU threshold", "AP vs 3D IoU"),
        (
            "ap_vs_rotation_deg",
            grids["rotation_deg"],
            "rotation threshold (deg)",
            "AP vs rotation (any translation)",
        ),
        (
            "ap_vs_translation_cm",
            grids["translation_cm"],
            "translation threshold (cm)",
            "AP vs translation (any rotation)",
        ),
    )
    fig = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (key, x, xlabel, title) in zip(axes, panels, strict=True):
        for name, e in block["classes"].items():
            if e["curves"] is None:
                continue
            style = {"color": "k", "lw": 2.5, "ls": "--"} if name == "mean" else {"lw": 1.5}
            ax.plot(x, e["curves"][key], label=name, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AP (%)")
        ax.set_title(title)
        ax.set_ylim(-2, 102)
        ax.set_xlim(min(x), max(x))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"NOCS AP curves - 3D IoU mode: {mode}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)


def box_iou_2d(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two image boxes given as (x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def mask_ap(
    frames: Sequence[tuple[Sequence[tuple[int, float, np.ndarray]],
                           Sequence[tuple[int, np.ndarray]]]],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Instance-segmentation AP per class at one mask-IoU threshold (VOC all-point, as the pose
    APs): ``frames`` holds per frame the detections (class id, score, mask) and the ground
    truth (class id, mask). Detections are matched greedily by score to the same-class ground
    truth of highest IoU. Returns ``{"per_class": {name: AP or None}, "mAP": mean over the
    classes with ground truth, "n_gt": {name: count}}``."""
    scores: dict[int, list[float]] = {c: [] for c in range(1, len(CATEGORIES) + 1)}
    hits: dict[int, list[bool]] = {c: [] for c in scores}
    n_gt = dict.fromkeys(scores, 0)
    for detections, truths in frames:
        for c in scores:
            gts = [m for k, m in truths if k == c]
            n_gt[c] += len(gts)
            taken = [False] * len(gts)
            for _, score, mask in sorted((d for d in detections if d[0] == c),
                                         key=lambda d: -d[1]):
                ious = [-1.0 if used else mask_iou(mask, g)
                        for g, used in zip(gts, taken, strict=True)]
                best = int(np.argmax(ious)) if ious else -1
                hit = best >= 0 and ious[best] >= iou_threshold
                if hit:
                    taken[best] = True
                scores[c].append(score)
                hits[c].append(hit)
    per_class: dict[str, float | None] = {}
    for c in scores:
        name = CATEGORIES[c - 1]
        if n_gt[c] == 0:
            per_class[name] = None
            continue
        per_class[name] = float(_voc_ap(np.asarray(hits[c]), np.asarray(scores[c], float),
                                        n_gt[c])) if scores[c] else 0.0
    valid = [v for v in per_class.values() if v is not None]
    return {"per_class": per_class, "mAP": float(np.mean(valid)) if valid else None,
            "n_gt": {CATEGORIES[c - 1]: n for c, n in n_gt.items()}}
