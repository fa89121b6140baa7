"""Time the book: every notebook at the chosen scales (wall time, peak memory), the `make test` stages, the install.

    .venv/bin/python benchmarks/book.py --scale quick default          # notebooks at two scales
    .venv/bin/python benchmarks/book.py --stages                       # unit / pairing / nbval stages of `make test`
    .venv/bin/python benchmarks/book.py --install                      # a fresh venv + `make env`-style install
    .venv/bin/python benchmarks/book.py --scale quick --only 02_ntk    # notebooks whose path contains a string

Each notebook runs in its own process (nbclient, kernel from this environment, cache off), so the peak resident
memory reported is that of the process tree that executed it. Results go to ``benchmarks/results.md`` (a markdown
table per run, newest first) and to the terminal.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results.md"
EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


def run_measured(cmd: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS of its process tree in MiB, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-3000:])
    return wall, usage.ru_maxrss / 1024, proc.returncode


def environment(scale: str | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(MPLBACKEND="Agg", LORABOOK_CACHE="off", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if scale:
        env["LORABOOK_SCALE"] = scale
    return env


def device_line() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover
        pass
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def notebooks(only: str | None) -> list[Path]:
    nbs = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return [p for p in nbs if not only or only in str(p.relative_to(ROOT))]


def bench_notebooks(scales: list[str], only: str | None) -> list[str]:
    rows = ["| notebook | scale | wall time (s) | peak memory (MiB) | status |", "|---|---|---:|---:|---|"]
    totals = {}
    for scale in scales:
        for nb in notebooks(only):
            rel = nb.relative_to(ROOT)
            wall, rss, rc = run_measured([sys.executable, "-c", EXECUTE, str(nb), str(nb.parent)], environment(scale))
            totals[scale] = totals.get(scale, 0.0) + wall
            rows.append(f"| {rel} | {scale} | {wall:.1f} | {rss:.0f} | {'ok' if rc == 0 else 'FAILED'} |")
            print(rows[-1], flush=True)
    rows += [f"| **all notebooks** | {s} | **{t:.1f}** | | |" for s, t in totals.items()]
    return rows


def bench_stages() -> list[str]:
    rows = ["| `make test` stage | wall time (s) | status |", "|---|---:|---|"]
    total = 0.0
    for stage in ("unit", "pairing", "nbval"):
        wall, _, rc = run_measured(["make", stage], environment())
        total += wall
        rows.append(f"| make {stage} | {wall:.1f} | {'ok' if rc == 0 else 'FAILED'} |")
        print(rows[-1], flush=True)
    rows.append(f"| **make test (after set-up)** | **{total:.1f}** | |")
    return rows


def bench_install() -> list[str]:
    """Time a from-scratch install into a temporary copy of the repository (network: PyPI)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "lorabook"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", "_build", ".cache", ".git"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
        wall, _, rc = run_measured(["make", "env"], env, cwd=work)
    return ["| step | wall time (s) | status |", "|---|---:|---|", f"| make env (fresh .venv) | {wall:.0f} | {'ok' if rc == 0 else 'FAILED'} |"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", nargs="*", default=[], choices=["quick", "default", "paper"])
    ap.add_argument("--only", help="only notebooks whose path contains this string")
    ap.add_argument("--stages", action="store_true", help="time the stages of `make test`")
    ap.add_argument("--install", action="store_true", help="time a fresh install (slow)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not (args.scale or args.stages or args.install):
        ap.error("nothing to do: give --scale, --stages and/or --install")
    sections = []
    if args.install:
        sections.append(bench_install())
    if args.stages:
        sections.append(bench_stages())
    if args.scale:
        sections.append(bench_notebooks(args.scale, args.only))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"## {stamp} · {device_line()} · torch threads default\n\n" + "\n\n".join("\n".join(s) for s in sections) + "\n"
    old = args.out.read_text() if args.out.exists() else "# Benchmark results\n\nNewest first. Written by `benchmarks/book.py`.\n"
    head, _, rest = old.partition("\n## ")
    args.out.write_text(head.rstrip() + "\n\n" + block + ("\n## " + rest if rest else ""))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
