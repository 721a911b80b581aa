"""NOCS metrics: every test asserts numbers (hand-computed where possible)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from clipose_ros.categories import CATEGORIES, CLASS_IDS, MEAN_SIZES_M
from clipose_ros.metrics import (
    METRIC_KEYS,
    RECALL_KEY,
    compose_rt,
    evaluate,
    format_table,
    iou_3d,
    load_result,
    make_result,
    plot_ap_curves,
    rotation_error_deg,
    save_result,
    translation_error_cm,
    validate_result,
)

MODES = ("nocs", "exact")
POSE_KEYS = ("5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")


def rot(axis: str, deg: float) -> np.ndarray:
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


def obj(name: str, t, R=None, size=None) -> dict:
    """One object in our pose form: metric size -> (s, NOCS extents)."""
    size = np.asarray(MEAN_SIZES_M[name] if size is None else size, dtype=float)
    s = float(np.linalg.norm(size))
    return {
        "cls": CLASS_IDS[name],
        "R": np.eye(3) if R is None else np.asarray(R, float),
        "t": np.asarray(t, float),
        "s": s,
        "e": size / s,
    }


def perturbed(o: dict, dR=None, dt=(0, 0, 0), scale: float = 1.0, R_obj=None) -> dict:
    """Copy of ``o`` with rotation dR applied in the camera frame (or R_obj in the object frame)."""
    p = dict(o)
    R = o["R"] if dR is None else np.asarray(dR) @ o["R"]
    p["R"] = R if R_obj is None else R @ np.asarray(R_obj)
    p["t"] = o["t"] + np.asarray(dt, float)
    p["s"] = o["s"] * scale
    return p


def frame(gts: list[dict], preds: list[dict], vis=None, scores=None) -> dict:
    def stack(objs, k, shape):
        return np.array([o[k] for o in objs], float).reshape(shape)

    n, m = len(gts), len(preds)
    return make_result(
        [o["cls"] for o in gts],
        stack(gts, "R", (n, 3, 3)),
        stack(gts, "t", (n, 3)),
        stack(gts, "s", (n,)),
        stack(gts, "e", (n, 3)),
        [o["cls"] for o in preds],
        np.linspace(0.9, 0.5, m) if scores is None else scores,
        stack(preds, "R", (m, 3, 3)),
        stack(preds, "t", (m, 3)),
        stack(preds, "s", (m,)),
        stack(preds, "e", (m, 3)),
        gt_handle_visibility=vis,
    )


def cls_metrics(metrics: dict, mode: str, name: str) -> dict:
    return metrics["modes"][mode]["classes"][name]


def scene(seed: int) -> list[dict]:
    """All six categories, well separated, random orientations, typical depths."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(-0.5, 0.5, 6)
    return [
        obj(
            name,
            [xs[i], rng.uniform(-0.1, 0.1), rng.uniform(0.7, 1.2)],
            Rotation.random(random_state=rng).as_matrix(),
        )
        for i, name in enumerate(CATEGORIES)
    ]


# ------------------------------------------------------------------------------------------------


def test_ground_truth_against_itself_is_perfect_in_both_modes():
    frames = []
    for seed in range(4):
        gts = scene(seed)
        frames.append(frame(gts, gts, vis=[1, 1, 1, 1, 1, seed % 2]))
    m = evaluate(frames)
    assert json.loads(json.dumps(m, allow_nan=False)) == m  # JSON-serialisable, no NaN
    for mode in MODES:
        block = m["modes"][mode]
        assert block["mode"] == mode and block["missing_classes"] == []
        for name in (*CATEGORIES, "mean"):
            e = block["classes"][name]
            for k in (*METRIC_KEYS, RECALL_KEY):
                assert e[k] == pytest.approx(100.0), (mode, name, k)
            # AP vs IoU is 100 for every threshold below 1 (matching is IoU > thr, as in NOCS)
            assert np.allclose(e["curves"]["ap_vs_iou"][:100], 100.0)
            # at 0 deg exactly, arccos round-off (~1e-6 deg) decides: not asserted
            assert np.allclose(e["curves"]["ap_vs_rotation_deg"][1:], 100.0)
            assert np.allclose(e["curves"]["ap_vs_translation_cm"], 100.0)
        assert block["classes"]["mean"]["num_gt"] == 24


