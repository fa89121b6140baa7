import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorabook import transfer as tr
from lorabook.linalg import low_rank_approx, numerical_rank



def orthonormal(d, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g))[0]


@pytest.fixture(scope="module")
def teacher():
    return tr.random_teacher(4, 10, [3, 8, 2], 1, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------- teacher network
def test_mlp_forward_matches_manual():
    g = torch.Generator().manual_seed(0)
    W1, W2, W3 = torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g), torch.randn(2, 5, generator=g)
    x = torch.randn(7, 6, generator=g)
    manual = torch.relu(torch.relu(x @ W1.T) @ W2.T) @ W3.T
    assert torch.allclose(tr.mlp_forward(x, [W1, W2, W3]), manual)
    assert torch.allclose(tr.mlp_forward(x, [W1], "tanh"), x @ W1.T)      # no activation after the last layer


def test_random_teacher_and_sample(teacher):
    S, k1, d = teacher.Z.shape
    assert (S, k1, d) == (4, 3, 10)
    assert all(numerical_rank(z) == 1 for z in teacher.Z)
    x, y = tr.sample(teacher, 50, generator=torch.Generator().manual_seed(2))
    assert x.shape == (4, 50, 10) and y.shape == (4, 50, 2)
    x0, f0 = tr.sample(teacher, 50, generator=torch.Generator().manual_seed(2), noise=False)
    assert torch.equal(x0, x)
    assert torch.allclose(f0, tr.mlp_forward(x, [teacher.W1] + teacher.M[1:]))
    assert 0 < (y - f0).std() < 0.2                                         # noise 0.1
    _, fpop = tr.sample(teacher, 50, generator=torch.Generator().manual_seed(2), subgroup=False, noise=False)
    assert not torch.allclose(fpop, f0)
    moved = teacher.to("cpu")
    assert torch.equal(moved.W1, teacher.W1)


def test_sample_with_covariance():
    t = tr.random_teacher(1, 3, [2, 1], 1, generator=torch.Generator().manual_seed(0))
    cov = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.5]])
    x, _ = tr.sample(t, 40_000, generator=torch.Generator().manual_seed(1), cov=cov)
    emp = x[0].T @ x[0] / x.shape[1]
    assert torch.allclose(emp, cov, atol=0.05)


# ------------------------------------------------------------------------------------------ Stein moment
def test_stein_moment_quadratic_is_exact_in_expectation():
    # f(x) = x^T Q x has E[∇²f] = 2Q; the estimate converges to it (also with a non-identity Σ)
    g = torch.Generator().manual_seed(0)
    d = 4
    Q = torch.randn(d, d, generator=g)
    Q = Q + Q.T
    L = torch.tensor([[1.0, 0, 0, 0], [0.3, 1.2, 0, 0], [0, 0.2, 0.8, 0], [0.1, 0, 0, 1.0]])
    cov = L @ L.T
    x = torch.randn(200_000, d, generator=g) @ L.T
    y = torch.einsum("ni,ij,nj->n", x, Q, x)
    for center in ("linear", "mean", "none"):
        A = tr.stein_moment(x, y, cov, center=center)
        assert A.shape == (1, d, d)
        assert torch.allclose(A[0], 2 * Q, atol=0.25 * Q.abs().max().item()), center


def test_stein_moment_batched_and_symmetric():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 100, 5, generator=g), torch.randn(3, 100, 2, generator=g)
    A = tr.stein_moment(x, y)
    assert A.shape == (3, 2, 5, 5)
    assert torch.allclose(A, A.transpose(-1, -2))
    # slice-by-slice equals the batched result
    assert torch.allclose(tr.stein_moment(x[1], y[1]), A[1])
    # the "none" estimator is the literal (1/n) Σ y T(x)
    T = torch.einsum("ni,nj->nij", x[0], x[0]) - torch.eye(5)
    assert torch.allclose(tr.stein_moment(x[0], y[0, :, 0], center="none")[0], (y[0, :, 0, None, None] * T).mean(0))


def test_row_space_recovers_bottleneck(teacher):
    x, y = tr.sample(teacher, 40_000, generator=torch.Generator().manual_seed(3))
    V, mags = tr.row_space(tr.stein_moment(x, y), 3)
    assert V.shape == (4, 10, 3)
    assert torch.allclose(V.transpose(-1, -2) @ V, torch.eye(3).expand(4, 3, 3), atol=1e-10)
    assert (mags[..., :-1] >= mags[..., 1:]).all()
    assert tr.subspace_distance(V, tr.true_row_space(teacher.W1)).max() < 0.35
    Vs, _ = tr.row_space(tr.stein_moment(x, y), 3, combine="sum")
    assert Vs.shape == (4, 10, 3)


