"""Choose a segmentation score threshold per class from labelled validation frames (never the
test frames), for the node's ``class_score_thresholds``.

Input: a ``clipose-eval`` output folder run with a low ``--seg-score-threshold`` (0.1), so that
every detection a higher threshold would keep is in its ``results/``. Each detection is labelled
once: matched (greedily by score, 3D IoU > 0.5 in ``exact`` mode, same class) or not, and if
matched whether its pose is within 10 deg / 5 cm. Raising a class's threshold then only removes
that class's detections, so every threshold is scored from the one run (the class-agnostic NMS
of a higher threshold can keep a box a dropped one would have suppressed: rare, ignored here).

Per class it prints precision, recall, F1 and the share of objects found within 10 deg / 5 cm at
every threshold of the grid, picks the threshold of best F1 (ties: the higher), and draws the
curves into ``--plot``.

    clipose-eval --estimator clipose --model models/clipose_pose_clip.pt \\
        --data /work/data/synth_val4/test --masks yolo:models/yoloseg_coco_nocs.onnx \\
        --seg-score-threshold 0.1 --vis 0 --out /work/data/evals/val4_thr0.1
    .venv/bin/python scripts/choose_class_thresholds.py /work/data/evals/val4_thr0.1 \\
        --plot docs/class_thresholds.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clipose_ros import metrics
from clipose_ros.categories import CATEGORIES, is_symmetric
from clipose_ros.core.segmentation import parse_class_thresholds

GRID = np.round(np.arange(0.10, 0.701, 0.05), 2)


def label_detections(
    result: dict, match_iou: float = 0.5
) -> tuple[list[tuple[int, float, bool, bool]], np.ndarray]:
    """Every detection of one frame as (class id, score, matched at 3D IoU > ``match_iou``,
    pose within 10 deg / 5 cm), and the frame's ground-truth class ids."""
    fr = metrics.validate_result(result)
    g_ids, p_ids, scores = fr["gt_class_ids"], fr["pred_class_ids"], fr["pred_scores"]
    sym = np.array([is_symmetric(int(c), bool(h))
                    for c, h in zip(g_ids, fr["gt_handle_visibility"], strict=True)], bool)
    iou = metrics.iou_matrix(fr["pred_RTs"], fr["pred_scales"], fr["gt_RTs"], fr["gt_scales"],
                             sym, "exact")
    deg, cm = metrics.pose_error_matrix(fr["pred_RTs"], fr["gt_RTs"], sym)
    order = np.argsort(-scores, kind="stable")
    # the metrics' own greedy matching (by score, each to the free object of highest IoU)
    ok = (p_ids[order, None] == g_ids[None]) & (iou[order] > match_iou)
    match = metrics._greedy_match(-iou[order], ok)
    out = []
    for p, g in zip(order, match, strict=True):
        pose_ok = bool(g >= 0 and deg[p, g] <= 10.0 and cm[p, g] <= 5.0)
        out.append((int(p_ids[p]), float(scores[p]), bool(g >= 0), pose_ok))
    return out, g_ids


def threshold_table(folder: Path, match_iou: float = 0.5) -> dict[str, dict[str, np.ndarray]]:
    """Per class name: precision, recall, F1 and pose-found share (all in %) over :data:`GRID`,
    and the number of ground-truth objects."""
    detections, gt = [], []
    paths = sorted((folder / "results").glob("results_*.pkl"))
    if not paths:
        raise SystemExit(f"no results_*.pkl under {folder / 'results'}: run clipose-eval first")
    for path in paths:
        dets, g_ids = label_detections(metrics.load_result(path), match_iou)
        detections += dets
        gt += list(g_ids)
    det = np.array([d[:2] for d in detections], float).reshape(-1, 2)
    flags = np.array([d[2:] for d in detections], bool).reshape(-1, 2)
    gt = np.array(gt, int)
    table = {}
    for c, name in enumerate(CATEGORIES, start=1):
        n_gt = int((gt == c).sum())
        mine = det[:, 0] == c
        kept = mine[None] & (det[None, :, 1] >= GRID[:, None])  # (thresholds, detections)
        n_kept = kept.sum(axis=1)
        tp = (kept & flags[None, :, 0]).sum(axis=1)
        hit = (kept & flags[None, :, 1]).sum(axis=1)
        precision = 100.0 * tp / np.maximum(n_kept, 1)
        recall = 100.0 * tp / max(n_gt, 1)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
        table[name] = {"n_gt": n_gt, "precision": precision, "recall": recall, "f1": f1,
                       "found": 100.0 * hit / max(n_gt, 1), "detections": n_kept,
                       "true": tp, "hits": hit}
    return table


