"""The shipped segmenter and pipeline on the real sample frames (../shared/real_samples): a
regression guard of what a user with a real camera relies on, not a measure of accuracy (a
handful of frames; the model card has the numbers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def test_shipped_segmenter_masks_the_d435_mug(report):
    d435 = report[0]["d435"]
    assert d435["mug_found"] and d435["mask_iou"] >= 0.75, d435
