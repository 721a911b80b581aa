"""The real-size CLIP path: a user with web-trained weights sets ``clip.model`` and
``clip.pretrained`` (a hub tag or a local file). The other CLIP tests use tiny random models,
whose image size, widths and checkpoint files say nothing about a ViT-B/16; these tests cover
what only shows at real size or with the files users actually have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from tiny_clip import write_tiny_clip_config

from clipose_ros.model.clip_branch import ClipBranch, build_clip_branch
from clipose_ros.model.clip_model import (
    ClipModelError,
    is_torchscript_archive,
    load_clip,
    needs_quick_gelu,
)
from clipose_ros.model.network import PoseNet
from clipose_ros.model.train_config import TrainConfig
from clipose_ros.tools.train import load_config

TINY = "clipose_test_clip_formats"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_vit_b16_from_a_local_checkpoint_trains_prompts_and_heads_and_keeps_clip_frozen(tmp_path):
    """Why: the paper's teacher is a ViT-B/16 at 224 px (width 768, 12 blocks, patch 16), and
    nothing else in the suite builds one. Random weights saved as a local file stand in for
    web-trained ones (no hub here); the branch is built from the training config with ``--set``
    overrides as ``clipose-train`` builds it, every term on, deep prompts. Two optimiser steps
    at batch 2 (the smallest batch InfoNCE has negatives in): the loss is finite, every prompt,
    head and temperature moves, and every frozen CLIP tensor stays bit-identical to the file.
    Costs about 2.3 GB peak RSS and 20 s on a free core here; minutes beside a training."""
    import open_clip

    ckpt = tmp_path / "vit_b16_random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), ckpt)
    try:
        overrides = ["clip.enabled=true", "clip.model=ViT-B-16", f"clip.pretrained={ckpt}"]
        overrides += ["clip.prompt_mode=deep"] + [
            f"clip.{t}_weight=0.1" for t in ("point_image", "point_text", "image_text")
        ]
        cfg = TrainConfig.from_dict(load_config(None, overrides))
        net = PoseNet(cfg.net)
        branch = build_clip_branch(cfg.clip, net.feature_dim, "cpu")
        assert isinstance(branch, ClipBranch)
        visual = branch.clip.visual
        assert branch.image_size == 224 and visual.patch_size == (16, 16)
        assert len(visual.transformer.resblocks) == 12 and visual.conv1.out_channels == 768
        assert branch.prompts.shape == (12, cfg.clip["num_prompts"], 768)
        assert branch.active == ("point_image", "point_text", "image_text")

        b = 2
        g = np.random.default_rng(0)
        points = torch.tensor(g.normal(0, 0.04, (b, cfg.points.n_points, 3)) + [0, 0, 0.7])
        batch = {
            "class_id": torch.tensor([6, 3]),  # mug, camera: asymmetric, two distinct prompts
            "R": torch.tensor(Rotation.random(b, random_state=0).as_matrix(), dtype=torch.float32),
            "t": torch.tensor([[0.05, -0.02, 0.7], [-0.1, 0.03, 0.9]]),
            "symmetric": torch.zeros(b, dtype=torch.bool),
            "rgb_crop": torch.tensor(g.integers(0, 256, (b, 224, 224, 3)), dtype=torch.uint8),
        }
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr)
        opt.add_param_group({"params": branch.trainable_parameters(), "lr": cfg.optim.lr})
        before = {k: v.clone() for k, v in branch.trainable_state_dict().items()}
        trained = {n for n, p in branch.named_parameters() if p.requires_grad}
        assert trained and not any(n.startswith("clip.") for n in trained)
        branch.train()
        for _ in range(2):
            feature = net.features(points.float(), batch["class_id"])
            out = branch.batch_losses(feature, batch)
            assert set(out) == {"total", "point_image", "point_text", "image_text"}
            assert all(bool(torch.isfinite(v)) for v in out.values()), out
            opt.zero_grad(set_to_none=True)
            out["total"].backward()
            assert all(p.grad is None for p in branch.clip.parameters())
            opt.step()
        after = branch.trainable_state_dict()
        for name in trained:
            assert not torch.equal(after[name], before[name]), f"{name} did not change"
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        frozen = branch.clip.state_dict()
        assert set(frozen) == set(saved)
        for k, v in frozen.items():
            assert torch.equal(v, saved[k]), f"frozen CLIP tensor {k} changed"
    finally:
        ckpt.unlink()  # 600 MB: not left behind in pytest's kept temporary folders


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
