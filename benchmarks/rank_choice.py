"""Benchmark for chapter 4: per-example gradients in one pass, and the cost of the subspace reduction.

Rows:
* per-example gradients of MiniLM's last-layer query/value weights for ``n`` snippets: ``ntk.per_example_jacobian``
  (vmap over jacrev) vs ``rank_choice.reduced_jacobian`` (one forward + one backward pass) with ``k = 384`` (the full
  gradients) and with the chapter's ``k``;
* one step of batched LoRA gradient descent (``ntk.lora_gd``) on the linearised problem, full 384×384 vs k×k.

    python benchmarks/rank_choice.py [--n 32] [--k 32] [--slices 40]

Prints a markdown table (seconds, wall clock; the machine's load is not controlled).
"""
from __future__ import annotations

import argparse
import time

import torch

from lorabook import data, ntk
from lorabook import rank_choice as rc


def timed(fn, repeat: int = 1):
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="training snippets")
    parser.add_argument("--k", type=int, default=32, help="subspace size")
    parser.add_argument("--slices", type=int, default=40, help="LoRA runs (ranks × initialisations) per step")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    split = data.rotten_tomatoes_split(args.n // 2, 10, seed=0)
    h, m = data.hidden_before_layer(split["train_texts"], 5)
    head = ntk.MiniLMHead(5)
    y = torch.as_tensor(split["train_labels"], dtype=torch.float64)
    rows = []
    t, _ = timed(lambda: ntk.per_example_jacobian(head, ntk.QV_NAMES, (h, m)))
    rows.append((f"per-example gradients, n = {args.n}, vmap(jacrev) (full 384×384)", t))
    eye = torch.eye(384, dtype=torch.float64)
    t, (f0, G_full) = timed(lambda: rc.reduced_jacobian(head, h, m, eye.expand(2, 384, 384), eye))
    rows.append((f"per-example gradients, n = {args.n}, one pass (full 384×384)", t))
    t, (U_L, U_R) = timed(lambda: rc.subspace_bases(head, h, m, args.k))
    rows.append((f"subspace bases, k = {args.k}", t))
    t, (f0, G_k) = timed(lambda: rc.reduced_jacobian(head, h, m, U_L, U_R))
    rows.append((f"per-example gradients, n = {args.n}, one pass ({args.k}×{args.k})", t))
    for name, G in (("384×384", G_full), (f"{args.k}×{args.k}", G_k)):
        base = ntk.LinearisedProblem(G, f0, y, 0.0, "logistic")
        prob = ntk.LinearisedProblem(G, f0, y, 0.3 * base.lambda_max(), "logistic")
        B0, A0, rk = ntk.lora_init(prob.shape, [args.rank], args.slices, init_std=0.02, zero_B=False,
                                   generator=torch.Generator().manual_seed(0))
        steps = 20
        t, _ = timed(lambda: ntk.lora_gd(prob, B0, A0, rk, steps, 1e-3))
        rows.append((f"LoRA GD step, {args.slices} runs of rank {args.rank}, {name}", t / steps))
    print("| operation | seconds |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3g} |")


if __name__ == "__main__":
    main()
