"""Procedural shape families for the six NOCS categories, for the synthetic scene generator.

No CAD models can be downloaded here, so every object is built from a handful of shape parameters
drawn per instance. The draws are centred on the category mean metric sizes
(``categories.MEAN_SIZES_M``) so the synthetic data carries realistic size statistics, and the
shapes vary within a class (proportions, shoulders, handles, lids, opening angles) so a network
cannot learn one template per class.

Every mesh is returned in the NOCS canonical frame (DESIGN.md): y up, tight axis-aligned box
centred at the origin, box diagonal 1; ``scale`` turns it back into metres. Objects are unions of
closed parts (concatenated, never booleaned), each part a watertight surface with outward normals,
so ray casting from any side hits a sensible front face. Thin walls (bowl, mug, can rim, bottle
mouth) have an inner and an outer surface joined by a rounded or flat rim.

Conventions per category (metric construction, before normalisation):

- bottle, bowl, can, mug body: surfaces of revolution about y with ``SEGMENTS`` sections, so the
  symmetric categories are exactly invariant under a rotation of ``360 / SEGMENTS`` degrees.
- mug: handle on the +x side. Labels put the mug origin on the body axis (SPD convention,
  ``ShapeInstance.label_frame``); the mesh and the coordinate maps stay in the tight box.
- camera: lens along +x, body width along z, viewfinder hump and button on top, grip at +z.
  About one in five is a body without a lens, shallow in x (the real NOCS camera models).
- laptop: base slab in the x-z plane, hinge along z at the -x edge, lid rising from it (leaning
  further to -x past 90 degrees), typing edge at +x, width along z.

Camera and laptop are built in a construction frame (front along +z, width along x) and turned
by ``_FRONT_Z_TO_X`` (+90 degrees about y) into the NOCS frame.

Part ids per face: 0 = body, 1 = mug handle, 2 = detail parts (lens, cap, lid, buttons, ...).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

from clipose_ros.categories import CATEGORIES, CLASS_IDS, MEAN_SIZES_M
from clipose_ros.data.nocs_format import symmetric_label_frame

SPLITS: tuple[str, ...] = ("train", "test")
SEGMENTS = 64  # sections of every surface of revolution
PART_BODY, PART_HANDLE, PART_DETAIL = 0, 1, 2

# Fixed first entropy word: changing it reshuffles every synthetic object, so keep it stable.
_SEED_SALT = zlib.crc32(b"clipose_ros.data.shapes/v1")
# Revolve builds about z; this proper rotation maps (x, y, z) -> (x, z, -y), i.e. z onto y.
_Z_TO_Y = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# +90 degrees about y: (x, y, z) -> (z, y, -x); the construction frame's front (+z) becomes +x
# and its width (x) runs along z.
_FRONT_Z_TO_X = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

Part = tuple[trimesh.Trimesh, int]


@dataclass
class ShapeInstance:
    """One procedurally generated object, in NOCS units, with what is needed to render it."""

    category: str
    params: dict[str, float]  # drawn shape parameters, metres / radians / 0-1 flags
    mesh: trimesh.Trimesh  # NOCS canonical frame: y up, box centred at 0, box diagonal 1
    scale: float  # metres per NOCS unit: metric mesh = scale * mesh
    part_ids: np.ndarray  # (n_faces,) int, PART_BODY / PART_HANDLE / PART_DETAIL
    split: str = "train"
    index: int = 0

    @property
    def nocs_extents(self) -> np.ndarray:
        """Tight box extents in NOCS units (the ``gt_scales`` of the NOCS result files)."""
        return np.asarray(self.mesh.extents, dtype=np.float64)

    @property
    def size(self) -> np.ndarray:
        """Metric tight box extents in metres, ``scale * nocs_extents`` (DESIGN.md pose rule)."""
        return self.scale * self.nocs_extents

    @property
    def label_frame(self) -> tuple[np.ndarray, float]:
        """``(shift, scale)`` from the mesh's tight-box NOCS frame to the frame labels use.

        Identity for every category but mugs, whose labels (SPD convention) sit on the body
        axis with a symmetric box: ``p_label = scale * (p_nocs + shift)``.
        """
        if self.category != "mug":
            return np.zeros(3), 1.0
        return symmetric_label_frame(self.mesh.vertices)

    @property
    def label_extents(self) -> np.ndarray:
        """Extents of the labelled box in label units (the tight box but for mugs)."""
        if self.category != "mug":
            return self.nocs_extents
        shift, scale = self.label_frame
        return 2.0 * scale * np.abs(self.mesh.vertices + shift).max(axis=0)

    @property
    def name(self) -> str:
        """Model name as written to ``*_meta.txt``; unique per (category, split, index)."""
        return f"{self.category}_{self.split}_{self.index:04d}"


class _Params:
    """Random draws that are recorded as they are made, so every instance documents itself."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.values: dict[str, float] = {}

    def uniform(self, name: str, low: float, high: float) -> float:
        value = float(self.rng.uniform(low, high))
        self.values[name] = value
        return value

    def flag(self, name: str, probability: float) -> bool:
        value = bool(self.rng.random() < probability)
        self.values[name] = float(value)
        return value

    def set(self, name: str, value: float) -> float:
        self.values[name] = float(value)
        return float(value)

    def target_extents(self, category: str, spread: float = 0.15) -> np.ndarray:
        """Metric box around the category mean: one overall scale times a mild per-axis aspect.

        A shared factor keeps proportions plausible (a big mug is big in every direction), the
        aspect factor gives shape variety; together they span roughly +-25 % of the mean.
        """
        overall = self.uniform("size_factor", 1.0 - spread, 1.0 + spread)
        aspect = self.rng.uniform(0.9, 1.1, size=3)
        for axis, value in zip("xyz", aspect, strict=True):
            self.set(f"aspect_{axis}", value)
        return MEAN_SIZES_M[category] * overall * aspect


