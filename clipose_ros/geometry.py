"""Geometry shared by the data tools, the estimators and the node (no ROS imports).

Frames follow DESIGN.md: camera optical frame (x right, y down, z forward), metres.
"""

from __future__ import annotations

import numpy as np


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unnormalised camera-frame ray directions (H, W, 3) with z = 1 through each pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def backproject_pixels(
    depth: np.ndarray, K: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Camera-frame points (M, 3) of the given pixels, in their order; select the pixels with
    :func:`valid_depth_pixels`, whose count callers usually need too."""
    z = depth[rows, cols].astype(np.float64)
    x = (cols - K[0, 2]) * z / K[0, 0]
    y = (rows - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], axis=1)


def valid_depth_pixels(
    depth: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of pixels with usable depth (finite, > 0), within ``mask``."""
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        if mask.shape != depth.shape:
            raise ValueError(f"mask shape {mask.shape} differs from depth shape {depth.shape}")
        valid &= mask.astype(bool)
    return np.nonzero(valid)


def sample_indices(count: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``count`` items: without replacement when possible, else with."""
    if count <= 0:
        raise ValueError("cannot sample points from an empty set")
    return rng.choice(count, size=n, replace=count < n)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991); returns (s, R, t).

    ``R`` is a proper rotation (det +1) even when the best orthogonal fit is a reflection.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two (N>=3, 3) arrays of equal shape, got {src.shape}, {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    cov = dst_c.T @ src_c / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_src) if var_src > 0 else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def ransac_umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    rng: np.random.Generator,
    inlier_threshold: float = 0.01,
    iterations: int = 200,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity fit robust to outliers: RANSAC over 4-point Umeyama fits, then a refit on all
    inliers. ``inlier_threshold`` is in ``dst`` units (metres for depth points).

    Returns (s, R, t, inlier mask).
    """
    n = len(src)
    if n < 4:
        raise ValueError(f"RANSAC similarity fit needs at least 4 correspondences, got {n}")
    best = np.zeros(n, dtype=bool)
    for _ in range(iterations):
        pick = rng.choice(n, size=4, replace=False)
        try:
            s, R, t = umeyama(src[pick], dst[pick])
        except np.linalg.LinAlgError:
            continue
        residual = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
        inliers = residual < inlier_threshold
        if inliers.sum() > best.sum():
            best = inliers
    if best.sum() < 4:
        best = np.ones(n, dtype=bool)
    s, R, t = umeyama(src[best], dst[best])
    residual = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
    return s, R, t, residual < inlier_threshold


def rotation_about_axis(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation matrix of ``angle_rad`` about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


def rotation_angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    """Geodesic angle between two rotations in degrees."""
    cos = (np.trace(R1 @ R2.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def rotation_from_y(
    y: np.ndarray, x_hint: np.ndarray | None = None, eps: float = 1e-3
) -> np.ndarray:
    """Proper rotation (3, 3) whose y column is ``y`` (normalised) and whose x column is
    ``x_hint`` made orthogonal to it; where the hint is missing or its orthogonal part is
    shorter than ``eps`` (parallel to y), the camera's x axis stands in, then its z axis.
    z = x cross y. Used wherever only the y axis of an object is known or kept."""
    y = np.asarray(y, dtype=np.float64)
    y = y / np.linalg.norm(y)
    refs = [] if x_hint is None else [np.asarray(x_hint, dtype=np.float64)]
    for ref in (*refs, np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])):
        x = ref - float(ref @ y) * y
        n = float(np.linalg.norm(x))
        if n > eps:
            x = x / n
            break
    return np.stack([x, y, np.cross(x, y)], axis=1)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation (3, 3) of an optical frame at ``eye`` looking at ``target``.

    Columns are the camera x (right), y (down) and z (forward) axes in world coordinates;
    ``up`` is the world's up direction.
    """
    z = np.asarray(target, float) - np.asarray(eye, float)
    if np.linalg.norm(z) < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def box_corners(extents: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of an origin-centred box with the given extents."""
    half = np.asarray(extents, dtype=np.float64) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return signs * half


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates (N, 2) of camera-frame points (N, 3) with z > 0."""
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:3]
