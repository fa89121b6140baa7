"""The reproduction scorecard: a well-formed inventory, and statuses generated correctly from ledger records."""
import json
from pathlib import Path

import nbformat
import pytest

from lorabook import ledger, scorecard
from lorabook.scorecard import Row

ROOT = Path(__file__).resolve().parent.parent


def _claim(label, kind="theorem", passed=True, margin=3.0, doc="chapters/01_expressivity/01_linear"):
    return {"label": label, "kind": kind, "passed": passed, "margin": margin, "doc": doc,
            "chapter": doc.split("/")[1] if doc.count("/") > 1 else "front", "statement": "s", "op": "<=",
            "measured": 1e-12, "limit": 1e-9, "scale": "quick"}


# ------------------------------------------------------------------------------------------------ the inventory

def test_inventory_is_well_formed():
    assert scorecard.check_inventory() == []
    labels = [row.labels()[0] for row in scorecard.INVENTORY]
    assert len(labels) == len(set(labels))
    assert {row.paper for row in scorecard.INVENTORY} == set(scorecard.PAPERS)
    for row in scorecard.INVENTORY:
        assert row.offline is None or row.note is None, f"{row.result}: offline rows give the reason in 'offline'"


@pytest.mark.parametrize("paper, results", [
    ("Zeng & Lee", ["Lemma 1", "Lemma 2", "Lemma 7", "Lemma 9", "Theorem 5", "Figure 1", "Figure 2"]),
    ("Jang et al.", ["Lemma 2.2", "Theorem 2.3", "Theorem 2.4", "Theorem 3.1", "Theorem 4.1", "Corollary 4.2",
                     "Lemma 4.3", "Lemma 4.4", "Lemma 4.5", "Theorem 5.1", "Lemma A.1", "Lemma A.2", "Lemma A.3",
                     "Lemma C.1", "Lemma C.2", "Lemma C.3", "Lemma C.4", "Lemma C.5", "Theorem C.6",
                     "Figure 1", "Figure 2", "Figure 3", "Figure 4", "Table 1", "Table 2", "Table 3", "Table 4"]),
    ("Kratsios et al.", ["Theorem 1", "Theorem 2", "Theorem 3"] + [f"Lemma {i}" for i in range(1, 10)]
     + ["Figure 1", "Figure 2", "Table 1"]),
])
def test_inventory_lists_every_numbered_result(paper, results):
    """Written independently of the inventory, from the papers' texts: every numbered result is a row."""
    listed = {row.result for row in scorecard.INVENTORY if row.paper == paper}
    assert set(results) <= listed, set(results) - listed
    numbered = {r for r in listed if scorecard._RESULT.match(r)}
    assert numbered == set(results), numbered - set(results)  # and no invented number


@pytest.mark.parametrize("row, problem", [
    (Row("Zeng and Lee", "Lemma 1", "x"), "unknown paper"),
    (Row("Zeng & Lee", "Lemma one", "x"), "result must be"),
    (Row("Zeng & Lee", "Remark 1", "x"), "result must be"),
    (Row("Zeng & Lee", "Lemma 3", " "), "empty summary"),
    (Row("Zeng & Lee", "Lemma 3", "x", numbering="guessed"), "unknown numbering"),
    (Row("Zeng & Lee", "Lemma 3", "x", numbering="none"), "needs a short name"),
    (Row("Zeng & Lee", "Lemma 3", "x", label="Jang et al., Lemma 3"), "must start with the paper"),
    (Row("Zeng & Lee", "Lemma 3", "x", label="Zeng & Lee, Lemma 3 (part)"), "must not contain"),
    (Row("Zeng & Lee", "Lemma 3", "x", offline=""), "offline reason"),
    (Row("Zeng & Lee", "Lemma 3", "x", note=""), "empty note"),
    (Row("Zeng & Lee", "Lemma 1", "x"), "also the label of"),
    (Row("Zeng & Lee", "Lemma 3", "x", also=("Zeng & Lee, Lemma 99",)), "is not another row's label"),
])
def test_check_inventory_finds_malformed_rows(row, problem):
    base = [Row("Zeng & Lee", "Lemma 1", "linear model")]
    problems = scorecard.check_inventory(base + [row])
    assert any(problem in p for p in problems), problems