# --------------------------------------------------------------------------- geometry helpers


def _revolve(profile: list[np.ndarray] | np.ndarray) -> trimesh.Trimesh:
    """Revolve an (r, y) profile about the y axis.

    The profile must run counterclockwise around the solid in the (r, y) half-plane, e.g. from
    the axis outward along the bottom, up the outside, and back to the axis over the top: then
    the surface is closed (points on the axis merge) and its normals point outward.
    """
    points = np.vstack(profile).astype(np.float64)
    mesh = trimesh.creation.revolve(points, sections=SEGMENTS, transform=_Z_TO_Y)
    return _checked(mesh)


def _arc(centre: tuple[float, float], radius: float, a0: float, a1: float, n: int) -> np.ndarray:
    """Points of a circular arc in the profile plane, angles in radians from +r, endpoints kept."""
    angles = np.linspace(a0, a1, n)
    return np.column_stack(
        (centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles))
    )


def _box(low: np.ndarray | list[float], high: np.ndarray | list[float]) -> trimesh.Trimesh:
    """Axis-aligned box between two corners."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    transform = trimesh.transformations.translation_matrix((low + high) / 2.0)
    return trimesh.creation.box(extents=high - low, transform=transform)


def _chamfered_box(low: np.ndarray, high: np.ndarray, chamfer: float) -> trimesh.Trimesh:
    """Box with every edge bevelled by ``chamfer``: a cheap rounded-ish look (24-point hull)."""
    if chamfer <= 0.0:
        return _box(low, high)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    corners = []
    for sx in (0, 1):
        for sy in (0, 1):
            for sz in (0, 1):
                corner = np.where([sx, sy, sz], high, low)
                inward = np.where([sx, sy, sz], -chamfer, chamfer)
                for keep in range(3):  # pull the corner in along the two other axes
                    point = corner + inward
                    point[keep] = corner[keep]
                    corners.append(point)
    return _checked(trimesh.convex.convex_hull(np.array(corners)))


def _cylinder(p0: np.ndarray | list[float], p1: np.ndarray | list[float], radius: float,
              sections: int = 48) -> trimesh.Trimesh:
    """Closed cylinder between two axis points."""
    segment = np.array([p0, p1], dtype=np.float64)
    return _checked(trimesh.creation.cylinder(radius=radius, segment=segment, sections=sections))


def _tube(path: np.ndarray, binormal: np.ndarray, half_normal: float, half_binormal: float,
          ring: int = 16) -> trimesh.Trimesh:
    """Closed tube of elliptic cross-section swept along a planar path, ends capped.

    ``binormal`` is the normal of the path's plane; the cross-section has semi-axis
    ``half_normal`` in the plane and ``half_binormal`` across it (flat mug handles).
    """
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.cross(binormal[None, :], tangent)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    phi = np.linspace(0.0, 2.0 * np.pi, ring, endpoint=False)
    offsets = (half_normal * np.cos(phi)[None, :, None] * normal[:, None, :]
               + half_binormal * np.sin(phi)[None, :, None] * binormal[None, None, :])
    rings = (path[:, None, :] + offsets).reshape(-1, 3)
    n = len(path)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(ring), indexing="ij")
    a = i * ring + j
    b = i * ring + (j + 1) % ring
    c = a + ring
    d = b + ring
    faces = [np.column_stack((a.ravel(), b.ravel(), d.ravel())),
             np.column_stack((a.ravel(), d.ravel(), c.ravel()))]
    start, end = len(rings), len(rings) + 1
    jj = np.arange(ring)
    faces.append(np.column_stack((np.full(ring, start), (jj + 1) % ring, jj)))
    last = (n - 1) * ring
    faces.append(np.column_stack((np.full(ring, end), last + jj, last + (jj + 1) % ring)))
    vertices = np.vstack((rings, path[0], path[-1]))
    mesh = trimesh.Trimesh(vertices=vertices, faces=np.vstack(faces))
    mesh.fix_normals()  # one closed component: makes the winding consistent and outward
    return _checked(mesh)


def _checked(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Guard every part: finite vertices, closed, outward (positive volume)."""
    if not np.isfinite(mesh.vertices).all():
        raise RuntimeError("shape part has non-finite vertices")
    if mesh.is_watertight and mesh.volume < 0.0:
        mesh.invert()
    return mesh


