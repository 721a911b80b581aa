"""Sensor realism of the generator (issue 11): each effect does what it says and nothing else,
labels stay exact, clean frames stay the original generator's bit for bit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipose_ros.data import nocs_format as nf
from clipose_ros.data import sensor
from clipose_ros.data.synth import SynthConfig, build_scene, generate, main, render_frame

# What the generator wrote before the realism presets existed (commit 4987c0f,
# `generate(out, "test", 3, 1, seed=7, workers=0, cfg=SynthConfig(max_objects=3))`, and the
# same with `depth_noise=False`), per frame: mean colour, mean depth (m) and valid depth pixels,
# pixels per instance mask, mean coordinate-map value, and the labels' t and s. On the machine
# that recorded them `--clean` reproduced those frames bit for bit (sha256 18d86617... and
# 545290c2...); the comparison allows the last-bit differences that another CPU's SIMD paths in
# Embree and NumPy could give at silhouettes, and nothing a change of the generator would.
ORIGINAL_FRAMES = [
    ([79.401, 103.627, 98.132], 0.88, 303077, [62034, 7976], [-0.388, -0.4, 0.399],
     [[0.174353, -0.011802, 0.675579], [-0.18893, -0.001423, 0.780138]], [0.523939, 0.217994]),
    ([184.609, 163.088, 148.863], 0.759, 233643, [47132], [-0.438, -0.435, 0.425],
     [[0.007998, -0.025146, 0.865994]], [0.506816]),
    ([93.993, 90.728, 101.584], 0.664, 208716, [8409], [-0.488, -0.486, 0.483],
     [[0.035098, -0.034022, 0.92168]], [0.276759]),
]  # fmt: skip
ORIGINAL_EXACT_DEPTH = [(0.884, 304670), (0.78, 236859), (0.698, 213663)]  # --no-depth-noise
SL = sensor.STRUCTURED_LIGHT


def _summary(root: Path) -> list[tuple]:
    rows = []
    for prefix in nf.list_frames(root / "test"):
        label = nf.read_label(prefix)
        depth, mask = nf.read_depth(prefix).astype(np.float64), nf.read_mask(prefix)
        ids = sorted(int(i) for i in np.unique(mask) if i != 255)
        rows.append(
            (
                nf.read_color(prefix).reshape(-1, 3).astype(np.float64).mean(0),
                depth.mean(),
                int((depth > 0).sum()),
                [int((mask == i).sum()) for i in ids],
                nf.read_coord(prefix).reshape(-1, 3).astype(np.float64).mean(0),
                label.translations,
                label.scales,
            )
        )
    return rows


def _assert_same_frames(got: list[tuple], colour_depth: list[tuple], depth: list | None = None):
    assert len(got) == len(colour_depth)
    for i, (g, want) in enumerate(zip(got, colour_depth, strict=True)):
        w_depth = depth[i] if depth else want[1:3]
        assert np.allclose(g[0], want[0], atol=0.05), ("colour", i)
        assert abs(g[1] - w_depth[0]) < 5e-4 and abs(g[2] - w_depth[1]) <= 2e-3 * w_depth[1], i
        assert len(g[3]) == len(want[3]), ("instances", i)
        assert np.allclose(g[3], want[3], rtol=2e-3), ("mask pixels", i)
        assert np.allclose(g[4], want[4], atol=5e-3), ("coordinate map", i)
        assert np.allclose(g[5], want[5], atol=2e-6) and np.allclose(g[6], want[6], atol=2e-6)


def test_clean_cli_writes_the_original_frames(tmp_path):
    args = ["--split", "test", "--scenes", "3", "--frames-per-scene", "1", "--seed", "7",
            "--workers", "0", "--max-objects", "3", "--clean"]
    main(["--out", str(tmp_path), *args])
    _assert_same_frames(_summary(tmp_path), ORIGINAL_FRAMES)
    main(["--out", str(tmp_path / "exact"), *args, "--no-depth-noise"])
    _assert_same_frames(_summary(tmp_path / "exact"), ORIGINAL_FRAMES, ORIGINAL_EXACT_DEPTH)
    config = json.loads((tmp_path / "synth_config.json").read_text())
    assert config["sensor"] is None and config["scene"] == "plain"
    # The Python API default (used by the test fixtures and render_scenes without a sensor) is
    # the clean one.
    assert SynthConfig().sensor is None and SynthConfig().scene == "plain"


def test_cli_default_is_the_structured_light_preset_in_room_scenes(tmp_path):
    main(["--out", str(tmp_path), "--split", "test", "--scenes", "1", "--frames-per-scene", "1",
          "--workers", "0", "--max-objects", "2", "--disable", "antialias", "blur"])
    config = json.loads((tmp_path / "synth_config.json").read_text())
    assert config["sensor"] == "structured-light" and config["scene"] == "room"
    assert config["sensor_off"] == ["antialias", "blur"]
    (prefix,) = nf.list_frames(tmp_path / "test")
    record = nf.read_label(prefix).extra["sensor"]
    assert record["preset"] == "structured-light"
    dx, dy = record["depth_offset_px"]
    assert 0.7 <= np.hypot(dx, dy) <= 4.5


def _frame(cfg: SynthConfig, seed: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    placed, distractors, table, fixtures = build_scene(cfg, "test", rng)
    return render_frame(cfg, placed, distractors, table, rng, fixtures, debug=True)


@pytest.fixture(scope="module")
def frames_by_effect():
    """One room frame rendered with no effect, with each effect alone, and with all."""
    def cfg(off):
        return SynthConfig(sensor="structured-light", scene="room", min_objects=3,
                           max_objects=3, sensor_off=tuple(off))
    out = {"none": _frame(cfg(sensor.EFFECTS)), "all": _frame(cfg(()))}
    for effect in sensor.EFFECTS:
        out[effect] = _frame(cfg(set(sensor.EFFECTS) - {effect}))
    return out


def test_each_effect_alone_changes_only_its_own_image_and_never_the_labels(frames_by_effect):
    base = frames_by_effect["none"]
    # With no effect on, the sensor model is the identity on depth.
    np.testing.assert_array_equal(base["depth"], base["debug"]["ideal_depth"])
    for name, frame in frames_by_effect.items():
        np.testing.assert_array_equal(frame["mask"], base["mask"], err_msg=name)
        np.testing.assert_array_equal(frame["coord"], base["coord"], err_msg=name)
        for a, b in zip(frame["instances"], base["instances"], strict=True):
            assert a["model"] == b["model"] and a["bbox"] == b["bbox"], name
            np.testing.assert_array_equal(a["R"], b["R"], err_msg=name)
            np.testing.assert_array_equal(a["t"], b["t"], err_msg=name)
            assert a["scale"] == b["scale"], name
        if name in sensor.DEPTH_EFFECTS:
            np.testing.assert_array_equal(frame["rgb"], base["rgb"], err_msg=name)
            assert not np.array_equal(frame["depth"], base["depth"]), name
        elif name in sensor.COLOUR_EFFECTS:
            np.testing.assert_array_equal(frame["depth"], base["depth"], err_msg=name)
            assert not np.array_equal(frame["rgb"], base["rgb"]), name


def test_value_effects_keep_the_valid_depth_mask(frames_by_effect):
    ideal = frames_by_effect["none"]["depth"]
    for name in ("noise", "correlated", "quantise"):
        depth = frames_by_effect[name]["depth"]
        np.testing.assert_array_equal(depth > 0, ideal > 0, err_msg=name)
    # Quantisation: disparities on the sensor's grid, depth moved by at most half a step.
    valid = ideal > 0
    fb = SL.depth.focal_px * SL.depth.baseline_m
    quantised = frames_by_effect["quantise"]["depth"][valid].astype(np.float64)
    steps = fb / quantised / SL.depth.disparity_step_px
    assert np.abs(steps - np.round(steps)).max() < 1e-3
    z = ideal[valid].astype(np.float64)
    half_step = z ** 2 * SL.depth.disparity_step_px / fb / 2
    assert np.all(np.abs(quantised - z) <= half_step * 1.01 + 1e-6)
    # Pixel noise is white; the correlated noise is correlated between neighbours.
    for name, low, high in (("noise", -0.2, 0.2), ("correlated", 0.5, 1.0)):
        err = frames_by_effect[name]["depth"] - ideal
        smooth = valid & ~sensor.depth_edges(ideal)
        both = smooth[:, :-1] & smooth[:, 1:]
        corr = np.corrcoef(err[:, :-1][both], err[:, 1:][both])[0, 1]
        assert low < corr < high, (name, corr)
        assert np.median(np.abs(err[valid])) < 0.006, name


def test_dropout_and_shadow_only_remove_depth(frames_by_effect):
    ideal = frames_by_effect["none"]["depth"]
    for name in ("dropout", "shadow"):
        depth = frames_by_effect[name]["depth"]
        kept = depth > 0
        np.testing.assert_array_equal(depth[kept], ideal[kept], err_msg=name)
        assert (ideal > 0).sum() - kept.sum() > 100, name


def test_dropout_follows_albedo_gloss_and_angle_in_connected_patches(frames_by_effect):
    model = SL.depth
    cos = np.cos(np.radians([45.0, 65.0, 55.0]))
    dark_glossy = sensor.dropout_probability(
        model, np.float32([0.08, 0.08]), np.float32([0.7, 0.7]), cos[:2])
    bright_matte = sensor.dropout_probability(
        model, np.float32([0.9]), np.float32([0.0]), cos[2:])
    assert 0.1 < dark_glossy[0] < dark_glossy[1] < 0.8  # steeper view, more dropout
    assert bright_matte[0] < 0.01
    # Holes come in patches: their connected components are far larger than single pixels.
    frame = frames_by_effect["dropout"]
    holes = (frame["depth"] == 0) & (frame["debug"]["ideal_depth"] > 0)
    n, _, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    assert n > 1 and np.mean(stats[1:, cv2.CC_STAT_AREA]) > 3


def test_shadow_falls_left_of_a_foreground_edge_as_wide_as_the_disparity_jump():
    depth = np.full((20, 200), 2.0, dtype=np.float32)
    depth[:, 100:150] = 1.0
    fx, b = 577.5, 0.065
    hidden = sensor.second_view_shadow(depth, fx, b, outside_band=False)
    # Background column u is hidden when u - fx b / 2 lies past column 100 - fx b / 1 (-0.5).
    first = int(np.floor(100 - fx * b / 1.0 + fx * b / 2.0 - 0.5)) + 1
    assert list(np.flatnonzero(hidden[0])) == list(range(first, 100))
    assert not hidden[:, 100:].any()
    band = sensor.second_view_shadow(depth, fx, b, outside_band=True)
    assert band[0, :int(fx * b / 2.0)].all()  # stereo: the band only one imager sees


def test_fattening_moves_foreground_over_its_edges_only(frames_by_effect):
    ideal = frames_by_effect["none"]["depth"]
    fat = frames_by_effect["fattening"]["depth"]
    changed = fat != ideal
    assert changed.any()
    assert np.all((fat[changed] < ideal[changed]) | (ideal[changed] == 0))
    near_edge = cv2.dilate(sensor.depth_edges(ideal).astype(np.uint8),
                           np.ones((5, 5), np.uint8)).astype(bool)
    assert near_edge[changed].all()


def test_depth_colour_offset_moves_the_depth_silhouette_by_the_drawn_amount(frames_by_effect):
    frame = frames_by_effect["offset"]
    dx, dy = frame["sensor"]["depth_offset_px"]
    assert 0.7 <= np.hypot(dx, dy) <= 4.5
    ideal = frames_by_effect["none"]["depth"]
    np.testing.assert_array_equal(frame["depth"], sensor.shift_image(ideal, dx, dy))
    # The silhouette of the first object in depth is its mask moved by (dx, dy).
    inst = frame["instances"][0]
    z = np.median(ideal[frame["mask"] == inst["instance_id"]])
    moved = sensor.shift_image((frame["mask"] == inst["instance_id"]).astype(np.uint8), dx, dy)
    rows, cols = np.nonzero(moved)
    assert np.all(np.abs(frame["depth"][rows, cols] - ideal[rows - dy, cols - dx]) == 0)
    assert abs(np.median(frame["depth"][rows, cols]) - z) < 1e-6
    # A set amount: a model with a fixed 3 px offset shifts by 3 px (rounded to whole pixels).
    fixed = dataclasses.replace(SL.depth, offset_px=(3.0, 3.0))
    for seed in range(20):
        ox, oy = sensor.draw_offset(fixed, seed)
        assert abs(np.hypot(ox, oy) - 3.0) <= 0.71


def test_antialiasing_changes_edge_pixels_only_and_softens_them(frames_by_effect):
    base = frames_by_effect["none"]
    aa = frames_by_effect["antialias"]
    changed = np.any(aa["rgb"] != base["rgb"], axis=2)
    edges = np.zeros(changed.shape, dtype=bool)
    index = base["debug"]["object_index"]
    grey = cv2.cvtColor(base["rgb"], cv2.COLOR_RGB2GRAY).astype(np.int16)
    for axis in (0, 1):
        d = (np.diff(index, axis=axis) != 0) | (np.abs(np.diff(grey, axis=axis)) > 12)
        if axis == 0:
            edges[1:] |= d
            edges[:-1] |= d
        else:
            edges[:, 1:] |= d
            edges[:, :-1] |= d
    assert changed.sum() > 100 and edges[changed].all()


def test_colour_effects_blur_noise_and_gains():
    img = np.full((64, 64, 3), 120, dtype=np.uint8)
    img[:, 32:] = (200, 60, 40)
    only = SL.only
    blurred = sensor.apply_colour_camera(only("blur"), img, 1)
    assert 120 < blurred[10, 31, 0] < 200 and np.array_equal(blurred[:, :16], img[:, :16])
    noisy = sensor.apply_colour_camera(only("colour_noise"), img, 1).astype(float)
    dark = noisy[:, :16] - 120
    assert 1.5 < dark.std() < 6.0 and abs(dark.mean()) < 0.5
    sat = sensor.apply_colour_camera(only("saturation"), img, 1).astype(float)
    assert np.ptp(sat[0, 40]) < np.ptp(img[0, 40].astype(float))  # less saturated
    gains = sensor.apply_colour_camera(only("exposure", "white_balance"), img, 1)
    assert not np.array_equal(gains, img)
    # Same seed, same image; other seed, other noise.
    again = sensor.apply_colour_camera(only("colour_noise"), img, 1)
    other = sensor.apply_colour_camera(only("colour_noise"), img, 2)
    assert np.array_equal(again, noisy.astype(np.uint8)) and not np.array_equal(again, other)


def test_preset_with_every_effect_off_gives_the_clean_exact_frame():
    """Same scene, same view: the sensor model switched off entirely changes nothing of the
    original generator's exact depth and labels (the first frame of a scene; later frames
    differ as the clean frames draw their colour noise from the scene's generator)."""
    clean = _frame(SynthConfig(depth_noise=False), 6)
    off = _frame(SynthConfig(sensor="structured-light", sensor_off=sensor.EFFECTS), 6)
    for key in ("depth", "mask", "coord"):
        np.testing.assert_array_equal(off[key], clean[key])
    np.testing.assert_array_equal(off["rgb"], off["debug"]["ideal_rgb"])
    assert [i["model"] for i in off["instances"]] == [i["model"] for i in clean["instances"]]


