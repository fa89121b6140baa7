import numpy as np
import pytest
import torch

import math

from lorabook import checks
from lorabook.checks import claim, evaluate, fmt_num, rel_err

CONTROL = "test_checks.py::test_quantitative_claim_fails_on_its_negative_control"


def test_true_claim_prints_one_stable_line(capsys):
    claim("two plus two is four", 2 + 2 == 4, value=4)
    assert capsys.readouterr().out == "✓ sanity: two plus two is four\n"


def test_false_claim_raises_with_numbers(capsys):
    with pytest.raises(AssertionError, match=r"✗ sanity: error is small \(err=0.5, n=3\)"):
        claim("error is small", 0.5 < 0.1, err=0.5, n=3)
    assert capsys.readouterr().out == ""


def test_tensor_and_array_conditions():
    claim("tensor", torch.tensor(True))
    claim("array", np.array([True]))
    with pytest.raises(AssertionError):
        claim("numpy bool false", np.bool_(False))


@pytest.mark.parametrize("bad", [torch.tensor([True, False]), np.array([1, 1]), 1.0, None, "yes"])
def test_claim_rejects_non_boolean(bad):
    with pytest.raises(ValueError, match="claim condition"):
        claim("x", bad)


def test_claim_rejects_empty_statement():
    with pytest.raises(ValueError, match="non-empty string"):
        claim("  ", True)


def test_rel_err():
    assert rel_err(1.1, 1.0) == pytest.approx(0.1)
    assert rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal shapes"):
        rel_err(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        rel_err(float("nan"), 1.0)


def test_fmt_num():
    assert fmt_num(0.012345) == "0.012"
    assert fmt_num(12345.0, 3) == "1.23e+04"
    assert fmt_num(float("inf")) == "inf"


def test_check_positive_int():
    from lorabook.checks import check_positive_int

    assert check_positive_int(3, "n") == 3 and check_positive_int(np.int64(2), "n") == 2
    for bad in (0, -1, 1.0, True, "2", None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            check_positive_int(bad, "n")


@pytest.mark.parametrize("measured, op, limit, passed, margin", [
    (1e-12, "<=", 1e-9, True, 3.0),
    (1e-8, "<", 1e-9, False, -1.0),
    (0.0, "<=", 1e-9, True, math.inf),
    (0.95, ">=", 0.9, True, math.log10(0.95 / 0.9)),
    (0.5, ">", 0.9, False, math.log10(0.5 / 0.9)),
    (3, "==", 3, True, None),
    (2, "==", 3, False, None),
    (-1.0, "<=", 0.0, True, None),       # no ratio for a non-positive limit
    (0.0, ">=", 0.0, True, None),
    (torch.tensor(2.0), ">", np.float64(1.0), True, math.log10(2.0)),
])
def test_evaluate_passed_and_margin(measured, op, limit, passed, margin):
    v = evaluate(measured, op, limit)
    assert v.passed is passed
    assert v.margin == (pytest.approx(margin) if margin not in (None, math.inf) else margin)


@pytest.mark.parametrize("measured, op, limit, match", [
    (float("nan"), "<=", 1.0, "measured is nan"),
    (1.0, "<=", float("inf"), "limit is inf"),
    (1.0, "~", 1.0, "op must be one of"),
    (True, "<=", 1.0, "measured must be a real number"),
    (torch.ones(2), "<=", 1.0, "single number"),
    ("1", "<=", 1.0, "real number"),
])
def test_evaluate_rejects_bad_input(measured, op, limit, match):
    with pytest.raises(ValueError, match=match):
        evaluate(measured, op, limit)


def test_quantitative_claim_records_and_prints_stable_line(capsys):
    n = len(checks.LEDGER)
    claim("the error is tiny", 1.234567e-12, "<=", 1e-9, kind="theorem", label="Paper, Lemma 1", control=CONTROL,
          rank=3)
    assert capsys.readouterr().out == "✓ theorem (Paper, Lemma 1): the error is tiny\n"
    rec = checks.LEDGER[n]
    assert rec["kind"] == "theorem" and rec["label"] == "Paper, Lemma 1" and rec["op"] == "<="
    assert rec["measured"] == 1.234567e-12 and rec["limit"] == 1e-9 and rec["passed"]
    assert rec["margin"] == pytest.approx(math.log10(1e-9 / 1.234567e-12))
    assert rec["control"] == [CONTROL] and rec["numbers"] == {"rank": "3"} and rec["scale"] in ("quick", "default",
                                                                                                  "paper")


def test_quantitative_claim_fails_on_its_negative_control():
    # the claim above, on an input where it is false: it raises with measured and limit
    with pytest.raises(AssertionError, match=r"✗ departure \(P, L\): x \(measured=0.01 <= limit=1e-09, k=2\)"):
        claim("x", 1e-2, "<=", 1e-9, kind="departure", label="P, L", k=2)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": None}, "claim kind must be one of"),
    ({"kind": "lemma"}, "claim kind must be one of"),
    ({"kind": "theorem", "label": "P, Thm 1"}, "names no negative control"),
    ({"kind": "theorem", "label": "P, Thm 1", "control": "test_checks.py::test_nothing_here"}, "is not a test"),
    ({"kind": "theorem", "label": "P, Thm 1", "control": "nowhere.py::test_x"}, "is not a test"),
    ({"kind": "theorem", "control": CONTROL}, "must name the paper's result"),
    ({"kind": "departure"}, "must name the paper's result"),
])
def test_claim_rejects_bad_metadata(kwargs, match):
    with pytest.raises(ValueError, match=match):
        claim("s", 1.0, "<=", 2.0, **kwargs)


def test_boolean_form_is_sanity_only_and_needs_both_op_and_limit():
    with pytest.raises(ValueError, match="quantitative form"):
        claim("s", True, kind="theorem", label="P")
    with pytest.raises(ValueError, match="both op and limit"):
        claim("s", 1.0, "<=", kind="sanity")


def test_control_exists():
    assert checks.control_exists(CONTROL)
    assert checks.control_exists("tests/" + CONTROL + "[case-1]")
    assert not checks.control_exists("test_checks.py::test_absent")
    assert not checks.control_exists("test_checks.py")
    assert not checks.control_exists("../lorabook/checks.py::claim")


def test_claim_in_a_kernel_displays_text_with_the_record_in_metadata(monkeypatch):
    shown = []

    class Shell:
        kernel = object()

    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", lambda data, raw, metadata: shown.append((data, metadata)))
    claim("y", 0.5, ">=", 0.1, kind="sanity")
    [(data, metadata)] = shown
    assert data == {"text/plain": "✓ sanity: y"}
    assert metadata["lorabook"]["claim"]["measured"] == 0.5
