"""Unit and property tests of lorabook.ntk (float64, fast)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lorabook import ntk


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _problem(N=6, K=1, m=4, n=5, lam_frac=0.2, loss="mse", seed=0, P=1):
    pr = ntk.synthetic_problem(N, K, m, n, 0.0, generator=_gen(seed), loss=loss, P=P)
    return ntk.LinearisedProblem(pr.G, pr.f0, pr.y, lam_frac * pr.lambda_max(), loss)


# ---------------------------------------------------------------- rank conditions
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 200))
def test_rank_threshold_is_smallest(K, N):
    r = ntk.rank_threshold(K, N)
    assert r * (r + 1) // 2 > K * N
    assert (r - 1) * r // 2 <= K * N
    assert ntk.pataki_rank(K, N) == r - 1


def test_rank_threshold_values():
    assert ntk.rank_threshold(1, 1) == 2
    assert ntk.rank_threshold(1, 32) == 8   # the paper's N = 32, K = 1 (8·9/2 = 36 > 32)
    assert ntk.rank_threshold(2, 3) == 4


@pytest.mark.parametrize("K,N", [(0, 3), (2, -1), (1.5, 2), (True, 3), (1, "4")])
def test_rank_threshold_rejects(K, N):
    with pytest.raises(ValueError, match="positive integer"):
        ntk.rank_threshold(K, N)


# ---------------------------------------------------------------- problem and certificate
def test_problem_validation():
    G = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="loss must be"):
        ntk.LinearisedProblem(G, torch.zeros(3, 1), torch.zeros(3, 1), 0.1, "hinge")
    with pytest.raises(ValueError, match="y must be"):
        ntk.LinearisedProblem(G, torch.zeros(3, 1), torch.zeros(4, 1), 0.1)
    with pytest.raises(ValueError, match="f0 must be"):
        ntk.LinearisedProblem(G, torch.full((3, 1), float("nan")), torch.zeros(3, 1), 0.1)
    with pytest.raises(ValueError, match="lam must be"):
        ntk.LinearisedProblem(G, torch.zeros(3, 1), torch.zeros(3, 1), -1.0)
    with pytest.raises(ValueError, match="G contains NaN"):
        ntk.LinearisedProblem(G * float("nan"), torch.zeros(3, 1), torch.zeros(3, 1), 0.1)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        ntk.LinearisedProblem(G, torch.zeros(3, 1), torch.full((3, 1), 0.5), 0.1, "logistic")
    with pytest.raises(ValueError, match="K = 1"):
        ntk.LinearisedProblem(torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.zeros(3, 2), torch.zeros(3, 2), 0.1,
                              "logistic")
    with pytest.raises(ValueError, match="G must have shape"):
        ntk.LinearisedProblem(torch.randn(3, 2, dtype=torch.float64), torch.zeros(3, 1), torch.zeros(3, 1), 0.1)
    pr = ntk.LinearisedProblem(G, torch.zeros(3, 1), torch.zeros(3, 1), 0.1)
    with pytest.raises(ValueError, match="delta must have shape"):
        pr.objective(torch.zeros(2, 3))


def test_outputs_match_inner_products():
    pr = _problem(N=5, K=2, m=3, n=4, P=2)
    delta = torch.randn(2, 3, 4, dtype=torch.float64, generator=_gen(1))
    direct = pr.f0 + torch.einsum("nkpij,pij->nk", pr.G, delta)
    assert torch.allclose(pr.outputs(delta), direct)
    batched = pr.outputs(torch.stack([delta, 2 * delta]))
    assert batched.shape == (2, 5, 2) and torch.allclose(batched[0], direct)
    # the gradient is the adjoint of the output map applied to the output gradient (finite differences)
    d = delta.clone().requires_grad_(True)
    auto, = torch.autograd.grad(pr.data_loss(d), d)
    assert torch.allclose(auto, pr.grad(delta))


def test_svt_is_the_nuclear_prox():
    X = torch.randn(5, 4, dtype=torch.float64, generator=_gen(2))
    Y, s = ntk.svt(X, 0.7)
    assert torch.allclose(torch.linalg.svdvals(Y), s, atol=1e-12)
    assert torch.allclose(s, (torch.linalg.svdvals(X) - 0.7).clamp_min(0))
    obj = lambda Z: 0.5 * (Z - X).square().sum() + 0.7 * torch.linalg.svdvals(Z).sum()  # noqa: E731
    for _ in range(20):  # the prox value is below every random nearby point
        Z = Y + 0.05 * torch.randn(5, 4, dtype=torch.float64, generator=_gen(_))
        assert obj(Y) <= obj(Z) + 1e-12
    with pytest.raises(ValueError, match="tau must be"):
        ntk.svt(X, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        ntk.svt(X * float("nan"), 0.1)


@pytest.mark.parametrize("loss", ["mse", "logistic"])
def test_certified_optimum_matches_cvxpy(loss):
    import cvxpy as cp  # a requirement: this cross-check must never be skipped
    pr = _problem(N=6, m=4, n=5, lam_frac=0.2, loss=loss, seed=3)
    res = ntk.proximal_gradient(pr, 5000, tol=1e-10)
    assert res.cert.rel_gap < 1e-9 and res.cert.kkt < 1e-4
    X = cp.Variable((4, 5))
    y = pr.y.numpy().ravel()
    z = cp.hstack([cp.sum(cp.multiply(pr.G[i, 0, 0].numpy(), X)) for i in range(6)])
    data = cp.sum_squares(z - y) / 12 if loss == "mse" else cp.sum(cp.logistic(z) - cp.multiply(y, z)) / 6
    prob = cp.Problem(cp.Minimize(data + pr.lam * cp.normNuc(X)))
    prob.solve()
    assert abs(prob.value - res.cert.primal) / prob.value < 1e-4
    assert res.cert.primal <= prob.value + 1e-7  # ours is at least as good
    # the dual value is a valid lower bound on the cvxpy optimum too
    assert res.cert.dual <= prob.value + 1e-7


def test_certificate_detects_non_optimal_points():
    pr = _problem(seed=4)
    opt = ntk.proximal_gradient(pr, 5000, tol=1e-10)
    bad = ntk.certificate(pr, opt.delta + 0.1)
    assert bad.rel_gap > 1e-3 and bad.kkt > 1e-2
    assert bad.primal >= opt.cert.dual - 1e-12   # weak duality
    with pytest.raises(ValueError, match="single delta"):
        ntk.certificate(pr, torch.stack([opt.delta, opt.delta]))


def test_regularisation_is_applied():
    """The reference code's weight-decay / nuclear steps did nothing; here λ changes the solution."""
    pr = _problem(seed=5, lam_frac=0.3)
    pr0 = ntk.LinearisedProblem(pr.G, pr.f0, pr.y, 0.0)
    a = ntk.proximal_gradient(pr, 3000, tol=1e-10)
    b = ntk.proximal_gradient(pr0, 3000)
    assert pr.nuclear(a.delta) < pr.nuclear(b.delta) - 1e-3
    # LoRA with weight decay lands on the convex optimum (not on the λ = 0 one)
    B, A, rk = ntk.lora_init(pr.shape, [4], 2, init_std=0.3, zero_B=False, generator=_gen(0))
    lo = ntk.lora_gd(pr, B, A, rk, 4000, 0.3)
    assert float(((lo.objective - a.cert.primal) / a.cert.primal).abs().max()) < 1e-4
    lo0 = ntk.lora_gd(pr0, B, A, rk, 200, 0.3)
    assert not torch.allclose(lo.delta, lo0.delta, atol=1e-3)


