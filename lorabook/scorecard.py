"""The reproduction scorecard: every numbered result of the three papers, and what the book did with it.

The **inventory** (:data:`INVENTORY`) is written by hand from the papers' texts: each theorem, lemma, corollary,
proposition, figure and table, with a one-line summary, and — where the book cannot or does not reproduce it — the
reason (weights or data that no installable package ships; a result the paper only cites; a table of settings).
The **status** of each row is generated from the claims ledger (:func:`lorabook.ledger.collect`): a row's claims are
the ``theorem`` and ``departure`` claims whose label, up to its first ``" ("``, is the row's label (or one of its
``also`` labels):

================================  ===================================================================================
status                            when
================================  ===================================================================================
``reproduced``                    it has theorem claims, all passed, and no departure claim
``departure``                     it has a departure claim: reproduced with a stated departure (see the errata page)
``failed``                        one of its claims failed (a book with ``-W`` stops before this can be shown)
``offline``                       no claim, and the row says why it cannot be reproduced offline
``not attempted``                 no claim: nobody built it (the row may say why)
================================  ===================================================================================

Sanity claims never count: they test the book's code, not a paper's statement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

PAPERS = {
    "Zeng & Lee": "Zeng & Lee (ICLR 2024), *The Expressive Power of Low-Rank Adaptation*",
    "Jang et al.": "Jang, Lee & Ryu (ICML 2024), *LoRA Training in the NTK Regime has No Spurious Local Minima*",
    "Kratsios et al.": "Kratsios, Cheng, Lucchi & Sáez de Ocáriz Borde (2025), *Sharp Generalization Bounds for "
                       "Foundation Models with Asymmetric Randomized Low-Rank Adapters*",
}
#: the errata page's section of each paper (MyST target)
ERRATA = {"Zeng & Lee": "errata-zeng-lee", "Jang et al.": "errata-jang", "Kratsios et al.": "errata-kratsios"}
KINDS = ("Theorem", "Lemma", "Corollary", "Proposition", "Figure", "Table")
STATUSES = ("reproduced", "departure", "failed", "offline", "not attempted")
#: where a row's number comes from
NUMBERING = ("paper", "slides", "repository", "inferred", "none")
_RESULT = re.compile(rf"^({'|'.join(KINDS)}) ([A-Z]\.)?\d+(\.\d+)*$")


@dataclass(frozen=True)
class Row:
    """One numbered result of a paper.

    Attributes
    ----------
    paper : one of the keys of :data:`PAPERS`.
    result : the paper's own kind and number, e.g. ``"Lemma 1"``, ``"Theorem 4.1"``, ``"Figure 2"``; for a result
        without a number (``numbering="none"``) a short name.
    summary : what it states or shows, in one line (MyST).
    numbering : where the number comes from: ``"paper"`` (the paper's text), ``"slides"`` (the reading slides,
        which quote the paper's numbers), ``"repository"`` (the authors' code), ``"inferred"`` (from the order of
        the text, the caption being lost) or ``"none"``.
    label : the claim label that tests it; default ``"<paper>, <result>"``.
    also : further labels whose claims test the same statement (e.g. the main-text version of an appendix lemma).
    offline : why it cannot be reproduced offline (weights or data not installable), or ``None``.
    note : why it is not attempted, or what the book does instead, or ``None``.
    """

    paper: str
    result: str
    summary: str
    numbering: str = "paper"
    label: str = ""
    also: tuple[str, ...] = ()
    offline: str | None = None
    note: str | None = None

    def labels(self) -> tuple[str, ...]:
        """Every claim label that counts for this row (its own first)."""
        return (self.label or f"{self.paper}, {self.result}",) + tuple(self.also)


def _rows(paper: str, numbering: str, *specs: tuple) -> list[Row]:
    out = []
    for spec in specs:
        result, summary, *rest = spec
        options = {"numbering": numbering} | (rest[0] if rest else {})
        out.append(Row(paper, result, summary, **options))
    return out


_NO_ROBERTA = ("RoBERTa-base weights are not installable offline (no package ships them); of the six GLUE-style "
               "tasks only MR (= Rotten Tomatoes) is shipped. The book's MiniLM section is a stand-in, not this "
               "figure")
_NO_VISION_SPEECH = ("the pretrained ViT and wav2vec2 weights and the beans and SUPERB data are not installable "
                     "offline (no package ships them)")
_NO_CLIP = ("CLIP weights and the image datasets are not installable offline (no package ships them); the book's "
            "MiniLM asymmetry section is a text stand-in, not this figure")
_CITED = "a result the paper cites and uses ({}), not one it claims"

ZENG_LEE = _rows(
    "Zeng & Lee", "slides",
    ("Lemma 1", r"linear model: the best rank-$R$ adapters leave error $\sigma_{RL+1}(E)$; exact once "
                r"$R \ge \lceil R_E/L\rceil$"),
    ("Lemma 2", r"one-layer ReLU target: large biases linearise the frozen layers; exact once "
                r"$R \ge \lceil R_E/L\rceil$, and an expected-error bound below it"),
    ("Lemma 7", r"the matrix step of the construction: rank-$R$ $\Delta W_l$ with "
                r"$\prod_l (W_l + \Delta W_l) = \prod_l W_l + \LR_{RL\wedge R_E}(E)$"),
    ("Lemma 9", "the detailed version of Lemma 2 (same statement with its assumptions spelled out)",
     dict(also=("Zeng & Lee, Lemma 2",))),
    ("Theorem 5", r"multi-layer ReLU target by model partition: error bound "
                  r"$\beta\sum_i \alpha^{\bar L - i} E_i$; exact once $R \ge \lceil D/M\rceil$"),
    ("Transformer networks", r"Transformer networks: rank-$D/2$ adapters on each attention pair match a "
                             "same-size target (the slides give no number)",
     dict(numbering="none")),
) + _rows(
    "Zeng & Lee", "repository",
    ("Figure 1", r"linear model ($D = 16$, $L = 2$): test MSE against rank, gradient LoRA vs the construction, "
                 "random and pretrained frozen models"),
    ("Figure 2", r"ReLU FNN ($D = 16$, $L = 4$, $\bar L = 2$): the same comparison"),
) + _rows(
    "Zeng & Lee", "none",
    ("Transfer extension", "the reading slides' own extension: a subgroup's low-rank change recovered without "
                           "gradients (second-order Stein moment, then reduced-rank regression)",
     dict(label="Zeng & Lee slides, transfer extension")),
    ("Real-model experiment", "the authors' code fine-tunes RoBERTa-base with LoRA on GLUE at ranks 2–12, "
                              "pretrained against randomly initialised: the pretrained model needs a smaller rank. "
                              "RoBERTa is not installable offline; the book tests the claim on MiniLM (a stand-in)",
     dict(label="Zeng & Lee, real-model experiment")),
)

JANG = _rows(
    "Jang et al.", "paper",
    ("Lemma 2.2", r"weight decay on LoRA's factors is the nuclear norm: "
                  r"$\min_{BA=X}\tfrac12(\|A\|_F^2+\|B\|_F^2) = \|X\|_*$ (Lemma 5.1 of Recht, Fazel & Parrilo)"),
    ("Theorem 2.3", "gradient descent with a random start almost surely avoids strict saddles",
     dict(note=_CITED.format("Theorem 4.1 of Lee et al., 2016"))),
    ("Theorem 2.4", "(informal) noisy SGD escapes strict saddles in polynomial time",
     dict(note=_CITED.format("Theorem 1 of Ge et al., 2015"))),
    ("Theorem 3.1", r"the linearised full fine-tuning problem has a global minimiser of rank $r$ with "
                    r"$r(r+1)/2 \le KN$"),
    ("Figure 1", r"toy illustration of Theorem 3.1: the sets of low-rank solutions of three small objectives"),
    ("Theorem 4.1", r"LoRA with $r(r+1)/2 > KN$, weight decay and a random PSD perturbation of the loss: every "
                    "second-order stationary point is a global minimum"),
    ("Corollary 4.2", "the perturbed problem's solution is ε-optimal for the unperturbed one"),
    ("Lemma 4.3", "a rank-deficient second-order stationary point of a factorised convex problem is global",
     dict(note=_CITED.format("Theorem 2 of Haeffele et al., 2014"))),
    ("Lemma 4.4", "Lemma 4.3 applied to the perturbed empirical risk: rank-deficient SOSPs are global minima"),
    ("Lemma 4.5", "for almost every perturbation, second-order stationary points are rank-deficient (Sard)"),
    ("Theorem 5.1", r"the low-rank solution generalises: gap $O(1/\sqrt N)$ for the cross-entropy loss"),
    ("Figure 2", r"training curves of linearised RoBERTa-base on six NLP tasks ($N = 32$): LoRA ranks and full "
                 "fine-tuning reach the same loss, lower ranks more slowly",
     dict(offline=_NO_ROBERTA)),
    ("Figure 3", "training curves for image (ViT, beans) and speech (wav2vec2, SUPERB) classification",
     dict(numbering="inferred", offline=_NO_VISION_SPEECH)),
    ("Figure 4", "test accuracy during training on the NLP tasks (appendix D)",
     dict(offline=_NO_ROBERTA)),
    ("Table 1", "hyper-parameters of the NLP runs",
     dict(note="settings of the RoBERTa runs, not a result")),
    ("Table 2", "hyper-parameters of the image and speech runs",
     dict(note="settings of the ViT and wav2vec2 runs, not a result")),
    ("Table 3", "hyper-parameters of the test-accuracy runs",
     dict(note="settings of the RoBERTa runs, not a result")),
    ("Table 4", "accuracy of actual vs linearised LoRA updates for image and speech classification",
     dict(note=_NO_VISION_SPEECH + "; the book asks the same question (does real LoRA stay linearised?) on a "
                                   "text stand-in, MiniLM on Rotten Tomatoes")),
    ("Lemma A.1", "the full fine-tuning problem and its PSD lift have the same optimal value"),
    ("Lemma A.2", "a rank-reducing direction keeps the lifted solution PSD with strictly lower rank"),
    ("Lemma A.3", "a small step along a symmetric direction in the null space keeps the lift PSD"),
    ("Lemma C.1", "McDiarmid's bounded-differences inequality",
     dict(note=_CITED.format("McDiarmid's inequality"))),
    ("Lemma C.2", "the generalisation gap is bounded by twice the Rademacher complexity",
     dict(note=_CITED.format("a standard Rademacher bound"))),
    ("Lemma C.3", "vector contraction for Rademacher complexities",
     dict(note=_CITED.format("Corollary 4 of Maurer, 2016"))),
    ("Lemma C.4", r"Rademacher complexity of affine predictors in a nuclear-norm ball decays like "
                  r"$1/\sqrt N$"),
    ("Lemma C.5", "high-probability generalisation bound for the nuclear-norm-constrained risk"),
    ("Theorem C.6", "Theorem 5.1 for general convex, non-negative, twice differentiable losses"),
)

KRATSIOS = _rows(
    "Kratsios et al.", "paper",
    ("Theorem 1", r"single-run upper bound with probability $\ge 1-\delta$: "
                  r"$G \le 4\min\{1, 6\sqrt{qA/N}\} + \sqrt{8\log(2/(1-\sqrt{1-\delta}))/N}$"),
    ("Theorem 2", r"matching lower bound in $N$: $P(G > 1/N) \ge (1-\delta/2)(1-\Theta(1/\sqrt N))$"),
    ("Theorem 3", "Dudley's entropy-integral bound on the empirical Rademacher complexity (appendix D)",
     dict(note="a standard bound the paper re-proves (\"folklore\"), not a claim about LoRA")),
    ("Lemma 1", "high-probability bound on the Lipschitz constant of the random parameter-to-LoRA map "
                "(main-text statement of Lemma 4)",
     dict(also=("Kratsios et al., Lemma 4",))),
    ("Lemma 2", "covering numbers of the random LoRA class (main-text statement of Lemma 8)",
     dict(also=("Kratsios et al., Lemma 8",))),
    ("Lemma 3", "generalisation bound conditioned on the random factor (main-text statement of Lemma 9)",
     dict(also=("Kratsios et al., Lemma 9",))),
    ("Lemma 4", r"with probability $\ge 1-\epsilon$ the Lipschitz constant is at most "
                r"$2^{c_2T}(M\nu\sqrt{2r\log(2W/\epsilon)} + \|\theta_\text{pre}\|_\infty)^{c_2T}$"),
    ("Lemma 5", r"covering number of an $\ell^\infty$ ball in parameter space",
     dict(note="a classical covering estimate the paper restates")),
    ("Lemma 6", "covering numbers transfer through a Lipschitz parametrisation"),
    ("Lemma 7", "Lipschitz stability of currying a Lipschitz loss"),
    ("Lemma 8", "covering-number bound of the random LoRA function class"),
    ("Lemma 9", "generalisation bound conditioned on the draw of the random factor"),
    ("Figure 1", "schematic of the asymmetric adapter", dict(note="a schematic drawing, nothing to reproduce")),
    ("Figure 2", "CLIP-LoRA: generalisation gap against rank on several image datasets",
     dict(offline=_NO_CLIP)),
    ("Table 1", "notation used in the paper", dict(note="notation, not a result (see the notation page)")),
)

#: the hand-written inventory, in the papers' order (the scorecard page shows it)
#:
#: :meta hide-value:
INVENTORY: tuple[Row, ...] = tuple(ZENG_LEE + JANG + KRATSIOS)

#: figures of the authors' repository (Zeng & Lee) whose number in the paper we could not establish:
#: (file(s) under ``figures/``, what they show, the book section with a comparable experiment or ``None``)
#:
#: :meta hide-value:
UNNUMBERED_FIGURES: tuple[tuple[str, str, str | None], ...] = (
    ("fnn_approx, fnn_approx_pretrained", r"ReLU FNN approximation for $\bar L \in \{1, 2\}$, random and "
     "pretrained frozen models", "chapters/01_expressivity/03_multilayer"),
    ("tfn_approx, tfn_approx_pretrained", "Transformer approximation: gradient LoRA against the rank",
     "chapters/01_expressivity/04_transformer"),
    ("flt_approx", r"LoRA against tuning the final layers ($L = 8$)",
     "chapters/01_expressivity/05_lora_vs_final_layers"),
    ("lora_bitfit_approx", "LoRA with and without trainable biases", "chapters/01_expressivity/02_relu_fnn"),
    ("train_test_gen, train_test_gen_ours", "train and test error on a finite training set", None),
    ("classification, in_out_dist (and bin_/reg_ variants)", "classification and regression under a shift of "
     "the input distribution", None),
    ("convergence", "training curves of gradient LoRA at every rank", None),
)


def base_label(label: str | None) -> str:
    """The part of a claim label the scorecard matches on: the text before the first ``" ("``."""
    return (label or "").split(" (", 1)[0].strip()


@dataclass
class Outcome:
    """A row's generated status and the claims behind it."""

    status: str
    claims: list[dict] = field(default_factory=list)

    @property
    def theorem(self) -> int:
        return sum(r["kind"] == "theorem" for r in self.claims)

    @property
    def departure(self) -> int:
        return sum(r["kind"] == "departure" for r in self.claims)

    @property
    def docs(self) -> list[str]:
        """The sections (doc paths) of its claims, in order of first appearance."""
        return list(dict.fromkeys(r["doc"] for r in self.claims if r.get("doc")))

    @property
    def chapters(self) -> list[str]:
        return list(dict.fromkeys(r["chapter"] for r in self.claims if r.get("chapter")))

    @property
    def min_margin(self) -> float | None:
        margins = [r["margin"] for r in self.claims if r["kind"] == "theorem" and r.get("margin") is not None]
        return min(margins) if margins else None


