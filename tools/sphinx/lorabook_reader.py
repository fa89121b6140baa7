"""What the reader sees: theorem boxes that carry the papers' own numbers, and no object reprs in outputs.

sphinx-proof numbers every box across the book ("Lemma 3") and wraps the title in parentheses. A box that restates a
paper's result is written with the paper's label as its title, ``:nonumber:`` and ``:class: paper``::

    ```{prf:lemma} Zeng & Lee, Lemma 1 — linear LoRA
    :label: lem-ch1-linear
    :nonumber:
    :class: paper
    ...
    ```

For such a box this extension renders the title alone as the heading (no book-wide number, no "Lemma (…)" wrapper),
and a ``{prf:ref}`` to it reads as the paper's label: the title up to its first " — " ("Zeng & Lee, Lemma 1").
Paper boxes are tagged "as stated in the paper"; the book's own results (no ``paper`` class) keep sphinx-proof's
numbering and are tagged "this book".

A plotting cell whose last line is ``ax.legend()`` shows ``<matplotlib.legend.Legend at 0x7f…>`` under the figure:
an object's default repr (with a memory address that changes every run) is never meant for the reader, so such
plain-text outputs are dropped from the pages.
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.util import logging

LOG = logging.getLogger(__name__)
PAPER = "paper"
#: numbered box types that state a result; the book's own get a "this book" tag
OURS = ("theorem", "lemma", "proposition", "corollary", "conjecture")
_DASHES = (" — ", " – ")


def short_label(title: str) -> str:
    """The paper's label at the start of a box title: the text before the first dash (" — " or " – ")."""
    cut = min((i for i in (title.find(d) for d in _DASHES) if i >= 0), default=len(title))
    return title[:cut].strip()


def _strip_wrapper(title: nodes.title) -> None:
    """Remove the " (" … ")" that sphinx-proof's ``proof_title_format`` puts around the title's text."""
    texts = [n for n in title.findall(nodes.Text)]
    if not texts:
        return
    first, last = texts[0], texts[-1]
    if first.astext().startswith(" ("):
        first.parent.replace(first, nodes.Text(first.astext()[2:]))
        if last is first:
            last = [n for n in title.findall(nodes.Text)][-1]
    if last.astext().endswith(")"):
        last.parent.replace(last, nodes.Text(last.astext()[:-1]))


def _paper_boxes(app, doctree) -> None:
    """On reading: strip the wrapper from paper boxes' titles and remember their labels for references."""
    from sphinx_proof.nodes import NODE_TYPES, unenumerable_node

    env = app.env
    for node in doctree.findall(unenumerable_node):
        if PAPER not in node.get("classes", []):
            continue
        title = next(iter(node.findall(nodes.title)), None)
        if title is None or not title.astext().strip():
            LOG.warning("a paper box needs the paper's label as its title", location=node)
            continue
        _strip_wrapper(title)
        entry = getattr(env, "proof_list", {}).get(node.get("label"))
        if entry is not None:
            entry["paper_label"] = short_label(title.astext())
        title += nodes.inline("", "as stated in the paper", classes=["lb-box-tag"])
    numbered = tuple(NODE_TYPES[t] for t in OURS)
    for node in doctree.findall(lambda n: isinstance(n, tuple(NODE_TYPES.values()))):
        if PAPER in node.get("classes", []):
            LOG.warning("a box of class 'paper' must be :nonumber: (it carries the paper's own number)",
                        location=node)
        elif isinstance(node, numbered):
            title = next(iter(node.findall(nodes.title)), None)
            if title is not None:
                title += nodes.inline("", "this book", classes=["lb-box-tag"])


#: a plain-text output that is only default object reprs: ``<module.Class at 0x…>`` or a list of them
OBJECT_REPR = re.compile(r"^\[?(<[\w.]+( object)? at 0x[0-9a-f]+>(, )?)+\]?$")


def _drop_object_reprs(app, doctree) -> None:
    """Remove text outputs that are only default object reprs, and the output areas they leave empty.

    myst-nb's doctree: cell_output container > mime_bundle container > one container per MIME type >
    literal_block (classes ``output text_plain``)."""
    for block in list(doctree.findall(nodes.literal_block)):
        if "text_plain" not in block.get("classes", []) or not OBJECT_REPR.match(block.astext().strip()):
            continue
        node = block                       # climb to the largest container holding nothing else, drop it
        while isinstance(node.parent, nodes.container) and len(node.parent.children) == 1:
            node = node.parent
        node.parent.remove(node)


def _visit(self, node) -> None:
    from sphinx_proof.nodes import visit_unenumerable_node

    visit_unenumerable_node(self, node)


def _depart(self, node) -> None:
    """HTML: a paper box gets no "Lemma" caption; other unnumbered boxes keep sphinx-proof's rendering."""
    from sphinx_proof.nodes import depart_unenumerable_node

    if PAPER in node.get("classes", []):
        self.body.append("</div>")
    else:
        depart_unenumerable_node(self, node)


def setup(app):
    app.setup_extension("sphinx_proof")
    from sphinx_proof.domain import ProofDomain
    from sphinx_proof.nodes import depart_unenumerable_node, unenumerable_node, visit_unenumerable_node
    from sphinx.util.nodes import make_refnode

    class PaperProofDomain(ProofDomain):
        """sphinx-proof's domain; a reference to a paper box reads as the paper's label."""

        def resolve_xref(self, env, fromdocname, builder, typ, target, node, contnode):
            entry = getattr(env, "proof_list", {}).get(target)
            if entry and entry.get("paper_label") and target in contnode.astext():
                return make_refnode(builder, fromdocname, entry["docname"], target,
                                    nodes.Text(entry["paper_label"]))
            return super().resolve_xref(env, fromdocname, builder, typ, target, node, contnode)

    app.add_domain(PaperProofDomain, override=True)
    app.add_node(unenumerable_node, override=True, html=(_visit, _depart),
                 latex=(visit_unenumerable_node, depart_unenumerable_node))
    app.connect("doctree-read", _paper_boxes)
    app.connect("doctree-read", _drop_object_reprs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
