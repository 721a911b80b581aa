"""The CLIP branch on a tiny random open_clip model (32 px, 2 layers, width 64): what is
trained, what stays frozen, that each contrastive term learns, and that the text cache and the
prompt-tuned image path do not change what the loss sees."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from tiny_clip import write_tiny_clip_config

from clipose_ros.model.clip_branch import (
    TERMS,
    ClipBranch,
    ClipBranchConfig,
    build_clip_branch,
    equal_text_mask,
    info_nce,
)
from clipose_ros.model.clip_model import ClipModelError, load_clip
from clipose_ros.model.prompts import pose_prompts

TINY = "clipose_test_clip32"
B, FEAT = 8, 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_clip_config(tmp_path_factory.mktemp("clipcfg"), TINY)
    torch.manual_seed(0)
    return load_clip(TINY, None, config_paths=[path], warn_random=False)


def make_branch(tiny, **kw) -> ClipBranch:
    torch.manual_seed(1)
    cfg = ClipBranchConfig(model=TINY, pretrained=None, embed_dim=32, head_hidden=64, **kw)
    return ClipBranch(cfg, FEAT, clip=tiny)


def toy_batch(seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    R = Rotation.random(B, random_state=seed).as_matrix()
    # distinct flat colours with a little noise: images a random frozen ViT tells apart
    colours = g.permutation(np.array(np.meshgrid([30, 220], [30, 220], [30, 220])).reshape(3, -1).T)
    crops = np.clip(colours[:, None, None, :] + g.normal(0, 10, (B, 32, 32, 3)), 0, 255)
    return {
        "class_id": torch.tensor([3, 5, 6, 3, 5, 6, 3, 6]),  # asymmetric: all prompts differ
        "R": torch.tensor(R, dtype=torch.float32),
        "t": torch.tensor(g.uniform(-0.3, 0.3, (B, 3)) + [0, 0, 0.8], dtype=torch.float32),
        "symmetric": torch.zeros(B, dtype=torch.bool),
        "rgb_crop": torch.tensor(crops, dtype=torch.uint8),
    }


def test_prompts_are_the_only_trained_clip_parameters(tiny):
    branch = make_branch(tiny, prompt_mode="deep", num_prompts=4)
    clip_before = copy.deepcopy(branch.clip.state_dict())
    trainable = {id(p) for p in branch.trainable_parameters()}
    assert id(branch.prompts) in trainable
    assert not any(id(p) in trainable for p in branch.clip.parameters())
    opt = torch.optim.SGD(branch.trainable_parameters(), lr=0.5)
    branch.train()
    assert not branch.clip.training  # frozen CLIP stays in eval mode
    feats = torch.randn(B, FEAT)
    prompts_before = branch.prompts.detach().clone()
    loss = branch.batch_losses(feats, toy_batch())["total"]
    loss.backward()
    for name, p in branch.clip.named_parameters():
        assert p.grad is None, name
    assert branch.prompts.grad is not None
    assert bool((branch.prompts.grad.abs().sum(dim=(1, 2)) > 0).all())  # every layer's prompts
    opt.step()
    for k, v in branch.clip.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    assert not torch.equal(branch.prompts.detach(), prompts_before)
    assert set(branch.trainable_state_dict()) and not any(
        k.startswith("clip.") for k in branch.trainable_state_dict()
    )


def test_without_prompts_the_image_path_is_clips_own(tiny):
    branch = make_branch(tiny, prompt_mode="none")
    x = branch.prepare_images(toy_batch()["rgb_crop"])
    assert x.shape == (B, 3, 32, 32)
    assert torch.equal(branch.encode_image(x), tiny.model.encode_image(x))
    shallow = make_branch(tiny, prompt_mode="shallow", num_prompts=2)
    assert shallow.prompts.shape == (1, 2, 64)
    assert not torch.allclose(shallow.encode_image(x), tiny.model.encode_image(x))


def test_reader_float_crops_and_cache_uint8_crops_agree(tiny):
    from clipose_ros.data.dataset import normalize_clip

    branch = make_branch(tiny, prompt_mode="none")
    crops = toy_batch()["rgb_crop"]
    floats = torch.stack([torch.from_numpy(normalize_clip(c.numpy())) for c in crops])
    np.testing.assert_allclose(
        branch.prepare_images(floats).numpy(), branch.prepare_images(crops).numpy(), atol=1e-4
    )
    with pytest.raises(ValueError, match="uint8 crops"):
        branch.prepare_images(crops[:, :, :, :2])


@pytest.mark.parametrize("term", TERMS)
def test_each_term_alone_ranks_matched_pairs_first(tiny, term):
    weights = {f"{t}_weight": (1.0 if t == term else 0.0) for t in TERMS}
    branch = make_branch(tiny, prompt_mode="shallow", num_prompts=2, **weights)
    assert branch.active == (term,)
    batch = toy_batch(seed=5)
    feats = torch.randn(B, FEAT, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(branch.trainable_parameters(), lr=1e-2)
    a, b = term.split("_")

    def similarity() -> torch.Tensor:
        with torch.no_grad():
            emb = {"point": branch.point_head(feats)}
            emb["image"] = branch.image_head(
                branch.encode_image(branch.prepare_images(batch["rgb_crop"]))
            )
            texts = pose_prompts(batch["class_id"].numpy(), batch["R"].numpy(), batch["t"].numpy())
            emb["text"] = branch.text_head(branch.encode_text(texts))
            return (
                torch.nn.functional.normalize(emb[a], dim=1)
                @ torch.nn.functional.normalize(emb[b], dim=1).t()
            )

    first = None
    for _ in range(80):
        out = branch.batch_losses(feats, batch)
        assert set(out) == {"total", term}
        first = float(out[term].detach()) if first is None else first
        opt.zero_grad()
        out["total"].backward()
        opt.step()
    sim = similarity()
    diag = sim.diag()
    off = sim.masked_fill(torch.eye(B, dtype=torch.bool), -2.0)
    assert float(out[term].detach()) < 0.5 * first
    assert bool((diag > off.max(dim=1).values).all()) and bool((diag > off.max(dim=0).values).all())


def test_text_cache_never_changes_what_the_loss_sees(tiny):
    cached = make_branch(tiny, prompt_mode="shallow", num_prompts=2)
    plain = make_branch(tiny, prompt_mode="shallow", num_prompts=2, text_cache_size=0)
    plain.load_trainable_state(cached.trainable_state_dict())
    feats = torch.randn(B, FEAT)
    opt = torch.optim.SGD(cached.trainable_parameters(), lr=0.1)
    opt2 = torch.optim.SGD(plain.trainable_parameters(), lr=0.1)
    batch = toy_batch(1)
    for _ in range(3):
        lc, lp = cached.batch_losses(feats, batch), plain.batch_losses(feats, batch)
        for k in lc:
            torch.testing.assert_close(lc[k], lp[k], rtol=1e-5, atol=1e-6)
        for o, loss in ((opt, lc["total"]), (opt2, lp["total"])):
            o.zero_grad()
            loss.backward()
            o.step()
    assert cached.cache_hits == 2 * B and cached.cache_misses == B
    assert plain.cache_hits == 0 and plain.cache_misses == 3 * B
    # a text tower that could change is never served from the cache
    cached.clip.token_embedding.weight.requires_grad_(True)
    hits = cached.cache_hits
    cached.encode_text(["a point-cloud model of a can"])
    cached.encode_text(["a point-cloud model of a can"])
    assert cached.cache_hits == hits
    cached.clip.token_embedding.weight.requires_grad_(False)


def test_equal_texts_are_positives_and_info_nce_checks_shapes():
    texts = ["a", "b", "a", "c"]
    mask = equal_text_mask(texts)
    assert mask[0, 2] and mask[2, 0] and not mask[0, 1] and mask.diagonal().all()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    logits = (
        3.0 * torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).t()
    )

    def ce(lg: torch.Tensor, pos: torch.Tensor) -> float:  # loop form, target uniform on positives
        total = 0.0
        for i in range(4):
            p = torch.softmax(lg[i], 0)
            js = [j for j in range(4) if pos[i, j]]
            total -= sum(float(torch.log(p[j])) for j in js) / len(js)
        return total / 4

    expected = 0.5 * (ce(logits, mask) + ce(logits.t(), mask.t()))
    assert float(info_nce(x, y, torch.tensor(3.0), mask)) == pytest.approx(expected, rel=1e-5)
    eye = torch.eye(4, dtype=torch.bool)
    expected_eye = 0.5 * (ce(logits, eye) + ce(logits.t(), eye))
    assert float(info_nce(x, y, torch.tensor(3.0))) == pytest.approx(expected_eye, rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        info_nce(x, x[:3], torch.tensor(1.0))


def test_missing_inputs_and_bad_configs_are_named(tiny):
    branch = make_branch(tiny, prompt_mode="none")
    batch = toy_batch()
    del batch["rgb_crop"]
    with pytest.raises(ValueError, match="rgb_crop_size=32"):
        branch.batch_losses(torch.randn(B, FEAT), batch)
    with pytest.raises(ValueError, match="need points"):
        branch.losses(None, toy_batch()["rgb_crop"], ["x"] * B)
    with pytest.raises(ValueError, match="unknown keys"):
        ClipBranchConfig.from_dict({"model": TINY, "prompt_depth": 3})
    with pytest.raises(ValueError, match="prompt_mode"):
        ClipBranchConfig(prompt_mode="every")
    with pytest.raises(ValueError, match="truncated"):
        branch.encode_text(["word " * 100])
    with pytest.raises(ClipModelError, match="does not fit"):
        branch.load_trainable_state({"point_head.0.weight": torch.zeros(1)})
    assert ClipBranchConfig.from_dict({"enabled": True, "model": TINY}).model == TINY


def test_unknown_architecture_and_missing_teacher_are_named(tmp_path):
    with pytest.raises(ClipModelError, match="unknown open_clip architecture 'no-such-arch'"):
        load_clip("no-such-arch", None)
    missing = tmp_path / "nowhere" / "teacher.pt"
    with pytest.raises(ClipModelError, match=str(missing)):
        ClipBranch(ClipBranchConfig(model="clipose_clip_tiny", pretrained=str(missing)), FEAT)


def test_build_from_a_training_config_section():
    dim = 16
    assert build_clip_branch(None, dim) is None
    assert build_clip_branch({"enabled": False, "model": "x"}, dim) is None
    off = {f"{t}_weight": 0.0 for t in TERMS}
    assert build_clip_branch({"enabled": True, **off}, dim) is None  # pose network alone
    with pytest.raises(ClipModelError, match="config section clip: .*unknown keys"):
        build_clip_branch({"enabled": True, "weight": 1.0}, dim)
