"""``clipose-train``: train the pose network on NOCS-format folders (several: mixed by weight).

One YAML config (``config/train.yaml``) plus ``--set section.key=value`` overrides. Frames are
decoded once into a training cache (``clipose_ros/model/cache.py``); augmentations run on the
cached samples. AdamW with linear warm-up and cosine decay, fixed seeds, AMP on CUDA, several
GPUs through ``torchrun`` (DDP with a ``DistributedSampler``, no code change), resumable
checkpoints (model, optimiser, scheduler, epoch, position in the epoch, config, history).
Validation every ``val_every`` epochs runs ``clipose-eval``'s ``run_evaluation`` on a held-out
folder (whole scenes held out of the training folder unless ``data.val`` names one).

With ``clip.enabled`` the CLIP teacher (``model/clip_branch.py``) trains beside the network: its
contrastive losses (point-image, point-text, image-text, each weighted, 0 = off) are added to the
pose losses; the prompts, heads and temperatures are optimised with the network and kept in the
checkpoints; the frozen CLIP weights are not. The exported model is the pose network alone.

Outputs in ``--out``: ``train.log``, ``metrics.csv`` (one row per epoch), ``curves.png``
(losses and validation metrics), ``checkpoints/last.pt`` (every ``checkpoint_minutes`` and at
each epoch end), ``checkpoints/final.pt``, ``val/epoch_NNN/`` (clipose-eval outputs).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from clipose_ros import metrics as nocs_metrics
from clipose_ros.data.augment import AugmentConfig
from clipose_ros.data.nocs_format import NocsFormatError, list_frames, resolve_intrinsics
from clipose_ros.logs import log_to_terminal_and_file, write_metrics_csv
from clipose_ros.model.cache import CachedInstances, CacheError, ensure_cache
from clipose_ros.model.checkpoint import (
    CheckpointError,
    config_hash,
    load_checkpoint,
    save_checkpoint,
)
from clipose_ros.model.clip_branch import ClipBranch, ClipModelError, build_clip_branch
from clipose_ros.model.config import ConfigError
from clipose_ros.model.losses import pose_losses
from clipose_ros.model.mix import MixedInstances, MixSampler, parse_sources
from clipose_ros.model.network import PoseNet
from clipose_ros.model.train_config import TrainConfig
from clipose_ros.points import PointsConfig

log = logging.getLogger("clipose.train")

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "train.yaml"
VAL_KEYS = ("IoU50", "IoU75", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")
LOSS_KEYS = (
    "total", "rot_y", "rot_x", "conf", "translation", "size", "point_coords", "orthogonality",
    "point_matching",
)
CLIP_LOSS_KEYS = ("clip_point_image", "clip_point_text", "clip_image_text")


# ---------------------------------------------------------------------------------- config


def load_config(path: Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """YAML config with ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"config {path} is not a mapping")
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} is not section.key=value")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in cfg or not isinstance(cfg[section], dict) or name not in cfg[section]:
            raise ConfigError(f"override {item!r}: no key {key} in the config")
        new = yaml.safe_load(value)
        if isinstance(cfg[section][name], float) and isinstance(new, str | int):
            try:  # YAML 1.1 reads "1e-4" as a string
                new = float(new)
            except ValueError as err:
                raise ConfigError(f"override {item!r}: {name} must be a number") from err
        cfg[section][name] = new
    for section in ("data", "points", "augment", "net", "loss", "optim", "train"):
        if not isinstance(cfg.get(section), dict):
            raise ConfigError(f"config {path}: section {section!r} missing")
    if cfg.get("clip") is not None and not isinstance(cfg["clip"], dict):
        raise ConfigError(f"config {path}: section 'clip' must be a mapping")
    return cfg


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB): the training cost next to s/epoch."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------------------------- data


