"""CPU ray-cast rendering of RGB-D frames with exact per-pixel ground truth (Embree via embreex).

Why Embree: it installs from PyPI as a binary wheel (embreex, the binding trimesh uses), needs no
display or GL context, and returns the exact hit surface per pixel, so depth, instance masks and
NOCS coordinates are exact rather than rasterised approximations. One 640x480 frame of a few
thousand-triangle objects casts in ~30 ms on one core.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import trimesh
from embreex import mesh_construction, rtcore_scene

from clipose_ros.geometry import pixel_rays

NO_HIT = -1


@dataclass
class RenderObject:
    """A mesh placed in the camera frame: ``p_cam = scale * R @ p_local + t``."""

    mesh: trimesh.Trimesh
    R: np.ndarray
    t: np.ndarray
    scale: float
    colors: np.ndarray  # (n_parts, 3) albedo in 0..1, indexed by part id
    part_ids: np.ndarray | None = None  # (n_faces,) part id per face; None = all part 0
    pattern: str = "plain"  # plain | stripes | checker | band | grain: texture, local coords
    pattern_freq: float = 6.0
    shininess: float = 20.0
    specular: float = 0.2
    casts_shadow: bool = True  # False: the light passes it (room walls: the lamp is inside)
    receives_shadow: bool = True  # False: no shadow rays from it (saves them where none fall)


@dataclass
class Light:
    """A directional light (camera frame, pointing from the scene towards the light)."""

    direction: np.ndarray
    ambient: float = 0.35
    diffuse: float = 0.75
    shadows: bool = True


@dataclass
class RenderOutput:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 where nothing was hit
    object_pixels: list[np.ndarray]  # per object: sorted flat pixel indices where it is visible
    part: np.ndarray  # (H, W) int32 part id of the hit face, -1 where nothing
    points: np.ndarray  # (H, W, 3) float32 camera-frame hit points (0 where nothing)
    # Filled on request (render(..., aa_samples > 0 or surface_info=True)):
    object_index: np.ndarray | None = None  # (H, W) int32 index into objects, -1 where nothing
    normal: np.ndarray | None = None  # (H, W, 3) float32 unit normal facing the camera
    albedo: np.ndarray | None = None  # (H, W) float32 grey albedo of the base colour
    gloss: np.ndarray | None = None  # (H, W) float32 the hit object's specular weight


@lru_cache(maxsize=8)
def _camera_rays(K: tuple, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per camera, read-only float32: ray directions (N, 3) with z = 1 and zero origins for
    Embree, and as (3, N) rows the same directions and the unit vectors back to the camera."""
    rays = pixel_rays(np.array(K).reshape(3, 3), height, width).reshape(-1, 3)
    view = -rays / np.linalg.norm(rays, axis=1, keepdims=True)
    out = (
        np.ascontiguousarray(rays, dtype=np.float32),
        np.zeros((height * width, 3), dtype=np.float32),
        np.ascontiguousarray(rays.T, dtype=np.float32),
        np.ascontiguousarray(view.T, dtype=np.float32),
    )
    for array in out:
        array.flags.writeable = False
    return out


