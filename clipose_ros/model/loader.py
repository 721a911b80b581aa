"""Loading an exported pose model (TorchScript + metadata) without the network's source code.

The exported file is self-contained: ``torch.jit.load`` rebuilds the network and the metadata
travels inside the file as ``clipose_meta.json`` (``torch.jit`` extra files). This module
imports nothing from the rest of ``clipose_ros.model``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

META_NAME = "clipose_meta.json"
META_FORMAT = "clipose-pose-model"
HOW_TO_GET = (
    "the package ships models/clipose_pose_clip.pt (the default) and models/clipose_pose.pt; "
    "to make one, train with `clipose-train` and export with "
    "`clipose-export --checkpoint RUN/checkpoints/last.pt --out FILE.pt`"
)


class ModelFileError(RuntimeError):
    """A pose model file that is missing, truncated, corrupt or not a clipose pose model."""


def load_pose_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted module (eval mode, on ``device``) and its metadata dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"pose model file not found: {path}; {HOW_TO_GET}")
    files = {META_NAME: ""}
    try:
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript loading deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=files)
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad files
        raise ModelFileError(
            f"cannot load pose model {path}: not a TorchScript file, or truncated/corrupt "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {HOW_TO_GET}"
        ) from err
    raw = files[META_NAME]
    try:
        meta = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ModelFileError(
            f"{path} is a TorchScript file but not a clipose pose model (no {META_NAME} "
            f"metadata of format {META_FORMAT!r}); {HOW_TO_GET}"
        )
    for key in ("categories", "n_points", "mean_sizes", "points", "version"):
        if key not in meta:
            raise ModelFileError(f"{path}: model metadata lacks {key!r}; re-export the model")
    module.eval()
    return module, meta
