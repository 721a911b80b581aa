"""``clipose-pretrain-clip``: a small CLIP teacher trained here, since no model hub is reachable.

An open_clip architecture from a JSON config (default ``config/clipose_clip_tiny.json``: ViT of
4 layers at 64 px, patch 8, width 192; text transformer of 4 layers, width 192) is trained from
scratch, contrastively, on instance crops of NOCS-format folders (read through the reader's
index, ``NocsInstanceDataset``) paired with captions that state category, colour and a coarse
pose (``prompts.caption``): ``a photo of a red mug, seen from above, handle pointing left``.
In training, colour and pose are each dropped from a caption with probability
``1 - keep_prob``, so that short prompts (``a photo of a mug``) are in the caption distribution
and zero-shot classification works. Captions that are equal in a batch count as positives of
each other (multi-positive InfoNCE).

Besides these captions, a share ``pose_prompt_prob`` of each batch's captions is the
instance's pose-aware prompt (``prompts.pose_prompts``, the very function the CLIP branch
calls during pose training, with the label's R, t and the NOCS symmetry rule, a mug with a
hidden handle included): the frozen text tower is later asked about these numeric prompts
only, so it must have seen them, or their features need not change with the pose. Pose
prompts are never shortened; they are unique per instance, so each is its image's only
positive.

Crops are cut once per folder (square box crop, 1.2 x the box, resized to the model's input
size; colour named from the mask's pixels) and cached as ``crops_<key>.npz`` in ``--cache-dir``;
the key hashes the label/colour/mask files (path, size, mtime) and the crop settings.

The teacher is saved as ``{"state_dict": ..., "clipose_meta": {...}}``, which open_clip loads
through its own route once the architecture JSON is registered::

    open_clip.add_model_config("config/clipose_clip_tiny.json")
    model, _, preprocess = open_clip.create_model_and_transforms(
        "clipose_clip_tiny", pretrained="models/clip_teacher_tiny.pt")

(``clipose_ros.model.clip_model.load_clip`` does the same with errors that name the file.)

A ``--save`` path ending in ``.xz`` writes the compact form that the repository can keep (a
machine here starts clean each session, and retraining the teacher takes an hour): weights in
float16, the rows of the token embedding that no caption ever reached (Adam's second moment
still zero: the tokens the teacher never learnt, at their random start) set to zero, the
whole xz-compressed. ``load_clip`` unpacks it once into the user's cache folder. For the texts
the teacher was trained on it gives the features of the full file up to float16 rounding.

Evaluation on a test folder (unseen instances): zero-shot category accuracy (mean text feature
of ``prompts.ZERO_SHOT_TEMPLATES`` per category, argmax) and image-text retrieval top-1 with the
full captions, image->text over the distinct captions and text->image over the images (a hit
when the retrieved item has the same caption), with chance levels alongside. The pose-prompt
report (:func:`pose_prompt_report`) asks whether the text tower tells poses apart: per
category, the spread of the pose prompts' text features and within-category pose retrieval
(is an image's own pose prompt closer to its image feature than the other instances' prompts).

Outputs in ``--out``: ``pretrain.log``, ``metrics.csv`` (per epoch: loss, lr, time, evaluation),
``last.pt`` (resumable: model, optimiser, step), ``eval.json``, and the teacher (``--save``,
default ``OUT/clip_teacher.pt``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import lzma
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from clipose_ros.categories import CATEGORIES, is_symmetric
from clipose_ros.data.dataset import NocsInstanceDataset, instance_crop
from clipose_ros.data.nocs_format import NocsFormatError, frame_path, read_color, read_mask
from clipose_ros.logs import log_to_terminal_and_file, write_metrics_csv
from clipose_ros.model.clip_branch import equal_text_mask, info_nce
from clipose_ros.model.clip_model import (
    TEACHER_FORMAT,
    ClipModelError,
    load_clip,
    register_model_configs,
)
from clipose_ros.model.prompts import (
    CAPTION_PREFIXES,
    COLOURS,
    DIRECTIONS,
    ELEVATIONS,
    CoarsePose,
    caption,
    coarse_pose,
    pose_prompts,
    zero_shot_prompts,
)

log = logging.getLogger("clipose.pretrain_clip")

CROPS_VERSION = 2  # 2: R and t per crop (pose prompts)
DEFAULT_MODEL = "clipose_clip_tiny"


class PretrainError(RuntimeError):
    """A pretraining input that cannot be used (names the file or setting)."""


# ---------------------------------------------------------------------------------- crops


def colour_name(pixels: np.ndarray) -> str:
    """Most frequent colour name of (n, 3) uint8 RGB pixels (HSV bins; grey scale by value when
    saturation is low). The names are ``prompts.COLOURS``."""
    if len(pixels) == 0:
        raise ValueError("colour_name needs at least one pixel")
    hsv = cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    h, s, v = (hsv[:, i].astype(np.int32) for i in range(3))
    # hue upper bounds (OpenCV hue 0..180) of red, orange, yellow, green, cyan, blue, purple,
    # pink, then red again
    edges = np.array([8, 20, 33, 80, 100, 130, 150, 170, 181])
    hue_name = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0])[np.searchsorted(edges, h, side="right")]
    grey = np.where(v < 60, 10, np.where(v > 190, 8, 9))  # black, white, grey
    names = np.where((s < 50) | (v < 40), grey, hue_name)
    return COLOURS[int(np.bincount(names, minlength=len(COLOURS)).argmax())]


@dataclass
class CropSet:
    """Instance crops of one folder and what their captions say."""

    crops: np.ndarray  # (n, S, S, 3) uint8 RGB
    class_ids: np.ndarray  # (n,) 1..6
    colours: np.ndarray  # (n,) index into COLOURS
    elevations: np.ndarray  # (n,) index into ELEVATIONS
    directions: np.ndarray  # (n,) index into DIRECTIONS, -1 = no part direction
    handle: np.ndarray  # (n,) bool
    frames: np.ndarray  # (n,) frame prefixes
    R: np.ndarray  # (n, 3, 3) float32 label rotation (float32 as in a pose-training batch)
    t: np.ndarray  # (n, 3) float32 label translation, metres

    def __len__(self) -> int:
        return len(self.class_ids)

    def pose_prompts(self, idx: np.ndarray | None = None) -> list[str]:
        """Pose-aware prompts of ``idx`` (all by default), from the function and the symmetry
        flag the CLIP branch uses in pose training, so the text is exactly what it will see."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        sym = [is_symmetric(int(self.class_ids[j]), bool(self.handle[j])) for j in idx]
        return pose_prompts(self.class_ids[idx], self.R[idx], self.t[idx], sym)

    def captions(
        self,
        idx: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        keep_prob: float = 1.0,
        pose_prompt_prob: float = 0.0,
    ) -> list[str]:
        """Captions of ``idx`` (all by default); with ``rng``, each is the instance's pose
        prompt with probability ``pose_prompt_prob`` (:meth:`pose_prompts`), otherwise colour
        and pose are each kept with probability ``keep_prob`` (caption dropout) and the opening
        is drawn from ``CAPTION_PREFIXES`` (the zero-shot templates). ``pose_prompt_prob = 0``
        draws nothing extra, so the captions are those of a run without pose prompts."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        use_pose = np.zeros(len(idx), bool)
        if rng is not None and pose_prompt_prob > 0:
            use_pose = rng.random(len(idx)) < pose_prompt_prob
        pose_texts = iter(self.pose_prompts(idx[use_pose]))
        out = []
        for j, is_pose in zip(idx, use_pose, strict=True):
            if is_pose:
                out.append(next(pose_texts))
                continue
            name = CATEGORIES[int(self.class_ids[j]) - 1]
            keep_c = rng is None or rng.random() < keep_prob
            keep_p = rng is None or rng.random() < keep_prob
            prefix = CAPTION_PREFIXES[
                0 if rng is None else int(rng.integers(len(CAPTION_PREFIXES)))
            ]
            d = int(self.directions[j])
            pose = CoarsePose(
                ELEVATIONS[int(self.elevations[j])], DIRECTIONS[d] if d >= 0 else None
            )
            out.append(
                caption(
                    name,
                    COLOURS[int(self.colours[j])] if keep_c else None,
                    pose if keep_p else None,
                    bool(self.handle[j]),
                    prefix,
                )
            )
        return out


def _crops_key(root: Path, size: int, crop_scale: float) -> str:
    """Names the crops cache: the crop format's version, the settings and every label, colour
    and mask file (path, size, mtime), so a cache of other content is never found."""
    h = hashlib.sha256(json.dumps([CROPS_VERSION, size, crop_scale]).encode())
    for p in sorted(root.rglob("*_label.pkl")):
        prefix = p.with_name(p.name[: -len("_label.pkl")])
        for suffix in ("label.pkl", "color.png", "mask.png"):
            f = frame_path(prefix, suffix)
            st = f.stat() if f.exists() else None
            h.update(f"{f.relative_to(root)}:{st and st.st_size}:{st and st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


_CROP_FIELDS = set(CropSet.__dataclass_fields__)


def extract_crops(
    root: str | Path,
    size: int,
    crop_scale: float = 1.2,
    cache_dir: str | Path | None = None,
    intrinsics: str = "camera",
    progress: bool = True,
) -> CropSet:
    """Crops of every labelled instance of ``root`` (see the module docstring), cached."""
    root = Path(root)
    if not root.is_dir():
        raise PretrainError(f"data folder not found: {root}")
    key = _crops_key(root, size, crop_scale)
    cache = Path(cache_dir) / f"crops_{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if set(z.files) == _CROP_FIELDS:
                log.info("crops of %s from cache %s", root, cache)
                return CropSet(**{k: z[k] for k in z.files})
            log.warning("crops cache %s holds other fields (%s); rebuilding it",
                        cache, ", ".join(sorted(z.files)))
    ds = NocsInstanceDataset(root, intrinsics=intrinsics, load_rgb=False)
    if len(ds) == 0:
        raise PretrainError(f"{root} has no labelled instances")
    by_frame = ds.indices_by_frame()
    n = len(ds)
    out = {
        "crops": np.zeros((n, size, size, 3), np.uint8),
        "class_ids": np.zeros(n, np.int64),
        "colours": np.zeros(n, np.int64),
        "elevations": np.zeros(n, np.int64),
        "directions": np.full(n, -1, np.int64),
        "handle": np.zeros(n, bool),
        "frames": np.empty(n, dtype=object),
        "R": np.zeros((n, 3, 3), np.float32),
        "t": np.zeros((n, 3), np.float32),
    }
    k = 0
    for prefix, js in tqdm(by_frame.items(), desc=f"crops {root.name}", disable=not progress):
        color, mask = read_color(prefix), read_mask(prefix)
        for j in js:
            lab = ds.instance_label(j)
            inst = ds.instance_mask(mask, j)
            name = CATEGORIES[lab["class_id"] - 1]
            pose = coarse_pose(name, lab["R"], lab["t"], lab["handle_visible"])
            out["crops"][k] = instance_crop(color, inst, lab["bbox"], size, crop_scale)
            out["class_ids"][k] = lab["class_id"]
            out["colours"][k] = COLOURS.index(colour_name(color[inst]))
            out["elevations"][k] = ELEVATIONS.index(pose.elevation)
            if pose.part_direction is not None:
                out["directions"][k] = DIRECTIONS.index(pose.part_direction)
            out["handle"][k] = lab["handle_visible"]
            out["frames"][k] = prefix
            out["R"][k] = lab["R"]
            out["t"][k] = lab["t"]
            k += 1
    out["frames"] = out["frames"].astype(str)
    crops = CropSet(**out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cache)
    log.info("%d instance crops of %d frames from %s", n, len(by_frame), root)
    return crops


# ---------------------------------------------------------------------------------- model


def _to_input(crops: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def _shift(crops: np.ndarray, rng: np.random.Generator, max_px: int) -> np.ndarray:
    """Random translation by up to ``max_px`` pixels per crop (edge pixels repeat)."""
    if max_px <= 0:
        return crops
    s = crops.shape[1]
    padded = np.pad(crops, ((0, 0), (max_px, max_px), (max_px, max_px), (0, 0)), mode="edge")
    out = np.empty_like(crops)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * max_px + 1, size=(len(crops), 2))):
        out[i] = padded[i, dy : dy + s, dx : dx + s]
    return out


_TIE = 1e-6  # cosine differences below this count as ties in the pose retrieval


def pose_prompt_report(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_index: np.ndarray,
    class_ids: np.ndarray,
) -> dict[str, Any]:
    """Whether the text tower's features carry the pose that the pose prompts state.

    The CLIP branch aligns point features with the text features of pose prompts; if those
    features do not change with the numbers, the prompts carry only the category. Inputs:
    L2-normalised ``image_features`` (n, d) of n instances, ``text_features`` (m, d) of the
    m distinct pose prompts, ``prompt_index`` (n,) the row of instance i's own prompt (equal
    prompts share a row) and ``class_ids`` (n,). Per category with at least two distinct
    prompts:

    - ``text_spread`` = 1 - mean pairwise cosine of its prompts' text features, and
      ``text_cos_std`` the std of those cosines (both 0 when the text ignores the numbers);
    - pose retrieval: each image ranks its category's distinct prompts by cosine; top-1 (%)
      and mean rank of its own prompt, beside chance (``100 / m_c`` and ``(m_c + 1) / 2``).
      Ties share the mean rank and split the top-1 credit, so a text tower that ignores the
      pose scores chance exactly.

    Summary keys (flat, for metrics.csv): mean spread and cosine std over categories, top-1
    and its chance over all ranked instances, and the mean normalised rank
    ``(rank - 1) / (m_c - 1)`` (0 = always first, 0.5 = chance). None (null in eval.json,
    which stays strict JSON) when no category has two distinct prompts.
    """
    img = image_features.detach().float().cpu()
    txt = text_features.detach().float().cpu()
    prompt_index = np.asarray(prompt_index, dtype=np.int64)
    class_ids = np.asarray(class_ids)
    per_class: dict[str, dict[str, Any] | None] = {}
    spreads, stds, top1, chance, norm_rank = [], [], [], [], []
    for i, name in enumerate(CATEGORIES):
        members = np.flatnonzero(class_ids == i + 1)
        rows = np.unique(prompt_index[members])
        if len(rows) < 2:
            per_class[name] = None
            continue
        feats = txt[rows]
        cos = (feats @ feats.t()).numpy()
        pairs = cos[np.triu_indices(len(rows), k=1)]
        local = np.searchsorted(rows, prompt_index[members])  # own prompt among `rows`
        sim = (img[members] @ feats.t()).numpy()  # (members, m_c)
        own = sim[np.arange(len(members)), local][:, None]
        above = (sim > own + _TIE).sum(1)
        ties = (np.abs(sim - own) <= _TIE).sum(1) - 1
        rank = 1.0 + above + 0.5 * ties
        credit = np.where(above == 0, 1.0 / (1.0 + ties), 0.0)
        m = len(rows)
        per_class[name] = {
            "instances": int(len(members)),
            "distinct_prompts": int(m),
            "text_cos_mean": float(pairs.mean()),
            "text_spread": float(1.0 - pairs.mean()),
            "text_cos_std": float(pairs.std()),
            "retrieval_top1": float(100.0 * credit.mean()),
            "chance_top1": float(100.0 / m),
            "mean_rank": float(rank.mean()),
            "chance_mean_rank": float((m + 1) / 2),
        }
        spreads.append(1.0 - pairs.mean())
        stds.append(pairs.std())
        top1.extend(credit)
        chance.extend([1.0 / m] * len(members))
        norm_rank.extend((rank - 1.0) / (m - 1))

    def mean(values: list[float], scale: float = 1.0) -> float | None:
        # None (JSON null) where no category has two distinct prompts: nothing to measure.
        return float(scale * np.mean(values)) if values else None

    return {
        "pose_text_spread": mean(spreads),
        "pose_text_cos_std": mean(stds),
        "pose_retrieval_top1": mean(top1, 100.0),
        "pose_retrieval_chance_top1": mean(chance, 100.0),
        "pose_retrieval_norm_rank": mean(norm_rank),
        "pose_prompt_per_class": per_class,
    }


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct texts in first-seen order, each input's row among them): equal texts are
    encoded once and share a row."""
    distinct = list(dict.fromkeys(texts))
    row = {c: i for i, c in enumerate(distinct)}
    return distinct, np.array([row[c] for c in texts], dtype=np.int64)