def test_committed_notebooks_label_only_results_of_the_inventory():
    """Every theorem/departure claim of the three papers in the committed notebooks names a row (so the scorecard
    counts it); labels of other papers (e.g. Zhu et al.) are listed separately on the page."""
    records = ledger.collect_files(sorted((ROOT / "chapters").rglob("*.ipynb")), ROOT)
    stray = [r["label"] for r in scorecard.unmatched(records)
             if any(r["label"].startswith(p) for p in scorecard.PAPERS)]
    assert not stray, f"claim labels that match no scorecard row: {sorted(set(stray))}"


# --------------------------------------------------------------------------------------- records -> statuses

ROW = Row("Kratsios et al.", "Lemma 4", "Lipschitz bound")
OFFLINE = Row("Kratsios et al.", "Figure 2", "CLIP", offline="CLIP weights are not installable offline")
ALSO = Row("Kratsios et al.", "Lemma 1", "main-text Lemma 4", also=("Kratsios et al., Lemma 4",))


@pytest.mark.parametrize("row, records, status", [
    (ROW, [], "not attempted"),
    (OFFLINE, [], "offline"),
    (ROW, [_claim("Kratsios et al., Lemma 4")], "reproduced"),
    (ROW, [_claim("Kratsios et al., Lemma 4 (Step 2)")], "reproduced"),          # matches before " ("
    (ROW, [_claim("Kratsios et al., Lemma 4"), _claim("Kratsios et al., Lemma 4 (constant)", "departure")],
     "departure"),
    (ROW, [_claim("Kratsios et al., Lemma 4 (constant)", "departure")], "departure"),
    (ROW, [_claim("Kratsios et al., Lemma 4"), _claim("Kratsios et al., Lemma 4", passed=False)], "failed"),
    (ROW, [_claim("Kratsios et al., Lemma 4", "sanity")], "not attempted"),      # sanity never counts
    (ROW, [_claim("Kratsios et al., Lemma 41")], "not attempted"),               # no prefix matching
    (ROW, [_claim("Kratsios et al., Lemma 4.1")], "not attempted"),
    (ROW, [_claim("Zeng & Lee, Lemma 4")], "not attempted"),                     # another paper
    (ROW, [_claim(None, "sanity")], "not attempted"),
    (OFFLINE, [_claim("Kratsios et al., Figure 2 (MiniLM stand-in)")], "reproduced"),  # a claim beats the reason
    (ALSO, [_claim("Kratsios et al., Lemma 4")], "reproduced"),                  # an 'also' label counts
])
def test_outcome_maps_records_to_status(row, records, status):
    assert scorecard.outcome(row, records).status == status


def test_outcome_collects_sections_chapters_and_margins():
    records = [_claim("Kratsios et al., Lemma 4", margin=2.5, doc="chapters/03_asymmetric_bounds/05_lipschitz"),
               _claim("Kratsios et al., Lemma 4", margin=0.4, doc="chapters/03_asymmetric_bounds/05_lipschitz"),
               _claim("Kratsios et al., Lemma 4 (c)", "departure", margin=None, doc="chapters/04_x/01_y"),
               _claim("Kratsios et al., Lemma 4", margin=None, doc="chapters/03_asymmetric_bounds/02_single_run")]
    out = scorecard.outcome(ROW, records)
    assert (out.theorem, out.departure) == (3, 1)
    assert out.docs == ["chapters/03_asymmetric_bounds/05_lipschitz", "chapters/04_x/01_y",
                        "chapters/03_asymmetric_bounds/02_single_run"]
    assert out.chapters == ["03_asymmetric_bounds", "04_x"]
    assert out.min_margin == 0.4                       # theorem claims only; None margins skipped