def claims_for(row: Row, records: Iterable[dict]) -> list[dict]:
    """The theorem and departure claims of ``records`` that test ``row``."""
    labels = set(row.labels())
    return [r for r in records if r.get("kind") in ("theorem", "departure") and base_label(r.get("label")) in labels]


def outcome(row: Row, records: Iterable[dict]) -> Outcome:
    """The generated status of one row (see the module docstring for the rules)."""
    claims = claims_for(row, records)
    if any(not r.get("passed", False) for r in claims):
        return Outcome("failed", claims)
    if any(r["kind"] == "departure" for r in claims):
        return Outcome("departure", claims)
    if claims:
        return Outcome("reproduced", claims)
    return Outcome("offline" if row.offline else "not attempted", claims)


def unmatched(records: Iterable[dict], rows: Iterable[Row] = INVENTORY) -> list[dict]:
    """Theorem and departure claims whose label matches no row (another paper, or a label to correct)."""
    known = {label for row in rows for label in row.labels()}
    return [r for r in records if r.get("kind") in ("theorem", "departure") and base_label(r.get("label")) not in known]


def counts(rows: Iterable[Row], records: list[dict]) -> dict[str, dict[str, int]]:
    """paper -> status -> number of rows (every status present, zeros included)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        per = out.setdefault(row.paper, dict.fromkeys(STATUSES, 0))
        per[outcome(row, records).status] += 1
    return out


def check_inventory(rows: Iterable[Row] = INVENTORY) -> list[str]:
    """Problems of a hand-written inventory, as sentences (empty when it is well-formed): an unknown paper or
    numbering, a result that is not the paper's kind and number (or a number-less row without a short name), a
    label that does not start with its paper or contains ``" ("``, an empty summary, offline reason or note, a
    label used by two rows, an ``also`` label that is no row's label."""
    rows = list(rows)
    problems, own = [], {}
    for row in rows:
        where = f"{row.paper}, {row.result}"
        label = row.labels()[0]
        if row.paper not in PAPERS:
            problems.append(f"{where}: unknown paper {row.paper!r}")
        if row.numbering not in NUMBERING:
            problems.append(f"{where}: unknown numbering {row.numbering!r}")
        if row.numbering == "none":
            if not row.result.strip() or _RESULT.match(row.result):
                problems.append(f"{where}: a result without a number needs a short name, not a number")
        elif not _RESULT.match(row.result):
            problems.append(f"{where}: result must be '<Kind> <number>' with Kind in {', '.join(KINDS)}")
        if not label.startswith(row.paper):
            problems.append(f"{where}: label {label!r} must start with the paper {row.paper!r}")
        if " (" in label:
            problems.append(f"{where}: a label must not contain ' (' (the scorecard matches on the text before it)")
        if not row.summary.strip():
            problems.append(f"{where}: empty summary")
        if row.offline is not None and not row.offline.strip():
            problems.append(f"{where}: an offline reason must say why")
        if row.note is not None and not row.note.strip():
            problems.append(f"{where}: an empty note")
        if label in own:
            problems.append(f"{where}: label {label!r} is also the label of {own[label]}")
        own.setdefault(label, where)
    for row in rows:
        for label in row.also:
            if label not in own or label == row.labels()[0]:
                problems.append(f"{row.paper}, {row.result}: 'also' label {label!r} is not another row's label")
    return problems


