"""Timings of chapter 3's building blocks (lorabook.bounds) at one scale; prints a markdown table.

    .venv/bin/python benchmarks/bounds.py [--scale quick|default|paper] [--threads N] [--skip-minilm]

Targets: the chapter runs in ≤ 60 s at ``quick`` and ≤ 4 min at ``default`` on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import lorabook as lb
from lorabook import bounds as bd


def timed(fn):
    """Run ``fn``; return its CPU time (process time: load-independent on a shared machine), wall time and result."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return (time.process_time() - c, time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="default", choices=["quick", "default", "paper"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scale = lb.get_scale(args.scale)
    base = bd.chapter_setting(scale)
    rows = []

    t, _ = timed(lambda: [bd.kratsios_upper_bound(r=r, N=int(N), delta=0.05, T=2, W=16, d=4, D=1, M=1.0,
                                                  nu=0.5, theta_pre_inf=2.2)
                          for r in range(1, 16) for N in np.logspace(0, 8, 81).astype(int)])
    rows.append(("Theorem 1 bound, 15 ranks × 81 N", t, "1,215 evaluations"))
    for r, N in ((4, 16), (4, 128), (4, 512), (12, 128)):
        t, out = timed(lambda: bd.teacher_student_gaps(dict(base, r=r, N=N)))
        rows.append((f"teacher–student run r={r}, N={N}", t,
                     f"{base['draws']} draws × {base['steps']} steps, mean gap {out['gap'].mean():.3f}"))
    asc = dict(base, r=4, N=128, draws=scale.pick(quick=8, default=16, paper=64),
               ascent_steps=scale.pick(quick=40, default=100, paper=300),
               n_ascent=scale.pick(quick=300, default=1000, paper=4000),
               n_eval=scale.pick(quick=1000, default=4000, paper=20000))
    t, out = timed(lambda: bd.teacher_student_gaps(asc))
    rows.append(("uniform-gap lower estimate, r=4, N=128", t, f"{asc['draws']} draws × 4 ascents × "
                 f"{asc['ascent_steps']} steps, mean {out['G_lower'].mean():.3f}"))
    g = torch.Generator().manual_seed(0)
    mlp = bd.make_mlp(1, 8, 2, 1, generator=g, bias=False)
    mlp["weights"][-1] *= 0.1                        # as in Section 4
    S = scale.pick(quick=200, default=2000, paper=20000)
    Bs = bd.draw_factors(mlp, 2, S, nu=1.0, generator=g)
    t, w = timed(lambda: bd.last_layer_witness(mlp, Bs))
    ok = float((w["size"] <= 1).double().mean())
    rows.append(("Theorem 2 witnesses (closed form)", t, f"{S} draws, {ok:.3f} admissible at M = 1"))
    if not args.skip_minilm:
        from lorabook import data

        t, _ = timed(lambda: (data.load_minilm(), data.label_directions()))
        rows.append(("load MiniLM", t, ""))
        pool = dict(n_per_class=scale.pick(quick=48, default=256, paper=1024),
                    n_dev=scale.pick(quick=100, default=300, paper=1000),
                    n_test=scale.pick(quick=150, default=700, paper=3000), split_seed=0)
        t, P = timed(lambda: bd.minilm_pool(**pool))
        n_all = P["train"]["n"] + P["dev"]["n"] + P["test"]["n"]
        rows.append(("MiniLM pool (train + dev + test features)", t, f"{n_all} snippets"))
        cfg = {"pool": pool, "seed": 0, "m": 0.05, "steps": scale.pick(quick=25, default=50, paper=200),
               "configs": [[m, r, 1e-3 if m != "B" else 3e-2] for m in bd.MODES for r in (1, 2, 4, 8)]
               + [["A", 5, 1e-3], ["B", 20, 3e-2]]}
        t, _ = timed(lambda: bd.minilm_asymmetry_run(cfg))
        rows.append(("MiniLM asymmetry, one seed", t, f"{len(cfg['configs'])} adapters, {cfg['steps']} steps"))
    print(f"\nscale={scale.name} · {lb.describe().split(' · ', 1)[1]}\n")
    print("| step | CPU (s) | wall (s) | notes |\n|---|---:|---:|---|")
    for name, (cpu, wall), note in rows:
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {note} |")


if __name__ == "__main__":
    main()
