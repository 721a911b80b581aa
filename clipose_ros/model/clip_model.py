"""The open_clip model behind the CLIP branch: architectures, checkpoints, loading (training only).

- :func:`register_model_configs`: the project's architecture JSONs (``config/*.json``) and any
  others made known to open_clip;
- :func:`check_checkpoint`: a local checkpoint refused with a message naming the file unless it
  plausibly holds weights of the architecture (open_clip would fail deep inside
  ``load_state_dict``, or not at all for a file with the right keys of another size). It reads
  tensor shapes only (memory-mapped torch files, safetensors headers), so checking a real-size
  file (ViT-B-16: 600 MB) costs neither the time nor the memory of a second copy;
- :func:`load_clip`: an open_clip model from an architecture name plus ``pretrained`` = a hub tag
  (downloaded where a hub is reachable, e.g. ``ViT-B-16`` + ``openai``, the paper's setting), a
  local checkpoint path (e.g. the ``clipose-pretrain-clip`` teacher), or ``None`` (random
  weights: only for tests), with its tokenizer, input size and normalisation.

Local files in any of the formats users have: a ``torch.save`` state dict, optionally wrapped in
``{"state_dict": ...}`` (open_clip's training checkpoints, the small teacher) and with DDP's
``module.`` prefix; a ``.safetensors`` file (what the Hugging Face hub serves open_clip); a
TorchScript archive (OpenAI's own release files, e.g. the ``clip`` package's ``ViT-B-16.pt``);
any of these xz-compressed (``.xz``: the small teacher's compact form, unpacked once into
``$XDG_CACHE_HOME/clipose_ros``, by default ``~/.cache/clipose_ros``).

QuickGELU: OpenAI's CLIPs (and some others) were trained with QuickGELU, which open_clip's
``ViT-B-16`` config does not use; with a pretrained tag open_clip only warns about the mismatch
and runs the weights through the wrong activation. So a tag whose open_clip entry says
``quick_gelu``, and any TorchScript archive (OpenAI's models all use it), loads with QuickGELU.
A local open_clip file of such weights needs the ``-quickgelu`` architecture name (e.g.
``ViT-B-16-quickgelu``): nothing in a state dict says which activation trained it.

The branch itself (prompts, heads, losses) is :mod:`clipose_ros.model.clip_branch`.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clipose_ros.data.dataset import CLIP_MEAN, CLIP_STD

log = logging.getLogger("clipose.clip")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# source tree, else the installed package's share folder (setup.py installs config/*.json)
CONFIG_DIR = next(
    (
        p
        for p in (PROJECT_ROOT / "config", Path(sys.prefix) / "share" / "clipose_ros" / "config")
        if p.is_dir()
    ),
    PROJECT_ROOT / "config",
)
TEACHER_FORMAT = "clipose-clip-teacher"
HOW_TO_GET = (
    "train the small teacher with `clipose-pretrain-clip --data TRAIN --test-data TEST --out RUN "
    "--save models/clip_teacher_tiny.pt.xz` (models/clip_teacher_tiny.md), or use an open_clip "
    "architecture with a pretrained tag where a model hub is reachable (e.g. model ViT-B-16, "
    "pretrained openai)"
)


class ClipModelError(RuntimeError):
    """A CLIP model that cannot be loaded (names the checkpoint file or the architecture)."""


def register_model_configs(paths: Iterable[str | Path] = ()) -> list[str]:
    """Make open_clip know the project's architecture JSONs (``config/*.json`` with
    ``embed_dim``, ``vision_cfg``, ``text_cfg``) and any extra files or folders; returns the
    names now known. Registration is idempotent."""
    import open_clip
    from open_clip import factory

    known = {Path(p).resolve() for p in factory._MODEL_CONFIG_PATHS}
    for p in [CONFIG_DIR, *paths]:
        p = Path(p)
        if not p.exists():
            if p != CONFIG_DIR:
                raise ClipModelError(f"open_clip model config not found: {p}")
            continue
        if p.resolve() not in known:
            open_clip.add_model_config(p.resolve())
            known.add(p.resolve())
    return open_clip.list_models()


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip (OpenAI's CLIP release format): it holds ``constants.pkl``
    and compiled ``code/``, which a ``torch.save`` zip never does."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def _torchscript_state(path: Path) -> dict[str, Tensor]:
    """The weights of a TorchScript archive (``torch.jit.load`` runs no pickled Python)."""
    import warnings

    with warnings.catch_warnings():  # torch 2.14 calls torch.jit deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def unpacked(path: Path) -> Path:
    """The decompressed copy of an ``.xz`` checkpoint in the user's cache folder (made once,
    named by the compressed file's hash), or a ClipModelError naming a corrupt file."""
    packed = path.read_bytes()
    digest = hashlib.sha256(packed).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipose_ros"
    out = cache / f"{path.name[: -len('.xz')]}-{digest}"
    if out.is_file():
        return out
    try:
        data = lzma.decompress(packed)
    except lzma.LZMAError as err:
        raise ClipModelError(
            f"cannot unpack CLIP checkpoint {path}: truncated or corrupt xz file ({err}); "
            f"{HOW_TO_GET}"
        ) from err
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    log.info("unpacked %s into %s", path, out)
    return out


