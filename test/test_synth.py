"""The synthetic generator writes consistent, exact NOCS-format ground truth."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from clipose_ros.categories import CATEGORIES, is_symmetric
from clipose_ros.core.estimators import NocsMapEstimator
from clipose_ros.core.structures import Frame, Instance
from clipose_ros.data import nocs_format as nf
from clipose_ros.data.shapes import PART_BODY, PART_HANDLE, make_instance
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.geometry import backproject_pixels, rotation_angle_deg, umeyama


@pytest.fixture(scope="module")
def exact_scenes(tmp_path_factory):
    """Noise-free frames; 10 scenes of up to 6 objects cover all six categories."""
    out = tmp_path_factory.mktemp("synth_exact")
    generate(out, "test", 10, 2, seed=3, cfg=SynthConfig(depth_noise=False), progress=False)
    return out


def _frames(root):
    return nf.list_frames(root / "test")


def test_umeyama_from_rendered_nocs_map_recovers_labelled_pose(exact_scenes):
    # Mugs: the coordinate map is tight-box, the label on the body axis; mug_meta connects them.
    mug_meta = nf.load_mug_meta(exact_scenes / "obj_models" / nf.MUG_META_FILE)
    estimator = NocsMapEstimator(seed=0, mug_meta=mug_meta)
    seen: dict[str, int] = {}
    for prefix in _frames(exact_scenes):
        label = nf.read_label(prefix)
        mask = nf.read_mask(prefix)
        frame = Frame(
            nf.read_color(prefix), nf.read_depth(prefix), label.extra["K"],
            nocs_map=nf.read_coord(prefix),
        )
        visible = label.extra["visible_pixels"]
        for k, class_id in enumerate(label.class_ids):
            if visible[k] < 1000:  # mm depth quantisation dominates tiny, occluded slivers
                continue
            inst = Instance(int(class_id), 1.0, mask == label.instance_ids[k], label.bboxes[k],
                            model_name=label.model_list[k])
            (pose,) = estimator.estimate(frame, [inst])
            R_gt = label.rotations[k]
            if is_symmetric(int(class_id), bool(label.handle_visibility[k])):
                cos = np.clip(R_gt[:, 1] @ pose.R[:, 1], -1.0, 1.0)
                angle = np.degrees(np.arccos(cos))
            else:
                angle = rotation_angle_deg(R_gt, pose.R)
            name = pose.class_name
            assert angle < 1.0, f"{prefix} {name}: rotation off by {angle:.2f} deg"
            assert np.linalg.norm(pose.t - label.translations[k]) < 0.005, f"{prefix} {name}"
            assert abs(pose.nocs_scale / label.scales[k] - 1) < 0.01, f"{prefix} {name}"
            seen[name] = seen.get(name, 0) + 1
    assert set(seen) == set(CATEGORIES), f"categories covered: {seen}"


def _mug_views(root):
    """(label, k, camera points, coordinate-map points) of every well-visible mug."""
    for prefix in _frames(root):
        label = nf.read_label(prefix)
        mask, depth, coord = nf.read_mask(prefix), nf.read_depth(prefix), nf.read_coord(prefix)
        for k, class_id in enumerate(label.class_ids):
            if CATEGORIES[class_id - 1] != "mug" or label.extra["visible_pixels"][k] < 1000:
                continue
            rows, cols = np.nonzero((mask == label.instance_ids[k]) & (depth > 0))
            cam = backproject_pixels(depth, label.extra["K"], rows, cols)
            yield label, k, cam, coord[rows, cols].astype(np.float64)


def test_mug_labels_are_the_symmetric_box_about_the_body_axis(exact_scenes):
    checked = 0
    for label, k, cam, coord in _mug_views(exact_scenes):
        _, split, index = label.model_list[k].rsplit("_", 2)
        inst = make_instance("mug", split, int(index))
        # The body axis of the built mesh, in NOCS units, is where the label puts x = 0.
        body = inst.mesh.vertices[np.unique(inst.mesh.faces[inst.part_ids == PART_BODY])]
        axis_x = (body[:, 0].min() + body[:, 0].max()) / 2.0
        shift, scale = nf.symmetric_label_frame(inst.mesh.vertices)
        assert shift[0] == pytest.approx(-axis_x, abs=1e-6)
        sym = scale * (inst.mesh.vertices + shift)
        np.testing.assert_allclose(label.nocs_extents[k], 2 * np.abs(sym).max(0), atol=1e-9)
        assert np.linalg.norm(label.nocs_extents[k]) == pytest.approx(1.0, abs=1e-9)
        handle = sym[np.unique(inst.mesh.faces[inst.part_ids == PART_HANDLE])]
        assert handle[:, 0].min() > 0.0  # handle at +x of the label origin
        # The label pose maps label-frame points onto the observed surface (exact depth, mm).
        R, t, s = label.rotations[k], label.translations[k], label.scales[k]
        predicted = (s * (R @ (scale * (coord + shift)).T)).T + t
        assert np.median(np.linalg.norm(predicted - cam, axis=1)) < 0.002
        checked += 1
    assert checked >= 2, "too few visible mugs in the scenes"


def test_spd_mug_meta_relation_holds_both_ways(exact_scenes):
    mug_meta = nf.load_mug_meta(exact_scenes / "obj_models" / nf.MUG_META_FILE)
    checked = 0
    for label, k, cam, coord in _mug_views(exact_scenes):
        shift, scale = mug_meta[label.model_list[k]]
        s_coord, R, t_coord = umeyama(coord, cam)  # the pose the coordinate map gives
        s_label, t_label = nf.label_pose_from_coord_pose(s_coord, R, t_coord, shift, scale)
        assert s_label == pytest.approx(label.scales[k], rel=0.01)
        assert np.linalg.norm(t_label - label.translations[k]) < 0.003
        s_back, t_back = nf.coord_pose_from_label_pose(s_label, R, t_label, shift, scale)
        assert s_back == pytest.approx(s_coord, rel=1e-12)
        np.testing.assert_allclose(t_back, t_coord, atol=1e-12)
        checked += 1
    assert checked >= 2


def test_files_masks_boxes_and_yolo_labels_agree(exact_scenes):
    for prefix in _frames(exact_scenes):
        label = nf.read_label(prefix)
        mask = nf.read_mask(prefix)
        meta = nf.read_meta(prefix)
        assert [m[0] for m in meta] == list(label.instance_ids)
        assert [m[1] for m in meta] == list(label.class_ids)
        assert set(np.unique(mask)) <= set(label.instance_ids) | {nf.BACKGROUND_ID}
        depth = nf.read_depth(prefix)
        for k, iid in enumerate(label.instance_ids):
            rows, cols = np.nonzero(mask == iid)
            assert list(label.bboxes[k]) == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
            assert np.all(depth[rows, cols] > 0), "exact depth has holes on an object"
            R = label.rotations[k]
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) > 0.999
        scene, frame = prefix.parent.name, prefix.name
        lines = (exact_scenes / "yolo" / "labels" / "test" / f"{scene}_{frame}.txt").read_text()
        rows = [line.split() for line in lines.splitlines()]
        assert sorted(int(r[0]) + 1 for r in rows) == sorted(label.class_ids)
        coords = np.array([float(v) for r in rows for v in r[1:]])
        assert coords.min() >= 0 and coords.max() <= 1
    assert (exact_scenes / "yolo" / "data.yaml").read_text().count(":") >= 8
    models = list((exact_scenes / "obj_models" / "test").glob("*.obj"))
    assert models and all(m.with_suffix(".json").exists() for m in models)


def test_same_seed_same_files_other_seed_other_scene(tmp_path):
    cfg = SynthConfig(max_objects=3)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name, "train", 2, 1, seed=seed, cfg=cfg, progress=False)
    for suffix in ("color.png", "depth.png", "label.pkl"):
        a = tmp_path / "a" / "train" / "00001" / f"0000_{suffix}"
        assert filecmp.cmp(a, tmp_path / "b" / "train" / "00001" / f"0000_{suffix}", shallow=False)
        assert not filecmp.cmp(
            a, tmp_path / "c" / "train" / "00001" / f"0000_{suffix}", shallow=False
        )


def test_depth_noise_is_sensor_like(tmp_path):
    """Noise keeps the surface within millimetres but punches holes, as a real sensor does."""
    for name, noise in (("exact", False), ("noisy", True)):
        generate(tmp_path / name, "test", 2, 1, seed=9, cfg=SynthConfig(depth_noise=noise),
                 progress=False)
    for scene in ("00000", "00001"):
        exact = nf.read_depth(tmp_path / "exact" / "test" / scene / "0000")
        noisy = nf.read_depth(tmp_path / "noisy" / "test" / scene / "0000")
        both = (exact > 0) & (noisy > 0)
        assert np.median(np.abs(exact[both] - noisy[both])) < 0.004
        assert np.abs(exact[both] - noisy[both]).max() < 0.05
        holes = (exact > 0) & (noisy == 0)
        assert holes.sum() > 50


@pytest.mark.parametrize("train", [False, True])
def test_reader_samples_of_generated_frames_lie_in_their_labelled_boxes(exact_scenes, train):
    """Generator and reader agree: every sampled point maps into its object's NOCS box,
    with and without the training augmentations (which update the labels)."""
    from clipose_ros.data.dataset import NocsInstanceDataset

    dataset = NocsInstanceDataset(exact_scenes / "test", train=train, seed=1)
    assert len(dataset) >= 20
    for i in range(0, len(dataset), max(1, len(dataset) // 20)):
        sample = dataset[i]
        points = sample["points"].double().numpy()
        R, t, s = sample["R"].double().numpy(), sample["t"].double().numpy(), float(sample["s"])
        nocs = (points - t) @ R / s
        half = sample["nocs_extents"].double().numpy() / 2
        # 2 mm slack for depth quantisation, plus the jitter the training preset adds.
        slack = (0.002 + (0.006 if train else 0.0)) / s
        assert np.all(np.abs(nocs) <= half + slack), f"sample {i} ({sample['class_name']})"
        assert sample["points"].shape == (1028, 3)
        assert sample["rgb_crop"].shape == (3, 224, 224)


def test_ultralytics_reads_the_yolo_segmentation_labels(exact_scenes, monkeypatch):
    """The segmenter's training data: ultralytics resolves data.yaml and loads every polygon."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(exact_scenes / "yolo" / "data.yaml"))
    assert data["nc"] == 6 and list(data["names"].values()) == list(CATEGORIES)
    dataset = YOLODataset(img_path=data["val"], data=data, task="segment", augment=False)
    by_stem = {Path(lab["im_file"]).stem: lab for lab in dataset.labels}
    for prefix in _frames(exact_scenes):
        label = nf.read_label(prefix)
        yolo = by_stem[f"{prefix.parent.name}_{prefix.name}"]
        assert sorted(yolo["cls"].ravel().astype(int) + 1) == sorted(label.class_ids)
        assert len(yolo["segments"]) == len(label)


def test_cli_writes_frames_config_and_log(tmp_path):
    from clipose_ros.data.synth import main

    main(["--out", str(tmp_path), "--split", "train", "--scenes", "2", "--frames-per-scene", "2",
          "--workers", "2", "--no-distractors"])
    assert len(nf.list_frames(tmp_path / "train", labelled=True)) == 4
    assert "frames/s" in (tmp_path / "synth.log").read_text()
    assert '"split": "train"' in (tmp_path / "synth_config.json").read_text()


def test_bad_settings_are_refused_with_the_reason(tmp_path, capsys):
    from clipose_ros.data.synth import main

    with pytest.raises(ValueError, match="min_objects"):
        SynthConfig(min_objects=4, max_objects=2)
    with pytest.raises(ValueError, match="elevation"):
        SynthConfig(elevation_deg=(10.0, 95.0))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--max-objects", "0"])
    assert "max_objects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--scenes", "0"])
    assert "--scenes" in capsys.readouterr().err
