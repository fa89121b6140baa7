"""Negative controls of the theorem claims of chapter 1's page on the paper's settings (Gaussian inputs, pretrained
and random frozen models, general partitions): the page's check, run on an input where the hypothesis is violated
or the conclusion false, must fail; the genuine input must pass."""
import math

import numpy as np
import pytest
import torch

from lorabook import expressivity as ex
from lorabook.checks import evaluate

D, L = 16, 2
THR = math.ceil(D / L)


def _instance(seed=0, init="default", D=D, L=L, Lbar=1):
    g = torch.Generator().manual_seed(seed)
    fw, fb, tw, tb = ex.paper_fnn_instance(D, L, Lbar, g, init=init)
    return g, fw, fb, tw, tb


def _rel(fw, fb, tw, tb, deltas, biases, x):
    W = torch.stack([w + d for w, d in zip(fw, deltas)])[None, None]
    return ex.relative_mse(W, torch.stack(biases)[None, None], fw[None], fb[None], tw[None], tb[None],
                           x[None]).item()


def _shift_errors(R, rho, seed=0, init="default"):
    """The page's measurement: relative test error on N(0, I) and on 5 N(0, I) of the rank-R construction."""
    g, fw, fb, tw, tb = _instance(seed, init)
    xs = (ex.gaussian_inputs((2000, D), g), ex.gaussian_inputs((2000, D), g, std=5.0))
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, rho)
    return [_rel(fw, fb, tw, tb, deltas, biases, x) for x in xs]


@pytest.mark.parametrize("init", ex.PAPER_INITS)
def test_shift_checks_pass_on_the_pages_input(init):
    rho = ex.gaussian_radius(D, std=5.0)
    assert evaluate(max(_shift_errors(THR, rho, init=init)), "<=", ex.EXACT_REL_MSE).passed
    assert evaluate(min(_shift_errors(THR - 1, rho, init=init)), ">", ex.EXACT_REL_MSE).passed


def test_shift_exactness_check_fails_one_rank_short():
    rho = ex.gaussian_radius(D, std=5.0)
    assert not evaluate(max(_shift_errors(THR - 1, rho)), "<=", ex.EXACT_REL_MSE).passed


def test_shift_exactness_check_fails_when_the_ball_misses_inputs():
    """Lemma 2 needs the inputs inside the certified set: a ball that holds only N(0, I) misses 5 N(0, I)."""
    errs = _shift_errors(THR, ex.gaussian_radius(D))
    assert evaluate(errs[0], "<=", ex.EXACT_REL_MSE).passed          # exact where the ball holds the inputs
    assert not evaluate(max(errs), "<=", ex.EXACT_REL_MSE).passed


def test_shift_below_threshold_check_fails_at_the_threshold():
    rho = ex.gaussian_radius(D, std=5.0)
    assert not evaluate(min(_shift_errors(THR, rho)), ">", ex.EXACT_REL_MSE).passed


def _threshold(fw, fb, tw, tb, x, partition=None):
    """Smallest rank whose construction is exact on x (the page's measured threshold)."""
    rel = []
    for R in range(1, D + 1):
        if partition is None:
            deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, ex.gaussian_radius(D))
        else:
            deltas, biases = ex.partition_construction(list(tw), list(tb), list(fw), partition, R,
                                                       ex.gaussian_radius(D))
        rel.append(_rel(fw, fb, tw, tb, deltas, biases, x))
    return ex.rank_needed(rel, range(1, D + 1), ex.EXACT_REL_MSE)


def test_pretrained_threshold_check_passes_after_pretraining():
    g, fw, fb, tw, tb = _instance(1)
    pw, pb, used = ex.pretrain_frozen(fw[None], fb[None], tw[None], tb[None], levels=[3], max_steps=2000,
                                      batch=256, lr=1e-3, generator=g)
    assert 0 < used.item() < 2000
    x = ex.gaussian_inputs((1000, D), g)
    assert evaluate(abs(_threshold(pw[0, 0], pb[0, 0], tw, tb, x) - THR), "==", 0).passed


def test_pretrained_threshold_check_fails_for_a_low_rank_error():
    """A frozen model whose error has rank 4 < D violates the page's premise rank(E) = D: the check fails."""
    g, fw, fb, tw, tb = _instance(1)
    fw = ex.close_in_rank(tw, fw, [[0, 1]], [4], g)
    x = ex.gaussian_inputs((1000, D), g)
    assert not evaluate(abs(_threshold(fw, fb, tw, tb, x) - THR), "==", 0).passed


def test_rank_k_threshold_check_passes_on_the_pages_input():
    g, fw, fb, tw, tb = _instance(2)
    fw = ex.close_in_rank(tw, fw, [[0, 1]], [6], g)
    x = ex.gaussian_inputs((1000, D), g)
    assert evaluate(abs(_threshold(fw, fb, tw, tb, x) - 3), "==", 0).passed


