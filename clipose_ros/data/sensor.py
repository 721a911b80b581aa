"""Depth-sensor and colour-camera effects for generated frames, with two documented presets.

A renderer returns ideal images: every surface has exact depth and the colour image is sharp and
noise-free. Real RGB-D cameras do not: they lose depth on dark, glossy and steeply viewed
surfaces and in the shadow of their projector, they quantise and smear depth, and their depth
image is registered to the colour image only to a few pixels. A model trained only on ideal
frames meets all of this for the first time at run time, so ``clipose-synth`` applies the
effects below (each one can be switched off on its own; ``--clean`` switches them all off and
writes the generator's original frames).

Depth effects run on the ideal depth plus per-pixel surface data from the renderer (normal,
grey albedo, gloss) in this order:

``shadow``      pixels the second viewpoint (structured-light projector, or the right imager
                of a stereo pair) cannot see get no depth: holes on one side of depth edges,
                as wide as the disparity jump; stereo cameras also lose the band at the image
                border that only one imager sees.
``fattening``   foreground depth spreads over its depth edges (into the shadow too) by a pixel
                or two, as the matching window straddles the edge.
``noise``       white disparity noise (depth noise that grows with z**2).
``correlated``  spatially correlated disparity noise: a smooth bias field, offsets of
                horizontal bands and noise correlated over a few pixels.
``quantise``    disparity rounded to the sensor's subpixel step (depth steps grow with z**2).
``dropout``     no depth where too little projected light returns: a probit model of the
                return signal (albedo, incidence angle, gloss), drawn as connected patches
                from a smooth random field; plus holes along depth edges and outside the
                sensor's range.
``offset``      the depth image shifted against the colour image by a random 1-4 px per frame
                (registration error between the two cameras).

Colour effects: ``antialias`` (edge supersampling, done by the renderer), ``blur``,
``white_balance``, ``exposure``, ``colour_noise`` (read + shot noise, grows with brightness),
``saturation``.

Labels (masks, NOCS maps, poses) describe the scene and are never touched here; note that the
``offset`` effect deliberately moves depth against the colour-aligned mask, as a real camera's
registration error does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

from clipose_ros.data.render import both_sides, fast_normal
from clipose_ros.geometry import pixel_rays

DEPTH_EFFECTS = ("shadow", "fattening", "noise", "correlated", "quantise", "dropout", "offset")
COLOUR_EFFECTS = ("antialias", "blur", "white_balance", "exposure", "colour_noise", "saturation")
EFFECTS = DEPTH_EFFECTS + COLOUR_EFFECTS
EDGE_JUMP_M = 0.02  # a depth edge: neighbours more than 2 cm apart


@dataclass(frozen=True)
class DepthSensorModel:
    """A triangulating depth camera, in the disparity domain where its errors live.

    Disparity is ``d = focal_px * baseline_m / z`` in the sensor's own pixels; noise and
    quantisation act on ``d``, so depth errors grow with ``z**2``. The shadow geometry uses the
    output image's focal length with the same baseline.
    """

    focal_px: float  # focal length of the matching camera, in its own pixels
    baseline_m: float  # camera to projector (structured light) or imager to imager (stereo)
    disparity_step_px: float  # quantisation step of the disparity (subpixel resolution)
    pixel_noise_px: float  # white disparity noise, standard deviation
    correlated_noise_px: float  # noise correlated over ``correlated_cell_px`` pixels
    correlated_cell_px: float
    bias_field_px: float  # smooth bias over the whole image (a few cells across)
    band_offset_px: float  # offsets of horizontal bands of rows
    max_bands: int
    # Dropout: P(invalid) = Phi((log(threshold) - log(signal)) / width), with the return signal
    # albedo_ir * cos(i)**angle_exponent * (1 - gloss + gloss * cos(i)**gloss_exponent) and
    # albedo_ir = ir_floor + (1 - ir_floor) * grey albedo.
    dropout_threshold: float
    dropout_width: float
    angle_exponent: float
    gloss_exponent: float
    ir_floor: float
    patch_px: float  # size of the dropout patches
    patch_share: float  # variance share of the smooth field in the patch field (rest: per pixel)
    edge_dropout: float  # probability that a hole starts at a pixel beside a depth edge
    edge_hole_px: int  # such holes run this many pixels along the row (pattern lost there)
    fattening_px: int
    second_view_band: bool  # stereo: no depth where only one imager sees
    offset_px: tuple[float, float]  # depth-colour registration error, magnitude range
    range_m: tuple[float, float]  # depth outside is invalid


@dataclass(frozen=True)
class ColourCameraModel:
    """Colour camera: optics, sensor noise and the ISP's gains."""

    aa_samples: int  # sub-pixel rays per edge pixel besides the centre ray (0-4)
    blur_sigma_px: float
    read_noise: float  # grey levels, standard deviation
    shot_noise: float  # variance per grey level of signal (photon noise)
    white_balance: float  # per-channel gain jitter, +- fraction
    exposure_stops: float  # global gain jitter, +- stops
    saturation: tuple[float, float]  # saturation scale range


