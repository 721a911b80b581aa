"""The pose network: a small 3D graph-convolution encoder and the 9D pose heads.

Encoder (3D-GCN family; our own sizes, chosen by measuring on a 2-core CPU, see DESIGN.md):
the centred input points are subsampled to ``n_graph`` points (the input is already a random
sample of the instance, so its first ``n_graph`` points are a random subset), one kNN graph is
built there and shared by a surface convolution and a graph convolution; graph max-pooling
keeps ``n_coarse`` of those points (each takes the max feature over its neighbours), a second
kNN graph on them is shared by two more graph convolutions. A graph convolution compares the
unit directions to the ``k`` neighbours with ``supports`` learnable kernel directions per
output channel, weights the neighbours' features by the (rectified) agreement, takes the max
over neighbours and sums over the support directions. Directions are scale invariant, so a
point-wise branch on the (scaled) coordinates adds the metric shape that the size needs.

Heads, from the global feature (max and mean over the coarse points, plus the class one-hot):
two unit axes of the object frame (y and x) with a confidence each, assembled into a proper
rotation (:func:`assemble_rotation`); a translation residual added to the centroid of the input
points; a size residual added to the category's mean size. A per-point head predicts the
object-frame coordinates of the fine points (a dense auxiliary target; training only).

Everything is batched, has static ``view`` shapes and is scriptable with ``torch.jit.script``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipose_ros.categories import CATEGORIES, MEAN_SIZES_M, SYMMETRIC_CATEGORIES
from clipose_ros.model.config import dataclass_from_dict

MODEL_VERSION = "clipose-pose-2"  # 2: axis confidences (B, 2) out; 1: one (B,)
_POOLED_HEAD_NAMES = ("trunk", "rot_head", "ts_head", "point_head")
HEAD_LAYOUTS = ("pooled", "pointwise", "hybrid")


@dataclass(frozen=True)
class NetConfig:
    """Sizes of the network (stored in checkpoints and model files)."""

    n_graph: int = 384
    n_coarse: int = 96
    k: int = 10
    supports: int = 2
    c1: int = 32
    c2: int = 64
    c3: int = 128
    c4: int = 128
    coord_channels: int = 32
    head_hidden: int = 256
    coord_scale: float = 10.0  # metres -> network units for the coordinate branch
    # "pooled": the heads see max/mean-pooled encoder features through one shared trunk (the
    # first shipped network). "pointwise": a per-point MLP over the multi-level features (fine,
    # first layer, coarse layer brought back to the fine points) and the one-hot runs before
    # the pooling, and each output (y axis, x axis, translation+size) has its own per-point
    # stage and max-pool, so that a handle, a lens or a hinge can drive its axis (HS-Pose's
    # layout, our sizes). "hybrid": the pointwise rotation with the pooled trunk's translation
    # and size. Defaults stay "pooled" so that older checkpoints still load.
    head: str = "pooled"
    point_hidden: int = 128  # "pointwise": width of the shared per-point MLP
    head_point_hidden: int = 64  # "pointwise": width of each head's per-point stage
    norm: bool = False  # BatchNorm after the graph convolutions (and in the per-point MLP)
    # BatchNorm in the shared per-point MLP only ("pointwise"/"hybrid"), the encoder without:
    # with ``norm`` the per-point rotation heads rotated best but the features the pooled
    # translation reads lost 0.3 cm of median error (models/clipose_pose.md)
    point_norm: bool = False
    # The direction towards the image border(s) that cut the object's mask (camera frame,
    # ``points.cut_direction``; zero when whole) goes in beside the one-hot: a cut object's
    # visible part alone does not say where its box ends on the cut side (issue 17's laptops).
    cut_input: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEAD_LAYOUTS:
            raise ValueError(f"NetConfig.head must be one of {HEAD_LAYOUTS}, got {self.head!r}")
        if not 0 < self.n_coarse <= self.n_graph:
            raise ValueError("NetConfig: need 0 < n_coarse <= n_graph")
        if self.k < 1 or self.k >= self.n_coarse:
            raise ValueError("NetConfig: need 1 <= k < n_coarse")
        if min(self.supports, self.c1, self.c2, self.c3, self.c4, self.head_hidden) < 1:
            raise ValueError("NetConfig: sizes must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return dataclass_from_dict(cls, d, "NetConfig")


def _norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last axis, kept (scriptable spelling)."""
    return (v * v).sum(-1, keepdim=True).sqrt()


