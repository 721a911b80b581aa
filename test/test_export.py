"""Export round trip: TorchScript + metadata, loaded without the project's model code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clipose_ros.categories import CAMERA_INTRINSICS, CATEGORIES
from clipose_ros.core.estimators import CliposeEstimator, axis_confidences
from clipose_ros.core.mug_handle import Handle, handle_confidence
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.geometry import rotation_angle_deg
from clipose_ros.model.checkpoint import CheckpointError, save_checkpoint
from clipose_ros.model.export import export_checkpoint, export_model, parity_inputs
from clipose_ros.model.loader import META_NAME, ModelFileError, load_pose_model
from clipose_ros.model.network import NetConfig, PoseNet
from clipose_ros.points import PointsConfig

SMALL = NetConfig(
    n_graph=128, n_coarse=32, k=8, c1=16, c2=32, c3=32, c4=64, coord_channels=16, head_hidden=64
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, PoseNet]:
    torch.manual_seed(0)
    net = PoseNet(SMALL).eval()
    path = tmp_path_factory.mktemp("export") / "pose.pt"
    export_model(net, path, PointsConfig(), {"training_data": {"train": "unit test"}})
    return path, net


def test_round_trip_in_a_process_without_the_model_code(exported, tmp_path):
    path, net = exported
    pts, cls = parity_inputs(1028, batch=5, seed=7)
    np.save(tmp_path / "pts.npy", pts.numpy())
    np.save(tmp_path / "cls.npy", cls.numpy())
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        files = {{"{META_NAME}": ""}}
        m = torch.jit.load({str(path)!r}, map_location="cpu", _extra_files=files)
        pts = torch.from_numpy(np.load({str(tmp_path / "pts.npy")!r}))
        cls = torch.from_numpy(np.load({str(tmp_path / "cls.npy")!r}))
        with torch.no_grad():
            R, t, size, conf = m(pts, cls)
        np.savez({str(tmp_path / "out.npz")!r}, R=R.numpy(), t=t.numpy(), size=size.numpy(),
                 conf=conf.numpy())
        meta = json.loads(files["{META_NAME}"])
        assert not any(k.startswith("clipose_ros") for k in sys.modules), "imported clipose_ros"
        print(json.dumps(meta))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    meta = json.loads(run.stdout.strip().splitlines()[-1])
    assert meta["categories"] == list(CATEGORIES) and meta["n_points"] == 1028
    assert set(meta["mean_sizes"]) == set(CATEGORIES)
    assert meta["points"]["n_points"] == 1028 and meta["training_data"]["train"] == "unit test"
    got = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        ref = net(pts, cls)
    for key, r in zip(("R", "t", "size", "conf"), ref, strict=True):
        assert np.abs(got[key] - r.numpy()).max() <= 1e-4, key


def test_missing_truncated_and_foreign_files_are_refused(exported, tmp_path):
    path, _ = exported
    with pytest.raises(ModelFileError, match="not found.*clipose-train"):
        load_pose_model(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="cut.pt.*truncated"):
        CliposeEstimator(str(cut))
    foreign = tmp_path / "linear.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(torch.nn.Linear(3, 3)).save(str(foreign))
    with pytest.raises(ModelFileError, match="linear.pt.*not a clipose pose model"):
        load_pose_model(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="text.pt"):
        load_pose_model(text)


def test_estimator_on_a_frame(exported):
    path, _ = exported
    est = CliposeEstimator(str(path), device="auto")  # cpu here
    assert est.needs_nocs_map is False
    depth = np.zeros((120, 160), np.float32)
    depth[30:80, 40:90] = 0.7
    rgb = np.zeros((120, 160, 3), np.uint8)
    mask_a = depth > 0
    mask_b = np.zeros_like(mask_a)
    mask_b[5:8, 5:8] = True  # 9 pixels: too few points, no pose
    frame = Frame(rgb, depth, CAMERA_INTRINSICS)
    insts = [
        Instance(3, 0.9, mask_a, np.array([30, 40, 80, 90])),
        Instance(1, 0.8, mask_b, np.array([5, 5, 8, 8])),
    ]
    poses = est.estimate(frame, insts)
    assert len(poses) == 1 and poses[0].class_id == 3 and poses[0].score == 0.9
    assert np.allclose(poses[0].R.T @ poses[0].R, np.eye(3), atol=1e-5)
    assert set(est.last_timings) == {"points_ms", "pose_ms"}
    assert all(v >= 0 for v in est.last_timings.values())
    assert est.estimate(frame, []) == []


def test_subsets_average_the_network_over_disjoint_point_subsets(exported):
    path, net = exported  # n_graph 128 of 1028 points: up to 8 disjoint subsets
    depth = np.zeros((120, 160), np.float32)
    depth[30:80, 40:90] = 0.7 + 0.002 * np.arange(50)[None, :]
    frame = Frame(np.zeros((120, 160, 3), np.uint8), depth, CAMERA_INTRINSICS)
    insts = [Instance(c, 0.9, depth > 0, np.array([30, 40, 80, 90])) for c in (3, 1)]
    # the network alone: no geometric fit after it (the box fit would move the centres)
    one, two = (CliposeEstimator(str(path), subsets=k, box_fit=False, laptop_lid=False)
                for k in (1, 2))
    points, _ = one.prepare(frame, insts)
    with torch.no_grad():
        R, t, size, conf = net(torch.from_numpy(np.roll(points, -128, axis=1)),
                               torch.tensor([3, 1]))
        _, _, _, conf_first = net(torch.from_numpy(points), torch.tensor([3, 1]))
    alone, both = one.estimate(frame, insts), two.estimate(frame, insts)
    # rotation confidence: the subsets' mean axis confidences; camera both axes, bottle y alone
    mean_conf = ((conf + conf_first) / 2).double().numpy()
    assert both[0].pose_confidence == pytest.approx(mean_conf[0, 0] * mean_conf[0, 1])
    assert both[1].pose_confidence == pytest.approx(mean_conf[1, 0])
    assert alone[0].pose_confidence == pytest.approx(float(conf_first[0, 0] * conf_first[0, 1]))
    for a, b, t_second, s_second in zip(alone, both, t.numpy(), size.numpy(), strict=True):
        # translation and size: the mean of the two subsets' estimates
        np.testing.assert_allclose(b.t, (a.t + t_second) / 2, atol=1e-5)
        np.testing.assert_allclose(b.size, (a.size + s_second) / 2, atol=1e-5)
        np.testing.assert_allclose(b.R.T @ b.R, np.eye(3), atol=1e-9)
        assert np.linalg.det(b.R) == pytest.approx(1.0)
    # camera (asymmetric): between the two; bottle (symmetric): the mean y axis
    mid = rotation_angle_deg(alone[0].R, R[0].double().numpy())
    assert rotation_angle_deg(both[0].R, alone[0].R) <= mid / 2 + 1e-3
    mean_y = alone[1].R[:, 1] + R[1, :, 1].double().numpy()
    np.testing.assert_allclose(both[1].R[:, 1], mean_y / np.linalg.norm(mean_y), atol=1e-5)
    with pytest.raises(ValueError, match=r"subsets must be 1\.\.8"):
        CliposeEstimator(str(path), subsets=9)


def test_axis_confidences_keep_the_turn_about_y_only_where_it_is_defined():
    mug, camera, bowl = (CATEGORIES.index(c) + 1 for c in ("mug", "camera", "bowl"))
    conf = np.array([0.8, 0.5])
    pose = ObjectPose(camera, 1.0, np.eye(3), np.zeros(3), np.ones(3),
                      axis_confidence=axis_confidences(conf, camera, handle_search=True))
    assert pose.pose_confidence == pytest.approx(0.4)
    pose.axis_confidence = axis_confidences(conf, bowl, handle_search=True)
    assert np.isnan(pose.axis_confidence[1]) and pose.pose_confidence == pytest.approx(0.8)
    # a mug: without the search the network's turn is kept with its confidence; a handle not
    # found leaves the turn about y undefined; a handle found speaks for the turn itself
    np.testing.assert_allclose(axis_confidences(conf, mug, handle_search=False), conf)
    assert np.isnan(axis_confidences(conf, mug, handle_search=True)[1])
    tight = Handle(np.array([1.0, 0.0, 0.0]), points=64, share=0.9, spread_deg=4.0)
    loose = Handle(np.array([1.0, 0.0, 0.0]), points=16, share=0.6, spread_deg=12.0)
    found = axis_confidences(conf, mug, True, tight, conf_scale_rad=0.1)
    assert found[0] == 0.8 and found[1] == pytest.approx(handle_confidence(tight, 0.1))
    assert axis_confidences(conf, mug, True, loose, 0.1)[1] < found[1]
    # files of clipose-pose-1 (one value): the y confidence of a symmetric class; for the
    # others a product with a dead x confidence, so none at all
    pose.axis_confidence = axis_confidences(np.float64(0.3), camera, handle_search=True)
    assert np.isnan(pose.pose_confidence)
    pose.axis_confidence = axis_confidences(np.float64(0.3), bowl, handle_search=True)
    assert pose.pose_confidence == pytest.approx(0.3)
    assert np.isnan(ObjectPose(camera, 1.0, np.eye(3), np.zeros(3), np.ones(3)).pose_confidence)


def test_export_from_checkpoint_and_bad_checkpoints(tmp_path):
    torch.manual_seed(0)
    net = PoseNet(SMALL)
    cfg = {"net": SMALL.to_dict(), "points": PointsConfig().to_dict()}
    cfg["points"].pop("version")
    ckpt = tmp_path / "last.pt"
    save_checkpoint(
        ckpt,
        {
            "model": net.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "epoch": 3,
            "step_in_epoch": 0,
            "global_step": 30,
            "config": cfg,
            "data_description": {"train": "x"},
        },
    )
    meta = export_checkpoint(ckpt, tmp_path / "m.pt")
    assert meta["trained_epochs"] == 3 and len(meta["config_hash"]) == 16
    _, loaded_meta = load_pose_model(tmp_path / "m.pt")
    assert loaded_meta["config_hash"] == meta["config_hash"]
    wrong = dict(cfg, net=dict(cfg["net"], c4=32))
    save_checkpoint(
        tmp_path / "wrong.pt",
        {
            "model": net.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "config": wrong,
        },
    )
    with pytest.raises(CheckpointError, match="wrong.pt.*does not fit"):
        export_checkpoint(tmp_path / "wrong.pt", tmp_path / "w.pt")


def test_clipose_eval_with_the_exported_model(exported, tmp_path):
    from clipose_ros.data.synth import SynthConfig, generate
    from clipose_ros.metrics import load_result
    from clipose_ros.tools.evaluate import main as eval_main

    path, _ = exported
    generate(tmp_path / "data", "test", 1, 2, 3, 0, SynthConfig(max_objects=2, max_distractors=0))
    out = tmp_path / "eval"
    eval_main(
        [
            "--data",
            str(tmp_path / "data" / "test"),
            "--out",
            str(out),
            "--estimator",
            "clipose",
            "--model",
            str(path),
            "--vis",
            "1",
        ]
    )
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["estimator"] == "CliposeEstimator" and scores["num_frames"] == 2
    assert scores["ranking"] == "detection"
    assert len(list((out / "results").glob("*.pkl"))) == 2
    # ranked by the rotation confidence: ground-truth masks score 1, so the scores are the
    # confidences, which every result keeps either way
    ranked = tmp_path / "ranked"
    eval_main(["--data", str(tmp_path / "data" / "test"), "--out", str(ranked), "--estimator",
               "clipose", "--model", str(path), "--vis", "0", "--ranking", "pose"])
    assert json.loads((ranked / "metrics.json").read_text())["ranking"] == "pose"
    for by_pose in sorted((ranked / "results").glob("*.pkl")):
        a, b = load_result(by_pose), load_result(out / "results" / by_pose.name)
        assert np.all(b["pred_scores"] == 1.0) and len(a["pred_scores"]) > 0
        np.testing.assert_allclose(a["pred_scores"], a["pred_pose_confidences"])
        np.testing.assert_allclose(a["pred_pose_confidences"], b["pred_pose_confidences"])
        assert np.all((a["pred_scores"] >= 0) & (a["pred_scores"] <= 1))
    with pytest.raises(SystemExit, match="clipose-eval: .*nope.pt"):
        eval_main(
            [
                "--data",
                str(tmp_path / "data" / "test"),
                "--out",
                str(out),
                "--estimator",
                "clipose",
                "--model",
                str(tmp_path / "nope.pt"),
            ]
        )


def test_a_cut_aware_model_is_told_which_image_borders_cut_each_mask(tmp_path):
    """``NetConfig.cut_input``: the exported file takes the cut direction, and the estimator
    gives it the one of each mask (left border: -x; none: zero), in every point subset."""
    torch.manual_seed(0)
    net = PoseNet(replace(SMALL, cut_input=True)).eval()
    with torch.no_grad():  # large condition weights, so that the cut visibly moves the box
        net.heads.trunk[0].weight.normal_(0.0, 1.0)
    path = tmp_path / "cut.pt"
    meta = export_model(net, path, PointsConfig(), {"training_data": {"train": "unit test"}})
    assert meta["net"]["cut_input"] is True and meta["parity_max_abs_diff"] <= 1e-4
    depth = np.zeros((120, 160), np.float32)
    depth[30:80, 0:50] = 0.7  # reaches the left border
    depth[30:80, 90:140] = 0.7  # whole
    frame = Frame(np.zeros((120, 160, 3), np.uint8), depth, CAMERA_INTRINSICS)
    left, inner = np.zeros_like(depth, bool), np.zeros_like(depth, bool)
    left[:, :60], inner[:, 60:] = depth[:, :60] > 0, depth[:, 60:] > 0
    insts = [Instance(3, 0.9, left, np.array([30, 0, 80, 50])),
             Instance(3, 0.9, inner, np.array([30, 90, 80, 140]))]
    est = CliposeEstimator(str(path), subsets=2, mug_handle=False, border_fit=False,
                           box_fit=False, laptop_lid=False)
    assert est.cut_input
    points, _ = est.prepare(frame, insts)
    cut = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with torch.no_grad():
        first = net(torch.from_numpy(points), torch.tensor([3, 3]), cut)
        second = net(torch.from_numpy(np.roll(points, -128, axis=1)), torch.tensor([3, 3]), cut)
        uncut = net(torch.from_numpy(points), torch.tensor([3, 3]))
    poses = est.estimate(frame, insts)
    for j, pose in enumerate(poses):
        np.testing.assert_allclose(pose.t, (first[1][j] + second[1][j]).numpy() / 2, atol=1e-5)
    assert not torch.allclose(first[1][0], uncut[1][0], atol=1e-3)  # the cut changes the box
    torch.testing.assert_close(first[1][1], uncut[1][1])  # no cut: as if none were given
