"""Negative controls of chapter 3's theorem claims: the same check as in the notebook, on an input where
the theorem's hypothesis is violated, must fail."""
import numpy as np
import torch

from lorabook import bounds as bd
from lorabook.checks import evaluate

NS_T2 = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def _theorem2_setting(draws=400):
    """The network and frozen factors of the lower-bound section (widths 1-8-8-1, r = 2, last layer x 0.1)."""
    g = torch.Generator().manual_seed(4)
    mlp = bd.make_mlp(1, 8, 2, 1, generator=g, bias=False)
    mlp["weights"][-1] *= 0.1
    Bs = bd.draw_factors(mlp, 2, draws, nu=1.0, generator=g)
    return mlp, Bs


def _witnesses(M):
    mlp, Bs = _theorem2_setting()
    wit = bd.last_layer_witness(mlp, Bs, target=1.0)
    ok = wit["size"] <= M
    return ok.double().mean().item(), torch.where(ok, wit["f1"].abs(), torch.zeros_like(wit["f1"])).numpy()


def test_witness_check_passes_with_a_large_box():
    # the claim's own input (M = 1) passes: the controls below differ only in the violated hypothesis
    good, s = _witnesses(1.0)
    assert evaluate(good, ">=", 0.95).passed
    assert evaluate(bd.theorem2_ratio(s, NS_T2, delta=0.1, C=3.0), ">=", 1.0).passed


def test_good_weights_fail_in_a_tiny_box():
    # Theorem 2 needs M large enough: at M = 0.01 almost no draw admits a witness
    good, _ = _witnesses(0.01)
    assert not evaluate(good, ">=", 1 - 0.1 / 2).passed


def test_theorem2_fails_in_a_tiny_box():
    _, s = _witnesses(0.01)
    assert not evaluate(bd.theorem2_ratio(s, NS_T2, delta=0.1, C=3.0), ">=", 1.0).passed


def test_theorem2_fails_for_a_constant_input():
    # Assumption 1 violated: X = 1 almost surely (variance 0) leaves every gap at 0
    _, s = _witnesses(1.0)
    assert not evaluate(bd.theorem2_ratio(s, NS_T2, delta=0.1, C=3.0, p=1.0), ">=", 1.0).passed


def test_rate_check_fails_for_unbounded_loss():
    # hypothesis violated: loss |y_hat - y| unbounded, heavy-tailed targets (Lomax, tail index 1.2, mean 5);
    # the member f = 0 has gap |mean_N(Y) - 5|, which decays like N^(1/1.2 - 1) = N^(-1/6)
    rng = np.random.default_rng(0)
    Ns = [16, 64, 256, 1024, 4096]
    gaps = np.stack([np.abs(rng.pareto(1.2, (400, N)).mean(1) - 5.0) for N in Ns], 1)
    assert not evaluate(bd.rate_growth(Ns, gaps), "<", 2.0).passed
    # the same estimator on a bounded loss (uniform targets, f = 0) keeps the rate
    ok = np.stack([np.abs(rng.random((400, N)).mean(1) - 0.5) for N in Ns], 1)
    assert evaluate(bd.rate_growth(Ns, ok), "<", 2.0).passed
