"""lorabook.ntk: spectral helpers, the optimality certificate, the Lipschitz constants of ∇L̂ and LoRA's random
initialisation, checked against independent computations (closed forms, NumPy, autograd Hessians)."""
import math

import numpy as np
import pytest
import torch

from lorabook import ntk


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _with_singular_values(batch, m, n, sig, seed=0):
    """``(*batch, m, n)`` matrices ``U diag(sig) Vᵀ`` with random orthonormal ``U``, ``V`` (QR of Gaussians)."""
    g = _gen(seed)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, len(sig), generator=g))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, len(sig), generator=g))
    return (U * torch.tensor(sig)) @ V.transpose(-1, -2)


# singular values 3, 2 and 1e-8: the last lies far below the Gram route's cut √(k·eps)·σ_max ≈ 4e-7 (k = 97), but
# the SVD resolves it to a relative error of about 1e-7
SIG = [3.0, 2.0, 1e-8]


# ---------------------------------------------------------------- singular values and the Gram route
def test_singular_values_of_one_large_matrix_come_from_the_gram_matrix():
    """A single (unbatched) 97×100 matrix takes the Gram route: descending values, the tiny one returned as 0."""
    X = _with_singular_values((), 97, 100, SIG)
    sv = ntk.singular_values(X)
    assert sv.shape == (97,)
    assert torch.allclose(sv[:2], torch.tensor([3.0, 2.0]), rtol=1e-12, atol=0)
    assert (sv[2:] == 0).all()


def test_singular_values_use_the_svd_up_to_gram_min_dim_whatever_the_batch():
    """The route depends on ``min(m, n)`` of each matrix only: a batch of 96×100 matrices (at the limit) is solved
    by the SVD, which keeps the value 1e-8; a batch of two 97×100 matrices goes through the Gram matrix, which
    drops it."""
    assert ntk.GRAM_MIN_DIM == 96
    small = ntk.singular_values(_with_singular_values((2,), 96, 100, SIG, seed=1))
    assert small.shape == (2, 96)
    assert torch.allclose(small[:, 2], torch.full((2,), 1e-8), rtol=1e-5, atol=0)
    assert torch.allclose(small[:, :2], torch.tensor([[3.0, 2.0]] * 2), rtol=1e-12, atol=0)
    large = ntk.singular_values(_with_singular_values((2,), 97, 100, SIG, seed=2))
    assert large.shape == (2, 97)
    assert torch.allclose(large[:, :2], torch.tensor([[3.0, 2.0]] * 2), rtol=1e-12, atol=0)
    assert (large[:, 2:] == 0).all()


def test_svt_takes_the_same_route_as_singular_values():
    """``svt(X, 0)`` returns X's singular values: by the SVD for a 96×100 matrix (1e-8 kept), through the Gram
    matrix for a batch of two 97×100 matrices (1e-8 dropped, and the result loses that component only)."""
    X = _with_singular_values((), 96, 100, SIG, seed=3)
    out, s = ntk.svt(X, 0.0)
    assert math.isclose(float(s[2]), 1e-8, rel_tol=1e-5)
    assert torch.allclose(out, X, atol=1e-13)
    X = _with_singular_values((2,), 97, 100, SIG, seed=4)
    out, s = ntk.svt(X, 0.0)
    assert s.shape == (2, 97) and (s[:, 2:] == 0).all()
    assert torch.allclose(s[:, :2], torch.tensor([[3.0, 2.0]] * 2), rtol=1e-12, atol=0)
    assert torch.allclose(out, X, atol=1e-7)


def test_svt_names_a_bad_input():
    msg = r"^X must be a tensor of shape \(\.\.\., m, n\)$"
    with pytest.raises(ValueError, match=msg):
        ntk.svt(torch.ones(4), 0.1)          # a vector
    with pytest.raises(ValueError, match=msg):
        ntk.svt([[1.0, 2.0], [3.0, 4.0]], 0.1)   # not a tensor
    for bad in (float("nan"), float("inf")):
        X = torch.ones(3, 2)
        X[1, 0] = bad
        with pytest.raises(ValueError, match="^X contains NaN or infinite entries$"):
            ntk.svt(X, 0.1)


