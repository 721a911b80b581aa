"""NocsInstanceDataset on an analytic NOCS-format scene: boxes of known pose, ray-traced depth.

Every visible point of a box lies on the box surface, so a sample's points mapped back into
NOCS space with the sample's labels, ``R^T (p - t) / s``, must lie on the surface of the NOCS box
``[-e/2, e/2]``, up to the millimetre quantisation of the depth PNG. That holds for the raw labels
and must keep holding after the pose and scale augmentations have updated them.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clipose_ros.categories import CAMERA_INTRINSICS, MEAN_SIZES_M, REAL_INTRINSICS
from clipose_ros.data.augment import AugmentConfig
from clipose_ros.data.dataset import CLIP_MEAN, CLIP_STD, NocsInstanceDataset
from clipose_ros.data.nocs_format import (
    FrameLabel,
    NocsFormatError,
    encode_coord,
    write_label,
    write_meta,
)
from clipose_ros.geometry import pixel_rays, rotation_about_axis

H, W = 480, 640
FLIP = np.diag([-1.0, -1.0, 1.0])


def unit_extents(*e: float) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    return e / np.linalg.norm(e)  # tight NOCS box: diagonal 1


@dataclass
class Box:
    instance_id: int
    class_id: int
    model: str
    R: np.ndarray
    t: np.ndarray
    s: float
    extents: np.ndarray
    color: tuple[int, int, int]
    handle: int = 1


BOX_A = Box(  # camera: asymmetric, tilted so three faces are visible
    1,
    3,
    "cam_a",
    rotation_about_axis([1, 1, 0.3], np.radians(35)),
    np.array([-0.12, 0.02, 0.75]),
    0.25,
    unit_extents(0.5, 0.65, 0.55),
    (200, 30, 30),
)
BOX_B = Box(  # bottle: symmetric about y
    2,
    1,
    "bottle_b",
    rotation_about_axis([0, 0, 1], np.radians(20)) @ rotation_about_axis([1, 0, 0], 0.3),
    np.array([0.15, -0.02, 0.8]),
    0.22,
    unit_extents(0.3, 0.9, 0.3),
    (30, 200, 30),
)
BOX_TINY = Box(  # mug far away: a handful of pixels, below min_points
    3,
    6,
    "mug_tiny",
    rotation_about_axis([0, 1, 0], 0.5),
    np.array([0.05, -0.3, 1.4]),
    0.008,
    unit_extents(0.6, 0.4, 0.5),
    (30, 30, 200),
    handle=0,
)


def write_frame(
    prefix: Path,
    boxes: list[Box],
    K: np.ndarray = CAMERA_INTRINSICS,
    convention: str = "opencv",
    label_K: np.ndarray | None = None,
    with_extents: bool = True,
    extra_label_ids: tuple[int, ...] = (),
) -> dict[int, np.ndarray]:
    """Ray-trace the boxes, write all six NOCS files; returns each instance's depth pixels."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rays = pixel_rays(K, H, W)  # z component 1, so the ray parameter is the depth
    depth = np.full((H, W), np.inf)
    mask = np.full((H, W), 255, np.uint8)
    color = np.full((H, W, 3), 40, np.uint8)
    coord = np.zeros((H, W, 3))
    for box in boxes:
        d = rays @ box.R / box.s  # ray directions in NOCS units: R^T d / s
        o = -(box.R.T @ box.t) / box.s
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-box.extents / 2 - o) / d
            t2 = (box.extents / 2 - o) / d
        near = np.minimum(t1, t2).max(-1)
        far = np.maximum(t1, t2).min(-1)
        hit = (near <= far) & (near > 0) & (near < depth)
        depth[hit] = near[hit]
        mask[hit] = box.instance_id
        color[hit] = box.color
        coord[hit] = o + near[hit, None] * d[hit]
    depth_mm = np.where(np.isfinite(depth), np.round(depth * 1000), 0).astype(np.uint16)
    cv2.imwrite(f"{prefix}_color.png", color[:, :, ::-1])
    cv2.imwrite(f"{prefix}_depth.png", depth_mm)
    cv2.imwrite(f"{prefix}_mask.png", mask)
    cv2.imwrite(f"{prefix}_coord.png", encode_coord(coord))
    write_meta(prefix, [(b.instance_id, b.class_id, b.model) for b in boxes])
    bboxes = []
    for box in boxes:
        rows, cols = np.nonzero(mask == box.instance_id)
        bboxes.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
    flip = FLIP if convention == "nocs_flipped" else np.eye(3)
    label = FrameLabel(
        instance_ids=np.array([b.instance_id for b in boxes] + list(extra_label_ids)),
        class_ids=np.array([b.class_id for b in boxes] + [1] * len(extra_label_ids)),
        bboxes=np.array(bboxes + [[0, 0, 10, 10]] * len(extra_label_ids)),
        scales=np.array([b.s for b in boxes] + [0.1] * len(extra_label_ids)),
        rotations=np.array([flip @ b.R for b in boxes] + [np.eye(3)] * len(extra_label_ids)),
        translations=np.array([flip @ b.t for b in boxes] + [[0, 0, 1.0]] * len(extra_label_ids)),
        model_list=[b.model for b in boxes] + ["ghost"] * len(extra_label_ids),
        handle_visibility=np.array([b.handle for b in boxes] + [1] * len(extra_label_ids)),
        nocs_extents=(
            np.array([b.extents for b in boxes] + [[0.5, 0.5, 0.5]] * len(extra_label_ids))
            if with_extents
            else None
        ),
        camera_convention=convention,
        extra={} if label_K is None else {"K": label_K},
    )
    write_label(prefix, label)
    return {b.instance_id: depth_mm[mask == b.instance_id] / 1000.0 for b in boxes}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    root = tmp_path_factory.mktemp("nocs")
    depths = write_frame(root / "scene_1" / "0000", [BOX_A, BOX_B, BOX_TINY])
    return root, depths