@dataclass(frozen=True)
class SensorPreset:
    name: str
    depth: DepthSensorModel
    colour: ColourCameraModel
    source: str  # where the numbers come from
    effects: frozenset = field(default_factory=lambda: frozenset(EFFECTS))

    def without(self, *names: str) -> SensorPreset:
        """The preset with the named effects switched off (unknown names raise)."""
        unknown = set(names) - set(EFFECTS)
        if unknown:
            raise ValueError(f"unknown sensor effects {sorted(unknown)}; known: {EFFECTS}")
        return replace(self, effects=self.effects - set(names))

    def only(self, *names: str) -> SensorPreset:
        """The preset with only the named effects on."""
        return self.without(*(set(EFFECTS) - set(names)))


# The REAL275 camera: a structured-light (PrimeSense-type) sensor. The disparity step and
# baseline are fitted to the depth steps measured on a REAL275 test frame (issue 11): steps of
# about 3.25 mm * z**2 (2 mm at 0.8 m, 6 mm at 1.35 m); PrimeSense sensors match disparity to
# 1/8 pixel, and 1/8 px / (591 px * 0.065 m) = 3.25 mm at 1 m (65 mm is thus an effective
# baseline; the physical one is ~75 mm). Noise was set so that a table plane at 0.8-1.0 m shows
# ~3.5 mm residual std with neighbouring residuals correlated ~0.6-0.7; the dropout so that a
# glossy black table loses 22 % -> 62 % of its depth from 45 to 65 degrees of incidence while
# bright matte boards lose almost none (all measured on the real frame; bench/realism.py shows
# where every row lands).
STRUCTURED_LIGHT = SensorPreset(
    name="structured-light",
    depth=DepthSensorModel(
        focal_px=591.0, baseline_m=0.065, disparity_step_px=1 / 8,
        pixel_noise_px=0.065, correlated_noise_px=0.14, correlated_cell_px=3.0,
        bias_field_px=0.08, band_offset_px=0.04, max_bands=4,
        dropout_threshold=0.027, dropout_width=0.7, angle_exponent=1.0, gloss_exponent=6.0,
        ir_floor=0.1, patch_px=6.0, patch_share=0.8, edge_dropout=0.15, edge_hole_px=5,
        fattening_px=2, second_view_band=False, offset_px=(1.0, 4.0), range_m=(0.3, 4.0),
    ),
    colour=ColourCameraModel(
        aa_samples=2, blur_sigma_px=0.6, read_noise=2.5, shot_noise=0.08,
        white_balance=0.06, exposure_stops=0.35, saturation=(0.5, 0.85),
    ),
    source="fitted to a REAL275 test frame (issue 11 table); PrimeSense 1/8 px disparity",
)

