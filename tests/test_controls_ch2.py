"""Negative controls of chapter 2's theorem claims: the same check as in the notebook, on an input where the
theorem's hypothesis is violated (or its conclusion is false), must fail; the genuine input must pass."""
import functools

import torch

import lorabook as lb
from lorabook import ntk
from lorabook.checks import evaluate

GAP_TOL = 1e-5          # the notebook's "reached the optimum" tolerance


def _rank_excess(prob, delta):
    """The checked quantity of Theorem 3.1: max_p r(r+1)/2 - KN for the numerical rank r of delta."""
    r = max(lb.numerical_rank(d, rtol=1e-7) for d in delta)
    return r * (r + 1) / 2 - prob.K * prob.N


def _optimum(prob):
    return ntk.proximal_gradient(prob, 50_000, tol=1e-10).delta


def _degenerate_problem():
    """G_1 = I, G_2 = diag(1,1,1,1,-1,-1,-1,-1) (8x8, K = 1, N = 2): the nuclear-norm optimum is not unique and the
    proximal-gradient path from zero stays on a full-rank diagonal one, against a Pataki bound of rank 1."""
    d = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=torch.float64)
    G = torch.stack([torch.eye(8, dtype=torch.float64), torch.diag(d)]).reshape(2, 1, 1, 8, 8)
    y = torch.tensor([[4.0], [1.0]], dtype=torch.float64)
    base = ntk.LinearisedProblem(G, torch.zeros(2, 1, dtype=torch.float64), y, 0.0)
    return ntk.LinearisedProblem(G, base.f0, y, 0.1 * base.lambda_max())


def test_theorem31_generic_optimum_passes():
    gen = torch.Generator().manual_seed(0)
    base = ntk.synthetic_problem(3, 2, 8, 8, 0.0, generator=gen)
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, 0.1 * base.lambda_max())
    assert evaluate(_rank_excess(prob, _optimum(prob)), "<=", 0).passed


def test_theorem31_fails_on_a_non_unique_full_rank_optimum():
    # the check "the certified optimum satisfies r(r+1)/2 <= KN" relies on a unique optimum; on a degenerate G
    # the optimum found is full rank and the same check fails, while the reduction restores the bound
    prob = _degenerate_problem()
    delta = _optimum(prob)
    assert lb.numerical_rank(delta[0], rtol=1e-7) == 8
    assert not evaluate(_rank_excess(prob, delta), "<=", 0).passed
    red, _ = ntk.reduce_rank(prob, delta, rtol=1e-7)
    assert evaluate(_rank_excess(prob, red), "<=", 0).passed
    assert evaluate(abs(float(prob.objective(red) - prob.objective(delta))), "<=", 1e-9).passed


def _spurious_setting(rank, n_init=6, seed=0):
    """K = 2, N = 6, 8x8, lambda = 0.1 lambda_max (threshold rank 5): max relative gap of LoRA GD ends."""
    gen = torch.Generator().manual_seed(seed)
    base = ntk.synthetic_problem(6, 2, 8, 8, 0.0, generator=gen)
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, 0.1 * base.lambda_max())
    F_star = ntk.proximal_gradient(prob, 100_000, tol=1e-10).cert.primal
    B0, A0, rk = ntk.lora_init(prob.shape, [rank], n_init, init_std=0.3, zero_B=False, generator=gen)
    run = ntk.lora_gd(prob, B0, A0, rk, 3_000, 0.5)
    return float(((run.objective - F_star) / F_star).max())


def test_theorem41_above_threshold_passes():
    assert ntk.rank_threshold(2, 6) == 5
    assert evaluate(_spurious_setting(5), "<=", GAP_TOL).passed


def test_theorem41_fails_below_threshold():
    # r = 1 (r(r+1)/2 = 1 <= KN = 12): rank-constrained runs end at spurious minima above F*
    assert not evaluate(_spurious_setting(1), "<=", GAP_TOL).passed


def _small_instance(seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = ntk.synthetic_problem(6, 2, 8, 8, 0.0, generator=gen)
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, 0.1 * base.lambda_max())
    return prob, ntk.proximal_gradient(prob, 100_000, tol=1e-10).cert.primal, gen