def index_of(ds: NocsInstanceDataset, instance_id: int) -> int:
    return int(np.flatnonzero(ds._instance_id == instance_id)[0])


def to_nocs(sample: dict) -> np.ndarray:
    p = sample["points"].double().numpy()
    R, t = sample["R"].double().numpy(), sample["t"].double().numpy()
    return (p - t) @ R / float(sample["s"])


def assert_on_box_surface(sample: dict, extra_tol_m: float = 0.0) -> None:
    """Points inside the NOCS box and each on one of its faces (depth is mm-quantised)."""
    nocs = to_nocs(sample)
    half = sample["nocs_extents"].double().numpy() / 2
    tol = (0.0006 + extra_tol_m) / float(sample["s"])  # 0.5 mm depth rounding along the ray
    assert np.all(np.abs(nocs) <= half + tol)
    gap_to_nearest_face = np.min(half - np.abs(nocs), axis=1)
    assert np.all(np.abs(gap_to_nearest_face) <= tol)


def all_on(**overrides) -> AugmentConfig:
    probs = dict(erosion_prob=1.0, jitter_prob=1.0, pose_prob=1.0, scale_prob=1.0)
    return AugmentConfig.preset(True, **{**probs, **overrides})


def test_sample_shapes_dtypes_and_values(scene):
    root, depths = scene
    ds = NocsInstanceDataset(root)
    assert len(ds) == 3  # lazy filtering: the tiny instance is still indexed
    a = ds[index_of(ds, BOX_A.instance_id)]
    p = a["points"]
    assert p.shape == (1028, 3) and p.dtype == torch.float32
    assert torch.isfinite(p).all()
    zs = depths[BOX_A.instance_id]
    assert zs.min() - 1e-6 <= p[:, 2].min() and p[:, 2].max() <= zs.max() + 1e-6
    assert len(zs) > 1028 and len(torch.unique(p, dim=0)) == 1028  # without replacement
    assert int(a["num_valid_points"]) == len(zs)

    crop = a["rgb_crop"]
    assert crop.shape == (3, 224, 224) and crop.dtype == torch.float32
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    assert torch.all(crop >= -mean / std - 1e-5) and torch.all(crop <= (1 - mean) / std + 1e-5)
    expected = (torch.tensor(BOX_A.color) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(
        CLIP_STD
    )
    torch.testing.assert_close(crop[:, 112, 112], expected, atol=1e-3, rtol=0)

    assert a["class_id"].item() == 3 and a["class_name"] == "camera"
    R = a["R"].double()
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1.0) < 1e-6
    np.testing.assert_allclose(a["R"].numpy(), BOX_A.R, atol=1e-6)
    np.testing.assert_allclose(a["t"].numpy(), BOX_A.t, atol=1e-6)
    assert a["s"].item() == pytest.approx(BOX_A.s)
    np.testing.assert_allclose(a["size"].numpy(), BOX_A.s * BOX_A.extents, atol=1e-6)
    np.testing.assert_allclose(a["nocs_extents"].numpy(), BOX_A.extents, atol=1e-6)
    np.testing.assert_allclose(a["mean_size"].numpy(), MEAN_SIZES_M["camera"], atol=1e-7)
    np.testing.assert_allclose(a["K"].numpy(), CAMERA_INTRINSICS, atol=1e-4)
    assert not a["symmetric"].item() and a["handle_visible"].item()
    assert a["instance_id"].item() == 1 and a["frame"].endswith("scene_1/0000")
    assert a["model_name"] == "cam_a"

    b = ds[index_of(ds, BOX_B.instance_id)]
    assert b["class_id"].item() == 1 and b["symmetric"].item()