def holdout_split(root: Path, out: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """Hold out whole scene folders: symlink trees ``out/train`` and ``out/val`` of ``root``.

    Frames of one scene share their objects and viewpoint, so the held-out part is split by
    scene. Returns (train root, val root).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}")
    frames = list_frames(root, labelled=True)
    scenes = sorted({p.parent for p in frames})
    if len(scenes) < 2:
        raise ConfigError(f"{root} has {len(scenes)} scene folder(s): set data.val to a folder")
    rng = random.Random(seed)
    n_val = max(1, round(fraction * len(scenes)))
    val_scenes = set(rng.sample(scenes, n_val))
    link_scenes(root, [s for s in scenes if s not in val_scenes], out / "train")
    link_scenes(root, [s for s in scenes if s in val_scenes], out / "val")
    log.info("held out %d of %d scenes of %s for validation", n_val, len(scenes), root)
    return out / "train", out / "val"


def scarce_subset(root: Path, out: Path, fraction: float, seed: int) -> Path:
    """A symlink tree ``out`` of a seeded share of ``root``'s scene folders (whole scenes):
    the scarce-data setting of the ablation, from the same frames as the full one."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.train_fraction must be in (0, 1], got {fraction}")
    scenes = sorted({p.parent for p in list_frames(root, labelled=True)})
    n = max(1, round(fraction * len(scenes)))
    keep = sorted(random.Random(seed + 1).sample(scenes, n))
    link_scenes(root, keep, out)
    log.info(
        "training on %d of %d scenes of %s (train_fraction %g)", n, len(scenes), root, fraction
    )
    return out


def link_scenes(root: Path, scenes: list[Path], target: Path) -> None:
    """Replace ``target`` with a tree of symlinks to the files of ``scenes`` (under ``root``)."""
    if target.exists():
        for p in sorted(target.rglob("*"), reverse=True):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
        target.rmdir()
    for scene in scenes:
        dest = target / scene.relative_to(root)
        dest.mkdir(parents=True, exist_ok=True)
        for f in scene.iterdir():
            if f.is_file():
                (dest / f.name).symlink_to(f.resolve())


class ResumableSampler(Sampler[int]):
    """Indices of a (distributed) epoch, optionally skipping the first ``skip`` of them."""

    def __init__(self, base: Sampler[int], skip: int = 0) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip :])

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- schedule


def lr_lambda(
    total_steps: int,
    warmup: int,
    min_ratio: float,
    time_progress: Callable[[], float] | None = None,
):
    """Linear warm-up to 1, cosine decay to ``min_ratio`` at ``total_steps``.

    With ``time_progress`` (share of the wall-clock budget used, 0..1) the decay follows
    whichever is further along, steps or time, so a run that is slower than planned still
    ends its budget at the low learning rate instead of being cut off mid-schedule.
    """

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if time_progress is not None:
            progress = max(progress, min(1.0, time_progress()))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


# ---------------------------------------------------------------------------------- validation


def pose_error_summary(results: list[dict]) -> dict[str, float]:
    """Median rotation (deg, symmetry-aware) and translation (cm) error of each prediction
    against the nearest ground truth of its class: a smooth signal next to the APs."""
    rot, trans = [], []
    for r in results:
        sym = np.array(
            [
                nocs_metrics.is_symmetric(int(c), bool(h))
                for c, h in zip(r["gt_class_ids"], r["gt_handle_visibility"], strict=True)
            ],
            dtype=bool,
        )
        if len(r["pred_class_ids"]) == 0 or len(r["gt_class_ids"]) == 0:
            continue
        deg, cm = nocs_metrics.pose_error_matrix(r["pred_RTs"], r["gt_RTs"], sym)
        for i, c in enumerate(r["pred_class_ids"]):
            same = np.nonzero(np.asarray(r["gt_class_ids"]) == c)[0]
            if len(same) == 0:
                continue
            j = same[np.argmin(cm[i, same])]
            rot.append(deg[i, j])
            trans.append(cm[i, j])
    if not rot:
        return {"median_rot_deg": float("nan"), "median_trans_cm": float("nan")}
    return {"median_rot_deg": float(np.median(rot)), "median_trans_cm": float(np.median(trans))}


