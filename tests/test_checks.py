import numpy as np
import pytest
import torch

from lorabook.checks import claim, fmt_num, rel_err


def test_true_claim_prints_one_stable_line(capsys):
    claim("two plus two is four", 2 + 2 == 4, value=4)
    assert capsys.readouterr().out == "✓ two plus two is four\n"


def test_false_claim_raises_with_numbers(capsys):
    with pytest.raises(AssertionError, match=r"✗ error is small \(err=0.5, n=3\)"):
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
