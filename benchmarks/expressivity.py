"""Benchmark: the reference FNN grid of Zeng & Lee as batched programs, against a per-run baseline (chapter 1).

The grid: D = 16, frozen L = 2 ReLU layers, one-layer target, LoRA rank R = 1..16, 5 seeds,
lr ∈ {1e-2, 1e-3, 1e-4} × weight decay ∈ {0, 1e-4, 1e-3, 1e-2}, for a random and for a pretrained frozen
model: 2 × 960 = 1,920 runs of 5,000 Adam steps of batch 256 (pretraining, validation selection and the test
evaluations included, as in the chapter). Target: the whole grid ≤ 5 minutes on 2 idle CPU cores.

The baseline is written the way the reference code works: one Python process per configuration, an
``nn.Module`` (frozen FNN + LoRA factors + biases) with its own ``torch.optim.Adam``, 5,000 steps of batch 256,
a test evaluation at the end. A few baseline runs are timed in the same invocation and extrapolated to 1,920;
the reported ratio is measured, not assumed.

    python benchmarks/expressivity.py                          # full grid + 2 baseline runs of 5,000 steps
    python benchmarks/expressivity.py --steps 500 --baseline-steps 500   # shorter, both extrapolated by steps

Prints a markdown table (wall and CPU seconds; on a shared machine the CPU time is the load-independent one).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import torch

import lorabook as lb
from lorabook import expressivity as ex

FULL_STEPS = 5000
PRETRAIN_STEPS = 500
GRID = dict(ranks=list(range(1, 17)), seeds=5, lrs=[1e-2, 1e-3, 1e-4], wds=[0.0, 1e-4, 1e-3, 1e-2])

# one reference-style run: its own process, nn.Module, torch.optim.Adam, then a test evaluation
BASELINE = textwrap.dedent('''
    import math, sys, time
    import torch
    from torch import nn
    torch.set_num_threads(int(sys.argv[4]))
    rank, lr, steps = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    D, L = 16, 2
    g = torch.Generator().manual_seed(rank)

    class LoRAFNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = [torch.randn(D, D, generator=g) / math.sqrt(D) for _ in range(L)]
            self.A = nn.ParameterList([nn.Parameter(torch.randn(rank, D, generator=g) / math.sqrt(D))
                                       for _ in range(L)])
            self.B = nn.ParameterList([nn.Parameter(torch.zeros(D, rank)) for _ in range(L)])
            self.b = nn.ParameterList([nn.Parameter(0.1 * torch.randn(D, generator=g)) for _ in range(L)])

        def forward(self, x):
            for W, A, B, b in zip(self.W, self.A, self.B, self.b):
                x = torch.relu(x @ (W + B @ A).T + b)
            return x

    Wt, bt = torch.randn(D, D, generator=g) / math.sqrt(D), 0.1 * torch.randn(D, generator=g)
    target = lambda x: torch.relu(x @ Wt.T + bt)
    model = LoRAFNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        x = 2 * torch.rand(256, D, generator=g) - 1
        loss = (model(x) - target(x)).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = 2 * torch.rand(5000, D, generator=g) - 1
        test = (model(x) - target(x)).square().sum(-1).mean().item()
    print(time.process_time() - t0, time.perf_counter() - w0, test)
''')


def time_grid(steps: int, device) -> list[tuple[str, float, float]]:
    """Run the two halves of the grid (random, pretrained frozen model); (name, wall s, CPU s) each."""
    configs = ex.grid_configs(GRID["ranks"], GRID["lrs"], GRID["wds"])
    rows = []
    for name, pre in (("random", 0), ("pretrained", PRETRAIN_STEPS * steps // FULL_STEPS)):
        w0, c0 = time.perf_counter(), time.process_time()
        ex.fnn_grid_experiment(D=16, n_layers=2, n_target=1, configs=configs, seeds=GRID["seeds"], steps=steps,
                               batch=256, pretrain_steps=pre, seed=0, device=device, progress=name)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((name, time.perf_counter() - w0, time.process_time() - c0))
    return rows


def time_baseline(runs: int, steps: int, threads: int) -> tuple[float, float]:
    """Mean (wall s, CPU s) of one reference-style run at 5,000 steps, each in a fresh process: the process
    start-up is measured as is, the training loop is scaled from ``steps`` to 5,000."""
    walls, cpus = [], []
    f = FULL_STEPS / steps
    for i in range(runs):
        w0 = time.perf_counter()
        r0 = os.times()
        out = subprocess.run([sys.executable, "-c", BASELINE, str(4 + i), "1e-3", str(steps), str(threads)],
                             check=True, capture_output=True, text=True)
        r1 = os.times()
        loop_cpu, loop_wall, _ = (float(v) for v in out.stdout.split())
        wall = time.perf_counter() - w0
        cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
        walls.append(wall + (f - 1) * loop_wall)
        cpus.append(cpu + (f - 1) * loop_cpu)
    return sum(walls) / runs, sum(cpus) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=FULL_STEPS,
                        help="Adam steps run in the grid (if fewer, a second run at a third of them separates the fixed costs and the time is extrapolated to 5,000)")
    parser.add_argument("--baseline-runs", type=int, default=2, help="reference-style runs timed")
    parser.add_argument("--baseline-steps", type=int, default=FULL_STEPS,
                        help="steps of each baseline run (extrapolated to 5,000 if fewer)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.steps < 30 or args.baseline_steps < 10 or args.baseline_runs < 1:
        raise SystemExit("--steps must be ≥ 30, --baseline-steps ≥ 10, --baseline-runs ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = lb.device()
    n_runs = 2 * len(GRID["ranks"]) * len(GRID["lrs"]) * len(GRID["wds"]) * GRID["seeds"]
    grid = time_grid(args.steps, dev)
    if args.steps < FULL_STEPS:
        # fixed costs (instances, validation and test evaluation) do not scale with the steps: fit
        # time = fixed + per_step * steps through a second, shorter run of the grid
        short = time_grid(args.steps // 3, dev)
        k = (FULL_STEPS - args.steps) / (args.steps - args.steps // 3)
        full = [(n, w + k * (w - ws), c + k * (c - cs)) for (n, w, c), (_, ws, cs) in zip(grid, short)]
    else:
        full = grid
    g_wall, g_cpu = sum(r[1] for r in full), sum(r[2] for r in full)
    b_wall, b_cpu = time_baseline(args.baseline_runs, args.baseline_steps, torch.get_num_threads())
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device: {dev} ({where}), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}\n")
    print("| what | runs | steps run | wall (s) | CPU (s) | at 5,000 steps: wall (s) | CPU (s) |")
    print("|---|---|---|---|---|---|---|")
    for (name, w, c), (_, wf, cf) in zip(grid, full):
        print(f"| batched grid, {name} frozen model | {n_runs // 2} | {args.steps} | {w:.1f} | {c:.1f} | "
              f"{wf:.0f} | {cf:.0f} |")
    print(f"| batched grid, total | {n_runs} | {args.steps} | | | {g_wall:.0f} | {g_cpu:.0f} |")
    print(f"| reference-style run (own process, nn.Module, torch.optim.Adam), mean of {args.baseline_runs} | 1 | "
          f"{args.baseline_steps} | | | {b_wall:.1f} | {b_cpu:.1f} |")
    print(f"| reference-style grid, extrapolated | {n_runs} | | | | {b_wall * n_runs:,.0f} | {b_cpu * n_runs:,.0f} |")
    print(f"\nmeasured ratio (reference-style / batched): wall {b_wall * n_runs / g_wall:.0f}×, "
          f"CPU {b_cpu * n_runs / g_cpu:.0f}×; batched grid per run: {g_wall / n_runs:.3f} s wall, "
          f"{g_cpu / n_runs:.3f} s CPU")


if __name__ == "__main__":
    main()
