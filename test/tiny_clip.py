"""The tiny random open_clip architecture the CLIP tests share (32 px, 2 layers): enough for
plumbing and learning direction, never for accuracy."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_clip_config(embed_dim: int = 48, vision_width: int = 64) -> dict:
    """An open_clip model config; other widths give a "foreign" architecture of the same layout."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": vision_width, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    }


def write_tiny_clip_config(folder: Path, name: str, **sizes: int) -> Path:
    """Write the config as ``folder/name.json`` (open_clip names a model by its file)."""
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(tiny_clip_config(**sizes)))
    return path