def test_plain_prox_and_lr_validation():
    pr = _problem(seed=6)
    fast = ntk.proximal_gradient(pr, 200, record_every=10)
    slow = ntk.proximal_gradient(pr, 200, accelerate=False, record_every=10)
    assert fast.history.shape == (21,) and slow.history[-1] >= fast.cert.dual - 1e-12
    assert torch.all(slow.history[1:] <= slow.history[:-1] + 1e-12)   # plain prox-grad is monotone
    with pytest.raises(ValueError, match="lr must lie"):
        ntk.proximal_gradient(pr, 10, lr=10.0 / pr.lipschitz())
    with pytest.raises(ValueError, match="steps must be"):
        ntk.proximal_gradient(pr, 0)


# ---------------------------------------------------------------- rank reduction (Theorem 3.1)
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 8), st.integers(1, 2), st.integers(0, 10_000))
def test_rank_reduction_unregularised(N, K, seed):
    pr = ntk.synthetic_problem(N, K, 7, 6, 0.0, generator=_gen(seed))
    d = ntk.min_norm_interpolant(pr)
    assert float(pr.data_loss(d)) < 1e-20
    red, hist = ntk.reduce_rank(pr, d)
    r = torch.linalg.matrix_rank(red[0], rtol=1e-8).item()
    assert r * (r + 1) // 2 <= K * N
    assert hist[0] >= hist[-1] == r
    assert torch.allclose(pr.outputs(red), pr.outputs(d), atol=1e-8)
    assert pr.nuclear(red) <= pr.nuclear(d) + 1e-8


