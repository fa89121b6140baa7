"""Keep each chapter's ``py:percent`` script and its ``.ipynb`` paired.

    python tools/notebooks.py build chapters/00_lora_primer.py [...]   # script -> executed, stripped notebook
    python tools/notebooks.py check                                     # every script has a notebook that agrees

``build`` runs the script as a notebook at ``LORABOOK_SCALE=quick`` and keeps only the outputs nbval
compares (cells tagged ``nbval-check-output``: ``# %% tags=["nbval-check-output"]`` in the script), so the
committed notebooks stay small and diff cleanly; the book executes notebooks itself (jupyter-cache). ``check`` is
what the test suite runs: pairs agree (code and tags), no nbval marker is left in code, and no code line is wider
than the book's code column (``MAX_WIDTH`` characters).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHECK = "nbval-check-output"
MAX_WIDTH = 95  # characters of code the HTML theme shows without a horizontal scroll bar
# scripts whose code is still being brought within MAX_WIDTH (the width check skips them until they are)
WIDTH_PENDING: set[str] = set()


def scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "chapters").rglob("*.py") if ".ipynb_checkpoints" not in p.parts)


def code_cells(nb) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells if c.cell_type == "code"]


def code_problems(py: Path) -> list[str]:
    """nbval markers written as comments (they belong in cell tags) and code lines wider than ``MAX_WIDTH``."""
    rel, problems = py.relative_to(ROOT), []
    for i, (source, _) in enumerate(code_cells(jupytext.read(py))):
        for line in source.splitlines():
            if "NBVAL_" in line:
                problems.append(f"{rel}: code cell {i} has an nbval comment marker; use a cell tag instead")
            if len(line) > MAX_WIDTH and str(rel) not in WIDTH_PENDING:
                problems.append(f"{rel}: code cell {i} has a line of {len(line)} > {MAX_WIDTH} characters: "
                                f"{line.strip()[:50]}…")
    return problems


def mismatches() -> list[str]:
    """Human-readable problems: a script without a notebook, or code cells that disagree."""
    problems = []
    for py in scripts():
        ipynb = py.with_suffix(".ipynb")
        rel = py.relative_to(ROOT)
        if not ipynb.exists():
            problems.append(f"{rel}: no paired notebook {ipynb.name}")
            continue
        a, b = code_cells(jupytext.read(py)), code_cells(nbformat.read(ipynb, as_version=4))
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(f"{rel}: code cells differ from {ipynb.name} (first at code cell {first}; "
                            f"{len(a)} vs {len(b)} cells) — run `python tools/notebooks.py build {rel}`")
        problems += code_problems(py)
    for ipynb in sorted((ROOT / "chapters").rglob("*.ipynb")):
        if ".ipynb_checkpoints" not in ipynb.parts and not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb.relative_to(ROOT)}: no paired script {ipynb.with_suffix('.py').name}")
    return problems


def build(py: Path) -> None:
    from nbclient import NotebookClient

    nb = jupytext.read(py)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    os.environ.setdefault("LORABOOK_SCALE", "quick")
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(py.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)
            if CHECK not in cell.metadata.get("tags", ()):  # nbval compares only these; it needs their count
                cell.outputs = []
                cell.execution_count = None
    nbformat.write(nb, py.with_suffix(".ipynb"))
    print(f"built {py.with_suffix('.ipynb').relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "check"):
        print(__doc__)
        return 2
    if argv[0] == "check":
        problems = mismatches()
        print("\n".join(problems) if problems else f"{len(scripts())} chapter scripts paired with their notebooks")
        return 1 if problems else 0
    for name in argv[1:] or [str(p) for p in scripts()]:
        build(Path(name).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