# --------------------------------------------------------------------------- the six families


def _bottle(p: _Params) -> list[Part]:
    """Body with optional waist, smooth shoulder, neck; either a screw cap or an open mouth."""
    ext = p.target_extents("bottle")
    radius = p.set("body_radius", (ext[0] + ext[2]) / 4.0)
    height = p.set("height", ext[1])
    has_cap = p.flag("has_cap", 0.6)
    neck_radius = radius * p.uniform("neck_radius_ratio", 0.26, 0.45)
    p.set("neck_radius", neck_radius)
    cap_height = p.uniform("cap_height", 0.012, 0.026) if has_cap else 0.0
    neck_length = height * p.uniform("neck_length_ratio", 0.05, 0.2)
    shoulder = height * p.uniform("shoulder_ratio", 0.08, 0.28)
    shoulder_power = p.uniform("shoulder_power", 0.6, 1.6)
    waist = p.uniform("waist_depth", 0.0, 0.07)
    bevel = radius * p.uniform("bottom_bevel_ratio", 0.08, 0.2)
    punt = p.uniform("punt_depth", 0.0, 0.012)
    neck_top = height - cap_height
    shoulder_top = neck_top - neck_length
    body_top = shoulder_top - shoulder

    profile = [np.array([[0.0, punt], [0.7 * (radius - bevel), 0.0]])]
    profile.append(_arc((radius - bevel, bevel), bevel, -np.pi / 2, 0.0, 6))
    ys = np.linspace(bevel, body_top, 12)[1:]
    waist_shape = np.sin(np.pi * (ys - bevel) / (body_top - bevel)) ** 2
    profile.append(np.column_stack((radius * (1.0 - waist * waist_shape), ys)))
    u = np.linspace(0.0, 1.0, 12)[1:]
    blend = ((1.0 + np.cos(np.pi * u)) / 2.0) ** shoulder_power
    profile.append(np.column_stack((neck_radius + (radius - neck_radius) * blend,
                                    body_top + shoulder * u)))
    parts: list[Part] = []
    if has_cap:
        overlap = 0.4 * cap_height  # neck runs into the cap, no gap under it
        profile.append(np.array([[neck_radius, neck_top + overlap], [0.0, neck_top + overlap]]))
        cap_radius = neck_radius * p.uniform("cap_radius_ratio", 1.08, 1.3)
        cap_bevel = 0.15 * min(cap_radius, cap_height)
        cap = [np.array([[0.0, neck_top], [cap_radius, neck_top]])]
        cap.append(_arc((cap_radius - cap_bevel, height - cap_bevel), cap_bevel, 0.0, np.pi / 2, 4))
        cap.append(np.array([[0.0, height]]))
        parts.append((_revolve(cap), PART_DETAIL))
    else:
        lip_height = p.uniform("lip_height", 0.003, 0.007)
        lip_out = p.uniform("lip_out", 0.001, 0.003)
        wall = min(p.uniform("mouth_wall", 0.0015, 0.003), 0.4 * neck_radius)
        mouth_depth = min(p.uniform("mouth_depth", 0.01, 0.03), neck_length + 0.5 * shoulder)
        profile.append(np.array([
            [neck_radius, height - lip_height],
            [neck_radius + lip_out, height - lip_height + 0.3 * lip_out],
            [neck_radius + lip_out, height - 0.3 * lip_out],
            [neck_radius + 0.3 * lip_out, height],
            [neck_radius - wall, height],
            [neck_radius - wall, height - mouth_depth],
            [0.0, height - mouth_depth],
        ]))
    parts.insert(0, (_revolve(profile), PART_BODY))
    return parts