def test_min_norm_interpolant_rejects():
    with pytest.raises(ValueError, match="squared-error"):
        ntk.min_norm_interpolant(_problem(loss="logistic"))
    with pytest.raises(ValueError, match="exceeds"):
        ntk.min_norm_interpolant(ntk.synthetic_problem(30, 1, 2, 2, 0.0, generator=_gen(0)))


def test_rank_reduction_two_blocks_keeps_objective():
    pr = _problem(N=4, K=1, m=6, n=6, P=2, lam_frac=0.0)
    d = torch.linalg.lstsq(pr.G.reshape(4, -1), (pr.y - pr.f0).reshape(-1, 1)).solution.reshape(pr.shape)
    red, hist = ntk.reduce_rank(pr, d)
    ranks = [torch.linalg.matrix_rank(x, rtol=1e-8).item() for x in red]
    assert sum(r * (r + 1) // 2 for r in ranks) <= 4
    assert abs(float(pr.objective(red) - pr.objective(d))) < 1e-10
    with pytest.raises(ValueError, match="rtol"):
        ntk.reduce_rank(pr, d, rtol=2.0)
    with pytest.raises(ValueError, match="delta must have shape"):
        ntk.reduce_rank(pr, d[0])


# ---------------------------------------------------------------- LoRA GD (Theorem 4.1)
def test_lora_init_and_masks():
    B, A, rk = ntk.lora_init((1, 5, 4), [1, 3], 2, init_std=0.5, zero_B=True, generator=_gen(0))
    assert B.shape == (4, 1, 5, 3) and A.shape == (4, 1, 4, 3) and rk.tolist() == [1, 1, 3, 3]
    assert (B == 0).all() and (A[:2, :, :, 1:] == 0).all()
    with pytest.raises(ValueError, match="ranks must be"):
        ntk.lora_init((1, 5, 4), [5], 1, init_std=0.5, zero_B=True, generator=_gen(0))
    with pytest.raises(ValueError, match="init_std"):
        ntk.lora_init((1, 5, 4), [2], 1, init_std=0.0, zero_B=True, generator=_gen(0))


def test_lora_gd_respects_rank_and_perturbation():
    pr = _problem(N=4, m=5, n=5, seed=7, lam_frac=0.05)
    opt = ntk.proximal_gradient(pr, 5000, tol=1e-11)
    B, A, rk = ntk.lora_init(pr.shape, [1, 4], 2, init_std=0.3, zero_B=False, generator=_gen(1))
    out = ntk.lora_gd(pr, B, A, rk, 3000, 0.3, record_every=100)
    assert out.history.shape == (31, 4)
    assert all(torch.linalg.matrix_rank(out.delta[s, 0]).item() <= rk[s].item() for s in range(4))
    assert (out.objective >= opt.cert.dual - 1e-10).all()          # never below the certified optimum
    assert float(((out.objective[2:] - opt.cert.primal) / opt.cert.primal).max()) < 1e-3   # r = 4 ≥ threshold
    eps = 1e-2
    Pm = ntk.random_psd(10, eps, generator=_gen(2))[0]
    pert = ntk.lora_gd(pr, B[2:], A[2:], rk[2:], 3000, 0.3, perturbation=Pm)
    excess = (pert.objective - opt.cert.primal).max().item()
    assert -1e-10 <= excess <= eps * float(pr.nuclear(opt.delta)) + 1e-6   # Corollary 4.2 (our constant)
    with pytest.raises(ValueError, match="positive semi-definite"):
        ntk.lora_gd(pr, B, A, rk, 10, 0.3, perturbation=-torch.eye(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="lr must be"):
        ntk.lora_gd(pr, B, A, rk, 10, -1.0)
    with pytest.raises(ValueError, match="need B"):
        ntk.lora_gd(pr, B[:, :, :3], A, rk, 10, 0.3)


def test_random_psd():
    Pm = ntk.random_psd(6, 0.3, 3, generator=_gen(0))
    assert Pm.shape == (3, 6, 6)
    assert torch.allclose(Pm.norm(dim=(-1, -2)), torch.full((3,), 0.3, dtype=torch.float64))
    assert torch.linalg.eigvalsh(Pm).min() > -1e-12
    with pytest.raises(ValueError, match="eps"):
        ntk.random_psd(3, -1.0)


# ---------------------------------------------------------------- linearisation with torch.func
class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(3, 4).double()
        self.l2 = nn.Linear(4, 4).double()
        self.out = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.out(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def test_jacobian_and_linearised_prediction():
    net = _TinyNet()
    names = ["l2.weight"]
    x = torch.randn(7, 3, dtype=torch.float64, generator=_gen(0))
    f0, G = ntk.per_example_jacobian(net, names, x)
    assert f0.shape == (7, 2) and G.shape == (7, 2, 1, 4, 4)
    # compare with autograd on one example and output
    xi = x[3:4]
    W = net.l2.weight
    g, = torch.autograd.grad(net(xi)[0, 1], W)
    assert torch.allclose(G[3, 1, 0], g)
    delta = 1e-4 * torch.randn(1, 4, 4, dtype=torch.float64, generator=_gen(1))
    f0b, flin = ntk.linearised_predict(net, names, delta, x, batch_size=3)
    assert torch.allclose(f0b, f0)
    assert torch.allclose(flin, f0 + torch.einsum("nkpij,pij->nk", G, delta))
    actual = ntk.predict_with_delta(net, names, delta, x)
    assert (actual - flin).abs().max() < 1e-7          # second-order small for a tiny step
    assert (actual - f0).abs().max() > 1e-6
    with pytest.raises(ValueError, match="no parameter"):
        ntk.per_example_jacobian(net, ["nope.weight"], x)
    with pytest.raises(ValueError, match="share one shape"):
        ntk.per_example_jacobian(net, ["l1.weight", "l2.weight"], x)
    with pytest.raises(ValueError, match="weight matrix"):
        ntk.per_example_jacobian(net, ["l2.bias"], x)
    with pytest.raises(ValueError, match="delta must have shape"):
        ntk.linearised_predict(net, names, torch.zeros(4, 4, dtype=torch.float64), x)
    with pytest.raises(ValueError, match="leading batch"):
        ntk.per_example_jacobian(net, names, (x, x[:2]))


def test_train_actual_lora_small_model():
    class Logit(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _TinyNet()

        def forward(self, x):
            return self.net(x)[:, 0]

    m = Logit()
    names = ["net.l2.weight"]
    x = torch.randn(8, 3, dtype=torch.float64, generator=_gen(0))
    y = torch.tensor([0, 1] * 4)
    A0 = 0.1 * torch.randn(1, 4, 2, dtype=torch.float64, generator=_gen(1))
    delta, hist = ntk.train_actual_lora(m, names, x, y, 2, 50, 0.5, 0.01, A0=A0, adam=False, record_every=10)
    d2, _ = ntk.train_actual_lora(m, names, x, y, 2, 20, 0.01, 0.01, A0=A0)
    assert d2.abs().max() > 0
    assert delta.shape == (1, 4, 4) and hist.shape == (6,) and hist[-1] < hist[0]
    assert torch.linalg.matrix_rank(delta[0]).item() <= 2
    with pytest.raises(ValueError, match="A0 must have shape"):
        ntk.train_actual_lora(m, names, x, y, 3, 5, 0.5, 0.01, A0=A0)
    with pytest.raises(ValueError, match="labels"):
        ntk.train_actual_lora(m, names, x, torch.full((8,), 2), 2, 5, 0.5, 0.01, A0=A0)


# ---------------------------------------------------------------- generalisation
def test_rademacher_and_bound():
    G = torch.randn(20, 1, 1, 4, 4, dtype=torch.float64, generator=_gen(0))
    out = ntk.rademacher_bound(G, 2.0, n_draws=300, generator=_gen(1))
    assert 0 < out["empirical"] <= out["lemma"] + 1e-12
    # linear in the radius
    out2 = ntk.rademacher_bound(G, 4.0, n_draws=300, generator=_gen(1))
    assert math.isclose(out2["empirical"], 2 * out["empirical"]) and math.isclose(out2["lemma"], 2 * out["lemma"])
    # hand values: 2*1.5*0.1 + 4*2*sqrt(2 ln 80 / 100) = 0.3 + 2.368331..., and the expected-complexity form
    # 0.3 + 2*2*sqrt(2 ln 40 / 100) = 0.3 + 0.543241...
    b = ntk.generalisation_bound(0.1, 1.5, 2.0, 100, 0.05)
    assert abs(b - (0.3 + 2.3683315)) < 1e-6
    b_exp = ntk.generalisation_bound(0.1, 1.5, 2.0, 100, 0.05, empirical=False)
    assert abs(b_exp - (0.3 + 0.5432406)) < 1e-6
    with pytest.raises(ValueError, match="radius"):
        ntk.rademacher_bound(G, -1.0)
    with pytest.raises(ValueError, match="G must have shape"):
        ntk.rademacher_bound(G[:, 0], 1.0)
    with pytest.raises(ValueError, match="delta must lie"):
        ntk.generalisation_bound(0.1, 1.0, 1.0, 10, 1.5)


def test_synthetic_problem_shapes():
    pr = ntk.synthetic_problem(5, 2, 3, 4, 0.1, generator=_gen(0), P=2)
    assert pr.shape == (2, 3, 4) and pr.N == 5 and pr.K == 2
    assert math.isclose(pr.lipschitz(), 1.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="positive integer"):
        ntk.synthetic_problem(0, 1, 3, 3, 0.1, generator=_gen(0))
    assert np.isfinite(pr.lambda_max())


def test_gram_path_matches_svd():
    X = torch.randn(2, 100, 120, dtype=torch.float64, generator=_gen(3))
    X[1] = X[1, :, :5] @ torch.randn(5, 120, dtype=torch.float64, generator=_gen(4))  # a low-rank block
    assert min(X.shape[-2:]) > ntk.GRAM_MIN_DIM
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    tau = 0.5 * float(s[0, 3])
    ref = (U * (s - tau).clamp_min(0).unsqueeze(-2)) @ Vh
    out, s_out = ntk.svt(X, tau)
    assert torch.allclose(out, ref, atol=1e-9) and torch.allclose(s_out, (s - tau).clamp_min(0), atol=1e-9)
    sv = ntk.singular_values(X)
    assert torch.allclose(sv[0], s[0], rtol=1e-9) and torch.allclose(sv[1, :5], s[1, :5], rtol=1e-9)
    out_t, _ = ntk.svt(X.transpose(-1, -2), tau)
    assert torch.allclose(out_t, ref.transpose(-1, -2), atol=1e-9)


def test_certificate_kkt_hand_value_with_lipschitz_four():
    # 1x1 problem, G = 2, f0 = 0, y = 1, mse, lambda = 0.5: L = |G|^2/N = 4; at delta = 0 the gradient is
    # (0 - 1) * 2 = -2, svt(0 + 2/4, 0.5/4) = 0.375, kkt = L * 0.375 / lambda = 3.0 (0.75 without the factor L)
    G = torch.full((1, 1, 1, 1, 1), 2.0, dtype=torch.float64)
    prob = ntk.LinearisedProblem(G, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                                 0.5)
    assert math.isclose(prob.lipschitz(), 4.0)
    cert = ntk.certificate(prob, torch.zeros(1, 1, 1, dtype=torch.float64))
    assert abs(cert.kkt - 3.0) < 1e-12
    # the optimum: minimise (2d - 1)^2/2 + 0.5|d| -> 4d - 2 + 0.5 = 0, d = 0.375, kkt 0
    cert = ntk.certificate(prob, torch.full((1, 1, 1), 0.375, dtype=torch.float64))
    assert cert.kkt < 1e-12 and cert.gap < 1e-12


# ---------------------------------------------------------------- multi-class softmax cross-entropy (K > 1)
def _ce_problem(N=8, K=3, m=4, n=5, lam_frac=0.2, seed=0, P=1):
    return _problem(N=N, K=K, m=m, n=n, lam_frac=lam_frac, loss="ce", seed=seed, P=P)


def test_ce_loss_matches_torch_cross_entropy():
    f = torch.randn(7, 3, dtype=torch.float64, generator=_gen(1))
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    ref = nn.functional.cross_entropy(f, labels, reduction="none")
    assert torch.allclose(ntk.per_example_loss(f, labels, "ce"), ref, atol=1e-14)
    onehot = nn.functional.one_hot(labels, 3).to(torch.float64)
    assert torch.allclose(ntk.per_example_loss(f, onehot, "ce"), ref, atol=1e-14)
    # batched outputs (..., N, K)
    both = ntk.per_example_loss(torch.stack([f, 2 * f]), onehot, "ce")
    assert both.shape == (2, 7) and torch.allclose(both[0], ref)


def test_ce_problem_stores_one_hot_and_gradients_match_autograd():
    pr = _ce_problem(P=2)
    assert pr.y.shape == (8, 3) and torch.equal(pr.y.sum(-1), torch.ones(8, dtype=torch.float64))
    same = ntk.LinearisedProblem(pr.G, pr.f0, pr.y.argmax(-1), pr.lam, "ce")
    assert torch.equal(same.y, pr.y)
    delta = torch.randn(pr.shape, dtype=torch.float64, generator=_gen(2))
    d = delta.clone().requires_grad_(True)
    auto, = torch.autograd.grad(pr.data_loss(d), d)
    assert torch.allclose(auto, pr.grad(delta), atol=1e-14, rtol=1e-12)
    ref = nn.functional.cross_entropy(pr.outputs(delta), pr.y.argmax(-1))
    assert abs(float(pr.data_loss(delta) - ref)) < 1e-13


def test_ce_lipschitz_constant_bounds_gradient_changes():
    pr = _ce_problem(seed=3)
    L = pr.lipschitz()
    for s in range(10):
        a = torch.randn(pr.shape, dtype=torch.float64, generator=_gen(10 + s))
        b = a + 0.1 * torch.randn(pr.shape, dtype=torch.float64, generator=_gen(40 + s))
        assert float((pr.grad(a) - pr.grad(b)).norm()) <= L * float((a - b).norm()) * (1 + 1e-12)


def test_ce_certificate_gap_vanishes_at_optimum_and_matches_cvxpy():
    import cvxpy as cp
    pr = _ce_problem(N=8, K=3, m=4, n=5, lam_frac=0.2, seed=4)
    res = ntk.proximal_gradient(pr, 20_000, tol=1e-11)
    assert res.cert.rel_gap < 1e-10 and res.cert.kkt < 1e-4
    assert res.cert.dual <= res.cert.primal
    # away from the optimum the gap is large (it can fail)
    bad = ntk.certificate(pr, res.delta + 0.05)
    assert bad.rel_gap > 1e-3 and bad.primal >= res.cert.dual - 1e-12
    X = cp.Variable((4, 5))
    G = pr.G[:, :, 0].numpy()
    Y = pr.y.numpy()
    rows = []
    for i in range(8):
        z = cp.hstack([cp.sum(cp.multiply(G[i, k], X)) for k in range(3)])
        rows.append(cp.log_sum_exp(z) - Y[i] @ z)
    prob = cp.Problem(cp.Minimize(sum(rows) / 8 + pr.lam * cp.normNuc(X)))
    prob.solve()
    assert abs(prob.value - res.cert.primal) / prob.value < 1e-5
    assert res.cert.dual <= prob.value + 1e-7


def test_ce_lora_reaches_the_optimum_and_rank_reduction_keeps_objective():
    pr = _ce_problem(N=3, K=3, m=6, n=6, lam_frac=0.1, seed=5)
    opt = ntk.proximal_gradient(pr, 20_000, tol=1e-11)
    r = ntk.rank_threshold(3, 3)      # r(r+1)/2 > 9: r = 4
    B, A, rk = ntk.lora_init(pr.shape, [r], 3, init_std=0.3, zero_B=False, generator=_gen(6))
    lo = ntk.lora_gd(pr, B, A, rk, 3000, 0.5)
    assert float(((lo.objective - opt.cert.primal) / opt.cert.primal).abs().max()) < 1e-6
    red, hist = ntk.reduce_rank(pr, opt.delta, rtol=1e-7)
    assert abs(float(pr.objective(red) - pr.objective(opt.delta))) < 1e-9
    rr = max(int((torch.linalg.svdvals(d) > 1e-7 * float(torch.linalg.svdvals(d).max())).sum()) for d in red)
    assert rr * (rr + 1) // 2 <= 9


@pytest.mark.parametrize("y,match", [
    (torch.tensor([0, 1, 3, 0]), "lie in"),
    (torch.tensor([0, -1, 2, 0]), "lie in"),
    (torch.tensor([0.0, 1.5, 2.0, 0.0]), "integers"),
    (torch.full((4, 3), 0.5, dtype=torch.float64), "sum to 1"),
    (torch.tensor([[1.0, 0.5, -0.5]] * 4, dtype=torch.float64), "non-negative"),
    (torch.zeros(4, 2), "shape"),
    (torch.zeros(5, dtype=torch.long), "y must be"),
])
def test_ce_rejects_bad_labels(y, match):
    G = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=_gen(7))
    with pytest.raises(ValueError, match=match):
        ntk.LinearisedProblem(G, torch.zeros(4, 3), y, 0.1, "ce")


def test_ce_needs_two_classes():
    G = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=_gen(8))
    with pytest.raises(ValueError, match="K >= 2"):
        ntk.LinearisedProblem(G, torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 0.1, "ce")
    with pytest.raises(ValueError, match="K >= 2"):
        ntk.synthetic_problem(4, 1, 2, 2, 0.1, generator=_gen(0), loss="ce")
    with pytest.raises(ValueError, match="loss must be"):
        ntk.synthetic_problem(4, 2, 2, 2, 0.1, generator=_gen(0), loss="hinge")
    with pytest.raises(ValueError, match="lie in"):
        ntk.per_example_loss(torch.zeros(2, 3), torch.tensor([0, 3]), "ce")


# ---------------------------------------------------------------- second-order conditions
def test_second_order_matches_finite_differences_and_escape_identity():
    pr = _problem(N=4, K=2, m=4, n=3, lam_frac=0.3, seed=9)
    B = torch.randn(1, 4, 2, dtype=torch.float64, generator=_gen(1))
    A = torch.randn(1, 3, 2, dtype=torch.float64, generator=_gen(2))
    so = ntk.second_order(pr, B, A)
    x = torch.cat([B.reshape(-1), A.reshape(-1)])
    f = lambda v: float(ntk.lora_objective(pr, v[:8].reshape(1, 4, 2), v[8:].reshape(1, 3, 2)))  # noqa: E731
    g_fd = torch.tensor([(f(x + 1e-6 * e) - f(x - 1e-6 * e)) / 2e-6 for e in torch.eye(14, dtype=torch.float64)])
    assert abs(float(g_fd.norm()) - so.grad_norm) < 1e-6
    assert so.hess_eigs.shape == (14,) and so.sym_dim == 1
    # a zero column decouples: at a stationary point the padded Hessian has lam - ||grad||_2 as an eigenvalue
    B0, A0, rk = ntk.lora_init(pr.shape, [1], 1, init_std=0.3, zero_B=False, generator=_gen(3))
    st = ntk.lora_gd(pr, B0, A0, rk, 4000, 0.3)
    Bp, Ap = ntk.pad_zero_column(st.B[0], st.A[0])
    sp = ntk.second_order(pr, Bp, Ap)
    pred = pr.lam * (1 - sp.grad_op_over_lam)
    assert float((sp.hess_eigs - pred).abs().min()) < 1e-10
    assert sp.z_sigma_min == 0.0


def test_second_order_validation():
    pr = _problem(N=4, K=1, m=4, n=3, lam_frac=0.3)
    with pytest.raises(ValueError, match="need B"):
        ntk.second_order(pr, torch.zeros(1, 3, 2, dtype=torch.float64), torch.zeros(1, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        ntk.second_order(pr, torch.full((1, 4, 1), float("nan"), dtype=torch.float64),
                         torch.zeros(1, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="lam > 0"):
        pr0 = ntk.LinearisedProblem(pr.G, pr.f0, pr.y, 0.0)
        ntk.second_order(pr0, torch.zeros(1, 4, 1, dtype=torch.float64), torch.zeros(1, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="perturbation must have shape"):
        ntk.lora_objective(pr, torch.zeros(1, 4, 1, dtype=torch.float64), torch.zeros(1, 3, 1, dtype=torch.float64),
                           torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="B and A"):
        ntk.pad_zero_column(torch.zeros(4, 1), torch.zeros(3, 1))


# ---------------------------------------------------------------- Theorem 5.1 (restated)
def test_theorem51_lambda_and_bound():
    lam = ntk.theorem51_lambda(1.0, 10_000, 0.05)
    assert lam == pytest.approx(8 / 100 * (2 + math.sqrt(math.log(40))))
    assert ntk.theorem51_lambda(2.0, 40_000, 0.05) == pytest.approx(lam)   # ∝ R/√N
    assert ntk.theorem51_bound(1.0, 10_000, 2.0, 0.1) == pytest.approx(6 * lam + 0.2)
    for bad in (dict(R=0.0, N=10), dict(R=1.0, N=0), dict(R=1.0, N=10, eta=1.0)):
        with pytest.raises(ValueError):
            ntk.theorem51_lambda(**bad)
    with pytest.raises(ValueError, match="eps"):
        ntk.theorem51_bound(1.0, 10, 1.0, -0.1)


def test_bounded_gradient_sample_and_excess_risk():
    G = ntk.bounded_gradient_sample(500, (3, 1, 2, 3), 2.0, generator=_gen(0))
    assert G.shape == (500, 3, 1, 2, 3)
    assert torch.allclose(G.flatten(1).norm(dim=1), torch.full((500,), 2.0, dtype=torch.float64))
    d_true = torch.zeros(1, 2, 3, dtype=torch.float64)
    d_true[0, 0, 0] = 1.5
    f0 = torch.zeros(500, 3, dtype=torch.float64)
    zero, se = ntk.ce_excess_risk(G, f0, d_true, d_true)
    assert zero == 0.0 and se == 0.0
    # the excess risk is the difference of expected cross-entropies under the true label law
    d = torch.randn(1, 2, 3, dtype=torch.float64, generator=_gen(1))
    ex, _ = ntk.ce_excess_risk(G, f0, d, d_true, chunk=77)
    zt = torch.einsum("nkpij,pij->nk", G, d_true)
    z = torch.einsum("nkpij,pij->nk", G, d)
    pt = torch.softmax(zt, -1)
    direct = float((pt * (torch.log_softmax(zt, -1) - torch.log_softmax(z, -1))).sum(-1).mean())
    assert ex == pytest.approx(direct, abs=1e-14) and ex > 0
    with pytest.raises(ValueError, match="K >= 2"):
        ntk.bounded_gradient_sample(5, (1, 1, 2, 2), 1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="R > 0"):
        ntk.bounded_gradient_sample(5, (2, 1, 2, 2), -1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="f0 must be"):
        ntk.ce_excess_risk(G, f0[:3], d, d_true)


def test_ce_float32_problem_and_certificate():
    pr = _ce_problem(N=8, K=3, m=4, n=5, lam_frac=0.2, seed=4)
    p32 = ntk.LinearisedProblem(pr.G.float(), pr.f0.float(), pr.y.argmax(-1), pr.lam, "ce")
    soft = torch.full((8, 3), 1 / 3, dtype=torch.float32)
    ntk.LinearisedProblem(pr.G.float(), pr.f0.float(), soft, pr.lam, "ce")   # soft labels in float32
    res = ntk.proximal_gradient(p32, 3000, tol=1e-5)
    assert math.isfinite(res.cert.dual) and res.cert.rel_gap < 1e-4
