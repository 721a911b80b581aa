"""Category conventions shared by every part of the package (see DESIGN.md).

Class ids follow the NOCS datasets: 1..6 in the order of ``CATEGORIES``; 0 is background.
"""

from __future__ import annotations

import numpy as np

CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "camera", "can", "laptop", "mug")
CLASS_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(CATEGORIES)}

# What the object axes mean, per category (NOCS canonical frame, as the real NOCS object models
# and the SPD labels define it). A grasp pipeline reading the node's TF relies on exactly this.
# All: y up (the axis of symmetry or the natural up), origin at the box centre unless said.
OBJECT_AXES: dict[str, str] = {
    "bottle": "y up along the symmetry axis; x, z arbitrary (symmetric)",
    "bowl": "y up along the symmetry axis; x, z arbitrary (symmetric)",
    "camera": "lens along +x (body at -x), body width along z, y up",
    "can": "y up along the symmetry axis; x, z arbitrary (symmetric)",
    "laptop": "base in the x-z plane, hinge along z at the -x edge with the lid rising there, "
    "typing edge at +x, width along z, y up",
    "mug": "handle at +x, y up; origin on the body's axis and the box symmetric about it "
    "(SPD label convention), so the box centre is not offset towards the handle",
}

# Rotationally symmetric about their y axis; a mug is symmetric only when its handle is hidden.
SYMMETRIC_CATEGORIES: frozenset[str] = frozenset({"bottle", "bowl", "can"})

# Category mean metric box extents (x, y, z) in metres, the REAL275 statistics used by the
# GPV-Pose / HS-Pose family as the prior for size regression. In the frames above: a camera is
# 8.8 cm deep (x) and 15.6 cm wide (z); a mug's x is its symmetric width, 2 x (radius + handle).
MEAN_SIZES_M: dict[str, np.ndarray] = {
    "bottle": np.array([0.087, 0.220, 0.089]),
    "bowl": np.array([0.165, 0.080, 0.165]),
    "camera": np.array([0.088, 0.128, 0.156]),
    "can": np.array([0.068, 0.146, 0.072]),
    "laptop": np.array([0.346, 0.200, 0.335]),
    "mug": np.array([0.146, 0.083, 0.114]),
}

# Pinhole intrinsics of the two NOCS benchmarks (640x480).
CAMERA_INTRINSICS = np.array([[577.5, 0.0, 319.5], [0.0, 577.5, 239.5], [0.0, 0.0, 1.0]])
REAL_INTRINSICS = np.array(
    [[591.0125, 0.0, 322.525], [0.0, 590.16775, 244.11084], [0.0, 0.0, 1.0]]
)
IMAGE_SIZE = (480, 640)  # (height, width)


def class_name(class_id: int) -> str:
    """Category name of a NOCS class id (1..6)."""
    if not 1 <= int(class_id) <= len(CATEGORIES):
        raise ValueError(f"class id {class_id} is not a NOCS category id (1..{len(CATEGORIES)})")
    return CATEGORIES[int(class_id) - 1]


def is_symmetric(class_id: int, handle_visible: bool = True) -> bool:
    """Whether rotation about y is unobservable for this object (NOCS evaluation rule)."""
    name = class_name(class_id)
    return name in SYMMETRIC_CATEGORIES or (name == "mug" and not handle_visible)