def test_seven_degree_rotation_fails_5deg_passes_10deg():
    gts = [
        obj("camera", [-0.3, 0.0, 0.9], rot("y", 30)),
        obj("laptop", [0.3, 0.0, 1.0], rot("x", -20)),
        obj("mug", [0.0, 0.1, 0.8]),
        obj("bottle", [0.0, -0.2, 0.8]),
    ]
    preds = [
        perturbed(gts[0], dR=rot("y", 7)),  # camera/laptop: any axis counts
        perturbed(gts[1], dR=rot("z", 7)),
        perturbed(gts[2], dR=rot("x", 7)),  # mug with visible handle
        perturbed(gts[3], R_obj=rot("x", 7)),  # bottle: tilt of the symmetry axis
    ]
    f = frame(gts, preds)
    assert rotation_error_deg(f["pred_RTs"][0], f["gt_RTs"][0]) == pytest.approx(7.0)
    m = evaluate([f])
    for mode in MODES:
        for name in ("camera", "laptop", "mug", "bottle"):
            e = cls_metrics(m, mode, name)
            assert e[RECALL_KEY] == 100.0
            assert e["5deg2cm"] == 0.0 and e["5deg5cm"] == 0.0, (mode, name)
            assert e["10deg2cm"] == 100.0 and e["10deg5cm"] == 100.0, (mode, name)
            curve = e["curves"]["ap_vs_rotation_deg"]
            assert curve[6] == 0.0 and curve[8] == 100.0


def test_rotation_about_y_is_free_for_bottle_not_for_camera():
    bottle = obj("bottle", [-0.15, 0.0, 0.9], rot("x", 25))
    camera = obj("camera", [0.15, 0.0, 0.9], rot("x", 25))
    preds = [perturbed(bottle, R_obj=rot("y", 40)), perturbed(camera, R_obj=rot("y", 40))]
    f = frame([bottle, camera], preds)
    assert rotation_error_deg(f["pred_RTs"][0], f["gt_RTs"][0], symmetric=True) < 1e-5
    assert rotation_error_deg(f["pred_RTs"][1], f["gt_RTs"][1]) == pytest.approx(40.0)
    m = evaluate([f])
    for mode in MODES:
        assert cls_metrics(m, mode, "bottle")["5deg2cm"] == 100.0
        assert cls_metrics(m, mode, "camera")["5deg2cm"] == 0.0
        assert cls_metrics(m, mode, "camera")["10deg5cm"] == 0.0
        # the symmetric IoU search (20 x 18 deg) absorbs 40 deg only up to 4 deg: still IoU50
        assert cls_metrics(m, mode, "bottle")["IoU50"] == 100.0


@pytest.mark.parametrize("visible, expected", [(0, 100.0), (1, 0.0)])
def test_mug_about_y_depends_on_handle_visibility(visible, expected):
    mug = obj("mug", [0.05, 0.02, 0.8], rot("z", 10))
    m = evaluate([frame([mug], [perturbed(mug, R_obj=rot("y", 30))], vis=[visible])])
    for mode in MODES:
        e = cls_metrics(m, mode, "mug")
        assert e[RECALL_KEY] == 100.0
        assert e["5deg2cm"] == expected and e["10deg5cm"] == expected


