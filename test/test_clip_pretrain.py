"""clipose-pretrain-clip on a tiny NOCS-format folder with a tiny open_clip architecture: crops
and captions, the evaluation arithmetic, the teacher file loaded back through open_clip's own
``pretrained=<path>`` route, resuming, and errors that name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_clip import write_tiny_clip_config

from clipose_ros.data.dataset import NocsInstanceDataset
from clipose_ros.model.clip_model import ClipModelError, check_checkpoint, load_clip
from clipose_ros.model.prompts import (
    CATEGORIES,
    pose_prompt,
    pose_prompts,
    rotation_from_euler_xyz,
)
from clipose_ros.tools import clip_pretrain
from clipose_ros.tools.clip_pretrain import (
    CropSet,
    PretrainConfig,
    PretrainError,
    colour_name,
    evaluate_teacher,
    extract_crops,
    main,
    pose_prompt_report,
    pretrain,
)

TINY = "clipose_test_teacher32"
OTHER = "clipose_test_teacher32_wide"  # same layout, other widths: a "foreign" architecture
H, W = 96, 128
UPRIGHT = np.diag([1.0, -1.0, -1.0])  # object y up in the image, x to the right
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cfg")
    return [write_tiny_clip_config(folder, TINY, embed_dim=32),
            write_tiny_clip_config(folder, OTHER, embed_dim=32, vision_width=96)]


def write_frame(
    prefix: Path,
    objects: list[tuple[int, tuple[int, int, int], tuple]],
    rotations: np.ndarray | None = None,
    handles: np.ndarray | None = None,
) -> None:
    """Flat-coloured rectangles (class id, RGB, (y1, x1, y2, x2)) as one NOCS-format frame;
    the labels say upright, handle visible, unless ``rotations`` / ``handles`` say otherwise."""
    from clipose_ros.data.nocs_format import FrameLabel, write_label, write_meta

    prefix.parent.mkdir(parents=True, exist_ok=True)
    color = np.full((H, W, 3), 128, np.uint8)
    mask = np.full((H, W), 255, np.uint8)
    for i, (_, rgb, (y1, x1, y2, x2)) in enumerate(objects):
        color[y1:y2, x1:x2] = rgb
        mask[y1:y2, x1:x2] = i + 1
    depth = np.where(mask < 255, 800, 0).astype(np.uint16)
    cv2.imwrite(f"{prefix}_color.png", color[:, :, ::-1])
    cv2.imwrite(f"{prefix}_mask.png", mask)
    cv2.imwrite(f"{prefix}_depth.png", depth)
    n = len(objects)
    write_meta(
        prefix, [(i + 1, c, f"{CATEGORIES[c - 1]}_{i}") for i, (c, _, _) in enumerate(objects)]
    )
    K = np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]])
    write_label(
        prefix,
        FrameLabel(
            instance_ids=np.arange(1, n + 1),
            class_ids=np.array([c for c, _, _ in objects]),
            bboxes=np.array([box for _, _, box in objects]),
            scales=np.full(n, 0.2),
            rotations=np.stack([UPRIGHT] * n) if rotations is None else rotations,
            translations=np.array([[0.1 * i - 0.1, 0.0, 0.8] for i in range(n)]),
            model_list=[f"m{i}" for i in range(n)],
            handle_visibility=np.ones(n) if handles is None else handles,
            nocs_extents=np.full((n, 3), 0.577),
            extra={"K": K},
        ),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nocs")
    layout = [
        [(1, RED, (10, 10, 60, 35)), (4, GREEN, (20, 50, 70, 80)), (6, BLUE, (30, 90, 60, 125))],
        [(6, RED, (5, 5, 40, 45)), (1, BLUE, (40, 60, 90, 85)), (4, GREEN, (10, 95, 50, 120))],
    ]
    for scene in range(2):
        for frame in range(2):
            write_frame(root / f"{scene:05d}" / f"{frame:04d}", layout[(scene + frame) % 2])
    return root


def test_colour_names():
    px = np.array([[230, 20, 20]] * 5 + [[20, 20, 230]] * 3, np.uint8)
    assert colour_name(px) == "red"
    assert colour_name(np.array([[20, 210, 20]], np.uint8)) == "green"
    assert colour_name(np.array([[245, 245, 245]], np.uint8)) == "white"
    assert colour_name(np.array([[10, 10, 12]], np.uint8)) == "black"
    assert colour_name(np.array([[128, 128, 128]], np.uint8)) == "grey"
    with pytest.raises(ValueError):
        colour_name(np.zeros((0, 3), np.uint8))


def test_crops_and_captions(data, tmp_path):
    crops = extract_crops(data, 32, cache_dir=tmp_path, progress=False)
    assert len(crops) == 12 and crops.crops.shape == (12, 32, 32, 3)
    caps = crops.captions()
    assert "a photo of a red bottle, seen from the side" in caps
    assert "a photo of a blue mug, seen from the side, handle pointing right" in caps
    # the crop's centre shows the object's colour
    j = caps.index("a photo of a green can, seen from the side")
    assert tuple(crops.crops[j, 16, 16]) == GREEN
    again = extract_crops(data, 32, cache_dir=tmp_path, progress=False)  # from the cache
    assert len(list(tmp_path.glob("crops_*.npz"))) == 1
    np.testing.assert_array_equal(again.crops, crops.crops)
    short = crops.captions(rng=np.random.default_rng(0), keep_prob=0.0)
    openings = ("a photo of a", "a rendering of a", "a")
    allowed = {f"{p} {c}" for p in openings for c in ("bottle", "can", "mug")}
    assert set(short) <= allowed and len(set(short)) > 3  # several openings drawn


class OracleModel(torch.nn.Module):
    """Image feature = one-hot of the crop's class (read from a pixel), text feature = one-hot
    of the category named: a model whose zero-shot accuracy is 100 % by construction."""

    def __init__(self, colour_to_class: dict[tuple, int]) -> None:
        super().__init__()
        self.lookup = colour_to_class

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = torch.zeros(len(x), len(CATEGORIES))
        for i, img in enumerate(x):
            out[i, self.lookup[round(float(img[0, 16, 16]), 3)]] = 1.0
        return out

    def encode_text(self, tokens: list[str], normalize: bool = False) -> torch.Tensor:
        out = torch.zeros(len(tokens), len(CATEGORIES))
        for i, text in enumerate(tokens):
            out[i, next(k for k, c in enumerate(CATEGORIES) if c in text)] = 1.0
        return out


def test_evaluation_arithmetic_with_an_oracle():
    crops = CropSet(
        crops=np.zeros((4, 32, 32, 3), np.uint8),
        class_ids=np.array([1, 4, 6, 1]),
        colours=np.array([0, 3, 5, 5]),
        elevations=np.array([1, 1, 1, 1]),
        directions=np.array([-1, -1, 1, -1]),
        handle=np.ones(4, bool),
        frames=np.array(["a", "a", "b", "b"]),
        R=np.stack([UPRIGHT] * 4).astype(np.float32),
        t=np.array([[0.0, 0.0, 0.5]] * 4, np.float32),
    )
    for i, v in enumerate([10, 40, 60, 10]):  # red channel encodes the class for the oracle
        crops.crops[i, 16, 16, 0] = v
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    lookup = {round(v / 255, 3): c for v, c in ((10, 0), (40, 3), (60, 5))}
    ev = evaluate_teacher(OracleModel(lookup), lambda texts: texts, crops, zero, one)
    assert ev["zero_shot_accuracy"] == 100.0
    assert ev["zero_shot_per_class"]["bowl"] is None
    assert ev["distinct_captions"] == 4
    # captions of both bottles name the same class: image->text ties resolve to the first
    # bottle caption, so the second bottle misses (3 of 4); text->image likewise
    assert ev["retrieval_i2t_top1"] == 75.0 and ev["retrieval_t2i_top1"] == 75.0
    assert ev["chance_i2t"] == 25.0


def test_pretrain_saves_a_teacher_open_clip_loads(data, configs, tmp_path, monkeypatch):
    import open_clip

    seen: list[tuple[float, list[str]]] = []  # the training steps' captions
    real = CropSet.captions

    def spy(self, idx=None, rng=None, keep_prob=1.0, pose_prompt_prob=0.0):
        out = real(self, idx, rng, keep_prob, pose_prompt_prob)
        if rng is not None:
            seen.append((pose_prompt_prob, out))
        return out

    monkeypatch.setattr(CropSet, "captions", spy)
    cfg = PretrainConfig(
        data=str(data), test_data=str(data), out=str(tmp_path / "run"), model=TINY,
        model_config=[str(p) for p in configs], epochs=2, batch_size=4, warmup_steps=2,
        stop_after_steps=2, checkpoint_minutes=100.0,
    )  # fmt: skip
    first = pretrain(cfg, progress=False)
    assert first["steps"] == 2 and (tmp_path / "run" / "last.pt").is_file()
    cfg.stop_after_steps, cfg.resume = 0, str(tmp_path / "run" / "last.pt")
    result = pretrain(cfg, progress=False)
    assert result["steps"] == 6  # 12 crops / batch 4 = 3 steps x 2 epochs, 2 of them before
    # the default share of pose prompts reached every step (24 captions, about half of them)
    assert len(seen) == 6 and {p for p, _ in seen} == {0.5}
    texts = [c for _, caps in seen for c in caps]
    n_pose = sum(c.startswith("a point-cloud model of a") for c in texts)
    assert 6 <= n_pose <= 18
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= ev["zero_shot_accuracy"] <= 100 and ev["instances"] == 12
    # two distinct pose prompts per category in this data: every category is ranked
    assert all(v["distinct_prompts"] == 2 for v in ev["pose_prompt_per_class"].values() if v)
    assert 0 <= ev["pose_retrieval_top1"] <= 100 and ev["pose_retrieval_chance_top1"] == 50.0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,loss") and len(rows) == 3
    assert "pose_retrieval_top1" in rows[0] and "pose_text_spread" in rows[0]

    teacher = Path(result["teacher"])
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(teacher))
    saved = torch.load(teacher, weights_only=True)
    assert saved["clipose_meta"]["model_name"] == TINY
    assert saved["clipose_meta"]["pretrain_config"]["pose_prompt_prob"] == 0.5
    assert saved["clipose_meta"]["eval"]["instances"] == 12
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    assert check_checkpoint(teacher, TINY)["format"] == "clipose-clip-teacher"

    # the CLI's evaluation of the saved teacher reproduces the run's numbers
    main(["--eval-only", str(teacher), "--test-data", str(data), "--out", str(tmp_path / "ev"),
          "--model", TINY, "--no-progress"])  # fmt: skip
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for k in ("zero_shot_accuracy", "retrieval_i2t_top1", "retrieval_t2i_top1",
              "pose_retrieval_top1", "pose_text_spread"):
        assert again[k] == pytest.approx(ev[k])

    # a teacher of another architecture, a foreign and a truncated file: named errors
    with pytest.raises(ClipModelError, match=f"{teacher}.*'{TINY}' teacher"):
        load_clip(OTHER, str(teacher))
    foreign = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    with pytest.raises(ClipModelError, match=f"{foreign} does not hold weights"):
        load_clip(TINY, str(foreign))
    other_arch = tmp_path / "other.pt"
    torch.save(open_clip.create_model(OTHER).state_dict(), other_arch)
    with pytest.raises(ClipModelError, match=f"{other_arch} does not hold.*another shape"):
        load_clip(TINY, str(other_arch))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher.read_bytes()[:1000])
    with pytest.raises(ClipModelError, match=f"cannot read CLIP checkpoint {truncated}"):
        load_clip(TINY, str(truncated))


def test_missing_checkpoint_is_named(data, configs, tmp_path):
    missing = tmp_path / "no_teacher.pt"
    with pytest.raises(ClipModelError, match=f"CLIP checkpoint not found: {missing}"):
        load_clip(TINY, str(missing), config_paths=configs)
    with pytest.raises(SystemExit, match=str(missing)):
        main(["--eval-only", str(missing), "--test-data", str(data), "--out", str(tmp_path),
              "--model", TINY, "--no-progress"])  # fmt: skip
    with pytest.raises(SystemExit, match="data folder not found"):
        main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--model", TINY])


# ------------------------------------------------------------------ pose prompts in pretraining

TURNED = [rotation_from_euler_xyz([0.0, 0.0, c]) @ UPRIGHT for c in (30.0, -60.0, 120.0)]


@pytest.fixture(scope="module")
def posed(tmp_path_factory) -> Path:
    """One frame: a bottle, a mug with its handle visible and one with it hidden, each turned."""
    root = tmp_path_factory.mktemp("posed")
    write_frame(
        root / "00000" / "0000",
        [(1, RED, (10, 10, 60, 35)), (6, GREEN, (20, 50, 70, 80)), (6, BLUE, (30, 90, 60, 125))],
        rotations=np.stack(TURNED),
        handles=np.array([1.0, 1.0, 0.0]),
    )
    return root


def test_crops_carry_the_pose_and_give_the_branch_prompts(posed, tmp_path):
    crops = extract_crops(posed, 32, cache_dir=tmp_path, progress=False)
    assert crops.R.dtype == np.float32 and crops.R.shape == (3, 3, 3)
    np.testing.assert_allclose(crops.R, np.stack(TURNED), atol=1e-6)
    np.testing.assert_allclose(crops.t[:, 0], [-0.1, 0.0, 0.1], atol=1e-6)
    # the label's pose, the mug with the hidden handle stated as symmetric
    expected = [
        pose_prompt("bottle", TURNED[0], [-0.1, 0.0, 0.8]),
        pose_prompt("mug", TURNED[1], [0.0, 0.0, 0.8], symmetric=False),
        pose_prompt("mug", TURNED[2], [0.1, 0.0, 0.8], symmetric=True),
    ]
    assert crops.pose_prompts() == expected
    assert "symmetric about its y axis" in expected[2] and "symmetric" not in expected[1]
    # exactly the text the CLIP branch builds from a pose-training batch of the same labels
    ds = NocsInstanceDataset(posed, train=False)
    batch = [ds[j] for j in range(len(ds))]
    branch = pose_prompts(
        torch.stack([b["class_id"] for b in batch]).numpy(),
        torch.stack([b["R"] for b in batch]).numpy(),
        torch.stack([b["t"] for b in batch]).numpy(),
        torch.stack([b["symmetric"] for b in batch]).numpy(),
    )
    assert branch == crops.pose_prompts()


def test_captions_hold_pose_prompts_at_the_configured_rate(posed, tmp_path):
    crops = extract_crops(posed, 32, cache_dir=tmp_path, progress=False)
    idx = np.tile(np.arange(3), 1000)
    own = crops.pose_prompts()
    for prob in (0.0, 0.3, 1.0):
        caps = crops.captions(idx, np.random.default_rng(1), keep_prob=0.5, pose_prompt_prob=prob)
        is_pose = np.array([c.startswith("a point-cloud model of a") for c in caps])
        assert abs(is_pose.mean() - prob) < 0.03, prob
        assert all(c == own[j] for c, j, p in zip(caps, idx, is_pose, strict=True) if p)
        assert all(c.split(",")[0].split()[-1] in CATEGORIES for c in caps)
    # without pose prompts, the draws (and so the captions) are those of the old runs
    a = crops.captions(idx[:30], np.random.default_rng(2), keep_prob=0.5)
    b = crops.captions(idx[:30], np.random.default_rng(2), keep_prob=0.5, pose_prompt_prob=0.0)
    assert a == b


def test_old_crop_cache_is_rebuilt(posed, tmp_path, monkeypatch):
    crops = extract_crops(posed, 32, cache_dir=tmp_path, progress=False)
    (cache,) = tmp_path.glob("crops_*.npz")
    key = cache.name
    # a version-1 cache (no R, t) has another key, so it is never found ...
    monkeypatch.setattr(clip_pretrain, "CROPS_VERSION", 1)
    assert clip_pretrain._crops_key(posed, 32, 1.2) not in key
    monkeypatch.undo()
    # ... and a file of other fields under the current key is rebuilt, not misread
    with np.load(cache) as z:
        old = {k: z[k] for k in z.files if k not in ("R", "t")}
    np.savez(cache, **old)
    again = extract_crops(posed, 32, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.R, crops.R)
    with np.load(cache) as z:
        assert {"R", "t"} <= set(z.files)
    assert [p.name for p in tmp_path.glob("crops_*.npz")] == [key]


def test_pose_prompt_report_arithmetic():
    # distinct prompts' text features (rows); mug rows 0-2, can rows 3-4 (equal), bottle row 5
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0],  # mugs A-D
                        [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # cans, bottle  # fmt: skip
    rows = np.array([0, 1, 0, 2, 3, 4, 5])  # C shares A's prompt
    ids = np.array([6, 6, 6, 6, 4, 4, 1])
    rep = pose_prompt_report(img, txt, rows, ids)
    mug, can = rep["pose_prompt_per_class"]["mug"], rep["pose_prompt_per_class"]["can"]
    assert rep["pose_prompt_per_class"]["bottle"] is None  # one prompt: nothing to rank
    # mug: own-prompt ranks 1 (A), 3 (B: rows 0 and 2 above), 3 (C), 2 (D: row 1 above)
    assert mug["distinct_prompts"] == 3 and mug["instances"] == 4
    assert mug["retrieval_top1"] == pytest.approx(25.0)
    assert mug["mean_rank"] == pytest.approx(2.25) and mug["chance_mean_rank"] == 2.0
    assert mug["text_spread"] == pytest.approx(1 - 1.4 / 3)
    assert mug["text_cos_std"] == pytest.approx(np.std([0.0, 0.6, 0.8]))
    # can: both prompts have the same feature: ties share rank and credit, i.e. chance
    assert can["text_spread"] == pytest.approx(0.0) and can["text_cos_std"] == pytest.approx(0)
    assert can["retrieval_top1"] == 50.0 and can["mean_rank"] == 1.5
    assert rep["pose_text_spread"] == pytest.approx((1 - 1.4 / 3) / 2)
    assert rep["pose_retrieval_top1"] == pytest.approx(100 * 2 / 6)
    assert rep["pose_retrieval_chance_top1"] == pytest.approx(100 * (4 / 3 + 1) / 6)
    assert rep["pose_retrieval_norm_rank"] == pytest.approx(3.5 / 6)
    empty = pose_prompt_report(img[:1], txt[:1], np.array([0]), np.array([6]))
    assert empty["pose_text_spread"] is None and empty["pose_retrieval_top1"] is None


ANGLES = (-150.0, -90.0, -20.0, 10.0, 45.0, 100.0, 170.0)


class PoseModel(torch.nn.Module):
    """Text feature of a pose prompt = (cos c, sin c, 0) of its third Euler angle, image feature
    the same of the angle the crop's first pixel indexes; other texts (captions) map to (0, 0,
    1). ``constant=True``: every text gets one feature, a text tower blind to the pose."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.constant = constant

    @staticmethod
    def _feature(deg: float) -> list[float]:
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0]

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = [self._feature(ANGLES[round(float(im[0, 0, 0]) * 255)]) for im in x]
        return torch.tensor(feats, dtype=torch.float32)

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        out = []
        for text in texts:
            found = re.search(r"Euler angles <[^,]+, [^,]+, ([^>]+)>", text)
            out.append([0.0, 0.0, 1.0] if self.constant or not found
                       else self._feature(float(found.group(1))))
        return torch.tensor(out, dtype=torch.float32)