def test_row_space_ranks_by_magnitude():
    # an indefinite moment: eigenvalues 5, -4, 0.1 -> top-2 space is spanned by e1, e2
    A = torch.diag(torch.tensor([5.0, -4.0, 0.1]))[None]
    V, mags = tr.row_space(A, 2, combine="sum")
    assert tr.subspace_distance(V, torch.eye(3)[:, :2]) < 1e-12
    assert torch.allclose(mags, torch.tensor([5.0, 4.0, 0.1]))


def test_odd_network_has_vanishing_moment():
    t = tr.random_teacher(2, 8, [2, 1], 1, activation="tanh", noise=0.0, generator=torch.Generator().manual_seed(0))
    norms = []
    for n in (2_000, 32_000):
        x, y = tr.sample(t, n, generator=torch.Generator().manual_seed(n))
        norms.append(torch.linalg.matrix_norm(tr.stein_moment(x, y)[:, 0], 2).mean().item())
    assert norms[1] < 0.5 * norms[0]                                         # pure noise: ~ n^(-1/2)


# ------------------------------------------------------------------------------ reduced-rank regression
@settings(max_examples=30, deadline=None)
@given(p=st.integers(1, 6), q=st.integers(1, 7), s=st.integers(1, 6), seed=st.integers(0, 10_000), data=st.data())
def test_reduced_rank_regression_is_optimal(p, q, s, seed, data):
    g = torch.Generator().manual_seed(seed)
    rank_x = data.draw(st.integers(1, min(s, q)))
    k = data.draw(st.integers(0, min(p, s)))
    Y = torch.randn(p, q, generator=g)
    X = torch.randn(s, rank_x, generator=g) @ torch.randn(rank_x, q, generator=g)
    Z = tr.reduced_rank_regression(Y, X, k)
    assert Z.shape == (p, s)
    assert numerical_rank(Z, rtol=1e-9) <= k if k else torch.allclose(Z, torch.zeros_like(Z))
    best = torch.linalg.matrix_norm(Y - Z @ X)
    # optimal value: ||Y(I - P_X)||² + tail of Y P_X beyond rank k
    PX = torch.linalg.pinv(X) @ X
    tail = torch.linalg.svdvals(Y @ PX)[k:].square().sum()
    expected = (torch.linalg.matrix_norm(Y - Y @ PX).square() + tail).sqrt()
    assert best.item() == pytest.approx(expected.item(), abs=1e-8)
    # no random rank-k candidate does better
    for _ in range(5):
        C = low_rank_approx(torch.randn(p, s, generator=g), k)
        assert torch.linalg.matrix_norm(Y - C @ X) >= best - 1e-9


def test_reduced_rank_regression_full_rank_is_izenman():
    g = torch.Generator().manual_seed(0)
    Y, X = torch.randn(5, 30, generator=g), torch.randn(4, 30, generator=g)
    Z = tr.reduced_rank_regression(Y, X, 2)
    ols = Y @ torch.linalg.pinv(X)
    U = torch.linalg.svd(ols @ X, full_matrices=False)[0][:, :2]
    assert torch.allclose(Z, U @ U.T @ ols, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(3, 9), seed=st.integers(0, 10_000), data=st.data())
def test_slides_estimate_identifies_only_the_orthogonal_part(d, seed, data):
    k1 = data.draw(st.integers(1, d - 1))
    k = data.draw(st.integers(1, min(k1, d - k1)))
    g = torch.Generator().manual_seed(seed)
    M1 = torch.randn(k1, d, generator=g)
    Z = torch.randn(k1, k, generator=g) @ torch.randn(k, d, generator=g)
    V = tr.true_row_space(M1 + Z)
    P = V @ V.T
    Z_hat = tr.slides_estimate(M1, V, k)
    assert torch.allclose(Z_hat, Z @ (torch.eye(d) - P), atol=1e-9)
    # the objective is 0 for Z_hat, for Z itself, and for Z_hat + U H V^T (the non-identified family)
    obj = lambda C: torch.linalg.matrix_norm((M1 + C) @ (P - torch.eye(d))).item()
    U = torch.linalg.svd(Z_hat)[0][:, :k]
    H = torch.randn(k, k1, generator=g)
    for C in (Z_hat, Z, Z_hat + U @ H @ V.T):
        assert obj(C) < 1e-9
        assert numerical_rank(C, rtol=1e-9) <= k
    # and Z = Z_hat + U H* V^T for some H*: the completion family contains the truth
    H_star = U.T @ (Z - Z_hat) @ V
    assert torch.allclose(Z_hat + U @ H_star @ V.T, Z, atol=1e-8)


