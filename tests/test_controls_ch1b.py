"""Negative controls of the Transformer theorem claims (every weight differs, D = 16): the page's check must fail
one rank short, the "not below" check must fail at the threshold, and a violated hypothesis must be refused."""
import pytest
import torch

from lorabook import expressivity as ex
from lorabook.checks import evaluate

D = 16


def _pair(seed=4):
    g = torch.Generator().manual_seed(seed)
    target, frozen = ex.random_tfn_pair(D, 2, 2, g)
    X = torch.randn(200, 8, D, generator=g, dtype=torch.float64)
    return target, frozen, X


def _rel_err(R, seed=4):
    target, frozen, X = _pair(seed)
    y = ex.tfn_forward(X, target)
    zero = (ex.tfn_forward(X, frozen) - y).square().sum(-1).mean()
    err = (ex.tfn_forward(X, ex.tfn_full_construction(target, frozen, R)) - y).square().sum(-1).mean()
    return (err / zero).item()


def test_full_tfn_checks_pass_on_a_genuine_input():
    assert evaluate(_rel_err(D // 2), "<=", ex.EXACT_REL_MSE).passed
    assert evaluate(_rel_err(D // 2 - 1), ">", ex.EXACT_REL_MSE).passed


def test_full_tfn_exactness_check_fails_one_rank_short():
    assert not evaluate(_rel_err(D // 2 - 1), "<=", ex.EXACT_REL_MSE).passed


def test_full_tfn_below_threshold_check_fails_at_the_threshold():
    assert not evaluate(_rel_err(D // 2), ">", ex.EXACT_REL_MSE).passed


@pytest.mark.parametrize("which", ["W1", "W2"])
def test_full_tfn_refuses_a_singular_frozen_feed_forward_weight(which):
    target, frozen, _ = _pair()
    W = frozen[0][which].clone()
    W[:, 0] = W[:, 1]                                    # rank D - 1
    frozen[0] = {**frozen[0], which: W}
    with pytest.raises(ValueError, match=f"frozen {which} of layer 1 is singular"):
        ex.tfn_full_construction(target, frozen, D // 2)


def test_full_tfn_refuses_a_singular_frozen_attention_weight():
    target, frozen, _ = _pair()
    V = frozen[1]["V"].clone()
    V[0, :, 0] = 0.0
    frozen[1] = {**frozen[1], "V": V}
    with pytest.raises(ValueError, match="singular"):
        ex.tfn_full_construction(target, frozen, D // 2)


# --- the slides' transfer extension: the Stein moment finds the row space of W_1 -----------------------------
from lorabook import transfer as tr  # noqa: E402

STEIN_ROW_SPACE_MAX = 0.15      # the page's limit on the row-space error at its largest n (16,000 samples)


def _row_space_error(activation, n=16_000, seeds=3):
    g = torch.Generator().manual_seed(0)
    teacher = tr.random_teacher(seeds, 16, [4, 16, 3], 2, activation=activation, generator=g)
    x, y = tr.sample(teacher, n, generator=g)
    V = tr.row_space(tr.stein_moment(x, y, center="linear"), 4)[0]
    return float(tr.subspace_distance(V, tr.true_row_space(teacher.W1)).median())


def test_stein_row_space_check_passes_for_a_relu_network():
    assert evaluate(_row_space_error("relu"), "<", STEIN_ROW_SPACE_MAX).passed


def test_stein_row_space_check_fails_for_an_odd_network():
    # an odd g has E[∇²g] = 0: the hypothesis (a non-singular Hessian moment) is violated
    assert not evaluate(_row_space_error("tanh"), "<", STEIN_ROW_SPACE_MAX).passed


def test_stein_row_space_check_fails_with_too_few_samples():
    assert not evaluate(_row_space_error("relu", n=200), "<", STEIN_ROW_SPACE_MAX).passed
