"""The claims ledger: every claim of the executed book, read back from the notebooks' outputs.

:func:`lorabook.checks.claim` attaches a record to each verdict it displays (``metadata["lorabook"]["claim"]``).
:func:`collect` reads those records from the executed notebooks (the book's jupyter-cache, or notebook files) and adds
where each came from; :func:`summary` counts them; :func:`markdown_table` renders them for the book's ledger page.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

FIELDS = ("chapter", "section", "doc", "statement", "kind", "label", "op", "measured", "limit", "margin", "scale",
          "passed", "control")


def claims_in_notebook(nb: Any) -> list[dict]:
    """Claim records found in the outputs of one executed notebook (an ``nbformat`` node or a notebook dict)."""
    out = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            record = output.get("metadata", {}).get("lorabook", {}).get("claim")
            if record is not None:
                record = dict(record)
                if record.get("margin") in ("inf", "-inf"):  # written as text by the kernel (JSON has no inf)
                    record["margin"] = float(record["margin"])
                out.append(record)
    return out


def _title(nb: Any) -> str:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def _place(record: dict, doc: str, title: str) -> dict:
    parts = doc.split("/")
    if parts[0] == "chapters":  # chapters/<chapter>/<section>; a page directly in chapters/ is front matter
        chapter = parts[1] if len(parts) > 2 else "front"
    else:
        chapter = parts[0] if len(parts) > 1 else "front"
    return {"chapter": chapter, "section": title or doc, "doc": doc} | record


def collect(cache_path: str | Path, root: str | Path) -> list[dict]:
    """Every claim record of the notebooks in a jupyter-cache, with its ``chapter``, ``section`` and ``doc``.

    Parameters
    ----------
    cache_path : the book's jupyter-cache folder (``_build/.jupyter_cache``).
    root : the book's root folder; ``doc`` is the notebook's path relative to it, without suffix.

    Returns
    -------
    list of dicts with the keys of ``FIELDS`` (and ``numbers``). For a notebook cached more than once (older
    versions), the most recently used record counts; notebooks that no longer exist are skipped.
    """
    from jupyter_cache import get_cache

    cache_path, root = Path(cache_path), Path(root).resolve()
    if not cache_path.exists():
        return []
    cache = get_cache(cache_path)
    latest: dict[str, Any] = {}
    for rec in cache.list_cache_records():
        uri = Path(rec.uri)
        if uri.exists() and (uri not in latest or rec.accessed > latest[uri].accessed):
            latest[uri] = rec
    records = []
    for uri, rec in sorted(latest.items()):
        nb = cache.get_cache_bundle(rec.pk).nb
        try:
            doc = str(uri.resolve().relative_to(root).with_suffix(""))
        except ValueError:
            continue
        records += [_place(r, doc, _title(nb)) for r in claims_in_notebook(nb)]
    return records


def collect_files(paths: Iterable[str | Path], root: str | Path) -> list[dict]:
    """Like :func:`collect`, from executed ``.ipynb`` files."""
    root = Path(root).resolve()
    records = []
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        doc = str(p.resolve().relative_to(root).with_suffix(""))
        records += [_place(r, doc, _title(nb)) for r in claims_in_notebook(nb)]
    return records


def summary(records: list[dict]) -> dict[str, int]:
    """Counts: claims of each kind, and theorem claims by margin (under 1 decade, over 6, no ratio margin)."""
    theorem = [r for r in records if r["kind"] == "theorem"]
    return {
        "claims": len(records),
        "theorem": len(theorem),
        "departure": sum(r["kind"] == "departure" for r in records),
        "sanity": sum(r["kind"] == "sanity" for r in records),
        "theorem_margin_under_1": sum(r["margin"] is not None and r["margin"] < 1 for r in theorem),
        "theorem_margin_over_6": sum(r["margin"] is not None and r["margin"] > 6 for r in theorem),
        "theorem_no_ratio": sum(r["margin"] is None for r in theorem),
        "failed": sum(not r["passed"] for r in records),
    }


def fmt_value(x: Any) -> str:
    """A measured value or limit for a table: booleans and integers as they are, floats to 3 significant digits."""
    if x is None:
        return "—"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.3g}"


def fmt_margin(m: float | None) -> str:
    """A margin in decades for a table (``∞`` for a measured zero, ``—`` where no ratio applies)."""
    if m is None:
        return "—"
    return "∞" if math.isinf(m) else f"{m:+.1f}"


_SYMBOL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "="}


def markdown_table(records: list[dict], link: bool = True) -> str:
    """A MyST table of claims, one row each: section (linked), kind, label, statement, measured, limit, margin, scale."""
    rows = ["| section | kind | paper's result | claim | measured | limit | margin (decades) | scale |",
            "|---|---|---|---|---:|---:|---:|---|"]
    for r in records:
        where = f"{{doc}}`/{r['doc']}`" if link else r["section"]
        statement = r["statement"].replace("|", "\\|")
        rows.append(f"| {where} | {r['kind']} | {r['label'] or '—'} | {statement} | "
                    f"{fmt_value(r['measured'])} | {_SYMBOL.get(r['op'], '')} {fmt_value(r['limit'])} | "
                    f"{fmt_margin(r['margin'])} | {r['scale']} |")
    return "\n".join(rows)
