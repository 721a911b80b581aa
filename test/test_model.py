"""The pose network: shapes, proper rotations on any input, losses and their gradients."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from clipose_ros.categories import CATEGORIES, MEAN_SIZES_M, SYMMETRIC_CATEGORIES
from clipose_ros.geometry import rotation_about_axis
from clipose_ros.model.losses import LossWeights, pose_losses
from clipose_ros.model.network import NetConfig, PoseNet, assemble_rotation, knn

SMALL = NetConfig(
    n_graph=128, n_coarse=32, k=8, c1=16, c2=32, c3=32, c4=64, coord_channels=16, head_hidden=64
)
POINTWISE = replace(SMALL, head="pointwise", norm=True, point_hidden=32, head_point_hidden=16)
HYBRID = replace(POINTWISE, head="hybrid")
HYBRID_POINT_NORM = replace(HYBRID, norm=False, point_norm=True)
LAYOUTS = {
    "pooled": SMALL,
    "pointwise": POINTWISE,
    "hybrid": HYBRID,
    "hybrid_point_norm": HYBRID_POINT_NORM,
}
ALL_TERMS = LossWeights(orthogonality=1.0, point_matching=2.0)


def make_net(seed: int = 0, cfg: NetConfig = SMALL) -> PoseNet:
    torch.manual_seed(seed)
    return PoseNet(cfg)


def object_batch(b: int = 6, n: int = 1028, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(b, n, 3, generator=g) * torch.tensor([0.06, 0.04, 0.03])
    return pts + torch.tensor([0.1, -0.05, 0.8]), torch.arange(b) % 6 + 1


def assert_proper(R: torch.Tensor) -> None:
    eye = torch.eye(3).expand_as(R)
    assert torch.isfinite(R).all()
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R)), atol=1e-5)


def test_output_shapes_and_features():
    net = make_net().eval()
    pts, cls = object_batch()
    R, t, size, conf = net(pts, cls)
    assert R.shape == (6, 3, 3) and t.shape == (6, 3) and size.shape == (6, 3)
    assert conf.shape == (6, 2) and ((conf >= 0) & (conf <= 1)).all()
    symmetric = torch.tensor([CATEGORIES[c - 1] in SYMMETRIC_CATEGORIES for c in cls])
    assert torch.all(conf[symmetric, 1] == 0) and torch.all(conf[~symmetric, 1] > 0)
    assert (size > 0).all()
    assert net.features(pts, cls).shape == (6, net.feature_dim)
    assert_proper(R)


def test_translation_is_a_residual_on_the_centroid_and_size_on_the_mean():
    net = make_net()
    torch.nn.init.zeros_(net.heads.ts_head.weight)
    torch.nn.init.zeros_(net.heads.ts_head.bias)
    pts, cls = object_batch()
    _, t, size, _ = net.eval()(pts, cls)
    assert torch.allclose(t, pts.mean(1), atol=1e-6)
    mean = torch.tensor(
        np.array([MEAN_SIZES_M[CATEGORIES[c - 1]] for c in cls]), dtype=torch.float32
    )
    assert torch.allclose(size, mean, atol=1e-6)


@pytest.mark.parametrize("case", ["equal", "flat", "line", "huge"])
def test_proper_rotation_for_degenerate_inputs(case):
    net = make_net().eval()
    pts, cls = object_batch(b=3)
    if case == "equal":  # all points equal: no neighbour direction exists
        pts = torch.full((3, 1028, 3), 0.5)
    elif case == "flat":  # a planar patch
        pts[..., 2] = 0.8
    elif case == "line":
        pts[..., 1:] = 0.0
    else:
        pts = pts * 1000.0
    R, t, size, conf = net(pts, cls)
    assert_proper(R)
    assert torch.isfinite(t).all() and torch.isfinite(size).all() and torch.isfinite(conf).all()


def test_assemble_rotation_cases():
    torch.manual_seed(1)
    y, x = torch.randn(64, 3), torch.randn(64, 3)
    conf = torch.rand(64)
    assert_proper(assemble_rotation(y, x, conf, torch.rand(64)))
    # Parallel or zero axes still give proper rotations.
    assert_proper(assemble_rotation(y, 2 * y, conf, conf))
    assert_proper(assemble_rotation(torch.zeros(4, 3), torch.zeros(4, 3), conf[:4], conf[:4]))
    # Orthonormal inputs come back unchanged; a zero x confidence keeps y exactly.
    Rg = torch.tensor(rotation_about_axis([1, 2, 3], 0.7), dtype=torch.float32)[None]
    R = assemble_rotation(Rg[:, :, 1], Rg[:, :, 0], conf[:1], conf[1:2])
    assert torch.allclose(R, Rg, atol=1e-5)
    y1, x1 = Rg[:, :, 1], Rg[:, :, 1] + Rg[:, :, 0]  # x at 45 degrees from y
    R = assemble_rotation(y1, x1, torch.ones(1), torch.zeros(1))
    assert torch.allclose(R[:, :, 1], y1, atol=1e-5)
    assert torch.allclose(R[:, :, 0], Rg[:, :, 0], atol=1e-5)
    R = assemble_rotation(y1, x1, torch.ones(1), torch.ones(1))  # equal trust: both turn 22.5
    angle = torch.acos((R[:, :, 1] * y1).sum()).item()
    assert angle == pytest.approx(math.radians(22.5), abs=1e-4)


def test_symmetric_classes_use_the_predicted_y_axis_exactly():
    net = make_net().eval()
    pts, _ = object_batch(b=3)
    cls = torch.tensor([1, 2, 4])  # bottle, bowl, can
    out = net.predict(pts, cls)
    R, *_ = net(pts, cls)
    y = out["y"] / out["y"].norm(dim=-1, keepdim=True)
    assert torch.allclose(R[:, :, 1], y, atol=1e-5)


def test_knn_excludes_self_and_finds_the_nearest():
    pts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
    idx = knn(pts, 2)
    assert idx[0, 0].tolist() == [1, 2] and idx[0, 3].tolist() == [2, 1]


def fixed_batch(b: int = 8):
    pts, cls = object_batch(b)
    g = torch.Generator().manual_seed(3)
    Rs = [rotation_about_axis(torch.randn(3, generator=g).numpy(), 1.0) for _ in range(b)]
    R = torch.tensor(np.array(Rs), dtype=torch.float32)
    t = pts.mean(1) + 0.01
    size = torch.full((b, 3), 0.12)
    symmetric = torch.tensor([c in (1, 2, 4) for c in cls.tolist()])
    return pts, cls, R, t, size, symmetric


def test_a_gradient_step_lowers_the_loss_on_a_fixed_batch():
    net = make_net()
    pts, cls, R, t, size, sym = fixed_batch()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    first = None
    for _ in range(5):
        loss = pose_losses(net.predict(pts, cls), R, t, size, sym, LossWeights())["total"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(pose_losses(net.predict(pts, cls), R, t, size, sym, LossWeights())["total"])
    assert final < 0.9 * first


def test_symmetric_samples_get_no_x_axis_gradient():
    net = make_net()
    pts, cls, R, t, size, sym = fixed_batch()
    out = net.predict(pts, cls)
    out["x"].retain_grad()
    out["y"].retain_grad()
    pose_losses(out, R, t, size, sym, LossWeights())["total"].backward()
    assert torch.all(out["x"].grad[sym] == 0)
    assert torch.any(out["x"].grad[~sym] != 0)
    assert torch.any(out["y"].grad[sym] != 0)
    # Nor does the dense head reward a turn about y for them: a y-rotated truth costs the same.
    spin = torch.tensor(rotation_about_axis([0, 1, 0], 1.1), dtype=torch.float32)
    R2 = R.clone()
    R2[sym] = R[sym] @ spin
    w = LossWeights(rot_x=0.0, conf=0.0)
    with torch.no_grad():
        out = net.predict(pts, cls)
        a = pose_losses(out, R, t, size, torch.ones_like(sym), w)["total"]
        b = pose_losses(
            out, torch.where(sym[:, None, None], R2, R), t, size, torch.ones_like(sym), w
        )["total"]
    assert torch.allclose(a, b, atol=1e-5)


def test_a_saturated_confidence_still_learns_under_bce_and_dies_under_l1():
    """The shipped files' x confidence sat at 0 for every class: L1 on a saturated sigmoid has
    no gradient. With exact axes the target is 1; the BCE loss pulls a logit of -20 up."""
    net = make_net()
    pts, cls, R, t, size, sym = fixed_batch()
    out = net.predict(pts, cls)
    out["y"], out["x"] = R[:, :, 1], R[:, :, 0]
    logits = torch.full((len(pts), 2), -20.0, requires_grad=True)
    out["conf_logits"] = logits
    out["conf_y"], out["conf_x"] = torch.sigmoid(logits[:, 0]), torch.sigmoid(logits[:, 1])
    grads = {}
    for kind in ("bce", "l1"):
        logits.grad = None
        only_conf = LossWeights(rot_y=0, rot_x=0, translation=0, size=0, point_coords=0,
                                conf=1.0, conf_loss=kind)
        pose_losses(out, R, t, size, sym, only_conf)["total"].backward(retain_graph=True)
        grads[kind] = logits.grad.clone()
    asym = ~sym
    # bce: every y logit and the x logits of asymmetric samples are pushed up (target 1)
    assert torch.all(grads["bce"][:, 0] < -0.05)
    assert torch.all(grads["bce"][asym, 1] < -0.05)
    # symmetric samples' x target is 0, which a logit of -20 already meets
    assert torch.all(grads["bce"][sym, 1].abs() < 1e-6)
    assert grads["l1"].abs().max() < 1e-7
    with pytest.raises(ValueError, match="conf_loss"):
        LossWeights(conf_loss="mse")


def test_scriptable_and_equal_to_eager():
    net = make_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    pts, cls = object_batch()
    with torch.no_grad():
        for a, b in zip(net(pts, cls), scripted(pts, cls), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(net.features(pts, cls), scripted.features(pts, cls), atol=1e-5)


def test_config_round_trip_and_validation():
    assert NetConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown keys"):
        NetConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="n_coarse"):
        NetConfig(n_graph=64, n_coarse=128)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_head_layout_learns_with_every_loss_term_and_scripts_exactly(layout):
    net = make_net(cfg=LAYOUTS[layout])
    # Every parameter is used: no dead weights in a layout (nor in the exported file).
    pts, cls, R, t, size, sym = fixed_batch()
    pose_losses(net.predict(pts, cls), R, t, size, sym, ALL_TERMS)["total"].backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    net.zero_grad(set_to_none=True)
    pts, cls, R, t, size, sym = fixed_batch()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        losses = pose_losses(net.predict(pts, cls), R, t, size, sym, ALL_TERMS)
        first = float(losses["total"].detach()) if first is None else first
        assert float(losses["point_matching"]) > 0 and float(losses["orthogonality"]) > 0
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        final = float(pose_losses(net.predict(pts, cls), R, t, size, sym, ALL_TERMS)["total"])
    assert final < 0.9 * first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.no_grad():
        for a, b in zip(net(pts, cls), scripted(pts, cls), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        assert_proper(net(pts, cls)[0])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_feature_is_the_encoders_own_without_the_one_hot(layout: str):
    """The CLIP branch aligns ``feature``: it must not be matchable from the class alone."""
    net = make_net(cfg=LAYOUTS[layout]).eval()
    pts, _ = object_batch(b=2)
    with torch.no_grad():
        a = net.features(pts, torch.tensor([1, 1]))
        b = net.features(pts, torch.tensor([6, 3]))
        pose_a = net.predict(pts, torch.tensor([1, 1]))["y"]
        pose_b = net.predict(pts, torch.tensor([6, 3]))["y"]
    assert a.shape == (2, net.feature_dim) and torch.equal(a, b)
    assert not torch.allclose(pose_a, pose_b)  # the heads do see the class


def test_point_matching_and_orthogonality_vanish_at_the_truth():
    pts, cls, R, t, size, sym = fixed_batch()
    p = pts[:, :128] - pts.mean(1, keepdim=True)
    out = {
        "y": R[:, :, 1] * 2.0,  # unnormalised axes are fine
        "x": R[:, :, 0],
        "conf_y": torch.full((8,), 0.9),
        "conf_x": torch.full((8,), 0.9),
        "conf_logits": torch.full((8, 2), 2.2),
        "t": t,
        "size": size,
        "point_coords": torch.zeros(8, 128, 3),
        "fine_points": p,
        "centroid": pts.mean(1),
    }
    losses = pose_losses(out, R, t, size, sym, ALL_TERMS)
    assert float(losses["point_matching"]) < 1e-5 and float(losses["orthogonality"]) < 1e-6
    spin = torch.tensor(rotation_about_axis([1, 0, 0], 0.3), dtype=torch.float32)
    out["y"] = (R @ spin)[:, :, 1]
    out["x"] = (R @ spin)[:, :, 0]
    assert float(pose_losses(out, R, t, size, sym, ALL_TERMS)["point_matching"]) > 0.01


def test_checkpoints_from_before_the_head_layouts_still_load():
    net = make_net()
    old_style = {
        (k[len("heads."):] if k.startswith("heads.") else k): v
        for k, v in net.state_dict().items()
    }
    assert "trunk.0.weight" in old_style
    fresh = make_net(seed=1)
    fresh.load_state_dict(old_style)
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_point_norm_normalises_the_per_point_stage_and_leaves_the_encoder_plain():
    """``point_norm`` is BatchNorm for the rotation's per-point features only: the encoder
    features the pooled translation reads stay as without it (``norm`` puts it in both)."""

    def normalised(cfg: NetConfig) -> list[str]:
        net = PoseNet(cfg)
        return [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm1d)]

    assert normalised(HYBRID_POINT_NORM) == ["heads.shared.0.1.norm", "heads.shared.1.1.norm"]
    assert {"norm1.norm", "norm2.norm", "norm3.norm"} <= set(normalised(HYBRID))
    assert normalised(replace(HYBRID, norm=False)) == []
