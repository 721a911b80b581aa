"""Training checkpoints: written atomically, refused with a named reason when unusable."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "clipose-train-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or does not fit the current set-up."""


def config_hash(config: dict) -> str:
    """Short stable hash of a (JSON-serialisable) training config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` via a temporary file and a rename, so that
    an interrupted write never leaves a truncated ``path`` behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict; :class:`CheckpointError` naming ``path`` and the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {first}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a clipose-train checkpoint (no format tag)")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('format_version')}, this code "
            f"reads version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state
