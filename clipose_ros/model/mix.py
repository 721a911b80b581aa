"""Training on several data folders mixed by weight (``clipose-train --data A:3 B:1``).

The field trains its REAL275 models on CAMERA25 and REAL275 train together, drawing CAMERA
and REAL samples 3:1: REAL has few scenes, CAMERA many, so plain concatenation would let
CAMERA drown REAL. Each folder keeps its own training cache; an epoch draws
``round(epoch_samples * w_i / sum(w))`` instances from folder ``i`` (without repetition while
the folder has enough, then cycling through fresh permutations), shuffled together, so the
ratio holds in every epoch and, in expectation, in every batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from clipose_ros.model.cache import CachedInstances


@dataclass(frozen=True)
class DataSource:
    """One training folder and its share of the samples."""

    path: Path
    weight: float = 1.0


def parse_source(spec: str | dict | DataSource) -> DataSource:
    """``PATH``, ``PATH:WEIGHT`` (a trailing ``:number``), or a mapping {path, weight}."""
    if isinstance(spec, DataSource):
        source = spec
    elif isinstance(spec, dict):
        if "path" not in spec:
            raise ValueError(f"data source {spec} has no 'path'")
        source = DataSource(Path(spec["path"]), float(spec.get("weight", 1.0)))
    else:
        head, sep, tail = str(spec).rpartition(":")
        try:
            source = DataSource(Path(head), float(tail)) if sep and head else None
        except ValueError:
            source = None
        source = source or DataSource(Path(str(spec)))
    if not np.isfinite(source.weight) or source.weight <= 0:
        raise ValueError(f"data source {spec}: the weight must be a positive number")
    return source


def parse_sources(train: str | Sequence) -> list[DataSource]:
    """``data.train`` (one entry or a list of them) as data sources."""
    items = [train] if isinstance(train, str | dict | DataSource) else list(train)
    if not items:
        raise ValueError("data.train names no folder")
    return [parse_source(item) for item in items]


class MixedInstances(Dataset):
    """The caches of several folders as one dataset (global index = offset + local index)."""

    def __init__(self, parts: list[CachedInstances]) -> None:
        self.parts = parts
        self.sizes = [len(p) for p in parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.manifest = {"key": "+".join(p.manifest["key"] for p in parts)}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def source_of(self, index: int) -> int:
        """Which folder a global index comes from."""
        return int(np.searchsorted(self.offsets, index, side="right") - 1)

    def __getitem__(self, index: int) -> dict:
        part = self.source_of(int(index))
        item = self.parts[part][int(index) - int(self.offsets[part])]
        item["index"] = torch.tensor(int(index), dtype=torch.int64)
        item["source"] = torch.tensor(part, dtype=torch.int64)
        return item


class MixSampler(Sampler[int]):
    """Global indices of one epoch, mixed by weight, this rank's share (see the module doc).

    ``epoch_samples`` (default: all instances of all folders) sets the epoch length; ranks
    take interleaved slices of the same seeded order, each of equal length.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0,
                 epoch_samples: int | None = None, rank: int = 0, world: int = 1) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per folder is needed")
        if min(sizes) < 1:
            raise ValueError(f"every folder needs at least one instance, got sizes {sizes}")
        self.sizes = [int(s) for s in sizes]
        w = np.asarray(weights, np.float64)
        self.shares = w / w.sum()
        self.total = int(epoch_samples or sum(self.sizes))
        self.counts = [int(round(self.total * s)) for s in self.shares]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.seed, self.rank, self.world, self.epoch = int(seed), int(rank), int(world), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """Every rank's indices of this epoch, in order (rank r takes ``[r::world]``)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        picks = []
        for size, count, offset in zip(self.sizes, self.counts, self.offsets, strict=False):
            reps = -(-count // size)  # fresh permutations until the count is reached
            local = np.concatenate([rng.permutation(size) for _ in range(reps)])[:count]
            picks.append(local + offset)
        order = np.concatenate(picks)
        rng.shuffle(order)
        usable = len(order) - len(order) % self.world
        return order[:usable]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return sum(self.counts) // self.world
