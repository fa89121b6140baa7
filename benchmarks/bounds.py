"""Timings of chapter 3's building blocks (lorabook.bounds) at one scale; prints a markdown table.

    .venv/bin/python benchmarks/bounds.py [--scale quick|default|paper] [--threads N] [--skip-minilm]

Targets (issue 5): the chapter runs in ≤ 60 s at ``quick`` and ≤ 4 min at ``default`` on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import lorabook as lb
from lorabook import bounds as bd


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


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

    t, _ = timed(lambda: [bd.kratsios_upper_bound(r=r, N=N, delta=0.05, T=2, W=16, d=4, D=1, M=1.0, nu=0.5,
                                                  eps=0.0253, theta_pre_inf=2.2)
                          for r in range(1, 16) for N in np.logspace(0, 8, 81).astype(int)])
    rows.append(("Theorem 1 bound, 15 ranks × 81 N", t, "1,215 evaluations"))
    for r, N in ((4, 16), (4, 128), (4, 512), (12, 128)):
        t, out = timed(lambda: bd.teacher_student_gaps(dict(base, r=r, N=N)))
        rows.append((f"teacher–student run r={r}, N={N}", t,
                     f"{base['draws']} draws × {base['steps']} steps, mean gap {out['gap'].mean():.3f}"))
    g = torch.Generator().manual_seed(0)
    mlp = bd.make_mlp(1, 8, 2, 1, generator=g, bias=False)
    mlp["weights"][-1] *= 0.1                        # as in Section 4: the witness must come from the adapter
    S = 3 * scale.pick(quick=64, default=400, paper=4000)
    Bs = bd.draw_factors(mlp, 2, S, nu=1.0, generator=g)
    t, s = timed(lambda: bd.output_witness(mlp, Bs, 1.0, target=2.0, steps=scale.pick(quick=200, default=400, paper=800)))
    rows.append(("Theorem 2 witnesses", t, f"{S} draws, {float((s >= 0.999).double().mean()):.3f} reach s ≥ 1"))
    if not args.skip_minilm:
        from lorabook import data

        t, _ = timed(lambda: (data.load_minilm(), data.label_directions()))
        rows.append(("load MiniLM", t, ""))
        texts = data.rotten_tomatoes_split(16, 1000, seed=0)["test_texts"]
        t, c = timed(lambda: bd.minilm_head_cache(texts))
        rows.append(("MiniLM cache, 1,000 snippets", t, f"{c['h'].shape[0]} tokens (dynamic padding)"))
        cfg = {"n_per_class": scale.pick(quick=[4, 16], default=[4, 16, 32], paper=[4, 16, 64, 256]),
               "n_test": scale.pick(quick=100, default=1000, paper=2000),
               "ranks": scale.pick(quick=[1, 16], default=[1, 2, 4, 8, 16], paper=[1, 2, 4, 8, 16, 32, 64]),
               "modes": list(bd.MODES), "steps": scale.pick(quick=30, default=60, paper=200), "lr": 5e-3, "seed": 0}
        t, _ = timed(lambda: bd.minilm_asymmetry_run(cfg))
        rows.append(("MiniLM asymmetry, one seed", t,
                     f"{3 * len(cfg['ranks'])} adapters × {len(cfg['n_per_class'])} N, {cfg['steps']} steps"))
    print(f"\nscale={scale.name} · {lb.describe().split(' · ', 1)[1]}\n")
    print("| step | seconds | notes |\n|---|---:|---|")
    for name, t, note in rows:
        print(f"| {name} | {t:.2f} | {note} |")


if __name__ == "__main__":
    main()