def test_realistic_frames_are_deterministic_per_seed():
    cfg = SynthConfig(sensor="active-stereo", scene="room", max_objects=2)
    a, b, c = _frame(cfg, 3), _frame(cfg, 3), _frame(cfg, 5)
    for key in ("rgb", "depth", "mask"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["depth"], c["depth"])


def test_room_scene_labels_are_exact_nocs_map_scores_100(tmp_path):
    """Noise-free room frames (the preset with its depth effects off): the NOCS-map reference
    recovers every labelled pose, as on the clean frames."""
    from clipose_ros.core.estimators import NocsMapEstimator
    from clipose_ros.tools.evaluate import GroundTruthMasks, run_evaluation

    cfg = SynthConfig(sensor="structured-light", scene="room", depth_noise=False,
                      min_objects=3, max_objects=4)
    generate(tmp_path, "test", 3, 1, seed=2, workers=0, cfg=cfg, progress=False)
    scores = run_evaluation(tmp_path / "test", NocsMapEstimator(), GroundTruthMasks(),
                            tmp_path / "eval", progress=False, vis_frames=0)
    for mode, result in scores["modes"].items():
        assert result["classes"]["mean"]["5deg2cm"] == pytest.approx(100.0), mode


def test_bad_realism_settings_are_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown sensor preset 'kinect'"):
        SynthConfig(sensor="kinect")
    with pytest.raises(ValueError, match="unknown sensor effects"):
        SynthConfig(sensor="structured-light", sensor_off=("blurr",))
    with pytest.raises(ValueError, match="scene must be one of"):
        SynthConfig(scene="garden")
    with pytest.raises(ValueError, match="unknown sensor effects"):
        SL.without("sparkle")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--disable", "sparkle"])
    assert "sparkle" in capsys.readouterr().err


def test_synthetic_camera_renders_with_a_sensor_preset(tmp_path):
    """The synthetic camera's `sensor` parameter gives the preset's frames (room walls behind
    the table, depth holes on surfaces), with the same exact labels as the generator writes."""
    from clipose_ros.data.replay import load_frames, render_scenes
    from clipose_ros.ros.parameters import SENSOR_CHOICES

    assert SENSOR_CHOICES == ("none", *sorted(sensor.PRESETS))
    (ideal,) = load_frames(render_scenes(tmp_path / "ideal", 1, 1, seed=4))
    (real,) = load_frames(render_scenes(tmp_path / "real", 1, 1, seed=4,
                                        sensor="structured-light"))
    holes = [float((f.depth_mm[nf.read_mask(f.prefix) != 255] == 0).mean())
             for f in (ideal, real)]  # invalid depth on the objects
    assert holes[1] > holes[0] + 0.01, holes
    assert real.truth and len(real.truth) == len(nf.read_label(real.prefix).instance_ids)
    with pytest.raises(ValueError, match="unknown sensor preset 'kinect'"):
        render_scenes(tmp_path / "bad", 1, 1, sensor="kinect")