def test_three_cm_shift_fails_2cm_passes_5cm():
    gts = [obj("camera", [-0.2, 0.0, 0.8], rot("y", 60)), obj("bowl", [0.2, 0.05, 0.9])]
    d = np.array([1.0, -2.0, 2.0]) / 3.0 * 0.03  # 3 cm, oblique
    preds = [perturbed(g, dt=d) for g in gts]
    f = frame(gts, preds)
    assert translation_error_cm(f["pred_RTs"][0], f["gt_RTs"][0]) == pytest.approx(3.0)
    m = evaluate([f])
    for mode in MODES:
        for name in ("camera", "bowl"):
            e = cls_metrics(m, mode, name)
            assert (e["5deg2cm"], e["10deg2cm"]) == (0.0, 0.0)
            assert (e["5deg5cm"], e["10deg5cm"]) == (100.0, 100.0)
            tr = e["curves"]["ap_vs_translation_cm"]  # grid 0, 0.5, ..., 10 cm
            assert tr[5] == 0.0 and tr[7] == 100.0  # 2.5 cm fails, 3.5 cm passes


def test_iou_of_unit_cubes_by_hand():
    # Two unit cubes 2 m in front of the camera, the second shifted by 0.5 in x.
    a = compose_rt(np.eye(3), [0.0, 0.0, 2.0], 1.0)
    b = compose_rt(np.eye(3), [0.5, 0.0, 2.0], 1.0)
    ones = np.ones(3)
    # exact: overlap 0.5 x 1 x 1, union 1 + 1 - 0.5  ->  1/3
    assert iou_3d(b, a, ones, ones, "exact") == pytest.approx(1.0 / 3.0)
    # nocs: per corner (NOCS order +++ ++- -++ -+- +-+ +-- --+ ---) the interval
    # [min(x,y,z), max(x,y,z)] of that corner; max is always z (1.5 or 2.5), min is min(x, y).
    #   cube a: [.5,2.5] [.5,1.5] [-.5,2.5] [-.5,1.5] [-.5,2.5] [-.5,1.5] [-.5,2.5] [-.5,1.5]
    #           lengths 2, 1, 3, 2, 3, 2, 3, 2          -> "volume" 432
    #   cube b (x in {0, 1}): lengths 2, 1, 2.5, 1.5, 3, 2, 3, 2 -> 270, each interval inside a's
    #   overlap = 270, union = 432 + 270 - 270 = 432    -> 270 / 432 = 0.625
    assert iou_3d(b, a, ones, ones, "nocs") == pytest.approx(270.0 / 432.0)
    # identical boxes are 1 in both modes
    for mode in MODES:
        assert iou_3d(a, a, ones, ones, mode) == pytest.approx(1.0)


def test_oriented_iou_is_the_true_box_overlap():
    ones = np.ones(3)
    a = compose_rt(np.eye(3), [0.0, 0.0, 2.0], 1.0)
    b = compose_rt(np.eye(3), [0.5, 0.0, 2.0], 1.0)
    assert iou_3d(b, a, ones, ones, "oriented") == pytest.approx(1.0 / 3.0)  # as exact
    assert iou_3d(a, a, ones, ones, "oriented") == pytest.approx(1.0)
    far = compose_rt(np.eye(3), [1.01, 0.0, 2.0], 1.0)
    assert iou_3d(far, a, ones, ones, "oriented") == 0.0
    # A unit cube and itself turned 45 deg about z share a regular octagon prism of area
    # 2 (sqrt 2 - 1): IoU = 1 / sqrt 2. The axis-aligned bounds see the turned cube as a
    # sqrt 2 x sqrt 2 x 1 box holding the other: IoU 1 / 2.
    turned = compose_rt(rot("z", 45), [0.0, 0.0, 2.0], 1.0)
    assert iou_3d(turned, a, ones, ones, "oriented") == pytest.approx(1.0 / np.sqrt(2.0))
    assert iou_3d(turned, a, ones, ones, "exact") == pytest.approx(0.5)
    # Both turned alike and shifted 0.5 along their own x: the true overlap is 1/3 as for the
    # unturned pair; the bounds overlap (sqrt 2 - 0.5 / sqrt 2)^2 = 9/8 of 2 + 2 - 9/8.
    shifted = compose_rt(rot("z", 45), [0.5 / np.sqrt(2), 0.5 / np.sqrt(2), 2.0], 1.0)
    assert iou_3d(shifted, turned, ones, ones, "oriented") == pytest.approx(1.0 / 3.0)
    assert iou_3d(shifted, turned, ones, ones, "exact") == pytest.approx(9.0 / 23.0)


