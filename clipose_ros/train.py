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
from clipose_ros.model.losses import LossWeights, pose_losses
from clipose_ros.model.mix import MixedInstances, MixSampler, parse_sources
from clipose_ros.model.network import NetConfig, PoseNet
from clipose_ros.points import PointsConfig

log = logging.getLogger("clipose.train")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "train.yaml"
VAL_KEYS = ("IoU50", "IoU75", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")
LOSS_KEYS = (
    "total", "rot_y", "rot_x", "conf", "translation", "size", "point_coords", "orthogonality",
    "point_matching",
)
CLIP_LOSS_KEYS = ("clip_point_image", "clip_point_text", "clip_image_text")


class ConfigError(ValueError):
    """A training config that cannot be used (names the key)."""


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
    from clipose_ros.estimators import CliposeEstimator
    from clipose_ros.evaluate import GroundTruthMasks, run_evaluation

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

    def forward(self, points: torch.Tensor, class_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.predict(points, class_ids)


def _select_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: dict[str, Any], out: Path, resume: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) a training; returns the final history row. See the module docstring."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    tc, oc, dc = cfg["train"], cfg["optim"], cfg["data"]
    device = _select_device(str(tc["device"]), local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    if int(tc.get("threads", 0)) > 0:
        torch.set_num_threads(int(tc["threads"]))
    seed = int(tc["seed"])
    _seed_everything(seed)
    out.mkdir(parents=True, exist_ok=True)

    try:
        points = PointsConfig(**cfg["points"])
        net_cfg = NetConfig.from_dict(cfg["net"])
        weights = LossWeights.from_dict(cfg["loss"])
        augment = AugmentConfig.preset(True, **cfg["augment"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: {err}") from err

    state = None
    if resume is not None:  # checked before any data work, so a bad file fails fast
        state = load_checkpoint(resume, map_location=device)
        old = state["config"]
        if old.get("net") != cfg["net"] or old.get("points") != cfg["points"]:
            raise CheckpointError(
                f"checkpoint {resume} was trained with net {old.get('net')} and points "
                f"{old.get('points')}, this config has net {cfg['net']} and points "
                f"{cfg['points']}"
            )
        if _clip_enabled(old) != _clip_enabled(cfg) or (
            _clip_enabled(cfg) and old.get("clip") != cfg.get("clip")
        ):
            raise CheckpointError(
                f"checkpoint {resume} was trained with clip {old.get('clip')}, this config has "
                f"clip {cfg.get('clip')}: resume with the same CLIP branch settings"
            )

    # The network before the branch: both arms of the ablation start from the same weights.
    net = PoseNet(net_cfg).to(device)
    branch = build_clip_branch(cfg.get("clip"), net.feature_dim, device)
    rgb_crop_size = dc.get("rgb_crop_size") or (
        branch.image_size if branch is not None and branch.needs_images else None
    )
    try:
        sources = parse_sources(dc["train"])
    except ValueError as err:
        raise ConfigError(f"data.train: {err}") from err
    train_root = sources[0].path  # the held-out scenes (when no data.val) come from the first
    if dc.get("val"):
        val_root: Path | None = Path(dc["val"])
    elif float(dc.get("val_fraction") or 0) > 0:
        split_dir = out / "split"
        if main_rank:
            train_root, val_root = holdout_split(
                train_root, split_dir, float(dc["val_fraction"]), seed
            )
        else:
            train_root, val_root = split_dir / "train", split_dir / "val"
    else:
        val_root = None
    fraction = float(dc.get("train_fraction") or 1.0)
    if fraction < 1.0 and len(sources) > 1:
        raise ConfigError("data.train_fraction < 1 takes one training folder, not a mix")
    if fraction < 1.0:
        if main_rank:
            train_root = scarce_subset(train_root, out / "subset", fraction, seed)
        else:
            train_root = out / "subset"
    cache_dir = Path(dc["cache_dir"]) if dc.get("cache_dir") else out / "cache"
    roots = [train_root] + [s.path for s in sources[1:]]
    caches = [cache_dir] if len(roots) == 1 else [cache_dir / f"mix_{i}" for i in range(len(roots))]
    if main_rank:
        for root, folder in zip(roots, caches, strict=True):
            ensure_cache(
                root,
                folder,
                points,
                rgb_crop_size=rgb_crop_size,
                intrinsics=dc["intrinsics"],
                progress=progress,
            )
    if world > 1:
        dist.barrier()
    batch = int(tc["batch_size"])
    dataset, sampler = _training_data(
        caches,
        [s.weight for s in sources],
        augment,
        seed,
        dc.get("epoch_samples"),
        rank,
        world,
        int(dc.get("handle_min_depth_points") or 0),
    )
    if len(sampler) < batch:
        raise ConfigError(
            f"{len(dataset)} training instances, {len(sampler)} samples per epoch and process: "
            f"less than one batch ({batch} x {world})"
        )
    steps_per_epoch = len(sampler) // batch
    epochs = int(tc["epochs"])
    total_steps = epochs * steps_per_epoch

    opt = torch.optim.AdamW(
        net.parameters(), lr=float(oc["lr"]), weight_decay=float(oc["weight_decay"])
    )
    trained_params = list(net.parameters())
    if branch is not None:
        branch_lr = cfg["clip"].get("lr")
        opt.add_param_group(
            {
                "params": branch.trainable_parameters(),
                "lr": float(branch_lr if branch_lr is not None else oc["lr"]),
            }
        )
        trained_params += branch.trainable_parameters()
    budget_s = 60.0 * float(tc.get("max_minutes") or 0)
    elapsed_before = float(state.get("elapsed_s", 0.0)) if state is not None else 0.0
    t_start = time.monotonic()

    def elapsed() -> float:
        """Training seconds so far, over resumes."""
        return elapsed_before + time.monotonic() - t_start

    anneal = budget_s > 0 and bool(tc.get("anneal_to_budget"))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lr_lambda(
            total_steps,
            int(oc["warmup_steps"]),
            float(oc["min_lr_ratio"]),
            (lambda: elapsed() / budget_s) if anneal else None,
        ),
    )
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, skip_steps, global_step, history = 0, 0, 0, []
    if state is not None:
        try:
            net.load_state_dict(state["model"])
            if branch is not None:
                branch.load_trainable_state(state["clip_branch"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, ClipModelError) as err:
            raise CheckpointError(f"checkpoint {resume} does not fit this model: {err}") from err
        start_epoch, skip_steps = int(state["epoch"]), int(state["step_in_epoch"])
        global_step = int(state["global_step"])
        history = list(state.get("history", []))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())
        log.info(
            "resumed %s at epoch %d step %d (global step %d)",
            resume,
            start_epoch,
            skip_steps,
            global_step,
        )
    model: torch.nn.Module = RawOutputs(net)
    if world > 1:  # gradients are all-reduced by the wrapper's forward
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )

    data_desc = {
        "train": str(dc["train"]),
        "sources": [{"path": str(r), "weight": s.weight} for r, s in zip(roots, sources,
                                                                          strict=True)],
        "train_instances": len(dataset),
        "val": str(val_root) if val_root else None,
        "cache_key": dataset.manifest["key"],
    }
    K_default = resolve_intrinsics(dc["intrinsics"])
    ckpt_dir = out / "checkpoints"

    def checkpoint(epoch: int, step_in_epoch: int, name: str = "last.pt") -> Path:
        path = ckpt_dir / name
        save_checkpoint(
            path,
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "config": cfg,
                "history": history,
                "data_description": data_desc,
                "torch_rng": torch.get_rng_state(),
                "config_hash": config_hash(cfg),
                "elapsed_s": elapsed(),
                **({"clip_branch": branch.trainable_state_dict()} if branch is not None else {}),
            },
        )
        return path

    if main_rank:
        log.info(
            "training: %d instances, %d steps/epoch x %d epochs (batch %d x %d), device %s, "
            "%d threads, config %s",
            len(dataset),
            steps_per_epoch,
            epochs,
            batch,
            world,
            device,
            torch.get_num_threads(),
            config_hash(cfg),
        )
        log.info("CLIP branch: %s", _describe_branch(branch))
    loss_keys = LOSS_KEYS + (CLIP_LOSS_KEYS if branch is not None else ())
    last_ckpt = time.monotonic()
    ckpt_s = 60.0 * float(tc["checkpoint_minutes"])
    stop_after = int(tc.get("stop_after_steps") or 0)
    run_steps = 0
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        skip = skip_steps * batch if epoch == start_epoch else 0
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=ResumableSampler(sampler, skip),
            num_workers=int(tc["num_workers"]),
            drop_last=True,
        )
        model.train()
        if branch is not None:
            branch.train()
        sums = dict.fromkeys(loss_keys, 0.0)
        count = 0
        step_in_epoch = skip_steps if epoch == start_epoch else 0
        t_epoch = time.monotonic()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            disable=not (progress and main_rank),
            initial=step_in_epoch,
            total=steps_per_epoch,
        )
        for item in bar:
            pts = item["points"].to(device, non_blocking=True)
            cls = item["class_id"].to(device)
            with torch.autocast(device.type, enabled=use_amp):
                out_raw = model(pts, cls)
            losses = pose_losses(
                {k: v.float() for k, v in out_raw.items()},
                item["R"].to(device),
                item["t"].to(device),
                item["size"].to(device),
                item["symmetric"].to(device),
                weights,
            )
            if branch is not None:
                clip = branch.batch_losses(out_raw["feature"].float(), item)
                losses["total"] = losses["total"] + clip["total"]
                for k in CLIP_LOSS_KEYS:  # a switched-off term logs 0
                    losses[k] = clip.get(k[len("clip_") :], torch.zeros(()))
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            if branch is not None and world > 1:  # DDP wraps the network only
                _average_gradients(branch, world)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(trained_params, float(oc["grad_clip"]))
            scaler.step(opt)
            scaler.update()
            sched.step()
            global_step += 1
            step_in_epoch += 1
            for k in loss_keys:
                sums[k] += float(losses[k].detach())
            count += 1
            if main_rank:
                bar.set_postfix(
                    loss=f"{float(losses['total'].detach()):.3f}",
                    lr=f"{sched.get_last_lr()[0]:.1e}",
                )
            now = time.monotonic()
            if main_rank and now - last_ckpt > ckpt_s:
                checkpoint(epoch, step_in_epoch)
                last_ckpt = now
            run_steps += 1
            if (budget_s and elapsed() > budget_s) or run_steps == stop_after:
                stopped_early = True
                break
        if stopped_early:
            if main_rank:
                checkpoint(epoch, step_in_epoch)
                log.warning(
                    "stopped at epoch %d step %d (wall-clock budget %.0f min or "
                    "stop_after_steps %d reached); resume with --resume %s",
                    epoch + 1,
                    step_in_epoch,
                    budget_s / 60,
                    stop_after,
                    ckpt_dir / "last.pt",
                )
            break
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": sched.get_last_lr()[0],
            "epoch_s": round(time.monotonic() - t_epoch, 1),
            "samples_per_s": round(
                count * batch * world / max(time.monotonic() - t_epoch, 1e-9), 2
            ),
            **{f"loss_{k}": sums[k] / max(count, 1) for k in loss_keys},
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        last_epoch = epoch + 1 == epochs
        if (
            main_rank
            and val_root is not None
            and ((epoch + 1) % int(tc["val_every"]) == 0 or last_epoch)
        ):
            row.update(
                validate(
                    net,
                    val_root,
                    points,
                    out / "val" / f"epoch_{epoch + 1:03d}",
                    K_default,
                    tc.get("val_max_frames"),
                    device,
                )
            )
        history.append(row)
        if main_rank:
            log.info(
                "epoch %d: %s",
                epoch + 1,
                ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
            )
            checkpoint(epoch + 1, 0)
            last_ckpt = time.monotonic()
            write_metrics_csv(out / "metrics.csv", history)
            if "val_IoU50_exact" in row or last_epoch or (epoch + 1) % 10 == 0:
                plot_curves(out / "curves.png", history)
    if main_rank and not stopped_early:
        checkpoint(epochs, 0, "final.pt")
        checkpoint(epochs, 0)
    if main_rank:
        log.info("training time %.1f min", (time.monotonic() - t_start) / 60)
    if world > 1:
        dist.destroy_process_group()
    return history[-1] if history else {}


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


def _clip_enabled(cfg: dict[str, Any]) -> bool:
    return bool((cfg.get("clip") or {}).get("enabled", False))


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
