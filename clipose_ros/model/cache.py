"""Training cache: every frame's PNGs are decoded once, each instance keeps what training needs.

Decoding depth and mask PNGs runs at about 90 instances/s here, slower than the network
trains, so ``clipose-train`` never decodes during training. Per instance the cache stores the
depth values inside its mask (float32, row-major order), the mask's bounding box (plus a
margin) as packed bits, the crop offset and the labels. A training sample rebuilds the small
depth/mask crop, shifts the principal point by the crop offset and runs
``dataset.prepare_instance``, i.e. the reader's random erosion, ``prepare_points`` and the
pose/scale/jitter augmentations: the points are exactly those the reader would give for the
full frame.

Layout (one folder): ``manifest.json`` (cache version, key, counts), ``index.npz`` (per
instance: offsets and shapes, labels, K), ``depth.f32`` and ``mask.bits`` (flat, read through
``np.memmap``) and, when ``rgb_crop_size`` is set, ``rgb.u8`` (n, S, S, 3) square RGB crops of
the boxes (the CLIP branch's input; the crop settings are part of the key). The key hashes the
cache version, the points preparation, the crop settings and every frame's label/depth/mask
(path, size, mtime): a change to the data or to the preparation rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from clipose_ros.categories import CLASS_IDS, class_name, is_symmetric
from clipose_ros.data.augment import AugmentConfig
from clipose_ros.data.dataset import (
    NocsInstanceDataset,
    handle_points_in_depth,
    instance_crop,
    prepare_instance,
    turned_cut_direction,
)
from clipose_ros.data.nocs_format import frame_path, read_color, read_depth, read_mask
from clipose_ros.geometry import backproject_pixels, valid_depth_pixels
from clipose_ros.points import PointsConfig, cut_sides, prepare_points

log = logging.getLogger("clipose.cache")

CACHE_VERSION = 2  # 2: the cut sides of each mask
_MARGIN = 8  # pixels around the mask box, so that erosion sees the same borders as in a frame
_FILES = ("label.pkl", "depth.png", "mask.png")


class CacheError(RuntimeError):
    """A cache folder that cannot be used (names the folder and the problem)."""


def cache_key(
    root: Path, points_config: PointsConfig, rgb_crop_size: int | None, crop_scale: float
) -> str:
    """Hash of everything the cache content depends on (see the module docstring)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "cache_version": CACHE_VERSION,
                "points": points_config.to_dict(),
                "rgb_crop_size": rgb_crop_size,
                "crop_scale": crop_scale,
                "margin": _MARGIN,
            },
            sort_keys=True,
        ).encode()
    )
    for p in sorted(Path(root).rglob("*_label.pkl")):
        prefix = p.with_name(p.name[: -len("_label.pkl")])
        for suffix in _FILES:
            f = frame_path(prefix, suffix)
            st = f.stat() if f.exists() else None
            h.update(
                f"{f.relative_to(root)}:{st.st_size if st else -1}:"
                f"{st.st_mtime_ns if st else -1}\n".encode()
            )
    return h.hexdigest()[:24]


@dataclass
class _Writer:
    folder: Path
    rgb_crop_size: int | None

    def __post_init__(self) -> None:
        self.depth = open(self.folder / "depth.f32", "wb")
        self.mask = open(self.folder / "mask.bits", "wb")
        self.rgb = open(self.folder / "rgb.u8", "wb") if self.rgb_crop_size else None
        self.depth_pos = 0
        self.mask_pos = 0

    def add(self, values: np.ndarray, bits: np.ndarray) -> tuple[int, int]:
        d, m = self.depth_pos, self.mask_pos
        self.depth.write(values.astype(np.float32).tobytes())
        self.mask.write(bits.tobytes())
        self.depth_pos += len(values)
        self.mask_pos += len(bits)
        return d, m

    def close(self) -> None:
        for f in (self.depth, self.mask, self.rgb):
            if f is not None:
                f.close()


# Per-instance fields of index.npz (besides the frame names), in the order they are written.
_INDEX_FIELDS = ("depth_off", "depth_len", "mask_off", "shape", "origin", "K", "class_id", "R",
                 "t", "s", "extents", "handle", "bbox", "instance_id", "cut")


def _cut_instance(
    depth: np.ndarray, inst: np.ndarray, K: np.ndarray, points_config: PointsConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]] | None:
    """(depth crop, mask crop, K shifted to the crop, crop origin (y0, x0)) of the non-empty
    instance mask ``inst`` (its box plus the margin), or None when it gives too few points."""
    ys, xs = np.nonzero(inst)
    y0 = max(int(ys.min()) - _MARGIN, 0)
    x0 = max(int(xs.min()) - _MARGIN, 0)
    y1 = min(int(ys.max()) + 1 + _MARGIN, inst.shape[0])
    x1 = min(int(xs.max()) + 1 + _MARGIN, inst.shape[1])
    m = inst[y0:y1, x0:x1]
    d = np.where(m, depth[y0:y1, x0:x1], 0.0).astype(np.float32)
    K = K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    if prepare_points(d, m, K, points_config).points is None:
        return None
    return d, m, K, (y0, x0)


