"""clipose-eval end to end: result files in the NOCS convention, metrics, plots, mask sources."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from clipose_ros import metrics
from clipose_ros.core.estimators import NocsMapEstimator
from clipose_ros.data import nocs_format as nf
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.tools.evaluate import (
    GroundTruthMasks,
    ResultFileMasks,
    frame_key,
    main,
    run_evaluation,
)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_data")
    generate(out, "test", 6, 2, seed=11, cfg=SynthConfig(depth_noise=False), progress=False)
    return out / "test"


def test_nocs_map_baseline_scores_near_ceiling_and_writes_nocs_results(test_split, tmp_path):
    scores = run_evaluation(
        test_split, NocsMapEstimator(), GroundTruthMasks(), tmp_path, progress=False,
        vis_frames=2, iou_modes=metrics.KNOWN_IOU_MODES,
    )
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    for mode in metrics.KNOWN_IOU_MODES:
        mean = scores["modes"][mode]["classes"]["mean"]
        assert mean["10deg5cm"] == pytest.approx(100.0)
        assert mean["5deg2cm"] == pytest.approx(100.0)
        assert mean["IoU25"] > 90.0
    frames = nf.list_frames(test_split)
    results = sorted((tmp_path / "results").glob("results_*.pkl"))
    assert len(results) == len(frames)
    first = metrics.load_result(results[0])
    label = nf.read_label(frames[0])
    assert np.array_equal(first["gt_class_ids"], label.class_ids)
    # NOCS convention: the rotation block carries the scale, scales are NOCS extents.
    det = np.linalg.det(first["gt_RTs"][0, :3, :3])
    assert det ** (1 / 3) == pytest.approx(label.scales[0])
    assert np.allclose(first["gt_scales"], label.nocs_extents)
    assert np.allclose(first["gt_RTs"][:, 3], [0, 0, 0, 1])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["modes"]["exact"]["classes"]["mean"]["5deg2cm"] == pytest.approx(100.0)
    for mode in metrics.KNOWN_IOU_MODES:
        assert (tmp_path / f"ap_curves_{mode}.png").stat().st_size > 10_000
    # Near-perfect poses keep their boxes under the true overlap too.
    assert scores["modes"]["oriented"]["classes"]["mean"]["IoU75"] > 90.0


def _write_mask_files(test_split, folder, drop_first: bool, false_positive: bool):
    folder.mkdir()
    for prefix in nf.list_frames(test_split):
        label = nf.read_label(prefix)
        mask = nf.read_mask(prefix)
        keep = list(range(1 if drop_first else 0, len(label)))
        masks = [mask == label.instance_ids[k] for k in keep]
        class_ids = [int(label.class_ids[k]) for k in keep]
        if false_positive:  # a bogus detection in an empty image corner
            fp = np.zeros_like(mask, dtype=bool)
            fp[:40, :40] = True
            masks.append(fp)
            class_ids.append(1)
        data = {
            "pred_masks": np.stack(masks, axis=2) if masks else np.zeros((*mask.shape, 0), bool),
            "pred_class_ids": np.array(class_ids),
            "pred_scores": np.linspace(0.9, 0.5, len(class_ids)),
            "pred_bboxes": np.zeros((len(class_ids), 4)),
        }
        with open(folder / f"results_{frame_key(test_split, prefix)}.pkl", "wb") as f:
            pickle.dump(data, f)


def test_mask_files_missing_objects_lower_recall_not_pose_ap(test_split, tmp_path):
    _write_mask_files(test_split, tmp_path / "masks", drop_first=True, false_positive=False)
    scores = run_evaluation(
        test_split, NocsMapEstimator(), ResultFileMasks(tmp_path / "masks"), tmp_path / "out",
        progress=False,
    )
    mean = scores["modes"]["exact"]["classes"]["mean"]
    n_frames = len(nf.list_frames(test_split))
    n_gt = sum(c["num_gt"] for k, c in scores["modes"]["exact"]["classes"].items()
               if k != "mean" and c["num_gt"])
    total_recall = sum(
        c["recall_IoU10"] * c["num_gt"] for k, c in scores["modes"]["exact"]["classes"].items()
        if k != "mean" and c["num_gt"]
    ) / n_gt
    assert total_recall == pytest.approx(100.0 * (n_gt - n_frames) / n_gt, abs=0.5)
    assert mean["10deg5cm"] == pytest.approx(100.0)


def test_bad_mask_file_names_the_file(test_split, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    key = frame_key(test_split, nf.list_frames(test_split)[0])
    (folder / f"results_{key}.pkl").write_bytes(b"not a pickle")
    with pytest.raises(nf.NocsFormatError, match=f"results_{key}.pkl"):
        run_evaluation(
            test_split, NocsMapEstimator(), ResultFileMasks(folder), tmp_path / "out",
            progress=False,
        )


def test_cli_prints_both_tables_and_fails_clearly_on_a_missing_folder(test_split, tmp_path, capsys):
    main(["--data", str(test_split), "--out", str(tmp_path / "cli"), "--max-frames", "3"])
    printed = capsys.readouterr().out
    assert "3D IoU mode: nocs" in printed and "3D IoU mode: exact" in printed
    assert (tmp_path / "cli" / "eval.log").exists()
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cli2")])


def test_spd_style_labels_flipped_frame_and_model_extents(test_split, tmp_path):
    """Labels as the real datasets ship them: no nocs_extents (model extents come from a file),
    poses in the original NOCS flipped camera frame. The scores must not change."""
    import json
    import shutil

    data = tmp_path / "spd"
    shutil.copytree(test_split, data)
    extents = {}
    for prefix in nf.list_frames(data):
        raw = pickle.loads(nf.frame_path(prefix, "label.pkl").read_bytes())
        extents.update(zip(raw["model_list"], np.asarray(raw.pop("nocs_extents")).tolist(),
                           strict=True))
        flip = np.diag([-1.0, -1.0, 1.0])
        raw["rotations"] = flip @ raw["rotations"]
        raw["translations"] = raw["translations"] @ flip
        raw["camera_convention"] = "nocs_flipped"
        nf.frame_path(prefix, "label.pkl").write_bytes(pickle.dumps(raw))
    with pytest.raises(SystemExit, match="neither nocs_extents nor size"):
        main(["--data", str(data), "--out", str(tmp_path / "no_extents"), "--vis", "0"])
    (tmp_path / "extents.json").write_text(json.dumps(extents))
    main(["--data", str(data), "--out", str(tmp_path / "ok"), "--vis", "0",
          "--model-extents", str(tmp_path / "extents.json")])
    scores = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    for mode in metrics.IOU_MODES:
        mean = scores["modes"][mode]["classes"]["mean"]
        assert mean["5deg2cm"] == pytest.approx(100.0)
        assert mean["IoU25"] > 90.0


def test_spd_mask_rcnn_result_files_and_frames_without_detections(test_split, tmp_path):
    """SPD's Mask R-CNN files: keys class_ids/scores/masks/rois, named results_<split>_<key>."""
    folder = tmp_path / "mrcnn"
    folder.mkdir()
    frames = nf.list_frames(test_split)
    for n, prefix in enumerate(frames):
        label, mask = nf.read_label(prefix), nf.read_mask(prefix)
        keep = [] if n == 0 else list(range(len(label)))  # nothing detected in the first frame
        data = {
            "masks": (np.stack([mask == label.instance_ids[k] for k in keep], axis=2)
                      if keep else np.zeros((0,), bool)),
            "class_ids": label.class_ids[keep],
            "scores": np.linspace(0.95, 0.6, len(keep)),
            "rois": label.bboxes[keep],
        }
        name = f"results_{test_split.name}_{frame_key(test_split, prefix)}.pkl"
        (folder / name).write_bytes(pickle.dumps(data))
    scores = run_evaluation(
        test_split, NocsMapEstimator(), ResultFileMasks(folder), tmp_path / "out", progress=False
    )
    classes = scores["modes"]["exact"]["classes"]
    missed = len(nf.read_label(frames[0]))
    n_gt = sum(c["num_gt"] for k, c in classes.items() if k != "mean")
    n_pred = sum(c["num_pred"] for k, c in classes.items() if k != "mean")
    assert n_pred == n_gt - missed
    assert classes["mean"]["10deg5cm"] == pytest.approx(100.0)
