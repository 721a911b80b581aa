"""The CLIPose ablation: three arms, each on the full and on a scarce training set.

Arms (one seed, one data split, one epoch budget per setting):

- ``a_pose``: the pose network alone (``clip.enabled: false``);
- ``b_text``: + point-text alignment with the pose-aware prompts (no image tower, no prompts);
- ``c_full``: + the image branch with deep visual prompt tuning (every term on: CLIPose).

Settings: ``full`` (every training scene but the held-out validation scenes) and ``scarce``
(a seeded ``--fraction`` of those scenes, ``data.train_fraction``). The split and the training
cache (with RGB crops at the teacher's input size, so that all arms read one cache) are made
once per setting before the arms start. Runs go ``--parallel`` at a time with ``--threads``
torch threads each. Every run is exported and scored with ``clipose-eval`` (ground-truth masks)
on ``--test-data``; its training cost (s per epoch, peak memory) comes from its metrics.csv.

Outputs in ``--out``: one folder per run (``<setting>_<arm>``: the clipose-train run, ``pose.pt``,
``eval/``), ``ablation.json``, ``ablation.md`` (the README table) and ``ablation.png``.
Re-running the command after an interruption goes on where it stopped: finished runs are not
repeated, a training with ``checkpoints/last.pt`` resumes from it, a finished training is only
exported and scored (``remaining_steps``).

``--record DIR`` (a folder in the repository, e.g. ``docs/ablation``) keeps one JSON row per
finished run there, with a fingerprint of the training and test data (labels and depth of
every frame) and the hash of the base config (a changed network starts a new table), and
builds the table and plot from every recorded row. A run folder does not outlive a machine
that starts clean each session, so the ablation then grows session by session: each session
regenerates the data with the same commands (the generator is seeded; a row whose
fingerprint differs is left out, with a warning), runs the arms it has time for and commits
the rows.

    .venv/bin/python scripts/clip_ablation.py --data data/synth_v2/train \\
        --test-data data/synth_v2/test --out runs/ablation --epochs-full 2 --epochs-scarce 10
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from clipose_ros.logs import log_to_terminal_and_file
from clipose_ros.model.cache import ensure_cache
from clipose_ros.model.checkpoint import config_hash
from clipose_ros.model.clip_model import load_clip
from clipose_ros.points import PointsConfig
from clipose_ros.tools.train import holdout_split, load_config, scarce_subset

log = logging.getLogger("clipose.ablation")

ARMS = {
    "a_pose": ["clip.enabled=false"],
    "b_text": [
        "clip.enabled=true",
        "clip.prompt_mode=none",
        "clip.point_image_weight=0",
        "clip.image_text_weight=0",
    ],
    "c_full": ["clip.enabled=true"],
}
ARM_NAMES = {
    "a_pose": "(a) pose network alone",
    "b_text": "(b) + point-text, pose-aware prompts",
    "c_full": "(c) + image branch, prompt tuning (CLIPose)",
}
METRICS = ("IoU50", "IoU75", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")


def prepare_setting(
    name: str, data: Path, out: Path, fraction: float, seed: int, crop: int, base: dict
) -> tuple[Path, Path, Path]:
    """Split (and subsample) once; build the shared cache; returns (train, val, cache)."""
    split = out / f"{name}_data"
    done = split / "split.json"  # a re-run (e.g. of other arms) reuses it: runs may read it
    if done.is_file():
        paths = json.loads(done.read_text())
        train, val = Path(paths["train"]), Path(paths["val"])
    else:
        train, val = holdout_split(data, split, float(base["data"]["val_fraction"]), seed)
        if fraction < 1.0:
            train = scarce_subset(train, split / "subset", fraction, seed)
        done.write_text(json.dumps({"train": str(train), "val": str(val), "data": str(data)}))
    cache = out / f"{name}_cache"
    points = PointsConfig(**base["points"])
    ensure_cache(train, cache, points, rgb_crop_size=crop, intrinsics=base["data"]["intrinsics"])
    return train, val, cache


def run_command(cmd: list[str], log_file: Path) -> subprocess.Popen:
    log.info("start: %s (log %s)", " ".join(cmd), log_file)
    with log_file.open("a") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


RUN_STAMP = "ablation_run.json"


def check_run_config(job: dict) -> None:
    """Refuse a run folder made with another base config: its checkpoints and scores belong to
    another network, and going on from them would record a row under the wrong config hash.
    The config is stamped into the folder when the run starts (folders from before the stamp
    are taken as they are)."""
    stamp = job["run"] / RUN_STAMP
    if not stamp.is_file() or job.get("config") is None:
        return
    made_with = json.loads(stamp.read_text()).get("config")
    if made_with != job["config"]:
        raise SystemExit(
            f"{job['run']} was made with base config {made_with}, this command's is "
            f"{job['config']}: move the folder away or give another --out"
        )


def stamp_run(job: dict) -> None:
    """Write the base config hash into the run folder (see :func:`check_run_config`)."""
    job["run"].mkdir(parents=True, exist_ok=True)
    stamp = job["run"] / RUN_STAMP
    if not stamp.is_file():
        stamp.write_text(json.dumps({"config": job.get("config")}) + "\n")


def run_name(setting: str, arm: str, train_seed: int, config_seed: int) -> str:
    """The run folder's name: ``<setting>_<arm>``, with ``_seed<N>`` for a seed other than the
    config's, so that naming the config's own seed finds its run instead of starting another."""
    suffix = "" if train_seed == config_seed else f"_seed{train_seed}"
    return f"{setting}_{arm}{suffix}"


def remaining_steps(job: dict, test_data: Path) -> list[tuple[str, list[str]]]:
    """The (name, command) steps a run still needs, so that an interrupted ablation goes on
    where it stopped: a training with a ``last.pt`` but no ``final.pt`` resumes from it (full-data
    arms take hours here and cross sessions), a finished training is only exported and scored."""
    run = job["run"]
    check_run_config(job)
    if (run / "eval" / "metrics.json").is_file():
        return []
    py = sys.executable
    final, last = run / "checkpoints" / "final.pt", run / "checkpoints" / "last.pt"
    pose = run / "pose.pt"
    train = [py, "-m", "clipose_ros.tools.train", "--out", str(run), "--no-progress",
             *job["train_args"]]  # fmt: skip
    if last.is_file():
        train += ["--resume", str(last)]
    export = [py, "-m", "clipose_ros.model.export", "--checkpoint", str(final), "--out", str(pose)]
    evaluate = [py, "-m", "clipose_ros.tools.evaluate", "--estimator", "clipose", "--model",
                str(pose), "--data", str(test_data), "--out", str(run / "eval")]  # fmt: skip
    if pose.is_file():
        return [("eval", evaluate)]
    if final.is_file():
        return [("export", export), ("eval", evaluate)]
    return [("train", train), ("export", export), ("eval", evaluate)]


def summarise(job: dict) -> dict:
    """Test metrics and training cost of a finished run."""
    run = job["run"]
    scores = json.loads((run / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    row = {
        "setting": job["setting"],
        "arm": job["arm"],
        "seed": job["seed"],
        "epochs": len(rows),
        "s_per_epoch": sum(float(r["epoch_s"]) for r in rows) / max(len(rows), 1),
        "peak_rss_mib": max(float(r["peak_rss_mib"]) for r in rows),
        "train_instances": job["instances"],
    }
    for mode in ("exact", "nocs"):
        mean = scores["modes"][mode]["classes"]["mean"]
        for k in METRICS:
            if mode == "exact" or k.startswith("IoU"):
                row[k if mode == "exact" else f"{k}_nocs"] = mean[k]
    return row


def _table_order(r: dict) -> tuple[bool, int, int]:
    """Full before scarce, arms (a)-(c), then seeds: the order of the table's rows."""
    return r["setting"] != "full", list(ARMS).index(r["arm"]), r["seed"]