def _lemma43_measure(prob, F_star, B, A):
    """The notebook's Lemma 4.3 check on one point: (is it a rank-deficient approximate SOSP, relative gap)."""
    so = ntk.second_order(prob, B, A)
    sosp = so.z_sigma_min <= 1e-3 and so.grad_norm <= 1e-4 and so.hess_min / prob.lam >= -1e-5
    gap = (float(ntk.lora_objective(prob, B, A)) - F_star) / F_star
    return so, sosp, gap


def test_lemma43_fails_without_second_order():
    # a spurious rank-1 minimum with a zero column appended: rank-deficient and first-order stationary, but not
    # second-order stationary (hypothesis violated) -- and not global, so the same check fails
    prob, F_star, gen = _small_instance(0)
    B0, A0, rk = ntk.lora_init(prob.shape, [1], 6, init_std=0.3, zero_B=False, generator=gen)
    run = ntk.lora_gd(prob, B0, A0, rk, 3_000, 0.5)
    s = int(run.objective.argmax())
    B, A = ntk.pad_zero_column(run.B[s], run.A[s])
    so, sosp, gap = _lemma43_measure(prob, F_star, B, A)
    assert so.z_sigma_min == 0 and so.grad_norm < 1e-10 and so.hess_min < 0 and not sosp
    assert not evaluate(gap, "<=", GAP_TOL).passed


def test_lemma43_rank_deficient_sosp_passes():
    prob, F_star, gen = _small_instance(0)
    B0, A0, rk = ntk.lora_init(prob.shape, [5], 2, init_std=0.3, zero_B=False, generator=gen)
    run = ntk.lora_gd(prob, B0, A0, rk, 3_000, 0.5)
    for s in range(2):
        so, sosp, gap = _lemma43_measure(prob, F_star, run.B[s], run.A[s])
        assert sosp
        assert evaluate(gap, "<=", GAP_TOL).passed


@functools.lru_cache(maxsize=1)
def _theorem51_setting(N=400_000, M=50_000):
    """The notebook's Theorem 5.1 instance at one N: (problem, delta_true, population sample)."""
    gen = torch.Generator().manual_seed(51)
    shape, R = (2, 1, 2, 2), 1.0
    G_pop = ntk.bounded_gradient_sample(M, shape, R, generator=gen, sigma=0.1)
    delta_true = torch.zeros(shape[1:], dtype=torch.float64)
    delta_true[0, 0, 0] = 2.0
    G = ntk.bounded_gradient_sample(N, shape, R, generator=gen, sigma=0.1)
    y = torch.multinomial(torch.softmax(torch.einsum("nkpij,pij->nk", G, delta_true), -1), 1, generator=gen)[:, 0]
    prob = ntk.LinearisedProblem(G, torch.zeros(N, 2, dtype=torch.float64), y, ntk.theorem51_lambda(R, N), "ce")
    return prob, delta_true, G_pop


def _theorem51_ratio(prob, delta_true, G_pop, delta, eps):
    exc, se = ntk.ce_excess_risk(G_pop, torch.zeros(G_pop.shape[0], 2, dtype=torch.float64), delta, delta_true)
    return (exc + 2 * se) / ntk.theorem51_bound(1.0, prob.N, 2.0, eps)


def test_theorem51_solution_passes():
    prob, delta_true, G_pop = _theorem51_setting()
    res = ntk.proximal_gradient(prob, 20_000, tol=1e-13)
    assert evaluate(_theorem51_ratio(prob, delta_true, G_pop, res.delta, res.cert.gap), "<=", 1).passed


def test_theorem51_fails_at_a_saddle():
    # Z = [B; A] = 0 is a rank-deficient first-order stationary point of the LoRA objective, but not a second-order
    # one (its Hessian has the eigenvalue lambda - lambda_max < 0): the hypothesis fails, and so does the bound
    prob, delta_true, G_pop = _theorem51_setting()
    zero = prob.zeros()
    so = ntk.second_order(prob, zero[..., :1].expand(1, 2, 1).clone(), zero[..., :1].expand(1, 2, 1).clone())
    assert so.grad_norm == 0 and so.hess_min < 0
    assert abs(so.hess_min - (prob.lam - prob.lambda_max())) < 1e-12
    assert not evaluate(_theorem51_ratio(prob, delta_true, G_pop, zero, 0.0), "<=", 1).passed