def _read_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any] | None]:
    """Tensor shapes and clipose metadata of a checkpoint file, or a ClipModelError naming it.
    Tensor data is not read: torch zip files are memory-mapped, safetensors give their header."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, None
        if is_torchscript_archive(path):
            obj: Any = _torchscript_state(path)
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        msg = str(err).splitlines()[0] if str(err) else ""
        raise ClipModelError(
            f"cannot read CLIP checkpoint {path}: not a torch checkpoint, or truncated/corrupt "
            f"({type(err).__name__}: {msg}); {HOW_TO_GET}"
        ) from err
    meta = obj.get("clipose_meta") if isinstance(obj, dict) else None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, Tensor) for v in state.values())
    ):
        raise ClipModelError(
            f"CLIP checkpoint {path} holds no state dict of tensors (found "
            f"{type(obj).__name__}); {HOW_TO_GET}"
        )
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return shapes, meta if isinstance(meta, dict) else None


def check_checkpoint(path: str | Path, model_name: str) -> dict[str, Any] | None:
    """Fail with a ClipModelError naming ``path`` unless it plausibly holds ``model_name``
    weights (open_clip would otherwise fail deep inside ``load_state_dict``, or not at all for a
    file with the right keys of another size). Returns the file's clipose metadata, if any."""
    import open_clip

    path = Path(path)
    if not path.is_file():
        raise ClipModelError(f"CLIP checkpoint not found: {path}; {HOW_TO_GET}")
    state, meta = _read_shapes(path)
    if meta is not None and meta.get("model_name") not in (None, model_name):
        raise ClipModelError(
            f"CLIP checkpoint {path} is a {meta.get('model_name')!r} teacher, not "
            f"{model_name!r}: set the model name to {meta.get('model_name')!r}"
        )
    # shapes only: built on the meta device, no memory, no initialisation cost; open_clip warns
    # on the root logger about random init
    with _quiet_root_logger(), torch.device("meta"):
        reference = open_clip.create_model(model_name, pretrained=None, device="meta")
    reference = reference.state_dict()
    shared = [k for k in reference if k in state]
    wrong = [k for k in shared if state[k] != tuple(reference[k].shape)]
    if len(shared) < 0.5 * len(reference) or wrong:
        detail = (
            f"{len(wrong)} tensors of another shape, e.g. {wrong[0]} "
            f"{state[wrong[0]]} != {tuple(reference[wrong[0]].shape)}"
            if wrong
            else f"only {len(shared)} of the {len(reference)} expected tensors"
        )
        raise ClipModelError(
            f"CLIP checkpoint {path} does not hold weights of open_clip architecture "
            f"{model_name!r} ({detail}); a foreign file or another architecture"
        )
    return meta