# ---------------------------------------------------------------- λ_max and the nuclear norm
def _mse_problem(N=5, K=2, P=2, m=3, n=4, lam=0.0, seed=0, scale=1.0):
    g = _gen(seed)
    G = torch.randn(N, K, P, m, n, generator=g)
    f0 = scale * torch.randn(N, K, generator=g)
    y = scale * torch.randn(N, K, generator=g)
    return ntk.LinearisedProblem(G, f0, y, lam)


def _lambda_max_by_hand(pr):
    """``max_p ‖∇L̂(0)_p‖_2`` with ``∇L̂(0)_p = (1/N) Σ_ik (f0 − y)_ik G_ikp`` (squared error), in NumPy."""
    r = (pr.f0 - pr.y).numpy()
    grad = np.einsum("ik,ikpab->pab", r, pr.G.numpy()) / pr.N
    return max(np.linalg.norm(grad[p], 2) for p in range(grad.shape[0]))


def test_lambda_max_is_the_largest_spectral_norm_of_the_gradient_at_zero():
    """Several outputs and two slices: λ_max is the top singular value of ∇L̂(0) (the second one would be smaller:
    the slices' gradients are generic 3×4 matrices), and δ = 0 satisfies the optimality condition at λ_max."""
    pr = _mse_problem()
    lam_max = pr.lambda_max()
    assert math.isclose(lam_max, _lambda_max_by_hand(pr), rel_tol=1e-12)
    at = ntk.LinearisedProblem(pr.G, pr.f0, pr.y, lam_max)
    assert ntk.certificate(at, at.zeros()).kkt < 1e-12


