"""clipose-train: a short CPU training learns, resumes exactly, refuses bad checkpoints."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_clip import write_tiny_clip_config

from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.model.checkpoint import CheckpointError, load_checkpoint
from clipose_ros.model.clip_model import register_model_configs
from clipose_ros.model.export import export_checkpoint
from clipose_ros.model.loader import META_NAME
from clipose_ros.model.network import NetConfig, PoseNet
from clipose_ros.points import PointsConfig
from clipose_ros.tools.train import ConfigError, load_config, main, scarce_subset, train, validate

SMALL = NetConfig(
    n_graph=128, n_coarse=32, k=8, c1=16, c2=32, c3=32, c4=64, coord_channels=16, head_hidden=64
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_data")
    # Few shape instances per category: held-out scenes show known shapes in new poses.
    cfg = SynthConfig(max_objects=4, max_distractors=0, instances_per_category=2)
    generate(out, "train", 8, 3, 21, 0, cfg)
    return out / "train"


@pytest.fixture(autouse=True)
def _restore_threads():
    """train() sets torch's thread count (train.threads); other tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def small_config(data: Path, **train_overrides) -> dict:
    cfg = load_config(None)
    cfg["data"].update(train=str(data), val=None, val_fraction=0.25)
    cfg["net"] = SMALL.to_dict()
    cfg["optim"].update(lr=3e-3, warmup_steps=10)
    cfg["train"].update(
        epochs=2,
        batch_size=8,
        val_every=1000,
        threads=1,  # one thread: fast on a loaded machine, no pool waits
        num_workers=0,
        checkpoint_minutes=1000,
        val_max_frames=None,
        device="cpu",
    )
    cfg["train"].update(train_overrides)
    return cfg


def test_short_training_lowers_the_validation_rotation_error(data, tmp_path):
    cfg = small_config(data, epochs=25, batch_size=4)
    last = train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    assert last["step"] >= 200
    torch.manual_seed(cfg["train"]["seed"])
    untrained = validate(
        PoseNet(SMALL),
        tmp_path / "run" / "split" / "val",
        PointsConfig(),
        tmp_path / "untrained",
        CAMERA_INTRINSICS,
        None,
        torch.device("cpu"),
    )
    assert last["val_median_rot_deg"] < 0.6 * untrained["val_median_rot_deg"]
    assert last["val_median_trans_cm"] < untrained["val_median_trans_cm"]
    run = tmp_path / "run"
    assert (run / "metrics.csv").read_text().count("\n") == 26
    assert (run / "curves.png").stat().st_size > 0
    assert (run / "checkpoints" / "final.pt").is_file()
    assert (run / "val" / "epoch_025" / "metrics.json").is_file()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_continues_from_the_same_step(data, tmp_path):
    cfg = small_config(data, epochs=2)
    train(copy.deepcopy(cfg), tmp_path / "a", progress=False)
    stopped = copy.deepcopy(cfg)
    stopped["train"]["stop_after_steps"] = 3  # mid-epoch
    train(copy.deepcopy(stopped), tmp_path / "b", progress=False)
    state = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    train(
        copy.deepcopy(cfg),
        tmp_path / "b",
        resume=tmp_path / "b/checkpoints/last.pt",
        progress=False,
    )
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    assert a["global_step"] == b["global_step"]
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-6), k


def test_a_cut_aware_network_trains_on_the_cut_directions_and_exports(data, tmp_path):
    """``net.cut_input``: the batches carry each mask's cut direction into the network (its
    condition weights for it get gradients and move) and the exported file takes it."""
    cfg = small_config(data, epochs=1)
    cfg["net"]["cut_input"] = True
    train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    final = tmp_path / "run" / "checkpoints" / "final.pt"
    torch.manual_seed(cfg["train"]["seed"])
    start = PoseNet(NetConfig.from_dict(cfg["net"])).heads.trunk[0].weight[:, -3:]
    trained = weights(final)["heads.trunk.0.weight"][:, -3:]
    assert (trained - start).abs().max() > 1e-3  # Adam steps, not only the weight decay
    meta = export_checkpoint(final, tmp_path / "pose.pt")
    assert meta["net"]["cut_input"] is True


def test_bad_checkpoints_are_refused_with_the_file_name(data, tmp_path):
    cfg = small_config(data, epochs=1)
    train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    good = tmp_path / "run" / "checkpoints" / "last.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupt"):
        train(copy.deepcopy(cfg), tmp_path / "r2", resume=cut, progress=False)
    other = small_config(data, epochs=1)
    other["net"]["c4"] = 32
    with pytest.raises(CheckpointError, match="last.pt was trained with net"):
        train(other, tmp_path / "r3", resume=good, progress=False)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": np.zeros(3).tolist()}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a clipose-train checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(SystemExit, match="clipose-train: .*cut.pt"):
        main(
            [
                "--out",
                str(tmp_path / "r4"),
                "--data",
                str(data),
                "--resume",
                str(cut),
                "--set",
                "train.device=cpu",
                "--no-progress",
            ]
        )


def test_config_overrides_are_checked():
    cfg = load_config(None, ["train.epochs=3", "optim.lr=1e-4", "optim.weight_decay=0"])
    assert cfg["train"]["epochs"] == 3 and cfg["optim"]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="no key train.epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="not section.key=value"):
        load_config(None, ["epochs=3"])