@torch.no_grad()
def evaluate_teacher(
    model: torch.nn.Module,
    tokenizer: Any,
    crops: CropSet,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch: int = 256,
) -> dict[str, Any]:
    """Zero-shot category accuracy and caption retrieval top-1 (module docstring), in percent,
    and the pose-prompt report (:func:`pose_prompt_report`)."""
    was_training = model.training
    model.eval()
    img = torch.cat(
        [
            model.encode_image(_to_input(crops.crops[i : i + batch], mean, std), normalize=True)
            for i in range(0, len(crops), batch)
        ]
    )

    def text(texts: list[str]) -> torch.Tensor:
        return torch.cat(
            [
                model.encode_text(tokenizer(texts[i : i + batch]), normalize=True)
                for i in range(0, len(texts), batch)
            ]
        )

    cls_feat = torch.stack(
        [
            torch.nn.functional.normalize(text(zero_shot_prompts(c)).mean(0), dim=0)
            for c in CATEGORIES
        ]
    )
    pred = (img @ cls_feat.t()).argmax(1).numpy() + 1
    truth = crops.class_ids
    per_class = {
        c: float(100.0 * np.mean(pred[truth == i + 1] == i + 1)) if np.any(truth == i + 1) else None
        for i, c in enumerate(CATEGORIES)
    }
    present = [v for v in per_class.values() if v is not None]
    unique, cap_id = _distinct(crops.captions())
    sim = img @ text(unique).t()  # (images, captions)
    i2t = float(100.0 * np.mean(sim.argmax(1).numpy() == cap_id))
    t2i = float(100.0 * np.mean(cap_id[sim.argmax(0).numpy()] == np.arange(len(unique))))
    counts = np.bincount(cap_id, minlength=len(unique))
    distinct_poses, pose_row = _distinct(crops.pose_prompts())
    pose_report = pose_prompt_report(img, text(distinct_poses), pose_row, crops.class_ids)
    model.train(was_training)
    return {
        "zero_shot_accuracy": float(100.0 * np.mean(pred == truth)),
        "zero_shot_mean_class_accuracy": float(np.mean(present)),
        "zero_shot_per_class": per_class,
        "retrieval_i2t_top1": i2t,
        "retrieval_t2i_top1": t2i,
        "chance_i2t": float(100.0 / len(unique)),
        "chance_t2i": float(100.0 * np.mean(counts / len(cap_id))),
        "instances": len(crops),
        "distinct_captions": len(unique),
        **pose_report,
    }