def test_slides_estimate_is_zero_without_bottleneck():
    g = torch.Generator().manual_seed(0)
    M1 = torch.randn(5, 5, generator=g)
    V = orthonormal(5, 5, 1)
    assert torch.equal(tr.slides_estimate(M1, V, 2), torch.zeros(5, 5))


# ------------------------------------------------------------------------------------------- completion
def test_refine_with_exact_row_space_recovers_z(teacher):
    x, y = tr.sample(teacher, 4_000, generator=torch.Generator().manual_seed(4))
    V = tr.true_row_space(teacher.W1)
    Z0 = tr.slides_estimate(teacher.M[0], V, 1)
    Z = tr.refine_in_row_space(x, y, teacher.M, V, Z0, 1, iters=15)
    assert (tr.relative_error(Z, teacher.Z) < 0.05).all()
    assert (tr.relative_error(Z0, teacher.Z) > 0.2).all()                 # the slides' part alone is incomplete
    assert all(numerical_rank(z, rtol=1e-9) <= 1 for z in Z)


def test_transfer_pipeline(teacher):
    x, y = tr.sample(teacher, 30_000, generator=torch.Generator().manual_seed(5))
    res = tr.transfer(x, y, teacher.M, 1)
    assert res.Z.shape == teacher.Z.shape and res.V.shape == (4, 10, 3)
    assert torch.median(tr.relative_error(res.Z, teacher.Z)) < 0.3
    assert (tr.relative_error(res.Z, teacher.Z) < tr.relative_error(res.Z_slides, teacher.Z)).all()
    plain = tr.transfer(x, y, teacher.M, 1, refine=False)
    assert torch.equal(plain.Z, plain.Z_slides)
    pe = tr.prediction_error(teacher, res.Z, x[:, :2000])
    assert pe.shape == (4,) and (pe < tr.prediction_error(teacher, res.Z_slides, x[:, :2000])).all()
    assert torch.allclose(tr.prediction_error(teacher, teacher.Z, x[:, :100]), torch.zeros(4))


def test_fit_lora_first_layer_learns(teacher):
    x, y = tr.sample(teacher, 1_000, generator=torch.Generator().manual_seed(6))
    Z = tr.fit_lora_first_layer(x, y, teacher.M, 1, [1e-2, 3e-2], 250, generator=torch.Generator().manual_seed(0))
    assert Z.shape == teacher.Z.shape
    assert (tr.relative_error(Z, teacher.Z) < 0.3).all()
    # per-slice sample sizes and full batch run too
    Zs = tr.fit_lora_first_layer(x, y, teacher.M, 1, [1e-2], 20, sizes=[100, 200, 1000, 50], batch_size=None)
    assert Zs.shape == teacher.Z.shape and torch.isfinite(Zs).all()


def test_subspace_distance_and_relative_error():
    V1, V2 = orthonormal(6, 2, 0), orthonormal(6, 2, 1)
    assert tr.subspace_distance(V1, V1) < 1e-12
    assert 0 < tr.subspace_distance(V1, V2) <= 1 + 1e-12
    e = torch.eye(6)
    assert tr.subspace_distance(e[:, :2], e[:, 2:4]) == pytest.approx(1.0)
    Z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert tr.relative_error(2 * Z, Z) == pytest.approx(1.0)


def test_run_experiment_small():
    cfg = dict(seed=0, seeds=2, d=8, widths=[2, 4, 1], rank=1, z_scale=1.0, noise=0.1, activation="relu",
               ns=[200, 400], n_test=200, lora_steps=5, lrs=[1e-2])
    out = tr.run_experiment(cfg)
    for key in ("row_space", "moment_norm", "slides", "completed", "lora", "pred_lora"):
        assert out[key].shape == (2, 2) and np.isfinite(out[key]).all()
    assert out["oracle_slides_gap"] < 1e-10 and out["plateau"].shape == (2,)
    assert torch.get_num_threads() >= 1
    with pytest.raises(ValueError, match="missing"):
        tr.run_experiment({"seed": 0})
    with pytest.raises(ValueError, match="increasing"):
        tr.run_experiment(dict(cfg, ns=[400, 200]))


