"""The real-size CLIP path: a user with web-trained weights sets ``clip.model`` and
``clip.pretrained`` (a hub tag or a local file). The other CLIP tests use tiny random models,
whose image size, widths and checkpoint files say nothing about a ViT-B/16; these tests cover
what only shows at real size or with the files users actually have."""

from __future__ import annotations

import pytest
import torch
from tiny_clip import write_tiny_clip_config

from clipose_ros.model.clip_model import (
    ClipModelError,
    is_torchscript_archive,
    load_clip,
    needs_quick_gelu,
)

TINY = "clipose_test_clip_formats"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the tests run next to other jobs on 2 cores (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random CLIP whose weights the format tests write in each file format."""
    path = write_tiny_clip_config(tmp_path_factory.mktemp("cfg"), TINY)
    torch.manual_seed(3)
    return load_clip(TINY, None, config_paths=[path], warn_random=False).model


def _same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = reference.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_checkpoint_files_in_the_formats_users_have_load(tiny, tmp_path):
    """Why: web-trained weights come as plain or wrapped state dicts (open_clip's training
    checkpoints, with DDP's ``module.``), safetensors (the hub's format for open_clip) or
    TorchScript archives (OpenAI's releases); the checkpoint check must not refuse any of them,
    and each must load the same weights."""
    from safetensors.torch import save_file

    state = tiny.state_dict()
    files = {
        "plain.pt": lambda p: torch.save(state, p),
        "legacy.pt": lambda p: torch.save(state, p, _use_new_zipfile_serialization=False),
        "wrapped.pt": lambda p: torch.save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, p
        ),
        "hub.safetensors": lambda p: save_file({k: v.contiguous() for k, v in state.items()}, p),
    }
    for name, write in files.items():
        write(tmp_path / name)
        loaded = load_clip(TINY, str(tmp_path / name)).model
        _same_weights(loaded, tiny)
        assert isinstance(loaded.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU), name
        assert not is_torchscript_archive(tmp_path / name)


def test_torchscript_archives_load_with_quickgelu(tiny, tmp_path):
    """Why: OpenAI's own CLIP files are TorchScript archives, which ``torch.load`` with
    ``weights_only`` (open_clip's default) refuses; all OpenAI models use QuickGELU."""
    import warnings

    from open_clip.transformer import QuickGELU

    path = tmp_path / "openai_style.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14
        torch.jit.script(tiny).save(str(path))
    assert is_torchscript_archive(path)
    loaded = load_clip(TINY, str(path))
    _same_weights(loaded.model, tiny)
    assert loaded.pretrained == str(path)
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_quick_gelu_follows_the_pretrained_tag(monkeypatch):
    """Why: ``ViT-B-16`` + ``openai`` (the README's command) would otherwise run OpenAI's
    weights through plain GELU: open_clip only warns. No hub here, so the call into open_clip is
    intercepted and its arguments checked."""
    import open_clip

    assert needs_quick_gelu("ViT-B-16", "openai")
    assert not needs_quick_gelu("ViT-B-16-quickgelu", "openai")  # the config has it already
    assert not needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")  # trained with GELU
    assert not needs_quick_gelu("ViT-B-16", None)
    seen: list[tuple] = []

    def offline(name: str, pretrained: str | None = None, **kw: object) -> None:
        seen.append((name, pretrained, kw.get("force_quick_gelu")))
        raise RuntimeError("no model hub here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    for tag in ("openai", "laion2b_s34b_b88k"):
        with pytest.raises(ClipModelError, match=f"pretrained='{tag}'.*no model hub"):
            load_clip("ViT-B-16", tag)
    assert seen == [("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False)]