TOKEN_EMBEDDING = "token_embedding.weight"


def learnt_token_rows(opt: torch.optim.Optimizer, model: torch.nn.Module) -> torch.Tensor | None:
    """(vocabulary,) bool: the token embedding rows that ever had a gradient (Adam's second
    moment is non-zero there), or None when the optimiser has no state for them yet."""
    weight = dict(model.named_parameters()).get(TOKEN_EMBEDDING)
    state = opt.state.get(weight, {}) if weight is not None else {}
    if "exp_avg_sq" not in state:
        return None
    return state["exp_avg_sq"].abs().sum(dim=1) > 0


def save_teacher(
    path: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    learnt_rows: torch.Tensor | None = None,
) -> Path:
    """The teacher file open_clip loads with ``pretrained=path``; a path ending in ``.xz`` gets
    the compact form (module docstring), which needs ``learnt_rows``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = model.state_dict()
    if path.suffix != ".xz":
        torch.save({"state_dict": state, "clipose_meta": meta}, tmp)
        tmp.replace(path)
        return path
    if learnt_rows is None:
        raise ValueError(f"{path}: the compact teacher needs the learnt token rows")
    emb = state[TOKEN_EMBEDDING].clone()
    emb[~learnt_rows.to(emb.device)] = 0.0
    state = {**state, TOKEN_EMBEDDING: emb}
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {**meta, "compact": {"dtype": "float16", "token_rows_learnt": int(learnt_rows.sum()),
                                "token_rows": len(learnt_rows)}}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "clipose_meta": meta}, buffer)
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- training


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (the command line's options)."""

    data: str
    out: str
    test_data: str | None = None
    model: str = DEFAULT_MODEL
    model_config: list[str] = field(default_factory=list)  # extra open_clip JSON files/folders
    init: str | None = None  # start from a checkpoint instead of random weights
    save: str | None = None
    cache_dir: str | None = None
    intrinsics: str = "camera"
    crop_scale: float = 1.2
    epochs: int = 10
    max_minutes: float = 0.0
    stop_after_steps: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    keep_prob: float = 0.5
    pose_prompt_prob: float = 0.5  # share of captions that are the pose-aware prompt
    shift_px: int = 4
    grad_clip: float = 1.0
    eval_every: int = 1
    threads: int = 0
    seed: int = 0
    checkpoint_minutes: float = 5.0
    resume: str | None = None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or "logit_scale" in name or "embedding" in name or "ln" in name
        (no_decay if flat else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


class _PretrainRun:
    """One pretraining run's state: the model and its crops, optimiser and schedule, the step,
    the history and the wall clock (a resumed run carries its elapsed time on)."""

    def __init__(self, cfg: PretrainConfig, progress: bool) -> None:
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        register_model_configs(cfg.model_config)
        clip = load_clip(cfg.model, cfg.init, warn_random=False)
        self.clip = clip
        self.model, self.tokenizer = clip.model, clip.tokenizer
        self.mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(clip.std).view(1, 3, 1, 1)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "crops"
        self.train_set = extract_crops(
            cfg.data, clip.image_size, cfg.crop_scale, cache_dir, cfg.intrinsics, progress
        )
        self.test_set = (
            extract_crops(
                cfg.test_data, clip.image_size, cfg.crop_scale, cache_dir, cfg.intrinsics,
                progress,
            )
            if cfg.test_data
            else None
        )
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise PretrainError(
                f"{len(self.train_set)} crops in {cfg.data} < one batch ({cfg.batch_size})"
            )
        self.total = self.steps_per_epoch * cfg.epochs
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.t0 = time.monotonic()
        self.budget = 60.0 * cfg.max_minutes
        self.elapsed_before = 0.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_at)
        self.step, self.start_epoch, self.history = 0, 0, []
        if cfg.resume:
            self._resume()
        self.meta_base = {
            "format": TEACHER_FORMAT,
            "model_name": cfg.model,
            "model_config": _model_config(cfg.model),
            "image_size": clip.image_size,
            "mean": list(clip.mean),
            "std": list(clip.std),
            "train_data": str(cfg.data),
            "train_instances": len(self.train_set),
            "pretrain_config": asdict(cfg),
        }

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    def lr_at(self, step: int) -> float:
        """Warm-up, then cosine to ``min_lr_ratio``; a wall-clock budget tighter than the
        epochs still ends at the low learning rate."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = min(1.0, (step - cfg.warmup_steps) / max(1, self.total - cfg.warmup_steps))
        if self.budget > 0:
            p = max(p, min(1.0, self.elapsed() / self.budget))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    def _resume(self) -> None:
        state = _load_resume(Path(self.cfg.resume), self.cfg)
        self.model.load_state_dict(state["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, history = int(state["step"]), list(state["history"])
        self.start_epoch = self.step // self.steps_per_epoch
        self.elapsed_before = float(state["elapsed_s"])
        self.history = [r for r in history if r["epoch"] <= self.start_epoch]  # no partial epoch
        log.info("resumed %s at step %d", self.cfg.resume, self.step)

    def save_resumable(self) -> None:
        """``last.pt``: model, optimiser, schedule, step, history, elapsed time."""
        torch.save(
            {
                "state_dict": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "step": self.step,
                "history": self.history,
                "elapsed_s": self.elapsed(),
                "clipose_meta": {**self.meta_base, "resumable": True},
            },
            self.out / "last.pt.tmp",
        )
        (self.out / "last.pt.tmp").replace(self.out / "last.pt")

    def train_step(self, idx: np.ndarray, brng: np.random.Generator) -> tuple[float, float]:
        """One contrastive step on the crops ``idx``; returns (loss, temperature)."""
        cfg, model = self.cfg, self.model
        texts = self.train_set.captions(idx, brng, cfg.keep_prob, cfg.pose_prompt_prob)
        images = _to_input(_shift(self.train_set.crops[idx], brng, cfg.shift_px), self.mean,
                           self.std)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(self.tokenizer(texts), normalize=True)
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        loss = info_nce(img, txt, scale, equal_text_mask(texts))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach()), 1 / float(scale.detach())

    def train_epoch(self, epoch: int, clock: dict[str, float]) -> tuple[dict[str, Any], bool]:
        """The rest of ``epoch`` (a resumed run starts mid-epoch); returns the epoch's metrics
        row and whether the budget or ``stop_after_steps`` stopped it. ``clock`` holds the time
        of the last checkpoint and the steps of this process."""
        cfg, spe = self.cfg, self.steps_per_epoch
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
        order = rng.permutation(len(self.train_set))[: spe * cfg.batch_size]
        order = order.reshape(spe, cfg.batch_size)
        first = self.step - epoch * spe
        t_epoch, loss_sum, count, stopped = time.monotonic(), 0.0, 0, False
        bar = tqdm(range(first, spe), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not self.progress, initial=first, total=spe)
        for i in bar:
            brng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, i, 1]))
            loss, temperature = self.train_step(order[i], brng)
            clock["run_steps"] += 1
            loss_sum += loss
            count += 1
            bar.set_postfix(loss=f"{loss:.3f}", T=f"{temperature:.3f}")
            if time.monotonic() - clock["last_ckpt"] > 60.0 * cfg.checkpoint_minutes:
                self.save_resumable()
                clock["last_ckpt"] = time.monotonic()
            if (self.budget and self.elapsed() > self.budget) or (
                clock["run_steps"] == cfg.stop_after_steps
            ):
                stopped = True
                break
        row = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.sched.get_last_lr()[0],
            "loss": loss_sum / max(count, 1),
            "epoch_s": round(time.monotonic() - t_epoch, 1),
            "temperature": float(1 / self.model.logit_scale.detach().exp().clamp(max=100.0)),
        }
        return row, stopped

    def evaluate(self) -> dict[str, Any]:
        return evaluate_teacher(self.model, self.tokenizer, self.test_set, self.mean, self.std)


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and save the teacher; returns the final metrics row."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size < 2:
        raise PretrainError("batch_size must be >= 2 (contrastive loss)")
    if not 0.0 <= cfg.keep_prob <= 1.0:
        raise PretrainError("keep_prob must be in [0, 1]")
    if not 0.0 <= cfg.pose_prompt_prob <= 1.0:
        raise PretrainError("pose_prompt_prob must be in [0, 1]")
    run = _PretrainRun(cfg, progress)
    log.info(
        "pretraining %s: %d crops, %d steps/epoch x %d epochs (batch %d), %d threads",
        cfg.model, len(run.train_set), run.steps_per_epoch, cfg.epochs, cfg.batch_size,
        torch.get_num_threads(),
    )
    run.model.train()
    clock = {"last_ckpt": time.monotonic(), "run_steps": 0}
    row: dict[str, Any] = {}
    final_eval: tuple[int, dict[str, Any]] | None = None  # (step, evaluation at that step)
    for epoch in range(run.start_epoch, cfg.epochs):
        row, stopped = run.train_epoch(epoch, clock)
        last = stopped or epoch + 1 == cfg.epochs
        if run.test_set is not None and ((epoch + 1) % max(cfg.eval_every, 1) == 0 or last):
            ev = run.evaluate()
            final_eval = (run.step, ev)
            row.update({k: v for k, v in ev.items() if not isinstance(v, dict)})
        run.history.append(row)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        write_metrics_csv(run.out / "metrics.csv", run.history)
        run.save_resumable()
        clock["last_ckpt"] = time.monotonic()
        if stopped:
            log.warning("stopped at step %d (budget or stop_after_steps); --resume %s",
                        run.step, run.out / "last.pt")
            break
    result: dict[str, Any] = {"steps": run.step, "train_minutes": round(run.elapsed() / 60, 2)}
    if run.test_set is not None:
        if final_eval is None or final_eval[0] != run.step:
            final_eval = (run.step, run.evaluate())
        result["eval"] = final_eval[1]
        result["eval"]["test_data"] = str(cfg.test_data)
        (run.out / "eval.json").write_text(json.dumps(result["eval"], indent=1, allow_nan=False))
        log.info("evaluation on %s: %s", cfg.test_data, json.dumps(result["eval"]))
    save = Path(cfg.save) if cfg.save else run.out / "clip_teacher.pt"
    save_teacher(save, run.model, {**run.meta_base, "steps": run.step, "history": run.history,
                                   **result}, learnt_token_rows(run.opt, run.model))
    log.info("teacher saved to %s (%.1f min)", save, run.elapsed() / 60)
    return {**(row or {}), **result, "teacher": str(save)}


def _model_config(name: str) -> dict | None:
    from open_clip import get_model_config

    return get_model_config(name)


def _load_resume(path: Path, cfg: PretrainConfig) -> dict:
    if not path.is_file():
        raise PretrainError(f"resume checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise PretrainError(f"cannot read resume checkpoint {path}: {err}") from err
    meta = state.get("clipose_meta", {}) if isinstance(state, dict) else {}
    if not meta.get("resumable") or meta.get("model_name") != cfg.model:
        raise PretrainError(
            f"{path} is not a resumable clipose-pretrain-clip checkpoint of {cfg.model!r}"
        )
    return state


# ---------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="training NOCS-format folder")
    p.add_argument("--test-data", help="test folder (unseen instances) for the evaluation")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture name")
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="JSON",
        help="extra open_clip architecture JSON (file or folder); config/ is built in",
    )
    p.add_argument("--init", help="start from this checkpoint (default: random weights)")
    p.add_argument("--save", help="teacher file (default OUT/clip_teacher.pt)")
    p.add_argument(
        "--eval-only", metavar="CHECKPOINT", help="only evaluate this teacher on --test-data"
    )
    p.add_argument("--no-progress", action="store_true")
    defaults = PretrainConfig(data="", out="")
    for name in (
        "cache_dir",
        "intrinsics",
        "crop_scale",
        "epochs",
        "max_minutes",
        "stop_after_steps",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "min_lr_ratio",
        "keep_prob",
        "pose_prompt_prob",
        "shift_px",
        "grad_clip",
        "eval_every",
        "threads",
        "seed",
        "checkpoint_minutes",
        "resume",
    ):
        value = getattr(defaults, name)
        kind = type(value) if value is not None else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = p.parse_args(argv)
    log_to_terminal_and_file(args.out, "pretrain.log")
    try:
        if args.eval_only:
            if not args.test_data:
                raise PretrainError("--eval-only needs --test-data")
            register_model_configs(args.model_config)
            clip = load_clip(args.model, args.eval_only)
            crops = extract_crops(
                args.test_data,
                clip.image_size,
                args.crop_scale,
                args.cache_dir or args.out / "crops",
                args.intrinsics,
                not args.no_progress,
            )
            mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
            std = torch.tensor(clip.std).view(1, 3, 1, 1)
            ev = evaluate_teacher(clip.model, clip.tokenizer, crops, mean, std)
            ev.update(checkpoint=str(args.eval_only), test_data=str(args.test_data))
            (args.out / "eval.json").write_text(json.dumps(ev, indent=1, allow_nan=False))
            print(json.dumps(ev, indent=1))
            return
        if not args.data:
            raise PretrainError("--data is required (or --eval-only CHECKPOINT)")
        cfg = PretrainConfig(
            **{k: getattr(args, k) for k in vars(args) if k in PretrainConfig.__dataclass_fields__}
        )
        cfg.out = str(args.out)
        pretrain(cfg, progress=not args.no_progress)
    except (PretrainError, ClipModelError, NocsFormatError) as err:
        raise SystemExit(f"clipose-pretrain-clip: {err}") from err


if __name__ == "__main__":
    main()