def test_oriented_iou_agrees_with_counting_points():
    rng = np.random.default_rng(3)
    grid = rng.uniform(-0.25, 0.25, (300_000, 3))

    def inside(RT, ext):
        scale = np.cbrt(np.linalg.det(RT[:3, :3]))
        local = (grid - RT[:3, 3]) @ (RT[:3, :3] / scale)
        return np.all(np.abs(local) <= ext * scale / 2, axis=1)

    for k in range(3):
        ext1, ext2 = rng.uniform(0.5, 1.0, 3), rng.uniform(0.5, 1.0, 3)
        rt1 = compose_rt(Rotation.random(random_state=k).as_matrix(), [0, 0, 0], 0.2)
        rt2 = compose_rt(Rotation.random(random_state=k + 7).as_matrix(),
                         rng.normal(0, 0.03, 3), 0.2)
        in1, in2 = inside(rt1, ext1), inside(rt2, ext2)
        counted = np.sum(in1 & in2) / np.sum(in1 | in2)
        assert counted > 0.1
        assert iou_3d(rt1, rt2, ext1, ext2, "oriented") == pytest.approx(counted, abs=0.01)


def test_evaluate_scores_the_oriented_mode_on_request_and_names_unknown_modes():
    truth = obj("camera", [0.0, 0.0, 1.0])
    pred = obj("camera", [0.0, 0.0, 1.0], R=rot("y", 30))
    result = frame([truth], [pred])
    scores = evaluate([result], ("nocs", "exact", "oriented"))
    assert set(scores["modes"]) == {"nocs", "exact", "oriented"}
    assert "oriented" in scores["modes"]["oriented"]["iou_mode"]
    iou = {m: iou_3d(result["pred_RTs"][0], result["gt_RTs"][0], result["pred_scales"][0],
                     result["gt_scales"][0], m) for m in ("exact", "oriented")}
    assert iou["exact"] < 0.5 < iou["oriented"] < 0.75  # the bounds inflate the turned box
    camera = {m: scores["modes"][m]["classes"]["camera"] for m in iou}
    assert camera["exact"]["IoU50"] == pytest.approx(0.0)
    assert camera["oriented"]["IoU50"] == pytest.approx(100.0)
    assert camera["oriented"]["IoU75"] == pytest.approx(0.0)
    assert set(evaluate([result])["modes"]) == {"nocs", "exact"}  # the default stays
    with pytest.raises(ValueError, match="unknown IoU mode 'rotated'"):
        evaluate([result], ("rotated",))


def test_symmetric_iou_searches_20_rotations_of_the_prediction():
    ext = np.array([0.5, 1.0, 0.5]) / np.sqrt(1.5)
    gt = compose_rt(rot("x", 10), [0.0, 0.0, 1.5], 0.3)
    pred = compose_rt(rot("x", 10) @ rot("y", 36), [0.0, 0.0, 1.5], 0.3)  # 36 = 2 x 18 deg
    for mode in (*MODES, "oriented"):
        assert iou_3d(pred, gt, ext, ext, mode, symmetric=True) == pytest.approx(1.0)
        assert iou_3d(pred, gt, ext, ext, mode, symmetric=False) < 0.9


def typical_mug() -> dict:
    # A mug of metric size ~0.15 m, 0.9 m in front of the camera, a little right and down.
    return obj("mug", [0.1, 0.05, 0.9])