def _write_index(folder: Path, rows: dict[str, list], frames: list[str]) -> None:
    n = len(frames)
    np.savez(
        folder / "index.npz",
        depth_off=np.array(rows["depth_off"], np.int64),
        depth_len=np.array(rows["depth_len"], np.int64),
        mask_off=np.array(rows["mask_off"], np.int64),
        shape=np.array(rows["shape"], np.int64).reshape(n, 2),
        origin=np.array(rows["origin"], np.int64).reshape(n, 2),
        K=np.array(rows["K"], np.float64).reshape(n, 3, 3),
        class_id=np.array(rows["class_id"], np.int64),
        R=np.array(rows["R"], np.float64).reshape(n, 3, 3),
        t=np.array(rows["t"], np.float64).reshape(n, 3),
        s=np.array(rows["s"], np.float64),
        extents=np.array(rows["extents"], np.float64).reshape(n, 3),
        handle=np.array(rows["handle"], bool),
        bbox=np.array(rows["bbox"], np.int64).reshape(n, 4),
        instance_id=np.array(rows["instance_id"], np.int64),
        cut=np.array(rows["cut"], bool).reshape(n, 4),
        frame=np.array(frames),
    )


def build_cache(
    root: Path,
    folder: Path,
    points_config: PointsConfig,
    rgb_crop_size: int | None = None,
    crop_scale: float = 1.2,
    intrinsics: str = "camera",
    progress: bool = True,
) -> None:
    """Decode every labelled frame below ``root`` once and write the cache into ``folder``."""
    reader = NocsInstanceDataset(
        root, intrinsics=intrinsics, points_config=points_config, load_rgb=False
    )
    key = cache_key(root, points_config, rgb_crop_size, crop_scale)
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = _Writer(tmp, rgb_crop_size)
    rows: dict[str, list] = {k: [] for k in _INDEX_FIELDS}
    frames: list[str] = []
    skipped = 0
    by_frame = reader.indices_by_frame()
    for frame, members in tqdm(by_frame.items(), desc="cache", unit="frame", disable=not progress):
        prefix = Path(frame)
        depth, mask = read_depth(prefix), read_mask(prefix)
        color = read_color(prefix) if rgb_crop_size else None
        for j in members:
            lab = reader.instance_label(j)
            inst = reader.instance_mask(mask, j)
            cut = _cut_instance(depth, inst, lab["K"], points_config)
            if cut is None:
                skipped += 1
                continue
            d, m, K, origin = cut
            d_off, m_off = writer.add(d[m], np.packbits(m.reshape(-1)))
            if writer.rgb is not None:
                crop = instance_crop(color, inst, lab["bbox"], rgb_crop_size, crop_scale)
                writer.rgb.write(np.ascontiguousarray(crop, dtype=np.uint8).tobytes())
            entry = {"depth_off": d_off, "depth_len": int(m.sum()), "mask_off": m_off,
                     "shape": m.shape, "origin": origin, "K": K,
                     "handle": lab["handle_visible"], "cut": cut_sides(inst)}
            for k in _INDEX_FIELDS:
                rows[k].append(entry[k] if k in entry else lab[k])
            frames.append(str(prefix.relative_to(root)))
    writer.close()
    _write_index(tmp, rows, frames)
    manifest = {
        "cache_version": CACHE_VERSION,
        "key": key,
        "root": str(root),
        "instances": len(frames),
        "frames": len(by_frame),
        "skipped_too_few_points": skipped + int(reader.skipped["too_few_points"]),
        "points": points_config.to_dict(),
        "rgb_crop_size": rgb_crop_size,
        "crop_scale": crop_scale,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log.info(
        "cache %s: %d instances from %d frames (%d skipped: too few points)",
        folder,
        len(frames),
        len(by_frame),
        manifest["skipped_too_few_points"],
    )


def ensure_cache(
    root: Path,
    folder: Path,
    points_config: PointsConfig,
    rgb_crop_size: int | None = None,
    crop_scale: float = 1.2,
    intrinsics: str = "camera",
    progress: bool = True,
) -> Path:
    """Build the cache unless ``folder`` already holds one with the current key."""
    key = cache_key(root, points_config, rgb_crop_size, crop_scale)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            current = json.loads(manifest.read_text()).get("key")
        except json.JSONDecodeError:
            current = None
        if current == key:
            log.info("cache %s is up to date (key %s)", folder, key)
            return folder
        log.info("cache %s is stale (data or preparation changed): rebuilding", folder)
    build_cache(root, folder, points_config, rgb_crop_size, crop_scale, intrinsics, progress)
    return folder


class CachedInstances(Dataset):
    """Training samples from a cache folder; same items as the reader's core fields.

    Items: ``points`` (N, 3) float32, ``class_id`` int64, ``R`` (3, 3), ``t`` (3,), ``size``
    (3,) metres, ``symmetric`` bool, ``index`` int64 (plus ``rgb_crop`` uint8 (S, S, 3) when
    the cache holds crops). Randomness comes from ``(seed, epoch, index)`` like the reader's.
    """

    def __init__(
        self,
        folder: Path,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        handle_min_depth_points: int = 0,
    ) -> None:
        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
            if self.manifest.get("cache_version") != CACHE_VERSION:
                raise CacheError(
                    f"cache version {self.manifest.get('cache_version')} != {CACHE_VERSION}"
                )
            with np.load(folder / "index.npz") as z:
                self.index = {k: z[k] for k in z.files}
            n = int(self.manifest["instances"])
            self.depth = np.memmap(folder / "depth.f32", np.float32, "r") if n else np.zeros(0)
            self.mask = np.memmap(folder / "mask.bits", np.uint8, "r") if n else np.zeros(0)
            crop = self.manifest.get("rgb_crop_size")
            self.rgb = (
                np.memmap(folder / "rgb.u8", np.uint8, "r").reshape(n, crop, crop, 3)
                if crop and n
                else None
            )
        except (OSError, KeyError, ValueError, CacheError) as err:
            raise CacheError(
                f"training cache {folder} is unusable ({err}); delete it to rebuild"
            ) from err
        self.folder = folder
        self.points_config = PointsConfig.from_dict(self.manifest["points"])
        self.augment = augment if augment is not None else AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.class_ids = self.index["class_id"]
        self.handle_min_depth_points = int(handle_min_depth_points)
        self.handles_hidden_in_depth = 0
        if self.handle_min_depth_points > 0:
            self._handles_from_depth()

    def _handles_from_depth(self) -> None:
        """Mark a mug's handle hidden when fewer than ``handle_min_depth_points`` of its
        depth points lie on the handle: a handle seen in the image but lost to a depth hole
        or a projector shadow is not in the network's input, and an x-axis target there
        contradicts the input (those samples then train as symmetric)."""
        ix = self.index
        handle = ix["handle"].copy()
        mug = CLASS_IDS["mug"]
        for i in np.flatnonzero((self.class_ids == mug) & handle):
            depth, mask, K = self.crop(int(i))
            rows, cols = valid_depth_pixels(depth, mask)
            points = backproject_pixels(depth, K, rows, cols)
            seen = handle_points_in_depth(points, ix["R"][i], ix["t"][i], ix["s"][i],
                                          ix["extents"][i])
            handle[i] = seen >= self.handle_min_depth_points
        self.handles_hidden_in_depth = int(np.count_nonzero(ix["handle"] & ~handle))
        log.info(
            "%s: %d of %d mugs labelled with a visible handle have fewer than %d handle points "
            "in depth: trained as symmetric",
            self.folder,
            self.handles_hidden_in_depth,
            int(np.count_nonzero((self.class_ids == mug) & ix["handle"])),
            self.handle_min_depth_points,
        )
        ix["handle"] = handle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.class_ids)

    def crop(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth crop, mask crop, shifted K) of one instance."""
        ix = self.index
        h, w = (int(v) for v in ix["shape"][index])
        m_off = int(ix["mask_off"][index])
        bits = self.mask[m_off : m_off + (h * w + 7) // 8]
        mask = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
        d_off, d_len = int(ix["depth_off"][index]), int(ix["depth_len"][index])
        depth = np.zeros((h, w), np.float32)
        depth[mask] = self.depth[d_off : d_off + d_len]
        return depth, mask, ix["K"][index]

    def __getitem__(self, index: int) -> dict:
        ix = self.index
        index = int(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index, 0]))
        depth, mask, K = self.crop(index)
        cid = int(ix["class_id"][index])
        name = class_name(cid)
        prepared = prepare_instance(
            depth,
            mask,
            K,
            ix["R"][index],
            ix["t"][index],
            float(ix["s"][index]),
            ix["extents"][index],
            name,
            self.augment,
            self.points_config,
            rng,
        )
        if prepared is None:  # cannot happen for cached instances (checked at build time)
            raise CacheError(f"{self.folder}: cached instance {index} gave no points")
        points, R, t, s, e, _ = prepared
        cut_dir = turned_cut_direction(ix["cut"][index], ix["R"][index], R)
        item = {
            "points": torch.from_numpy(points.astype(np.float32)),
            "cut_dir": torch.from_numpy(cut_dir.astype(np.float32)),
            "class_id": torch.tensor(cid, dtype=torch.int64),
            "R": torch.from_numpy(R.astype(np.float32)),
            "t": torch.from_numpy(t.astype(np.float32)),
            "size": torch.from_numpy((s * e).astype(np.float32)),
            "symmetric": torch.tensor(is_symmetric(cid, bool(ix["handle"][index]))),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.rgb is not None:
            item["rgb_crop"] = torch.from_numpy(np.array(self.rgb[index]))
        return item
