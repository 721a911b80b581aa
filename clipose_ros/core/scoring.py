"""Published poses against ground truth, frame by frame: the live numbers of ``clipose-demo``.

:func:`score_frame` pairs a frame's predictions with its ground truth (same class, nearest
centres first, within a radius) and measures rotation and translation errors (rotation about y
not counted where it is unobservable); :func:`summarise` turns scored frames into the found
fraction within error bounds, error medians and id stability. Used by the demo's monitor, the
node tests, ``clipose-infer``'s tests and ``bench/node_speed.py``. No ROS.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from clipose_ros.categories import CATEGORIES
from clipose_ros.core.structures import ObjectPose
from clipose_ros.geometry import rotation_angle_deg


@dataclass
class Match:
    """One ground-truth object of one frame and the prediction matched to it (if any)."""

    truth_id: str
    class_name: str
    pred_id: str | None
    rot_deg: float = float("nan")
    trans_cm: float = float("nan")

    def within(self, max_rot_deg: float, max_trans_cm: float) -> bool:
        return self.pred_id is not None and self.rot_deg <= max_rot_deg and (
            self.trans_cm <= max_trans_cm)


def rotation_error_deg(R_truth: np.ndarray, R_pred: np.ndarray, symmetric: bool) -> float:
    """Geodesic angle, or the angle between the y axes when rotation about y is unobservable."""
    if not symmetric:
        return rotation_angle_deg(R_truth, R_pred)
    cos = float(np.dot(R_truth[:, 1], R_pred[:, 1]))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def score_frame(
    truths: list[ObjectPose], preds: list[ObjectPose], symmetric: list[bool],
    match_radius_m: float = 0.10,
) -> list[Match]:
    """Pair predictions with ground truth of the same class, nearest centres first (each used
    once, at most ``match_radius_m`` apart), and measure rotation and translation errors."""
    pairs = sorted(
        (float(np.linalg.norm(np.asarray(p.t) - g.t)), i, j)
        for i, g in enumerate(truths) for j, p in enumerate(preds)
        if p.class_id == g.class_id
    )
    taken_t, taken_p, out = set(), set(), {}
    for d, i, j in pairs:
        if d > match_radius_m or i in taken_t or j in taken_p:
            continue
        taken_t.add(i)
        taken_p.add(j)
        g, p = truths[i], preds[j]
        out[i] = Match(g.key, g.class_name, p.key, rotation_error_deg(g.R, p.R, symmetric[i]),
                       100.0 * d)
    return [out.get(i, Match(g.key, g.class_name, None)) for i, g in enumerate(truths)]


def summarise(frames: list[dict], max_rot_deg: float = 10.0, max_trans_cm: float = 5.0) -> dict:
    """Found fraction (same class, within the error bounds), error medians and id stability;
    per class the detected and found fractions."""
    matches = [m for f in frames if f["matches"] for m in f["matches"]]
    paired = [m for m in matches if m.pred_id is not None]
    # Ids must hold while a scene stays in view: count them per run of consecutive frames of
    # one scene (a scene shown again later is a new run, and may get new ids).
    ids: dict[tuple[int, str], set] = defaultdict(set)
    run, last_scene = 0, None
    for f in frames:
        if not f["matches"]:
            continue
        scene = f["matches"][0].truth_id.split("#")[0]
        run += scene != last_scene
        last_scene = scene
        for m in f["matches"]:
            if m.pred_id is not None:
                ids[(run, m.truth_id)].add(m.pred_id)
    per_class = {}
    for name in CATEGORIES:
        mine = [m for m in matches if m.class_name == name]
        if mine:
            per_class[name] = {
                "objects": len(mine),
                # detected: a same-class prediction near it (what the segmenter gives); found:
                # also within the bounds. Their gap is the pose's share of the misses.
                "detected": sum(m.pred_id is not None for m in mine) / len(mine),
                "found": sum(m.within(max_rot_deg, max_trans_cm) for m in mine) / len(mine),
            }

    def median(values):
        return float(np.median(values)) if values else float("nan")

    return {
        "frames_scored": sum(1 for f in frames if f["matches"] is not None),
        "ground_truth_objects": len(matches),
        "found_fraction": (sum(m.within(max_rot_deg, max_trans_cm) for m in matches)
                           / len(matches)) if matches else float("nan"),
        "paired_fraction": len(paired) / len(matches) if matches else float("nan"),
        "rotation_error_deg_median": median([m.rot_deg for m in paired]),
        "translation_error_cm_median": median([m.trans_cm for m in paired]),
        "rotation_error_deg_p90": float(np.percentile([m.rot_deg for m in paired], 90))
        if paired else float("nan"),
        "translation_error_cm_p90": float(np.percentile([m.trans_cm for m in paired], 90))
        if paired else float("nan"),
        "objects_with_one_id": sum(len(v) == 1 for v in ids.values()),
        "objects_with_changing_id": sum(len(v) > 1 for v in ids.values()),
        "bounds": {"rotation_deg": max_rot_deg, "translation_cm": max_trans_cm},
        "per_class": per_class,
    }


def per_class_line(per_class: dict) -> str:
    """``mug 100/63, laptop 0/0, ...``: whether a class is lost by the segmenter (not
    detected) or by the pose (detected, outside the bounds)."""
    return ", ".join(
        f"{name} {100 * c['detected']:.0f}/{100 * c['found']:.0f}" for name, c in per_class.items()
    ) or "none"
