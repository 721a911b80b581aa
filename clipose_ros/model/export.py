"""``clipose-export``: training checkpoint -> self-contained TorchScript pose model.

The file maps points (B, N, 3) float32 metres + class ids (B,) int64 to R (B, 3, 3), t (B, 3),
size (B, 3) and the two axis confidences (B, 2), and carries its metadata (categories, N, mean
sizes, points preparation, model version, training data, config hash) as the extra file
``clipose_meta.json``. ``clipose_ros.model.loader`` reads it back without this package's
network code; the export checks that eager and scripted outputs agree within ``1e-4``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from clipose_ros.categories import CATEGORIES, MEAN_SIZES_M, SYMMETRIC_CATEGORIES
from clipose_ros.model.checkpoint import CheckpointError, config_hash, load_checkpoint
from clipose_ros.model.loader import META_FORMAT, META_NAME, ModelFileError, load_pose_model
from clipose_ros.model.network import MODEL_VERSION, NetConfig, PoseNet
from clipose_ros.points import PointsConfig

log = logging.getLogger("clipose.export")
PARITY_TOLERANCE = 1e-4


def script_model(net: PoseNet) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the network in eval mode (its deprecation warning silenced)."""
    net = net.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.script(net)


def build_metadata(
    net: PoseNet, points: PointsConfig, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything a user of the file needs to feed it and to know where it came from."""
    return {
        "format": META_FORMAT,
        "version": MODEL_VERSION,
        "categories": list(CATEGORIES),
        "symmetric_categories": sorted(SYMMETRIC_CATEGORIES),
        "n_points": points.n_points,
        "mean_sizes": {c: [float(v) for v in MEAN_SIZES_M[c]] for c in CATEGORIES},
        "points": points.to_dict(),
        "net": net.config.to_dict(),
        "inputs": "points (B, N, 3) float32 camera frame metres; class_ids (B,) int64 1..6",
        "outputs": "R (B, 3, 3), t (B, 3) metres, size (B, 3) metres, "
                   "axis confidences (B, 2): y, x (0 for symmetric classes)",
        "exported_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        **(extra or {}),
    }


def parity_inputs(n: int, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible object-like test batch: points around 0.7 m, every class."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(batch, n, 3, generator=g) * torch.tensor([0.05, 0.04, 0.03])
    pts = pts + torch.tensor([0.05, -0.02, 0.7])
    cls = (torch.arange(batch) % len(CATEGORIES)) + 1
    return pts, cls


def export_model(net: PoseNet, out: Path, points: PointsConfig, extra: dict | None = None) -> dict:
    """Script ``net``, write it with its metadata to ``out``, reload it and check parity."""
    meta = build_metadata(net, points, extra)
    scripted = script_model(net)
    out.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(out), _extra_files={META_NAME: json.dumps(meta, indent=1)})
    loaded, _ = load_pose_model(out)
    pts, cls = parity_inputs(points.n_points)
    args = [pts, cls]
    if net.cut_input:  # cut on the left, on the bottom, whole, ...
        sides = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        args.append(sides[torch.arange(len(cls)) % len(sides)])
    with torch.no_grad():
        ref = net.eval()(*args)
        got = loaded(*args)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    if diff > PARITY_TOLERANCE:
        raise ModelFileError(f"exported {out} differs from the eager model by {diff:.2e}")
    log.info(
        "exported %s (%.1f MB), eager/scripted max difference %.1e",
        out,
        out.stat().st_size / 1e6,
        diff,
    )
    meta["parity_max_abs_diff"] = diff
    return meta


def net_from_checkpoint(state: dict, path: Path) -> tuple[PoseNet, PointsConfig]:
    """Rebuild the network of a checkpoint (CheckpointError naming ``path`` on mismatch)."""
    cfg = state["config"]
    try:
        net = PoseNet(NetConfig.from_dict(cfg["net"]))
        net.load_state_dict(state["model"])
        points = PointsConfig.from_dict(cfg["points"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this network code: {err}") from err
    return net, points


def export_checkpoint(checkpoint: Path, out: Path) -> dict:
    """Export a ``clipose-train`` checkpoint; returns the metadata written."""
    state = load_checkpoint(checkpoint)
    net, points = net_from_checkpoint(state, checkpoint)
    cfg = state["config"]
    extra = {
        "training_data": state.get("data_description", {}),
        "config_hash": config_hash(cfg),
        "trained_epochs": int(state["epoch"]),
        "trained_steps": int(state["global_step"]),
        "checkpoint": str(checkpoint),
        # which training produced it: the pose losses and the CLIP branch (None: pose alone)
        "loss_weights": cfg.get("loss"),
        "clip_branch": cfg["clip"] if (cfg.get("clip") or {}).get("enabled") else None,
    }
    return export_model(net, out, points, extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="clipose-train checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output .pt file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = export_checkpoint(args.checkpoint, args.out)
    except (CheckpointError, ModelFileError) as err:
        raise SystemExit(f"clipose-export: {err}") from err
    print(
        f"wrote {args.out} (version {meta['version']}, config {meta['config_hash']}, "
        f"{meta['trained_epochs']} epochs)"
    )


if __name__ == "__main__":
    main()