def test_three_cm_shift_keeps_iou75_under_nocs_not_under_exact():
    mug = typical_mug()
    f = frame([mug], [perturbed(mug, dt=[0.03, 0.0, 0.0])])
    ious = {
        mode: iou_3d(f["pred_RTs"][0], f["gt_RTs"][0], mug["e"], mug["e"], mode) for mode in MODES
    }
    assert ious["nocs"] == pytest.approx(0.932, abs=1e-3)
    assert ious["exact"] == pytest.approx(0.116 / 0.176, abs=1e-3)  # (w - 3) / (w + 3), w = 14.6 cm
    m = evaluate([f])
    assert cls_metrics(m, "nocs", "mug")["IoU75"] == 100.0
    assert cls_metrics(m, "exact", "mug")["IoU75"] == 0.0
    # The leniency is not universal: along the depth axis, close to the camera, the eight
    # depth-dominated factors all shrink, and even `nocs` drops below 0.75.
    near = obj("mug", [0.0, 0.0, 0.5])
    g = frame([near], [perturbed(near, dt=[0.0, 0.0, 0.03])])
    assert iou_3d(g["pred_RTs"][0], g["gt_RTs"][0], near["e"], near["e"], "nocs") < 0.75


def test_size_error_20_percent_keeps_iou75_under_nocs_not_under_exact():
    mug = typical_mug()
    f = frame([mug], [perturbed(mug, scale=1.2)])
    exact = iou_3d(f["pred_RTs"][0], f["gt_RTs"][0], mug["e"], mug["e"], "exact")
    assert exact == pytest.approx(1.0 / 1.2**3)  # nested boxes: vol ratio
    assert iou_3d(f["pred_RTs"][0], f["gt_RTs"][0], mug["e"], mug["e"], "nocs") > 0.8
    m = evaluate([f])
    assert cls_metrics(m, "nocs", "mug")["IoU75"] == 100.0
    assert cls_metrics(m, "exact", "mug")["IoU75"] == 0.0
    assert cls_metrics(m, "exact", "mug")["IoU50"] == 100.0


def test_false_positive_behind_and_beside_the_object():
    mug = typical_mug()
    behind = perturbed(mug, dt=[0.0, 0.0, 0.5])
    beside = perturbed(mug, dt=[0.3, 0.0, 0.0])
    f_behind, f_beside = frame([mug], [behind]), frame([mug], [beside])

    def iou(f, mode):
        return iou_3d(f["pred_RTs"][0], f["gt_RTs"][0], mug["e"], mug["e"], mode)

    # 0.5 m behind: the faithful NOCS arithmetic does NOT match it at IoU 0.1 either. Per corner
    # the max over (x, y, z) is the depth, so a pure depth offset lengthens all eight intervals
    # [min(x, y), z] from ~0.97 m to ~1.47 m and the 8-factor ratio is ~(0.97/1.47)^8 ~ 0.03.
    assert iou(f_behind, "nocs") == pytest.approx(0.0257, abs=5e-4)
    assert iou(f_behind, "exact") == 0.0
    m = evaluate([f_behind])
    for mode in MODES:
        assert cls_metrics(m, mode, "mug")[RECALL_KEY] == 0.0
    # 20 cm behind, with no overlap at all, it still matches under `nocs` at IoU 0.1.
    f_near_behind = frame([mug], [perturbed(mug, dt=[0.0, 0.0, 0.2])])
    assert iou(f_near_behind, "nocs") == pytest.approx(0.188, abs=1e-3)
    assert iou(f_near_behind, "exact") == 0.0
    m = evaluate([f_near_behind])
    assert cls_metrics(m, "nocs", "mug")[RECALL_KEY] == 100.0
    assert cls_metrics(m, "exact", "mug")[RECALL_KEY] == 0.0
    # 30 cm beside it (no overlap at all): only min(x, y) of some corners changes, so `nocs`
    # still gives 0.86 and matches even at IoU 0.75; `exact` gives 0.
    assert iou(f_beside, "nocs") == pytest.approx(0.857, abs=1e-3)
    assert iou(f_beside, "exact") == 0.0
    m = evaluate([f_beside])
    assert cls_metrics(m, "nocs", "mug")[RECALL_KEY] == 100.0
    assert cls_metrics(m, "nocs", "mug")["IoU75"] == 100.0
    assert cls_metrics(m, "exact", "mug")[RECALL_KEY] == 0.0
    assert cls_metrics(m, "exact", "mug")["IoU25"] == 0.0


