"""Wall time of the gradient-free transfer (chapter 1, section 6) against gradient LoRA on the same samples.

    .venv/bin/python benchmarks/transfer.py [--scale quick|default|paper] [--threads N]

Prints a markdown table: for each subgroup size n, the seconds of each step of the Stein transfer (moment,
row space + reduced-rank regression, completion) and of the gradient-LoRA baseline (all seeds and learning
rates in one batched Adam run), with the median relative error of Z for each.
"""
from __future__ import annotations

import argparse
import time

import torch

import lorabook as lb
from lorabook import transfer as tr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default=None, help="quick, default or paper (default: LORABOOK_SCALE)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these sizes)")
    args = parser.parse_args()
    scale = lb.get_scale(args.scale)
    torch.set_num_threads(args.threads)
    seeds = scale.pick(quick=3, default=6, paper=50)
    ns = scale.pick(quick=[1_000, 16_000], default=[1_000, 4_000, 16_000], paper=[1_000, 16_000, 64_000])
    steps = scale.pick(quick=300, default=500, paper=5_000)
    lrs = [1e-2, 3e-2]
    dev = lb.device()
    g = torch.Generator().manual_seed(0)
    teacher = tr.random_teacher(seeds, 16, [4, 16, 3], 2, generator=g).to(dev)
    x_all, y_all = tr.sample(teacher, ns[-1], generator=g)
    print(f"{lb.describe()} · seeds={seeds} · LoRA: {steps} Adam steps × {len(lrs)} lrs, batch 128\n")
    print("| n | Stein moment (s) | row space + RRR (s) | completion (s) | Stein error | gradient LoRA (s) | LoRA error |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        x, y = x_all[:, :n], y_all[:, :n]
        t0 = time.perf_counter()
        moments = tr.stein_moment(x, y)
        t1 = time.perf_counter()
        V, _ = tr.row_space(moments, 4)
        Z0 = tr.slides_estimate(teacher.M[0], V, 2)
        t2 = time.perf_counter()
        Z = tr.refine_in_row_space(x, y, teacher.M, V, Z0, 2)
        t3 = time.perf_counter()
        Zl = tr.fit_lora_first_layer(x, y, teacher.M, 2, lrs, steps, batch_size=128, generator=g)
        t4 = time.perf_counter()
        err = tr.relative_error(Z, teacher.Z).median().item()
        err_l = tr.relative_error(Zl, teacher.Z).median().item()
        print(f"| {n} | {t1 - t0:.3f} | {t2 - t1:.3f} | {t3 - t2:.3f} | {err:.3f} | {t4 - t3:.2f} | {err_l:.3f} |")


if __name__ == "__main__":
    main()