def test_unmatched_and_counts():
    rows = [ROW, OFFLINE, Row("Zeng & Lee", "Lemma 1", "linear")]
    records = [_claim("Kratsios et al., Lemma 4"), _claim("Zhu et al., Lemma 4.5"),
               _claim("Kratsios et al., Lemma 44"), _claim(None, "sanity"), _claim("Zeng & Lee, Lemma 1", "departure")]
    assert [r["label"] for r in scorecard.unmatched(records, rows)] == ["Zhu et al., Lemma 4.5",
                                                                        "Kratsios et al., Lemma 44"]
    table = scorecard.counts(rows, records)
    assert table["Kratsios et al."] == {"reproduced": 1, "departure": 0, "failed": 0, "offline": 1,
                                        "not attempted": 0}
    assert table["Zeng & Lee"]["departure"] == 1
    summary = scorecard.summary_table(records, rows)
    assert summary.splitlines()[-1] == "| **all** | **1** | **1** | **1** | **0** | **3** |"
    assert "failed" not in summary              # shown only when a claim failed


def test_tables_render_links_badges_and_reasons():
    records = [_claim("Kratsios et al., Lemma 4", doc="chapters/03_asymmetric_bounds/05_lipschitz"),
               _claim("Kratsios et al., Lemma 4 (c)", "departure", doc="chapters/03_asymmetric_bounds/05_lipschitz")]
    rows = [ROW, OFFLINE, Row("Kratsios et al.", "Lemma 5", "covering", note="a classical estimate"),
            Row("Kratsios et al.", "Lemma 6", "covering")]
    table = scorecard.paper_table("Kratsios et al.", records, rows).splitlines()
    assert len(table) == 2 + 4
    lemma4, figure2, lemma5, lemma6 = table[2:]
    assert "{doc}`/chapters/03_asymmetric_bounds/05_lipschitz`" in lemma4 and "{bdg-warning}" in lemma4
    assert "{ref}`ledger <ledger-03_asymmetric_bounds>`" in lemma4 and "{ref}`errata <errata-kratsios>`" in lemma4
    assert "margin ≥ +3.0" in lemma4 and "labelled: c" in lemma4          # the labels' qualifiers are shown
    assert "{bdg-info}" in figure2 and "CLIP weights are not installable offline" in figure2
    assert "{bdg-light}" in lemma5 and "a classical estimate" in lemma5
    assert "no section of the book tests it yet" in lemma6                # a row nobody built says so
    assert lemma6.endswith("{bdg-light}`not attempted` — no section of the book tests it yet |")


def test_statuses_of_the_committed_primer():
    """End to end on a committed notebook: the primer's claim labelled Jang et al., Lemma 2.2 makes that row
    reproduced (ledger records read from the notebook file, chapter 'front')."""
    records = ledger.collect_files([ROOT / "chapters" / "00_lora_primer.ipynb"], ROOT)
    assert {r["chapter"] for r in records} == {"front"}
    row = next(r for r in scorecard.INVENTORY if r.labels()[0] == "Jang et al., Lemma 2.2")
    out = scorecard.outcome(row, records)
    assert out.status == "reproduced" and out.docs == ["chapters/00_lora_primer"]


def test_ledger_places_front_matter_and_chapters(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "✓"},
                                           metadata={"lorabook": {"claim": {"kind": "sanity", "statement": "s"}}})]
    nb.cells = [nbformat.v4.new_markdown_cell("# A title"), cell]
    for rel in ("intro.ipynb", "chapters/00_primer.ipynb", "chapters/01_x/02_y.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(nb))
    records = ledger.collect_files([tmp_path / "intro.ipynb", tmp_path / "chapters/00_primer.ipynb",
                                    tmp_path / "chapters/01_x/02_y.ipynb"], tmp_path)
    assert [(r["chapter"], r["doc"], r["section"]) for r in records] == [
        ("front", "intro", "A title"), ("front", "chapters/00_primer", "A title"),
        ("01_x", "chapters/01_x/02_y", "A title")]


def test_unnumbered_figures_point_to_existing_sections():
    for files, what, doc in scorecard.UNNUMBERED_FIGURES:
        assert files and what
        assert doc is None or (ROOT / f"{doc}.py").exists() or (ROOT / f"{doc}.md").exists(), doc
