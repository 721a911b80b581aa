"""The training configuration as typed, strict dataclasses (``config/train.yaml``'s sections).

A key a section does not have, or a value of the wrong type, is refused with the section and
key named: a typo must not silently train with a default. Sections that belong to a module
keep their own dataclass there (``PointsConfig``, ``AugmentConfig``, ``NetConfig``,
``LossWeights``, ``ClipBranchConfig``); the data, optimiser and run sections live here.
``TrainConfig.to_dict`` gives the plain mapping that checkpoints store and hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from clipose_ros.data.augment import AugmentConfig
from clipose_ros.model.clip_branch import TRAINER_KEYS, ClipBranchConfig
from clipose_ros.model.config import ConfigError, typed_from_dict
from clipose_ros.model.losses import LossWeights
from clipose_ros.model.network import NetConfig
from clipose_ros.points import PointsConfig

SECTIONS = ("data", "points", "augment", "net", "loss", "clip", "optim", "train")


@dataclass(frozen=True)
class DataConfig:
    """``data:`` where the frames come from and how the cache is built."""

    train: str | list[str] = "data/synth_v2/train"  # folder, or FOLDER:WEIGHT entries (a mix)
    epoch_samples: int | None = None
    val: str | None = None
    val_fraction: float = 0.03
    train_fraction: float = 1.0
    intrinsics: str = "camera"
    cache_dir: str | None = None
    rgb_crop_size: int | None = None
    handle_min_depth_points: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.handle_min_depth_points < 0:
            raise ValueError("handle_min_depth_points must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """``optim:`` AdamW, linear warm-up, cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 0.002
    weight_decay: float = 0.0001
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.grad_clip <= 0 or self.warmup_steps < 0:
            raise ValueError("lr and grad_clip must be > 0, warmup_steps >= 0")


@dataclass(frozen=True)
class RunConfig:
    """``train:`` length, batch, device, validation, checkpoints and budget of a run."""

    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    num_workers: int = 0
    val_every: int = 2
    val_max_frames: int | None = 60
    checkpoint_minutes: float = 5.0
    max_minutes: float = 0.0
    anneal_to_budget: bool = True
    stop_after_steps: int = 0

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if min(self.epochs, self.batch_size, self.val_every) < 1:
            raise ValueError("epochs, batch_size and val_every must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The whole ``clipose-train`` configuration (see ``config/train.yaml``)."""

    data: DataConfig
    points: PointsConfig
    augment: AugmentConfig  # as trained: the preset with every flag the file sets
    net: NetConfig
    loss: LossWeights
    optim: OptimConfig
    train: RunConfig
    clip: dict[str, Any] | None = None  # ClipBranchConfig's keys plus ``enabled`` and ``lr``

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        unknown = sorted(set(cfg) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"config: unknown sections {unknown}")
        for name in SECTIONS[:-3] + ("optim", "train"):
            if not isinstance(cfg.get(name), Mapping):
                raise ConfigError(f"config: section {name!r} missing")
        given = dict(cfg["augment"])
        augment = typed_from_dict(AugmentConfig, given, "augment")
        clip = cfg.get("clip")
        if clip is not None:
            if not isinstance(clip, Mapping):
                raise ConfigError("config: section 'clip' must be a mapping")
            typed_from_dict(ClipBranchConfig, _without(clip, TRAINER_KEYS), "clip")
            clip = dict(clip)
        return cls(
            data=typed_from_dict(DataConfig, cfg["data"], "data"),
            points=typed_from_dict(PointsConfig, _without(cfg["points"], ("version",)), "points"),
            augment=AugmentConfig.preset(True, **_changed(augment, given)),
            net=typed_from_dict(NetConfig, cfg["net"], "net"),
            loss=typed_from_dict(LossWeights, cfg["loss"], "loss"),
            optim=typed_from_dict(OptimConfig, cfg["optim"], "optim"),
            train=typed_from_dict(RunConfig, cfg["train"], "train"),
            clip=clip,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain sections (what checkpoints store, hash and compare on resume)."""
        out = {
            "data": asdict(self.data),
            "points": self.points.to_dict(),
            "augment": asdict(self.augment),
            "net": self.net.to_dict(),
            "loss": self.loss.to_dict(),
            "optim": asdict(self.optim),
            "train": asdict(self.train),
            "clip": dict(self.clip) if self.clip is not None else None,
        }
        out["augment"]["scale_range"] = list(out["augment"]["scale_range"])
        return out

    @property
    def clip_enabled(self) -> bool:
        return bool((self.clip or {}).get("enabled", False))


def _without(d: Mapping[str, Any], keys: tuple[str, ...] | frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _changed(typed: AugmentConfig, given: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the file set, with their typed values (the preset supplies the rest)."""
    return {k: getattr(typed, k) for k in given}