def _bowl(p: _Params) -> list[Part]:
    """Superellipse wall with real thickness, rounded rim, open top, foot ring underneath."""
    ext = p.target_extents("bowl")
    radius = p.set("rim_radius", (ext[0] + ext[2]) / 4.0)
    height = p.set("height", ext[1])
    wall = p.uniform("wall_thickness", 0.0025, 0.007)
    floor = wall * p.uniform("floor_ratio", 1.0, 1.6)
    power = p.uniform("wall_power", 1.6, 3.2)  # 2 = elliptic, larger = flatter floor
    foot_radius = radius * p.uniform("foot_radius_ratio", 0.32, 0.55)
    foot_height = p.uniform("foot_height", 0.003, 0.012)
    foot_width = p.uniform("foot_width", 0.0025, 0.006)
    top = height - wall / 2.0  # rim centre line

    def wall_curve(r_max: float, y0: float, theta: np.ndarray) -> np.ndarray:
        r = r_max * np.sin(theta) ** (2.0 / power)
        y = y0 + (top - y0) * (1.0 - np.cos(theta) ** (2.0 / power))
        return np.column_stack((r, y))

    theta = np.linspace(0.0, np.pi / 2, 18)
    outer = wall_curve(radius, foot_height, theta)
    inner = wall_curve(radius - wall, foot_height + floor, theta[::-1])
    rim = _arc((radius - wall / 2.0, top), wall / 2.0, 0.0, np.pi, 9)[1:-1]
    parts: list[Part] = [(_revolve([outer, rim, inner]), PART_BODY)]

    # The foot rises from the table into the bowl's wall, so no gap shows between them.
    fine = wall_curve(radius, foot_height, np.linspace(0.0, np.pi / 2, 400))
    foot_top = float(np.interp(foot_radius, fine[:, 0], fine[:, 1])) + 0.5 * floor
    inner_r = foot_radius - foot_width
    foot = np.array([[inner_r, 0.0], [foot_radius, 0.0], [foot_radius, foot_top],
                     [inner_r, foot_top], [inner_r, 0.0]])
    parts.append((_revolve(foot), PART_BODY))
    return parts