def rotate_rows(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``points @ M`` for (n, 3) points and a 3x3 ``M``, in the points' dtype, as three
    multiply-adds: no BLAS call, so no BLAS thread pool spinning inside worker processes."""
    M = np.asarray(M, dtype=points.dtype)
    out = points[:, 0:1] * M[0]
    out += points[:, 1:2] * M[1]
    out += points[:, 2:3] * M[2]
    return out


def _dot3(a: np.ndarray | list, b: np.ndarray) -> np.ndarray:
    """Dot products of (3, n) rows ``a`` with a fixed 3-vector or with (3, n) rows ``b``."""
    out = a[0] * b[0]
    out += a[1] * b[1]
    out += a[2] * b[2]
    return out


@dataclass
class _SceneTables:
    """Per-object data of one frame, concatenated so shading gathers it per hit at once."""

    face_offset: np.ndarray  # (n_objects,) first global face id of each object
    normals: np.ndarray  # (3, n_faces) camera-frame face normals, float32
    parts: np.ndarray  # (n_faces,) part id per face, int32
    color_offset: np.ndarray  # (n_objects,) first row of each object's colours
    last_color: np.ndarray  # (n_objects,) number of colours - 1
    colors: np.ndarray  # (3, n_colours) albedo, float32
    specular: np.ndarray  # (n_objects,) float32
    shininess: np.ndarray  # (n_objects,) float32, >= 1
    shadow_scene: rtcore_scene.EmbreeScene  # the shadow casters (the scene itself if all are)
    receives_shadow: np.ndarray | None  # (n_objects,) bool; None when all do


def _scene_of(objects: list[RenderObject]) -> tuple[rtcore_scene.EmbreeScene, _SceneTables]:
    scene = rtcore_scene.EmbreeScene()
    all_cast = all(obj.casts_shadow for obj in objects)
    shadow_scene = scene if all_cast else rtcore_scene.EmbreeScene()
    normals, parts, colors = [], [], []
    for obj in objects:
        R_T = np.asarray(obj.R, dtype=np.float64).T
        vertices = rotate_rows(obj.scale * np.asarray(obj.mesh.vertices, dtype=np.float64), R_T)
        vertices += obj.t
        faces = np.asarray(obj.mesh.faces, dtype=np.int32)
        mesh_construction.TriangleMesh(scene, vertices.astype(np.float32), faces)
        if not all_cast and obj.casts_shadow:
            mesh_construction.TriangleMesh(shadow_scene, vertices.astype(np.float32), faces)
        normals.append(rotate_rows(np.asarray(obj.mesh.face_normals, dtype=np.float64), R_T))
        ids = obj.part_ids if obj.part_ids is not None else np.zeros(len(faces), np.int32)
        parts.append(np.asarray(ids, dtype=np.int32))
        colors.append(np.asarray(obj.colors, dtype=np.float64).reshape(-1, 3))
    n_faces = [len(p) for p in parts]
    n_colors = [len(c) for c in colors]
    tables = _SceneTables(
        face_offset=np.cumsum([0, *n_faces[:-1]]).astype(np.int32),
        normals=np.ascontiguousarray(np.concatenate(normals).T, dtype=np.float32),
        parts=np.concatenate(parts),
        color_offset=np.cumsum([0, *n_colors[:-1]]).astype(np.int32),
        last_color=np.array(n_colors, dtype=np.int32) - 1,
        colors=np.ascontiguousarray(np.concatenate(colors).T, dtype=np.float32),
        specular=np.array([o.specular for o in objects], dtype=np.float32),
        shininess=np.array([max(o.shininess, 1.0) for o in objects], dtype=np.float32),
        shadow_scene=shadow_scene,
        receives_shadow=None if all(o.receives_shadow for o in objects) else np.array(
            [o.receives_shadow for o in objects], dtype=bool),
    )
    return scene, tables


def _pattern(kind: str, local: list[np.ndarray] | np.ndarray, freq: float) -> np.ndarray:
    """Albedo multiplier in [0.55, 1] from local (object-frame) coordinates, given as the rows
    x, y, z (stripes and band read only y, grain only x and z)."""
    if kind == "stripes":
        return np.where(np.sin(np.float32(2 * np.pi * freq) * local[1]) >= 0, 1.0, 0.55)
    if kind == "checker":
        f = np.float32(freq)
        cells = np.floor(f * local[0]) + np.floor(f * local[1]) + np.floor(f * local[2])
        return np.where(np.fmod(cells, 2) == 0, 1.0, 0.6)
    if kind == "marker":  # black-and-white squares, as on calibration and marker boards
        f = np.float32(freq)
        cells = np.floor(f * local[0]) + np.floor(f * local[1]) + np.floor(f * local[2])
        return np.where(np.fmod(cells, 2) == 0, 1.0, 0.06)
    if kind == "band":  # a label band around the middle, as on bottles and cans
        return np.where(np.abs(local[1]) < 0.15, 0.55, 1.0)
    if kind == "grain":  # wood-like bands across x, warped along z (tables)
        f = np.float32(2 * np.pi * freq)
        return np.float32(0.82) + np.float32(0.18) * np.sin(
            f * local[0] + np.float32(2.0) * np.sin(np.float32(0.35) * f * local[2])
        )
    raise ValueError(f"unknown texture pattern {kind!r}")


def _local_rows(pts: np.ndarray, obj: RenderObject, axes: tuple[int, ...]) -> list:
    """Rows ``axes`` of the object-frame coordinates ``R^T (p - t) / scale`` of (3, n) points."""
    R = np.asarray(obj.R, dtype=np.float64) / obj.scale
    t = np.asarray(obj.t, dtype=np.float64)
    rows: list = [None, None, None]
    for j in axes:
        # R^T (p - t) row j = sum_i R_ij p_i - sum_i R_ij t_i
        row = _dot3(pts, R[:, j].astype(np.float32))
        row -= np.float32(R[:, j] @ t)
        rows[j] = row
    return rows


@dataclass
class _Shaded:
    """Shading of a batch of rays: per hit, the object index, depth, part, colour terms."""

    hit_index: np.ndarray  # (n,) indices of the rays that hit something
    g: np.ndarray  # (n,) object index per hit
    z: np.ndarray  # (n,) depth (ray z = 1)
    part: np.ndarray  # (n,) part id per hit
    shade: np.ndarray  # (n,) diffuse factor, pattern applied
    spec: np.ndarray  # (n,) specular term
    color_row: np.ndarray  # (n,) column of ``_SceneTables.colors`` per hit
    normals: np.ndarray  # (3, n) face normals, camera frame (not flipped)
    flip: np.ndarray  # (n,) +1 where the normal faces the camera, -1 where not
    pixels: list[np.ndarray]  # per object: the ray indices it is visible at (sorted)


def _shade(
    scene: rtcore_scene.EmbreeScene,
    tables: _SceneTables,
    objects: list[RenderObject],
    light: Light,
    origins: np.ndarray,
    rays: np.ndarray,
    rays_rows: np.ndarray,
    view_rows: np.ndarray,
) -> _Shaded:
    """Cast ``rays`` (N, 3) with z = 1 from ``origins`` and shade the hits (Blinn-Phong, shadows,
    textures). ``rays_rows`` and ``view_rows`` are the same directions and the unit vectors back
    to the camera as (3, N) rows."""
    hit = scene.run(origins, rays, output=1)
    geom = hit["geomID"]
    hit_index = np.flatnonzero(geom >= 0)
    g = geom[hit_index]
    # Rays have z = 1, so the hit distance along them is the depth itself.
    z = hit["tfar"][hit_index]
    pts = np.take(rays_rows, hit_index, axis=1)
    pts *= z
    face = np.take(tables.face_offset, g)
    face += hit["primID"][hit_index]
    part_hit = np.take(tables.parts, face)
    normals = np.take(tables.normals, face, axis=1)
    view = np.take(view_rows, hit_index, axis=1)

    to_light = np.asarray(light.direction, dtype=np.float64)
    to_light = (to_light / np.linalg.norm(to_light)).astype(np.float32)
    # Two-sided surfaces: shade the side that faces the camera (flip = -1 where n faces away).
    n_dot_v = _dot3(normals, view)
    flip = np.less(n_dot_v, 0).astype(np.float32)
    flip *= -2
    flip += 1
    lambert = _dot3(normals, to_light)
    lambert *= flip
    # Blinn-Phong with h = (v + l) / |v + l|: n.h = (|n.v| + n.l) / sqrt(2 + 2 v.l).
    cos_half = np.abs(n_dot_v)
    cos_half += lambert
    v_dot_l = _dot3(view, to_light)
    v_dot_l *= 2
    v_dot_l += 2
    np.maximum(v_dot_l, np.float32(1e-12), out=v_dot_l)
    cos_half /= np.sqrt(v_dot_l)
    np.clip(cos_half, np.float32(1e-30), None, out=cos_half)
    spec = np.log(cos_half)
    spec *= np.take(tables.shininess, g)
    np.exp(spec, out=spec)
    spec *= np.take(tables.specular, g)
    np.maximum(lambert, 0.0, out=lambert)

    if light.shadows and len(hit_index):
        lit = np.flatnonzero(lambert > 0)
        if tables.receives_shadow is not None:
            lit = lit[np.take(tables.receives_shadow, g[lit])]
        start = np.empty((len(lit), 3), dtype=np.float32)
        offset = np.float32(1e-3) * flip[lit]
        for c in range(3):
            start[:, c] = pts[c][lit] + offset * normals[c][lit]
        occluded = tables.shadow_scene.run(start, to_light[None], query="OCCLUDED")
        blocked = lit[occluded >= 0]
        lambert[blocked] = 0.0
        spec[blocked] = 0.0

    shade = lambert
    shade *= np.float32(light.diffuse)
    shade += np.float32(light.ambient)
    color_row = np.take(tables.color_offset, g)
    color_row += np.minimum(part_hit, np.take(tables.last_color, g))
    pixels = []
    for index, obj in enumerate(objects):
        sel = np.flatnonzero(g == index)
        pixels.append(hit_index[sel])
        if obj.pattern != "plain" and len(sel):
            axes = {"checker": (0, 1, 2), "marker": (0, 1, 2), "grain": (0, 2)}.get(
                obj.pattern, (1,)
            )
            local = _local_rows(np.take(pts, sel, axis=1), obj, axes)
            shade[sel] *= _pattern(obj.pattern, local, obj.pattern_freq)
    return _Shaded(hit_index, g, z, part_hit, shade, spec, color_row, normals, flip, pixels)


def _hit_colours(tables: _SceneTables, shaded: _Shaded, c: int) -> np.ndarray:
    """Channel ``c`` of the hits, in grey levels + 0.5 (float32, ready to truncate)."""
    channel = np.take(tables.colors[c], shaded.color_row)
    channel *= shaded.shade
    channel += shaded.spec
    np.clip(channel, 0.0, 1.0, out=channel)
    channel *= 255
    channel += 0.5
    return channel


def _edge_pixels(object_map: np.ndarray, rgb: np.ndarray, colour_step: int) -> np.ndarray:
    """Flat indices of pixels whose object differs from a 4-neighbour's, or whose grey level
    differs from one by more than ``colour_step``: where one centre ray aliases."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.int16)
    changed = [
        (np.diff(object_map, axis=a) != 0) | (np.abs(np.diff(grey, axis=a)) > colour_step)
        for a in (0, 1)
    ]
    return np.flatnonzero(both_sides(changed[0], changed[1]))


def both_sides(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels (bool) on either side of a pair that differs: ``rows`` and ``cols`` are the
    ``np.diff(..., axis=0 / 1)``-shaped masks of differing neighbour pairs."""
    edge = np.zeros((rows.shape[0] + 1, rows.shape[1]), dtype=bool)
    edge[1:] |= rows
    edge[:-1] |= rows
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    return edge


def render(
    objects: list[RenderObject],
    K: np.ndarray,
    height: int,
    width: int,
    light: Light,
    background: tuple[np.ndarray, np.ndarray] | None = None,
    aa_samples: int = 0,
    surface_info: bool = False,
) -> RenderOutput:
    """Ray-cast ``objects`` through a pinhole camera at the origin (OpenCV optical frame).

    ``background`` is a (top colour, bottom colour) vertical gradient for pixels that hit nothing.
    Shading runs in float32 on the hit pixels only, as (3, n_hits) rows. ``object_pixels[i]``
    holds the sorted flat pixel indices where object ``i`` is visible.

    ``aa_samples`` > 0 anti-aliases the colour image: pixels on object or texture edges are
    shaded again with that many more sub-pixel rays and averaged with the centre (a real lens
    and sensor integrate over the pixel). Depth, masks and hit points stay those of the pixel
    centre, so the labels are unchanged. ``surface_info`` adds what a depth sensor model needs
    per pixel: the camera-facing normal, the grey albedo of the base colour (textures left out:
    printed patterns barely change a surface's infrared reflectance) and the gloss.
    """
    scene, tables = _scene_of(objects)
    K_key = tuple(float(v) for v in np.asarray(K, dtype=np.float64).ravel())
    rays, origins, rays_rows, view_rows = _camera_rays(K_key, height, width)
    shaded = _shade(scene, tables, objects, light, origins, rays, rays_rows, view_rows)
    hit_index = shaded.hit_index

    if background is None:
        background = (np.array([0.85, 0.85, 0.88]), np.array([0.55, 0.55, 0.6]))
    ramp = np.linspace(0.0, 1.0, height)[:, None]
    sky = (1 - ramp) * np.asarray(background[0]) + ramp * np.asarray(background[1])
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = (sky * 255 + 0.5).astype(np.uint8)[:, None, :]
    flat_rgb = rgb.reshape(-1, 3)
    for c in range(3):
        flat_rgb[hit_index, c] = _hit_colours(tables, shaded, c).astype(np.uint8)

    n_pix = height * width
    depth = np.zeros(n_pix, dtype=np.float32)
    depth[hit_index] = shaded.z
    part = np.full(n_pix, NO_HIT, dtype=np.int32)
    part[hit_index] = shaded.part
    out = RenderOutput(
        rgb=rgb,
        depth=depth.reshape(height, width),
        object_pixels=shaded.pixels,
        part=part.reshape(height, width),
        points=(rays * depth[:, None]).reshape(height, width, 3),
    )
    if aa_samples > 0 or surface_info:
        object_map = np.full(n_pix, NO_HIT, dtype=np.int32)
        object_map[hit_index] = shaded.g
        out.object_index = object_map.reshape(height, width)
    if surface_info:
        normal = np.zeros((n_pix, 3), dtype=np.float32)
        normal[hit_index] = (shaded.normals * shaded.flip).T
        albedo = np.zeros(n_pix, dtype=np.float32)
        cols = np.take(tables.colors, shaded.color_row, axis=1)
        albedo[hit_index] = 0.299 * cols[0] + 0.587 * cols[1] + 0.114 * cols[2]
        gloss = np.zeros(n_pix, dtype=np.float32)
        gloss[hit_index] = np.take(tables.specular, shaded.g)
        out.normal = normal.reshape(height, width, 3)
        out.albedo = albedo.reshape(height, width)
        out.gloss = gloss.reshape(height, width)
    if aa_samples > 0:
        _antialias(scene, tables, objects, light, K, out, sky, min(aa_samples, 4))
    return out


# Sub-pixel sample offsets beyond the pixel centre, in the order they are used: the two
# diagonal corners of a rotated grid first (with the centre, three samples per edge pixel),
# then the other two.
AA_OFFSETS = ((-0.25, -0.25), (0.25, 0.25), (0.25, -0.25), (-0.25, 0.25))


def _antialias(
    scene: rtcore_scene.EmbreeScene,
    tables: _SceneTables,
    objects: list[RenderObject],
    light: Light,
    K: np.ndarray,
    out: RenderOutput,
    sky: np.ndarray,
    n_extra: int,
) -> None:
    """Replace the colour of edge pixels by the mean of the centre sample and ``n_extra``
    sub-pixel samples (:data:`AA_OFFSETS`), in place."""
    height, width = out.depth.shape
    edges = _edge_pixels(out.object_index, out.rgb, colour_step=12)
    if not len(edges):
        return
    rows, cols = np.divmod(edges, width)
    offsets = np.array(AA_OFFSETS[:n_extra])
    u = (cols[:, None] + offsets[None, :, 0]).ravel()
    v = (rows[:, None] + offsets[None, :, 1]).ravel()
    K = np.asarray(K, dtype=np.float64)
    dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)])
    view = -dirs / np.linalg.norm(dirs, axis=0, keepdims=True)
    rays_rows = np.ascontiguousarray(dirs, dtype=np.float32)
    shaded = _shade(scene, tables, objects, light,
                    np.zeros((len(u), 3), dtype=np.float32),
                    np.ascontiguousarray(rays_rows.T), rays_rows,
                    np.ascontiguousarray(view, dtype=np.float32))
    # Sub-pixel rows of the sky gradient for the samples that miss everything.
    v_clip = np.clip(v, 0, height - 1)
    lo = np.floor(v_clip).astype(np.int64)
    hi = np.minimum(lo + 1, height - 1)
    frac = (v_clip - lo)[:, None]
    samples = ((1 - frac) * sky[lo] + frac * sky[hi]) * 255 + 0.5
    samples = samples.astype(np.float32)
    for c in range(3):
        samples[shaded.hit_index, c] = _hit_colours(tables, shaded, c)
    flat = out.rgb.reshape(-1, 3)
    total = samples.reshape(len(edges), n_extra, 3).sum(axis=1) - np.float32(0.5 * n_extra)
    total += flat[edges]  # the centre sample, already rounded
    flat[edges] = np.clip(np.round(total / np.float32(n_extra + 1)), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    """The 65536 standard-normal quantiles at probabilities (k + 0.5) / 65536, float32."""
    dist = statistics.NormalDist()
    return np.array([dist.inv_cdf((k + 0.5) / 65536) for k in range(65536)], dtype=np.float32)


def fast_normal(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 samples by inverse CDF of uniform 16-bit draws: ~5x faster than
    ``rng.standard_normal`` for image-sized noise; tails stop at 4.3 sigma, which sensor noise
    models do not miss. Deterministic for a given generator state."""
    return np.take(_normal_quantiles(), rng.integers(0, 65536, shape, dtype=np.uint16))


def clear_caches() -> None:
    """Drop the per-process caches (camera rays, normal quantiles)."""
    _camera_rays.cache_clear()
    _normal_quantiles.cache_clear()


def add_depth_noise(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structured-light-like depth: axial noise growing with z², holes at depth edges, dropouts.

    The axial noise model (sigma ~ 1.2 mm + 1.9 mm * (z - 0.4 m)²) is the Kinect figure of
    Nguyen et al. 2012. Invalid pixels are 0.
    """
    depth = np.asarray(depth, dtype=np.float32)
    out = depth.copy()
    h, w = depth.shape
    flat = out.reshape(-1)
    valid = np.flatnonzero(flat > 0)
    z = flat[valid]
    sigma = np.float32(0.0012) + np.float32(0.0019) * (z - np.float32(0.4)) ** 2
    flat[valid] = z + fast_normal(rng, len(valid)) * sigma
    # Holes along depth discontinuities, where structured-light sensors lose the pattern: a jump
    # of more than 2 cm to the left, right, upper or lower neighbour (edge pixels repeat).
    step = np.float32(0.02)
    jump = np.zeros((h, w), dtype=bool)
    horizontal = np.abs(np.diff(depth, axis=1)) > step
    jump[:, 1:] |= horizontal
    jump[:, :-1] |= horizontal
    vertical = np.abs(np.diff(depth, axis=0)) > step
    jump[1:] |= vertical
    jump[:-1] |= vertical
    edge = np.flatnonzero(jump)
    flat[edge[rng.random(len(edge)) < 0.6]] = 0.0
    # A few elliptical dropout blobs (specular or dark surfaces), each on its bounding window.
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, 15), rng.uniform(3, 15)
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, h)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, w)
        yy = ((np.arange(y0, y1) - cy) / ry) ** 2
        xx = ((np.arange(x0, x1) - cx) / rx) ** 2
        out[y0:y1, x0:x1][yy[:, None] + xx[None, :] < 1.0] = 0.0
    out[depth <= 0] = 0.0
    return out