def knn(points: Tensor, k: int) -> Tensor:
    """Indices (B, M, k) of each point's k nearest other points (self excluded)."""
    sq = (points * points).sum(-1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * torch.bmm(points, points.transpose(1, 2))
    idx = dist.topk(k + 1, dim=-1, largest=False, sorted=True)[1]
    return idx[:, :, 1:]


def flat_index(idx: Tensor, m: int) -> Tensor:
    """(B, M, k) per-cloud indices -> (B*M*k,) indices into a (B*M, C) flattened tensor."""
    b = idx.size(0)
    offset = torch.arange(b, device=idx.device).view(b, 1, 1) * m
    return (idx + offset).reshape(-1)


def gather(features: Tensor, flat: Tensor, k: int) -> Tensor:
    """Neighbour features (B, M, k, C) from (B, M, C) and a :func:`flat_index`."""
    b, m, c = features.size(0), features.size(1), features.size(2)
    return features.reshape(b * m, c).index_select(0, flat).view(b, -1, k, c)


def neighbour_directions(points: Tensor, flat: Tensor, k: int) -> Tensor:
    """Unit vectors (B, M, k, 3) from each point to its neighbours (zero for duplicates)."""
    diff = gather(points, flat, k) - points.unsqueeze(2)
    return diff / _norm(diff).clamp_min(1e-8)


class SurfaceConv(nn.Module):
    """First graph layer: features from neighbour directions alone."""

    def __init__(self, out_channels: int, supports: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.supports = supports
        self.directions = nn.Parameter(torch.randn(3, supports * out_channels))

    def forward(self, dirs: Tensor) -> Tensor:
        b, m = dirs.size(0), dirs.size(1)
        kernel = F.normalize(self.directions, dim=0)
        theta = F.relu(dirs @ kernel)  # (B, M, k, S*C)
        out = theta.max(dim=2)[0].view(b, m, self.supports, self.out_channels)
        return out.sum(dim=2)


class GraphConv(nn.Module):
    """Graph layer: neighbour features weighted by direction agreement, max over neighbours."""

    def __init__(self, in_channels: int, out_channels: int, supports: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.supports = supports
        self.centre = nn.Linear(in_channels, out_channels)
        self.neighbour = nn.Linear(in_channels, supports * out_channels, bias=False)
        self.directions = nn.Parameter(torch.randn(3, supports * out_channels))

    def forward(self, features: Tensor, dirs: Tensor, flat: Tensor, k: int) -> Tensor:
        b, m = features.size(0), features.size(1)
        kernel = F.normalize(self.directions, dim=0)
        theta = F.relu(dirs @ kernel)  # (B, M, k, S*C)
        support = gather(self.neighbour(features), flat, k)  # (B, M, k, S*C)
        out = (theta * support).max(dim=2)[0].view(b, m, self.supports, self.out_channels)
        return self.centre(features) + out.sum(dim=2)


def graph_max_pool(features: Tensor, flat: Tensor, k: int, keep: int) -> Tensor:
    """Max feature over each point's neighbourhood, for the first ``keep`` points."""
    b, c = features.size(0), features.size(2)
    pooled = gather(features, flat, k).max(dim=2)[0]
    return pooled[:, :keep].reshape(b, keep, c)


def _normalize(v: Tensor, fallback: Tensor) -> Tensor:
    """Unit vectors; rows shorter than 1e-6 become ``fallback`` (broadcast (3,) or (B, 3))."""
    n = _norm(v)
    unit = v / n.clamp_min(1e-6)
    return torch.where(n > 1e-6, unit, fallback.expand_as(v))


def assemble_rotation(y: Tensor, x: Tensor, conf_y: Tensor, conf_x: Tensor) -> Tensor:
    """Proper rotation (B, 3, 3) whose columns x', y' are closest to the predicted axes.

    In the plane of y and x, both axes turn until they are orthogonal; each turns by a share
    inversely proportional to its confidence (weighted least squares on the two angles).
    Degenerate inputs (zero or parallel axes) fall back to arbitrary but valid frames.
    """
    ey = _normalize(y, torch.tensor([0.0, 1.0, 0.0], device=y.device, dtype=y.dtype))
    xo = x - (x * ey).sum(-1, keepdim=True) * ey
    alt = torch.cross(
        ey, torch.tensor([0.0, 0.0, 1.0], device=y.device, dtype=y.dtype).expand_as(ey), dim=-1
    )
    alt2 = torch.cross(
        ey, torch.tensor([1.0, 0.0, 0.0], device=y.device, dtype=y.dtype).expand_as(ey), dim=-1
    )
    alt = torch.where(_norm(alt) > 0.1, alt, alt2)
    alt = alt / _norm(alt).clamp_min(1e-6)
    e2 = _normalize(xo, alt)
    cos_t = (x * ey).sum(-1)
    sin_t = (x * e2).sum(-1)
    theta = torch.atan2(sin_t, cos_t)  # angle of x from y in [0, pi] (sin_t >= 0 by e2)
    wy = conf_y.clamp_min(1e-8)
    wx = conf_x.clamp_min(1e-8)
    alpha = (wx * (theta - 0.5 * torch.pi) / (wx + wy)).unsqueeze(-1)
    y_new = torch.cos(alpha) * ey + torch.sin(alpha) * e2
    x_new = -torch.sin(alpha) * ey + torch.cos(alpha) * e2
    z_new = torch.cross(x_new, y_new, dim=-1)
    return torch.stack([x_new, y_new, z_new], dim=-1)


class PointNorm(nn.Module):
    """BatchNorm over the channels of (B, M, C) point features (an identity when off)."""

    def __init__(self, channels: int, enabled: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels) if enabled else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, m, c = x.size(0), x.size(1), x.size(2)
        return self.norm(x.reshape(b * m, c)).view(b, m, c)


def nearest_index(points: Tensor, targets: Tensor) -> Tensor:
    """Index (B, M) of each point's nearest target point (targets (B, T, 3))."""
    sq_p = (points * points).sum(-1).unsqueeze(2)
    sq_t = (targets * targets).sum(-1).unsqueeze(1)
    dist = sq_p + sq_t - 2.0 * torch.bmm(points, targets.transpose(1, 2))
    return dist.argmin(dim=-1)


def global_feature(f1: Tensor, f3: Tensor, dim: int) -> Tensor:
    """The encoder's global feature (B, dim): max and mean of the coarse and first-layer
    features (what the pooled trunk reads and the CLIP branch aligns)."""
    return torch.cat(
        [f3.max(dim=1)[0], f3.mean(dim=1), f1.max(dim=1)[0], f1.mean(dim=1)], dim=-1
    ).view(f1.size(0), dim)


class HeadOutputs(nn.Module):
    """Shared signature of the two head layouts (TorchScript needs one)."""

    def forward(
        self, f0: Tensor, f1: Tensor, f3: Tensor, fine: Tensor, coarse: Tensor, onehot: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(rot (B, 8): y, x, two confidence logits; ts (B, 6); per-point coordinates of the
        fine points (B, M, 3); the encoder's global feature (B, F))."""
        raise NotImplementedError


class PooledHeads(HeadOutputs):
    """The first network's heads: one trunk over max/mean-pooled features and the one-hot.

    The global feature the CLIP branch aligns is the pooled part alone: with the one-hot in
    it, the point-text and point-image terms could be met from the class without the encoder
    (issue 20). The trunk's weights are unchanged, so older checkpoints load as they are.
    """

    def __init__(self, cfg: NetConfig, num_classes: int) -> None:
        super().__init__()
        self.feature_dim = 2 * (cfg.c4 + cfg.c2)
        h = cfg.head_hidden
        self.trunk = nn.Sequential(
            nn.Linear(self.feature_dim + num_classes, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()
        )
        self.rot_head = nn.Linear(h, 8)  # y (3), x (3), two confidence logits
        self.ts_head = nn.Linear(h, 6)  # translation residual (3), size residual (3)
        self.point_head = nn.Sequential(nn.Linear(cfg.c2 + h, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(
        self, f0: Tensor, f1: Tensor, f3: Tensor, fine: Tensor, coarse: Tensor, onehot: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        glob = global_feature(f1, f3, self.feature_dim)
        hidden = self.trunk(torch.cat([glob, onehot], dim=-1))
        per_point = torch.cat([f1, hidden.unsqueeze(1).expand(-1, f1.size(1), -1)], dim=-1)
        return self.rot_head(hidden), self.ts_head(hidden), self.point_head(per_point), glob


def _point_mlp(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out), PointNorm(c_out, norm), nn.ReLU())


class PointwiseHeads(HeadOutputs):
    """Per-point stage before pooling, one pooled head per output (see ``NetConfig.head``).

    Each fine point gets its own features, its first-layer features, the coarse features of
    its nearest coarse point and the one-hot; a shared per-point MLP mixes them. The y axis,
    the x axis and translation+size each run their own per-point layer and max-pool over
    the points, so each can pick the points that decide it. The global feature the CLIP
    branch aligns is the encoder's own (pooled levels), without the one-hot.
    """

    def __init__(self, cfg: NetConfig, num_classes: int) -> None:
        super().__init__()
        c_in = cfg.c1 + cfg.coord_channels + cfg.c2 + cfg.c4 + num_classes
        hp, hh = cfg.point_hidden, cfg.head_point_hidden
        self.feature_dim = 2 * (cfg.c4 + cfg.c2)
        norm = cfg.norm or cfg.point_norm
        self.shared = nn.Sequential(_point_mlp(c_in, hp, norm), _point_mlp(hp, hp, norm))
        self.y_points = _point_mlp(hp, hh, False)
        self.x_points = _point_mlp(hp, hh, False)
        self.ts_points = _point_mlp(hp, hh, False)
        self.y_out = nn.Sequential(nn.Linear(hh, hh), nn.ReLU(), nn.Linear(hh, 4))
        self.x_out = nn.Sequential(nn.Linear(hh, hh), nn.ReLU(), nn.Linear(hh, 4))
        self.ts_out = nn.Sequential(nn.Linear(hh + hp, hh), nn.ReLU(), nn.Linear(hh, 6))
        self.point_head = nn.Sequential(nn.Linear(2 * hp, 64), nn.ReLU(), nn.Linear(64, 3))

    def _shared(
        self, f0: Tensor, f1: Tensor, f3: Tensor, fine: Tensor, coarse: Tensor, onehot: Tensor
    ) -> Tensor:
        """The shared per-point features (B, M, point_hidden)."""
        m = f1.size(1)
        near = nearest_index(fine, coarse)  # (B, M)
        up = f3.gather(1, near.unsqueeze(-1).expand(-1, -1, f3.size(2)))
        per_point = torch.cat([f0, f1, up, onehot.unsqueeze(1).expand(-1, m, -1)], dim=-1)
        return self.shared(per_point)

    def _rotation(self, shared: Tensor) -> Tensor:
        """(B, 8): y, x, two confidence logits, each axis from its own per-point stage."""
        y = self.y_out(self.y_points(shared).max(dim=1)[0])
        x = self.x_out(self.x_points(shared).max(dim=1)[0])
        return torch.cat([y[:, 0:3], x[:, 0:3], y[:, 3:4], x[:, 3:4]], dim=-1)

    def _coords(self, shared: Tensor, pooled: Tensor) -> Tensor:
        m = shared.size(1)
        return self.point_head(torch.cat([shared, pooled.unsqueeze(1).expand(-1, m, -1)], dim=-1))

    def forward(
        self, f0: Tensor, f1: Tensor, f3: Tensor, fine: Tensor, coarse: Tensor, onehot: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        shared = self._shared(f0, f1, f3, fine, coarse, onehot)
        pooled = shared.max(dim=1)[0]
        ts = self.ts_out(torch.cat([self.ts_points(shared).max(dim=1)[0], pooled], dim=-1))
        glob = global_feature(f1, f3, self.feature_dim)
        return self._rotation(shared), ts, self._coords(shared, pooled), glob


class HybridHeads(PointwiseHeads):
    """Rotation and dense coordinates from the per-point layout, translation and size from
    the pooled trunk (``PooledHeads``' trunk over the max/mean-pooled encoder features and the
    one-hot). On the 200 test frames the per-point heads were better at rotation (5°5cm 55.1
    against 50.1) and the trunk at translation and size (IoU75 64.7 against 50.5;
    models/clipose_pose.md)."""

    def __init__(self, cfg: NetConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        del self.ts_points, self.ts_out
        h = cfg.head_hidden
        self.trunk = nn.Sequential(
            nn.Linear(self.feature_dim + num_classes, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()
        )
        self.ts_head = nn.Linear(h, 6)

    def forward(
        self, f0: Tensor, f1: Tensor, f3: Tensor, fine: Tensor, coarse: Tensor, onehot: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        shared = self._shared(f0, f1, f3, fine, coarse, onehot)
        glob = global_feature(f1, f3, self.feature_dim)
        ts = self.ts_head(self.trunk(torch.cat([glob, onehot], dim=-1)))
        return self._rotation(shared), ts, self._coords(shared, shared.max(dim=1)[0]), glob


class PoseNet(nn.Module):
    """Points (B, N, 3) metres + class ids (B,) 1..6 -> pose (see the module docstring)."""

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        cfg = config or NetConfig()
        self.config = cfg
        self.n_graph = cfg.n_graph
        self.n_coarse = cfg.n_coarse
        self.k = cfg.k
        self.coord_scale = cfg.coord_scale
        self.num_classes = len(CATEGORIES)
        s = cfg.supports
        self.coord_mlp = nn.Sequential(
            nn.Linear(3, cfg.coord_channels),
            nn.ReLU(),
            nn.Linear(cfg.coord_channels, cfg.coord_channels),
        )
        self.conv0 = SurfaceConv(cfg.c1, s)
        self.conv1 = GraphConv(cfg.c1 + cfg.coord_channels, cfg.c2, s)
        self.conv2 = GraphConv(cfg.c2, cfg.c3, s)
        self.conv3 = GraphConv(cfg.c3, cfg.c4, s)
        self.norm1 = PointNorm(cfg.c2, cfg.norm)
        self.norm2 = PointNorm(cfg.c3, cfg.norm)
        self.norm3 = PointNorm(cfg.c4, cfg.norm)
        self.cut_input = cfg.cut_input
        # what the heads read beside the features: the one-hot (and the cut direction)
        condition = self.num_classes + (3 if cfg.cut_input else 0)
        layouts = {"pooled": PooledHeads, "pointwise": PointwiseHeads, "hybrid": HybridHeads}
        heads: HeadOutputs = layouts[cfg.head](cfg, condition)
        self.heads = heads
        self.feature_dim = heads.feature_dim
        mean = torch.from_numpy(np.stack([MEAN_SIZES_M[c] for c in CATEGORIES]).astype(np.float32))
        self.register_buffer("mean_sizes", mean)
        sym = torch.tensor([c in SYMMETRIC_CATEGORIES for c in CATEGORIES], dtype=torch.float32)
        self.register_buffer("symmetric_class", sym)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        """Checkpoints from before the head layouts had ``trunk.``/``rot_head.``/``ts_head.``/
        ``point_head.`` at the top level: they are the pooled heads, now under ``heads.``."""
        for name in list(state_dict):
            rest = name[len(prefix):]
            if name.startswith(prefix) and rest.split(".")[0] in _POOLED_HEAD_NAMES:
                state_dict[prefix + "heads." + rest] = state_dict.pop(name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _encode(
        self, points: Tensor, class_ids: Tensor, cut_dir: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(f0, f1 fine per-point features, f3 coarse features, fine centred points, coarse
        points, condition (one-hot, then the cut direction with ``cut_input``), centroid)."""
        centroid = points.mean(dim=1)
        centred = points - centroid.unsqueeze(1)
        fine = centred[:, : self.n_graph].contiguous()
        m = fine.size(1)
        k = self.k
        flat = flat_index(knn(fine, k), m)
        dirs = neighbour_directions(fine, flat, k)
        f0 = F.relu(self.conv0(dirs))
        f0 = torch.cat([f0, F.relu(self.coord_mlp(fine * self.coord_scale))], dim=-1)
        f1 = F.relu(self.norm1(self.conv1(f0, dirs, flat, k)))
        nc = min(self.n_coarse, m)
        pooled = graph_max_pool(f1, flat, k, nc)
        coarse = fine[:, :nc].contiguous()
        flat_c = flat_index(knn(coarse, k), nc)
        dirs_c = neighbour_directions(coarse, flat_c, k)
        f2 = F.relu(self.norm2(self.conv2(pooled, dirs_c, flat_c, k)))
        f3 = self.norm3(self.conv3(f2, dirs_c, flat_c, k))
        onehot = F.one_hot((class_ids - 1).clamp(0, self.num_classes - 1), self.num_classes)
        condition = onehot.to(f3.dtype)
        if self.cut_input:
            if cut_dir is None:  # nothing said: taken as a whole object
                cut_dir = torch.zeros(points.size(0), 3, dtype=f3.dtype, device=points.device)
            condition = torch.cat([condition, cut_dir.to(f3.dtype)], dim=-1)
        return f0, f1, f3, fine, coarse, condition, centroid

    @torch.jit.export
    def features(
        self, points: Tensor, class_ids: Tensor, cut_dir: Tensor | None = None
    ) -> Tensor:
        """Global feature (B, feature_dim) of the encoder: what the CLIP teacher aligns."""
        return self.predict(points, class_ids, cut_dir)["feature"]

    @torch.jit.export
    def predict(
        self, points: Tensor, class_ids: Tensor, cut_dir: Tensor | None = None
    ) -> dict[str, Tensor]:
        """All raw outputs: the training losses read these, and the CLIP branch reads
        ``feature`` (the global feature of the same encoder pass). ``cut_dir`` (B, 3): see
        ``NetConfig.cut_input`` (ignored without it)."""
        f0, f1, f3, fine, coarse, onehot, centroid = self._encode(points, class_ids, cut_dir)
        rot, ts, coords, glob = self.heads(f0, f1, f3, fine, coarse, onehot)
        y = rot[:, 0:3]
        x = rot[:, 3:6]
        conf = torch.sigmoid(rot[:, 6:8])
        idx = (class_ids - 1).clamp(0, self.num_classes - 1)
        size = self.mean_sizes.index_select(0, idx) + ts[:, 3:6]
        t = centroid + ts[:, 0:3]
        return {
            "y": y,
            "x": x,
            "conf_y": conf[:, 0],
            "conf_x": conf[:, 1],
            "conf_logits": rot[:, 6:8],  # (B, 2): y, x before the sigmoid (the loss reads these)
            "t": t,
            "size": size,
            "point_coords": coords,  # object-frame coordinates of the fine points
            "fine_points": fine,
            "centroid": centroid,
            "feature": glob,
        }

    def forward(
        self, points: Tensor, class_ids: Tensor, cut_dir: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """R (B, 3, 3), t (B, 3), size (B, 3), axis confidences (B, 2): y, x.

        For the symmetric classes the x axis carries no information: the rotation then keeps
        the predicted y axis exactly and the x confidence is 0. (Files of ``clipose-pose-1``
        return one confidence (B,), the product for asymmetric classes.)
        """
        out = self.predict(points, class_ids, cut_dir)
        idx = (class_ids - 1).clamp(0, self.num_classes - 1)
        sym = self.symmetric_class.index_select(0, idx)
        conf_x = out["conf_x"] * (1.0 - sym)
        R = assemble_rotation(out["y"], out["x"], out["conf_y"], conf_x)
        conf = torch.stack([out["conf_y"], conf_x], dim=-1)
        return R, out["t"], out["size"].clamp_min(1e-3), conf
