"""The CLIP branch of CLIPose (training only): a frozen open_clip model as the teacher.

What it holds:

- an open_clip model (loaded and checked by :mod:`clipose_ros.model.clip_model`: a hub tag, a
  local checkpoint such as the ``clipose-pretrain-clip`` teacher, or random weights for tests);
  all its weights frozen, always in eval mode;
- visual prompt tuning (our own implementation of the idea): ``num_prompts`` learnable tokens
  inserted after the class token of the ViT image tower, either once at the input
  (``prompt_mode="shallow"``) or replaced before every transformer block (``"deep"``); the
  prompt outputs are dropped before pooling, so ``"none"`` is exactly the model's own
  ``encode_image``;
- projection heads that map the point feature (``PoseNet.features``), the CLIP image feature
  and the CLIP text feature into one ``embed_dim`` space;
- a symmetric InfoNCE loss with a learnable temperature for each of point-image, point-text and
  image-text, each with its own weight (weight 0 switches a term off and skips the encoders it
  alone needs); texts that are equal in a batch count as positives of each other;
- a text-feature cache: the text tower is frozen and deterministic, so the CLIP text feature of
  a prompt string is computed once and reused (LRU, ``text_cache_size`` entries; the heads run
  on every call, so training sees the same features with or without the cache). The cache is
  bypassed whenever the text tower could change (a text parameter requires grad or the model is
  in train mode) and cleared when weights are loaded.

How ``clipose-train`` uses it (a few lines; the pose network exposes its global feature):

1. config: a ``clip:`` section = :class:`ClipBranchConfig` fields plus ``enabled``; the
   training cache must hold crops when ``branch.needs_images``:
   ``ensure_cache(..., rgb_crop_size=branch.image_size)`` (any size works, crops are resized
   to the model's input; the matching size saves a resize per step), so build the branch
   before the cache;
2. set-up, after the network (None when the section is off: the pose-network-alone arm)::

       branch = build_clip_branch(cfg.get("clip"), net.feature_dim, device)
       if branch is not None:
           opt.add_param_group({"params": branch.trainable_parameters()})

3. in the step, with the global feature of the same forward pass (``predict`` returning
   ``"feature"``; otherwise ``net.features(pts, cls)``, a second encoder pass)::

       if branch is not None:
           clip = branch.batch_losses(out_raw["feature"].float(), item)
           losses["total"] = losses["total"] + clip["total"]

   and clip the branch's gradients with the network's;
4. checkpoints: save ``branch.trainable_state_dict()`` (prompts, heads, temperatures; never
   the frozen CLIP weights) and restore it with :meth:`ClipBranch.load_trainable_state`. The
   exported pose model does not contain the branch: at run time only the pose network runs.

``batch_losses`` reads ``class_id``, ``R``, ``t``, ``symmetric`` (for the pose prompts, see
``prompts.py``) and ``rgb_crop`` (uint8 (B, S, S, 3) from the training cache, or the reader's
CLIP-normalised float (B, 3, S, S)) from the batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipose_ros.data.dataset import CLIP_MEAN, CLIP_STD
from clipose_ros.model.clip_model import ClipModelError, LoadedClip, load_clip

# Re-exported for test/test_train.py, which imports it from here; to go once that import reads
# ``from clipose_ros.model.clip_model import register_model_configs`` (issue 17's files).
from clipose_ros.model.clip_model import register_model_configs as register_model_configs
from clipose_ros.model.config import dataclass_from_dict
from clipose_ros.model.prompts import pose_prompts

PROMPT_MODES = ("none", "shallow", "deep")
TERMS = ("point_image", "point_text", "image_text")
TRAINER_KEYS = ("enabled", "lr")  # keys of the clip: section that clipose-train reads itself


# ---------------------------------------------------------------------------------- losses


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between L2-normalised rows of ``a`` and ``b`` (B, D).

    ``positives`` (B, B) bool marks extra matching pairs (e.g. equal captions; the diagonal is
    always positive); the target of each row/column is uniform over its positives.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"info_nce needs two (B, D) tensors of one shape, got {a.shape}, {b.shape}"
        )
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    pos = eye if positives is None else positives.to(a.device) | eye
    target = pos.float() / pos.float().sum(dim=1, keepdim=True)
    target_t = pos.t().float() / pos.t().float().sum(dim=1, keepdim=True)
    loss_ab = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_ba = -(target_t * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_ab + loss_ba)


def equal_text_mask(texts: Sequence[str]) -> Tensor:
    """(B, B) bool: ``texts[i] == texts[j]``."""
    ids: dict[str, int] = {}
    codes = torch.tensor([ids.setdefault(s, len(ids)) for s in texts])
    return codes[:, None] == codes[None, :]


# ---------------------------------------------------------------------------------- the branch


@dataclass(frozen=True)
class ClipBranchConfig:
    """Settings of the CLIP branch (the ``clip:`` section of a training config)."""

    model: str = "clipose_clip_tiny"  # open_clip architecture name
    pretrained: str | None = "models/clip_teacher_tiny.pt.xz"  # tag, local file, or None
    prompt_mode: str = "deep"  # none | shallow | deep (visual prompt tuning)
    num_prompts: int = 8
    embed_dim: int = 128  # the shared space of the projection heads
    head_hidden: int = 256
    point_image_weight: float = 0.1
    point_text_weight: float = 0.1
    image_text_weight: float = 0.1
    init_temperature: float = 0.07
    learn_temperature: bool = True
    text_cache_size: int = 65536  # prompt strings whose CLIP text feature is kept (0 = off)
    text_batch: int = 256  # prompts encoded per text-tower call

    def __post_init__(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"ClipBranchConfig: prompt_mode must be one of {PROMPT_MODES}")
        if self.prompt_mode != "none" and self.num_prompts < 1:
            raise ValueError("ClipBranchConfig: num_prompts must be >= 1 with prompt tuning on")
        if min(self.embed_dim, self.head_hidden, self.text_batch) < 1:
            raise ValueError("ClipBranchConfig: embed_dim, head_hidden, text_batch must be >= 1")
        if min(self.point_image_weight, self.point_text_weight, self.image_text_weight) < 0:
            raise ValueError("ClipBranchConfig: loss weights must be >= 0 (0 switches a term off)")
        if not 0 < self.init_temperature < 1:
            raise ValueError("ClipBranchConfig: init_temperature must be in (0, 1)")
        if self.text_cache_size < 0:
            raise ValueError("ClipBranchConfig: text_cache_size must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipBranchConfig:
        """From a config section; the trainer's own keys (``enabled``, ``lr``) are ignored."""
        d = {k: v for k, v in d.items() if k not in TRAINER_KEYS}
        return dataclass_from_dict(cls, d, "ClipBranchConfig")

    def weights(self) -> dict[str, float]:
        return {
            "point_image": self.point_image_weight,
            "point_text": self.point_text_weight,
            "image_text": self.image_text_weight,
        }