def _camera(p: _Params) -> list[Part]:
    """Body box (plain or bevelled), lens barrel at the front, grip bump, top hump, button.

    Built with the front along +z and the width along x, then turned so the lens points along
    +x and the width runs along z (the NOCS camera frame).
    """
    ext = p.target_extents("camera")[[2, 1, 0]]  # construction frame: width, height, depth
    grip_radius = p.uniform("grip_radius", 0.006, 0.014)
    width = p.set("body_width", ext[0] - grip_radius)
    hump_height = p.uniform("hump_height", 0.008, 0.022)
    body_height = p.set("body_height", ext[1] - hump_height)
    has_lens = p.flag("has_lens", 0.8)
    if has_lens:
        body_depth = p.set("body_depth", ext[2] * p.uniform("body_depth_ratio", 0.38, 0.6))
    else:  # a bare body: as deep as the mount and grip need, much shallower than wide
        body_depth = p.set("body_depth", ext[2] * p.uniform("body_depth_ratio", 0.55, 0.8))
    lens_length = p.set("lens_length", ext[2] - body_depth if has_lens else 0.0)
    rounded = p.flag("rounded_body", 0.6)
    chamfer = p.uniform("chamfer", 0.03, 0.12) * min(width, body_height, body_depth)
    body = _chamfered_box([-width / 2, 0.0, 0.0], [width / 2, body_height, body_depth],
                          chamfer if rounded else 0.0)
    parts: list[Part] = [(body, PART_BODY)]

    # Lens: mount ring (widest) at the body, barrel, slightly wider focus ring near the front.
    free = 0.5 * min(width, body_height)
    lens_radius = free * p.uniform("lens_radius_ratio", 0.55, 0.8)
    mount_radius = min(lens_radius * 1.12, 0.95 * free)
    slack_x = max(free - mount_radius, 0.0)
    lens_x = p.uniform("lens_offset_x", 0.0, 0.6) * slack_x
    lens_y = body_height / 2.0 + p.uniform("lens_offset_y", -0.5, 0.3) * max(
        body_height / 2.0 - mount_radius, 0.0)
    p.set("lens_radius", lens_radius)
    axis = (lens_x, lens_y)
    z0 = body_depth - 0.002
    if has_lens:
        z_mount = body_depth + 0.12 * lens_length
        z_ring = body_depth + p.uniform("focus_ring_pos", 0.45, 0.75) * lens_length
        ring_len = 0.18 * lens_length
        parts.append((_cylinder([*axis, z0], [*axis, z_mount], mount_radius), PART_DETAIL))
        parts.append((_cylinder([*axis, z0], [*axis, body_depth + lens_length], lens_radius),
                      PART_DETAIL))
        ring_radius = min(lens_radius * p.uniform("focus_ring_ratio", 1.02, 1.08), mount_radius)
        parts.append((_cylinder([*axis, z_ring], [*axis, min(z_ring + ring_len,
                                                               body_depth + lens_length)],
                                ring_radius), PART_DETAIL))
    else:  # body cap over the empty mount: a thin disc
        parts.append((_cylinder([*axis, z0], [*axis, body_depth + 0.004], mount_radius),
                      PART_DETAIL))

    # Grip: a vertical rounded bump on the -x face near the front.
    grip_z = body_depth - grip_radius - p.uniform("grip_inset", 0.0, 0.25) * body_depth
    grip_z = max(grip_z, grip_radius)
    grip_x = -width / 2.0 + 0.15 * grip_radius
    parts.append((_cylinder([grip_x, 0.08 * body_height, grip_z],
                            [grip_x, 0.9 * body_height, grip_z], grip_radius, 24), PART_BODY))

    # Viewfinder hump: a trapezoid prism on top, centred over the lens.
    hump_w = width * p.uniform("hump_width_ratio", 0.3, 0.5)
    hump_d = body_depth * p.uniform("hump_depth_ratio", 0.4, 0.75)
    hz0 = 0.5 * (body_depth - hump_d)
    hx = float(np.clip(lens_x, -width / 2 + hump_w / 2, width / 2 - hump_w / 2))
    y0, y1 = body_height - 0.003, body_height + hump_height
    base = [(hx - hump_w / 2, hz0), (hx + hump_w / 2, hz0), (hx - hump_w / 2, hz0 + hump_d),
            (hx + hump_w / 2, hz0 + hump_d)]
    top = [(hx - 0.3 * hump_w, hz0 + 0.2 * hump_d), (hx + 0.3 * hump_w, hz0 + 0.2 * hump_d),
           (hx - 0.3 * hump_w, hz0 + 0.8 * hump_d), (hx + 0.3 * hump_w, hz0 + 0.8 * hump_d)]
    hull = [(x, y0, z) for x, z in base] + [(x, y1, z) for x, z in top]
    parts.append((_checked(trimesh.convex.convex_hull(np.array(hull))), PART_DETAIL))

    # Shutter button on the top, on the grip side, lower than the hump.
    button_r = p.uniform("button_radius", 0.003, 0.006)
    button_h = min(p.uniform("button_height", 0.002, 0.005), 0.8 * hump_height)
    bx = -width / 2 + max(0.18 * width, button_r + 0.002)
    bz = body_depth - max(0.2 * body_depth, button_r + 0.002)
    parts.append((_cylinder([bx, body_height - 0.002, bz], [bx, body_height + button_h, bz],
                            button_r, 20), PART_DETAIL))
    return _turned(parts)


