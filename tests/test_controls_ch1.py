"""Negative controls of chapter 1's theorem claims: the same check as the page, on an input where the theorem's
hypothesis is violated or its conclusion is false, must fail (or the construction must refuse the input)."""
import math

import pytest
import torch

from lorabook import expressivity as ex
from lorabook.checks import evaluate
from lorabook.linalg import chain_product


def _linear(D=8, L=2, rank_E=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    target, frozen = ex.random_linear_instance(D, L, rank_E, g)
    return target, frozen, target - chain_product(frozen)


def _rel_err(target, frozen, R):
    deltas = ex.linear_construction(target, frozen, R)
    adapted = chain_product([W + d for W, d in zip(frozen, deltas)])
    E = target - chain_product(frozen)
    return (torch.linalg.matrix_norm(adapted - target, 2) / torch.linalg.matrix_norm(E, 2)).item()


def test_lemma1_checks_pass_on_the_pages_input():
    target, frozen, E = _linear()
    norm = torch.linalg.matrix_norm(E, 2).item()
    for R in range(1, 9):
        dev = abs(_rel_err(target, frozen, R) - ex.lemma1_error(E, R, 2) / norm)
        assert evaluate(dev, "<=", 1e-9).passed
    assert evaluate(_rel_err(target, frozen, 4), "<=", 1e-9).passed      # R = ceil(8 / 2)
    assert evaluate(_rel_err(target, frozen, 3), ">", 1e-6).passed       # one below


def test_lemma1_check_fails_one_rank_short():
    """Adapters of rank R - 1 leave sigma_{(R-1)L+1}(E), not sigma_{RL+1}(E): both checks of the page fail."""
    target, frozen, E = _linear()
    norm = torch.linalg.matrix_norm(E, 2).item()
    for R in range(2, 5):
        dev = abs(_rel_err(target, frozen, R - 1) - ex.lemma1_error(E, R, 2) / norm)
        assert not evaluate(dev, "<=", 1e-9).passed
    assert not evaluate(_rel_err(target, frozen, math.ceil(8 / 2) - 1), "<=", 1e-9).passed


def test_lemma1_below_threshold_check_fails_at_the_threshold():
    target, frozen, _ = _linear()
    assert not evaluate(_rel_err(target, frozen, 4), ">", 1e-6).passed


def test_lemma1_construction_refuses_singular_frozen_layers():
    """The lemma assumes non-singular frozen layers; a singular one is refused, never silently used."""
    target, frozen, _ = _linear()
    singular = [frozen[0].clone(), frozen[1]]
    singular[0][:, 0] = 0.0
    with pytest.raises(ValueError):
        ex.linear_construction(target, singular, 2)


def _relu_rel_err(R, seed=1, D=16, L=2):
    g = torch.Generator().manual_seed(seed)
    fw, fb, tw, tb = ex.random_fnn_instance(D, L, 1, g)
    x = ex.uniform_inputs((2000, D), g, dtype=torch.float64)
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, 1.5 * math.sqrt(D))
    f = ex.fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases)
    target = ex.fnn_forward(x, tw, tb)
    zero = (ex.fnn_forward(x, fw, fb) - target).square().sum(-1).mean()
    return ((f - target).square().sum(-1).mean() / zero).item()


def test_lemma2_checks_pass_on_the_pages_input():
    assert evaluate(_relu_rel_err(8), "<=", ex.EXACT_REL_MSE).passed
    assert evaluate(_relu_rel_err(7), ">", ex.EXACT_REL_MSE).passed


def test_lemma2_exactness_check_fails_one_rank_short():
    assert not evaluate(_relu_rel_err(7), "<=", ex.EXACT_REL_MSE).passed


def test_lemma2_below_threshold_check_fails_at_the_threshold():
    assert not evaluate(_relu_rel_err(8), ">", ex.EXACT_REL_MSE).passed