def test_evaluation_reports_pose_knowledge_of_the_text_tower():
    n = len(ANGLES)
    crops = CropSet(
        crops=np.zeros((n, 8, 8, 3), np.uint8),
        class_ids=np.full(n, 6),
        colours=np.zeros(n, np.int64),
        elevations=np.ones(n, np.int64),
        directions=np.full(n, -1),
        handle=np.ones(n, bool),
        frames=np.array(["f"] * n),
        R=np.stack([rotation_from_euler_xyz([0.0, 0.0, c]) for c in ANGLES]).astype(np.float32),
        t=np.array([[0.0, 0.0, 0.6]] * n, np.float32),
    )
    crops.crops[:, 0, 0, 0] = np.arange(n)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    knows = evaluate_teacher(PoseModel(), lambda texts: texts, crops, zero, one)
    assert knows["pose_retrieval_top1"] == 100.0 and knows["pose_retrieval_norm_rank"] == 0.0
    assert knows["pose_text_spread"] > 0.5 and knows["pose_text_cos_std"] > 0.1
    assert knows["pose_retrieval_chance_top1"] == pytest.approx(100 / n)
    blind = evaluate_teacher(PoseModel(constant=True), lambda texts: texts, crops, zero, one)
    assert blind["pose_text_spread"] == pytest.approx(0.0, abs=1e-6)
    assert blind["pose_retrieval_top1"] == pytest.approx(100 / n)
    assert blind["pose_prompt_per_class"]["mug"]["mean_rank"] == pytest.approx((n + 1) / 2)
    assert blind["pose_retrieval_norm_rank"] == pytest.approx(0.5)