def test_nuclear_norm_of_a_batch_of_updates_is_one_value_per_update():
    """``nuclear`` maps ``(..., P, m, n)`` to ``(...)``: diagonal updates, nuclear norm = Σ_p Σ |diagonal|."""
    pr = _mse_problem(P=2, m=3, n=4)
    delta = torch.zeros(3, 2, 3, 4)
    diags = torch.tensor([[[1.0, -2.0, 0.5], [0.0, 3.0, 0.0]],
                          [[0.0, 0.0, 0.0], [0.0, 0.0, -1.0]],
                          [[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    for b in range(3):
        for p in range(2):
            delta[b, p, :3, :3] = torch.diag(diags[b, p])
    expected = torch.tensor([6.5, 1.0, 7.0])
    assert pr.nuclear(delta).shape == (3,)
    assert torch.allclose(pr.nuclear(delta), expected, atol=1e-14)
    two = ntk.LinearisedProblem(pr.G, pr.f0, pr.y, 0.5)
    assert torch.allclose(two.objective(delta), two.data_loss(delta) + 0.5 * expected, atol=1e-13)


# ---------------------------------------------------------------- the certificate in closed form
@pytest.mark.parametrize("t", [0.25, 0.7, 1.0, 2.0])
@pytest.mark.parametrize("scale", [0.2, 3.0])
def test_certificate_of_the_zero_update_in_closed_form(t, scale):
    """Squared error at δ = 0, λ = t·λ_max, residual r = f0 − y: the dual point is ``u = min(1, t)·r/N``, so
    primal = ‖r‖²/(2N), dual = (‖r‖²/N)(s − s²/2) with s = min(1, t), gap = primal·(1 − s)² and
    rel_gap = (1 − s)² whatever the size of the residual (primal below 1 for scale 0.2, above 1 for scale 3)."""
    pr = _mse_problem(scale=scale, seed=5)
    lam = t * _lambda_max_by_hand(pr)
    pr = ntk.LinearisedProblem(pr.G, pr.f0, pr.y, lam)
    rr = float((pr.f0 - pr.y).square().sum()) / pr.N
    s = min(1.0, t)
    cert = ntk.certificate(pr, pr.zeros())
    assert (cert.primal < 1) == (scale < 1)
    assert math.isclose(cert.primal, rr / 2, rel_tol=1e-12)
    assert math.isclose(cert.dual, rr * (s - s * s / 2), rel_tol=1e-12)
    assert abs(cert.gap - rr / 2 * (1 - s) ** 2) <= 1e-13 * rr
    assert abs(cert.rel_gap - (1 - s) ** 2) <= 1e-12


@pytest.mark.parametrize("loss,K", [("logistic", 1), ("ce", 3)])
def test_certificate_gap_is_zero_where_zero_is_optimal(loss, K):
    """For λ above λ_max, δ = 0 is the optimum and the unscaled dual point ``∇F(0)`` is feasible, so the duality
    gap closes (Fenchel–Young: F(0) + F*(∇F(0)) = 0)."""
    g = _gen(6)
    N = 6
    G = torch.randn(N, K, 2, 3, 2, generator=g)
    f0 = torch.randn(N, K, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1, 0.0])[:, None] if loss == "logistic" else torch.tensor([0, 2, 1, 1, 0, 2])
    base = ntk.LinearisedProblem(G, f0, y, 0.0, loss)
    pr = ntk.LinearisedProblem(G, f0, y, 1.5 * base.lambda_max(), loss)
    cert = ntk.certificate(pr, pr.zeros())
    assert math.isclose(cert.primal, float(base.data_loss(base.zeros())), rel_tol=1e-14)
    assert cert.gap <= 1e-14 and cert.rel_gap <= 1e-14 and cert.kkt <= 1e-12


# ---------------------------------------------------------------- Lipschitz constants of ∇L̂
def _hessian_eigs(pr, delta):
    """Eigenvalues (ascending, NumPy) of the Hessian of L̂ at ``delta``, by autograd."""
    d = delta.numel()
    H = torch.autograd.functional.hessian(pr.data_loss, delta).reshape(d, d)
    return np.linalg.eigvalsh(H.numpy())


SHAPES = {"wide": (2, 1, 2, 2, 3), "tall": (6, 2, 1, 2, 2), "square": (3, 2, 1, 2, 3)}


@pytest.mark.parametrize("name", list(SHAPES))
def test_mse_lipschitz_constant_is_the_top_hessian_eigenvalue(name):
    """Squared error: ∇L̂ is linear with Hessian Gᵀ G / N, so L is exactly its largest eigenvalue, for more
    outputs than parameters, fewer, or as many."""
    N, K, P, m, n = SHAPES[name]
    pr = _mse_problem(N=N, K=K, P=P, m=m, n=n, seed=7)
    ev = _hessian_eigs(pr, pr.zeros())
    assert math.isclose(pr.lipschitz(), ev[-1], rel_tol=1e-12)


@pytest.mark.parametrize("name", list(SHAPES))
def test_lipschitz_constant_eigendecomposes_the_smaller_gram_matrix(name, monkeypatch):
    """The constant comes from the (N·K)² or (P·m·n)² Gram matrix, whichever is smaller: on the book's problems
    P·m·n is 294 912 (MiniLM's query and value) while N·K is 32, and the larger matrix would not fit in memory."""
    N, K, P, m, n = SHAPES[name]
    pr = _mse_problem(N=N, K=K, P=P, m=m, n=n, seed=8)
    seen = []
    real = torch.linalg.eigvalsh

    def spy(A, *a, **kw):
        seen.append(tuple(A.shape))
        return real(A, *a, **kw)

    monkeypatch.setattr(torch.linalg, "eigvalsh", spy)
    pr.lipschitz()
    k = min(N * K, P * m * n)
    assert seen == [(k, k)]


def test_logistic_lipschitz_constant_is_attained_at_zero_logits():
    """The logistic loss's curvature σ'(z) = σ(z)(1 − σ(z)) is largest, 1/4, at z = 0: with f0 = 0 the Hessian of
    L̂ at δ = 0 is Gᵀ G/(4N) and its top eigenvalue equals L; elsewhere the Hessian stays below L."""
    g = _gen(9)
    G = torch.randn(5, 1, 2, 2, 3, generator=g)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    pr = ntk.LinearisedProblem(G, torch.zeros(5, 1), y, 0.1, "logistic")
    L = pr.lipschitz()
    assert math.isclose(L, _hessian_eigs(pr, pr.zeros())[-1], rel_tol=1e-12)
    away = torch.randn(pr.shape, generator=g)
    assert 0 < _hessian_eigs(pr, away)[-1] < L


def test_cross_entropy_lipschitz_constant_is_attained_for_two_opposite_logits():
    """Softmax cross-entropy: at uniform probabilities over K = 2 classes the Hessian of ℓ in the logits is
    [[1/4, −1/4], [−1/4, 1/4]], of norm 1/2 along (1, −1). With G_i1 = −G_i0 and f0 = 0 every parameter
    direction moves the logits along (1, −1), so the Hessian of L̂ at δ = 0 has top eigenvalue L = ‖G‖²_op/(2N)."""
    g = _gen(10)
    G0 = torch.randn(4, 1, 2, 3, generator=g)
    G = torch.cat([G0, -G0], dim=1)
    pr = ntk.LinearisedProblem(G, torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]), 0.1, "ce")
    L = pr.lipschitz()
    assert math.isclose(L, _hessian_eigs(pr, pr.zeros())[-1], rel_tol=1e-12)
    # three classes: a bound, never below the curvature anywhere
    G3 = torch.randn(4, 3, 2, 3, generator=g)
    pr3 = ntk.LinearisedProblem(G3, torch.randn(4, 3, generator=g), torch.tensor([0, 2, 1, 0]), 0.1, "ce")
    for s in range(3):
        assert _hessian_eigs(pr3, torch.randn(pr3.shape, generator=_gen(20 + s)))[-1] <= pr3.lipschitz()


def test_lipschitz_constant_of_tiny_gradients_is_tiny():
    """Gradients of size 1e-4 give L of order 1e-8 (only an all-zero G falls back to a positive floor), so the
    default step 1/L stays the exact minimiser's step for such a problem."""
    pr = _mse_problem(N=3, K=1, P=1, m=2, n=2, seed=11)
    tiny = ntk.LinearisedProblem(1e-4 * pr.G, pr.f0, pr.y, 0.0)
    assert math.isclose(tiny.lipschitz(), 1e-8 * pr.lipschitz(), rel_tol=1e-12)
    assert math.isclose(tiny.lipschitz(), _hessian_eigs(tiny, tiny.zeros())[-1], rel_tol=1e-10)
    zero = ntk.LinearisedProblem(torch.zeros_like(pr.G), pr.f0, pr.y, 0.0)
    assert 0 < zero.lipschitz() < 1e-200


# ---------------------------------------------------------------- LoRA initialisation
def test_lora_init_names_the_bad_seed_count():
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match=rf"^seeds must be a positive integer, got {bad!r}$"):
            ntk.lora_init((1, 3, 3), [1], bad, init_std=0.1, zero_B=True, generator=_gen(0))


