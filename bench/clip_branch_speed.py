"""Cost of the CLIP branch per training step at real size (not a test: numbers depend on the
machine and on what else runs on it).

The branch is built the way ``clipose-train`` builds it (``build_clip_branch`` of a ``clip:``
section, every term on), by default around a ViT-B-16 with random weights (no hub here; the
cost does not depend on the weights). For one batch size and thread count it reports, as
medians over ``--steps`` steps after one warm-up step:

- text tower, cache cold: every prompt new (a pose-perturbed sample), the frozen text tower runs;
- text tower, cache warm: the same prompts again, features come from the cache;
- image tower forward, and forward + backward to the visual prompts (the backward runs through
  every block: the prompts enter at the first);
- the whole branch step (losses, backward, AdamW step of prompts, heads and temperatures),
  with new prompts and with cached ones.

Memory: the process's resident set size after loading and its peak, and per phase the peak
growth of the RSS in one call made after the timing, with freed memory handed back to the system
first (sampled every millisecond, as ``pose_speed.py`` does); CUDA: ``max_memory_allocated``.
Times measured beside other jobs are upper bounds; the load average is printed with them.

    .venv/bin/python bench/clip_branch_speed.py --batch 8 --threads 1 --steps 3 --out b.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pose_speed import PeakRss, rss_bytes
from scipy.spatial.transform import Rotation

from clipose_ros.model.clip_branch import TERMS, ClipBranch, build_clip_branch
from clipose_ros.model.network import NetConfig, PoseNet
from clipose_ros.model.prompts import pose_prompts

MiB = 2**20


def make_batch(batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Asymmetric instances with random poses (so every prompt is new) and random crops."""
    g = np.random.default_rng(seed)
    return {
        "class_id": torch.tensor(g.choice([3, 5, 6], batch)),  # camera, laptop, mug
        "R": torch.tensor(
            Rotation.random(batch, random_state=seed).as_matrix(), dtype=torch.float32
        ),
        "t": torch.tensor(g.uniform(-0.2, 0.2, (batch, 3)) + [0, 0, 0.8], dtype=torch.float32),
        "symmetric": torch.zeros(batch, dtype=torch.bool),
        "rgb_crop": torch.tensor(g.integers(0, 256, (batch, size, size, 3)), dtype=torch.uint8),
    }


def unmap_freed_memory() -> bool:
    """Make the resident set size follow live memory: glibc keeps freed blocks under its
    (growing) mmap threshold resident, so a phase that reuses what an earlier call freed would
    show no growth. A fixed 64 KiB threshold maps every sizeable tensor on its own and unmaps it
    when freed (slower: used for the memory pass only, after the timing), and ``malloc_trim``
    returns the small blocks earlier calls left in the heap. False off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(-3, 64 * 1024) == 1  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)
    return ok


class Phase:
    """Median seconds of one part of the step over repeated calls, and its peak memory growth
    in one separate call (RSS sampled every millisecond as in ``pose_speed.py``; CUDA:
    ``max_memory_allocated``)."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self.times: list[float] = []
        self.peak_mb = float("nan")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, record: bool, fn: Callable[..., object], *args: object) -> None:
        self._sync()
        start = time.perf_counter()
        fn(*args)
        self._sync()
        if record:
            self.times.append(time.perf_counter() - start)

    def memory(self, fn: Callable[..., object], *args: object) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with PeakRss() as mem:
            fn(*args)
            self._sync()
        grown = torch.cuda.max_memory_allocated() - base if cuda else mem.peak - mem.base
        self.peak_mb = grown / MiB

    def row(self, batch: int) -> dict[str, float | str]:
        s = statistics.median(self.times)
        return {
            "phase": self.name,
            "median_s": round(s, 3),
            "ms_per_sample": round(1e3 * s / batch, 1),
            "peak_extra_mb": round(self.peak_mb, 1),
        }