def _turned(parts: list[Part]) -> list[Part]:
    """Construction frame (front +z, width x) -> NOCS frame (front +x, width z)."""
    for part, _ in parts:
        part.apply_transform(_FRONT_Z_TO_X)
    return parts


def _can(p: _Params) -> list[Part]:
    """Closed cylinder with narrower lips top and bottom, domed base, recessed lid, thick rim."""
    ext = p.target_extents("can")
    radius = p.set("radius", (ext[0] + ext[2]) / 4.0)
    height = p.set("height", ext[1])
    lip_radius = radius - p.uniform("lip_inset", 0.0015, 0.005)
    rim_height = p.uniform("rim_height", 0.0015, 0.0035)
    rim_wall = p.uniform("rim_thickness", 0.0008, 0.0018)
    recess = p.uniform("lid_recess", 0.003, 0.007)
    taper_top = rim_height + p.uniform("top_taper", 0.004, 0.014)
    taper_bottom = p.uniform("bottom_taper", 0.004, 0.012)
    dome = p.uniform("bottom_dome", 0.002, 0.01)
    profile = np.array([
        [0.0, dome],
        [0.8 * lip_radius, 0.0],
        [lip_radius, 0.0015],
        [radius, taper_bottom],
        [radius, height - taper_top],
        [lip_radius, height - rim_height],
        [lip_radius, height],
        [lip_radius - rim_wall, height],
        [lip_radius - rim_wall, height - recess],
        [0.0, height - recess],
    ])
    return [(_revolve(profile), PART_BODY)]


