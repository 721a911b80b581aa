"""A generated rosbag2 recording for timing ``clipose-infer`` (and for ``ros2 bag play``).

Usage:
  .venv/bin/python bench/infer_bag.py --out bench_out/infer_bag [--scenes 50]
      [--frames-per-scene 6] [--mcap]
  .venv/bin/clipose-infer --bag bench_out/infer_bag/bag --out bench_out/infer_bag/run

Renders ``scenes x frames_per_scene`` frames with the project's generator (structured-light
preset, as the shipped models were trained on), then writes them as a RealSense D4xx driver
publishes them: ``/camera/camera/color/image_raw`` (rgb8), ``.../aligned_depth_to_color/
image_raw`` (16UC1 mm) and ``.../color/camera_info``, 30 Hz stamps. The tool's own frames/s is
in ``run/summary.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from clipose_ros.data import nocs_format as nf
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.tools.infer import DEFAULT_DEPTH_TOPICS, DEFAULT_INFO_TOPICS, DEFAULT_RGB_TOPICS


def write_bag(prefixes: list[Path], bag: Path, mcap: bool) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    T = store.types
    plugin = StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        conns = {
            "rgb": writer.add_connection(DEFAULT_RGB_TOPICS[0], "sensor_msgs/msg/Image",
                                         typestore=store),
            "depth": writer.add_connection(DEFAULT_DEPTH_TOPICS[0], "sensor_msgs/msg/Image",
                                           typestore=store),
            "info": writer.add_connection(DEFAULT_INFO_TOPICS[0], "sensor_msgs/msg/CameraInfo",
                                          typestore=store),
        }
        for i, prefix in enumerate(prefixes):
            stamp = 1_700_000_000 * 10**9 + i * 33_333_333
            header = T["std_msgs/msg/Header"](
                stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                       nanosec=stamp % 10**9),
                frame_id="camera_color_optical_frame")
            rgb = nf.read_color(prefix)
            depth = cv2.imread(str(nf.frame_path(prefix, "depth.png")), cv2.IMREAD_UNCHANGED)
            K = nf.frame_intrinsics(prefix, nf.read_label(prefix), nf.CAMERA_INTRINSICS)
            h, w = depth.shape
            P = np.zeros((3, 4))
            P[:, :3] = K
            msgs = {
                "info": T["sensor_msgs/msg/CameraInfo"](
                    header=header, height=h, width=w, distortion_model="plumb_bob",
                    d=np.zeros(5), k=K.ravel(), r=np.eye(3).ravel(), p=P.ravel(), binning_x=0,
                    binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)),
                "depth": T["sensor_msgs/msg/Image"](
                    header=header, height=h, width=w, encoding="16UC1", is_bigendian=0,
                    step=2 * w, data=np.ascontiguousarray(depth).view(np.uint8).ravel()),
                "rgb": T["sensor_msgs/msg/Image"](
                    header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                    step=3 * w, data=np.ascontiguousarray(rgb).ravel()),
            }
            for k, (name, msg) in enumerate(msgs.items()):
                writer.write(conns[name], stamp + 1000 * k,
                             store.serialize_cdr(msg, msg.__msgtype__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/infer_bag"))
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--frames-per-scene", type=int, default=6)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mcap", action="store_true", help="MCAP storage (default: SQLite)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    frames = args.out / "frames"
    if not (frames / "test").is_dir():
        generate(frames, "test", args.scenes, args.frames_per_scene, seed=args.seed,
                 workers=args.workers, cfg=SynthConfig())
    bag = args.out / "bag"
    write_bag(nf.list_frames(frames / "test", labelled=True), bag, args.mcap)
    logging.info("wrote %s; run: clipose-infer --bag %s --out %s", bag, bag, args.out / "run")


if __name__ == "__main__":
    main()