def test_points_lie_on_the_labelled_nocs_box(scene):
    root, _ = scene
    ds = NocsInstanceDataset(root)
    for iid in (BOX_A.instance_id, BOX_B.instance_id):
        assert_on_box_surface(ds[index_of(ds, iid)])


def test_with_replacement_when_few_points(scene):
    root, depths = scene
    ds = NocsInstanceDataset(root, num_points=20000, load_rgb=False)
    sample = ds[index_of(ds, BOX_B.instance_id)]
    assert sample["points"].shape == (20000, 3) and "rgb_crop" not in sample
    unique, count = len(torch.unique(sample["points"], dim=0)), len(depths[BOX_B.instance_id])
    assert 0.85 * count < unique <= count  # 20000 draws with replacement cover ~91 %


def test_pose_and_scale_augmentation_update_labels_consistently(scene):
    root, _ = scene
    ds = NocsInstanceDataset(root, augment=all_on(point_jitter=False, mask_erosion=False))
    for box in (BOX_A, BOX_B):
        i = index_of(ds, box.instance_id)
        for epoch in range(4):
            ds.set_epoch(epoch)
            sample = ds[i]
            assert_on_box_surface(sample)
            R = sample["R"].double().numpy()
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
            assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
            angle = np.degrees(np.arccos(np.clip((np.trace(R @ box.R.T) - 1) / 2, -1, 1)))
            assert 0.0 < angle <= 5.0 + 1e-4
            assert 0 < np.abs(sample["t"].numpy() - box.t).max() <= 0.005 + 1e-6
            e, s = sample["nocs_extents"].double().numpy(), sample["s"].item()
            assert s != pytest.approx(box.s, abs=1e-6)
            assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-6)  # NOCS normalisation kept
            np.testing.assert_allclose(sample["size"].numpy(), s * e, rtol=1e-5)
            k = sample["size"].double().numpy() / (box.s * box.extents)  # per-axis factors
            assert np.all((k >= 0.8 - 1e-5) & (k <= 1.2 + 1e-5))
            if box is BOX_B:  # symmetric about y: x and z stretched alike
                assert k[0] == pytest.approx(k[2], rel=1e-5)


def test_jitter_is_bounded_and_leaves_labels(scene):
    root, _ = scene
    clean = NocsInstanceDataset(root, augment=all_on(point_jitter=False), seed=3)
    noisy = NocsInstanceDataset(root, augment=all_on(), seed=3)
    i = index_of(clean, BOX_A.instance_id)
    a, b = clean[i], noisy[i]
    for key in ("R", "t", "s", "size"):
        assert torch.equal(a[key], b[key])
    diff = (b["points"] - a["points"]).abs()
    assert diff.max().item() <= 0.005 + 1e-6 and diff.mean().item() > 1e-4
    assert_on_box_surface(b, extra_tol_m=0.005 * np.sqrt(3))


def test_mask_erosion_shrinks_the_instance(scene):
    root, depths = scene
    ds = NocsInstanceDataset(root, augment=AugmentConfig(mask_erosion=True, erosion_prob=1.0))
    i = index_of(ds, BOX_A.instance_id)
    sample = ds[i]
    full = len(depths[BOX_A.instance_id])
    assert 50 <= sample["num_valid_points"].item() < full
    assert_on_box_surface(sample)


