"""Benchmark: the reference FNN grid of Zeng & Lee as one batched program (chapter 1).

The grid: D = 16, frozen L = 2 ReLU layers, one-layer target, LoRA rank R = 1..16, 5 seeds,
lr ∈ {1e-2, 1e-3, 1e-4} × weight decay ∈ {0, 1e-4, 1e-3, 1e-2} = 960 runs of 5,000 Adam steps, batch 256.
The reference code runs them one by one (about 40 s per run on a 2-core CPU). Target: the whole grid ≤ 5 minutes.

    python benchmarks/expressivity.py                 # time 200 steps of the full grid, extrapolate to 5,000
    python benchmarks/expressivity.py --steps 5000    # the whole grid
    python benchmarks/expressivity.py --scale default # the chapter's default-scale grid instead

Prints a markdown table.
"""
from __future__ import annotations

import argparse
import time

import torch

import lorabook as lb
from lorabook import expressivity as ex

REFERENCE_S_PER_RUN = 40.0
FULL_STEPS = 5000


def grid(scale: str) -> dict:
    if scale == "paper":
        return dict(ranks=list(range(1, 17)), seeds=5, lrs=[1e-2, 1e-3, 1e-4], wds=[0.0, 1e-4, 1e-3, 1e-2], steps=FULL_STEPS)
    if scale == "default":
        return dict(ranks=[1, 2, 4, 6, 8, 10, 12, 16], seeds=3, lrs=[1e-2, 3e-3], wds=[0.0], steps=1200)
    return dict(ranks=[1, 4, 8, 12], seeds=2, lrs=[1e-2], wds=[0.0], steps=400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="paper", choices=lb.config.SCALES)
    parser.add_argument("--steps", type=int, default=200, help="Adam steps actually run (the time is extrapolated)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit("--steps must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    g = grid(args.scale)
    dev = lb.device()
    configs = ex.grid_configs(g["ranks"], g["lrs"], g["wds"])
    n_runs = len(configs) * g["seeds"]
    gen = torch.Generator().manual_seed(0)
    inst = [ex.random_fnn_instance(16, 2, 1, gen) for _ in range(g["seeds"])]
    fw, fb, tw, tb = (torch.stack([t[i] for t in inst]) for i in range(4))
    ex.train_fnn_adapters(fw, fb, tw, tb, configs, steps=5, batch=256, generator=gen, device=dev)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ex.train_fnn_adapters(fw, fb, tw, tb, configs, steps=args.steps, batch=256, generator=gen, device=dev, progress="grid")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    full = wall * g["steps"] / args.steps
    run_steps_per_s = n_runs * args.steps / wall
    print(f"device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else str(torch.get_num_threads()) + ' CPU threads'}), torch {torch.__version__}\n")
    print("| grid | runs | steps run | wall (s) | run-steps / s | full grid, extrapolated (s) | runs / s at full length | reference (s, 40 s/run) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.scale} FNN (D=16, L=2) | {n_runs} | {args.steps} | {wall:.1f} | {run_steps_per_s:,.0f} | {full:.0f} | "
          f"{n_runs / full:.2f} | {n_runs * REFERENCE_S_PER_RUN * g['steps'] / FULL_STEPS:,.0f} | "
          f"{n_runs * REFERENCE_S_PER_RUN * g['steps'] / FULL_STEPS / full:,.0f}× |")


if __name__ == "__main__":
    main()