# -------------------------------------------------------------------------------------------- bad input
def test_bad_inputs(teacher):
    x, y = torch.randn(50, 4), torch.randn(50, 2)
    with pytest.raises(ValueError, match="NaN"):
        tr.stein_moment(torch.full((50, 4), math.nan), y)
    with pytest.raises(ValueError, match="y must have shape"):
        tr.stein_moment(x, torch.randn(49, 2))
    with pytest.raises(ValueError, match="positive definite"):
        tr.stein_moment(x, y, cov=-torch.eye(4))
    with pytest.raises(ValueError, match="symmetric"):
        tr.stein_moment(x, y, cov=torch.eye(4) + torch.triu(torch.ones(4, 4), 1))
    with pytest.raises(ValueError, match="cov must be 4"):
        tr.stein_moment(x, y, cov=torch.eye(3))
    with pytest.raises(ValueError, match="center"):
        tr.stein_moment(x, y, center="median")
    with pytest.raises(ValueError, match="n > d"):
        tr.stein_moment(x[:4], y[:4])
    with pytest.raises(ValueError, match="k1=5 is out of range"):
        tr.row_space(torch.zeros(1, 4, 4), 5)
    with pytest.raises(ValueError, match="combine"):
        tr.row_space(torch.zeros(1, 4, 4), 2, combine="max")
    with pytest.raises(ValueError, match="square"):
        tr.row_space(torch.zeros(1, 4, 3), 2)
    with pytest.raises(ValueError, match="same number of columns"):
        tr.reduced_rank_regression(torch.zeros(3, 4), torch.zeros(3, 5), 1)
    with pytest.raises(ValueError, match="rank=4 is out of range"):
        tr.reduced_rank_regression(torch.zeros(3, 4), torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match="orthonormal"):
        tr.slides_estimate(torch.zeros(2, 4), 2 * torch.eye(4)[:, :2], 1)
    with pytest.raises(ValueError, match="rows like M1"):
        tr.slides_estimate(torch.zeros(2, 4), torch.eye(3)[:, :2], 1)
    with pytest.raises(ValueError, match="activation"):
        tr.mlp_forward(x, [torch.zeros(2, 4)], "gelu")
    with pytest.raises(ValueError, match="W_2 has 3 columns"):
        tr.mlp_forward(x, [torch.zeros(2, 4), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="rank=4 is out of range"):
        tr.random_teacher(1, 5, [3, 1], 4)
    with pytest.raises(ValueError, match="widths"):
        tr.random_teacher(1, 5, [], 1)
    with pytest.raises(ValueError, match="k1 = d"):
        t = tr.random_teacher(1, 3, [3, 1], 1)
        xs, ys = tr.sample(t, 20, generator=torch.Generator().manual_seed(0))
        tr.transfer(xs, ys, t.M, 1)
    xs, ys = tr.sample(teacher, 30, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="M_1 must have shape"):
        tr.transfer(xs, ys, [m[:2] for m in teacher.M], 1)
    with pytest.raises(ValueError, match="lrs"):
        tr.fit_lora_first_layer(xs, ys, teacher.M, 1, [], 10)
    with pytest.raises(ValueError, match="sizes"):
        tr.fit_lora_first_layer(xs, ys, teacher.M, 1, [1e-2], 10, sizes=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="val_frac"):
        tr.fit_lora_first_layer(xs, ys, teacher.M, 1, [1e-2], 10, val_frac=1.5)
    with pytest.raises(ValueError, match="iters"):
        V = tr.true_row_space(teacher.W1)
        tr.refine_in_row_space(xs, ys, teacher.M, V, tr.slides_estimate(teacher.M[0], V, 1), 1, iters=0)
    with pytest.raises(ValueError, match="same shape"):
        tr.subspace_distance(torch.eye(4)[:, :2], torch.eye(4)[:, :3])
    with pytest.raises(ValueError, match="wide"):
        tr.true_row_space(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="Z_hat must have shape"):
        tr.prediction_error(teacher, torch.zeros(1, 3, 10), xs)


def test_stein_moment_none_with_several_outputs_is_literal_per_output():
    """(1/n) sum_i y_ij T(x_i) for each output j separately, with outputs of different means (a mean over all
    outputs, or over the wrong axis, would mix them)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(50, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 5.0, -3.0], dtype=torch.float64)
    T = torch.einsum("ni,nj->nij", x, x) - torch.eye(4, dtype=torch.float64)
    A = tr.stein_moment(x, y, center="none")
    for j in range(3):
        assert torch.allclose(A[j], (y[:, j, None, None] * T).mean(0), atol=1e-12)
