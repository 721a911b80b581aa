"""The ROS-free core: tracker ids and smoothing, instance filtering with reasons, stage timings,
the mug box, and the scoring the demo and the DDS tests rely on."""

from __future__ import annotations

import numpy as np
import pytest

from clipose_ros.categories import CLASS_IDS
from clipose_ros.core.boxes import object_box
from clipose_ros.core.pipeline import PosePipeline
from clipose_ros.core.scoring import per_class_line, score_frame, summarise
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.core.tracking import PoseTracker, TrackerConfig
from clipose_ros.core.visualize import draw_overlay
from clipose_ros.data.shapes import make_instance
from clipose_ros.geometry import rotation_about_axis, rotation_angle_deg

Y = np.array([0.0, 1.0, 0.0])
K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]])


def pose(name: str, t, R=None, size=(0.1, 0.1, 0.1), score=0.9) -> ObjectPose:
    return ObjectPose(CLASS_IDS[name], score, np.eye(3) if R is None else np.asarray(R),
                      np.asarray(t, float), np.asarray(size, float))


def test_tracker_keeps_ids_through_jitter_and_short_gaps():
    tracker = PoseTracker(TrackerConfig(match_distance_m=0.05, max_missed=2))
    rng = np.random.default_rng(0)
    first, _ = tracker.update([pose("mug", [0, 0, 0.6]), pose("can", [0.2, 0, 0.7]),
                               pose("mug", [-0.2, 0, 0.6])])
    keys = [p.key for p in first]
    assert keys == ["mug_1", "can_2", "mug_3"]
    for _ in range(5):
        jitter = rng.normal(0, 0.005, (3, 3))
        # Reordered input: ids follow the objects, not the list order.
        out, ended = tracker.update([pose("mug", [-0.2, 0, 0.6] + jitter[2]),
                                     pose("can", [0.2, 0, 0.7] + jitter[1]),
                                     pose("mug", [0, 0, 0.6] + jitter[0])])
        assert [p.key for p in out] == ["mug_3", "can_2", "mug_1"]
        assert ended == []
    # The can vanishes for max_missed frames and keeps its id when it returns.
    for _ in range(2):
        out, ended = tracker.update([pose("mug", [0, 0, 0.6])])
        assert [p.key for p in out] == ["mug_1"] and ended == []
    out, ended = tracker.update([pose("can", [0.2, 0, 0.7])])
    assert [p.key for p in out] == ["can_2"]
    assert ended == ["mug_3"]  # unseen for 3 > max_missed frames
    # mug_1 was missed in that frame too; its track ends on its third miss, exactly once.
    ended_per_frame = [tracker.update([pose("can", [0.2, 0, 0.7])])[1] for _ in range(4)]
    assert ended_per_frame == [[], ["mug_1"], [], []]
    out, _ = tracker.update([pose("mug", [0, 0, 0.6])])
    assert out[0].key not in ("mug_1", "mug_3")


def test_tracker_reports_ended_tracks_once_and_does_not_cross_classes():
    tracker = PoseTracker(TrackerConfig(match_distance_m=0.1, max_missed=0))
    tracker.update([pose("bowl", [0, 0, 0.5])])
    out, ended = tracker.update([pose("can", [0, 0, 0.5])])  # same place, other class
    assert out[0].key == "can_2" and ended == ["bowl_1"]
    out, ended = tracker.update([])
    assert out == [] and ended == ["can_2"]
    assert tracker.update([])[1] == []
    # A jump beyond match_distance is a new object.
    tracker.update([pose("can", [0, 0, 0.5])])
    out, _ = tracker.update([pose("can", [0.3, 0, 0.5])])
    assert out[0].key != "can_3"


def test_smoothing_reduces_jitter_and_handles_symmetric_spin():
    rng = np.random.default_rng(1)
    raw, smooth = [], []
    plain = PoseTracker(TrackerConfig(smoothing=0.0))
    averaged = PoseTracker(TrackerConfig(smoothing=0.7))
    for _ in range(40):
        t = np.array([0.1, 0.0, 0.8]) + rng.normal(0, 0.01, 3)
        # A can's rotation about its axis is arbitrary frame to frame.
        R = rotation_about_axis(Y, rng.uniform(0, 2 * np.pi))
        raw.append(plain.update([pose("can", t, R)])[0][0].t)
        s = averaged.update([pose("can", t, R)])[0][0]
        smooth.append(s.t)
        assert np.allclose(s.R.T @ s.R, np.eye(3), atol=1e-9)
        assert np.degrees(np.arccos(np.clip(s.R[:, 1] @ Y, -1, 1))) < 1e-6
    assert np.std(np.array(smooth)[10:], axis=0).mean() < 0.6 * np.std(
        np.array(raw)[10:], axis=0).mean()