def build_clip_branch(
    section: Mapping[str, Any] | None,
    point_feature_dim: int,
    device: str | torch.device = "cpu",
) -> ClipBranch | None:
    """The branch of a training config's ``clip:`` section, or None when the section is
    missing, ``enabled`` is false, or every term has weight 0 (the pose-network-alone arm)."""
    if not section or not section.get("enabled", False):
        return None
    try:
        config = ClipBranchConfig.from_dict(section)
    except (TypeError, ValueError) as err:
        raise ClipModelError(f"config section clip: {err}") from err
    if not any(config.weights().values()):
        return None
    return ClipBranch(config, point_feature_dim).to(device)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ClipBranch(nn.Module):
    """Frozen CLIP + visual prompts + projection heads + contrastive losses (module docstring)."""

    def __init__(
        self,
        config: ClipBranchConfig,
        point_feature_dim: int,
        clip: LoadedClip | None = None,
    ) -> None:
        """``clip`` defaults to :func:`load_clip` of the config's model and pretrained."""
        super().__init__()
        self.config = config
        loaded = clip or load_clip(config.model, config.pretrained)
        self.clip = loaded.model
        self.tokenizer = loaded.tokenizer
        self.image_size = loaded.image_size
        self.register_buffer("image_mean", torch.tensor(loaded.mean).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(loaded.std).view(1, 3, 1, 1), False)
        self.clip.requires_grad_(False)
        self.clip.eval()
        weights = config.weights()
        self.active = tuple(k for k in TERMS if weights[k] > 0)
        self.needs_images = any("image" in k for k in self.active)
        self.needs_text = any("text" in k for k in self.active)
        self.needs_points = any("point" in k for k in self.active)

        visual = self.clip.visual
        clip_dim = int(getattr(visual, "output_dim", 0) or self.clip.text_projection.shape[1])
        self.prompts: nn.Parameter | None = None
        if config.prompt_mode != "none":
            from open_clip.transformer import VisionTransformer

            if not isinstance(visual, VisionTransformer):
                raise ClipModelError(
                    f"visual prompt tuning needs open_clip's ViT image tower; {config.model} has "
                    f"{type(visual).__name__}: use prompt_mode none or a ViT architecture"
                )
            width = visual.conv1.out_channels
            depth = len(visual.transformer.resblocks) if config.prompt_mode == "deep" else 1
            patch = visual.patch_size[0] * visual.patch_size[1]
            bound = math.sqrt(6.0 / (3 * patch + width))  # Xavier-uniform over a patch + token
            self.prompts = nn.Parameter(
                torch.empty(depth, config.num_prompts, width).uniform_(-bound, bound)
            )
        d = config.embed_dim
        self.point_head = _mlp(point_feature_dim, config.head_hidden, d)
        self.image_head = _mlp(clip_dim, config.head_hidden, d)
        self.text_head = _mlp(clip_dim, config.head_hidden, d)
        init = math.log(1.0 / config.init_temperature)
        self.logit_scales = nn.ParameterDict(
            {
                k: nn.Parameter(torch.tensor(init), requires_grad=config.learn_temperature)
                for k in TERMS
            }
        )
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # ------------------------------------------------------------------ parameters and state

    def train(self, mode: bool = True) -> ClipBranch:
        """Heads follow ``mode``; the frozen CLIP model stays in eval mode (no dropout)."""
        super().train(mode)
        self.clip.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Prompts, heads and temperatures: what the optimiser updates (never CLIP weights)."""
        return [
            p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("clip.")
        ]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen CLIP weights (what a training checkpoint keeps)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def load_trainable_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`trainable_state_dict` output (strict on everything but CLIP)."""
        try:
            missing, unexpected = self.load_state_dict(dict(state), strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ClipModelError(f"CLIP branch state does not fit this branch: {err}") from err
        missing = [k for k in missing if not k.startswith("clip.")]
        if missing or unexpected:
            raise ClipModelError(
                f"CLIP branch state does not fit: missing {missing[:5]}, unexpected "
                f"{list(unexpected)[:5]} (other prompt_mode, num_prompts or head sizes?)"
            )
        self._text_cache.clear()

    def logit_scale(self, term: str) -> Tensor:
        """exp of the term's learnable log-scale, capped at 100 like CLIP's."""
        return self.logit_scales[term].clamp(max=math.log(100.0)).exp()

    # ------------------------------------------------------------------ encoders

    def prepare_images(self, images: Tensor) -> Tensor:
        """uint8 (B, S, S, 3) RGB crops, or float (B, 3, S, S) normalised with the reader's
        CLIP mean/std, -> (B, 3, size, size) normalised with this model's mean/std."""
        dev = self.image_mean.device
        if images.dtype == torch.uint8:
            if images.dim() != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 crops must be (B, S, S, 3), got {tuple(images.shape)}")
            x = images.to(dev).permute(0, 3, 1, 2).float() / 255.0
        else:
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"float crops must be (B, 3, S, S), got {tuple(images.shape)}")
            mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)
            x = images.to(dev).float() * std + mean
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            ).clamp(0.0, 1.0)
        return (x - self.image_mean) / self.image_std

    def encode_image(self, images: Tensor) -> Tensor:
        """CLIP image features (B, D_clip) of prepared images, through the visual prompts."""
        visual = self.clip.visual
        if self.prompts is None:
            return self.clip.encode_image(images)
        b, n = images.size(0), self.prompts.size(1)
        x = visual._embeds(images)  # (B, 1 + patches, W): class token first, after ln_pre
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        for i, block in enumerate(blocks):
            if i < self.prompts.size(0):
                p = self.prompts[i].unsqueeze(0).expand(b, -1, -1).to(x.dtype)
                rest = x[:, 1:] if i == 0 else x[:, 1 + n :]
                x = torch.cat([x[:, :1], p, rest], dim=1)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)  # prompt outputs are not pooled
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def _text_tower_frozen(self) -> bool:
        return not self.clip.training and not any(
            p.requires_grad for n, p in self.clip.named_parameters() if not n.startswith("visual.")
        )

    @torch.no_grad()
    def _encode_text_raw(self, texts: Sequence[str]) -> Tensor:
        dev = self.image_mean.device
        out = []
        for i in range(0, len(texts), self.config.text_batch):
            chunk = list(texts[i : i + self.config.text_batch])
            tokens = self.tokenizer(chunk)
            full = (tokens[:, -1] != 0).nonzero()
            if len(full):  # open_clip's tokenizer cuts long texts silently: refuse them
                raise ValueError(
                    f"prompt fills or exceeds the text encoder's {tokens.shape[1]} tokens and "
                    f"would be truncated: {chunk[int(full[0, 0])]!r}"
                )
            out.append(self.clip.encode_text(tokens.to(dev)).float())
        return torch.cat(out)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """CLIP text features (B, D_clip) of the prompts (no gradient: the tower is frozen),
        each distinct string encoded once per call and, with the cache on, once per run."""
        texts = list(texts)
        use_cache = self.config.text_cache_size > 0 and self._text_tower_frozen()
        unique = list(dict.fromkeys(texts))
        todo = [s for s in unique if not (use_cache and s in self._text_cache)]
        self.cache_hits += len(unique) - len(todo)
        self.cache_misses += len(todo)
        fresh: dict[str, Tensor] = {}
        if todo:
            feats = self._encode_text_raw(todo)
            fresh = dict(zip(todo, feats, strict=True))
            if use_cache:
                for s, f in fresh.items():
                    self._text_cache[s] = f
                while len(self._text_cache) > self.config.text_cache_size:
                    self._text_cache.popitem(last=False)
        rows = []
        for s in texts:
            if s in fresh:
                rows.append(fresh[s])
            else:
                self._text_cache.move_to_end(s)
                rows.append(self._text_cache[s])
        return torch.stack(rows).to(self.image_mean.device)

    # ------------------------------------------------------------------ losses

    def losses(
        self,
        point_features: Tensor | None = None,
        images: Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """Weighted contrastive terms of one batch: ``{"total", "point_image", "point_text",
        "image_text"}`` (active terms only, unweighted; ``total`` is the weighted sum).

        ``point_features`` (B, F) from ``PoseNet.features``; ``images`` raw crops (see
        :meth:`prepare_images`); ``texts`` one prompt per instance. Inputs that no active term
        needs may be None.
        """
        need = {"points": self.needs_points, "images": self.needs_images, "texts": self.needs_text}
        given = {"points": point_features, "images": images, "texts": texts}
        for k, needed in need.items():
            if needed and given[k] is None:
                raise ValueError(f"CLIP branch terms {self.active} need {k}, got None")
        emb: dict[str, Tensor] = {}
        sizes = set()
        if self.needs_points:
            emb["point"] = self.point_head(point_features)
            sizes.add(len(point_features))
        if self.needs_images:
            emb["image"] = self.image_head(self.encode_image(self.prepare_images(images)))
            sizes.add(len(images))
        same_text = None
        if self.needs_text:
            emb["text"] = self.text_head(self.encode_text(texts))
            same_text = equal_text_mask(texts)
            sizes.add(len(texts))
        if len(sizes) > 1:
            raise ValueError(f"CLIP branch inputs have different batch sizes: {sorted(sizes)}")
        weights = self.config.weights()
        dev = next(iter(emb.values())).device if emb else self.image_mean.device
        out = {"total": torch.zeros((), device=dev)}
        for term in self.active:
            a, b = term.split("_")
            loss = info_nce(
                emb[a], emb[b], self.logit_scale(term), same_text if "text" in term else None
            )
            out[term] = loss
            out["total"] = out["total"] + weights[term] * loss
        return out

    def batch_losses(
        self, point_features: Tensor | None, batch: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """:meth:`losses` from a training batch (``class_id``, ``R``, ``t``, ``symmetric``,
        ``rgb_crop``); the pose prompts are built from the batch's (augmented) labels."""
        texts = None
        if self.needs_text:
            texts = pose_prompts(
                batch["class_id"].cpu().numpy(),
                batch["R"].detach().cpu().numpy(),
                batch["t"].detach().cpu().numpy(),
                batch["symmetric"].cpu().numpy() if "symmetric" in batch else None,
            )
        images = None
        if self.needs_images:
            if "rgb_crop" not in batch:
                raise ValueError(
                    "CLIP branch image terms need 'rgb_crop' in the batch: build the training "
                    f"cache with rgb_crop_size={self.image_size}"
                )
            images = batch["rgb_crop"]
        return self.losses(point_features, images, texts)