def _laptop(p: _Params) -> list[Part]:
    """Base slab, lid slab hinged on the base's back edge, keyboard deck, screen panel.

    Built with the hinge along x at the -z edge, then turned so the hinge runs along z at the -x
    edge and the typing edge is at +x (the NOCS laptop frame).
    """
    # Laptops vary less in size than in opening angle, and the angle sets the y / depth
    # proportions. Construction frame: x = width (NOCS z), z = depth (NOCS x).
    ext = p.target_extents("laptop", spread=0.08)[[2, 1, 0]]
    width = p.set("width", ext[0])
    base_t = p.uniform("base_thickness", 0.012, 0.024)
    lid_ratio = p.uniform("lid_length_ratio", 0.85, 1.0)
    lid_t = p.uniform("lid_thickness", 0.005, 0.01)
    angle = np.radians(p.uniform("hinge_angle_deg", 75.0, 135.0))
    # Box y ~ base_t + lid sin(angle), z ~ depth + lid max(0, -cos(angle)). The REAL275 mean box
    # (z / y ~ 1.7) implies wide-open lids; no single depth hits both mean extents at every angle
    # (an upright full-length lid makes y ~ z), so blend the two depths that would, in log space,
    # leaning on y: per instance y stays within about +-35 % and z within -35 % of the mean.
    mean_y, mean_z = MEAN_SIZES_M["laptop"][[1, 0]] * p.values["size_factor"]
    depth_for_z = mean_z / (1.0 + lid_ratio * max(0.0, -np.cos(angle)))
    depth_for_y = (mean_y - base_t) / (lid_ratio * np.sin(angle))
    depth = p.set("base_depth", float(depth_for_z**0.4 * depth_for_y**0.6))
    lid_len = p.set("lid_length", depth * lid_ratio)
    rounded = p.flag("rounded_base", 0.5)
    chamfer = 0.3 * base_t if rounded else 0.0
    parts: list[Part] = [
        (_chamfered_box([-width / 2, 0.0, -depth / 2], [width / 2, base_t, depth / 2], chamfer),
         PART_BODY)
    ]
    # Keyboard deck and trackpad: thin plates just proud of the base top.
    kb_w = width * p.uniform("keyboard_width_ratio", 0.78, 0.9)
    kb_z0 = -depth / 2 + depth * p.uniform("keyboard_back_margin", 0.06, 0.12)
    kb_z1 = kb_z0 + depth * p.uniform("keyboard_depth_ratio", 0.38, 0.48)
    parts.append((_box([-kb_w / 2, base_t - 0.001, kb_z0], [kb_w / 2, base_t + 0.0008, kb_z1]),
                  PART_DETAIL))
    pad_w = width * p.uniform("trackpad_width_ratio", 0.25, 0.4)
    pad_z0 = kb_z1 + 0.04 * depth
    pad_z1 = min(pad_z0 + depth * 0.3, depth / 2 - 0.04 * depth)
    parts.append((_box([-pad_w / 2, base_t - 0.001, pad_z0], [pad_w / 2, base_t + 0.0005, pad_z1]),
                  PART_DETAIL))

    # Lid built standing up (hinge at origin, height along +y, screen face at +z), then rotated
    # about x by 90 deg - angle: angle > 90 leans it back (-z), < 90 tilts it forward.
    margin = p.uniform("bezel", 0.008, 0.02)
    lid = _box([-width / 2, 0.0, 0.0], [width / 2, lid_len, lid_t])
    screen = _box([-width / 2 + margin, margin, lid_t - 0.001],
                  [width / 2 - margin, lid_len - margin, lid_t + 0.0006])
    hinge = trimesh.transformations.translation_matrix([0.0, base_t, -depth / 2])
    hinge = hinge @ trimesh.transformations.rotation_matrix(np.pi / 2 - angle, [1.0, 0.0, 0.0])
    for part in (lid, screen):
        part.apply_transform(hinge)
        parts.append((part, PART_DETAIL))
    return _turned(parts)