def best_threshold(row: dict[str, np.ndarray]) -> float:
    """The grid threshold of best F1 (the highest among equals)."""
    f1 = row["f1"]
    return float(GRID[np.flatnonzero(f1 >= f1.max() - 1e-9)[-1]])


def operating_point(table: dict[str, dict[str, np.ndarray]],
                    thresholds: dict[str, float]) -> dict[str, tuple[float, ...]]:
    """Per class and over all objects: (threshold, precision, recall, F1, found) in % at the
    given per-class thresholds (grid values)."""
    rows, totals = {}, np.zeros(4)
    for name, row in table.items():
        k = int(np.argmin(np.abs(GRID - thresholds[name])))
        rows[name] = (float(GRID[k]), row["precision"][k], row["recall"][k], row["f1"][k],
                      row["found"][k])
        totals += (row["detections"][k], row["true"][k], row["hits"][k], row["n_gt"])
    dets, tp, hits, n_gt = totals
    p, r = 100 * tp / max(dets, 1), 100 * tp / max(n_gt, 1)
    rows["all"] = (float("nan"), p, r, 2 * p * r / max(p + r, 1e-9), 100 * hits / max(n_gt, 1))
    return rows


def plot(table: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 7), sharex=True, sharey=True)
    for ax, (name, row) in zip(axes.flat, table.items(), strict=True):
        for key in ("precision", "recall", "f1", "found"):
            ax.plot(GRID, row[key], label=key if key != "found" else "found 10°5cm")
        ax.axvline(best_threshold(row), color="k", ls="--", lw=0.8)
        ax.axvline(0.5, color="grey", ls=":", lw=0.8)
        ax.set_title(f"{name} ({row['n_gt']} objects)")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("score threshold")
    for ax in axes[:, 0]:
        ax.set_ylabel("%")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Per-class score threshold (dashed: best F1; dotted: 0.5)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_folder", type=Path, help="clipose-eval --out of a low-threshold run")
    parser.add_argument("--match-iou", type=float, default=0.5,
                        help="3D IoU (exact) above which a detection is a true one")
    parser.add_argument("--against", type=float, default=0.5,
                        help="the one threshold to compare the per-class ones with")
    parser.add_argument("--thresholds", default=None,
                        help="compare these (CLASS:SCORE ...) instead of the ones chosen here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curves per class")
    args = parser.parse_args(argv)
    table = threshold_table(args.eval_folder, args.match_iou)
    chosen = {}
    for name, row in table.items():
        chosen[name] = best_threshold(row)
        print(f"\n{name}: {row['n_gt']} objects, best F1 at {chosen[name]:.2f}")
        print(" thr  dets  prec  recall    F1  found10°5cm")
        for k, thr in enumerate(GRID):
            print(f"{thr:.2f} {row['detections'][k]:5d} {row['precision'][k]:5.1f} "
                  f"{row['recall'][k]:6.1f} {row['f1'][k]:5.1f} {row['found'][k]:8.1f}")
    print("\nclass_score_thresholds: " + " ".join(f"{n}:{t:.2f}" for n, t in chosen.items()))
    if args.thresholds:  # score given ones (e.g. on test frames), not the ones chosen here
        chosen = {n: args.against for n in table} | parse_class_thresholds(args.thresholds)
    settings = {"one threshold": {n: args.against for n in table}, "per class": chosen}
    points = {label: operating_point(table, t) for label, t in settings.items()}
    print("\n| class | setting | threshold | precision | recall | F1 | found 10°5cm |\n"
          "|---|---|---|---|---|---|---|")
    for name in [*table, "all"]:
        for label, rows in points.items():
            thr, p, r, f1, found = rows[name]
            print(f"| {name} | {label} | {'' if np.isnan(thr) else f'{thr:.2f}'} | {p:.1f} | "
                  f"{r:.1f} | {f1:.1f} | {found:.1f} |")
    if args.plot:
        plot(table, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