# Intel RealSense D435 (the D4xx camera most ROS users own), at its native 848x480 depth
# resolution: baseline 50 mm and 87 degree horizontal field of view (Intel D400 datasheet,
# document 337029), so a focal length of 424 / tan(43.5 deg) = 447 px. Intel's tuning white
# paper (dev.intelrealsense.com/docs/tuning-depth-cameras-for-best-performance) gives the depth
# RMS error as z**2 * subpixel / (focal * baseline) with a subpixel RMS of about 0.08 px on a
# well-textured target, i.e. 3.6 mm at 1 m and 14 mm (0.7 %) at 2 m, within the datasheet's
# "< 2 % at 2 m"; the white and correlated terms below add up to that 0.08 px. The disparity
# is resolved to 1/32 px (5 subpixel bits, Intel's subpixel-linearity white paper). Stereo
# loses the band of the image only the left imager sees (Intel's datasheet: "invalid depth
# band", as wide as the disparity) and depth beside occluding edges; depth is registered to
# colour by the factory calibration, so the offset is smaller than the structured-light
# preset's. The dropout of dark and glossy surfaces is
# weaker: the stereo matcher also uses ambient texture, not only the projector.
ACTIVE_STEREO = SensorPreset(
    name="active-stereo",
    depth=DepthSensorModel(
        focal_px=447.0, baseline_m=0.050, disparity_step_px=1 / 32,
        pixel_noise_px=0.05, correlated_noise_px=0.06, correlated_cell_px=4.0,
        bias_field_px=0.04, band_offset_px=0.0, max_bands=0,
        dropout_threshold=0.016, dropout_width=0.7, angle_exponent=1.0, gloss_exponent=6.0,
        ir_floor=0.1, patch_px=8.0, patch_share=0.8, edge_dropout=0.06, edge_hole_px=4,
        fattening_px=2, second_view_band=True, offset_px=(0.5, 2.0), range_m=(0.2, 6.0),
    ),
    colour=ColourCameraModel(
        aa_samples=2, blur_sigma_px=0.7, read_noise=2.0, shot_noise=0.05,
        white_balance=0.06, exposure_stops=0.35, saturation=(0.6, 0.95),
    ),
    source="Intel D400 datasheet 337029; Intel white papers on tuning and subpixel linearity",
)

PRESETS: dict[str, SensorPreset] = {p.name: p for p in (STRUCTURED_LIGHT, ACTIVE_STEREO)}


def preset(name: str) -> SensorPreset:
    """A preset by name, with a clear error for unknown names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sensor preset {name!r}; known: {sorted(PRESETS)}") from None


def effect_rng(seed: int, effect: str) -> np.random.Generator:
    """One generator per frame and effect: switching one effect leaves the others' draws."""
    return np.random.default_rng([seed, EFFECTS.index(effect)])


# ---------------------------------------------------------------- depth effects


def depth_edges(depth: np.ndarray, jump: float = EDGE_JUMP_M) -> np.ndarray:
    """Pixels (bool) beside a depth discontinuity: a 4-neighbour more than ``jump`` away."""
    return both_sides(*(np.abs(np.diff(depth, axis=a)) > jump for a in (0, 1)))


def second_view_shadow(depth: np.ndarray, fx: float, baseline_m: float,
                       outside_band: bool) -> np.ndarray:
    """Pixels (bool) a second viewpoint ``baseline_m`` to the right (+x) cannot see.

    A pixel maps to column ``u - fx * b / z`` in the second view; scanning each row from the
    right, a pixel is hidden when a pixel to its right maps to the same or an earlier column
    (that nearer surface blocks the projector ray or the right imager's view). So the holes
    fall on the left of foreground objects, as wide as the disparity jump. Pixels without depth
    count as infinitely far. ``outside_band``: also pixels that map left of the second view's
    image.
    """
    h, w = depth.shape
    disparity = np.zeros_like(depth, dtype=np.float32)
    valid = depth > 0
    disparity[valid] = np.float32(fx * baseline_m) / depth[valid]
    column = np.arange(w, dtype=np.float32)[None, :] - disparity
    # Running minimum from the right, excluding the pixel itself.
    running = np.minimum.accumulate(column[:, ::-1], axis=1)[:, ::-1]
    right_min = np.full_like(column, np.inf)
    right_min[:, :-1] = running[:, 1:]
    hidden = (column > right_min - np.float32(0.5)) & valid
    if outside_band:
        hidden |= valid & (column < 0)
    return hidden


