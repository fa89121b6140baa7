"""Benchmark for chapter 5: the cost of one real-LoRA (peft) training run on MiniLM, per configuration.

Rows: one run of :func:`lorabook.real.peft_run` (adapters on all six layers, every step through the whole model)
and of :func:`lorabook.real.top_run` (adapters on the top layer(s) only, trained from the cached states of the
frozen lower layers), for several training-set sizes ``N``, ranks, modes and step counts; plus the one-off cost of
caching the lower-layer states (:func:`lorabook.real.states_before`). Times are CPU seconds (user + sys of this
process, load-independent) and wall seconds, single-threaded.

    OMP_NUM_THREADS=1 python benchmarks/real.py [--quick] [--append]

``--append`` adds the table as a new section at the top of ``benchmarks/results.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import torch

from lorabook import real

RESULTS = Path(__file__).with_name("results.md")


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c, time.perf_counter() - w, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small rows only")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/results.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = dict(classes=["fresh", "rotten"], n_dev=32, n_test=200, split_seed=0, targets=["query", "value"],
                batch_size=16, temperature=0.05, max_length=64, lr=1e-2, seed=0)
    full_rows = [(256, 4, "both", 12)] if args.quick else [(256, 4, "both", 12), (256, 4, "B", 12),
                                                          (256, 8, "A", 12)]
    top_rows = ([(32, 4, "both", 20), (512, 4, "both", 20)] if args.quick else
                [(32, 4, "both", 40), (128, 4, "both", 40), (512, 4, "both", 40), (512, 4, "B", 40),
                 (512, 4, "A", 40), (512, 8, "B", 40), (512, 4, "both", 160)])
    rows = []
    real.peft_run(dict(base, n_train=8, rank=4, mode="both", steps=1, n_test=8, n_dev=4))  # warm the model
    for n, r, mode, steps in full_rows:
        cfg = dict(base, n_train=n, rank=r, mode=mode, steps=steps)
        c, w, _ = timed(lambda: real.peft_run(cfg))
        rows.append(("all 6 layers (peft_run)", 2 * n, r, mode, steps, c, w))
    pool = max(n for n, *_ in top_rows)
    c, w, _ = timed(lambda: real.cached_split(("fresh", "rotten"), pool, 32, 200, 0, 5, 64))
    rows.append((f"states entering layer 5 of {2 * pool + 64 + 200} texts (once)", "", "", "", "", c, w))
    for n, r, mode, steps in top_rows:
        cfg = dict(base, n_train=n, n_pool=pool, rank=r, mode=mode, steps=steps, layers=[5], n_train_eval=128)
        c, w, _ = timed(lambda: real.top_run(cfg))
        rows.append(("top layer (top_run)", 2 * n, r, mode, steps, c, w))
    lines = ["| run | N | rank | mode | steps of 16 | CPU s | wall s |", "|---|---:|---:|---|---:|---:|---:|"]
    for name, n, r, mode, steps, c, w in rows:
        lines.append(f"| {name} | {n} | {r} | {mode} | {steps} | {c:.1f} | {w:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.append:
        load = os.getloadavg()[0]
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        head = (f"## {when} · CPU, {os.cpu_count()} cores ({platform.machine()}), load average {load:.1f} · "
                f"`benchmarks/real.py{' --quick' if args.quick else ''}`\n\n"
                "One real-LoRA training run on MiniLM (rank r on query/value, Adam, batches of 16, "
                "evaluation on 64 dev and 200 test snippets included), single-threaded. `N` is the number of "
                "training snippets (both classes).\n\n")
        text = RESULTS.read_text()
        marker = "\n## "
        i = text.find(marker)
        RESULTS.write_text(text[:i + 1] + head + table + "\n" + text[i:] if i >= 0 else text + "\n" + head + table)


if __name__ == "__main__":
    main()
