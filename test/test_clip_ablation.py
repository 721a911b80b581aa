"""The ablation script goes on where it stopped: its full-data arms take hours on a CPU and
cross sessions, so a rerun must resume an unfinished training rather than start it again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ablation():
    spec = importlib.util.spec_from_file_location(
        "clip_ablation", ROOT / "scripts" / "clip_ablation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rerun_resumes_unfinished_training_and_skips_finished_steps(tmp_path):
    ablation = _ablation()
    run = tmp_path / "full_c_full"
    job = {"run": run, "train_args": ["--data", "train", "--epochs", "13"]}
    test_data = tmp_path / "test"

    def names(steps):
        return [name for name, _ in steps]

    assert names(ablation.remaining_steps(job, test_data)) == ["train", "export", "eval"]
    assert "--resume" not in ablation.remaining_steps(job, test_data)[0][1]

    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    train = ablation.remaining_steps(job, test_data)[0][1]
    assert train[-2:] == ["--resume", str(run / "checkpoints" / "last.pt")]
    assert train[train.index("--epochs") + 1] == "13"  # the same budget, not a new one

    (run / "checkpoints" / "final.pt").write_bytes(b"x")
    steps = ablation.remaining_steps(job, test_data)
    assert names(steps) == ["export", "eval"]
    assert str(run / "checkpoints" / "final.pt") in steps[0][1]

    (run / "pose.pt").write_bytes(b"x")
    assert names(ablation.remaining_steps(job, test_data)) == ["eval"]

    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    assert ablation.remaining_steps(job, test_data) == []