def bench(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    net_dim = PoseNet(NetConfig()).feature_dim
    section = {
        "enabled": True,
        "model": args.model,
        "pretrained": args.pretrained,
        "prompt_mode": args.prompt_mode,
        "num_prompts": args.num_prompts,
        **{f"{t}_weight": 0.1 for t in TERMS},
    }
    start = time.perf_counter()
    branch = build_clip_branch(section, net_dim, device)
    assert isinstance(branch, ClipBranch)
    load_s = time.perf_counter() - start
    rss_loaded = rss_bytes() / MiB
    branch.train()
    opt = torch.optim.AdamW(branch.trainable_parameters(), lr=1e-4)
    size, b = branch.image_size, args.batch
    phases: dict[str, Phase] = {}  # in step order

    def image_fb(crops: torch.Tensor) -> None:
        branch.image_head(branch.encode_image(branch.prepare_images(crops))).sum().backward()

    def image_f(crops: torch.Tensor) -> None:
        with torch.no_grad():
            branch.encode_image(branch.prepare_images(crops))

    def step(batch: dict[str, torch.Tensor]) -> None:
        feats = torch.randn(b, net_dim, device=device, requires_grad=True)
        opt.zero_grad(set_to_none=True)
        branch.batch_losses(feats, batch)["total"].backward()
        opt.step()

    def prompts(batch: dict[str, torch.Tensor]) -> list[str]:
        return pose_prompts(batch["class_id"].numpy(), batch["R"].numpy(), batch["t"].numpy())

    def calls(seed: int) -> list[tuple[str, Callable[..., object], object]]:
        """The phases in step order: a batch of new poses (new prompts: cold cache) for the
        towers, another for the two steps (the second finds its prompts cached)."""
        batch, fresh = make_batch(b, size, 2 * seed), make_batch(b, size, 2 * seed + 1)
        texts = prompts(batch)
        return [
            ("text, cache cold", branch.encode_text, texts),
            ("text, cache warm", branch.encode_text, texts),
            ("image forward", image_f, batch["rgb_crop"]),
            ("image forward+backward", image_fb, batch["rgb_crop"]),
            ("step, prompts new", step, fresh),
            ("step, prompts cached", step, fresh),
        ]

    for i in range(args.warmup + args.steps):
        for name, fn, arg in calls(i):
            phases.setdefault(name, Phase(name, device)).time(i >= args.warmup, fn, arg)
    live = True
    for name, fn, arg in calls(args.warmup + args.steps):
        live = unmap_freed_memory() and live  # and trim what earlier phases left in the heap
        phases[name].memory(fn, arg)
    clip_params = sum(p.numel() for p in branch.clip.parameters())
    trained = sum(p.numel() for p in branch.trainable_parameters())
    return {
        "model": args.model,
        "pretrained": args.pretrained,
        "prompt_mode": args.prompt_mode,
        "num_prompts": args.num_prompts,
        "image_size": size,
        "batch": b,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "steps": args.steps,
        "clip_params_m": round(clip_params / 1e6, 1),
        "trained_params_m": round(trained / 1e6, 2),
        "load_s": round(load_s, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "memory_follows_live_tensors": live,
        "rows": [p.row(b) for p in phases.values()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture")
    parser.add_argument("--pretrained", default=None, help="tag or file (default: random)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="measured steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt-mode", default="deep", choices=("none", "shallow", "deep"))
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = bench(args)
    print(
        f"CLIP branch {r['model']} ({r['clip_params_m']} M frozen, {r['trained_params_m']} M "
        f"trained), {r['image_size']} px, prompts {r['prompt_mode']} x {r['num_prompts']}, "
        f"batch {r['batch']}, {r['device']}, {r['threads']} threads, torch {r['torch']}"
    )
    print(
        f"load {r['load_s']} s; RSS after load {r['rss_after_load_mb']:.0f} MiB, process peak "
        f"{r['peak_rss_mb']:.0f} MiB; load average {r['load_average_before']} before, "
        f"{r['load_average_after']} after"
    )
    if r["load_average_before"] > 0.5:
        print("other jobs were running: the times are upper bounds")
    print(f"medians over {r['steps']} steps after warm-up")
    print("| phase | median s | ms per sample | peak extra MiB |")
    print("|---|---|---|---|")
    for row in r["rows"]:
        print(
            f"| {row['phase']} | {row['median_s']} | {row['ms_per_sample']} | "
            f"{row['peak_extra_mb']} |"
        )
    print(
        "peak extra: growth of the "
        + ("allocated CUDA memory" if r["device"].startswith("cuda") else "RSS")
        + " during one call over its start (the loaded model not included)"
        + ("" if r["memory_follows_live_tensors"] else "; freed memory not unmapped: too low")
    )
    if args.out:
        args.out.write_text(json.dumps(r, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