# ---------------------------------------------------------------------------------------------------- rendering

BADGE = {"reproduced": "bdg-success", "departure": "bdg-warning", "failed": "bdg-danger",
         "offline": "bdg-info", "not attempted": "bdg-light"}
TEXT = {"reproduced": "reproduced", "departure": "with a departure", "failed": "failed",
        "offline": "not reproducible offline", "not attempted": "not attempted"}


def badge(status: str) -> str:
    """A MyST badge (sphinx-design) for a status."""
    return f"{{{BADGE[status]}}}`{TEXT[status]}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _evidence(row: Row, out: Outcome) -> str:
    parts = []
    if out.theorem:
        margin = out.min_margin
        m = "" if margin is None else (", margin ∞" if margin == float("inf") else f", margin ≥ {margin:+.1f}")
        chapters = ", ".join(f"{{ref}}`ledger <ledger-{c}>`" for c in out.chapters)
        parts.append(f"{out.theorem} theorem claim{'s' * (out.theorem != 1)}{m} ({chapters})")
    if out.departure:
        parts.append(f"{out.departure} departure claim{'s' * (out.departure != 1)} "
                     f"({{ref}}`errata <{ERRATA[row.paper]}>`)")
    qualifiers = list(dict.fromkeys(r["label"].split(" (", 1)[1].rstrip(")") for r in out.claims
                                    if " (" in (r.get("label") or "")))
    if qualifiers:
        parts.append("labelled: " + "; ".join(qualifiers))
    if out.status in ("offline", "not attempted"):
        parts.append(row.offline or row.note or "no section of the book tests it yet")
    elif row.note:
        parts.append(row.note)
    if row.also:
        names = ", ".join(label.removeprefix(f"{row.paper}, ") for label in row.also)
        parts.append(f"claims labelled {names} count for it")
    return "; ".join(parts)