@pytest.mark.parametrize("zero_B", [False, True])
def test_lora_init_draws_every_slice_from_its_generator_only(zero_B):
    """Same generator seed, same factors; the global RNG is not touched; each (rank, seed) slice draws its own
    factors (two seeds of one rank differ); columns below a slice's rank are random, the others zero; B is zero
    only for Hu et al.'s start."""
    state = torch.get_rng_state()
    B, A, rk = ntk.lora_init((2, 4, 3), [1, 2], 3, init_std=0.5, zero_B=zero_B, generator=_gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    B2, A2, _ = ntk.lora_init((2, 4, 3), [1, 2], 3, init_std=0.5, zero_B=zero_B, generator=_gen(7))
    assert torch.equal(B, B2) and torch.equal(A, A2)
    assert B.shape == (6, 2, 4, 2) and A.shape == (6, 2, 3, 2) and rk.tolist() == [1, 1, 1, 2, 2, 2]
    for F in ([A] if zero_B else [A, B]):
        for s in range(6):
            r = int(rk[s])
            assert (F[s, ..., :r] != 0).all() and (F[s, ..., r:] == 0).all()
        for s, t in [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3)]:
            assert not torch.equal(F[s, ..., :1], F[t, ..., :1])
    assert (B == 0).all() == zero_B
    other, _, _ = ntk.lora_init((2, 4, 3), [1, 2], 3, init_std=0.5, zero_B=False, generator=_gen(8))
    assert not torch.equal(other, B)


