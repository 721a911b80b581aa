"""clipose-yolo-labels: YOLO-seg labels from any NOCS-format folder, read back by ultralytics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clipose_ros.data import nocs_format as nf
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.data.yolo_format import write_data_yaml
from clipose_ros.tools.yolo_labels import convert, frame_stem, main


@pytest.fixture(scope="module")
def nocs_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("yolo_src")
    generate(out, "test", 4, 2, seed=21, cfg=SynthConfig(depth_noise=False), progress=False)
    return out


def _read_lines(path):
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        xy = np.array(parts[1:], dtype=np.float64).reshape(-1, 2)
        rows.append((int(parts[0]), xy))
    return rows


def test_polygons_lie_inside_their_instance_masks(nocs_folder, tmp_path):
    stats = convert(nocs_folder / "test", tmp_path / "yolo", "test", progress=False)
    frames = nf.list_frames(nocs_folder / "test")
    assert stats.frames == len(frames)
    total = 0
    for prefix in frames:
        mask = nf.read_mask(prefix)
        label = nf.read_label(prefix)
        h, w = mask.shape
        rows = _read_lines(tmp_path / "yolo" / "labels" / "test" /
                           f"{frame_stem(nocs_folder / 'test', prefix)}.txt")
        assert len(rows) == len(label)
        for (cls, xy), iid, cid in zip(rows, label.instance_ids, label.class_ids, strict=True):
            assert cls == cid - 1
            inst = mask == iid
            px = np.round(xy * [w, h]).astype(int)
            # Every vertex is a pixel of this instance ...
            assert inst[px[:, 1], px[:, 0]].all()
            # ... and the filled polygon covers the instance's largest piece, not its neighbours.
            filled = np.zeros_like(mask)
            cv2.fillPoly(filled, [px.reshape(-1, 1, 2)], 1)
            filled = filled.astype(bool)
            other = (mask != iid) & (mask != nf.BACKGROUND_ID)
            assert (filled & other).sum() <= 0.02 * filled.sum() + 10
            assert (filled & inst).sum() >= 0.5 * inst.sum()
            total += 1
    assert total == stats.instances > 0


def test_converter_matches_the_generators_own_labels(nocs_folder, tmp_path):
    """One implementation: labels converted afterwards equal those clipose-synth wrote."""
    convert(nocs_folder / "test", tmp_path / "yolo", "test", progress=False)
    written = sorted((nocs_folder / "yolo" / "labels" / "test").glob("*.txt"))
    assert written
    for path in written:
        assert (tmp_path / "yolo" / "labels" / "test" / path.name).read_text() == path.read_text()


def test_ultralytics_reads_the_converted_labels(nocs_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    convert(nocs_folder / "test", tmp_path / "yolo", "val", progress=False)
    data = check_det_dataset(str(tmp_path / "yolo" / "data.yaml"))
    assert data["names"][5] == "mug" and data["nc"] == 6
    dataset = YOLODataset(img_path=data["val"], data=data, task="segment", augment=False)
    frames = nf.list_frames(nocs_folder / "test")
    assert len(dataset.labels) == len(frames)
    by_stem = {p["im_file"].rsplit("/", 1)[1][:-4]: p for p in dataset.labels}
    for prefix in frames:
        label = nf.read_label(prefix)
        entry = by_stem[frame_stem(nocs_folder / "test", prefix)]
        assert sorted(entry["cls"].ravel().astype(int) + 1) == sorted(label.class_ids)
        assert len(entry["segments"]) == len(label)


def test_other_class_ids_and_hidden_instances_are_skipped(nocs_folder, tmp_path):
    import shutil

    data = tmp_path / "nocs"
    shutil.copytree(nocs_folder / "test", data)
    prefix = nf.list_frames(data)[0]
    rows = nf.read_meta(prefix)
    # A distractor line (class 0, as some datasets carry) and an instance not in the mask.
    rows = [(rows[0][0], 0, rows[0][2]), *rows[1:], (200, 3, "hidden")]
    nf.write_meta(prefix, rows)
    stats = convert(data, tmp_path / "yolo", "train", copy=True, progress=False)
    lines = _read_lines(tmp_path / "yolo" / "labels" / "train" / f"{frame_stem(data, prefix)}.txt")
    assert len(lines) == len(rows) - 2
    assert stats.skipped_instances == 2
    image = tmp_path / "yolo" / "images" / "train" / f"{frame_stem(data, prefix)}.png"
    assert image.is_file() and not image.is_symlink()
    text = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "only the 'train' split exists" in text and "val: images/train" in text


def test_data_yaml_prefers_test_then_val_and_cli_errors_are_clear(tmp_path, capsys):
    assert write_data_yaml(tmp_path / "empty") is None
    for split in ("train", "val", "test"):
        (tmp_path / "y" / "images" / split).mkdir(parents=True)
    text = write_data_yaml(tmp_path / "y").read_text()
    assert "train: images/train" in text and "val: images/test" in text
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--split", "x"])
    with pytest.raises(SystemExit, match="plain folder name"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--split", "../up"])