def _config_quick_gelu(model_name: str) -> bool:
    import open_clip

    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def needs_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """True when ``pretrained`` is an open_clip tag trained with QuickGELU and the architecture
    config ``model_name`` does not use it (``ViT-B-16`` + ``openai``); open_clip itself only
    warns and would run those weights through plain GELU."""
    import open_clip

    if not pretrained:
        return False
    tag = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    return bool(tag.get("quick_gelu", False)) and not _config_quick_gelu(model_name)


@contextmanager
def _quiet_root_logger(active: bool = True) -> Iterator[None]:
    """Root logger at ERROR inside when ``active`` (open_clip logs its warnings there)."""
    root = logging.getLogger()
    level = root.level
    if active:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass
class LoadedClip:
    """An open_clip model with what its users need next to it."""

    model: nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    pretrained: str | None


def load_clip(
    model_name: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    config_paths: Sequence[str | Path] = (),
    warn_random: bool = True,
) -> LoadedClip:
    """An open_clip model from ``model_name`` and ``pretrained`` (a hub tag, a local checkpoint
    path, or None / "none" for random weights), through ``open_clip.create_model_and_transforms``.
    A relative checkpoint path that does not exist from the working directory is looked up in
    the source tree (``models/...``). Errors name the missing or unusable file, or the unknown
    architecture."""
    import open_clip

    names = register_model_configs(config_paths)
    if model_name not in names and model_name.replace("/", "-") not in names:
        raise ClipModelError(
            f"unknown open_clip architecture {model_name!r}; add its JSON config to "
            f"{CONFIG_DIR} (or pass it in config_paths); known: {', '.join(names[:8])}, ..."
        )
    if pretrained in (None, "", "none", "None"):
        pretrained = None
        if warn_random:
            log.warning(
                "CLIP %s with random weights (pretrained=none): a teacher that knows nothing",
                model_name,
            )
    torchscript = None
    if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(
        model_name
    ):
        path = Path(pretrained)
        if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
            pretrained = str(PROJECT_ROOT / path)
        if pretrained.endswith(".xz") and Path(pretrained).is_file():
            pretrained = str(unpacked(Path(pretrained)))
        check_checkpoint(pretrained, model_name)
        if is_torchscript_archive(pretrained):
            torchscript, pretrained = Path(pretrained), None  # loaded below, not by open_clip
    quick_gelu = torchscript is not None or needs_quick_gelu(model_name, pretrained)
    if quick_gelu:
        log.info("CLIP %s with QuickGELU, the activation its weights were trained with", model_name)
    try:
        with _quiet_root_logger(torchscript is not None):  # its "random init" is overwritten
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, force_quick_gelu=quick_gelu
            )
        if torchscript is not None:
            own = model.state_dict()  # OpenAI's input_resolution, context_length, ... are not
            state = {k: v for k, v in _torchscript_state(torchscript).items() if k in own}
            model.load_state_dict(state, strict=True)
            pretrained = str(torchscript)
    except Exception as err:  # noqa: BLE001 - downloads and state-dict loading raise many types
        raise ClipModelError(
            f"cannot load open_clip {model_name!r} with pretrained="
            f"{str(torchscript or pretrained)!r} "
            f"({type(err).__name__}: {str(err)[:300]}); {HOW_TO_GET}"
        ) from err
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = getattr(model.visual, "image_size", cfg.get("size", 224))
    size = int(size[0] if isinstance(size, tuple | list) else size)
    return LoadedClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        image_size=size,
        mean=tuple(float(v) for v in cfg.get("mean", CLIP_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", CLIP_STD)),
        name=model_name,
        pretrained=pretrained,
    )
