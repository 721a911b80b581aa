"""clipose-pretrain-clip on a tiny NOCS-format folder with a tiny open_clip architecture: crops
and captions, the evaluation arithmetic, the teacher file loaded back through open_clip's own
``pretrained=<path>`` route, resuming, and errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_clip import write_tiny_clip_config

from clipose_ros.model.clip_model import ClipModelError, check_checkpoint, load_clip
from clipose_ros.model.prompts import CATEGORIES
from clipose_ros.tools.clip_pretrain import (
    CropSet,
    PretrainConfig,
    colour_name,
    evaluate_teacher,
    extract_crops,
    main,
    pretrain,
)

TINY = "clipose_test_teacher32"
OTHER = "clipose_test_teacher32_wide"  # same layout, other widths: a "foreign" architecture
H, W = 96, 128
UPRIGHT = np.diag([1.0, -1.0, -1.0])  # object y up in the image, x to the right
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cfg")
    return [write_tiny_clip_config(folder, TINY, embed_dim=32),
            write_tiny_clip_config(folder, OTHER, embed_dim=32, vision_width=96)]


def write_frame(prefix: Path, objects: list[tuple[int, tuple[int, int, int], tuple]]) -> None:
    """Flat-coloured rectangles (class id, RGB, (y1, x1, y2, x2)) as one NOCS-format frame."""
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
            rotations=np.stack([UPRIGHT] * n),
            translations=np.array([[0.1 * i - 0.1, 0.0, 0.8] for i in range(n)]),
            model_list=[f"m{i}" for i in range(n)],
            handle_visibility=np.ones(n),
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


def test_pretrain_saves_a_teacher_open_clip_loads(data, configs, tmp_path):
    import open_clip

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
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= ev["zero_shot_accuracy"] <= 100 and ev["instances"] == 12
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,loss") and len(rows) == 3

    teacher = Path(result["teacher"])
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(teacher))
    saved = torch.load(teacher, weights_only=True)
    assert saved["clipose_meta"]["model_name"] == TINY
    assert saved["clipose_meta"]["eval"]["instances"] == 12
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    assert check_checkpoint(teacher, TINY)["format"] == "clipose-clip-teacher"

    # the CLI's evaluation of the saved teacher reproduces the run's numbers
    main(["--eval-only", str(teacher), "--test-data", str(data), "--out", str(tmp_path / "ev"),
          "--model", TINY, "--no-progress"])  # fmt: skip
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for k in ("zero_shot_accuracy", "retrieval_i2t_top1", "retrieval_t2i_top1"):
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
