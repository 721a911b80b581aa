"""The shipped segmenter and pipeline on the real sample frames (../shared/real_samples): a
regression guard of what a user with a real camera relies on, not a measure of accuracy (a
handful of frames; the model card has the numbers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clipose_ros.ros.parameters import DEFAULT_POSE_MODEL

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "real_samples"
sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"no real samples at {SAMPLES} (the shared folder is absent)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import real_frames

    out = tmp_path_factory.mktemp("real_frames")
    return real_frames.main(["--out", str(out), "--threads", "2"]), out


def test_shipped_segmenter_finds_the_real275_objects_and_no_phantoms(report):
    result, out = report
    real275 = result["real275"]
    found = {o["object"] for o in real275["objects"] if o["found"]}
    # COCO's four classes at least; the can is the one class learnt from generated frames only.
    assert {"black laptop", "brown mug", "blue-and-white bowl", "white bowl",
            "white mug"} <= found, real275
    assert len(real275["false_positives"]) <= 1, real275["false_positives"]
    assert result["pipeline"]["phantoms"] == 0 and len(result["pipeline"]["published"]) >= 5
    assert (out / "real275_seg.png").is_file() and (out / "real275_poses.png").is_file()


def test_real_laptop_lid_is_found_and_agrees_with_the_network(report):
    """The REAL275 laptop, seen whole: the lid plane in its real depth is found and turns the
    network's pose by less than the 10 deg of a correct pose (the fit is there for laptops the
    network turns wrongly; a wrong plane, the base, the table or a marker board, would turn it
    by tens of degrees). Measured: 0.35 deg with clipose_pose.pt, 5.6 deg with the default
    clipose_pose_clip.pt, whose network is that far off the lid on this frame."""
    (lid,) = report[0]["pipeline"]["lids"]
    assert lid["inlier_fraction"] > 0.8 and lid["points"] > 500, lid
    assert lid["turn_deg"] < 10.0, lid


def test_shipped_segmenter_masks_the_d435_mug(report):
    d435 = report[0]["d435"]
    assert d435["mug_found"] and d435["mask_iou"] >= 0.75, d435


def test_pipeline_turns_the_d435_mug_to_its_handle_with_the_segmenters_mask(report):
    """The same mug through the whole pipeline: the segmenter's mask stops short of the handle,
    which the search then finds in the pixels round the mask (core/mug_handle.ring_points)."""
    (mug,) = report[0]["pipeline_d435"]["mugs"]
    assert mug["centre_on_mug"] and mug["handle"] is not None, mug
    assert mug["x_axis_in_image"][0] < -0.8, mug  # x points left, at the handle
    assert (report[1] / "d435_poses.png").is_file()


def test_d435_mug_pose_points_at_its_handle():
    """The real D435 mug (frame's own mask): its handle is on the left of the image, beside the
    body. The handle search must see it and turn x to it; the up axis stays the network's."""
    import cv2
    import numpy as np

    from clipose_ros.categories import CLASS_IDS
    from clipose_ros.core.estimators import CliposeEstimator
    from clipose_ros.core.mug_handle import handle_confidence
    from clipose_ros.core.structures import Frame, Instance

    folder = SAMPLES / "d435_mug_sarnet"
    rgb = cv2.imread(str(folder / "0000_image.png"))[:, :, ::-1]
    depth = cv2.imread(str(folder / "0000_depth.png"), cv2.IMREAD_UNCHANGED) / 1000.0
    mask = cv2.imread(str(folder / "0000_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    K = np.array([[606.9066, 0, 319.9248], [0, 606.2557, 240.7983], [0, 0, 1.0]])
    ys, xs = np.nonzero(mask)
    mug = Instance(CLASS_IDS["mug"], 1.0, mask, np.array([ys.min(), xs.min(), ys.max(), xs.max()]))
    estimator = CliposeEstimator(str(ROOT / DEFAULT_POSE_MODEL))
    (pose,) = estimator.estimate(Frame(rgb, depth.astype(np.float32), K), [mug])
    assert estimator.handle_seen == [True]
    assert pose.R[:, 1] @ np.array([0.0, -1.0, 0.0]) > np.cos(np.radians(45))  # upright
    assert pose.R[:, 0] @ np.array([-1.0, 0.0, 0.0]) > np.cos(np.radians(20))  # to the left
    # a plain handle in full view: the search trusts its turn (the chance of a right turn
    # above one half; the confidence's ceiling is exp(-3 deg / conf scale))
    (handle,) = estimator.handles
    assert pose.axis_confidence[1] == handle_confidence(handle, estimator.conf_scale_rad)
    assert pose.axis_confidence[1] > 0.5 * np.exp(-np.radians(3.0) / estimator.conf_scale_rad)
