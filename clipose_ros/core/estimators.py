"""Pose estimators behind one interface (:class:`clipose_ros.core.stages.PoseEstimator`):
``estimate(frame, instances) -> [ObjectPose]``.

``NocsMapEstimator`` is the non-learned reference every NOCS user knows: it fits a similarity
transform between an instance's NOCS coordinates and its back-projected depth (Umeyama inside
RANSAC). Fed ground-truth NOCS maps it is the project's ceiling reference and the generator's
consistency check; fed predicted NOCS maps it is the original NOCS method's pose stage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

import numpy as np

from clipose_ros.categories import CATEGORIES, CLASS_IDS, is_symmetric
from clipose_ros.core.border_fit import fit_to_far_side
from clipose_ros.core.box_fit import BOX_FIT_CLASSES, contain_points
from clipose_ros.core.laptop_lid import Lid, LidSearch, turn_to_lid
from clipose_ros.core.mug_handle import (
    Handle,
    HandleSearch,
    handle_confidence,
    ring_points,
    turn_to_handle,
)
from clipose_ros.core.structures import Frame, Instance, ObjectPose
from clipose_ros.core.uncertainty import DEFAULT_CONF_SCALE_RAD
from clipose_ros.geometry import (
    backproject_pixels,
    ransac_umeyama,
    rotation_from_y,
    valid_depth_pixels,
)
from clipose_ros.points import (
    PointsConfig,
    cut_direction,
    cut_sides,
    object_points,
    sample_points,
)

log = logging.getLogger("clipose.estimators")


class NocsMapEstimator:
    """Similarity fit between ``frame.nocs_map`` and depth, per instance.

    Instances with fewer than ``min_points`` usable pixels, or whose fit keeps too few inliers,
    give no pose (a missed detection), with a log message saying why.

    Mugs: coordinate maps are tight-box NOCS, labels are on the body axis (SPD convention).
    With ``mug_meta`` (model name -> ``(shift, scale)``, SPD's ``mug_meta.pkl``) and the
    instance's ``model_name``, the coordinates are moved into the label frame before the fit,
    exactly as SPD re-labels, so the pose is in the label convention. Without it the fit stays
    in the tight box (a warning says so once).
    """

    needs_nocs_map = True

    def __init__(
        self,
        inlier_threshold_m: float = 0.01,
        iterations: int = 150,
        min_points: int = 30,
        seed: int = 0,
        mug_meta: Mapping[str, tuple[np.ndarray, float]] | None = None,
    ) -> None:
        self.inlier_threshold_m = inlier_threshold_m
        self.iterations = iterations
        self.min_points = min_points
        self.rng = np.random.default_rng(seed)
        self.mug_meta = dict(mug_meta or {})
        self._warned_mug = False
        self.last_timings: dict[str, float] = {}  # one fit per instance: no points/pose split

    def _label_coords(self, inst: Instance, coords: np.ndarray) -> np.ndarray:
        """Coordinate-map points in the frame the labels use (changes mugs only)."""
        if inst.class_id != CLASS_IDS["mug"]:
            return coords
        frame = self.mug_meta.get(inst.model_name)
        if frame is None:
            if not self._warned_mug:
                log.warning(
                    "mug %r has no mug_meta entry: its pose stays in the tight box of the "
                    "coordinate map, not in the label frame (pass the dataset's mug_meta.pkl)",
                    inst.model_name,
                )
                self._warned_mug = True
            return coords
        shift, scale = frame
        return scale * (coords + shift)

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]:
        if frame.nocs_map is None:
            raise ValueError("NocsMapEstimator needs frame.nocs_map (NOCS coordinates per pixel)")
        poses = []
        for inst in instances:
            rows, cols = valid_depth_pixels(frame.depth, inst.mask)
            if len(rows) < self.min_points:
                log.info("class %d: %d usable pixels, no pose", inst.class_id, len(rows))
                continue
            dst = backproject_pixels(frame.depth, frame.K, rows, cols)
            src = self._label_coords(inst, frame.nocs_map[rows, cols].astype(np.float64))
            s, R, t, inliers = ransac_umeyama(
                src, dst, self.rng, self.inlier_threshold_m, self.iterations
            )
            if inliers.sum() < self.min_points // 2:
                log.info("class %d: %d inliers, no pose", inst.class_id, int(inliers.sum()))
                continue
            # Box extents in NOCS units from the inlier coordinates, as the NOCS code does
            # (about the label-frame origin, so a mug's box is symmetric about its body axis).
            extents = 2.0 * np.abs(src[inliers]).max(axis=0)
            poses.append(
                ObjectPose(
                    class_id=inst.class_id,
                    score=inst.score,
                    R=R,
                    t=t,
                    size=s * extents,
                    bbox=np.asarray(inst.bbox),
                    nocs_scale=s,
                )
            )
        return poses


class CliposeEstimator:
    """The exported pose network (``clipose-export`` TorchScript file), batched over a frame's
    instances. Points come from ``clipose_ros.points.prepare_points`` with the preparation
    stored in the model file, so run time sees what training saw; each instance samples with a
    generator seeded by ``seed`` (results do not depend on the order of instances).

    ``last_timings`` holds ``points_ms`` and ``pose_ms`` of the last call. Instances with too
    few points give no pose (logged). Bad files raise ``ModelFileError`` (from the loader).
    ``min_points`` is the model file's until set (a pipeline sets its own, the node parameter).

    ``mug_handle``: turn each mug's predicted pose about its up axis to the handle found in
    its depth points (``core/mug_handle.py``); the network alone places handles poorly.
    ``handle_search`` holds the search's thresholds (``HandleSearch``; its ``ring`` also looks
    at the depth pixels round the mask, other instances' pixels left out).
    ``handles`` of the last call holds, per returned pose, the handle found (``Handle``, with
    its evidence) or None; ``handle_seen`` says whether one was.

    ``laptop_lid``: turn each laptop's predicted pose about its up axis to the lid plane found
    in its depth points (``core/laptop_lid.py``); the network alone often turns laptops the
    image border cuts. ``lid_search`` holds the thresholds (``LidSearch``); ``lids`` of the
    last call holds, per returned pose, the lid found or None.

    ``box_fit``: slide each box the least distance that puts the object's depth points inside
    it (``core/box_fit.py``; bowls, cameras, laptops and mugs); a segmenter's mask that spills
    onto the background pulls the network's centre off the object.

    ``border_fit``: for an object whose mask the image border cuts, move the box towards the
    cut until the points on the far side reach it (``core/border_fit.py``); the network does
    not know the object is cut and centres it on the part it sees. ``border_moved`` of the
    last call holds, per returned pose, how far the box moved (metres; 0 where it did not).

    ``subsets``: the encoder reads the first ``n_graph`` of the points (a random subset); with
    ``subsets`` > 1 the network also runs on the next disjoint subsets (one batch) and the poses
    are averaged (:func:`average_poses`), for less sampling noise at that multiple of the cost.
    """

    needs_nocs_map = False

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        seed: int = 0,
        mug_handle: bool = True,
        subsets: int = 2,
        border_fit: bool = True,
        laptop_lid: bool = True,
        box_fit: bool = True,
    ) -> None:
        import torch

        from clipose_ros.model.loader import load_pose_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        module, meta = load_pose_model(model_path, device)
        self._setup(module, meta, device, seed)
        self.model_path = str(model_path)
        self.mug_handle = bool(mug_handle)
        self.border_fit = bool(border_fit)
        self.laptop_lid = bool(laptop_lid)
        self.box_fit = bool(box_fit)
        self.subsets = subsets

    @classmethod
    def from_module(
        cls, module, points_config, device: str = "cpu", seed: int = 0
    ) -> CliposeEstimator:
        """An estimator around an in-memory module (``clipose-train`` validation)."""
        self = cls.__new__(cls)
        net = getattr(module, "config", None)  # a PoseNet's NetConfig
        meta = {"points": points_config.to_dict(), **({"net": net.to_dict()} if net else {})}
        self._setup(module, meta, device, seed)
        self.model_path = ""
        self.mug_handle = False  # validation scores the network itself
        self.border_fit = False
        self.laptop_lid = False
        self.box_fit = False
        self.subsets = 1
        return self

    def _setup(self, module, meta: dict, device: str, seed: int) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.seed = int(seed)
        self.points_config = PointsConfig.from_dict(meta["points"])
        # The encoder reads the first n_graph points: one point subset (meta of older files
        # and of from_module lack it: then the whole sample is one subset).
        self._subset_step = int(meta.get("net", {}).get("n_graph", self.points_config.n_points))
        # a network that reads where the image border cuts the mask (NetConfig.cut_input)
        self.cut_input = bool(meta.get("net", {}).get("cut_input", False))
        # the confidence target's angle scale in training (core/uncertainty.py reads it)
        self.conf_scale_rad = float((meta.get("loss_weights") or {}).get(
            "conf_scale_rad", DEFAULT_CONF_SCALE_RAD))
        self.last_timings: dict[str, float] = {"points_ms": 0.0, "pose_ms": 0.0}
        self.handles: list[Handle | None] = []
        self.handle_search = HandleSearch()
        self.lids: list[Lid | None] = []
        self.lid_search = LidSearch()

    @property
    def handle_seen(self) -> list[bool]:
        """Per pose of the last call, whether a mug handle was found and the pose turned to it."""
        return [h is not None for h in self.handles]

    @property
    def subsets(self) -> int:
        """Disjoint point subsets the network runs on per instance (poses averaged)."""
        return self._subsets

    @subsets.setter
    def subsets(self, value: int) -> None:
        most = max(1, self.points_config.n_points // self._subset_step)
        if not 1 <= int(value) <= most:
            raise ValueError(f"subsets must be 1..{most} ({self.points_config.n_points} points, "
                             f"{self._subset_step} per subset), got {value}")
        self._subsets = int(value)

    @property
    def min_points(self) -> int:
        """Fewest mask pixels with valid depth (and points after outlier rejection) for a pose."""
        return self.points_config.min_points

    @min_points.setter
    def min_points(self, value: int) -> None:
        self.points_config = dataclasses.replace(self.points_config, min_points=int(value))

    def prepare(
        self, frame: Frame, instances: list[Instance], rngs: list | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Points (M, N, 3) float32 of the usable instances and their indices in ``instances``."""
        points, kept, _ = self._prepare(frame, instances, rngs)
        return points, kept

    def _prepare(
        self, frame: Frame, instances: list[Instance], rngs: list | None = None
    ) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
        """:meth:`prepare`, plus every usable point of each kept instance (before sampling)."""
        batch, kept, clouds = [], [], []
        for i, inst in enumerate(instances):
            rng = rngs[i] if rngs is not None else np.random.default_rng(self.seed)
            cloud = object_points(frame.depth, inst.mask, frame.K, self.points_config)
            if cloud.points is None:
                log.info("class %d: %s, no pose", inst.class_id, cloud.reason)
                continue
            batch.append(sample_points(cloud, self.points_config, rng).points)
            kept.append(i)
            clouds.append(cloud.points)
        n = self.points_config.n_points
        return np.asarray(batch, dtype=np.float32).reshape(-1, n, 3), kept, clouds

    def estimate(self, frame: Frame, instances: list[Instance]) -> list[ObjectPose]:
        import torch

        start = time.perf_counter()
        points, kept, clouds = self._prepare(frame, instances)
        mid = time.perf_counter()
        poses: list[ObjectPose] = []
        self.handles = []
        self.lids = []
        self.border_moved = []
        if kept:
            class_ids = [instances[i].class_id for i in kept]
            k = self.subsets
            # Subset j is the points rolled by j * n_graph: the encoder reads the first n_graph.
            batch = np.concatenate([np.roll(points, -j * self._subset_step, axis=1)
                                    for j in range(k)])
            cls = torch.tensor(class_ids * k, dtype=torch.int64)
            # the cut sides (a pass over each mask) only when the network or the fit reads them
            needs_cuts = self.cut_input or self.border_fit
            cuts = [cut_sides(instances[i].mask) for i in kept] if needs_cuts else []
            inputs = [torch.from_numpy(batch).to(self.device), cls.to(self.device)]
            if self.cut_input:
                dirs = np.array([cut_direction(c) for c in cuts] * k, dtype=np.float32)
                inputs.append(torch.from_numpy(dirs).to(self.device))
            with torch.no_grad():
                R, t, size, conf = self.module(*inputs)
            R, t, size = (x.cpu().double().numpy() for x in (R, t, size))
            # (n, 2) axis confidences; files of clipose-pose-1 give one per object (n,)
            conf = conf.cpu().double().numpy().reshape((k, len(kept)) + conf.shape[1:]).mean(0)
            if k > 1:
                n = len(kept)
                R, t, size = average_poses(R.reshape(k, n, 3, 3), t.reshape(k, n, 3),
                                           size.reshape(k, n, 3), class_ids)
            taken = None
            for j, i in enumerate(kept):
                inst = instances[i]
                rot, handle = R[j], None
                if self.mug_handle and inst.class_id == CLASS_IDS["mug"]:
                    ring = None
                    if self.handle_search.ring:
                        if taken is None:  # every instance's pixels, once per frame
                            taken = np.logical_or.reduce([o.mask.astype(bool)
                                                          for o in instances])
                        ring = ring_points(frame.depth, inst.mask, frame.K, t[j], size[j],
                                           self.handle_search, taken)
                    rot, handle = turn_to_handle(clouds[j], R[j], t[j], size[j],
                                                 self.handle_search, ring)
                self.handles.append(handle)
                lid = None
                if self.laptop_lid and inst.class_id == CLASS_IDS["laptop"]:
                    rot, lid = turn_to_lid(clouds[j], R[j], t[j], size[j], self.lid_search)
                self.lids.append(lid)
                centre = t[j]
                if self.box_fit and CATEGORIES[inst.class_id - 1] in BOX_FIT_CLASSES:
                    centre = contain_points(clouds[j], rot, centre, size[j])
                moved = 0.0
                if self.border_fit:
                    fitted = fit_to_far_side(clouds[j], rot, centre, size[j], cuts[j])
                    moved = float(np.linalg.norm(fitted - centre))
                    centre = fitted
                self.border_moved.append(moved)
                poses.append(
                    ObjectPose(
                        class_id=inst.class_id,
                        score=inst.score,
                        R=rot,
                        t=centre,
                        size=size[j],
                        bbox=np.asarray(inst.bbox),
                        axis_confidence=axis_confidences(
                            conf[j], inst.class_id, self.mug_handle, handle, self.conf_scale_rad
                        ),
                    )
                )
        end = time.perf_counter()
        self.last_timings = {"points_ms": 1e3 * (mid - start), "pose_ms": 1e3 * (end - mid)}
        return poses


def axis_confidences(
    conf: np.ndarray,
    class_id: int,
    handle_search: bool = False,
    handle: Handle | None = None,
    conf_scale_rad: float = DEFAULT_CONF_SCALE_RAD,
) -> np.ndarray:
    """(y, x) confidences of one object as :class:`ObjectPose` keeps them. ``conf`` is the
    network's (y, x), or the one value of a ``clipose-pose-1`` file: the y confidence for the
    symmetric classes, else a product with an x confidence that had died in training
    (``model/losses.py``), which gives no confidence at all.

    x is NaN for the symmetric classes and for a mug whose handle the depth search
    (``handle_search``) did not find: its turn about y is then unknown (the NOCS metric scores
    it as symmetric). A mug turned to a ``handle`` found gets the search's confidence in that
    turn (:func:`handle_confidence`): the network's x confidence speaks for a turn not kept."""
    conf = np.atleast_1d(np.asarray(conf, dtype=np.float64))
    if conf.size == 1:
        conf = np.array([conf[0] if is_symmetric(class_id) else np.nan, np.nan])
    if is_symmetric(class_id):
        return np.array([conf[0], np.nan])
    if class_id == CLASS_IDS["mug"] and handle_search:
        turn = np.nan if handle is None else handle_confidence(handle, conf_scale_rad)
        return np.array([conf[0], turn])
    return conf[:2].copy()


def average_poses(
    R: np.ndarray, t: np.ndarray, size: np.ndarray, class_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of K pose estimates per instance: R (K, B, 3, 3), t and size (K, B, 3).

    Rotations: the proper rotation nearest to the sum (SVD); for the classes symmetric about y
    only the mean y axis counts (x of the first estimate, made orthogonal to it).
    """
    out = np.empty(R.shape[1:])
    for b, class_id in enumerate(class_ids):
        if is_symmetric(class_id):
            out[b] = rotation_from_y(R[:, b, :, 1].sum(axis=0), R[0, b, :, 0])
        else:
            u, _, vt = np.linalg.svd(R[:, b].sum(axis=0))
            fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
            out[b] = u @ fix @ vt
    return out, t.mean(axis=0), size.mean(axis=0)