def test_cli_flag_sets_pose_prompt_prob(data, tmp_path, monkeypatch):
    with pytest.raises(PretrainError, match="pose_prompt_prob"):
        pretrain(PretrainConfig(data=str(data), out=str(tmp_path), pose_prompt_prob=1.5))
    got: list[PretrainConfig] = []
    monkeypatch.setattr(clip_pretrain, "pretrain", lambda cfg, progress: got.append(cfg))
    main(["--data", str(data), "--out", str(tmp_path / "a"), "--pose-prompt-prob", "0.25"])
    main(["--data", str(data), "--out", str(tmp_path / "b")])
    assert [c.pose_prompt_prob for c in got] == [0.25, 0.5]


def test_compact_teacher_is_small_and_gives_the_learnt_texts_their_features(
    data, configs, tmp_path, monkeypatch
):
    """The ``.xz`` teacher (the form the repository keeps): float16, the token rows no caption
    reached set to zero, compressed; unpacked once into the cache folder, it gives the training
    captions the features of the full weights."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen: list[str] = []
    real = CropSet.captions

    def spy(self, idx=None, rng=None, keep_prob=1.0, pose_prompt_prob=0.0):
        out = real(self, idx, rng, keep_prob, pose_prompt_prob)
        seen.extend(out if rng is not None else [])
        return out

    monkeypatch.setattr(CropSet, "captions", spy)
    cfg = PretrainConfig(
        data=str(data), test_data=str(data), out=str(tmp_path / "run"), model=TINY,
        model_config=[str(p) for p in configs], epochs=1, batch_size=4, warmup_steps=2,
        checkpoint_minutes=100.0, save=str(tmp_path / "teacher.pt.xz"),
    )  # fmt: skip
    packed = Path(pretrain(cfg, progress=False)["teacher"])
    full = load_clip(TINY, str(tmp_path / "run" / "last.pt"))  # the same weights, float32
    compact = load_clip(TINY, str(packed))
    assert Path(compact.pretrained).parent == tmp_path / "cache" / "clipose_ros"
    saved = torch.load(compact.pretrained, weights_only=True)
    rows = saved["state_dict"]["token_embedding.weight"]
    assert rows.dtype == torch.float16
    learnt = rows.abs().sum(dim=1) > 0
    assert 0 < int(learnt.sum()) == saved["clipose_meta"]["compact"]["token_rows_learnt"]
    assert int(learnt.sum()) < len(learnt) // 10
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": full.model.state_dict()}, plain)
    assert packed.stat().st_size < plain.stat().st_size / 3

    tokens = compact.tokenizer(sorted(set(seen)))
    # every token of a training caption was learnt (0 pads after the end token: no gradient,
    # no effect on the features)
    assert learnt[tokens[tokens > 0].unique()].all()
    with torch.no_grad():
        a = full.model.encode_text(tokens, normalize=True)
        b = compact.model.encode_text(tokens, normalize=True)
    assert (a - b).abs().max() < 2e-2 and ((a * b).sum(dim=1) > 0.999).all()

    corrupt = tmp_path / "corrupt.pt.xz"
    corrupt.write_bytes(packed.read_bytes()[:500])
    with pytest.raises(ClipModelError, match=f"cannot unpack CLIP checkpoint {corrupt}"):
        load_clip(TINY, str(corrupt))
