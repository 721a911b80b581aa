"""How real do generated frames look? The issue-11 table, measured on generated frames per preset.

Usage: .venv/bin/python bench/realism.py [--frames 30] [--seed 0] [--presets clean
structured-light active-stereo]

Renders frames in this process exactly as ``clipose-synth`` does (depth rounded to millimetres
as written), with each preset's default scenes (clean: the original plain scenes; the sensor
presets: room scenes), and prints every row of the issue's table beside the figure measured on
a real REAL275 test frame (copied from issue 11; that frame is not in this repository).

Definitions (the same for every preset):

- surface: pixels where the ideal (rendered) depth exists; invalid: written depth 0 there.
- table / objects: pixels of the table / of the six categories' objects. "Dark glossy table":
  table pixels of albedo < 0.15 and gloss >= 0.4 (REAL275's table is glossy black).
- grey level: of the generated colour image (BT.601 luma).
- depth edges: ideal-depth 4-neighbour jumps > 2 cm; the band is +-3 px around them.
- hole width: runs of invalid surface pixels along image rows that touch the band, in px.
- plane residual: table pixels (5 px or more inside the table's outline) with written depth
  whose ideal depth is 0.8-1.0 m, back-projected and fitted with a least-squares plane per frame
  (>= 2000 pixels; refitted once without points beyond 3.5 robust sigmas); std of the
  residuals in depth (measured z minus the plane's z on the same pixel ray); autocorrelation:
  Pearson correlation of horizontally adjacent residuals. Medians over frames.
- depth steps: the median gap between the distinct written depth values (mm) of surface pixels
  whose ideal and written depths are within 5 cm of 0.8 m and of 1.35 m (pooled over frames).
- depth vs colour outline: per object row (column) that borders a background at least 5 cm
  farther, the first/last column (row) whose written depth is within 3 cm of the object's depth
  at the mask's edge pixel, minus the mask's; medians per side (negative: depth reaches further
  left/up).
- colour: mean HSV saturation; noise: std of grey minus its 5x5 mean on pixels whose ideal
  colour is flat over 5x5; one-step edges: of the strong horizontal edges (>= 40 grey levels over
  3 pixel steps, at the largest step), the share whose largest single step carries >= 80 %.
- distances: object centres from the camera (median, share < 0.5 m); wall pixels' ideal depth
  (10th-90th percentile).
- table dropout by viewing angle: invalid share of dark glossy table pixels at 40-50 and 60-70
  degrees incidence; boards: the same on marker boards (any angle).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from clipose_ros.categories import CATEGORIES
from clipose_ros.data.sensor import cos_incidence, depth_edges
from clipose_ros.data.synth import SynthConfig, build_scene, render_frame, stable_seed

REAL = {
    "invalid where a surface exists (%)": "30",
    "invalid on dark glossy table / objects (%)": "44 / 5",
    "invalid by grey 0-29 / 30-59 / 60-99 / >=100 (%)": "93 / 53 / 24 / 2",
    "invalid in +-3 px band at depth edges (%)": "28",
    "hole width at depth edges, median / p90 (px)": "4 / 10",
    "plane residual std at 0.8-1.0 m (mm)": "3.5",
    "residual autocorrelation at 1 px": "0.6-0.7",
    "depth steps at 0.8 m / 1.35 m (mm)": "2 / 6",
    "depth-colour outline left / top / right (px)": "-1.5..-3 / -1.5..-3 / +4",
    "colour saturation / noise / one-step edges (%)": "0.16 / 2.7 / few",
    "object distance median (m) / < 0.5 m (%)": "0.9-1.3 / 0",
    "wall depth p10-p90 (m)": "1.1-1.4",
    "dark glossy table dropout at 45 / 65 deg (%)": "22 / 62",
    "marker-board dropout (%)": "0.2",
}


class Tally:
    """Pooled counts and samples over frames."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.samples: dict[str, list] = {}

    def ratio(self, key: str, bad: np.ndarray, total: np.ndarray) -> None:
        c = self.counts.setdefault(key, [0, 0])
        c[0] += int(np.count_nonzero(bad & total))
        c[1] += int(np.count_nonzero(total))

    def add(self, key: str, values) -> None:
        self.samples.setdefault(key, []).extend(np.atleast_1d(values).tolist())

    def pct(self, key: str) -> str:
        bad, total = self.counts.get(key, (0, 0))
        return f"{100 * bad / total:.1f}" if total else "n/a"

    def stat(self, key: str, fn, fmt: str = "{:.2f}") -> str:
        values = self.samples.get(key, [])
        return fmt.format(fn(np.asarray(values, dtype=float))) if values else "n/a"