def finished_runs(out: Path, jobs: list[dict], seed: int) -> list[dict]:
    """Every finished run of this command's settings and arms, other seeds' runs included."""
    found = []
    for job in jobs:
        base = job["run"].name.split("_seed")[0]
        for run in sorted(out.glob(f"{base}*")):
            tail = run.name[len(base) :]
            if (tail == "" or re.fullmatch(r"_seed\d+", tail)) and (
                run / "eval" / "metrics.json"
            ).is_file():
                run_seed = int(tail[len("_seed") :]) if tail else seed
                found.append({**job, "run": run, "seed": run_seed})
    return sorted(found, key=_table_order)  # each run matches one job: bases are unique


def data_fingerprint(folder: Path) -> str:
    """sha256 over every frame's label and depth file below ``folder`` (names and bytes): the
    same data regenerated on another machine gives the same fingerprint."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*_label.pkl")) + sorted(folder.rglob("*_depth.png")):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def recorded_rows(record: Path, rows: list[dict], fingerprint: dict[str, str]) -> list[dict]:
    """Write ``rows`` (this data's finished runs) to ``record``, one file per run, and return
    every recorded row made on data with this ``fingerprint``, earlier sessions' included."""
    record.mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = f"{row['setting']}_{row['arm']}_seed{row['seed']}.json"
        (record / name).write_text(json.dumps({**row, "data": fingerprint}, indent=1) + "\n")
    kept = []
    for path in sorted(record.glob("*_seed*.json")):
        row = json.loads(path.read_text())
        if row.get("data") != fingerprint:
            log.warning("%s was measured on other data (%s, this data %s): left out",
                        path, row.get("data"), fingerprint)
            continue
        kept.append(row)
    return sorted(kept, key=_table_order)


def table(rows: list[dict]) -> str:
    head = (
        "| setting | arm | seed | epochs | IoU50 | IoU75 | 5°2cm | 5°5cm | 10°2cm | 10°5cm "
        "| IoU50 (NOCS boxes) | s/epoch | peak MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        vals = " | ".join(f"{r[k]:.1f}" for k in METRICS)
        lines.append(
            f"| {r['setting']} ({r['train_instances']} inst.) | {ARM_NAMES[r['arm']]} "
            f"| {r['seed']} | {r['epochs']} | {vals} | {r['IoU50_nocs']:.1f} "
            f"| {r['s_per_epoch']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        sub = [r for r in rows if r["setting"] == setting]
        x = np.arange(len(METRICS))
        arms = list(dict.fromkeys(r["arm"] for r in sub))
        for i, arm in enumerate(arms):  # mean over seeds; the bars span min..max
            vals = np.array([[r[k] for k in METRICS] for r in sub if r["arm"] == arm])
            mean = vals.mean(0)
            err = np.stack([mean - vals.min(0), vals.max(0) - mean])
            label = f"{ARM_NAMES[arm]} ({len(vals)} seed{'s' if len(vals) > 1 else ''})"
            ax.bar(x + (i - 1) * 0.27, mean, 0.27, yerr=err, capsize=2, label=label)
        ax.set_xticks(x, METRICS)
        ax.set_ylabel("test mAP (%)")
        ax.set_title(f"{setting} training set ({sub[0]['train_instances']} instances)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="NOCS-format training folder")
    p.add_argument("--test-data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None, help="base clipose-train config")
    p.add_argument("--epochs-full", type=int, default=2)
    p.add_argument("--epochs-scarce", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.1, help="scarce share of the scenes")
    p.add_argument("--settings", default="full,scarce")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--set", action="append", default=[], help="extra clipose-train overrides")
    p.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="another training seed on the same split and cache (runs named <run>_seed<N>): "
        "the spread between seeds tells which differences between arms are noise",
    )
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        help="folder in the repository that keeps each finished run's row across sessions "
        "(table and plot from all of them; see the module docstring)",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log_to_terminal_and_file(args.out, "ablation.log")
    base = load_config(args.config, args.set)
    seed = int(base["train"]["seed"])
    # the teacher's input size (the architecture's, no weights needed): one cache for all arms
    crop = load_clip(base["clip"]["model"], None, warn_random=False).image_size
    jobs = []
    train_seed = seed if args.train_seed is None else args.train_seed
    for setting in args.settings.split(","):
        fraction = 1.0 if setting == "full" else args.fraction
        epochs = args.epochs_full if setting == "full" else args.epochs_scarce
        train, val, cache = prepare_setting(
            setting, args.data, args.out, fraction, seed, crop, base
        )
        instances = json.loads((cache / "manifest.json").read_text())["instances"]
        for arm in args.arms.split(","):
            overrides = [
                f"data.cache_dir={cache}",
                f"data.rgb_crop_size={crop}",
                f"train.threads={args.threads}",
                f"train.val_every={epochs + 1}",  # validate after the last epoch only
                *([f"train.seed={train_seed}"] if train_seed != seed else []),
                *args.set,
                *ARMS[arm],
            ]
            train_args = ["--data", str(train), "--val-data", str(val), "--epochs", str(epochs)]
            for o in overrides:
                train_args += ["--set", o]
            jobs.append(
                {
                    "setting": setting,
                    "arm": arm,
                    "run": args.out / run_name(setting, arm, train_seed, seed),
                    "train_args": train_args,
                    "instances": instances,
                    "seed": train_seed,
                    "config": config_hash(base),
                }
            )
    todo = [j for j in jobs if remaining_steps(j, args.test_data)]
    log.info("%d runs, %d to do, %d at a time", len(jobs), len(todo), args.parallel)
    running: list[tuple[dict, list[tuple[str, list[str]]], subprocess.Popen]] = []
    t0 = time.monotonic()
    while todo or running:
        while todo and len(running) < args.parallel:
            job = todo.pop(0)
            stamp_run(job)
            (name, cmd), *rest = remaining_steps(job, args.test_data)
            running.append((job, rest, run_command(cmd, job["run"] / f"{name}.out")))
        time.sleep(5)
        for entry in list(running):
            job, rest, proc = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            if proc.returncode != 0:
                log.error("%s failed (exit %d): see %s", job["run"], proc.returncode, job["run"])
                continue
            if rest:
                (name, cmd), *later = rest
                running.append((job, later, run_command(cmd, job["run"] / f"{name}.out")))
            else:
                log.info("%s done (%.0f min so far)", job["run"].name, (time.monotonic() - t0) / 60)
    rows = [summarise(j) for j in finished_runs(args.out, jobs, seed)]
    outputs = [args.out]
    if args.record is not None:
        fingerprint = {"train": data_fingerprint(args.data),
                       "test": data_fingerprint(args.test_data),
                       "config": config_hash(base)}  # the base network and training config
        rows = recorded_rows(args.record, rows, fingerprint)
        outputs.append(args.record)
    for folder in outputs:
        (folder / "ablation.json").write_text(json.dumps(rows, indent=1))
        (folder / "ablation.md").write_text(table(rows))
        if rows:
            plot(rows, folder / "ablation.png")
    print(table(rows))


if __name__ == "__main__":
    main()