def validate(
    net: PoseNet,
    val_root: Path,
    points: PointsConfig,
    out: Path,
    K: np.ndarray,
    max_frames: int | None,
    device: torch.device,
) -> dict[str, float]:
    """``clipose-eval``'s ``run_evaluation`` (ground-truth masks) on the held-out folder."""
    from clipose_ros.core.estimators import CliposeEstimator
    from clipose_ros.tools.evaluate import GroundTruthMasks, run_evaluation

    was_training = net.training
    net.eval()
    estimator = CliposeEstimator.from_module(net, points, device=str(device))
    scores = run_evaluation(
        val_root, estimator, GroundTruthMasks(), out, K, max_frames, progress=False, vis_frames=0
    )
    results = [nocs_metrics.load_result(p) for p in sorted((out / "results").glob("*.pkl"))]
    net.train(was_training)
    row: dict[str, float] = {}
    for mode in nocs_metrics.IOU_MODES:
        mean = scores["modes"][mode]["classes"]["mean"]
        for k in VAL_KEYS:
            if k.startswith("IoU") or mode == "exact":
                name = f"{k}_{mode}" if k.startswith("IoU") else k
                row[f"val_{name}"] = float(mean[k]) if mean[k] is not None else float("nan")
    row.update({f"val_{k}": v for k, v in pose_error_summary(results).items()})
    return row


# ---------------------------------------------------------------------------------- outputs


def plot_curves(path: Path, history: list[dict]) -> None:
    """Losses (left) and validation metrics (right) over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    ep = [r["epoch"] for r in history]
    for k in LOSS_KEYS + CLIP_LOSS_KEYS:
        if any(f"loss_{k}" in r for r in history):
            a.plot(ep, [r.get(f"loss_{k}", np.nan) for r in history], label=k)
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_title("training losses (epoch means)")
    a.legend(fontsize=8)
    val = [r for r in history if "val_IoU50_exact" in r]
    for k in ("val_IoU50_exact", "val_IoU50_nocs", "val_10deg5cm", "val_5deg5cm", "val_5deg2cm"):
        b.plot([r["epoch"] for r in val], [r.get(k, np.nan) for r in val], "o-", label=k[4:])
    b.set_xlabel("epoch")
    b.set_ylabel("mAP (%)")
    b.set_title("validation (clipose-eval, held-out scenes)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------- training


class RawOutputs(torch.nn.Module):
    """``net.predict`` as a forward, so that DDP can wrap the training outputs."""

    def __init__(self, net: PoseNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, points: torch.Tensor, class_ids: torch.Tensor, cut_dir: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.net.predict(points, class_ids, cut_dir)


def _select_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingData:
    """What :func:`prepare_data` gives a run: samples, their sampler and the held-out frames."""

    dataset: CachedInstances | MixedInstances
    sampler: Sampler[int]
    val_root: Path | None
    description: dict[str, Any]


@dataclass
class RunClock:
    """Training seconds over resumes; the schedule reads it when it anneals to a time budget,
    so it exists before the run that owns it."""

    elapsed_before: float = 0.0
    t_start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def this_session(self) -> float:
        return time.monotonic() - self.t_start


@dataclass
class TrainingRun:
    """Everything a run carries from step to step (built by :func:`setup_run`)."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    net: PoseNet
    branch: ClipBranch | None
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data: TrainingData
    trained_params: list[torch.nn.Parameter]
    steps_per_epoch: int
    budget_s: float
    clock: RunClock
    start_epoch: int = 0
    skip_steps: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return LOSS_KEYS + (CLIP_LOSS_KEYS if self.branch is not None else ())

    def elapsed(self) -> float:
        """Training seconds so far, over resumes."""
        return self.clock.elapsed()