def fatten_foreground(depth: np.ndarray, pixels: int) -> np.ndarray:
    """Foreground depth spreads ``pixels`` px over its edges (into background and holes)."""
    if pixels <= 0:
        return depth.copy()
    far = np.where(depth > 0, depth, np.float32(np.inf)).astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (2 * pixels + 1, 2 * pixels + 1))
    nearest = cv2.erode(far, kernel, borderType=cv2.BORDER_REPLICATE)
    # Only beside real depth edges: a steep but smooth surface changes > 2 cm over a few pixels
    # too, and must keep its shape.
    near_edge = cv2.dilate(depth_edges(depth).astype(np.uint8), kernel).astype(bool)
    take = near_edge & (nearest < far - np.float32(EDGE_JUMP_M))
    out = depth.copy()
    out[take] = nearest[take]
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field correlated over ~``cell_px`` pixels:
    white noise on a grid of that spacing, bilinearly interpolated (and renormalised)."""
    h, w = shape
    gh, gw = max(2, math.ceil(h / cell_px) + 1), max(2, math.ceil(w / cell_px) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    std = float(field.std())
    return field / np.float32(std if std > 0 else 1.0)


def disparity_noise(model: DepthSensorModel, shape: tuple[int, int], white: bool,
                    correlated: bool, seed: int) -> np.ndarray | None:
    """The disparity error image (pixels) of the enabled noise terms; None when none is on."""
    h, w = shape
    noise = None
    if white and model.pixel_noise_px > 0:
        noise = fast_normal(effect_rng(seed, "noise"), shape) * np.float32(model.pixel_noise_px)
    if correlated:
        rng = effect_rng(seed, "correlated")
        term = smooth_field(rng, shape, model.correlated_cell_px)
        term *= np.float32(model.correlated_noise_px)
        term += np.float32(model.bias_field_px) * smooth_field(rng, shape, max(h, w) / 3)
        for _ in range(int(rng.integers(0, model.max_bands + 1))):
            top = int(rng.integers(0, h))
            height = int(rng.integers(4, max(5, h // 6)))
            term[top:top + height] += np.float32(rng.normal(0.0, model.band_offset_px))
        noise = term if noise is None else noise + term
    return noise


def dropout_probability(model: DepthSensorModel, albedo: np.ndarray, gloss: np.ndarray,
                        cos_incidence: np.ndarray) -> np.ndarray:
    """P(no depth) per pixel from the return signal (see :class:`DepthSensorModel`)."""
    score = dropout_score(model, albedo, gloss, cos_incidence)
    return 0.5 * (1 + _erf(score / np.float32(math.sqrt(2))))


def dropout_score(model: DepthSensorModel, albedo: np.ndarray, gloss: np.ndarray,
                  cos_incidence: np.ndarray) -> np.ndarray:
    """The probit score of the dropout: P(no depth) = Phi(score)."""
    cos_i = np.clip(cos_incidence, 1e-3, 1.0).astype(np.float32)
    albedo_ir = np.float32(model.ir_floor) + np.float32(1 - model.ir_floor) * albedo
    gloss = np.clip(gloss, 0.0, 1.0).astype(np.float32)
    signal = albedo_ir * cos_i ** np.float32(model.angle_exponent)
    signal *= 1 - gloss + gloss * cos_i ** np.float32(model.gloss_exponent)
    score = (np.float32(math.log(model.dropout_threshold)) - np.log(np.maximum(signal, 1e-6)))
    score /= np.float32(model.dropout_width)
    return score


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7), float32, vectorised."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1 / (1 + np.float32(0.3275911) * a)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    return sign * (1 - poly * np.exp(-a * a))


@lru_cache(maxsize=4)
def _view_directions(K_key: tuple, h: int, w: int) -> np.ndarray:
    rays = pixel_rays(np.array(K_key).reshape(3, 3), h, w)
    out = (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).astype(np.float32)
    out.flags.writeable = False
    return out


def cos_incidence(normal: np.ndarray, K: np.ndarray) -> np.ndarray:
    """|cos| of the angle between each pixel's viewing ray and its (camera-facing) normal."""
    h, w = normal.shape[:2]
    rays = _view_directions(tuple(float(v) for v in np.asarray(K).ravel()), h, w)
    return np.abs(np.einsum("hwc,hwc->hw", normal, rays))


def dropout_mask(model: DepthSensorModel, depth: np.ndarray, albedo: np.ndarray,
                 gloss: np.ndarray, normal: np.ndarray, K: np.ndarray, seed: int) -> np.ndarray:
    """Pixels (bool) that lose their depth: material/angle dropout in connected patches, and
    holes beside depth edges."""
    rng = effect_rng(seed, "dropout")
    score = dropout_score(model, albedo, gloss, cos_incidence(normal, K))
    # Invalid where a unit Gaussian field falls below the score, Phi^-1(p): marginally with
    # probability p, in patches.
    share = np.float32(model.patch_share)
    field = smooth_field(rng, depth.shape, model.patch_px) * np.sqrt(share)
    field += fast_normal(rng, depth.shape) * np.sqrt(np.float32(1) - share)
    holes = (field < score) & (depth > 0)
    if model.edge_dropout > 0:
        edge = depth_edges(depth)
        seeds = edge & (rng.random(depth.shape, dtype=np.float32) < model.edge_dropout)
        run = np.ones((1, max(1, model.edge_hole_px)), np.uint8)
        holes |= cv2.dilate(seeds.astype(np.uint8), run).astype(bool) & (depth > 0)
    return holes


