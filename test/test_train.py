"""clipose-train: a short CPU training learns, resumes exactly, refuses bad checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from clipose_ros.categories import CAMERA_INTRINSICS
from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.model.checkpoint import CheckpointError, load_checkpoint
from clipose_ros.model.network import NetConfig, PoseNet
from clipose_ros.points import PointsConfig
from clipose_ros.train import ConfigError, load_config, main, train, validate

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