def test_typed_config_refuses_typos_and_wrong_types_and_round_trips():
    from clipose_ros.model.train_config import TrainConfig

    cfg = TrainConfig.from_dict(load_config(None, ["optim.lr=1e-4", "train.max_minutes=3"]))
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.train.max_minutes, float)
    assert cfg.net.head == "hybrid" and cfg.net.point_norm and not cfg.net.norm
    assert not cfg.augment.ray_roll and cfg.augment.mask_erosion
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    bad_type = load_config(None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train\.epochs = 'three': expected int"):
        TrainConfig.from_dict(bad_type)
    typo = load_config(None)
    typo["net"]["supprts"] = 3
    with pytest.raises(ConfigError, match=r"'net': unknown keys \['supprts'\]"):
        TrainConfig.from_dict(typo)
    flag = load_config(None)
    flag["augment"]["ray_roll"] = "yes"
    with pytest.raises(ConfigError, match="augment.ray_roll"):
        TrainConfig.from_dict(flag)
    value = load_config(None, ["net.head=dense"])
    with pytest.raises(ConfigError, match="head must be"):
        TrainConfig.from_dict(value)


def clip_config(data: Path, tmp_path: Path, **train_overrides) -> dict:
    """``small_config`` with every CLIP term and deep prompt tuning on, a tiny random teacher."""
    path = write_tiny_clip_config(tmp_path, "clipose_test_train_clip")
    register_model_configs([path])
    cfg = small_config(data, **train_overrides)
    cfg["clip"].update(
        enabled=True,
        model="clipose_test_train_clip",
        pretrained=None,
        prompt_mode="deep",
        num_prompts=2,
        embed_dim=32,
        head_hidden=64,
        point_image_weight=0.5,
        point_text_weight=0.5,
        image_text_weight=0.5,
    )
    return cfg


def test_training_with_every_clip_term_exports_a_plain_pose_model(data, tmp_path):
    cfg = clip_config(data, tmp_path, epochs=1)
    last = train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    for term in ("point_image", "point_text", "image_text"):  # InfoNCE of batch 8: ~log 8
        assert 0.5 < last[f"loss_clip_{term}"] < 5.0, term
    assert last["peak_rss_mib"] > 0
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    kept = state["clip_branch"]  # prompts, heads, temperatures; never the frozen CLIP weights
    assert kept["prompts"].shape == (2, 2, 64)
    assert not any(k.startswith("clip.") for k in kept)
    cache = json.loads((tmp_path / "run" / "cache" / "manifest.json").read_text())
    assert cache["rgb_crop_size"] == 32  # crops cut at the teacher's input size

    exported = tmp_path / "pose.pt"
    export_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt", exported)
    script = textwrap.dedent(f"""
        import json, sys, torch
        files = {{"{META_NAME}": ""}}
        m = torch.jit.load({str(exported)!r}, map_location="cpu", _extra_files=files)
        R, t, size, conf = m(torch.rand(2, 1028, 3) * 0.1 + 0.6, torch.tensor([1, 6]))
        assert R.shape == (2, 3, 3) and bool(torch.isfinite(t).all())
        assert not any(k.startswith("clipose_ros") for k in sys.modules), "imported clipose_ros"
        print(json.dumps(json.loads(files["{META_NAME}"])))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    meta = json.loads(run.stdout.strip().splitlines()[-1])
    assert meta["clip_branch"]["model"] == "clipose_test_train_clip"
    assert meta["clip_branch"]["point_text_weight"] == 0.5


def test_resume_with_the_clip_branch_continues_exactly_and_checks_its_config(data, tmp_path):
    cfg = clip_config(data, tmp_path, epochs=1)
    train(copy.deepcopy(cfg), tmp_path / "a", progress=False)
    stopped = copy.deepcopy(cfg)
    stopped["train"]["stop_after_steps"] = 3
    train(copy.deepcopy(stopped), tmp_path / "b", progress=False)
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    other = copy.deepcopy(cfg)
    other["clip"]["point_text_weight"] = 0.0
    with pytest.raises(CheckpointError, match="last.pt was trained with clip"):
        train(other, tmp_path / "c", resume=last, progress=False)
    alone = small_config(data, epochs=1)  # the pose network alone cannot take it over either
    with pytest.raises(CheckpointError, match="same CLIP branch settings"):
        train(alone, tmp_path / "d", resume=last, progress=False)
    train(copy.deepcopy(cfg), tmp_path / "b", resume=last, progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    for part in ("model", "clip_branch"):
        for k, v in a[part].items():
            assert torch.allclose(v, b[part][k], atol=1e-5), (part, k)


def test_scarce_subset_takes_whole_scenes_reproducibly(data, tmp_path):
    a = scarce_subset(data, tmp_path / "a", 0.25, seed=0)
    b = scarce_subset(data, tmp_path / "b", 0.25, seed=0)
    scenes = sorted(p.name for p in data.iterdir() if p.is_dir())
    picked = sorted(p.name for p in a.iterdir())
    assert len(picked) == 2 and set(picked) <= set(scenes)
    assert picked == sorted(p.name for p in b.iterdir())
    for scene in picked:  # every file of a picked scene, as links to the originals
        files = sorted(f.name for f in (data / scene).iterdir())
        assert sorted(f.name for f in (a / scene).iterdir()) == files
        assert (a / scene / files[0]).resolve() == (data / scene / files[0]).resolve()
    with pytest.raises(ConfigError, match="train_fraction must be in"):
        scarce_subset(data, tmp_path / "c", 0.0, seed=0)