def _hole_widths(invalid: np.ndarray, band: np.ndarray) -> list[int]:
    """Widths of the row runs of ``invalid`` that touch ``band``."""
    widths = []
    padded = np.pad(invalid, ((0, 0), (1, 1))).astype(np.int8)
    change = np.diff(padded, axis=1)
    starts = np.argwhere(change == 1)
    ends = np.argwhere(change == -1)
    for (r, c0), (_, c1) in zip(starts, ends, strict=True):
        if band[r, c0:c1].any():
            widths.append(int(c1 - c0))
    return widths


def _plane_stats(depth: np.ndarray, K: np.ndarray, pixels: np.ndarray):
    rows, cols = np.nonzero(pixels)
    if len(rows) < 2000:
        return None
    z = depth[rows, cols].astype(np.float64)
    pts = np.stack([(cols - K[0, 2]) / K[0, 0] * z, (rows - K[1, 2]) / K[1, 1] * z, z], 1)
    rays = pts / z[:, None]
    keep = np.ones(len(pts), dtype=bool)
    for _ in range(2):  # least squares, then again without the > 3.5 sigma (MAD) outliers
        centre = pts[keep].mean(0)
        normal = np.linalg.svd(pts[keep] - centre, full_matrices=False)[2][2]
        # In depth: the measured z minus the plane's z along the same pixel ray.
        dist = z - (centre @ normal) / (rays @ normal)
        mad = np.median(np.abs(dist[keep] - np.median(dist[keep])))
        keep = np.abs(dist - np.median(dist[keep])) <= 3.5 * 1.4826 * max(mad, 1e-6)
    residual = np.full(depth.shape, np.nan)
    residual[rows[keep], cols[keep]] = dist[keep]
    a, b = residual[:, :-1], residual[:, 1:]
    both = ~np.isnan(a) & ~np.isnan(b)
    corr = np.corrcoef(a[both], b[both])[0, 1] if both.sum() > 100 else np.nan
    return 1000 * float(np.nanstd(residual)), float(corr)


def _outline_offsets(depth: np.ndarray, ideal: np.ndarray, mask: np.ndarray, tally: Tally):
    """Depth-minus-colour outline positions of one object, per side (see the module doc)."""
    for side, image_axis in (("left", 1), ("right", 1), ("top", 0)):
        m = mask if image_axis == 1 else mask.T
        d = depth if image_axis == 1 else depth.T
        ideal_t = ideal if image_axis == 1 else ideal.T
        for r in np.flatnonzero(m.any(axis=1)):
            cols = np.flatnonzero(m[r])
            edge = cols[0] if side in ("left", "top") else cols[-1]
            step = -1 if side in ("left", "top") else 1
            outside = edge + 4 * step
            if not 0 <= outside < m.shape[1]:
                continue
            z_obj = float(ideal_t[r, edge])
            if not ideal_t[r, outside] > z_obj + 0.05 and ideal_t[r, outside] != 0:
                continue
            lo, hi = max(edge - 10, 0), min(edge + 11, m.shape[1])
            window = d[r, lo:hi]
            fg = np.flatnonzero((window > 0) & (np.abs(window - z_obj) < 0.03))
            if not len(fg):
                continue
            found = lo + (fg[0] if side in ("left", "top") else fg[-1])
            tally.add(f"outline_{side}", found - edge)


