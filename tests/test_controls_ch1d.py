"""Negative controls of the theorem claims of chapter 1's section on frozen Transformers close to the target
(near in every weight, or differing by rank-k attention changes): the page's check, run where the hypothesis is
violated, must fail; the genuine input must pass."""
import math

import numpy as np
import torch

from lorabook import expressivity as ex
from lorabook.checks import evaluate

D, H, L, N = 16, 2, 2, 8
THR = math.ceil(D / 2)
RS = list(range(1, D + 1))


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    target, far = ex.random_tfn_pair(D, H, L, g)
    X = torch.randn(60, N, D, generator=g, dtype=torch.float64)
    return g, target, far, X


def _exact_from(target, frozen, X):
    """The page's measurement: the rank from which the construction meets EXACT_REL_MSE."""
    rel = ex.tfn_construction_curve(target, frozen, RS, X).numpy()
    return ex.rank_needed(rel, RS, ex.EXACT_REL_MSE)


def test_near_threshold_check_passes_on_near_frozen_models():
    _, target, far, X = _setup()
    dev = [abs(_exact_from(target, ex.tfn_between(target, far, t), X) - THR) for t in (1.0, 0.1)]
    assert evaluate(max(dev), "==", 0).passed


def test_near_threshold_check_fails_for_a_low_rank_difference():
    """The check needs full-rank pair differences: a rank-4 change of one factor per pair is exact from 2."""
    g, target, _, X = _setup()
    frozen = ex.tfn_low_rank_frozen(target, 4, g)
    assert not evaluate(abs(_exact_from(target, frozen, X) - THR), "==", 0).passed


def _half_k_deviation(factors, ks=(2, 5, 10)):
    g, target, _, X = _setup(1)
    dev = [abs(_exact_from(target, ex.tfn_low_rank_frozen(target, k, g, factors=factors), X)
               - math.ceil(k / 2)) for k in ks]
    return max(dev)


def test_half_k_check_passes_for_one_factor_per_pair():
    assert evaluate(_half_k_deviation(("Q", "V")), "==", 0).passed


def test_half_k_check_fails_when_both_factors_change():
    """Rank-k changes of W_Q and W_K make the score difference rank 2k: exact only from min(k, D/2)."""
    assert not evaluate(_half_k_deviation(("Q", "K", "V", "O")), "==", 0).passed
