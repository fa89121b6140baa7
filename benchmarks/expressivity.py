"""Benchmark: the reference FNN grid of Zeng & Lee as batched programs, against a per-run baseline (chapter 1).

The grid: D = 16, frozen L = 2 ReLU layers, one-layer target, LoRA rank R = 1..16, 5 seeds,
lr ∈ {1e-2, 1e-3, 1e-4} × weight decay ∈ {0, 1e-4, 1e-3, 1e-2}, for a random and for a pretrained frozen
model: 2 × 960 = 1,920 runs of 5,000 Adam steps of batch 256 (pretraining, validation selection and the test
evaluations included, as in the chapter). Target: the whole grid ≤ 5 minutes on 2 idle CPU cores.

The two halves (random, pretrained frozen model) run in two single-threaded processes at once, one per core;
each reports its CPU time (user + sys, the whole process: start-up, instances, pretraining, training,
validation and test evaluations). On 2 idle cores the grid's wall time is the slower half's CPU time; that is
the estimate printed, next to the wall time measured (which on a shared machine is longer).

The baseline is written the way the reference code works: one Python process per configuration, an
``nn.Module`` (frozen FNN + LoRA factors + biases) with its own ``torch.optim.Adam``, 5,000 steps of batch 256,
a test evaluation at the end. A few baseline runs are timed in the same invocation and extrapolated to 1,920;
the reported ratio is measured, not assumed.

    python benchmarks/expressivity.py                          # full grid + 2 baseline runs of 5,000 steps
    python benchmarks/expressivity.py --steps 600 --baseline-steps 1000   # 600 and 200 steps, extrapolated

With fewer than 5,000 steps the grid also runs a third of them; the difference separates the fixed costs from
the per-step cost, and both are extrapolated to 5,000 steps (the pretraining scales with the steps, 500 of
5,000). Prints a markdown table (CPU and wall seconds; on a shared machine CPU time is the load-independent one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import torch

import lorabook as lb
from lorabook import expressivity as ex

FULL_STEPS = 5000
HALVES = ("random", "pretrained")
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


def run_half(name: str, steps: int, device) -> dict:
    """One half of the grid in this process: CPU (user+sys) and wall of the work, and of the whole process."""
    configs = ex.grid_configs(GRID["ranks"], GRID["lrs"], GRID["wds"])
    pre = PRETRAIN_STEPS * steps // FULL_STEPS if name == "pretrained" else 0
    w0, c0 = time.perf_counter(), time.process_time()
    ex.fnn_grid_experiment(D=16, n_layers=2, n_target=1, configs=configs, seeds=GRID["seeds"], steps=steps,
                           batch=256, pretrain_steps=pre, seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = os.times()
    return {"name": name, "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
            "process_cpu": t.user + t.system}


def time_grid(steps: int, threads: int, parallel: bool) -> tuple[list[dict], float]:
    """Run the two halves of the grid (random, pretrained frozen model), each in its own process, both at once
    (``parallel``) or one after the other; returns each half's timings and the wall time of the whole grid."""
    cmd = [sys.executable, __file__, "--steps", str(steps), "--threads", str(threads), "--half"]
    w0 = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(cmd + [name], stdout=subprocess.PIPE, text=True) for name in HALVES]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit("a half of the grid failed")
    else:
        outs = [subprocess.run(cmd + [name], check=True, capture_output=True, text=True).stdout for name in HALVES]
    wall = time.perf_counter() - w0
    return [json.loads(o.strip().splitlines()[-1]) for o in outs], wall


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
                        help="Adam steps run in the grid (if fewer, a second run at a third of them separates the "
                             "fixed costs and the time is extrapolated to 5,000)")
    parser.add_argument("--baseline-runs", type=int, default=2, help="reference-style runs timed")
    parser.add_argument("--baseline-steps", type=int, default=FULL_STEPS,
                        help="steps of each baseline run (extrapolated to 5,000 if fewer)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--sequential", action="store_true",
                        help="run the two halves one after the other (default: both at once, one per core)")
    parser.add_argument("--half", choices=HALVES, help=argparse.SUPPRESS)      # internal: one half, JSON out
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))
    dev = lb.device()
    if args.half:
        print(json.dumps(run_half(args.half, args.steps, dev)))
        return
    if args.steps < 30 or args.baseline_steps < 10 or args.baseline_runs < 1 or args.threads < 1:
        raise SystemExit("--steps must be ≥ 30, --baseline-steps ≥ 10, --baseline-runs ≥ 1, --threads ≥ 1")
    n_runs = 2 * len(GRID["ranks"]) * len(GRID["lrs"]) * len(GRID["wds"]) * GRID["seeds"]
    load0 = os.getloadavg()[0]
    grid, grid_wall = time_grid(args.steps, args.threads, not args.sequential)
    if args.steps < FULL_STEPS:
        # fixed costs (start-up, instances, validation and test evaluation) do not scale with the steps: fit
        # time = fixed + per_step * steps through a second, shorter run of the grid
        short, short_wall = time_grid(args.steps // 3, args.threads, not args.sequential)
        k = (FULL_STEPS - args.steps) / (args.steps - args.steps // 3)
        full = [{key: h[key] + k * (h[key] - hs[key]) for key in ("wall", "cpu", "process_cpu")}
                for h, hs in zip(grid, short)]
        full_wall = grid_wall + k * (grid_wall - short_wall)
        per_step = [(h["process_cpu"] - hs["process_cpu"]) / (args.steps - args.steps // 3)
                    for h, hs in zip(grid, short)]
    else:
        full, full_wall = grid, grid_wall
        per_step = [None, None]
    g_cpu = sum(h["process_cpu"] for h in full)
    idle_wall = max(h["process_cpu"] for h in full) if not args.sequential else g_cpu
    b_wall, b_cpu = time_baseline(args.baseline_runs, args.baseline_steps, args.threads)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{args.threads} CPU thread(s) per process"
    print(f"device: {dev} ({where}), torch {torch.__version__}, {os.cpu_count()} cores, load average "
          f"{load0:.2f} before / {os.getloadavg()[0]:.2f} after; halves "
          f"{'one after the other' if args.sequential else 'in two processes at once'}\n")
    print("| what | runs | steps run | wall (s) | CPU (s) | at 5,000 steps: CPU (s) | CPU per 1,000 run-steps (ms) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for h, f, ps in zip(grid, full, per_step):
        rate = "" if ps is None else f"{ps / (n_runs // 2) * 1e6:.2f}"
        print(f"| batched grid, {h['name']} frozen model (own process) | {n_runs // 2} | {args.steps} | "
              f"{h['wall']:.1f} | {h['process_cpu']:.1f} | {f['process_cpu']:.0f} | {rate} |")
    print(f"| batched grid, total | {n_runs} | {args.steps} | {grid_wall:.1f} | "
          f"{sum(h['process_cpu'] for h in grid):.1f} | {g_cpu:.0f} | |")
    print(f"| reference-style run (own process, nn.Module, torch.optim.Adam), mean of {args.baseline_runs} | 1 | "
          f"{args.baseline_steps} | | | {b_cpu:.1f} | {b_cpu / FULL_STEPS * 1e6:.0f} |")
    print(f"| reference-style grid, extrapolated | {n_runs} | | | | {b_cpu * n_runs:,.0f} | |")
    how = ("the sum of the halves' CPU times: they ran one after the other" if args.sequential else
           "the slower half's CPU time: each half is a single-threaded process on its own core")
    print(f"\nfull grid: {g_cpu:.0f} s CPU in all; wall on 2 idle cores ≈ {idle_wall:.0f} s = "
          f"{idle_wall / 60:.1f} min ({how}); wall measured here {full_wall:.0f} s (load average {load0:.1f}).")
    print(f"measured ratio (reference-style / batched): CPU {b_cpu * n_runs / g_cpu:.0f}×; on 2 idle cores "
          f"(reference-style runs two at a time) {b_cpu * n_runs / 2 / idle_wall:.0f}×; batched grid per run: "
          f"{g_cpu / n_runs:.3f} s CPU")


if __name__ == "__main__":
    main()