def _mug(p: _Params) -> list[Part]:
    """Slightly tapered thick-walled cup, open top, rounded rim, D-shaped handle at +x."""
    ext = p.target_extents("mug")
    radius = p.set("radius", ext[2] / 2.0)  # z extent is the plain diameter
    height = p.set("height", ext[1])
    # The mean x extent is the label's symmetric box (SPD convention): the handle counts on
    # both sides of the body axis, so it reaches out (x / 2 - radius), about 1.6 cm on average.
    handle_out = p.set("handle_reach", max(ext[0] / 2.0 - radius, 0.012))
    bottom_radius = radius * p.uniform("taper_ratio", 0.84, 1.0)
    wall = p.uniform("wall_thickness", 0.003, 0.006)
    floor = p.uniform("floor_thickness", 0.005, 0.01)
    bevel = p.uniform("bottom_bevel", 0.002, 0.006)
    fillet = p.uniform("inner_fillet", 0.002, 0.006)
    top = height - wall / 2.0
    inner_bottom = bottom_radius - wall
    profile = [np.array([[0.0, 0.0]])]
    profile.append(_arc((bottom_radius - bevel, bevel), bevel, -np.pi / 2, 0.0, 6))
    profile.append(_arc((radius - wall / 2, top), wall / 2, 0.0, np.pi, 9))
    profile.append(_arc((inner_bottom - fillet, floor + fillet), fillet, 0.0, -np.pi / 2, 6))
    profile.append(np.array([[0.0, floor]]))
    parts: list[Part] = [(_revolve(profile), PART_BODY)]

    # Handle: superellipse arc in the x-y plane from the wall (mid-thickness) out to +x and back.
    half_in_plane = p.uniform("handle_thickness", 0.0035, 0.0065)
    half_across = half_in_plane * p.uniform("handle_flatness", 1.0, 1.8)
    span = p.uniform("handle_span_ratio", 0.45, 0.7) * height
    centre_y = height * p.uniform("handle_height_ratio", 0.47, 0.56)
    centre_y = float(np.clip(centre_y, span / 2 + half_in_plane + 0.004,
                             height - span / 2 - half_in_plane - 0.004))
    span = min(span, 2.0 * (min(centre_y, height - centre_y) - half_in_plane - 0.002))
    p.set("handle_span", span)
    squareness = p.uniform("handle_squareness", 2.0, 4.0)
    s = np.linspace(-np.pi / 2, np.pi / 2, 33)
    e = 2.0 / squareness
    ys = centre_y + span / 2 * np.sign(np.sin(s)) * np.abs(np.sin(s)) ** e
    wall_r = bottom_radius + (radius - bottom_radius) * ys / top - wall / 2
    reach = radius + handle_out - half_in_plane - float(np.interp(centre_y, ys, wall_r))
    xs = wall_r + reach * np.abs(np.cos(s)) ** e
    path = np.column_stack((xs, ys, np.zeros_like(xs)))
    handle = _tube(path, np.array([0.0, 0.0, 1.0]), half_in_plane, half_across)
    parts.append((handle, PART_HANDLE))
    return parts


_BUILDERS: dict[str, Callable[[_Params], list[Part]]] = {
    "bottle": _bottle,
    "bowl": _bowl,
    "camera": _camera,
    "can": _can,
    "laptop": _laptop,
    "mug": _mug,
}


# --------------------------------------------------------------------------- public API


def instance_seed(category: str, split: str, index: int) -> np.random.SeedSequence:
    """Seed of one instance: stable across runs and machines (no salted ``hash()``).

    The split is its own entropy word, so train and test instances come from disjoint streams.
    """
    _validate(category, split, index)
    return np.random.SeedSequence(
        [_SEED_SALT, CLASS_IDS[category], SPLITS.index(split), int(index)]
    )


def make_instance(category: str, split: str, index: int) -> ShapeInstance:
    """Build instance ``index`` of ``category`` in ``split``; the same arguments, the same shape."""
    params = _Params(np.random.default_rng(instance_seed(category, split, index)))
    parts = _BUILDERS[category](params)
    mesh = trimesh.util.concatenate([part for part, _ in parts])
    part_ids = np.concatenate(
        [np.full(len(part.faces), pid, dtype=np.int64) for part, pid in parts]
    )
    # NOCS normalisation: tight box centred at the origin, box diagonal 1 (= the metric scale).
    low, high = mesh.bounds
    mesh.apply_translation(-(low + high) / 2.0)
    scale = float(np.linalg.norm(high - low))
    mesh.apply_scale(1.0 / scale)
    return ShapeInstance(
        category=category,
        params=params.values,
        mesh=mesh,
        scale=scale,
        part_ids=part_ids,
        split=split,
        index=int(index),
    )


def _validate(category: str, split: str, index: int) -> None:
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