def test_tracker_config_refuses_bad_values():
    with pytest.raises(ValueError, match="smoothing"):
        TrackerConfig(smoothing=1.0)
    with pytest.raises(ValueError, match="match_distance"):
        TrackerConfig(match_distance_m=0)


class FixedSegmenter:
    def __init__(self, instances):
        self.instances = instances
        self.last_timings = {}

    def segment(self, frame):
        return list(self.instances)


class CentroidEstimator:
    """Honest small estimator: the centroid of the masked depth points, identity rotation."""

    needs_nocs_map = False

    def __init__(self):
        self.calls = []
        self.last_timings = {}
        self.min_points = 1

    def estimate(self, frame, instances):
        self.calls.append(len(instances))
        out = []
        for inst in instances:
            v, u = np.nonzero(inst.mask & (frame.depth > 0))
            z = frame.depth[v, u]
            pts = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
            out.append(ObjectPose(inst.class_id, inst.score, np.eye(3), pts.mean(0),
                                  np.full(3, 0.1)))
        self.last_timings = {"points_ms": 1.5, "pose_ms": 2.5}
        return out


def synthetic_frame(depth_value=0.8):
    depth = np.zeros((240, 320), np.float32)
    depth[100:140, 100:140] = depth_value
    depth[10:12, 10:12] = depth_value  # a 4-pixel object
    return Frame(np.zeros((240, 320, 3), np.uint8), depth, K)


def instance(name, rows, cols, score=0.9):
    mask = np.zeros((240, 320), bool)
    mask[rows, cols] = True
    return Instance(CLASS_IDS[name], score, mask, np.array([rows.start, cols.start,
                                                            rows.stop, cols.stop]))


def test_pipeline_skips_unusable_instances_with_reasons_and_times_stages():
    big = instance("bowl", slice(100, 140), slice(100, 140))
    tiny = instance("can", slice(10, 12), slice(10, 12))
    weak = instance("mug", slice(100, 140), slice(100, 140), score=0.2)
    estimator = CentroidEstimator()
    pipeline = PosePipeline(FixedSegmenter([big, tiny, weak]), estimator, min_score=0.5,
                            min_points=50)
    result = pipeline.process(synthetic_frame())
    assert estimator.calls == [1]  # only the usable instance reached the estimator, batched
    assert [p.key for p in result.poses] == ["bowl_1"]
    centre = [(119.5 - K[0, 2]) * 0.8 / K[0, 0], (119.5 - K[1, 2]) * 0.8 / K[1, 1], 0.8]
    assert result.poses[0].t == pytest.approx(centre, abs=1e-6)
    assert len(result.skipped) == 1 and "can" in result.skipped[0]
    assert "4 mask pixels with valid depth < min_points 50" in result.skipped[0]
    assert set(result.timings) == {"segment_ms", "points_ms", "pose_ms", "track_ms", "total_ms"}
    assert result.timings["points_ms"] == 1.5 and result.timings["pose_ms"] == 2.5
    assert all(v >= 0 for v in result.timings.values())
    # Nothing segmented: no estimator call, no poses, the old track ends after max_missed.
    pipeline.segmenter = FixedSegmenter([])
    pipeline.tracker.config = TrackerConfig(max_missed=0)
    result = pipeline.process(synthetic_frame())
    assert result.poses == [] and result.ended == ["bowl_1"] and estimator.calls == [1]


def test_class_min_scores_replace_the_min_score_for_the_classes_named():
    bowl = instance("bowl", slice(100, 140), slice(100, 140), score=0.35)
    mug = instance("mug", slice(100, 140), slice(100, 140), score=0.45)
    pipeline = PosePipeline(FixedSegmenter([bowl, mug]), CentroidEstimator(), min_score=0.5,
                            class_min_scores={"bowl": 0.3})
    assert [p.class_name for p in pipeline.process(synthetic_frame()).poses] == ["bowl"]
    pipeline.class_min_scores = {}
    assert pipeline.process(synthetic_frame()).poses == []


