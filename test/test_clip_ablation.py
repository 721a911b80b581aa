"""The ablation script goes on where it stopped: its full-data arms take hours on a CPU and
cross sessions, so a rerun must resume an unfinished training rather than start it again."""

from __future__ import annotations

import pytest
from file_modules import load_file_module


def _ablation():
    return load_file_module("scripts/clip_ablation.py", "clip_ablation")


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


def _row(setting: str, arm: str, seed: int, score: float) -> dict:
    return {"setting": setting, "arm": arm, "seed": seed, "10deg5cm": score}


def test_recorded_rows_accumulate_across_sessions_on_the_same_data_only(tmp_path):
    """Machines start clean each session: the rows kept in the repository are the ablation's
    memory, and only rows measured on the same (regenerated) data are put together."""
    ablation = _ablation()
    data = tmp_path / "data"
    (data / "00000").mkdir(parents=True)
    (data / "00000" / "0000_label.pkl").write_bytes(b"label")
    (data / "00000" / "0000_depth.png").write_bytes(b"depth")
    same = tmp_path / "again"
    (same / "00000").mkdir(parents=True)
    for name in ("0000_label.pkl", "0000_depth.png"):
        (same / "00000" / name).write_bytes((data / "00000" / name).read_bytes())
    assert ablation.data_fingerprint(same) == ablation.data_fingerprint(data)
    fp = {"train": ablation.data_fingerprint(data), "test": "t"}
    record = tmp_path / "record"

    first = ablation.recorded_rows(record, [_row("full", "c_full", 0, 70.0)], fp)
    later = ablation.recorded_rows(record, [_row("full", "a_pose", 0, 71.0)], fp)
    assert [r["arm"] for r in first] == ["c_full"]
    assert [(r["arm"], r["10deg5cm"]) for r in later] == [("a_pose", 71.0), ("c_full", 70.0)]

    (same / "00000" / "0000_depth.png").write_bytes(b"other noise")
    other = {"train": ablation.data_fingerprint(same), "test": "t"}
    assert other != fp
    assert [r["arm"] for r in ablation.recorded_rows(record, [], other)] == []
    # a rerun of a run replaces its row
    again = ablation.recorded_rows(record, [_row("full", "a_pose", 0, 72.0)], fp)
    assert [(r["arm"], r["10deg5cm"]) for r in again] == [("a_pose", 72.0), ("c_full", 70.0)]


def test_run_folder_made_with_another_config_is_refused(tmp_path):
    """A default changed between sessions (a new loss) must not let a rerun pick up the old
    network's finished run and record it under the new config."""
    ablation = _ablation()
    run = tmp_path / "scarce_a_pose"
    old = {"run": run, "train_args": [], "config": "aaaa"}
    ablation.stamp_run(old)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    assert ablation.remaining_steps(old, tmp_path / "test") == []
    new = {**old, "config": "bbbb"}
    with pytest.raises(SystemExit, match="aaaa.*bbbb"):
        ablation.remaining_steps(new, tmp_path / "test")
    ablation.stamp_run(new)  # an existing stamp is never overwritten
    with pytest.raises(SystemExit):
        ablation.remaining_steps(new, tmp_path / "test")


def test_run_names_give_the_configs_seed_one_folder():
    ablation = _ablation()
    assert ablation.run_name("scarce", "a_pose", 0, 0) == "scarce_a_pose"
    assert ablation.run_name("scarce", "a_pose", 1, 0) == "scarce_a_pose_seed1"
    assert ablation.run_name("full", "c_full", 0, 3) == "full_c_full_seed0"