def _partition(R, bound_rank, seed=3, D=16, L=4, Lbar=2, moment=1 / 3):
    g = torch.Generator().manual_seed(seed)
    fw, fb, tw, tb = ex.random_fnn_instance(D, L, Lbar, g)
    x = ex.uniform_inputs((2000, D), g, dtype=torch.float64)
    fbar = ex.fnn_forward(x, tw, tb)
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, math.sqrt(D))
    err = (ex.fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases) - fbar).norm(dim=-1).mean().item()
    bound = ex.partition_bound(list(tw), list(tb), list(fw), bound_rank, torch.eye(D, dtype=torch.float64) * moment)
    return err, bound, fbar.norm(dim=-1).mean().item()


def test_partition_checks_pass_on_the_pages_input():
    err, bound, _ = _partition(4, 4)
    assert evaluate(err / bound["paper"], "<=", 1.0).passed
    err, _, scale_f = _partition(8, 8)
    assert evaluate(err / scale_f, "<=", 1e-9).passed


def test_partition_exactness_check_fails_one_rank_short():
    err, _, scale_f = _partition(7, 7)
    assert not evaluate(err / scale_f, "<=", 1e-9).passed
    err, _, scale_f = _partition(8, 8)
    assert not evaluate(err / scale_f, ">", 1e-6).passed


def _stated_bound_ratio(instance, R, D, L=2, seed=5):
    """Construction's test MSE over Lemma 2's stated bound ||Sigma||_F sigma^2_{RL+1}(E), x ~ U[-1, 1]^D."""
    fw, fb, tw, tb = instance
    g = torch.Generator().manual_seed(seed)
    x = ex.uniform_inputs((1, 4000, D), g, dtype=torch.float64)
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, math.sqrt(D))
    Wc = torch.stack([W + d for W, d in zip(fw, deltas)])
    mse = ex.adapter_mse(Wc[None, None], torch.stack(biases)[None, None], tw[None], tb[None], x).item()
    E = tw[0] - chain_product(list(fw))
    return mse / ex.relu_bounds(E, R, L, torch.eye(D, dtype=torch.float64) / 3)["paper"]


def test_lemma2_flat_spectrum_departure_check_passes_on_a_flat_spectrum():
    g = torch.Generator().manual_seed(0)
    assert evaluate(_stated_bound_ratio(ex.flat_spectrum_instance(16, 2, g), 1, 16), ">", 1.0).passed


def test_lemma2_flat_spectrum_departure_check_fails_on_a_decaying_spectrum():
    """On the section's drawn instance (decaying spectrum, half the target ReLUs off) the same check of the
    departure fails already for the construction: the stated bound is not refuted there."""
    g = torch.Generator().manual_seed(1)
    inst = ex.random_fnn_instance(16, 2, 1, g)
    for R in (1, 4, 7):
        assert not evaluate(_stated_bound_ratio(inst, R, 16), ">", 1.0).passed


def _shift_excess(target, frozen, product):
    """The linear page's shifted-input measurement: |MSE(product) − MSE(construction)| on U[−½, 3/2]^D, relative to
    the frozen model's MSE there. The MSE of a residual R on that cube is ‖R‖_F²/3 + ‖R·½1‖² (second moment
    I/3 + 11ᵀ/4)."""
    def mse(M):
        R = M - target
        return (R.square().sum() / 3 + (R @ torch.full((R.shape[1],), 0.5, dtype=R.dtype)).square().sum()).item()
    R = 2  # RL = 4 < rank E = 6: the construction is the rank-RL optimum, not an exact match
    deltas = ex.linear_construction(target, frozen, R)
    optimum = chain_product([W + d for W, d in zip(frozen, deltas)])
    return abs(mse(product(optimum)) - mse(optimum)) / mse(chain_product(frozen))


def test_linear_shift_check_passes_for_the_optimum_and_fails_without_the_adapter():
    """The sanity claim "the fit carries over to shifted inputs" (limit 0.3·sqrt(gap_tol), 4.2 % at quick): the
    optimal product passes; the frozen model itself (no adapter: an in-distribution excess of the whole optimum's
    gain) fails."""
    target, frozen, _ = _linear(rank_E=6)
    frozen_product = chain_product(frozen)
    shift_tol = 0.3 * math.sqrt(2e-2)
    assert evaluate(_shift_excess(target, frozen, lambda M: M), "<=", shift_tol).passed
    assert not evaluate(_shift_excess(target, frozen, lambda M: frozen_product), "<=", shift_tol).passed