def _colour_stats(rgb: np.ndarray, ideal_rgb: np.ndarray, tally: Tally) -> None:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    tally.add("saturation", float(hsv[..., 1].mean() / 255))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    ideal_grey = ideal_rgb.astype(np.float32)
    kernel = np.ones((5, 5), np.uint8)
    spread = (cv2.dilate(ideal_grey, kernel) - cv2.erode(ideal_grey, kernel)).max(axis=2)
    flat = spread <= 1
    if flat.sum() > 1000:
        residual = grey - cv2.blur(grey, (5, 5))
        tally.add("colour_noise", float(residual[flat].std() * np.sqrt(25 / 24)))
    g = grey
    steps = g[:, 1:] - g[:, :-1]  # step i between column i and i + 1
    mag = np.abs(steps)
    inner = mag[:, 1:-1]
    is_peak = (inner >= mag[:, :-2]) & (inner >= mag[:, 2:])
    span = np.abs(g[:, 3:] - g[:, :-3])  # columns i-1 .. i+2 for step i (i = 1 .. W-3)
    strong = is_peak & (span >= 40)
    one_step = strong & (inner >= 0.8 * span)
    tally.ratio("one_step_edges", one_step, strong)


def measure(cfg: SynthConfig, frames: int, seed: int) -> Tally:
    """Render ``frames`` frames (2 per scene) and pool their statistics."""
    tally = Tally()
    scene = 0
    done = 0
    while done < frames:
        rng = np.random.default_rng(stable_seed(seed, "realism", scene))
        placed, distractors, table, fixtures = build_scene(cfg, "test", rng)
        scene += 1
        for _ in range(2):
            frame = render_frame(cfg, placed, distractors, table, rng, fixtures, debug=True)
            if not frame["instances"]:
                continue
            _frame_stats(frame, tally)
            done += 1
            if done >= frames:
                break
    return tally