def test_tiny_instance_skipped_lazily_and_counted(scene):
    root, _ = scene
    ds = NocsInstanceDataset(root, min_points=50)
    tiny = index_of(ds, BOX_TINY.instance_id)
    sample = ds[tiny]
    assert sample["index"].item() == tiny
    assert sample["source_index"].item() != tiny
    assert sample["instance_id"].item() in (BOX_A.instance_id, BOX_B.instance_id)
    assert ds.skipped["too_few_points"] == 1
    again = ds[tiny]  # cached as bad, not counted twice, same replacement
    assert ds.skipped["too_few_points"] == 1
    assert again["source_index"].item() == sample["source_index"].item()
    fresh = NocsInstanceDataset(root, min_points=50)[tiny]
    assert torch.equal(fresh["points"], sample["points"])


def test_tiny_instance_skipped_at_index_time(scene):
    root, _ = scene
    ds = NocsInstanceDataset(root, min_points=50, prefilter_points=True)
    assert len(ds) == 2
    assert ds.skipped == {"too_few_points": 1}
    assert sorted(ds._instance_id.tolist()) == [BOX_A.instance_id, BOX_B.instance_id]
    assert len(NocsInstanceDataset(root, min_points=1, prefilter_points=True)) == 3


def test_reproducible_per_seed_and_epoch(scene):
    root, _ = scene
    cfg = all_on()
    i = index_of(NocsInstanceDataset(root), BOX_A.instance_id)
    one, two = NocsInstanceDataset(root, augment=cfg), NocsInstanceDataset(root, augment=cfg)
    a, b = one[i], two[i]
    for key in ("points", "R", "t", "s", "size", "rgb_crop"):
        assert torch.equal(a[key], b[key]), key
    one.set_epoch(1)
    c = one[i]
    assert not torch.equal(a["points"], c["points"]) and not torch.equal(a["R"], c["R"])
    d = NocsInstanceDataset(root, augment=cfg, seed=1)[i]
    assert not torch.equal(a["R"], d["R"])
    train = NocsInstanceDataset(root, train=True)
    assert train.augment.pose_perturbation and train.augment.scale_perturbation
    assert not NocsInstanceDataset(root).augment.any_enabled


def test_default_collate(scene):
    root, _ = scene
    ds = NocsInstanceDataset(root, prefilter_points=True)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["points"].shape == (2, 1028, 3) and batch["rgb_crop"].shape == (2, 3, 224, 224)
    assert batch["R"].shape == (2, 3, 3) and batch["symmetric"].dtype == torch.bool
    assert len(batch["frame"]) == 2


def test_intrinsics_precedence(tmp_path):
    K_file = np.array([[500.0, 0, 300.0], [0, 510.0, 250.0], [0, 0, 1]])
    K_label = np.array([[620.0, 0, 330.0], [0, 615.0, 230.0], [0, 0, 1]])
    write_frame(tmp_path / "s_file" / "0000", [BOX_A], K=K_file)
    np.savetxt(tmp_path / "s_file" / "intrinsics.txt", K_file)
    # The label's K wins over the folder's (deliberately wrong) intrinsics.txt.
    write_frame(tmp_path / "s_label" / "0000", [BOX_A], K=K_label, label_K=K_label)
    np.savetxt(tmp_path / "s_label" / "intrinsics.txt", K_file)
    write_frame(tmp_path / "s_default" / "0000", [BOX_A], K=REAL_INTRINSICS)
    ds = NocsInstanceDataset(tmp_path, intrinsics="real")
    expected = {"s_file": K_file, "s_label": K_label, "s_default": REAL_INTRINSICS}
    assert len(ds) == 3
    for i in range(3):
        sample = ds[i]
        K = expected[Path(sample["frame"]).parent.name]
        np.testing.assert_allclose(sample["K"].numpy(), K, atol=1e-4)
        assert_on_box_surface(sample)  # only true when the right K back-projected the depth


