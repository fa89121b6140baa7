"""Sphinx hooks of the book: no stale results, and pages generated from the executed notebooks.

* **Freshness.** jupyter-cache re-executes a notebook only when its own cells change. This hook also keys each
  notebook by the ``lorabook`` modules it imports (transitively) and by the scale (``LORABOOK_SCALE``): when one of
  them changes, the notebook's cache records are removed and the page is re-read, so it is executed again with the
  new code or at the new scale. The state of the last successful build is kept in ``_build/.lorabook_deps.json``.
* **Generated pages** (status, claims ledger, errata) read the execution cache: they are re-read on every build and
  read last, after every notebook has been executed.
* **Parallel execution.** myst-nb executes the notebooks one after another, each kernel mostly on one core. Before
  the pages are read, the notebooks that the cache does not hold are executed here in ``LORABOOK_BUILD_JOBS``
  worker processes (default: one per core; ``1`` turns this off), each kernel limited to its share of the cores, and
  stored in the cache exactly as myst-nb stores them; myst-nb then finds every notebook cached. A notebook that fails
  here is not cached, so myst-nb executes it again and reports the error as it always does.
"""
from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from sphinx.util import logging

LOG = logging.getLogger(__name__)
GENERATED = ("chapters/status", "chapters/ledger", "chapters/errata", "chapters/scorecard")
PACKAGE = "lorabook"
_STATE = ".lorabook_deps.json"


def _imports(code: str, package: str) -> set[str]:
    """Modules of ``package`` that ``code`` imports (absolute imports; ``package`` itself means its __init__)."""
    found: set[str] = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:  # IPython magics: fall back to a pattern
        return {m.rstrip(".") or "__init__" for m in re.findall(rf"\b{package}\.?(\w*)", code)} | {"__init__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    found |= {"__init__"} | ({parts[1]} if len(parts) > 1 else set())
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            parts = node.module.split(".")
            found.add("__init__")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    return found


def _package_graph(pkg_dir: Path) -> dict[str, set[str]]:
    """module -> modules of the package it imports (relative or absolute)."""
    names = {p.stem for p in pkg_dir.glob("*.py")}
    graph = {}
    for name in names:
        tree = ast.parse((pkg_dir / f"{name}.py").read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                parts = node.module.split(".")
                deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def dependency_hash(code: str, pkg_dir: Path) -> str | None:
    """Hash of the sources of every package module ``code`` depends on (``None`` if it imports none)."""
    graph = _package_graph(pkg_dir)
    todo = [m for m in _imports(code, PACKAGE) if m in graph]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m] - seen)
    if not seen:
        return None
    digest = hashlib.sha256()
    for m in sorted(seen):
        digest.update(m.encode() + b"\0" + (pkg_dir / f"{m}.py").read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def notebook_code(path: Path) -> str:
    """The code cells of a notebook (``.ipynb``) or MyST notebook (``.md``), joined."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text()).get("cells", [])
        return "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    text = path.read_text()
    if "file_format: mystnb" not in text:
        return ""
    return "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S))


def cache_path(app) -> Path:
    configured = app.env.mystnb_config.execution_cache_path if hasattr(app.env, "mystnb_config") else ""
    return Path(configured) if configured else Path(app.outdir).parent / ".jupyter_cache"


def _state_file(app) -> Path:
    return Path(app.outdir).parent / _STATE


def _outdated(app, env, added, changed, removed):
    src = Path(app.srcdir)
    pkg_dir = src / PACKAGE
    extra = [d for d in GENERATED if d in env.found_docs]
    if not pkg_dir.is_dir():
        return extra
    from lorabook.config import get_scale  # the scale is read in one place

    scale = get_scale().name
    state_path = _state_file(app)
    old = json.loads(state_path.read_text()) if state_path.exists() else {}
    new, stale = {}, []
    for doc in sorted(env.found_docs):
        if doc in GENERATED:
            continue
        path = Path(env.doc2path(doc))
        h = dependency_hash(notebook_code(path), pkg_dir) if path.suffix in (".ipynb", ".md") else None
        if h is None:
            continue
        new[doc] = key = f"{scale}:{h}"  # results of another scale are stale too
        if old.get(doc) not in (None, key):
            stale.append((doc, path))
    if stale:
        from jupyter_cache import get_cache

        cache_dir = cache_path(app)
        cache = get_cache(cache_dir) if cache_dir.exists() else None
        for doc, path in stale:
            if cache is not None:
                for rec in cache.list_cache_records():
                    if Path(rec.uri).resolve() == path.resolve():
                        cache.remove_cache(rec.pk)
        names = ", ".join(doc for doc, _ in stale)
        LOG.info(f"[lorabook] package code or scale changed under {len(stale)} notebook(s), re-executing: {names}")
    app.lorabook_deps = new
    return sorted(set(extra) | {doc for doc, _ in stale if doc not in added})


def _read_generated_last(app, env, docnames):
    last = [d for d in GENERATED if d in docnames]
    for d in last:
        docnames.remove(d)
    docnames.extend(last)
    _execute_in_parallel(app, env, docnames)


def build_jobs() -> int:
    """Worker processes for notebook execution: ``LORABOOK_BUILD_JOBS``, else the number of cores."""
    raw = os.environ.get("LORABOOK_BUILD_JOBS", "")
    if raw.strip():
        try:
            jobs = int(raw)
        except ValueError:
            raise ValueError(f"LORABOOK_BUILD_JOBS must be a positive integer, got {raw!r}") from None
        if jobs < 1:
            raise ValueError(f"LORABOOK_BUILD_JOBS must be a positive integer, got {raw!r}")
        return jobs
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _execute_one(path: str, timeout, allow_errors: bool, threads: int):
    """Worker: execute one notebook in its own folder; returns (notebook, seconds, traceback or None)."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the kernel inherits this environment
        os.environ[var] = str(threads)
    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=allow_errors,
                                 meta_override=True)
    return nb, result.time, (result.exc_string if result.err is not None else None)


