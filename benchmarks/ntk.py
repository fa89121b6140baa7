"""Benchmarks of chapter 2 (lorabook.ntk): timings and peak memory, printed as a markdown table.

    .venv/bin/python benchmarks/ntk.py [--scale quick|default|paper] [--repeat 3]

Targets from issue 4: per-example gradients of MiniLM's last-layer query and value weights for 32 snippets cost a
few MB (not the ~50 GB of the reference code, which stored them for whole layers), and the chapter runs in
≤ 4 min at ``default`` (≤ 60 s at ``quick``) on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

import lorabook as lb
from lorabook import data, ntk
from lorabook.config import SCALES


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", default=None, choices=SCALES)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    scale = lb.get_scale(args.scale)
    rows = []

    def row(name, seconds, note=""):
        rows.append((name, seconds, _rss_mb(), note))

    # synthetic problems
    gen = torch.Generator().manual_seed(0)
    m = scale.pick(quick=16, default=32, paper=64)
    base = ntk.synthetic_problem(20, 2, m, m, 0.0, generator=gen)
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, 0.1 * base.lambda_max())
    row(f"FISTA to rel. gap 1e-9 ({m}×{m}, KN = 40)",
        _time(lambda: ntk.proximal_gradient(prob, 50_000, tol=1e-9), args.repeat))
    d0 = ntk.min_norm_interpolant(base)
    row(f"rank reduction from rank {m} ({m}×{m}, KN = 40)", _time(lambda: ntk.reduce_rank(base, d0), args.repeat))
    B, A, rk = ntk.lora_init(prob.shape, list(range(1, 9)), 20, init_std=0.3, zero_B=False, generator=gen)
    row(f"LoRA GD, 160 slices × 1000 steps ({m}×{m})",
        _time(lambda: ntk.lora_gd(prob, B, A, rk, 1000, 0.5), 1))

    # SVT on MiniLM-sized matrices
    X = torch.randn(2, 384, 384, dtype=torch.float32, generator=gen)
    row("SVD of 2×384×384 (float32)", _time(lambda: torch.linalg.svd(X, full_matrices=False), args.repeat))
    row("SVT via Gram eigh, 2×384×384 (float32)", _time(lambda: ntk.svt(X, 1.0), args.repeat))

    # MiniLM linearisation
    split = data.rotten_tomatoes_split(16, 10, seed=0)
    h, msk = data.hidden_before_layer(split["train_texts"], 5)
    head = ntk.MiniLMHead(5)
    before = _rss_mb()
    t = time.perf_counter()
    f0, G = ntk.per_example_jacobian(head, ntk.QV_NAMES, (h, msk), chunk_size=8)
    row("per-example gradients, MiniLM last-layer Q and V, 32 snippets", time.perf_counter() - t,
        f"G {G.numel() * G.element_size() / 2**20:.0f} MiB; RSS +{_rss_mb() - before:.0f} MiB")
    y = torch.tensor(split["train_labels"], dtype=torch.float32)
    mp = ntk.LinearisedProblem(G, f0, y, 0.05, "logistic")
    row("10 FISTA steps on the MiniLM problem", _time(lambda: ntk.proximal_gradient(mp, 10), 1))
    delta = 1e-3 * torch.randn(2, 384, 384, generator=gen)
    row("linearised prediction (jvp), 32 snippets",
        _time(lambda: ntk.linearised_predict(head, ntk.QV_NAMES, delta, (h, msk)), args.repeat))

    print(f"\n{lb.describe()}\n")
    print("| benchmark | seconds (best of runs) | peak RSS (MiB) | note |")
    print("|---|---:|---:|---|")
    for name, sec, rss, note in rows:
        print(f"| {name} | {sec:.3f} | {rss:.0f} | {note} |")


if __name__ == "__main__":
    main()
