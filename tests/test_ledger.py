"""The claims ledger reads back exactly the records the claims displayed, from executed notebooks."""
import math

import nbformat
import pytest

from lorabook import ledger


def _record(kind="theorem", margin=2.0, label="P, Lemma 1", passed=True, statement="s"):
    return {"statement": statement, "kind": kind, "label": label, "op": "<=", "measured": 1e-3, "limit": 0.1,
            "margin": margin, "passed": passed, "control": None, "scale": "quick", "numbers": {}}


def _executed_notebook(records, title="A section"):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"(label)=\n# {title}\n\ntext"))
    cell = nbformat.v4.new_code_cell("lb.claim(...)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "✓ x"},
                                           metadata={"lorabook": {"claim": r}}) for r in records]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="not a claim\n"))
    nb.cells.append(cell)
    return nb


def test_claims_in_notebook_and_place(tmp_path):
    recs = [_record(statement="a"), _record(kind="sanity", margin=None, label=None, statement="b")]
    nb = _executed_notebook(recs)
    assert [r["statement"] for r in ledger.claims_in_notebook(nb)] == ["a", "b"]
    path = tmp_path / "chapters" / "01_x" / "02_y.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    out = ledger.collect_files([path], tmp_path)
    assert [(r["chapter"], r["section"], r["doc"]) for r in out] == [("01_x", "A section", "chapters/01_x/02_y")] * 2


def test_collect_reads_the_latest_record_per_notebook_from_a_jupyter_cache(tmp_path):
    from jupyter_cache import get_cache
    from jupyter_cache.cache.main import CacheBundleIn

    cache = get_cache(tmp_path / "cache")
    path = tmp_path / "intro.ipynb"
    old, new = _executed_notebook([_record(statement="old")]), _executed_notebook([_record(statement="new")])
    new.cells[1].source = "changed"     # another notebook version: another cache record
    for nb in (old, new):
        nbformat.write(nb, path)
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(path)), check_validity=False)
    out = ledger.collect(tmp_path / "cache", tmp_path)
    assert [r["statement"] for r in out] == ["new"] and out[0]["chapter"] == "front"
    assert ledger.collect(tmp_path / "missing", tmp_path) == []


def test_summary_counts_kinds_and_margins():
    recs = [_record(margin=0.5), _record(margin=7.0), _record(margin=math.inf), _record(margin=None),
            _record(kind="departure"), _record(kind="sanity", passed=False)]
    assert ledger.summary(recs) == {"claims": 6, "theorem": 4, "departure": 1, "sanity": 1,
                                    "theorem_margin_under_1": 1, "theorem_margin_over_6": 2,
                                    "theorem_no_ratio": 1, "failed": 1}


@pytest.mark.parametrize("value, text", [(None, "—"), (True, "True"), (3, "3"), (1.23456e-7, "1.23e-07")])
def test_fmt_value(value, text):
    assert ledger.fmt_value(value) == text


def test_markdown_table_links_escapes_and_formats():
    rec = _record(statement="a | b") | {"doc": "chapters/01_x/02_y", "section": "Sec"}
    table = ledger.markdown_table([rec])
    row = table.splitlines()[2]
    assert row.startswith("| {doc}`/chapters/01_x/02_y` | theorem | P, Lemma 1 | a \\| b | 0.001 | ≤ 0.1 | +2.0 |")
    assert ledger.markdown_table([rec], link=False).splitlines()[2].startswith("| Sec |")
    assert ledger.fmt_margin(math.inf) == "∞" and ledger.fmt_margin(None) == "—" and ledger.fmt_margin(-0.04) == "-0.0"


def test_infinite_margin_travels_through_notebook_json():
    import json

    from lorabook.checks import _json_safe
    from lorabook.ledger import claims_in_notebook

    rec = _json_safe({"statement": "s", "margin": float("inf"), "measured": 0.0})
    text = json.dumps(rec, allow_nan=False)       # what the kernel must be able to send
    nb = {"cells": [{"cell_type": "code", "outputs": [{"metadata": {"lorabook": {"claim": json.loads(text)}}}]}]}
    assert claims_in_notebook(nb)[0]["margin"] == float("inf")