def test_class_without_ground_truth_is_missing_not_averaged():
    bottle, mug = obj("bottle", [-0.2, 0.0, 0.8]), obj("mug", [0.2, 0.0, 0.8])
    camera_fp = obj("camera", [0.0, 0.2, 0.9])
    # the mug is missed entirely: its IoU APs are 0, the bottle's 100
    m = evaluate([frame([bottle, mug], [bottle, camera_fp])])
    for mode in MODES:
        block = m["modes"][mode]
        assert block["missing_classes"] == ["bowl", "camera", "can", "laptop"]
        cam = block["classes"]["camera"]
        assert cam["num_gt"] == 0 and cam["num_pred"] == 1
        assert all(cam[k] is None for k in (*METRIC_KEYS, RECALL_KEY)) and cam["curves"] is None
        mean = block["classes"]["mean"]
        assert mean["classes_averaged"] == ["bottle", "mug"]
        assert mean["IoU50"] == pytest.approx(50.0)  # (100 + 0) / 2, not diluted by 4 missing
        # mug pose: nothing got through the IoU gate -> 0 (reported, not None)
        assert block["classes"]["mug"]["5deg5cm"] == 0.0
        assert mean["5deg5cm"] == pytest.approx(50.0)
    table = format_table(m, "exact")
    assert "n/a" in table and "exact" in table and "missing" in table


def test_missed_object_lowers_recall_not_pose_ap():
    a, b = obj("can", [-0.2, 0.0, 0.8]), obj("can", [0.2, 0.0, 0.8])
    m = evaluate([frame([a, b], [a])])
    for mode in MODES:
        e = cls_metrics(m, mode, "can")
        assert e["IoU50"] == pytest.approx(50.0) and e[RECALL_KEY] == pytest.approx(50.0)
        assert all(e[k] == pytest.approx(100.0) for k in POSE_KEYS)


def test_voc_ap_by_hand():
    # 2 gts; predictions by score: TP (0.9), FP (0.8), TP (0.7).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    a, b = obj("laptop", [-0.4, 0.0, 1.2]), obj("laptop", [0.4, 0.0, 1.2])
    fp = obj("laptop", [0.0, 0.0, 2.2])  # far behind: no overlap with either gt in both modes
    m = evaluate([frame([a, b], [a, fp, b], scores=[0.9, 0.8, 0.7])])
    for mode in MODES:
        assert cls_metrics(m, mode, "laptop")["IoU50"] == pytest.approx(500.0 / 6.0)
        assert cls_metrics(m, mode, "laptop")["10deg5cm"] == pytest.approx(100.0)