def test_nocs_flipped_labels_converted(tmp_path):
    write_frame(tmp_path / "s" / "0000", [BOX_A], convention="nocs_flipped")
    with open(tmp_path / "s" / "0000_label.pkl", "rb") as f:
        assert not np.allclose(pickle.load(f)["translations"][0], BOX_A.t)
    sample = NocsInstanceDataset(tmp_path)[0]
    np.testing.assert_allclose(sample["R"].numpy(), BOX_A.R, atol=1e-6)
    np.testing.assert_allclose(sample["t"].numpy(), BOX_A.t, atol=1e-6)
    assert_on_box_surface(sample)


def test_model_extents_for_labels_without_nocs_extents(tmp_path):
    write_frame(tmp_path / "s" / "0000", [BOX_A], with_extents=False)
    with pytest.raises(NocsFormatError, match=r"0000_label\.pkl.*cam_a"):
        NocsInstanceDataset(tmp_path)
    ds = NocsInstanceDataset(tmp_path, model_extents={"cam_a": BOX_A.extents})
    np.testing.assert_allclose(ds[0]["nocs_extents"].numpy(), BOX_A.extents, atol=1e-6)
    assert_on_box_surface(ds[0])


def test_spd_size_key_used_as_extents(tmp_path):
    write_frame(tmp_path / "s" / "0000", [BOX_A], with_extents=False)
    path = tmp_path / "s" / "0000_label.pkl"
    with open(path, "rb") as f:
        raw = pickle.load(f)
    raw["size"] = BOX_A.extents[None] * 1.0  # SPD test labels: NOCS model extents per instance
    with open(path, "wb") as f:
        pickle.dump(raw, f)
    ds = NocsInstanceDataset(tmp_path, model_extents={"cam_a": [1.0, 1.0, 1.0]})
    np.testing.assert_allclose(ds[0]["nocs_extents"].numpy(), BOX_A.extents, atol=1e-6)


def test_category_filter(scene):
    root, _ = scene
    assert len(NocsInstanceDataset(root, categories=["bottle"])) == 1
    assert len(NocsInstanceDataset(root, categories=[3, 6])) == 2


@pytest.fixture
def corrupt_copy(scene, tmp_path) -> Path:
    root, _ = scene
    shutil.copytree(root, tmp_path / "root")
    return tmp_path / "root"


def test_truncated_color_png(corrupt_copy):
    path = corrupt_copy / "scene_1" / "0000_color.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = NocsInstanceDataset(corrupt_copy)  # index building reads no images
    with pytest.raises(NocsFormatError, match=r"0000_color\.png"):
        ds[0]


def test_garbage_label_pickle(corrupt_copy):
    (corrupt_copy / "scene_1" / "0000_label.pkl").write_bytes(b"\x80\x04garbage, not a pickle")
    with pytest.raises(NocsFormatError, match=r"0000_label\.pkl"):
        NocsInstanceDataset(corrupt_copy)


