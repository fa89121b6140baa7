"""Mutation testing of the numerical core (``make mutation``; outside CI, it takes a while).

    python tools/mutation.py                       # every module of MODULES
    python tools/mutation.py linalg train          # some of them
    python tools/mutation.py --report-only         # rewrite the table from the results mutmut already holds

Runs mutmut (configured in ``pyproject.toml``) on the chosen modules, then writes the mutation score per module into
``benchmarks/results.md`` (between the ``mutation`` markers) and lists every surviving mutant. A survivor is either
killed by a new test or explained in ``benchmarks/mutation_equivalent.txt`` (one line per mutant:
``<mutant name>  <why it cannot be killed>``, e.g. an equivalent mutant); the script exits non-zero while any survivor
of a public function is unexplained. Lines marked ``# pragma: no mutate`` (progress-bar labels, message wording) are
not mutated.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("linalg", "train", "expressivity", "transfer", "ntk", "bounds")
EXPLAINED = ROOT / "benchmarks" / "mutation_equivalent.txt"
RESULTS = ROOT / "benchmarks" / "results.md"
START, END = "<!-- mutation:start -->", "<!-- mutation:end -->"
MUTMUT = [sys.executable, "-m", "mutmut"]


def explained() -> dict[str, str]:
    if not EXPLAINED.exists():
        return {}
    out = {}
    for line in EXPLAINED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.strip().partition(" ")
            out[name] = why.strip()
    return out


def results() -> dict[str, str]:
    text = subprocess.run(MUTMUT + ["results", "--all", "true"], capture_output=True, text=True, cwd=ROOT).stdout
    return dict(re.findall(r"^\s*(lorabook\.\S+): (.+)$", text, flags=re.M))


def public(name: str) -> bool:
    """Whether a mutant name ``lorabook.<module>.x_<function>__mutmut_<n>`` belongs to a public function."""
    func = name.split(".")[-1].split("__mutmut_")[0].split("ǁ")[-1].removeprefix("x_")
    return not func.startswith("_")


def main(argv: list[str]) -> int:
    report_only = "--report-only" in argv
    argv = [a for a in argv if a != "--report-only"]
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {MODULES}")
        return 2
    for m in ([] if report_only else modules):
        print(f"== mutmut on lorabook/{m}.py ==", flush=True)
        subprocess.run(MUTMUT + ["run", f"lorabook.{m}.*"], cwd=ROOT, stdout=subprocess.DEVNULL)
    status, why = results(), explained()
    rows = ["| module | mutants | not run | killed | survived | explained survivors | unexplained (public) | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    missing = []
    for m in MODULES:
        mine = {k: v for k, v in status.items() if k.startswith(f"lorabook.{m}.")}
        if not mine:
            continue
        c = Counter(mine.values())
        killed = c["killed"] + c["timeout"]
        # a mutant that no test reaches ("no tests") survives as surely as one the tests miss
        survivors = [k for k, v in mine.items() if v in ("survived", "no tests")]
        ok = [k for k in survivors if k in why]
        gaps = [k for k in survivors if k not in why and public(k)]
        missing += gaps
        tested = killed + len(survivors)
        if not tested:
            rows.append(f"| `{m}` | {len(mine)} | {len(mine)} | | | | | — |")
            continue
        score = f"{killed / tested:.0%}" if tested else "—"
        rows.append(f"| `{m}` | {len(mine)} | {c['not checked']} | {killed} | {len(survivors)} | {len(ok)} | "
                    f"{len(survivors) - len(ok)} ({len(gaps)}) | {score} |")
    table = "\n".join(rows)
    block = (f"{START}\n## Mutation testing\n\n`make mutation` (mutmut; {date.today()}). Score = killed / (killed + "
             f"survived); a mutant no test reaches counts as survived; *not run*: mutants without a result; every "
             f"survivor of a public function is killed by a test or explained in "
             f"`benchmarks/mutation_equivalent.txt`.\n\n{table}\n{END}")
    text = RESULTS.read_text() if RESULTS.exists() else ""
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), block, text, flags=re.S) if START in text else (
        text.rstrip() + "\n\n" + block + "\n")
    RESULTS.write_text(text)
    print(table)
    if missing:
        print(f"\n{len(missing)} unexplained survivor(s) of public functions (see `mutmut show <name>`):")
        print("\n".join(f"  {k}" for k in sorted(missing)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