class ThresholdingSegmenter(FixedSegmenter):
    """Filters by score itself, as the YOLO segmenter does before its NMS."""

    def __init__(self, instances):
        super().__init__(instances)
        self.score_threshold, self.class_score_thresholds = 0.5, {}

    def segment(self, frame):
        return [i for i in self.instances
                if i.score >= self.class_score_thresholds.get(i.class_name, self.score_threshold)]


def test_set_score_thresholds_reaches_the_segmenter_and_refuses_bad_values_whole():
    bowl = instance("bowl", slice(100, 140), slice(100, 140), score=0.35)
    mug = instance("mug", slice(100, 140), slice(100, 140), score=0.45)
    segmenter = ThresholdingSegmenter([bowl, mug])
    pipeline = PosePipeline(segmenter, CentroidEstimator(), min_score=0.5)
    assert pipeline.process(synthetic_frame()).poses == []
    pipeline.set_score_thresholds(0.4, {"bowl": 0.3})
    assert segmenter.score_threshold == 0.4 and segmenter.class_score_thresholds == {"bowl": 0.3}
    assert [p.class_name for p in pipeline.process(synthetic_frame()).poses] == ["bowl", "mug"]
    for score, per_class in ((1.5, {}), (0.4, {"cup": 0.3}), (0.4, {"mug": -0.1})):
        with pytest.raises(ValueError):
            pipeline.set_score_thresholds(score, per_class)
        assert (pipeline.min_score, pipeline.class_min_scores) == (0.4, {"bowl": 0.3})
        assert segmenter.class_score_thresholds == {"bowl": 0.3}


def test_mug_box_follows_the_generators_mugs():
    offsets = []
    for i in range(12):
        mug = make_instance("mug", "test", i)
        shift, scale = mug.label_frame
        # Exact tight box of this mug, posed with a label-frame pose, vs object_box.
        s_label = mug.scale / scale
        R = rotation_about_axis(Y, 0.7)
        t = np.array([0.05, 0.02, 0.7])
        p = ObjectPose(CLASS_IDS["mug"], 1.0, R, t, s_label * mug.label_extents)
        centre, size = object_box(p)
        exact_centre = t + R @ (mug.scale * shift)
        offsets.append(np.linalg.norm(centre - exact_centre))
        assert size[1:] == pytest.approx(mug.size[1:], rel=1e-6)
        assert size[0] == pytest.approx(mug.size[0], rel=1e-6)
    assert max(offsets) < 1e-6  # metres
    # Other categories: the box is the pose's own.
    can = pose("can", [0, 0, 1], size=(0.07, 0.14, 0.07))
    centre, size = object_box(can)
    assert np.allclose(centre, can.t) and np.allclose(size, can.size)


def test_score_frame_pairs_by_class_and_distance_and_scores_symmetry():
    R = rotation_about_axis(Y, 1.0)
    truths = [pose("can", [0, 0, 1], R), pose("mug", [0.2, 0, 1]), pose("mug", [0.5, 0, 1])]
    for i, t in enumerate(truths):
        t.key = f"f#{i}"
    tilt = rotation_about_axis(np.array([1.0, 0, 0]), np.radians(4))
    preds = [
        pose("mug", [0.21, 0, 1], tilt),  # mug 1, 1 cm off, 4 degrees
        pose("can", [0, 0.03, 1], np.eye(3)),  # can: spin about y does not count
        pose("bowl", [0.5, 0, 1]),  # wrong class for mug 2
    ]
    for i, p in enumerate(preds):
        p.key = f"p{i}"
    matches = score_frame(truths, preds, [True, False, False])
    assert [m.pred_id for m in matches] == ["p1", "p0", None]
    assert matches[0].rot_deg == pytest.approx(0, abs=1e-6)
    assert matches[0].trans_cm == pytest.approx(3.0)
    assert matches[1].rot_deg == pytest.approx(4.0) and matches[1].trans_cm == pytest.approx(1)
    # Not symmetric: the can's 57 degree spin counts.
    assert score_frame(truths[:1], preds[1:2], [False])[0].rot_deg == pytest.approx(
        np.degrees(1.0))
    s = summarise([{"matches": matches}], 10.0, 5.0)
    assert s["found_fraction"] == pytest.approx(2 / 3)
    # Per class: mug 2 has no mug prediction (not detected); both detected ones are found.
    assert s["per_class"]["mug"] == {"objects": 2, "detected": 0.5, "found": 0.5}
    assert s["per_class"]["can"] == {"objects": 1, "detected": 1.0, "found": 1.0}
    assert per_class_line(s["per_class"]) == "can 100/100, mug 50/50"
    assert s["objects_with_one_id"] == 2 and s["objects_with_changing_id"] == 0


