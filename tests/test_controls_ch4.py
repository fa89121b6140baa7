"""Negative controls of chapter 4's theorem claims (Jang et al., Theorems 3.1 and 4.1): the notebook's checks,
on an input where the theorem's hypothesis is violated or its conclusion false, must fail; on the genuine
input they pass."""
import torch

import lorabook as lb
from lorabook import ntk
from lorabook import rank_choice as rc
from lorabook.checks import evaluate


def _problem(N=8, K=3, mn=10, frac=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    p0 = ntk.synthetic_problem(N, K, mn, mn, 0.0, generator=g, loss="mse")
    prob = ntk.LinearisedProblem(p0.G, p0.f0, p0.y, frac * p0.lambda_max(), "mse")
    return prob, ntk.proximal_gradient(prob, 20_000, tol=1e-10), g


def _pataki_ratio(delta, K, N):
    """The notebook's check: sum over blocks of r(r+1)/2, divided by KN."""
    ranks = [lb.numerical_rank(d, rtol=1e-6) if d.norm() > 0 else 0 for d in delta]
    return sum(r * (r + 1) // 2 for r in ranks) / (K * N)


def test_pataki_check_passes_for_the_certified_optimum():
    prob, opt, _ = _problem()
    assert opt.cert.rel_gap < 1e-9
    assert evaluate(_pataki_ratio(opt.delta, 3, 8), "<=", 1.0).passed


def test_pataki_check_fails_for_a_full_rank_update():
    # the conclusion is false for a generic full-rank update (rank 10: 55 > KN = 24)
    prob, _, g = _problem()
    full = torch.randn(prob.shape, generator=g, dtype=torch.float64)
    assert not evaluate(_pataki_ratio(full, 3, 8), "<=", 1.0).passed


def _reach(ranks, N=8, K=3):
    prob, opt, g = _problem(N, K)
    lr = 1.8 / (prob.lipschitz() * (1 + 2 * float(prob.nuclear(opt.delta))))
    B0, A0, rk = ntk.lora_init(prob.shape, ranks, 3, init_std=0.02, zero_B=False, generator=g)
    run = ntk.lora_gd(prob, B0, A0, rk, 4000, lr)
    return float(rc.reach_fraction(run.objective, opt.cert.primal, 1e-3, len(ranks)).min())


def test_reach_check_passes_above_the_threshold():
    r = ntk.rank_threshold(3, 8)
    assert evaluate(_reach([r, r + 1]), ">=", 1.0).passed


def test_reach_check_fails_below_the_threshold():
    # hypothesis r(r+1)/2 > KN violated (r = 1 < the optimum's rank): no start reaches F*
    assert not evaluate(_reach([1]), ">=", 1.0).passed
