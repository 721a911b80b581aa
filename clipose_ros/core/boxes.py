"""The box that tightly holds an object, from its pose: what detections, markers and overlays
show.

A pose's own box is centred on the object origin. Mugs are the exception: their label frame
(SPD convention) has its origin on the body axis and a box symmetric about it, x extent
= 2 * (body radius r + handle reach h), z extent = 2 r (the body's diameter), while the tight box
around the real mug spans [-r, r + h] along x. Each estimate's own z / x ratio, r / (r + h),
turns one box into the other.
"""

from __future__ import annotations

import numpy as np

from clipose_ros.categories import CLASS_IDS
from clipose_ros.core.structures import ObjectPose


def object_box(pose: ObjectPose) -> tuple[np.ndarray, np.ndarray]:
    """Centre (camera frame) and full metric size of the box that tightly holds the object.

    It is the pose's own box (centred on the object origin) except for mugs, whose origin is on
    the body axis: their tight box is shifted towards the handle (+x) and narrower in x.
    """
    size = np.asarray(pose.size, dtype=np.float64)
    if pose.class_id != CLASS_IDS["mug"]:
        return np.asarray(pose.t, dtype=np.float64), size
    rho = float(np.clip(size[2] / max(size[0], 1e-9), 0.0, 1.0))  # r / (r + h)
    half_x = size[0] / 2.0
    offset = np.array([(1.0 - rho) * half_x / 2.0, 0.0, 0.0])
    tight = np.array([(1.0 + rho) * half_x, size[1], size[2]])
    return np.asarray(pose.t, dtype=np.float64) + np.asarray(pose.R) @ offset, tight
