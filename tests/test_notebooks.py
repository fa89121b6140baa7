"""The notebook machinery itself: scripts and notebooks are paired, and nbval fails on a false claim."""
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


def _notebook(tmp_path: Path, condition: str, stored: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(f'import lorabook as lb\nlb.claim("the claim", {condition})')
    cell.metadata["tags"] = ["nbval-check-output"]
    cell.execution_count = 1
    # as a kernel shows a claim: text for nbval, the ledger record (not compared) in the metadata
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": stored},
                                           metadata={"lorabook": {"claim": {"measured": 1.0}}})]
    nb.cells = [cell]
    path = tmp_path / "claim.ipynb"
    nbformat.write(nb, path)
    return path


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env", str(path)],
        capture_output=True, text=True, cwd=path.parent, timeout=300,
    )


@pytest.mark.parametrize("condition, stored, ok", [
    ("1 + 1 == 2", "✓ sanity: the claim", True),      # a true claim passes
    ("1 + 1 == 3", "✓ sanity: the claim", False),     # a false claim fails the run
    ("1 + 1 == 2", "✓ sanity: another claim", False),  # a changed verdict fails the run
    ('1e-12, "<=", 1e-9, kind="sanity"', "✓ sanity: the claim", True),   # the measured value is not compared
    ('1e-6, "<=", 1e-9, kind="sanity"', "✓ sanity: the claim", False),   # ... but the check is
])
def test_nbval_verdicts(tmp_path, condition, stored, ok):
    result = _nbval(_notebook(tmp_path, condition, stored))
    assert (result.returncode == 0) == ok, result.stdout[-2000:]
    if not ok and "1 + 1 == 3" in condition:
        assert "✗ sanity: the claim" in result.stdout


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
