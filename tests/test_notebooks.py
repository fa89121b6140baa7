"""The notebook machinery itself: scripts and notebooks are paired, and nbval fails on a false claim."""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402


def test_every_chapter_script_is_paired():
    assert notebooks.scripts(), "no chapter scripts found"
    problems = notebooks.mismatches()
    assert not problems, "\n".join(problems)


CASES = [
    ("1 + 1 == 2", "✓ sanity: the claim", True),      # a true claim passes
    ("1 + 1 == 3", "✓ sanity: the claim", False),     # a false claim fails the run
    ("1 + 1 == 2", "✓ sanity: another claim", False),  # a changed verdict fails the run
    ('1e-12, "<=", 1e-9, kind="sanity"', "✓ sanity: the claim", True),   # the measured value is not compared
    ('1e-6, "<=", 1e-9, kind="sanity"', "✓ sanity: the claim", False),   # ... but the check is
]


def _notebook(path: Path, cases) -> Path:
    """One notebook, one claim cell per case ``(condition, stored verdict, _)``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (condition, stored, _) in enumerate(cases):
        cell = nbformat.v4.new_code_cell(f'import lorabook as lb\nlb.claim("the claim", {condition})')
        cell.metadata["tags"] = ["nbval-check-output"]
        cell.execution_count = i + 1
        # as a kernel shows a claim: text for nbval, the ledger record (not compared) in the metadata
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": stored},
                                               metadata={"lorabook": {"claim": {"measured": 1.0}}})]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def nbval_run(tmp_path_factory):
    """One nbval run (one kernel) over a notebook with a cell per case: case index -> (passed, output)."""
    path = _notebook(tmp_path_factory.mktemp("claims") / "claims.ipynb", CASES)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         str(path)], capture_output=True, text=True, cwd=path.parent, timeout=300,
    )
    # nbval names the items "claims::ipynb::Cell 0" (or "claims.ipynb::Cell 0")
    found = dict(re.findall(r"^claims(?:\.|::)ipynb::Cell (\d+) (PASSED|FAILED)", out.stdout, flags=re.M))
    assert len(found) == len(CASES), out.stdout[-3000:]
    return {int(i): (v == "PASSED", out.stdout) for i, v in found.items()}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_nbval_verdicts(nbval_run, case):
    condition, _, ok = CASES[case]
    passed, stdout = nbval_run[case]
    assert passed == ok, stdout[-2000:]
    if not ok and "1 + 1 == 3" in condition:
        assert "✗ sanity: the claim" in stdout


def test_intro_reading_guide_checks_pass(capsys):
    """intro.md is a MyST notebook executed by the book; run its code cells (and their claims) here too."""
    import jupytext
    import matplotlib

    matplotlib.use("Agg")
    nb = jupytext.read(ROOT / "intro.md")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "lb.claim(" in code
    wide = [line for line in code.splitlines() if len(line) > notebooks.MAX_WIDTH]
    assert not wide, f"intro.md code lines wider than {notebooks.MAX_WIDTH} characters: {wide}"
    exec(compile(code, "intro.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("✓") == 4, out