def _execute_in_parallel(app, env, docnames) -> None:
    config = getattr(env, "mystnb_config", None)
    if config is None or config.execution_mode != "cache" or config.execution_in_temp:
        return
    jobs = build_jobs()
    if jobs < 2:
        return
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(cache_path(app))
    todo = []
    for doc in docnames:
        path = Path(env.doc2path(doc))
        if doc in GENERATED or path.suffix != ".ipynb" or any(path.match(p) for p in config.execution_excludepatterns):
            continue
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            todo.append(path)
    if len(todo) < 2:
        return
    # the later chapters hold the longer real-model runs: start them first so the workers finish together
    todo.reverse()
    workers = min(jobs, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    LOG.info(f"[lorabook] executing {len(todo)} notebook(s) in {workers} processes ({threads} thread(s) each)")
    start, done = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_execute_one, str(p), config.execution_timeout, config.execution_allow_errors,
                               threads): p for p in todo}
        for future in as_completed(futures):
            path, done = futures[future], done + 1
            rel = path.relative_to(Path(app.srcdir))
            try:
                nb, seconds, error = future.result()
            except Exception as exc:  # a worker that died: myst-nb executes the notebook itself
                LOG.info(f"[lorabook] ({done}/{len(todo)}) {rel}: worker failed ({exc!r}); myst-nb will retry")
                continue
            if error is not None:
                LOG.info(f"[lorabook] ({done}/{len(todo)}) {rel}: failed; myst-nb will execute it and report")
                continue
            stage = cache.add_nb_to_project(str(path))
            cache.cache_notebook_bundle(CacheBundleIn(nb, stage.uri, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            LOG.info(f"[lorabook] ({done}/{len(todo)}) {rel}: {seconds:.1f} s "
                     f"(elapsed {time.perf_counter() - start:.0f} s)")


def _save_state(app, exception):
    if exception is None and hasattr(app, "lorabook_deps"):
        _state_file(app).write_text(json.dumps(app.lorabook_deps, indent=1, sort_keys=True))


def setup(app):
    app.connect("env-get-outdated", _outdated)
    app.connect("env-before-read-docs", _read_generated_last)
    app.connect("build-finished", _save_state)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