@pytest.mark.parametrize("zero_B", [False, True])
def test_lora_init_returns_the_requested_dtype(zero_B, default_dtype):
    """``dtype`` (float64 by default, whatever torch's default) is the dtype of both factors."""
    B, A, _ = ntk.lora_init((1, 3, 2), [2], 2, init_std=0.3, zero_B=zero_B, generator=_gen(1), dtype=torch.float32)
    assert B.dtype == A.dtype == torch.float32
    with default_dtype(torch.float32):
        B, A, _ = ntk.lora_init((1, 3, 2), [2], 2, init_std=0.3, zero_B=zero_B, generator=_gen(1))
    assert B.dtype == A.dtype == torch.float64


@pytest.mark.parametrize("n", [3, 100])
def test_singular_values_refuses_non_finite_and_one_dimensional_input(n):
    """On either route (SVD below GRAM_MIN_DIM, Gram matrix above it) a NaN or inf entry is refused by name, never
    returned as a singular value of 0; a vector is not a matrix."""
    for bad in (float("nan"), float("inf")):
        X = torch.eye(n, dtype=torch.float64)
        X[0, 0] = bad
        with pytest.raises(ValueError, match=r"^X contains NaN or infinite entries$"):
            ntk.singular_values(X)
    with pytest.raises(ValueError, match=r"^X must be a tensor of shape \(\.\.\., m, n\)$"):
        ntk.singular_values(torch.ones(3))


def test_svt_gram_route_shrinks_singular_values_below_one_and_keeps_a_two_level_batch_in_order():
    """Above GRAM_MIN_DIM, on a (2, 2) batch of 100 × 97 matrices with singular values 3, 0.8 and 0.3 (per matrix
    scaled by 1, 2, 3, 4) and τ = 0.1: the result is U diag(σ − τ) Vᵀ with the same U, V, checked against the
    matrices built directly, and the returned values are (σ − τ)_+ in descending order, batch entry by batch entry.
    Values below 1 exercise the ratio (σ − τ)/σ where σ < 1."""
    sig = torch.tensor([3.0, 0.8, 0.3])
    g = _gen(7)
    U, _ = torch.linalg.qr(torch.randn(2, 2, 100, 3, generator=g))
    V, _ = torch.linalg.qr(torch.randn(2, 2, 97, 3, generator=g))
    scale = torch.arange(1.0, 5.0).reshape(2, 2, 1)
    X = (U * (scale * sig)[..., None, :]) @ V.transpose(-1, -2)
    out, s = ntk.svt(X, 0.1)
    want = (U * (scale * sig - 0.1)[..., None, :]) @ V.transpose(-1, -2)
    assert torch.allclose(out, want, atol=1e-9, rtol=0)
    assert s.shape == (2, 2, 97)
    assert torch.allclose(s[..., :3], scale * sig - 0.1, atol=1e-9, rtol=0)
    assert s[..., 3:].abs().max() < 1e-9