def check_resume(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint whose network, points or CLIP branch differ from this config's."""
    try:
        old = TrainConfig.from_dict(state["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable config: {err}") from err
    if old.net != cfg.net or old.points != cfg.points:
        raise CheckpointError(
            f"checkpoint {path} was trained with net {old.net.to_dict()} and points "
            f"{old.points.to_dict()}, this config has net {cfg.net.to_dict()} and points "
            f"{cfg.points.to_dict()}"
        )
    if old.clip_enabled != cfg.clip_enabled or (cfg.clip_enabled and old.clip != cfg.clip):
        raise CheckpointError(
            f"checkpoint {path} was trained with clip {old.clip}, this config has "
            f"clip {cfg.clip}: resume with the same CLIP branch settings"
        )


def prepare_data(
    cfg: TrainConfig, out: Path, rgb_crop_size: int | None, rank: int, world: int, progress: bool
) -> TrainingData:
    """Hold out validation scenes, take the scarce subset, build the caches, mix the folders."""
    dc, seed, main_rank = cfg.data, cfg.train.seed, rank == 0
    try:
        sources = parse_sources(dc.train)
    except ValueError as err:
        raise ConfigError(f"data.train: {err}") from err
    train_root = sources[0].path  # the held-out scenes (when no data.val) come from the first
    val_root: Path | None = None
    if dc.val:
        val_root = Path(dc.val)
    elif dc.val_fraction > 0:
        split_dir = out / "split"
        if main_rank:
            train_root, val_root = holdout_split(train_root, split_dir, dc.val_fraction, seed)
        else:
            train_root, val_root = split_dir / "train", split_dir / "val"
    if dc.train_fraction < 1.0:
        if len(sources) > 1:
            raise ConfigError("data.train_fraction < 1 takes one training folder, not a mix")
        if main_rank:
            train_root = scarce_subset(train_root, out / "subset", dc.train_fraction, seed)
        else:
            train_root = out / "subset"
    cache_dir = Path(dc.cache_dir) if dc.cache_dir else out / "cache"
    roots = [train_root] + [s.path for s in sources[1:]]
    caches = [cache_dir] if len(roots) == 1 else [cache_dir / f"mix_{i}" for i in range(len(roots))]
    if main_rank:
        for root, folder in zip(roots, caches, strict=True):
            ensure_cache(
                root, folder, cfg.points, rgb_crop_size=rgb_crop_size,
                intrinsics=dc.intrinsics, progress=progress,
            )
    if world > 1:
        dist.barrier()
    dataset, sampler = _training_data(
        caches, [s.weight for s in sources], cfg.augment, seed, dc.epoch_samples, rank, world,
        dc.handle_min_depth_points,
    )
    description = {
        "train": str(dc.train),
        "sources": [
            {"path": str(r), "weight": s.weight} for r, s in zip(roots, sources, strict=True)
        ],
        "train_instances": len(dataset),
        "val": str(val_root) if val_root else None,
        "cache_key": dataset.manifest["key"],
    }
    return TrainingData(dataset, sampler, val_root, description)


def setup_run(
    cfg: TrainConfig, out: Path, state: dict[str, Any] | None, progress: bool
) -> TrainingRun:
    """Device, seeds, network, CLIP branch, data, optimiser and schedule of a (new) run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(cfg.train.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    _seed_everything(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    # The network before the branch: both arms of the ablation start from the same weights.
    net = PoseNet(cfg.net).to(device)
    branch = build_clip_branch(cfg.clip, net.feature_dim, device)
    rgb_crop_size = cfg.data.rgb_crop_size or (
        branch.image_size if branch is not None and branch.needs_images else None
    )
    data = prepare_data(cfg, out, rgb_crop_size, rank, world, progress)
    batch = cfg.train.batch_size
    if len(data.sampler) < batch:
        raise ConfigError(
            f"{len(data.dataset)} training instances, {len(data.sampler)} samples per epoch and "
            f"process: less than one batch ({batch} x {world})"
        )
    steps_per_epoch = len(data.sampler) // batch
    oc = cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
    trained_params = list(net.parameters())
    if branch is not None:
        branch_lr = (cfg.clip or {}).get("lr")
        opt.add_param_group(
            {
                "params": branch.trainable_parameters(),
                "lr": float(branch_lr if branch_lr is not None else oc.lr),
            }
        )
        trained_params += branch.trainable_parameters()
    model: torch.nn.Module = RawOutputs(net)
    if world > 1:  # gradients are all-reduced by the wrapper's forward
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    budget_s = 60.0 * cfg.train.max_minutes
    clock = RunClock(float(state.get("elapsed_s", 0.0)) if state is not None else 0.0)
    anneal = budget_s > 0 and cfg.train.anneal_to_budget
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lr_lambda(
            cfg.train.epochs * steps_per_epoch,
            oc.warmup_steps,
            oc.min_lr_ratio,
            (lambda: clock.elapsed() / budget_s) if anneal else None,
        ),
    )
    run = TrainingRun(
        cfg=cfg, out=out, device=device, rank=rank, world=world, net=net, branch=branch,
        model=model, opt=opt, sched=sched,
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"), data=data,
        trained_params=trained_params, steps_per_epoch=steps_per_epoch, budget_s=budget_s,
        clock=clock,
    )
    return run


def restore(run: TrainingRun, state: dict[str, Any], path: Path) -> None:
    """Weights, optimiser, schedule, position and history of a checkpoint."""
    try:
        run.net.load_state_dict(state["model"])
        if run.branch is not None:
            run.branch.load_trainable_state(state["clip_branch"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, ClipModelError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
    run.start_epoch, run.skip_steps = int(state["epoch"]), int(state["step_in_epoch"])
    run.global_step = int(state["global_step"])
    run.history = list(state.get("history", []))
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    log.info(
        "resumed %s at epoch %d step %d (global step %d)",
        path, run.start_epoch, run.skip_steps, run.global_step,
    )


def save_run_checkpoint(
    run: TrainingRun, epoch: int, step_in_epoch: int, name: str = "last.pt"
) -> Path:
    """Everything :func:`restore` needs, written atomically to ``OUT/checkpoints/name``."""
    path = run.out / "checkpoints" / name
    cfg = run.cfg.to_dict()
    branch = run.branch
    save_checkpoint(
        path,
        {
            "model": run.net.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": run.global_step,
            "config": cfg,
            "history": run.history,
            "data_description": run.data.description,
            "torch_rng": torch.get_rng_state(),
            "config_hash": config_hash(cfg),
            "elapsed_s": run.elapsed(),
            **({"clip_branch": branch.trainable_state_dict()} if branch is not None else {}),
        },
    )
    return path


def train_step(run: TrainingRun, item: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch; returns the loss terms (``total`` included)."""
    device, branch = run.device, run.branch
    pts = item["points"].to(device, non_blocking=True)
    cls = item["class_id"].to(device)
    cut = item["cut_dir"].to(device)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        out_raw = run.model(pts, cls, cut)
    losses = pose_losses(
        {k: v.float() for k, v in out_raw.items()},
        item["R"].to(device),
        item["t"].to(device),
        item["size"].to(device),
        item["symmetric"].to(device),
        run.cfg.loss,
    )
    if branch is not None:
        clip = branch.batch_losses(out_raw["feature"].float(), item)
        losses["total"] = losses["total"] + clip["total"]
        for k in CLIP_LOSS_KEYS:  # a switched-off term logs 0
            losses[k] = clip.get(k[len("clip_") :], torch.zeros(()))
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(losses["total"]).backward()
    if branch is not None and run.world > 1:  # DDP wraps the network only
        _average_gradients(branch, run.world)
    run.scaler.unscale_(run.opt)
    torch.nn.utils.clip_grad_norm_(run.trained_params, run.cfg.optim.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    run.global_step += 1
    return losses


@dataclass
class EpochResult:
    """Loss sums of an epoch (or of the part that ran) and where it stopped."""

    sums: dict[str, float]
    count: int
    step_in_epoch: int
    seconds: float
    stopped_early: bool


def train_epoch(run: TrainingRun, epoch: int, progress: bool, run_steps: list[int]) -> EpochResult:
    """One epoch (from the resume position when it is the first), with periodic checkpoints;
    stops early at the wall-clock budget or ``stop_after_steps`` (``run_steps`` counts this
    process's steps over epochs)."""
    tc, batch = run.cfg.train, run.cfg.train.batch_size
    run.data.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    run.data.dataset.set_epoch(epoch)
    first = epoch == run.start_epoch
    loader = DataLoader(
        run.data.dataset,
        batch_size=batch,
        sampler=ResumableSampler(run.data.sampler, run.skip_steps * batch if first else 0),
        num_workers=tc.num_workers,
        drop_last=True,
    )
    run.model.train()
    if run.branch is not None:
        run.branch.train()
    result = EpochResult(
        dict.fromkeys(run.loss_keys, 0.0), 0, run.skip_steps if first else 0, 0.0, False
    )
    t_epoch = last_ckpt = time.monotonic()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        unit="step",
        disable=not (progress and run.main_rank),
        initial=result.step_in_epoch,
        total=run.steps_per_epoch,
    )
    for item in bar:
        losses = train_step(run, item)
        result.step_in_epoch += 1
        result.count += 1
        for k in run.loss_keys:
            result.sums[k] += float(losses[k].detach())
        if run.main_rank:
            bar.set_postfix(
                loss=f"{float(losses['total'].detach()):.3f}",
                lr=f"{run.sched.get_last_lr()[0]:.1e}",
            )
        now = time.monotonic()
        if run.main_rank and now - last_ckpt > 60.0 * tc.checkpoint_minutes:
            save_run_checkpoint(run, epoch, result.step_in_epoch)
            last_ckpt = now
        run_steps[0] += 1
        if (run.budget_s and run.elapsed() > run.budget_s) or run_steps[0] == tc.stop_after_steps:
            result.stopped_early = True
            break
    result.seconds = time.monotonic() - t_epoch
    return result


def finish_epoch(run: TrainingRun, epoch: int, result: EpochResult) -> None:
    """Epoch row (losses, speed, memory, validation when due), log, checkpoint, CSV, plot."""
    cfg, batch = run.cfg, run.cfg.train.batch_size
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": run.global_step,
        "lr": run.sched.get_last_lr()[0],
        "epoch_s": round(result.seconds, 1),
        "samples_per_s": round(result.count * batch * run.world / max(result.seconds, 1e-9), 2),
        **{f"loss_{k}": result.sums[k] / max(result.count, 1) for k in run.loss_keys},
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    last_epoch = epoch + 1 == cfg.train.epochs
    val_root = run.data.val_root
    if (
        run.main_rank
        and val_root is not None
        and ((epoch + 1) % cfg.train.val_every == 0 or last_epoch)
    ):
        row.update(
            validate(
                run.net,
                val_root,
                cfg.points,
                run.out / "val" / f"epoch_{epoch + 1:03d}",
                resolve_intrinsics(cfg.data.intrinsics),
                cfg.train.val_max_frames,
                run.device,
            )
        )
    run.history.append(row)
    if not run.main_rank:
        return
    log.info(
        "epoch %d: %s",
        epoch + 1,
        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
    )
    save_run_checkpoint(run, epoch + 1, 0)
    write_metrics_csv(run.out / "metrics.csv", run.history)
    if "val_IoU50_exact" in row or last_epoch or (epoch + 1) % 10 == 0:
        plot_curves(run.out / "curves.png", run.history)


def train(
    cfg: TrainConfig | dict[str, Any],
    out: Path,
    resume: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a training; returns the final history row. See the module docstring."""
    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(cfg)
    state = None
    if resume is not None:  # checked before any data work, so a bad file fails fast
        state = load_checkpoint(resume, map_location="cpu")
        check_resume(state, cfg, resume)
    run = setup_run(cfg, out, state, progress)
    if state is not None and resume is not None:
        restore(run, state, resume)
    epochs = cfg.train.epochs
    if run.main_rank:
        log.info(
            "training: %d instances, %d steps/epoch x %d epochs (batch %d x %d), device %s, "
            "%d threads, config %s",
            len(run.data.dataset), run.steps_per_epoch, epochs, cfg.train.batch_size,
            run.world, run.device, torch.get_num_threads(), config_hash(cfg.to_dict()),
        )
        log.info("CLIP branch: %s", _describe_branch(run.branch))
    run_steps = [0]
    stopped = False
    for epoch in range(run.start_epoch, epochs):
        result = train_epoch(run, epoch, progress, run_steps)
        if result.stopped_early:
            stopped = True
            if run.main_rank:
                save_run_checkpoint(run, epoch, result.step_in_epoch)
                log.warning(
                    "stopped at epoch %d step %d (wall-clock budget %.0f min or "
                    "stop_after_steps %d reached); resume with --resume %s",
                    epoch + 1, result.step_in_epoch, run.budget_s / 60,
                    cfg.train.stop_after_steps, out / "checkpoints" / "last.pt",
                )
            break
        finish_epoch(run, epoch, result)
    if run.main_rank and not stopped:
        save_run_checkpoint(run, epochs, 0, "final.pt")
        save_run_checkpoint(run, epochs, 0)
    if run.main_rank:
        log.info("training time %.1f min", run.clock.this_session() / 60)
    if run.world > 1:
        dist.destroy_process_group()
    return run.history[-1] if run.history else {}


def _training_data(
    caches: list[Path],
    weights: list[float],
    augment: AugmentConfig,
    seed: int,
    epoch_samples: int | None,
    rank: int,
    world: int,
    handle_min: int = 0,
) -> tuple[CachedInstances | MixedInstances, Sampler[int]]:
    """One cache: shuffled epochs over it (as always). Several: mixed by weight (model/mix.py),
    which the log states with each folder's share."""
    parts = [
        CachedInstances(c, augment=augment, seed=seed, handle_min_depth_points=handle_min)
        for c in caches
    ]
    if len(parts) == 1:
        sampler = DistributedSampler(
            parts[0], num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        return parts[0], sampler
    dataset = MixedInstances(parts)
    try:
        sampler = MixSampler(dataset.sizes, weights, seed, epoch_samples, rank, world)
    except ValueError as err:
        raise ConfigError(f"data.train mix: {err}") from err
    for cache, size, count in zip(caches, dataset.sizes, sampler.counts, strict=True):
        log.info("mix: %s (%d instances) gives %d samples per epoch", cache, size, count)
    return dataset, sampler


def _describe_branch(branch: ClipBranch | None) -> str:
    if branch is None:
        return "off (the pose network alone)"
    c = branch.config
    n = sum(p.numel() for p in branch.trainable_parameters())
    return (
        f"{c.model} pretrained={c.pretrained}, terms {', '.join(branch.active)} "
        f"(weights {c.weights()}), prompts {c.prompt_mode} x{c.num_prompts}, "
        f"{n} trainable parameters"
    )


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    """All-reduce the branch's gradients (the DDP wrapper only covers the network)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--data", nargs="+", default=None, metavar="FOLDER[:WEIGHT]",
        help="overrides data.train; several folders are mixed by weight, e.g. "
        "CAMERA/train:3 Real/train:1 (the field's REAL275 training)",
    )
    parser.add_argument("--val-data", type=Path, default=None, help="overrides data.val")
    parser.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (train.device)")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to continue")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        log_to_terminal_and_file(args.out, "train.log")
    try:
        cfg = load_config(args.config, args.set)
        if args.data:
            cfg["data"]["train"] = args.data[0] if len(args.data) == 1 else list(args.data)
        if args.val_data:
            cfg["data"]["val"] = str(args.val_data)
        if args.epochs is not None:
            cfg["train"]["epochs"] = args.epochs
        if args.device:
            cfg["train"]["device"] = args.device
        train(copy.deepcopy(cfg), args.out, args.resume, progress=not args.no_progress)
    except (ConfigError, CheckpointError, CacheError, NocsFormatError, ClipModelError) as err:
        raise SystemExit(f"clipose-train: {err}") from err


if __name__ == "__main__":
    main()