def test_inconsistent_label_shapes(corrupt_copy):
    path = corrupt_copy / "scene_1" / "0000_label.pkl"
    with open(path, "rb") as f:
        raw = pickle.load(f)
    raw["rotations"] = raw["rotations"][:1]
    with open(path, "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(NocsFormatError, match=r"0000_label\.pkl"):
        NocsInstanceDataset(corrupt_copy)


def test_missing_depth_file(corrupt_copy):
    (corrupt_copy / "scene_1" / "0000_depth.png").unlink()
    ds = NocsInstanceDataset(corrupt_copy)
    with pytest.raises(NocsFormatError, match=r"0000_depth\.png"):
        ds[0]
    with pytest.raises(NocsFormatError, match=r"0000_depth\.png"):
        NocsInstanceDataset(corrupt_copy, prefilter_points=True)


def test_label_instance_missing_from_mask(tmp_path):
    write_frame(tmp_path / "s" / "0007", [BOX_A], extra_label_ids=(9,))
    ds = NocsInstanceDataset(tmp_path)
    with pytest.raises(NocsFormatError, match=r"s/0007.*instance id 9.*0007_mask\.png"):
        ds[index_of(ds, 9)]
    with pytest.raises(NocsFormatError, match=r"instance id 9"):
        NocsInstanceDataset(tmp_path, prefilter_points=True)


def test_erosion_that_leaves_only_outliers_falls_back_to_the_whole_mask(monkeypatch):
    """Erosion is kept only when the eroded mask still gives points; an eroded mask with enough
    valid pixels can still lose them to the outlier rejection (a training run once stopped
    on such a sample)."""
    from clipose_ros.data import dataset
    from clipose_ros.points import PointsConfig

    depth = np.zeros((60, 60), np.float32)
    depth[10:50, 10:50] = 0.8  # the object: 1600 pixels at 0.8 m
    mask = depth > 0
    stray = np.zeros_like(mask)
    stray[0:3, 0:10] = True  # 30 pixels far behind the object, outside its mask
    depth[stray] = 3.0
    eroded = stray.copy()
    eroded[28:32, 20:30] = True  # the "eroded" mask: 40 object pixels and the 30 strays
    monkeypatch.setattr(dataset, "erode_mask", lambda m, rng, k: eroded)
    aug = AugmentConfig.preset(False, mask_erosion=True, erosion_prob=1.0)
    config = PointsConfig(min_points=50)
    assert len(dataset.valid_depth_pixels(depth, eroded)[0]) == 70  # passes the pixel check
    alone = dataset.prepare_points(
        depth, eroded, CAMERA_INTRINSICS, config, np.random.default_rng(0)
    )
    assert alone[0] is None  # but the strays are rejected as outliers: 40 < 50 points
    out = dataset.prepare_instance(
        depth, mask, CAMERA_INTRINSICS, np.eye(3), np.array([0, 0, 0.8]), 0.2,
        np.ones(3), "can", aug, config, np.random.default_rng(0),
    )  # fmt: skip
    assert out is not None
    points, *_, count = out
    assert count == 1600 and np.allclose(points[:, 2], 0.8, atol=1e-6)


def test_ray_roll_keeps_points_on_the_box_and_the_object_on_its_ray(scene):
    """The roll turns points and labels together about the camera ray through the object."""
    root, _ = scene
    aug = AugmentConfig(ray_roll=True, ray_roll_prob=1.0, max_ray_roll_deg=45.0)
    ds = NocsInstanceDataset(root, augment=aug)
    plain = NocsInstanceDataset(root)
    i = index_of(ds, BOX_A.instance_id)
    angles = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        sample = ds[i]
        assert_on_box_surface(sample)
        t = sample["t"].double().numpy()
        ray = BOX_A.t / np.linalg.norm(BOX_A.t)
        np.testing.assert_allclose(t / np.linalg.norm(t), ray, atol=1e-6)  # same ray
        assert np.linalg.norm(t) == pytest.approx(np.linalg.norm(BOX_A.t), abs=1e-6)
        R = sample["R"].double().numpy()
        angles.append(np.degrees(np.arccos(np.clip((np.trace(R @ BOX_A.R.T) - 1) / 2, -1, 1))))
        # the same sampled points, each at its distance from the camera: the same surface
        plain.set_epoch(epoch)
        d_aug = np.linalg.norm(sample["points"].double().numpy(), axis=1)
        d_plain = np.linalg.norm(plain[i]["points"].double().numpy(), axis=1)
        np.testing.assert_allclose(d_aug, d_plain, atol=1e-6)
    assert max(angles) > 1.0 and max(angles) <= 45.0 + 1e-4


def test_handle_points_in_depth_counts_only_points_on_the_handle():
    from clipose_ros.data.dataset import handle_points_in_depth

    rng = np.random.default_rng(0)
    extents = np.array([0.72, 0.43, 0.54])  # label frame: body radius 0.27, handle to +0.36
    body = rng.uniform(-1, 1, (500, 3)) * [0.27, 0.2, 0.27]
    handle = np.column_stack(
        [rng.uniform(0.34, 0.41, 40), rng.uniform(-0.15, 0.15, 40), rng.uniform(-0.1, 0.1, 40)]
    )
    R = rotation_about_axis([0.3, 1.0, 0.2], 0.7)
    t, s = np.array([0.1, -0.05, 0.8]), 0.12
    to_camera = lambda q: (s * q) @ R.T + t  # noqa: E731
    assert handle_points_in_depth(to_camera(body), R, t, s, extents) == 0
    assert handle_points_in_depth(to_camera(np.vstack([body, handle])), R, t, s, extents) == 40
    far = np.array([[2.0, 0.0, 0.0]])  # a flying pixel beyond the handle's reach
    assert handle_points_in_depth(to_camera(far), R, t, s, extents) == 0