def test_rt_validation_errors_name_the_key():
    good = frame([obj("mug", [0, 0, 0.8])], [obj("mug", [0, 0, 0.8])])

    def broken(key, value):
        r = dict(good)
        r[key] = value
        return r

    shear = good["pred_RTs"].copy()
    shear[0, 3] = [0.0, 0.0, 0.1, 1.0]
    mirror = good["gt_RTs"].copy()
    mirror[0, :3, 0] *= -1
    cases = {
        "gt_RTs": [
            np.zeros((1, 3, 4)),
            np.eye(4)[None][[0, 0]],  # 2 RTs for 1 object
            mirror,
            shear,
            np.full((1, 4, 4), np.nan),
        ],
        "pred_RTs": [np.eye(3)[None], shear, mirror, np.eye(4)],
        "pred_scales": [np.ones((1, 2)), -np.ones((1, 3))],
        "gt_scales": [np.ones((2, 3))],
        "pred_scores": [np.ones(2)],
        "gt_handle_visibility": [np.ones(3)],
        "pred_class_ids": [np.array([7])],
    }
    for key, values in cases.items():
        for v in values:
            with pytest.raises(ValueError, match=key):
                validate_result(broken(key, v))
    r = dict(good)
    del r["pred_RTs"]
    with pytest.raises(ValueError, match="pred_RTs"):
        validate_result(r)
    with pytest.raises(ValueError, match="pred_RTs"):
        evaluate([good, broken("pred_RTs", shear)])
    with pytest.raises(ValueError, match="gt_R"):
        make_result(
            [1],
            np.ones((1, 3, 3)),
            np.zeros((1, 3)),
            [1.0],
            np.ones((1, 3)),
            [],
            [],
            np.zeros((0, 3, 3)),
            np.zeros((0, 3)),
            [],
            np.zeros((0, 3)),
        )


def test_make_save_load_roundtrip(tmp_path):
    mug = obj("mug", [0.1, -0.05, 0.7], rot("z", 30))
    f = frame([mug], [perturbed(mug, dt=[0.01, 0, 0])], vis=[0])
    R, t, s = mug["R"], mug["t"], mug["s"]
    assert np.allclose(f["gt_RTs"][0, :3, :3], s * R) and np.allclose(f["gt_RTs"][0, :3, 3], t)
    assert np.allclose(f["gt_RTs"][0, 3], [0, 0, 0, 1])
    assert np.allclose(f["gt_scales"][0] * s, MEAN_SIZES_M["mug"])  # metric size = s * extents
    assert f["gt_bboxes"].shape == (1, 4) and f["pred_bboxes"].shape == (1, 4)
    path = tmp_path / "0000.pkl"
    save_result(path, f)
    g = load_result(path)
    assert set(g) >= {
        "gt_class_ids",
        "gt_bboxes",
        "gt_RTs",
        "gt_scales",
        "gt_handle_visibility",
        "pred_class_ids",
        "pred_bboxes",
        "pred_scores",
        "pred_RTs",
        "pred_scales",
    }
    for k in f:
        assert np.array_equal(f[k], g[k]), k
    empty = frame([], [])
    assert empty["gt_RTs"].shape == (0, 4, 4) and empty["pred_scales"].shape == (0, 3)
    assert evaluate([empty])["modes"]["nocs"]["classes"]["mean"]["IoU50"] is None


def test_table_and_plot(tmp_path):
    frames = [frame(scene(s), scene(s)) for s in range(2)]
    m = evaluate(frames, modes=("nocs",))
    assert list(m["modes"]) == ["nocs"]
    table = format_table(m, "nocs")
    lines = table.splitlines()
    assert "nocs" in lines[0]
    assert sum(line.split()[0] in (*CATEGORIES, "mean") for line in lines[2:]) == 7
    assert "5°2cm" in table and "Rec@0.1" in table
    with pytest.raises(ValueError, match="exact"):
        format_table(m, "exact")
    path = tmp_path / "ap.png"
    plot_ap_curves(m, path, "nocs")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tied_scores_make_ap_independent_of_frame_order():
    """Ground-truth masks score every instance 1.0: frame order must not change the AP."""
    good_gt, bad_gt = obj("camera", [0.0, 0.0, 0.8]), obj("camera", [0.1, 0.0, 0.9])
    good = frame([good_gt], [perturbed(good_gt, dR=rot("x", 1))], scores=[1.0])
    bad = frame([bad_gt], [perturbed(bad_gt, dR=rot("x", 20))], scores=[1.0])
    a = cls_metrics(evaluate([good, bad]), "nocs", "camera")["10deg5cm"]
    b = cls_metrics(evaluate([bad, good]), "nocs", "camera")["10deg5cm"]
    assert a == b == pytest.approx(25.0)