def test_overlay_draws_boxes_where_the_objects_are():
    p = pose("bowl", [0.0, 0.0, 0.8], size=(0.16, 0.08, 0.16))
    p.key = "bowl_1"
    image = draw_overlay(np.zeros((240, 320, 3), np.uint8), K, [p])
    v, u = np.nonzero(image.any(axis=2))
    assert len(v) > 100
    # The box projects around the principal point (the object sits on the optical axis).
    assert abs(np.median(u) - K[0, 2]) < 30 and abs(np.median(v) - K[1, 2]) < 40
    assert rotation_angle_deg(p.R, np.eye(3)) == 0


def test_summary_counts_id_changes_within_a_scene_run_only():
    from clipose_ros.core.scoring import Match

    def frame(scene, pred):
        return {"matches": [Match(f"{scene}#1", "can", pred, 1.0, 1.0)]}

    # Scene a, then b, then a again with a new id: a new run, not an id change.
    assert summarise([frame("a", "can_1"), frame("b", "can_2"), frame("a", "can_3")])[
        "objects_with_changing_id"] == 0
    # The id flips while scene a stays in view: counted.
    s = summarise([frame("a", "can_1"), frame("a", "can_4"), frame("b", "can_2")])
    assert s["objects_with_changing_id"] == 1 and s["objects_with_one_id"] == 1


def test_warm_up_runs_every_stage_and_leaves_no_tracks():
    estimator = CentroidEstimator()
    segmenter = FixedSegmenter([])
    pipeline = PosePipeline(segmenter, estimator)
    assert pipeline.warm_up(120, 160, runs=2) >= 0
    assert estimator.calls == [2, 2] and pipeline.tracker.tracks == []
    first = pipeline.process(synthetic_frame())
    assert first.poses == [] and pipeline.tracker.next_id == 1


def test_synthetic_camera_ground_truth_boxes_hold_the_objects(tmp_path):
    """The camera's ground truth: label poses, and tight boxes that hold each object's mesh
    (for the mug off its body-axis origin), from a rendered scene with every category kind."""
    import trimesh

    from clipose_ros.data import nocs_format as nf
    from clipose_ros.data.replay import load_frames, render_scenes, truth_is_symmetric

    folder = render_scenes(tmp_path, 1, 1, seed=0, min_objects=4, max_objects=4,
                           distractors=False)
    (frame,) = load_frames(folder)
    assert frame.rgb.shape == (480, 640, 3) and frame.depth_mm.dtype == np.uint16
    label = nf.read_label(frame.prefix)
    mug_meta = nf.load_mug_meta(tmp_path / "obj_models" / nf.MUG_META_FILE)
    names = [t.class_name for t in frame.truth]
    assert "mug" in names, names  # seed 0 places a mug; the check below needs one
    for i, (truth, (centre, size)) in enumerate(zip(frame.truth, frame.boxes, strict=True)):
        assert truth.key == f"{frame.key}#{label.instance_ids[i]}" + (
            "#sym" if truth_is_symmetric(truth.key) else "")
        assert truth_is_symmetric(truth.key) == (truth.class_name in ("bottle", "bowl", "can"))
        model = label.model_list[i]
        mesh = trimesh.load(next(tmp_path.glob(f"obj_models/*/{model}.obj")), process=False)
        # Mesh (tight NOCS frame) -> camera with this object's coordinate-map pose.
        shift, scale = mug_meta.get(model, (np.zeros(3), 1.0))
        s_coord, t_coord = nf.coord_pose_from_label_pose(truth.nocs_scale, truth.R, truth.t,
                                                         shift, scale)
        points = s_coord * np.asarray(mesh.vertices) @ truth.R.T + t_coord
        local = (points - centre) @ truth.R  # in the object axes, about the box centre
        assert np.allclose(local.max(0), size / 2, atol=1e-4)
        assert np.allclose(local.min(0), -size / 2, atol=1e-4)
        if truth.class_name == "mug":
            assert np.linalg.norm(centre - truth.t) > 0.003  # the box is off the body axis
            approx_centre, approx_size = object_box(truth)
            assert np.linalg.norm(approx_centre - centre) < 0.006
            assert np.allclose(approx_size, size, rtol=0.08)
        else:
            assert np.allclose(centre, truth.t)
