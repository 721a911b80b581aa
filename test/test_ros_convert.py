"""Message conversion without DDS: images and intrinsics in (with every refusal reason),
TF / Detection3D / Marker messages out, quaternions, and the approximate synchroniser."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from clipose_ros.categories import CAMERA_INTRINSICS, CLASS_IDS
from clipose_ros.core.boxes import object_box
from clipose_ros.core.structures import ObjectPose
from clipose_ros.ros import convert as rc

HEADER = Header(frame_id="cam_optical", stamp=rc.ns_to_stamp(1_700_000_000_123_456_789))


def messages(h=48, w=64, depth_mm=None, rgb=None, encoding="16UC1"):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if rgb is None else rgb
    depth_mm = rng.integers(300, 2000, (h, w)).astype(np.uint16) if depth_mm is None else depth_mm
    depth = depth_mm if encoding == "16UC1" else depth_mm.astype(np.float32) / 1000
    K = CAMERA_INTRINSICS * [[w / 640], [h / 480], [1]]
    return (rc.image_message(rgb, "rgb8", HEADER), rc.image_message(depth, encoding, HEADER),
            rc.camera_info_message(K, w, h, HEADER))


def test_quaternion_round_trip_including_half_turns():
    rotations = list(Rotation.random(200, random_state=0).as_matrix())
    rotations += [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]
    for R in rotations:
        q = rc.quaternion_from_matrix(R)
        assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
        assert np.allclose(rc.matrix_from_quaternion(q), R, atol=1e-9)
        # Same convention (x, y, z, w) as scipy.
        assert np.allclose(np.abs(q), np.abs(Rotation.from_matrix(R).as_quat()), atol=1e-9)


def test_frame_from_messages_converts_rgb_bgr_and_both_depth_encodings():
    rgb_msg, depth_msg, info = messages()
    frame = rc.frame_from_messages(rgb_msg, depth_msg, info)
    rgb = rc.rgb_from_image(rgb_msg)
    assert frame.rgb.shape == (48, 64, 3) and np.array_equal(frame.rgb, rgb)
    assert frame.stamp_ns == 1_700_000_000_123_456_789 and frame.frame_id == "cam_optical"
    assert np.allclose(frame.K, np.asarray(info.k).reshape(3, 3))
    bgr_msg = rc.image_message(rgb[:, :, ::-1], "bgr8", HEADER)
    bgr_msg.encoding = "bgr8"
    assert np.array_equal(rc.frame_from_messages(bgr_msg, depth_msg, info).rgb, rgb)
    depth_mm = np.asarray(rc.image_to_array(depth_msg, ["16UC1"]))
    assert np.allclose(frame.depth, depth_mm / 1000.0, atol=1e-6)
    _, depth32, _ = messages(encoding="32FC1")
    assert np.allclose(rc.frame_from_messages(rgb_msg, depth32, info).depth, frame.depth,
                       atol=1e-6)


def test_padded_rows_and_big_endian_depth_are_read_right():
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    padded = np.zeros((3, 12), np.uint8)  # step 12 bytes for 8 bytes of pixels
    padded[:, :8] = depth.astype(">u2").view(np.uint8).reshape(3, 8)
    msg = Image(header=HEADER, height=3, width=4, encoding="16UC1", is_bigendian=1, step=12,
                data=padded.tobytes())
    assert np.allclose(rc.depth_from_image(msg), depth / 1000.0, atol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "kind", "words"),
    [
        (lambda r, d, i: setattr(r, "encoding", "yuv422"), "encoding", "yuv422"),
        (lambda r, d, i: setattr(d, "encoding", "8UC1"), "encoding", "8UC1"),
        (lambda r, d, i: setattr(r, "data", bytes(r.data)[:-100]), "buffer", "truncated"),
        (lambda r, d, i: setattr(d, "step", 10), "buffer", "step 10"),
        (lambda r, d, i: setattr(i, "k", [0.0] * 9), "intrinsics", "fx=0.0"),
        (lambda r, d, i: setattr(i, "k", [float("nan")] + [1.0] * 8), "intrinsics",
         "non-finite"),
        (lambda r, d, i: setattr(d.header, "frame_id", "depth_optical"), "frame_id",
         "depth_optical"),
        (lambda r, d, i: setattr(i, "width", 640), "size", "camera_info is for 640x48"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(mutate, kind, words):
    rgb_msg, depth_msg, info = messages()
    depth_msg.header = Header(frame_id=HEADER.frame_id, stamp=HEADER.stamp)
    mutate(rgb_msg, depth_msg, info)
    with pytest.raises(rc.InputError, match=words) as err:
        rc.frame_from_messages(rgb_msg, depth_msg, info)
    assert err.value.kind == kind


def test_size_mismatch_and_unusable_depth_are_refused():
    rgb_msg, _, info = messages()
    _, small_depth, _ = messages(h=24, w=32)
    with pytest.raises(rc.InputError, match="RGB is 64x48 but depth is 32x24") as err:
        rc.frame_from_messages(rgb_msg, small_depth, info)
    assert err.value.kind == "size"
    for depth_mm, enc in ((np.zeros((48, 64), np.uint16), "16UC1"),):
        _, zero, _ = messages(depth_mm=depth_mm, encoding=enc)
        with pytest.raises(rc.InputError, match="no valid pixel") as err:
            rc.frame_from_messages(rgb_msg, zero, info)
        assert err.value.kind == "depth"
    nan = rc.image_message(np.full((48, 64), np.nan, np.float32), "32FC1", HEADER)
    with pytest.raises(rc.InputError, match="no valid pixel"):
        rc.frame_from_messages(rgb_msg, nan, info)
    # Partly NaN / negative 32FC1 depth: those pixels become invalid (0), the rest stay.
    partial = np.full((48, 64), 0.9, np.float32)
    partial[0, :10] = np.nan
    partial[1, :10] = -1
    depth = rc.depth_from_image(rc.image_message(partial, "32FC1", HEADER))
    assert (depth[:2, :10] == 0).all() and np.allclose(depth[2:], 0.9)


TOPICS = {"rgb": "/cam/color/image_raw", "depth": "/cam/aligned_depth_to_color/image_raw",
          "camera_info": "/cam/color/camera_info"}


def same_header(*msgs):
    for m in msgs:
        m.header = Header(frame_id=HEADER.frame_id, stamp=HEADER.stamp)


@pytest.mark.parametrize(
    ("mutate", "kind", "stream", "words"),
    [
        (lambda r, d, i: setattr(d, "data", bytes(d.data)[:-100]), "buffer", "depth",
         "truncated"),
        (lambda r, d, i: setattr(r, "data", bytes(r.data)[:-100]), "buffer", "rgb", "truncated"),
        (lambda r, d, i: setattr(d, "encoding", "8UC1"), "encoding", "depth", "8UC1"),
        (lambda r, d, i: setattr(i, "k", [0.0] * 9), "intrinsics", "camera_info", "fx=0.0"),
        (lambda r, d, i: setattr(i, "width", 640), "size", "camera_info", "640x48"),
        (lambda r, d, i: setattr(d.header, "frame_id", "depth_optical"), "frame_id", "depth",
         "'depth_optical' differ"),
        (lambda r, d, i: setattr(r.header, "frame_id", ""), "frame_id", "rgb",
         "empty header.frame_id"),
        (lambda r, d, i: setattr(d.header, "frame_id", ""), "frame_id", "depth",
         "empty header.frame_id"),
        (lambda r, d, i: setattr(i.header, "frame_id", "other_optical"), "frame_id",
         "camera_info", "frame 'other_optical' differs from the images' frame 'cam_optical'"),
        (lambda r, d, i: (setattr(i, "width", 0), setattr(i, "height", 0)), "size",
         "camera_info", "width x height is 0x0"),
        (lambda r, d, i: setattr(r.header, "stamp", rc.ns_to_stamp(0)), "stamp", "rgb",
         "header.stamp is 0"),
        (lambda r, d, i: setattr(d, "data", np.zeros(48 * 64, np.uint16).tobytes()), "depth",
         "depth", "no valid pixel"),
    ],
)
def test_every_refusal_names_the_stream(mutate, kind, stream, words):
    """The topic of the broken stream is in the message (RGB and depth share a frame id)."""
    rgb_msg, depth_msg, info = messages()
    same_header(rgb_msg, depth_msg, info)
    mutate(rgb_msg, depth_msg, info)
    with pytest.raises(rc.InputError, match=words) as err:
        rc.frame_from_messages(rgb_msg, depth_msg, info, topics=TOPICS)
    assert err.value.kind == kind
    assert TOPICS[stream] in str(err.value), str(err.value)
    others = [t for s, t in TOPICS.items() if s != stream]
    if kind not in ("size", "frame_id"):  # the cross-stream checks name both streams
        assert not any(t in str(err.value) for t in others), str(err.value)


def test_principal_point_far_outside_the_image_is_refused():
    rgb_msg, depth_msg, info = messages()
    same_header(rgb_msg, depth_msg, info)
    k = list(info.k)
    k[2] = 1.05 * 64  # just outside (a cropped image): accepted
    info.k = k
    rc.frame_from_messages(rgb_msg, depth_msg, info)
    for cx, cy in ((640.0, 24.0), (32.0, -30.0), (32.0, 480.0)):
        k[2], k[5] = cx, cy
        info.k = k
        with pytest.raises(rc.InputError, match="principal point .* far outside the 64x48"
                           ) as err:
            rc.frame_from_messages(rgb_msg, depth_msg, info, topics=TOPICS)
        assert err.value.kind == "intrinsics" and TOPICS["camera_info"] in str(err.value)


def test_depth_in_the_wrong_unit_is_refused_with_the_fix():
    rgb_msg, _, info = messages()
    depth_mm = np.random.default_rng(1).integers(800, 1600, (48, 64)).astype(np.uint16)

    def refused(depth_msg, words, **kwargs):
        same_header(rgb_msg, depth_msg, info)
        with pytest.raises(rc.InputError, match=words) as err:
            rc.frame_from_messages(rgb_msg, depth_msg, info, topics=TOPICS, **kwargs)
        assert err.value.kind == "depth_units"
        assert TOPICS["depth"] in str(err.value) and depth_msg.encoding in str(err.value)
        return str(err.value)

    # 32FC1 holding millimetres: z of a kilometre.
    mm32 = rc.image_message(depth_mm.astype(np.float32), "32FC1", HEADER)
    said = refused(mm32, "values look like millimetres; set depth_scale:=0.001")
    assert "depth median 1" in said and " m on " in said
    # ... read right with depth_scale 0.001.
    same_header(mm32)
    frame = rc.frame_from_messages(rgb_msg, mm32, info, depth_scale=0.001)
    assert np.allclose(frame.depth, depth_mm / 1000.0, atol=1e-6)
    # 16UC1 holding metres (1 or 2): z of a few millimetres.
    metres16 = rc.image_message(np.round(depth_mm / 1000.0).astype(np.uint16), "16UC1", HEADER)
    refused(metres16, "raw median [12]: values look like metres")
    # 16UC1 saturated at 65535 (z = 65.5 m), also when only 40 % of it is.
    refused(rc.image_message(np.full((48, 64), 65535, np.uint16), "16UC1", HEADER),
            "100 % of the valid pixels read 65535")
    partly = depth_mm.copy()
    partly[:20] = 65535
    refused(rc.image_message(partly, "16UC1", HEADER), "42 % of the valid pixels read 65535")
    # A few saturated pixels are noise, not a unit problem.
    partly = depth_mm.copy()
    partly[:4] = 65535
    msg = rc.image_message(partly, "16UC1", HEADER)
    same_header(msg)
    rc.frame_from_messages(rgb_msg, msg, info)
    # Far beyond any scene in metres, and a depth_scale that makes it so.
    refused(rc.image_message(np.full((48, 64), 3e4, np.float32), "32FC1", HEADER),
            "outside the plausible 0.05 .. 20 m: check the depth units")
    refused(rc.image_message(depth_mm, "16UC1", HEADER), "read with depth_scale 1",
            depth_scale=1.0)


def test_depth_unit_check_sees_sparse_depth_and_ignores_invalid_pixels():
    # 30 valid pixels in a 480x640 image: the sampling grid misses most of them.
    sparse = np.zeros((480, 640), np.float32)
    sparse[np.arange(30) * 16, np.arange(30) * 21 + 3] = 1200.0
    with pytest.raises(rc.InputError, match="look like millimetres"):
        rc.check_depth_units(sparse, "32FC1", 1.0, TOPICS["depth"])
    sparse[sparse > 0] = 1.2
    assert rc.check_depth_units(sparse, "32FC1", 1.0, TOPICS["depth"]) == 30
    # NaN, inf and negative values are invalid, not huge or tiny.
    mixed = np.full((48, 64), 0.9, np.float32)
    mixed[:20] = np.nan
    mixed[20:30] = np.inf
    mixed[30:35] = -5.0
    assert rc.check_depth_units(mixed, "32FC1", 1.0, "d") > 0
    assert rc.check_depth_units(np.zeros((48, 64), np.uint16), "16UC1", 0.001, "d") == 0


def posed(name, t, yaw=0.3, size=(0.1, 0.2, 0.1), key="x_1", score=0.8):
    R = Rotation.from_euler("yx", [yaw, 0.2]).as_matrix()
    return ObjectPose(CLASS_IDS[name], score, R, np.asarray(t, float), np.asarray(size, float),
                      key=key)


def test_detections_tf_and_poses_round_trip():
    poses = [posed("laptop", [0.1, -0.05, 0.9], key="laptop_4"),
             posed("mug", [-0.2, 0.0, 0.7], size=(0.146, 0.083, 0.114), key="mug_7")]
    det = rc.detection_array(HEADER, poses)
    assert det.header == HEADER and [d.id for d in det.detections] == ["laptop_4", "mug_7"]
    assert [d.results[0].hypothesis.class_id for d in det.detections] == ["laptop", "mug"]
    assert det.detections[0].results[0].hypothesis.score == pytest.approx(0.8)
    for d, p in zip(det.detections, poses, strict=True):
        R, t = rc.pose_from_message(d.results[0].pose.pose)
        assert np.allclose(R, p.R) and np.allclose(t, p.t)
        centre, size = object_box(p)
        assert np.allclose(rc.pose_from_message(d.bbox.center)[1], centre)
        assert [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z] == pytest.approx(size)
    laptop, mug = det.detections
    assert laptop.bbox.center == laptop.results[0].pose.pose
    # The mug's box centre sits towards the handle (+x of the object), off the body axis.
    mug_centre = rc.pose_from_message(mug.bbox.center)[1]
    offset = poses[1].R.T @ (mug_centre - poses[1].t)
    assert offset[0] > 0.005 and abs(offset[1]) < 1e-9 and abs(offset[2]) < 1e-9
    assert not any(d.results[0].pose.covariance.any() for d in det.detections)  # unknown
    covariances = [np.diag([1.0, 2, 3, 4, 5, 6]), np.arange(36.0).reshape(6, 6)]
    with_cov = rc.detection_array(HEADER, poses, covariances=covariances)
    for d, cov in zip(with_cov.detections, covariances, strict=True):
        np.testing.assert_array_equal(np.reshape(d.results[0].pose.covariance, (6, 6)), cov)
    back = rc.poses_from_detections(det)
    assert [b.key for b in back] == ["laptop_4", "mug_7"]
    assert np.allclose(back[1].t, poses[1].t) and back[1].class_id == CLASS_IDS["mug"]
    tf = rc.tf_message(HEADER, poses, "clipose/")
    assert [t.child_frame_id for t in tf.transforms] == ["clipose/laptop_4", "clipose/mug_7"]
    assert all(t.header == HEADER for t in tf.transforms)
    tr = tf.transforms[1].transform
    assert [tr.translation.x, tr.translation.y, tr.translation.z] == pytest.approx(poses[1].t)
    q = [tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w]
    assert np.allclose(rc.matrix_from_quaternion(q), poses[1].R)



def test_a_reader_takes_the_best_hypothesis_of_each_detection():
    # Another node's array may carry several hypotheses per detection, best not first.
    first = rc.detection_array(HEADER, [posed("bowl", [0.1, 0, 0.8], key="d")],
                               covariances=[np.eye(6)]).detections[0]
    better = rc.detection_array(HEADER, [posed("mug", [-0.2, 0, 0.6], key="d")],
                                covariances=[2 * np.eye(6)]).detections[0].results[0]
    better.hypothesis.score = 0.9
    first.results[0].hypothesis.score = 0.4
    first.results.append(better)
    assert rc.best_hypothesis(first) is better
    msg = rc.detection_array(HEADER, [])
    msg.detections.append(first)
    (back,) = rc.poses_from_detections(msg)
    assert back.class_id == CLASS_IDS["mug"] and back.score == pytest.approx(0.9)
    assert np.allclose(back.t, [-0.2, 0, 0.6])
    first.results.clear()
    assert rc.best_hypothesis(first) is None and rc.poses_from_detections(msg) == []

def test_markers_add_current_objects_and_delete_ended_ones():
    poses = [posed("bowl", [0, 0, 1], key="bowl_2")]
    markers = rc.marker_array(HEADER, poses, ["can_1"], "clipose").markers
    deletes = [m for m in markers if m.action == Marker.DELETE]
    adds = [m for m in markers if m.action == Marker.ADD]
    assert {(m.ns, m.id) for m in deletes} == {("clipose/can_1", i) for i in range(3)}
    assert {m.type for m in adds} == {Marker.CUBE, Marker.LINE_LIST, Marker.TEXT_VIEW_FACING}
    assert all(m.ns == "clipose/bowl_2" and m.header == HEADER for m in adds)
    box = next(m for m in adds if m.type == Marker.CUBE)
    assert [box.scale.x, box.scale.y, box.scale.z] == pytest.approx([0.1, 0.2, 0.1])
    axes = next(m for m in adds if m.type == Marker.LINE_LIST)
    assert len(axes.points) == 6 and len(axes.colors) == 6
    assert "bowl_2" in next(m for m in adds if m.type == Marker.TEXT_VIEW_FACING).text


class Stamped:
    def __init__(self, ns):
        self.header = Header(stamp=rc.ns_to_stamp(ns))
        self.ns = ns


def test_approximate_sync_pairs_within_slop_once_and_in_order():
    out = []
    sync = rc.ApproximateSync(3, queue_size=5, slop_s=0.02, callback=lambda *m: out.append(
        tuple(x.ns for x in m)))
    ms = 1_000_000
    sync.add(0, Stamped(100 * ms))
    sync.add(1, Stamped(105 * ms))
    assert out == []  # camera_info missing
    sync.add(2, Stamped(100 * ms))
    assert out == [(100 * ms, 105 * ms, 100 * ms)]
    # Too far apart: nothing; a matching depth later completes the set.
    sync.add(0, Stamped(200 * ms))
    sync.add(2, Stamped(200 * ms))
    sync.add(1, Stamped(260 * ms))
    assert len(out) == 1
    sync.add(1, Stamped(201 * ms))
    assert out[-1] == (200 * ms, 201 * ms, 200 * ms)
    # The depth at 260 ms pairs with the next set; nothing older than an emitted set returns.
    sync.add(0, Stamped(150 * ms))
    sync.add(2, Stamped(150 * ms))
    assert len(out) == 2
    sync.add(0, Stamped(262 * ms))
    sync.add(2, Stamped(258 * ms))
    assert out[-1] == (262 * ms, 260 * ms, 258 * ms)
    with pytest.raises(ValueError):
        rc.ApproximateSync(1, 5, 0.1, print)


def test_warning_throttle_one_message_per_kind_and_period_with_the_count(monkeypatch):
    from clipose_ros.ros import runtime

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, text):
            self.lines.append(("warning", text))

        def info(self, text):
            self.lines.append(("info", text))

        def error(self, text):
            self.lines.append(("error", text))

    clock = [100.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    log = Log()
    warn = runtime.WarningThrottle(log, period=5.0)
    for _ in range(4):
        warn("encoding", "bad encoding")
    warn("depth", "no depth", "info")
    assert log.lines == [("warning", "bad encoding"), ("info", "no depth")]
    clock[0] += 5.0
    warn("encoding", "bad encoding")
    assert log.lines[-1] == ("warning", "bad encoding (3 more like it since the last message)")
    warn("exception", "boom", "error")
    assert log.lines[-1] == ("error", "boom")


def test_fastdds_segment_limit_is_read_from_the_profile_in_use(tmp_path):
    from pathlib import Path

    from clipose_ros.ros.node import fastdds_segment_limit, size_hint

    shipped = str(Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml")
    assert fastdds_segment_limit({"FASTDDS_DEFAULT_PROFILES_FILE": shipped}) == (
        16 * 1024 * 1024, shipped)
    assert fastdds_segment_limit({"FASTDDS_DEFAULT_PROFILES_FILE": shipped,
                                  "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) is None
    assert fastdds_segment_limit({}) is None
    udp_only = tmp_path / "udp.xml"
    udp_only.write_text("<dds><profiles><transport_descriptors><transport_descriptor>"
                        "<transport_id>u</transport_id><type>UDPv4</type>"
                        "</transport_descriptor></transport_descriptors></profiles></dds>")
    assert fastdds_segment_limit({"FASTDDS_DEFAULT_PROFILES_FILE": str(udp_only)}) is None
    broken = tmp_path / "broken.xml"
    broken.write_text("<dds><profiles>")
    assert fastdds_segment_limit({"FASTDDS_DEFAULT_PROFILES_FILE": str(broken)}) is None
    limit = (16 * 1024 * 1024, shipped)
    hint = size_hint(4000, 3000, limit)
    assert "4000x3000 images (34.3 MiB as rgb8, 22.9 MiB as 16UC1)" in hint and shipped in hint
    assert size_hint(2560, 1920, limit) == ""  # 14.1 MiB fits
    assert size_hint(4000, 3000, None) == "" and size_hint(0, 0, limit) == ""
