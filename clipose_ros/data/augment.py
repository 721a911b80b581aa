"""Training augmentations for per-instance point clouds (HS-Pose / GPV-Pose family).

Every augmentation that moves the points also updates the ground truth, so that
``p = s * R @ p_nocs + t`` still holds for the augmented points with a NOCS point ``p_nocs``
inside the (possibly changed) NOCS box ``[-e/2, e/2]``. That invariant is what lets the pose
losses stay correct under augmentation; ``test/test_dataset.py`` checks it numerically.

Only the point cloud is augmented. The RGB crop that feeds the CLIP branch is left as rendered,
so under a pose or scale perturbation it shows the unperturbed object (a few degrees / a few
percent; the contrastive loss tolerates it, and warping the image consistently is not possible
without re-rendering).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from clipose_ros.geometry import rotation_about_axis


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strongly. All off by default (evaluation).

    Each augmentation has an on/off flag and, when on, fires with its own probability per
    sample. Magnitudes are in metres / degrees.
    """

    mask_erosion: bool = False
    erosion_prob: float = 0.3
    erosion_max_kernel: int = 5  # square kernel side drawn from 2..max
    point_jitter: bool = False
    jitter_prob: float = 0.5
    jitter_sigma_m: float = 0.001
    jitter_clip_m: float = 0.005
    pose_perturbation: bool = False
    pose_prob: float = 0.3
    max_rotation_deg: float = 5.0
    max_translation_m: float = 0.005  # per axis, uniform in [-max, max]
    scale_perturbation: bool = False
    scale_prob: float = 0.3
    scale_range: tuple[float, float] = (0.8, 1.2)
    # Roll of the camera about the ray through the object centre: exact for a partial view
    # (the same surface is seen, only the image plane turns), so it costs nothing in realism.
    ray_roll: bool = False
    ray_roll_prob: float = 0.5
    max_ray_roll_deg: float = 45.0

    def __post_init__(self) -> None:
        for name in ("erosion_prob", "jitter_prob", "pose_prob", "scale_prob", "ray_roll_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {p}")
        if self.erosion_max_kernel < 2:
            raise ValueError("AugmentConfig.erosion_max_kernel must be >= 2")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"AugmentConfig.scale_range must satisfy 0 < low <= high: {low, high}")
        if min(self.jitter_sigma_m, self.jitter_clip_m, self.max_rotation_deg,
               self.max_ray_roll_deg) < 0:
            raise ValueError("AugmentConfig magnitudes must be non-negative")
        if self.max_translation_m < 0:
            raise ValueError("AugmentConfig.max_translation_m must be non-negative")

    @classmethod
    def preset(cls, train: bool, **overrides: object) -> AugmentConfig:
        """The four HS-Pose augmentations on for ``train=True`` (the ray roll stays as the
        config says), all off otherwise; ``overrides`` win."""
        flags = dict.fromkeys(
            ("mask_erosion", "point_jitter", "pose_perturbation", "scale_perturbation"), train
        )
        return replace(cls(), **{**flags, **overrides})

    @property
    def any_enabled(self) -> bool:
        return (
            self.mask_erosion
            or self.point_jitter
            or self.pose_perturbation
            or self.scale_perturbation
            or self.ray_roll
        )


def erode_mask(mask: np.ndarray, rng: np.random.Generator, max_kernel: int) -> np.ndarray:
    """Erode a boolean instance mask with a random square kernel (side 2..max_kernel).

    Imitates the ragged, shrunken masks of a real segmenter, whose edge pixels also carry the
    worst depth (mixed foreground/background).
    """
    k = int(rng.integers(2, max_kernel + 1))
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8))
    return eroded.astype(bool)


def jitter_points(
    points: np.ndarray, rng: np.random.Generator, sigma: float, clip: float
) -> np.ndarray:
    """Add per-coordinate Gaussian noise clipped to ``[-clip, clip]`` (sensor noise).

    Labels are not changed: the noise is a measurement error, not a change of the object.
    """
    noise = np.clip(rng.normal(0.0, sigma, size=points.shape), -clip, clip)
    return points + noise


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a uniformly random axis by an angle uniform in ``[0, max_deg]``."""
    axis = rng.normal(size=3)
    while np.linalg.norm(axis) < 1e-9:
        axis = rng.normal(size=3)
    angle = np.radians(rng.uniform(0.0, max_deg))
    return rotation_about_axis(axis, angle)


def perturb_pose(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    rng: np.random.Generator,
    max_deg: float,
    max_translation: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate the points by a small ``dR`` about the object centre ``t``, then shift by ``dt``.

    ``p' = dR (p - t) + t + dt`` with ``R' = dR R`` and ``t' = t + dt`` keeps
    ``p' = s R' p_nocs + t'`` for the same ``p_nocs`` and ``s``. Returns (points, R, t).
    """
    dR = random_rotation(rng, max_deg)
    dt = rng.uniform(-max_translation, max_translation, size=3)
    new_points = (points - t) @ dR.T + t + dt
    return new_points, dR @ R, t + dt


def roll_about_ray(
    points: np.ndarray, R: np.ndarray, t: np.ndarray, rng: np.random.Generator, max_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the scene about the camera ray through ``t`` by an angle in ``[-max, max]``.

    A rotation ``Q`` about an axis through the camera centre moves every point along with the
    object: ``p' = Q p``, ``R' = Q R``, ``t' = Q t``. The camera still sees the same surface
    (as if the camera had rolled), so unlike :func:`perturb_pose` the partial view stays
    exactly consistent. Returns (points, R, t).
    """
    axis = t / max(float(np.linalg.norm(t)), 1e-9)
    Q = rotation_about_axis(axis, np.radians(rng.uniform(-max_deg, max_deg)))
    return points @ Q.T, Q @ R, Q @ t


def perturb_scale(
    points: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    s: float,
    nocs_extents: np.ndarray,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    tie_xz: bool,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Stretch the object per axis of its own frame by ``k ~ U(scale_range)`` about ``t``.

    ``p' = R diag(k) R^T (p - t) + t``. The metric box becomes ``s e * k``; we keep the NOCS
    normalisation of the label (the norm of ``e``, 1 for a tight NOCS box) by setting
    ``s' = s |e * k| / |e|`` and ``e' = e * k * s / s'``, so ``p' = s' R p_nocs' + t`` with
    ``p_nocs' = diag(k) p_nocs s / s'`` inside ``[-e'/2, e'/2]``. ``tie_xz`` uses one factor for
    x and z so that objects symmetric about y stay symmetric. Returns (points, s, nocs_extents).
    """
    low, high = scale_range
    k = rng.uniform(low, high, size=3)
    if tie_xz:
        k[2] = k[0]
    local = (points - t) @ R  # object-frame coordinates (times s): R^T (p - t)
    new_points = (local * k) @ R.T + t
    e = np.asarray(nocs_extents, dtype=np.float64)
    new_s = float(s * np.linalg.norm(e * k) / np.linalg.norm(e))
    new_e = e * k * s / new_s
    return new_points, new_s, new_e
