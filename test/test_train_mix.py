"""clipose-train on several folders mixed by weight (CAMERA + REAL train, 3:1, as the field)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clipose_ros.data.synth import SynthConfig, generate
from clipose_ros.model.cache import CachedInstances
from clipose_ros.model.checkpoint import load_checkpoint
from clipose_ros.model.mix import DataSource, MixedInstances, MixSampler, parse_source
from clipose_ros.tools.train import load_config, main

SMALL_NET = dict(n_graph=128, n_coarse=32, k=8, supports=2, c1=16, c2=32, c3=32, c4=64,
                 coord_channels=16, head_hidden=64)


def test_data_sources_parse_weights_and_refuse_bad_ones():
    assert parse_source("runs/CAMERA/train:3") == DataSource(Path("runs/CAMERA/train"), 3.0)
    assert parse_source("runs/Real/train") == DataSource(Path("runs/Real/train"), 1.0)
    assert parse_source({"path": "a", "weight": 0.5}) == DataSource(Path("a"), 0.5)
    assert parse_source("odd:name/x") == DataSource(Path("odd:name/x"), 1.0)
    for bad in ("a:0", "a:-1", "a:nan"):
        with pytest.raises(ValueError, match="weight"):
            parse_source(bad)


def test_mix_sampler_draws_the_weighted_share_every_epoch():
    sizes, weights = [1000, 50], [3, 1]
    sampler = MixSampler(sizes, weights, seed=4, epoch_samples=400)
    assert sampler.counts == [300, 100] and len(sampler) == 400
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = np.array(list(sampler))
        real = idx >= 1000
        assert real.sum() == 100 and (~real).sum() == 300
        assert len(set(idx[~real].tolist())) == 300  # the big folder: no repeats
        assert Counter(idx[real].tolist()).most_common(1)[0][1] == 2  # the small: cycled twice
        per_batch = real[: 384].reshape(12, 32).mean(axis=1)
        assert 0.0 < per_batch.min() and per_batch.max() < 0.6  # mixed, not in blocks
        seen.append(idx)
    assert not np.array_equal(seen[0], seen[1])
    sampler.set_epoch(0)
    assert np.array_equal(np.array(list(sampler)), seen[0])  # reproducible
    ranks = [list(MixSampler(sizes, weights, 4, 400, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 200
    assert sorted(ranks[0] + ranks[1]) == sorted(seen[0].tolist())


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("mix_data")
    cfg = SynthConfig(max_objects=3, max_distractors=0, instances_per_category=2,
                      depth_noise=False)
    generate(out / "a", "train", 3, 2, 31, 0, cfg, progress=False)
    generate(out / "b", "train", 2, 2, 32, 0, cfg, progress=False)
    return out / "a" / "train", out / "b" / "train"


def test_cli_trains_on_two_folders_with_their_ratio(two_folders, tmp_path):
    a, b = two_folders
    cfg = load_config(None)
    cfg["net"].update(SMALL_NET)
    cfg["data"].update(val=None, val_fraction=0.0, epoch_samples=64)
    cfg["train"].update(epochs=1, batch_size=8, threads=1, device="cpu", stop_after_steps=3,
                        checkpoint_minutes=1000)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["--config", str(config), "--out", str(out), "--data", f"{a}:3", f"{b}:1",
          "--no-progress"])
    state = load_checkpoint(out / "checkpoints" / "last.pt", map_location="cpu")
    sources = state["data_description"]["sources"]
    assert [(s["path"], s["weight"]) for s in sources] == [(str(a), 3.0), (str(b), 1.0)]
    log = (out / "train.log").read_text()
    assert "gives 48 samples per epoch" in log and "gives 16 samples per epoch" in log
    # the samples the run drew: 3:1 by folder, and each item is its folder's instance
    parts = [CachedInstances(out / "cache" / f"mix_{i}") for i in (0, 1)]
    mixed = MixedInstances(parts)
    sampler = MixSampler(mixed.sizes, [3, 1], seed=cfg["train"]["seed"], epoch_samples=64)
    drawn = Counter(mixed.source_of(i) for i in sampler)
    assert drawn == {0: 48, 1: 16}
    j = int(mixed.offsets[1])
    item = mixed[j]
    assert int(item["source"]) == 1
    assert torch.equal(item["class_id"], parts[1][0]["class_id"])
    manifest = json.loads((out / "cache" / "mix_1" / "manifest.json").read_text())
    assert manifest["root"] == str(b)
