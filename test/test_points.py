"""Points preparation: one function for the reader, the training cache and the estimator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.core.estimators import CliposeEstimator
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data.augment import AugmentConfig
from clipose_ros.data.dataset import NocsInstanceDataset, normalize_clip
from clipose_ros.data.nocs_format import read_color, read_depth, read_mask
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.geometry import backproject_pixels, rotation_angle_deg, valid_depth_pixels
from clipose_ros.model.cache import CachedInstances, ensure_cache
from clipose_ros.points import PointsConfig, cut_direction, cut_sides, prepare_points

K = CAMERA_INTRINSICS


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, "train", 2, 2, 5, 0, SynthConfig(max_objects=3, max_distractors=0))
    return out / "train"


def plane(depth_m: float = 0.8, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    depth = np.zeros((120, 160), np.float32)
    mask = np.zeros((120, 160), bool)
    depth[40 : 40 + size, 60 : 60 + size] = depth_m
    mask[40 : 40 + size, 60 : 60 + size] = True
    return depth, mask


def test_shape_dtype_and_values_lie_on_the_backprojected_pixels():
    depth, mask = plane()
    pts = prepare_points(depth, mask, K, PointsConfig(n_points=1028)).points
    assert pts.shape == (1028, 3) and pts.dtype == np.float32
    assert np.allclose(pts[:, 2], 0.8)
    full = backproject_pixels(depth, K, *valid_depth_pixels(depth, mask))
    gap = np.abs(pts[:, None, :] - full[None, :, :]).max(-1).min(1)
    assert gap.max() < 1e-6


def test_sampling_repeats_only_when_short():
    depth, mask = plane(size=20)  # 400 pixels < 1028
    pts = prepare_points(depth, mask, K, PointsConfig(n_points=1028)).points
    assert len(np.unique(pts, axis=0)) == 400
    depth, mask = plane(size=40)  # 1600 pixels >= 1028: no repetition
    assert len(np.unique(prepare_points(depth, mask, K).points, axis=0)) == 1028


def test_too_few_points_gives_none_with_reason():
    depth, mask = plane(size=5)
    pts, count, reason = prepare_points(depth, mask, K)
    assert pts is None and count == 25 and "25" in reason and "50" in reason


def test_invalid_depth_inside_the_mask_is_ignored():
    depth, mask = plane()
    depth[40:50, 60:100] = 0.0
    depth[50:52, 60:100] = np.nan
    pts = prepare_points(depth, mask, K).points
    assert np.isfinite(pts).all() and np.allclose(pts[:, 2], 0.8)


def test_outliers_behind_the_object_are_rejected():
    depth, mask = plane(size=40)
    depth[40:42, 60:100] = 3.0  # a mask edge bleeding onto the far background
    pts = prepare_points(depth, mask, K).points
    assert pts[:, 2].max() < 1.0
    loose = PointsConfig(outlier_factor=100.0, outlier_floor_m=10.0)
    assert prepare_points(depth, mask, K, loose).points[:, 2].max() == pytest.approx(3.0)


def test_erosion_drops_the_mask_edge_but_never_all_points():
    depth, mask = plane(size=40)
    depth[40, 60:100] = 0.7  # a bad top row
    eroded = prepare_points(depth, mask, K, PointsConfig(erode_px=2)).points
    assert np.allclose(eroded[:, 2], 0.8)
    depth, mask = plane(size=9)  # 81 pixels, erosion would leave 25 < 50: keep the mask
    pts = prepare_points(depth, mask, K, PointsConfig(erode_px=2)).points
    assert pts is not None and len(np.unique(pts, axis=0)) == 81


def test_deterministic_by_default_and_shape_mismatch_refused():
    depth, mask = plane()
    assert np.array_equal(prepare_points(depth, mask, K).points,
                          prepare_points(depth, mask, K).points)
    with pytest.raises(ValueError, match="mask shape"):
        prepare_points(depth, mask[:-1], K)


def test_reader_cache_and_estimator_give_the_same_points(synth):
    """Same frame, same mask, same random generator -> identical points in all three paths."""
    cfg = PointsConfig()
    reader = NocsInstanceDataset(
        synth, augment=AugmentConfig(), load_rgb=False, points_config=cfg, seed=3
    )
    cache = CachedInstances(
        ensure_cache(synth, synth.parent / "cache", cfg, progress=False),
        augment=AugmentConfig(),
        seed=3,
    )
    assert len(cache) == len(reader) > 0
    estimator = CliposeEstimator.from_module(None, cfg)
    for index in range(len(reader)):
        sample = reader[index]
        lab = reader.instance_label(index)
        prefix = lab["frame"]
        frame = Frame(read_color(prefix), read_depth(prefix), lab["K"])
        inst = Instance(lab["class_id"], 1.0, read_mask(prefix) == lab["instance_id"], lab["bbox"])
        rng = np.random.default_rng(np.random.SeedSequence([3, 0, index, 0]))
        pts, kept = estimator.prepare(frame, [inst], rngs=[rng])
        assert kept == [0]
        np.testing.assert_array_equal(pts[0], sample["points"].numpy())
        np.testing.assert_array_equal(cache[index]["points"].numpy(), sample["points"].numpy())


def test_cache_keeps_the_readers_rgb_crops_and_rebuilds_on_change(synth, tmp_path):
    cfg = PointsConfig()
    folder = tmp_path / "cache"
    ensure_cache(synth, folder, cfg, rgb_crop_size=32, progress=False)
    cache = CachedInstances(folder)
    reader = NocsInstanceDataset(synth, crop_size=32, augment=AugmentConfig(), points_config=cfg)
    item = cache[0]
    assert item["rgb_crop"].shape == (32, 32, 3) and item["rgb_crop"].dtype == torch.uint8
    np.testing.assert_allclose(
        normalize_clip(item["rgb_crop"].numpy()), reader[0]["rgb_crop"].numpy(), atol=1e-6
    )
    key = json.loads((folder / "manifest.json").read_text())["key"]
    ensure_cache(synth, folder, PointsConfig(erode_px=1), rgb_crop_size=32, progress=False)
    assert json.loads((folder / "manifest.json").read_text())["key"] != key


def test_points_config_from_dict_is_strict():
    """Like the other config readers: a typo is refused, not silently defaulted; so are points
    prepared by another version of the preparation."""
    cfg = PointsConfig(erode_px=2, min_points=30)
    assert PointsConfig.from_dict(cfg.to_dict()) == cfg
    assert PointsConfig.from_dict({"n_points": 512}) == PointsConfig(n_points=512)
    with pytest.raises(ValueError, match="unknown keys"):
        PointsConfig.from_dict({"n_point": 512})
    with pytest.raises(ValueError, match="version 0"):
        PointsConfig.from_dict({**cfg.to_dict(), "version": 0})


def test_cut_direction_points_to_the_cutting_borders():
    depth, mask = plane()
    assert not cut_sides(mask).any() and not cut_direction(cut_sides(mask)).any()
    mask[50:60, :5] = True  # reaches the left border
    np.testing.assert_array_equal(cut_direction(cut_sides(mask)), [-1.0, 0.0, 0.0])
    mask[-3:, 80] = True  # and, within the 2-pixel margin, the bottom one
    np.testing.assert_array_equal(cut_direction(cut_sides(mask)), [-1.0, 1.0, 0.0])
    mask[50:60, -1] = True  # left and right cancel
    np.testing.assert_array_equal(cut_direction(cut_sides(mask)), [0.0, 1.0, 0.0])


def test_reader_and_cache_give_the_cut_direction_turned_with_the_points(synth, tmp_path):
    """The cache stores each mask's cut sides (its crops do not show the frame's borders); the
    rotation augmentations turn the direction with the points, the same way in both paths."""
    cfg = PointsConfig()
    aug = AugmentConfig(ray_roll=True, ray_roll_prob=1.0, pose_perturbation=True, pose_prob=1.0)
    reader = NocsInstanceDataset(synth, augment=aug, load_rgb=False, points_config=cfg, seed=3)
    cache = CachedInstances(ensure_cache(synth, tmp_path / "cache", cfg, progress=False),
                            augment=aug, seed=3)
    cut_seen = 0
    for index in range(len(reader)):
        sample, cached = reader[index], cache[index]
        np.testing.assert_allclose(cached["cut_dir"].numpy(), sample["cut_dir"].numpy(), atol=1e-6)
        lab = reader.instance_label(index)
        whole = cut_direction(cut_sides(read_mask(lab["frame"]) == lab["instance_id"]))
        turn = sample["R"].double().numpy() @ lab["R"].T  # what the augmentations did
        assert rotation_angle_deg(turn, np.eye(3)) > 0.1
        np.testing.assert_allclose(sample["cut_dir"].numpy(), turn @ whole, atol=1e-5)
        cut_seen += bool(whole.any())
    assert cut_seen > 0  # the fixture has objects cut by the border