def paper_table(paper: str, records: list[dict], rows: Iterable[Row] = INVENTORY) -> str:
    """The MyST table of one paper: the result, what it says, and its status with the book section(s) that test it
    and the evidence (or the reason nothing does)."""
    lines = ["| result | what it says | status, section and evidence |", "|---|---|---|"]
    for row in rows:
        if row.paper != paper:
            continue
        out = outcome(row, records)
        result = row.result + {"slides": "", "paper": "", "none": ""}.get(row.numbering, f" ({row.numbering})")
        sections = ", ".join(f"{{doc}}`/{d}`" for d in out.docs)
        status = " — ".join(p for p in (badge(out.status), sections, _evidence(row, out)) if p)
        lines.append(f"| **{_cell(result)}** | {_cell(row.summary)} | {_cell(status)} |")
    return "\n".join(lines)


def summary_table(records: list[dict], rows: Iterable[Row] = INVENTORY) -> str:
    """Counts of rows per paper and status, as a MyST table with a total row."""
    rows = list(rows)
    table = counts(rows, records)
    total = {s: sum(per[s] for per in table.values()) for s in STATUSES}
    shown = [s for s in STATUSES if s != "failed" or total[s]]      # "failed" only when something failed
    lines = ["| paper | " + " | ".join(badge(s) for s in shown) + " | rows |", "|---|" + "---:|" * (len(shown) + 1)]
    for paper, per in table.items():
        lines.append(f"| {paper} | " + " | ".join(str(per[s]) for s in shown) + f" | {sum(per.values())} |")
    lines.append("| **all** | " + " | ".join(f"**{total[s]}**" for s in shown) + f" | **{len(rows)}** |")
    return "\n".join(lines)


def unnumbered_table() -> str:
    """The repository figures of Zeng & Lee without an established number, with a comparable section if any."""
    lines = ["| repository figure (`figures/…pdf`) | what it shows | comparable book section |", "|---|---|---|"]
    for files, what, doc in UNNUMBERED_FIGURES:
        lines.append(f"| `{files}` | {_cell(what)} | {f'{{doc}}`/{doc}`' if doc else 'none'} |")
    return "\n".join(lines)
