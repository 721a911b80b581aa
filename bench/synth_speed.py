"""Generator throughput: frames/s at 640x480 with 4 objects, 1 and 2 worker processes, and the
cost of the sensor model as a ratio to rendering.

Usage: .venv/bin/python bench/synth_speed.py [--frames 40] [--repeats 3]
       [--presets structured-light active-stereo clean] [--stages-only]
Per preset (default: the CLI's default, structured-light), prints the median over repeats and
the 2-worker / 1-worker ratio, measured in one run; then, in this process, the median time per
frame of each stage (rendering, which includes the edge supersampling of the presets; the depth
sensor model; the colour camera model; the whole frame without writing), the sensor stages as a
ratio to rendering, and each preset's frame time as a ratio to the first preset's. Ratios
measured in one run stay meaningful on a busy machine; absolute frames/s need an idle one.

Every throughput run is a cold start, as a fresh ``clipose-synth`` run is: the per-process
caches (shape instances, camera rays, ...) are emptied first, as forked workers would otherwise
inherit the parent's warm ones. So the time includes building and exporting the procedural
shapes drawn from the per-category pool of ``SynthConfig.instances_per_category`` (50)
instances, and every frame is written to disk (PNGs, label pickle, meta, YOLO label and link).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from clipose_ros.data import sensor as sensor_module
from clipose_ros.data import synth
from clipose_ros.data.synth import SynthConfig, clear_process_caches, generate


def config(preset: str) -> SynthConfig:
    if preset == "clean":
        return SynthConfig(min_objects=4, max_objects=4)
    return SynthConfig(min_objects=4, max_objects=4, sensor=preset, scene="room")


def stage_times(cfg: SynthConfig, frames: int) -> dict[str, float]:
    """Median ms per frame of rendering and of the two sensor stages, in this process."""
    times: dict[str, list[float]] = {"render": [], "depth sensor": [], "colour camera": [],
                                     "whole frame": []}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            times[name].append(1000 * (time.perf_counter() - start))
            return result
        return wrapper

    originals = (synth.render, sensor_module.apply_depth_sensor,
                 sensor_module.apply_colour_camera)
    synth.render = timed("render", originals[0])
    sensor_module.apply_depth_sensor = timed("depth sensor", originals[1])
    sensor_module.apply_colour_camera = timed("colour camera", originals[2])
    try:
        for scene in range(frames):
            rng = np.random.default_rng(scene)
            placed, distractors, table, fixtures = synth.build_scene(cfg, "train", rng)
            start = time.perf_counter()
            synth.render_frame(cfg, placed, distractors, table, rng, fixtures)
            times["whole frame"].append(1000 * (time.perf_counter() - start))
    finally:
        (synth.render, sensor_module.apply_depth_sensor,
         sensor_module.apply_colour_camera) = originals
    return {k: statistics.median(v) for k, v in times.items() if v}


def throughput(cfg: SynthConfig, frames: int, repeats: int) -> None:
    medians = {}
    for workers in (1, 2):
        runs = []
        for r in range(repeats):
            clear_process_caches()
            with tempfile.TemporaryDirectory() as tmp:
                fps = generate(
                    Path(tmp), "train", frames // 4, 4, seed=r, workers=workers,
                    cfg=cfg, progress=False,
                )
            runs.append(fps)
        medians[workers] = statistics.median(runs)
        print(f"  workers={workers}: median {medians[workers]:.2f} frames/s "
              f"(runs: {', '.join(f'{x:.2f}' for x in runs)})")
    print(f"  ratio 2 workers / 1 worker: {medians[2] / medians[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["structured-light"],
                        choices=["clean", *sorted(sensor_module.PRESETS)])
    parser.add_argument("--stages-only", action="store_true",
                        help="skip the worker throughput runs")
    args = parser.parse_args()
    first_frame_ms = None
    for preset in args.presets:
        cfg = config(preset)
        print(f"preset: {preset}")
        if not args.stages_only:
            throughput(cfg, args.frames, args.repeats)
        stages = stage_times(cfg, args.frames)
        render_ms = stages["render"]
        for name, ms in stages.items():
            ratio = "" if name == "render" else f"  ({ms / render_ms:.2f} x rendering)"
            print(f"  {name}: median {ms:.1f} ms/frame{ratio}")
        if "depth sensor" in stages:
            sensor_ms = stages["depth sensor"] + stages["colour camera"]
            print(f"  sensor stages together: {sensor_ms / render_ms:.2f} x rendering")
        if first_frame_ms is None:
            first_frame_ms = stages["whole frame"]
        else:
            print(f"  whole frame: {stages['whole frame'] / first_frame_ms:.2f} x "
                  f"{args.presets[0]}'s")


if __name__ == "__main__":
    main()