def test_rank_k_threshold_check_fails_with_full_rank_noise():
    """rank(E) = 6 only up to a full-rank perturbation of size 1e-2: the hypothesis fails, and so does the check."""
    g, fw, fb, tw, tb = _instance(2)
    fw = ex.close_in_rank(tw, fw, [[0, 1]], [6], g)
    fw[1] = fw[1] + 1e-2 * torch.randn(D, D, generator=g, dtype=torch.float64)
    x = ex.gaussian_inputs((1000, D), g)
    assert not evaluate(abs(_threshold(fw, fb, tw, tb, x) - 3), "==", 0).passed


def _fraction(dist, cases, draws, seed=0):
    g = torch.Generator().manual_seed(seed)
    hits = total = 0
    for Dd, Ld in cases:
        for _ in range(draws):
            t, f = ex.random_linear_pair(Dd, Ld, g, dist=dist)
            hits += ex.linear_rank_needed(t, f) == math.ceil(Dd / Ld)
            total += 1
    return hits / total


@pytest.mark.parametrize("dist", ["gaussian", "uniform"])
def test_random_model_check_passes_for_continuous_entries(dist):
    assert evaluate(_fraction(dist, [(16, 2), (15, 3)], 10), ">=", 1.0).passed


def test_random_model_check_fails_for_discrete_entries():
    """Entries ±1/√D have no density: singular layers and rank-deficient errors occur, the fraction drops below 1."""
    assert not evaluate(_fraction("sign", [(4, 2)], 20), ">=", 1.0).passed


def _fnn_hit(fw, fb, tw, tb, x, thr):
    rel = {}
    for R in (thr - 1, thr):
        deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), R, ex.gaussian_radius(D))
        rel[R] = _rel(fw, fb, tw, tb, deltas, biases, x)
    return rel[thr] <= ex.EXACT_REL_MSE < rel[thr - 1]


def test_random_fnn_check_passes_on_a_random_draw():
    g, fw, fb, tw, tb = _instance(3, L=4, Lbar=2)
    assert evaluate(float(_fnn_hit(fw, fb, tw, tb, ex.gaussian_inputs((1000, D), g), THR)), ">=", 1.0).passed


def test_random_fnn_check_fails_when_the_errors_are_low_rank():
    """Not a generic draw: both groups' errors have rank 4, so the construction is exact far below ceil(D/M)."""
    g, fw, fb, tw, tb = _instance(3, L=4, Lbar=2)
    fw = ex.close_in_rank(tw, fw, [[0, 1], [2, 3]], [4, 4], g)
    assert not evaluate(float(_fnn_hit(fw, fb, tw, tb, ex.gaussian_inputs((1000, D), g), THR)), ">=", 1.0).passed


PARTS = ([[0, 1], [2, 3]], [[0], [1, 2, 3]])


def _partition_instance(seed=4):
    g, _, fb, tw, tb = _instance(seed, L=4, Lbar=2)
    fw = torch.eye(D, dtype=torch.float64) + torch.randn(4, D, D, generator=g, dtype=torch.float64) / (2 * math.sqrt(D))
    fw = ex.close_in_rank(tw, fw, [[0], [1, 2, 3]], [2, None], g)
    return fw, fb, tw, tb, ex.gaussian_inputs((1000, D), g)


def test_general_partition_check_passes_on_the_pages_input():
    fw, fb, tw, tb, x = _partition_instance()
    for part, expected in zip(PARTS, (8, 6)):
        pred = ex.partition_threshold(list(tw), list(fw), part)
        assert pred == expected
        assert evaluate(abs(_threshold(fw, fb, tw, tb, x, part) - pred), "==", 0).passed


def test_general_partition_check_fails_for_the_other_partition():
    """The uniform partition does not reach the general partition's threshold: its measured threshold (8) checked
    against the other partition's prediction (6) fails."""
    fw, fb, tw, tb, x = _partition_instance()
    pred_general = ex.partition_threshold(list(tw), list(fw), PARTS[1])
    measured_uniform = _threshold(fw, fb, tw, tb, x, PARTS[0])
    assert not evaluate(abs(measured_uniform - pred_general), "==", 0).passed


def _usv_construction_over_stated(init, seed=5):
    """The page's departure measurement at R = 1: the test error of the proof's construction divided by the stated
    bound ||Sigma||_F sigma^2 (Sigma = I for N(0, I) inputs)."""
    g, fw, fb, tw, tb = _instance(seed, init)
    x = ex.gaussian_inputs((2000, D), g)
    stated = ex.relu_bounds(tw[0] - fw[1] @ fw[0], 1, L, torch.eye(D, dtype=torch.float64))["paper"]
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), 1, ex.gaussian_radius(D, std=5.0))
    Wc = torch.stack([w + d for w, d in zip(fw, deltas)])[None, None]
    return ex.adapter_mse(Wc, torch.stack(biases)[None, None], tw[None], tb[None], x[None]).item() / stated


def test_usv_construction_check_passes_on_the_pages_setting():
    assert evaluate(_usv_construction_over_stated("uniform_singular_values"), ">", 1.0).passed


def test_usv_construction_check_fails_on_the_default_initialisation():
    """A decaying spectrum (the paper's default initialisation): the construction meets the stated bound (about
    half of it), so the check fails."""
    assert not evaluate(_usv_construction_over_stated("default"), ">", 1.0).passed