def _frame_stats(frame: dict, tally: Tally) -> None:
    dbg = frame["debug"]
    K = frame["K"]
    depth = np.round(frame["depth"] * 1000.0) / 1000.0  # as written (uint16 mm)
    ideal = dbg["ideal_depth"]
    kinds = np.array(dbg["kinds"] + ["none"])
    kind = kinds[dbg["object_index"]]  # index -1 -> "none"
    surface = ideal > 0
    invalid = surface & (depth == 0)
    table = kind == "table"
    dark_glossy = table & (dbg["albedo"] < 0.15) & (dbg["gloss"] >= 0.4)
    objects = np.isin(kind, CATEGORIES)
    tally.ratio("surface", invalid, surface)
    tally.ratio("table", invalid, dark_glossy)
    tally.ratio("objects", invalid, objects)
    grey = cv2.cvtColor(frame["rgb"], cv2.COLOR_RGB2GRAY)
    for lo, hi in ((0, 30), (30, 60), (60, 100), (100, 256)):
        tally.ratio(f"grey{lo}", invalid, surface & (grey >= lo) & (grey < hi))
    edges = depth_edges(ideal)
    band = cv2.dilate(edges.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    tally.ratio("band", invalid, band & surface)
    tally.add("hole_width", _hole_widths(invalid, band))
    inner = cv2.erode(table.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)
    plane = inner & (depth > 0) & (ideal >= 0.8) & (ideal <= 1.0)
    stats = _plane_stats(depth, K, plane)
    if stats is not None:
        tally.add("plane_std", stats[0])
        if np.isfinite(stats[1]):
            tally.add("autocorr", stats[1])
    for z0 in (0.8, 1.35):
        sel = surface & (np.abs(depth - z0) < 0.05) & (np.abs(ideal - z0) < 0.05)
        tally.add(f"steps{z0}", np.unique(np.round(depth[sel] * 1000)).astype(int))
    for inst in frame["instances"]:
        _outline_offsets(depth, ideal, frame["mask"] == inst["instance_id"], tally)
    _colour_stats(frame["rgb"], dbg["ideal_rgb"], tally)
    tally.add("distance", [float(np.linalg.norm(i["t"])) for i in frame["instances"]])
    tally.add("wall", ideal[kind == "wall"][::50])
    cos = cos_incidence(dbg["normal"], K)
    angle = np.degrees(np.arccos(np.clip(cos, 0, 1)))
    tally.ratio("table45", invalid, dark_glossy & (angle >= 40) & (angle < 50))
    tally.ratio("table65", invalid, dark_glossy & (angle >= 60) & (angle < 70))
    tally.ratio("board", invalid, kind == "board")


def _median_gap(values) -> float:
    """Median gap between distinct values, per frame set of unique mm values."""
    u = np.unique(np.asarray(values, dtype=int))
    return float(np.median(np.diff(u))) if len(u) > 1 else float("nan")


def rows_of(t: Tally) -> dict[str, str]:
    med = np.median

    def pctile(p):
        return lambda v: np.percentile(v, p)

    return {
        "invalid where a surface exists (%)": t.pct("surface"),
        "invalid on dark glossy table / objects (%)": f"{t.pct('table')} / {t.pct('objects')}",
        "invalid by grey 0-29 / 30-59 / 60-99 / >=100 (%)": " / ".join(
            t.pct(f"grey{lo}") for lo in (0, 30, 60, 100)),
        "invalid in +-3 px band at depth edges (%)": t.pct("band"),
        "hole width at depth edges, median / p90 (px)":
            f"{t.stat('hole_width', med, '{:.0f}')} / {t.stat('hole_width', pctile(90), '{:.0f}')}",
        "plane residual std at 0.8-1.0 m (mm)": t.stat("plane_std", med, "{:.1f}"),
        "residual autocorrelation at 1 px": t.stat("autocorr", med),
        "depth steps at 0.8 m / 1.35 m (mm)":
            f"{t.stat('steps0.8', _median_gap, '{:.0f}')} / "
            f"{t.stat('steps1.35', _median_gap, '{:.0f}')}",
        "depth-colour outline left / top / right (px)": " / ".join(
            t.stat(f"outline_{s}", med, "{:+.1f}") for s in ("left", "top", "right")),
        "colour saturation / noise / one-step edges (%)":
            f"{t.stat('saturation', np.mean)} / {t.stat('colour_noise', med, '{:.1f}')} / "
            f"{t.pct('one_step_edges')}",
        "object distance median (m) / < 0.5 m (%)":
            f"{t.stat('distance', med)} / "
            f"{t.stat('distance', lambda v: 100 * np.mean(v < 0.5), '{:.0f}')}",
        "wall depth p10-p90 (m)":
            f"{t.stat('wall', pctile(10))}-{t.stat('wall', pctile(90))}"
            if t.samples.get("wall") else "no walls",
        "dark glossy table dropout at 45 / 65 deg (%)": f"{t.pct('table45')} / {t.pct('table65')}",
        "marker-board dropout (%)": t.pct("board"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+",
                        default=["clean", "structured-light", "active-stereo"])
    args = parser.parse_args()
    columns = {}
    for name in args.presets:
        cfg = SynthConfig() if name == "clean" else SynthConfig(sensor=name, scene="room")
        start = time.perf_counter()
        columns[name] = rows_of(measure(cfg, args.frames, args.seed))
        print(f"# {name}: {args.frames} frames in {time.perf_counter() - start:.0f} s")
    header = ["measure", "real frame", *columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row, real in REAL.items():
        print("| " + " | ".join([row, real, *(c[row] for c in columns.values())]) + " |")


if __name__ == "__main__":
    main()
