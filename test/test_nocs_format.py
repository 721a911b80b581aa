"""Quirks of the real NOCS files that the reader must undo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clipose_ros.data import nocs_format as nf


def test_camera25_three_channel_depth_and_its_no_depth_value(tmp_path):
    depth_mm = np.array([[700, nf.CAMERA25_NO_DEPTH_MM], [0, 1234]], dtype=np.uint16)
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[:, :, 1] = depth_mm >> 8  # high byte in channel 1, low byte in channel 2 (cv2 BGR)
    bgr[:, :, 2] = depth_mm & 0xFF
    cv2.imwrite(str(tmp_path / "0000_depth.png"), bgr)
    depth = nf.read_depth(tmp_path / "0000")
    assert depth.ravel().tolist() == pytest.approx([0.7, 0.0, 0.0, 1.234])


def test_nocs_coordinates_round_trip_through_the_png(tmp_path):
    rng = np.random.default_rng(0)
    coord = rng.uniform(-0.5, 0.5, (8, 8, 3)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "0000_coord.png"), nf.encode_coord(coord))
    assert np.abs(nf.read_coord(tmp_path / "0000") - coord).max() <= 0.5 / 255 + 1e-6
    # The stored blue (z) channel is flipped, as in the NOCS datasets.
    raw = cv2.imread(str(tmp_path / "0000_coord.png"))[:, :, 0] / 255.0
    assert np.abs(raw - (0.5 - coord[:, :, 2])).max() <= 0.5 / 255 + 1e-6


def test_meta_lines_of_camera25_and_real275(tmp_path):
    (tmp_path / "0000_meta.txt").write_text("1 1 02876657 1a7ba1f4c892e2da30711cdbdbc73924\n")
    (tmp_path / "0001_meta.txt").write_text("1 6 mug_daniel_norm\n\n2 3 camera_canon_len_norm\n")
    assert nf.read_meta(tmp_path / "0000") == [(1, 1, "1a7ba1f4c892e2da30711cdbdbc73924")]
    assert nf.read_meta(tmp_path / "0001") == [
        (1, 6, "mug_daniel_norm"), (2, 3, "camera_canon_len_norm")
    ]
    (tmp_path / "0002_meta.txt").write_text("1 mug\n")
    with pytest.raises(nf.NocsFormatError, match="0002_meta.txt:1"):
        nf.read_meta(tmp_path / "0002")


def test_frames_without_labels_are_skipped_when_labels_are_needed(tmp_path):
    for name in ("0000", "0001"):
        cv2.imwrite(str(tmp_path / f"{name}_color.png"), np.zeros((4, 4, 3), np.uint8))
    nf.write_label(tmp_path / "0000", nf.FrameLabel(
        np.array([1]), np.array([6]), np.zeros((1, 4), int), np.array([0.2]),
        np.eye(3)[None], np.array([[0, 0, 1.0]]), ["m"], np.array([1]),
    ))
    assert [p.name for p in nf.list_frames(tmp_path)] == ["0000", "0001"]
    assert [p.name for p in nf.list_frames(tmp_path, labelled=True)] == ["0000"]
    with pytest.raises(nf.NocsFormatError, match="does not exist"):
        nf.list_frames(tmp_path / "missing")
