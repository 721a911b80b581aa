"""Procedural NOCS shape families: frame conventions, metric statistics, determinism, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from clipose_ros.categories import CATEGORIES, MEAN_SIZES_M, SYMMETRIC_CATEGORIES
from clipose_ros.data.shapes import (
    PART_BODY,
    PART_HANDLE,
    SEGMENTS,
    ShapeInstance,
    make_instance,
)

INDICES = (0, 1, 7)


@pytest.fixture(scope="module")
def instances() -> dict[tuple[str, int], ShapeInstance]:
    """One build per (category, index), shared by the frame and geometry checks."""
    return {(c, i): make_instance(c, "train", i) for c in CATEGORIES for i in INDICES}


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("index", INDICES)
def test_nocs_frame_and_metric_size(instances, category: str, index: int) -> None:
    inst = instances[category, index]
    low, high = inst.mesh.bounds
    assert np.abs((low + high) / 2.0).max() < 1e-6
    assert np.linalg.norm(high - low) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(inst.nocs_extents, high - low, atol=1e-12)
    np.testing.assert_allclose(inst.size, inst.scale * inst.nocs_extents, rtol=1e-12)
    assert inst.scale == pytest.approx(np.linalg.norm(inst.size), rel=1e-9)
    # Real category statistics: each metric extent within +-40 % of the category mean.
    ratio = inst.size / MEAN_SIZES_M[category]
    assert np.all(ratio > 0.6) and np.all(ratio < 1.4), ratio
    assert inst.part_ids.shape == (len(inst.mesh.faces),)
    assert set(np.unique(inst.part_ids)) <= {0, 1, 2}
    assert np.isfinite(inst.mesh.vertices).all()
    assert len(inst.mesh.faces) < 10_000
    assert inst.name == f"{category}_train_{index:04d}"
    # Objects rest on their bottom face: nothing pokes below the body's lowest point.
    body_low = inst.mesh.vertices[np.unique(inst.mesh.faces[inst.part_ids == PART_BODY])][:, 1]
    assert body_low.min() == pytest.approx(low[1], abs=1e-9)


@pytest.mark.parametrize("category", CATEGORIES)
def test_parts_are_closed_outward_and_plausible(instances, category: str) -> None:
    inst = instances[category, 0]
    components = inst.mesh.split(only_watertight=False)
    assert len(components) >= 1
    for part in components:
        assert part.is_watertight
        assert part.volume > 0.0  # outward normals
    assert (inst.mesh.area_faces > 1e-12).all()  # no degenerate triangles
    # Overlapping closed parts: the summed volume is positive and not far beyond the box.
    assert 0.0 < inst.mesh.volume < 1.2 * np.prod(inst.nocs_extents)


@pytest.mark.parametrize("category", CATEGORIES)
def test_rays_from_outside_hit_front_faces(instances, category: str) -> None:
    """What the renderer relies on: the first hit from outside is an outward-facing surface."""
    inst = instances[category, 1]
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = -2.0 * directions + rng.uniform(-0.1, 0.1, size=(400, 3))
    caster = trimesh.ray.ray_pyembree.RayMeshIntersector(inst.mesh)
    tri, ray = caster.intersects_id(origins, directions, multiple_hits=False)
    assert len(tri) > 300
    facing = np.einsum("ij,ij->i", inst.mesh.face_normals[tri], directions[ray])
    assert np.mean(facing < 0.0) > 0.99


@pytest.mark.parametrize("category", ["bowl", "mug"])
def test_open_top_shows_the_inside(instances, category: str) -> None:
    """A ray straight down the axis passes the rim and lands on the inner floor."""
    inst = instances[category, 0]
    body = inst.mesh.vertices[np.unique(inst.mesh.faces[inst.part_ids == PART_BODY])]
    axis_x, axis_z = (body[:, [0, 2]].min(0) + body[:, [0, 2]].max(0)) / 2.0
    caster = trimesh.ray.ray_pyembree.RayMeshIntersector(inst.mesh)
    locations, _, _ = caster.intersects_location(
        np.array([[axis_x, 2.0, axis_z]]), np.array([[0.0, -1.0, 0.0]]), multiple_hits=False
    )
    height = inst.nocs_extents[1]
    floor_height = locations[0, 1] - inst.mesh.bounds[0, 1]
    assert 0.0 < floor_height < 0.25 * height


def test_deterministic_and_splits_disjoint() -> None:
    a = make_instance("mug", "train", 3)
    b = make_instance("mug", "train", 3)
    np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
    np.testing.assert_array_equal(a.part_ids, b.part_ids)
    assert a.params == b.params and a.scale == b.scale
    train, test = make_instance("can", "train", 0), make_instance("can", "test", 0)
    assert train.name != test.name
    assert not np.allclose(train.size, test.size)
    other = make_instance("can", "train", 1)
    assert not np.allclose(train.size, other.size)


@pytest.mark.parametrize("category", sorted(SYMMETRIC_CATEGORIES))
def test_symmetric_categories_revolve_about_y(instances, category: str) -> None:
    inst = instances[category, 0]
    ext = inst.nocs_extents
    assert ext[0] == pytest.approx(ext[2], rel=1e-3)
    angle = 2.0 * np.pi / SEGMENTS
    rot = trimesh.transformations.rotation_matrix(angle, [0.0, 1.0, 0.0])[:3, :3]
    vertices = inst.mesh.vertices
    distance, _ = cKDTree(vertices).query(vertices @ rot.T)
    assert distance.max() < 1e-9


def test_mug_handle_at_plus_x(instances) -> None:
    for index in INDICES:
        inst = instances["mug", index]
        faces = inst.mesh.faces
        handle = inst.mesh.vertices[np.unique(faces[inst.part_ids == PART_HANDLE])]
        body = inst.mesh.vertices[np.unique(faces[inst.part_ids == PART_BODY])]
        assert len(handle) > 0
        body_centre = (body.min(0) + body.max(0)) / 2.0
        assert handle[:, 0].min() > body_centre[0]  # entirely on the +x side of the axis
        assert handle[:, 0].max() == pytest.approx(inst.mesh.bounds[1, 0], abs=1e-9)
        assert np.abs(handle[:, 2] - body_centre[2]).max() < 0.1  # in the x-y plane
        assert body_centre[1] - 0.5 < handle[:, 1].min() < handle[:, 1].max() < 0.5


def _surface(inst: ShapeInstance, count: int = 6000) -> np.ndarray:
    points, _ = trimesh.sample.sample_surface_even(inst.mesh, count, seed=0)
    return np.asarray(points)


MANY = range(40)  # geometry rules hold for every instance, not for one lucky draw


def test_cameras_look_along_x_with_their_width_along_z() -> None:
    with_lens = bare = 0
    for index in MANY:
        inst = make_instance("camera", "train", index)
        pts = _surface(inst)
        low, high = inst.mesh.bounds
        cut = 0.15 * (high[0] - low[0])
        front, back = pts[pts[:, 0] > high[0] - cut], pts[pts[:, 0] < low[0] + cut]

        def cross_section(slab: np.ndarray) -> float:
            return float(np.ptp(slab[:, 1]) * np.ptp(slab[:, 2]))

        if inst.params["has_lens"]:
            with_lens += 1
            # The narrow lens barrel is the +x end, the wide body the -x end.
            assert cross_section(front) < 0.6 * cross_section(back), index
        else:
            bare += 1
            assert inst.size[2] >= inst.size[0], index  # a bare body: wider (z) than deep (x)
        assert inst.size[2] > inst.size[1] * 0.9, index  # width along z, not x
    assert with_lens and bare, (with_lens, bare)


def test_laptops_hinge_along_z_at_the_minus_x_edge() -> None:
    for index in MANY:
        inst = make_instance("laptop", "train", index)
        pts = _surface(inst)
        low, high = inst.mesh.bounds
        lid = pts[pts[:, 1] > 0.0]  # upper half of the box: only the lid reaches up there
        assert lid[:, 0].max() < 0.0, index  # the lid rises from the -x edge
        assert np.ptp(lid[:, 2]) > 0.8 * (high[2] - low[2]), index  # the lid spans the width z
        # The lid is a slab whose x depends on y only (it contains the z direction, so the
        # hinge runs along z), and it meets the base at the base's -x edge.
        slope, offset = np.polyfit(lid[:, 1], lid[:, 0], 1)
        assert np.ptp(lid[:, 0] - (slope * lid[:, 1] + offset)) < 0.06, index
        base = pts[pts[:, 1] < low[1] + 0.02]
        hinge_x = slope * (low[1] + 0.02) + offset
        assert abs(hinge_x - base[:, 0].min()) < 0.05, (index, hinge_x, base[:, 0].min())


def test_mug_label_frame_is_on_the_body_axis_with_the_handle_at_plus_x() -> None:
    for index in MANY:
        inst = make_instance("mug", "train", index)
        shift, scale = inst.label_frame
        label = scale * (inst.mesh.vertices + shift)
        body = label[np.unique(inst.mesh.faces[inst.part_ids == PART_BODY])]
        handle = label[np.unique(inst.mesh.faces[inst.part_ids == PART_HANDLE])]
        assert abs(body[:, 0].min() + body[:, 0].max()) < 1e-6, index  # axis at x = 0
        assert handle[:, 0].min() > 0.0, index
        np.testing.assert_allclose(inst.label_extents, 2 * np.abs(label).max(0), atol=1e-12)
        assert np.linalg.norm(inst.label_extents) == pytest.approx(1.0, abs=1e-9)
        # Real proportions: the symmetric width is about the REAL275 mean mug width.
        sym_width = inst.label_extents[0] * inst.scale / scale
        assert 0.7 < sym_width / MEAN_SIZES_M["mug"][0] < 1.3, (index, sym_width)
    other = make_instance("bowl", "train", 0)
    assert other.label_frame[1] == 1.0 and not other.label_frame[0].any()


@pytest.mark.parametrize("category", CATEGORIES)
def test_intra_class_variation(category: str) -> None:
    extents = np.array([make_instance(category, "train", i).nocs_extents for i in range(10)])
    assert extents.std(axis=0).max() > 0.01
    sizes = np.array([make_instance(category, "test", i).size for i in range(10)])
    assert (sizes.std(axis=0) / sizes.mean(axis=0)).max() > 0.03


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="teapot"):
        make_instance("teapot", "train", 0)
    with pytest.raises(ValueError, match="val"):
        make_instance("mug", "val", 0)
    with pytest.raises(ValueError, match="-1"):
        make_instance("mug", "train", -1)
