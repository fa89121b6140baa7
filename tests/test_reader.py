"""What the reader sees (tools/sphinx/lorabook_reader.py): a paper's box carries the paper's label and no book number,
a reference to it reads as that label, the book's own boxes keep their numbers, and object reprs leave the outputs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "sphinx"))
import lorabook_reader  # noqa: E402

PAGE = """# Boxes

```{prf:lemma} Zeng & Lee, Lemma 1 — linear LoRA with $L$ layers
:label: lem-paper
:nonumber:
:class: paper
The error is $\\sigma_{RL+1}(E)$.
```

```{prf:proposition} Parameter count
:label: prop-ours
Ours.
```

```{prf:theorem} Jang et al., Theorem 4.1
:label: thm-numbered-paper
:class: paper
A paper box someone forgot to mark nonumber.
```

See {prf:ref}`lem-paper`, {prf:ref}`prop-ours` and {prf:ref}`the lemma <lem-paper>`.
"""


def _notebook() -> dict:
    def out(text):
        return {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                "data": {"text/plain": text}}
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# Outputs", "id": "m"},
             {"cell_type": "code", "metadata": {}, "execution_count": 1, "id": "a", "source": "ax.legend()",
              "outputs": [out("<matplotlib.legend.Legend at 0x7fbbe0d308d0>")]},
             {"cell_type": "code", "metadata": {}, "execution_count": 2, "id": "b", "source": "print('kept')",
              "outputs": [{"output_type": "stream", "name": "stdout", "text": "kept output\n"},
                          out("[<matplotlib.lines.Line2D at 0x7f01>, <matplotlib.lines.Line2D at 0x7f02>]")]}]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    book = tmp_path_factory.mktemp("reader")
    (book / "_config.yml").write_text(
        "title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n"
        f"sphinx:\n  extra_extensions: [sphinx_proof]\n  local_extensions:\n    lorabook_reader: {ROOT}/tools/sphinx/\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: boxes\nchapters:\n  - file: outputs\n")
    (book / "boxes.md").write_text(PAGE)
    (book / "outputs.ipynb").write_text(json.dumps(_notebook()))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "-n", str(book)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pages = {name: (book / "_build" / "html" / f"{name}.html").read_text() for name in ("boxes", "outputs")}
    return pages, run.stdout + run.stderr


def _title(page: str, box_id: str) -> str:
    m = re.search(rf'<div class="[^"]*" id="{box_id}">\s*<p class="admonition-title"[^>]*>(.*?)</p>', page, re.S)
    assert m, box_id
    return m.group(1)


def test_paper_box_shows_the_papers_label_and_no_book_number(html):
    title = _title(html[0]["boxes"], "lem-paper")
    text = re.sub(r"<[^>]+>", "", title)
    assert text.startswith("Zeng &amp; Lee, Lemma 1 — linear LoRA with")
    assert "caption-number" not in title and "Lemma (" not in text and not text.rstrip().endswith(")")
    assert "as stated in the paper" in title


def test_own_results_keep_the_book_numbering(html):
    text = re.sub(r"<[^>]+>", "", _title(html[0]["boxes"], "prop-ours"))
    assert "Proposition 1" in text and "(Parameter count)" in text and "this book" in text


def test_references_read_as_the_papers_label(html):
    page = html[0]["boxes"]
    links = re.findall(r'<a class="reference internal" href="#(lem-paper|prop-ours)">(.*?)</a>', page)
    texts = [(target, re.sub(r"<[^>]+>", "", inner)) for target, inner in links]
    assert ("lem-paper", "Zeng &amp; Lee, Lemma 1") in texts
    assert ("prop-ours", "Proposition 1") in texts
    assert ("lem-paper", "the lemma") in texts                  # an explicit title is kept


def test_a_numbered_paper_box_is_flagged(html):
    assert "must be :nonumber:" in html[1]


def test_object_reprs_are_dropped_from_outputs(html):
    page = html[0]["outputs"]
    assert "matplotlib" not in page.split("Outputs", 1)[1].replace("ax.legend", "")
    assert "kept output" in page


@pytest.mark.parametrize("title, label", [
    ("Zeng & Lee, Lemma 1 — linear LoRA", "Zeng & Lee, Lemma 1"),
    ("Jang et al., Theorem 4.1 – no spurious minima", "Jang et al., Theorem 4.1"),
    ("Kratsios et al., Lemma 4", "Kratsios et al., Lemma 4"),
])
def test_short_label(title, label):
    assert lorabook_reader.short_label(title) == label
