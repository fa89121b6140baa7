"""The book build never serves stale results: editing a ``lorabook`` module re-executes exactly the notebooks that
import it (directly or through other modules), and a rebuild with no change re-executes nothing."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "sphinx"))
import lorabook_build  # noqa: E402


def _notebook(path: Path, code: str) -> None:
    nb = {"cells": [{"id": "m", "cell_type": "markdown", "metadata": {}, "source": [f"# {path.stem}"]},
                    {"id": "c", "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": [code]}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _build(book: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               LORABOOK_BUILD_JOBS="2")
    out = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "-W", "-n", "--keep-going",
                          str(book)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _html_text(book: Path, name: str) -> str:
    return re.sub(r"<[^>]+>", "", (book / "_build" / "html" / f"{name}.html").read_text())


def _records(book: Path) -> dict[str, tuple]:
    """notebook name -> (primary key, creation time) of its execution-cache record."""
    from jupyter_cache import get_cache

    cache = get_cache(book / "_build" / ".jupyter_cache")
    return {Path(r.uri).stem: (r.pk, r.created) for r in cache.list_cache_records()}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    shutil.copytree(ROOT / "lorabook", book / "lorabook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tools" / "sphinx", book / "tools" / "sphinx", ignore=shutil.ignore_patterns("__pycache__"))
    (book / "_config.yml").write_text(
        "title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: cache\n"
        "sphinx:\n  local_extensions:\n    lorabook_build: tools/sphinx/\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: uses_checks\nchapters:\n  - file: uses_bounds\n")
    # the kernel runs in the book folder, so `import lorabook` finds this copy first
    _notebook(book / "uses_checks.ipynb", "from lorabook import checks\nprint('value', checks.fmt_num(1 / 3))")
    _notebook(book / "uses_bounds.ipynb", "from lorabook import bounds\nprint('count', bounds.lora_param_count(1, 2, 1, 2, 2))")
    return book


def test_editing_a_module_reexecutes_exactly_its_notebooks(book):
    log = _build(book)
    # both notebooks ran in the parallel workers, and myst-nb found them in the cache instead of running them again
    assert "executing 2 notebook(s) in 2 processes" in log
    assert log.count("Using cached notebook") == 2 and "Executing notebook" not in log
    assert "value 0.33" in _html_text(book, "uses_checks") and "count 4" in _html_text(book, "uses_bounds")

    before = _records(book)
    bounds = book / "lorabook" / "bounds.py"
    src = bounds.read_text()
    head, sep, tail = src.partition("def lora_param_count(")
    body, sep2, rest = tail.partition("\n    return ")
    bounds.write_text(head + sep + body + sep2 + "1000 + " + rest)  # the function's result changes
    log = _build(book)
    assert "count 1004" in _html_text(book, "uses_bounds")  # the edited function's new result appears
    assert "re-executing: uses_bounds" in log and "uses_checks" not in log.split("re-executing:")[1].splitlines()[0]
    after = _records(book)
    assert after["uses_checks"] == before["uses_checks"] and after["uses_bounds"] != before["uses_bounds"]

    log = _build(book)
    assert "re-executing" not in log and _records(book) == after  # no change: nothing runs


def test_dependency_hash_follows_package_imports(tmp_path):
    pkg = tmp_path / "lorabook"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f(): return 1\n")
    (pkg / "b.py").write_text("from .c import g\n")
    (pkg / "c.py").write_text("def g(): return 2\n")
    h_top = lorabook_build.dependency_hash("import lorabook as lb", pkg)
    h_b = lorabook_build.dependency_hash("from lorabook import b", pkg)
    assert lorabook_build.dependency_hash("import numpy", pkg) is None
    (pkg / "c.py").write_text("def g(): return 3\n")   # b depends on c through a relative import
    assert lorabook_build.dependency_hash("from lorabook import b", pkg) != h_b
    assert lorabook_build.dependency_hash("import lorabook as lb", pkg) == h_top
    (pkg / "a.py").write_text("def f(): return 4\n")
    assert lorabook_build.dependency_hash("import lorabook as lb", pkg) != h_top


def test_build_jobs_reads_one_variable(monkeypatch):
    monkeypatch.setenv("LORABOOK_BUILD_JOBS", "3")
    assert lorabook_build.build_jobs() == 3
    monkeypatch.delenv("LORABOOK_BUILD_JOBS")
    assert lorabook_build.build_jobs() >= 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("LORABOOK_BUILD_JOBS", bad)
        with pytest.raises(ValueError, match="LORABOOK_BUILD_JOBS"):
            lorabook_build.build_jobs()


def test_a_change_of_scale_makes_every_notebook_stale(tmp_path, monkeypatch):
    """The execution cache is keyed by the scale: a notebook executed at `quick` is not served to a `default`
    build (a cheap check of the hook itself, with stand-ins for Sphinx's app and environment)."""
    from types import SimpleNamespace

    (tmp_path / "lorabook").mkdir()
    (tmp_path / "lorabook" / "__init__.py").write_text("")
    (tmp_path / "lorabook" / "a.py").write_text("X = 1\n")
    _notebook(tmp_path / "nb.ipynb", "from lorabook import a")
    (tmp_path / "_build" / "html").mkdir(parents=True)
    app = SimpleNamespace(srcdir=str(tmp_path), outdir=str(tmp_path / "_build" / "html"))
    env = SimpleNamespace(found_docs={"nb"}, doc2path=lambda doc: str(tmp_path / f"{doc}.ipynb"))
    app.env = env  # no execution cache configured or present: only the state file is consulted

    def build(scale):
        monkeypatch.setenv("LORABOOK_SCALE", scale)
        stale = lorabook_build._outdated(app, env, set(), set(), set())
        lorabook_build._state_file(app).write_text(json.dumps(app.lorabook_deps))  # as a successful build does
        return stale

    assert build("quick") == []          # first build: nothing cached yet, nothing stale
    assert build("quick") == []          # same scale, same code
    assert build("default") == ["nb"]    # another scale: the cached result is stale
    assert build("default") == []
    (tmp_path / "lorabook" / "a.py").write_text("X = 2\n")
    assert build("default") == ["nb"]    # and code changes still count
