"""Per-instance training samples from NOCS-format folders (CAMERA25 / REAL275 / our scenes).

One item of :class:`NocsInstanceDataset` is one labelled object instance of one frame: the
sampled, back-projected point cloud the pose network sees, the square RGB crop the CLIP image
encoder sees, and the ground-truth pose in the OpenCV camera frame (``p = s R p_nocs + t``).

Index building reads only the label pickles (and one ``intrinsics.txt`` per folder), never an
image, so that a dataset of hundreds of thousands of frames indexes in the time it takes to
unpickle its labels; depth, mask and colour are read lazily in ``__getitem__``.

Instances with fewer than ``min_points`` valid depth pixels inside their mask cannot be
sampled meaningfully. By default they are found lazily: ``__getitem__`` notices, counts the
instance in ``skipped["too_few_points"]`` and deterministically returns another instance
instead (``source_index`` in the sample says which). With ``prefilter_points=True`` the check
runs at index time instead (reads depth and mask of every frame once: exact ``len`` and
counts, slow for big datasets).

Intrinsics, first match wins: the label pickle's ``K`` key (our generator writes it), then an
``intrinsics.txt`` (3x3, whitespace separated) in the frame's folder, then the constructor's
``intrinsics`` (a 3x3 array or ``"camera"`` / ``"real"``).

NOCS box extents, first match wins: the label's ``nocs_extents`` (ours), the label's ``size``
(the SPD test labels store the model extents there), ``model_extents[model_name]`` from the
constructor; when none applies, index building raises :class:`NocsFormatError`.

Camera convention: labels whose ``camera_convention`` is ``"nocs_flipped"`` (poses in the frame
of the original NOCS code, which negates x and y when it back-projects) are converted with
``F = diag(-1, -1, 1)``: ``p_cv = F p_flipped``, hence ``R_cv = F R`` (first two rows negated)
and ``t_cv = F t``. Depth is always back-projected in the OpenCV frame.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from clipose_ros.categories import (
    CATEGORIES,
    MEAN_SIZES_M,
    SYMMETRIC_CATEGORIES,
    class_name,
    is_symmetric,
)
from clipose_ros.data.augment import (
    AugmentConfig,
    erode_mask,
    jitter_points,
    perturb_pose,
    perturb_scale,
    roll_about_ray,
)
from clipose_ros.data.nocs_format import (
    FrameLabel,
    NocsFormatError,
    frame_intrinsics,
    frame_path,
    instance_extents,
    list_frames,
    read_color,
    read_depth,
    read_label,
    read_mask,
    resolve_intrinsics,
)
from clipose_ros.geometry import valid_depth_pixels
from clipose_ros.points import (
    NUM_POINTS,
    PointsConfig,
    cut_direction,
    cut_sides,
    prepare_points,
)

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN (RGB)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip OPENAI_DATASET_STD (RGB)
# Padding colour of crops that reach past the image: CLIP's mean, which normalises to 0.
CLIP_FILL = tuple(float(255.0 * m) for m in CLIP_MEAN)
_ROTATION_TOLERANCE = 1e-2  # max |R^T R - I| entry accepted (then re-orthonormalised)
_MAX_RESAMPLE = 100


def square_crop(
    image: np.ndarray,
    bbox: np.ndarray,
    out_size: int,
    scale: float,
    fill: tuple[float, float, float],
) -> np.ndarray:
    """Square crop of ``scale * max(h, w)`` centred on ``bbox`` (y1, x1, y2, x2), resized.

    Square so that the object's aspect ratio survives the resize (CLIP expects undistorted
    images); parts outside the image are filled with ``fill``. Returns (out, out, C) uint8.
    """
    y1, x1, y2, x2 = (float(v) for v in bbox)
    cy, cx = (y1 + y2) / 2.0, (x1 + x2) / 2.0
    side = max(int(round(max(y2 - y1, x2 - x1) * scale)), 2)
    top = int(round(cy - side / 2.0))
    left = int(round(cx - side / 2.0))
    height, width = image.shape[:2]
    pad = max(0, -top, -left, top + side - height, left + side - width)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
        top += pad
        left += pad
    patch = image[top : top + side, left : left + side]
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_CUBIC
    return cv2.resize(patch, (out_size, out_size), interpolation=interp)


def instance_crop(
    color: np.ndarray, instance: np.ndarray, bbox: np.ndarray, out_size: int, scale: float
) -> np.ndarray:
    """The CLIP crop of one instance, (out, out, 3) uint8: :func:`square_crop` of its label box
    (y1, x1, y2, x2), or of the box of its mask ``instance`` where the label box is degenerate,
    padded with CLIP's mean colour. The one crop path of the reader, the training cache and
    ``clipose-pretrain-clip``."""
    bbox = np.asarray(bbox)
    if bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
        rows, cols = np.nonzero(instance)
        bbox = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
    return square_crop(color, bbox, out_size, scale, CLIP_FILL)


def normalize_clip(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) with CLIP's mean/std."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _orthonormalize(R: np.ndarray, where: str) -> np.ndarray:
    """Nearest rotation to an almost-orthonormal label rotation; errors when far from SO(3)."""
    err = np.abs(R.T @ R - np.eye(3)).max()
    if not np.all(np.isfinite(R)) or err > _ROTATION_TOLERANCE or np.linalg.det(R) <= 0:
        raise NocsFormatError(f"{where}: rotation is not a proper rotation matrix:\n{R}")
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def prepare_instance(
    depth: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    s: float,
    extents: np.ndarray,
    name: str,
    aug: AugmentConfig,
    points_config: PointsConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, int] | None:
    """Points and (augmented) labels of one instance: the reader's and the training cache's
    common path, so both feed the network exactly what ``prepare_points`` gives at run time.

    Returns ``(points, R, t, s, nocs_extents, usable point count)`` or None when the instance
    has too few points. The random mask erosion runs before ``prepare_points``, the scale,
    pose and jitter augmentations after it, in that order (each with its own probability).
    """
    used = mask
    if aug.mask_erosion and rng.random() < aug.erosion_prob:
        eroded = erode_mask(mask, rng, aug.erosion_max_kernel)
        if len(valid_depth_pixels(depth, eroded)[0]) >= points_config.min_points:
            used = eroded
    points, count, _ = prepare_points(depth, used, K, points_config, rng)
    if points is None and used is not mask:
        # never let erosion make a sample unusable: the outlier rejection can still drop an
        # eroded mask below min_points (seen once in 20 000 samples); the whole mask then
        points, count, _ = prepare_points(depth, mask, K, points_config, rng)
    if points is None:
        return None
    points = points.astype(np.float64)
    R, t, e = R.copy(), t.copy(), np.array(extents, dtype=np.float64)
    if aug.scale_perturbation and rng.random() < aug.scale_prob:
        points, s, e = perturb_scale(
            points, R, t, s, e, rng, aug.scale_range, tie_xz=name in SYMMETRIC_CATEGORIES
        )
    if aug.ray_roll and rng.random() < aug.ray_roll_prob:
        points, R, t = roll_about_ray(points, R, t, rng, aug.max_ray_roll_deg)
    if aug.pose_perturbation and rng.random() < aug.pose_prob:
        points, R, t = perturb_pose(points, R, t, rng, aug.max_rotation_deg, aug.max_translation_m)
    if aug.point_jitter and rng.random() < aug.jitter_prob:
        points = jitter_points(points, rng, aug.jitter_sigma_m, aug.jitter_clip_m)
    return points, R, t, float(s), e, count


def turned_cut_direction(cut: np.ndarray, R_label: np.ndarray, R_sample: np.ndarray) -> np.ndarray:
    """The cut direction (``points.cut_direction`` of the mask's cut sides) of a sample whose
    rotation augmentations turned the points by ``R_sample R_label^T``: turned the same way, so
    that the network sees the cut where the turned points end."""
    return (R_sample @ R_label.T) @ cut_direction(cut)


def handle_points_in_depth(
    points: np.ndarray, R: np.ndarray, t: np.ndarray, s: float, extents: np.ndarray
) -> int:
    """How many camera-frame ``points`` of a mug lie on its handle, by geometry.

    In the mug's label frame (the symmetric box, body axis on y) the body's radius is half
    the z extent and the handle reaches out along +x to half the x extent. A point is on the
    handle when it lies beyond the body (x > 1.2 radius), within the handle's reach and
    height, and near the x-y plane (|z| < half the radius). Works for any data with a true
    pose, real or generated, so the training label can say whether the handle is in the
    *depth* (what the network sees), not only in the image.
    """
    q = (np.asarray(points, np.float64) - t) @ R / max(float(s), 1e-9)
    e = np.asarray(extents, np.float64)
    radius = e[2] / 2
    on_handle = (
        (q[:, 0] > 1.2 * radius)
        & (q[:, 0] < 0.575 * e[0])
        & (np.abs(q[:, 2]) < 0.5 * radius)
        & (np.abs(q[:, 1]) < e[1] / 2)
    )
    return int(np.count_nonzero(on_handle))


class NocsInstanceDataset(Dataset):
    """Per-instance samples of a NOCS-format dataset (see the module docstring).

    Each item is a dict of torch tensors (plus strings ``frame``, ``class_name``,
    ``model_name``): ``points`` (N, 3) float32 camera frame metres, ``rgb_crop`` (3, S, S)
    float32 CLIP-normalised (absent when ``load_rgb=False``), ``class_id`` int64 1..6, ``R``
    (3, 3), ``t`` (3,), ``s`` (), ``size`` (3,) = s * nocs_extents, ``nocs_extents`` (3,),
    ``mean_size`` (3,), ``K`` (3, 3), ``bbox`` (4,) int64 y1 x1 y2 x2, ``symmetric`` and
    ``handle_visible`` bool, ``instance_id``, ``index`` (requested), ``source_index``
    (delivered; differs after a lazy skip), ``num_valid_points`` (mask pixels with depth,
    after erosion).

    Randomness (point sampling and augmentation) comes from a generator seeded by
    ``(seed, epoch, index)``, so an item is reproducible and independent of worker order.
    Call :meth:`set_epoch` before each epoch (before the DataLoader's workers start, i.e. not
    with ``persistent_workers=True``) to get new augmentations per epoch.
    """

    def __init__(
        self,
        root: str | Path,
        intrinsics: np.ndarray | str = "camera",
        num_points: int = NUM_POINTS,
        min_points: int = 50,
        crop_size: int = 224,
        crop_scale: float = 1.2,
        augment: AugmentConfig | None = None,
        train: bool = False,
        seed: int = 0,
        model_extents: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        categories: Sequence[int | str] | None = None,
        prefilter_points: bool = False,
        load_rgb: bool = True,
        points_config: PointsConfig | None = None,
    ) -> None:
        """Index ``root`` (labels only unless ``prefilter_points``).

        ``augment`` defaults to ``AugmentConfig.preset(train)``; ``model_extents`` maps model
        names to NOCS extents, used for labels that have neither ``nocs_extents`` (ours) nor
        ``size`` (SPD test labels), i.e. the SPD train labels, which store only scales;
        ``categories`` keeps only these class ids or names; ``points_config`` sets the points
        preparation (default: ``PointsConfig`` with ``num_points`` and ``min_points``).
        """
        if num_points < 1 or min_points < 1:
            raise ValueError("num_points and min_points must be positive")
        if crop_size < 1 or crop_scale <= 0:
            raise ValueError("crop_size must be positive and crop_scale > 0")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.root = Path(root)
        self.default_K = resolve_intrinsics(intrinsics)
        # Points preparation (clipose_ros/points.py); ``points_config`` wins over the two sizes.
        self.points_config = points_config or PointsConfig(
            n_points=int(num_points), min_points=int(min_points)
        )
        self.num_points = self.points_config.n_points
        self.min_points = self.points_config.min_points
        self.crop_size = int(crop_size)
        self.crop_scale = float(crop_scale)
        self.augment = augment if augment is not None else AugmentConfig.preset(train)
        self.seed = int(seed)
        self.epoch = 0
        self.load_rgb = bool(load_rgb)
        self.model_extents = {
            k: np.asarray(v, np.float64).reshape(3) for k, v in (model_extents or {}).items()
        }
        self.categories = self._parse_categories(categories)
        self.skipped: Counter[str] = Counter()
        self._too_few: set[int] = set()  # lazily found bad instances (process-local cache)
        self._build_index(prefilter_points)

    # ------------------------------------------------------------------ index building

    @staticmethod
    def _parse_categories(categories: Sequence[int | str] | None) -> frozenset[int] | None:
        if categories is None:
            return None
        ids = set()
        for c in categories:
            if isinstance(c, str):
                if c not in CATEGORIES:
                    raise ValueError(f"unknown category {c!r}; expected one of {CATEGORIES}")
                ids.add(CATEGORIES.index(c) + 1)
            else:
                class_name(int(c))  # validates
                ids.add(int(c))
        return frozenset(ids)

    def _build_index(self, prefilter: bool) -> None:
        frames = list_frames(self.root, labelled=True)
        frame_strs: list[str] = []
        Ks: list[np.ndarray] = []
        K_ids: dict[bytes, int] = {}
        frame_K: list[int] = []
        fields = ("frame", "instance_id", "class_id", "R", "t", "s", "extents", "handle", "bbox")
        rows: dict[str, list] = {k: [] for k in (*fields, "model")}
        folder_cache: dict[Path, np.ndarray | None] = {}
        for prefix in frames:
            label = read_label(prefix)
            K = frame_intrinsics(prefix, label, self.default_K, folder_cache)
            key = K.tobytes()
            if key not in K_ids:
                K_ids[key] = len(Ks)
                Ks.append(K)
            frame_idx = len(frame_strs)
            frame_strs.append(str(prefix))
            frame_K.append(K_ids[key])
            counts = self._prefilter_counts(prefix, label) if prefilter else None
            for i in range(len(label)):
                where = f"{frame_path(prefix, 'label.pkl')} instance {label.instance_ids[i]}"
                cid = int(label.class_ids[i])
                if not 1 <= cid <= len(CATEGORIES):
                    raise NocsFormatError(f"{where}: class id {cid} is not in 1..6")
                if self.categories is not None and cid not in self.categories:
                    continue
                if counts is not None and counts[i] < self.min_points:
                    self.skipped["too_few_points"] += 1
                    continue
                R, t = label.opencv_pose(i)
                R = _orthonormalize(R, where)
                s = float(label.scales[i])
                if not np.isfinite(s) or s <= 0 or not np.all(np.isfinite(t)):
                    raise NocsFormatError(f"{where}: invalid scale {s} or translation {t}")
                rows["frame"].append(frame_idx)
                rows["instance_id"].append(int(label.instance_ids[i]))
                rows["class_id"].append(cid)
                rows["R"].append(R)
                rows["t"].append(t)
                rows["s"].append(s)
                rows["extents"].append(instance_extents(prefix, label, i, self.model_extents))
                rows["handle"].append(bool(label.handle_visibility[i]))
                rows["bbox"].append(label.bboxes[i])
                rows["model"].append(str(label.model_list[i]))
        # numpy arrays rather than lists of objects: DataLoader workers then share the index
        # copy-on-write instead of copying it through Python reference counting.
        self._frames = np.array(frame_strs)
        self._frame_K = np.array(frame_K, dtype=np.int64)
        self._Ks = np.array(Ks, dtype=np.float64).reshape(-1, 3, 3)
        self._frame_of = np.array(rows["frame"], dtype=np.int64)
        self._instance_id = np.array(rows["instance_id"], dtype=np.int64)
        self.instance_class_ids = np.array(rows["class_id"], dtype=np.int64)
        self._R = np.array(rows["R"], dtype=np.float64).reshape(-1, 3, 3)
        self._t = np.array(rows["t"], dtype=np.float64).reshape(-1, 3)
        self._s = np.array(rows["s"], dtype=np.float64)
        self._extents_arr = np.array(rows["extents"], dtype=np.float64).reshape(-1, 3)
        self._handle = np.array(rows["handle"], dtype=bool)
        self._bbox = np.array(rows["bbox"], dtype=np.int64).reshape(-1, 4)
        self._model = np.array(rows["model"]) if rows["model"] else np.array([], dtype=str)
        logger.info(
            "NOCS dataset %s: %d instances in %d frames; skipped at index time: %s",
            self.root,
            len(self),
            len(self._frames),
            dict(self.skipped) or "none",
        )
        if len(self) == 0:
            logger.warning("NOCS dataset %s has no usable instances", self.root)

    def _prefilter_counts(self, prefix: Path, label: FrameLabel) -> list[int]:
        depth, mask = self._read_depth_mask(prefix)
        present = set(np.unique(mask).tolist())
        counts = []
        for iid in label.instance_ids:
            if int(iid) not in present:
                raise self._not_in_mask(prefix, int(iid))
            counts.append(len(valid_depth_pixels(depth, mask == iid)[0]))
        return counts

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _read_depth_mask(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
        depth = read_depth(prefix)
        mask = read_mask(prefix)
        if depth.shape != mask.shape:
            raise NocsFormatError(
                f"{frame_path(prefix, 'mask.png')} has shape {mask.shape} but "
                f"{frame_path(prefix, 'depth.png')} has shape {depth.shape}"
            )
        return depth, mask

    def instance_mask(self, mask: np.ndarray, index: int) -> np.ndarray:
        """Instance ``index``'s pixels in its frame's instance-id image ``mask``; a
        :class:`NocsFormatError` naming the files when the label's instance is not in it."""
        j = int(index)
        iid = int(self._instance_id[j])
        inst = mask == iid
        if not inst.any():
            raise self._not_in_mask(Path(self._frames[self._frame_of[j]]), iid)
        return inst

    @staticmethod
    def _not_in_mask(prefix: Path, instance_id: int) -> NocsFormatError:
        return NocsFormatError(
            f"frame {prefix}: instance id {instance_id} of {frame_path(prefix, 'label.pkl')} "
            f"does not occur in {frame_path(prefix, 'mask.png')}"
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of this epoch (items are seeded by seed, epoch, index)."""
        if epoch < 0:
            raise ValueError("epoch must be non-negative")
        self.epoch = int(epoch)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index, stream]))

    def __len__(self) -> int:
        return len(self._frame_of)

    def instance_label(self, index: int) -> dict:
        """Everything the index knows about one instance (no image read): frame prefix,
        instance id, class id, R, t, s, NOCS extents, handle visibility, bbox, K, model name.
        Used by the training cache (clipose_ros/model/cache.py)."""
        j = int(index)
        return {
            "frame": self.frame_of(j),
            "instance_id": int(self._instance_id[j]),
            "class_id": int(self.instance_class_ids[j]),
            "R": self._R[j].copy(),
            "t": self._t[j].copy(),
            "s": float(self._s[j]),
            "extents": self._extents_arr[j].copy(),
            "handle_visible": bool(self._handle[j]),
            "bbox": self._bbox[j].copy(),
            "K": self._Ks[self._frame_K[self._frame_of[j]]].copy(),
            "model_name": str(self._model[j]),
        }

    def indices_by_frame(self) -> dict[str, list[int]]:
        """Sample indices grouped by frame prefix, so frame-wise work decodes each frame once."""
        groups: dict[str, list[int]] = {}
        for j in range(len(self)):
            groups.setdefault(self.frame_of(j), []).append(j)
        return groups

    def frame_of(self, index: int) -> str:
        """Frame prefix of an instance, without loading anything."""
        return str(self._frames[self._frame_of[index]])

    def __getitem__(self, index: int) -> dict:
        n, index = len(self), int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of {n} instances")
        index %= n
        pick = self._rng(index, 1)  # candidate stream, independent of what was cached before
        source = index
        for _ in range(_MAX_RESAMPLE):
            if source not in self._too_few:
                sample = self._load(source, self._rng(index, 0))
                if sample is not None:
                    sample["index"] = torch.tensor(index, dtype=torch.int64)
                    return sample
            source = int(pick.integers(n))
        raise RuntimeError(
            f"no instance with >= {self.min_points} valid points found after {_MAX_RESAMPLE} "
            f"draws (skipped so far: {dict(self.skipped)}); lower min_points or check the data"
        )

    def _mark_too_few(self, j: int, count: int) -> None:
        if j in self._too_few:
            return
        self._too_few.add(j)
        self.skipped["too_few_points"] += 1
        total = self.skipped["too_few_points"]
        logger.debug(
            "skipping %s instance %d: %d valid points < %d",
            self.frame_of(j),
            self._instance_id[j],
            count,
            self.min_points,
        )
        if total & (total - 1) == 0:  # log at 1, 2, 4, 8, ... to stay quiet on big datasets
            logger.info(
                "skipped %d instances with < %d valid points so far (this process)",
                total,
                self.min_points,
            )

    def _load(self, j: int, rng: np.random.Generator) -> dict | None:
        prefix = Path(self._frames[self._frame_of[j]])
        iid = int(self._instance_id[j])
        K = self._Ks[self._frame_K[self._frame_of[j]]]
        depth, mask = self._read_depth_mask(prefix)
        inst = mask == iid
        if not inst.any():
            raise self._not_in_mask(prefix, iid)
        rows, cols = valid_depth_pixels(depth, inst)
        if len(rows) < self.min_points:
            self._mark_too_few(j, len(rows))
            return None

        cid = int(self.instance_class_ids[j])
        name = class_name(cid)
        prepared = prepare_instance(
            depth, inst, K, self._R[j], self._t[j], float(self._s[j]), self._extents_arr[j],
            name, self.augment, self.points_config, rng,
        )
        if prepared is None:
            self._mark_too_few(j, len(rows))
            return None
        points, R, t, s, e, count = prepared
        cut_dir = turned_cut_direction(cut_sides(inst), self._R[j], R)

        handle = bool(self._handle[j])
        sample = {
            "points": torch.from_numpy(points.astype(np.float32)),
            "cut_dir": torch.from_numpy(cut_dir.astype(np.float32)),
            "class_id": torch.tensor(cid, dtype=torch.int64),
            "class_name": name,
            "R": torch.from_numpy(R.astype(np.float32)),
            "t": torch.from_numpy(t.astype(np.float32)),
            "s": torch.tensor(s, dtype=torch.float32),
            "size": torch.from_numpy((s * e).astype(np.float32)),
            "nocs_extents": torch.from_numpy(e.astype(np.float32)),
            "mean_size": torch.from_numpy(MEAN_SIZES_M[name].astype(np.float32)),
            "symmetric": torch.tensor(is_symmetric(cid, handle)),
            "handle_visible": torch.tensor(handle),
            "K": torch.from_numpy(K.astype(np.float32)),
            "bbox": torch.from_numpy(self._bbox[j].copy()),
            "frame": str(prefix),
            "instance_id": torch.tensor(iid, dtype=torch.int64),
            "model_name": str(self._model[j]),
            "source_index": torch.tensor(j, dtype=torch.int64),
            "num_valid_points": torch.tensor(count, dtype=torch.int64),
        }
        if self.load_rgb:
            sample["rgb_crop"] = torch.from_numpy(self._crop(prefix, j, inst))
        return sample

    def _crop(self, prefix: Path, j: int, inst: np.ndarray) -> np.ndarray:
        color = read_color(prefix)
        if color.shape[:2] != inst.shape:
            raise NocsFormatError(
                f"{frame_path(prefix, 'color.png')} has shape {color.shape[:2]} but "
                f"{frame_path(prefix, 'mask.png')} has shape {inst.shape}"
            )
        crop = instance_crop(color, inst, self._bbox[j], self.crop_size, self.crop_scale)
        return normalize_clip(crop)