def draw_offset(model: DepthSensorModel, seed: int) -> tuple[int, int]:
    """This frame's depth-to-colour registration error (dx, dy) in whole pixels, with a
    magnitude in ``model.offset_px`` and a random direction."""
    rng = effect_rng(seed, "offset")
    magnitude = rng.uniform(*model.offset_px)
    angle = rng.uniform(0, 2 * math.pi)
    return int(round(magnitude * math.cos(angle))), int(round(magnitude * math.sin(angle)))


def shift_image(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``image`` moved by (dx, dy) pixels (content moves right/down for positive values);
    uncovered pixels are 0 (no depth)."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def apply_depth_sensor(preset_: SensorPreset, depth: np.ndarray, K: np.ndarray,
                       albedo: np.ndarray, gloss: np.ndarray, normal: np.ndarray,
                       seed: int) -> tuple[np.ndarray, dict]:
    """The sensed depth (float32 metres, 0 = invalid) of an ideal depth image, and a record of
    the frame's random sensor state (the offset drawn)."""
    model, on = preset_.depth, preset_.effects
    ideal = np.asarray(depth, dtype=np.float32)
    out = ideal.copy()
    if "shadow" in on:
        fx = float(np.asarray(K)[0, 0])
        out[second_view_shadow(ideal, fx, model.baseline_m, model.second_view_band)] = 0.0
    if "fattening" in on:  # after the shadow: the matching window reaches into it too
        out = fatten_foreground(out, model.fattening_px)
    if "noise" in on or "correlated" in on or "quantise" in on:
        valid = out > 0
        fb = np.float32(model.focal_px * model.baseline_m)
        disparity = fb / out[valid]
        noise = disparity_noise(model, out.shape, "noise" in on, "correlated" in on, seed)
        if noise is not None:
            disparity += noise[valid]
        if "quantise" in on:
            step = np.float32(model.disparity_step_px)
            disparity = np.round(disparity / step) * step
        sensed = np.zeros_like(disparity)
        positive = disparity > 0
        sensed[positive] = fb / disparity[positive]
        out[valid] = sensed
    if "dropout" in on:
        out[dropout_mask(model, ideal, albedo, gloss, normal, K, seed)] = 0.0
        lo, hi = model.range_m
        out[(out < lo) | (out > hi)] = 0.0
    record: dict = {"preset": preset_.name}
    if "offset" in on:
        dx, dy = draw_offset(model, seed)
        out = shift_image(out, dx, dy)
        record["depth_offset_px"] = (dx, dy)
    return out, record


# ---------------------------------------------------------------- colour effects


def apply_colour_camera(preset_: SensorPreset, rgb: np.ndarray, seed: int) -> np.ndarray:
    """The colour camera's image (uint8) of a rendered one: blur, gains, noise, saturation.
    (Anti-aliasing happens in the renderer.)"""
    model, on = preset_.colour, preset_.effects
    img = rgb.astype(np.float32)
    if "blur" in on and model.blur_sigma_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), model.blur_sigma_px)
    gain = np.ones(3, dtype=np.float32)
    if "exposure" in on:
        stops = effect_rng(seed, "exposure").uniform(-model.exposure_stops, model.exposure_stops)
        gain *= np.float32(2.0 ** stops)
    if "white_balance" in on:
        wb = effect_rng(seed, "white_balance").uniform(-model.white_balance, model.white_balance, 3)
        gain *= (1 + wb).astype(np.float32)
    if not np.all(gain == 1):
        img *= gain
        np.clip(img, 0, 255, out=img)
    if "colour_noise" in on:
        sigma = np.sqrt(np.float32(model.read_noise ** 2) + np.float32(model.shot_noise) * img)
        img += fast_normal(effect_rng(seed, "colour_noise"), img.shape) * sigma
    if "saturation" in on:
        scale = np.float32(effect_rng(seed, "saturation").uniform(*model.saturation))
        grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = grey[..., None] + scale * (img - grey[..., None])
    np.clip(img, 0, 255, out=img)
    return (img + np.float32(0.5)).astype(np.uint8)
