"""Tests of lorabook.transfer with values computed independently of the code (closed forms, a replica of one
optimiser step, autograd Jacobians) and of every validation on both sides of its bound."""
import re

import numpy as np
import pytest
import torch

from lorabook import transfer as tr

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def small_teacher(activation="tanh", widths=(2, 3, 2), d=5, rank=1, seeds=2, noise=0.1):
    return tr.random_teacher(seeds, d, list(widths), rank, activation=activation, noise=noise, generator=gen(3))


# ------------------------------------------------------------------------------------ argument names
NOT_A_TENSOR = [[1.0]]


def _calls(t):
    x, y = tr.sample(t, 30, generator=gen(0))
    V = tr.true_row_space(t.W1)
    Z0 = tr.slides_estimate(t.M[0], V, 1)
    return {
        "mlp_forward": (lambda a: tr.mlp_forward(a["x"], [a["W_1"]]), dict(x=x[0], W_1=t.M[0][0])),
        "stein_moment": (lambda a: tr.stein_moment(a["x"], a["y"]), dict(x=x, y=y)),
        "row_space": (lambda a: tr.row_space(a["moments"], 1), dict(moments=torch.zeros(1, 3, 3))),
        "rrr": (lambda a: tr.reduced_rank_regression(a["Y"], a["X"], 1), dict(Y=torch.eye(3), X=torch.eye(3))),
        "refine": (lambda a: tr.refine_in_row_space(a["x"], a["y"], t.M, a["V"], a["Z0"], 1),
                   dict(x=x, y=y, V=V, Z0=Z0)),
        "transfer": (lambda a: tr.transfer(a["x"], y, [a["M_1"]] + t.M[1:], 1), dict(x=x, M_1=t.M[0])),
        "subspace": (lambda a: tr.subspace_distance(a["V1"], a["V2"]), dict(V1=V, V2=V)),
        "true_row_space": (lambda a: tr.true_row_space(a["W1"]), dict(W1=t.W1)),
        "relative_error": (lambda a: tr.relative_error(a["Z_hat"], a["Z"]), dict(Z_hat=Z0, Z=Z0)),
        "lora": (lambda a: tr.fit_lora_first_layer(a["x"], a["y"], t.M, 1, [1e-2], 1), dict(x=x, y=y)),
        "prediction_error": (lambda a: tr.prediction_error(t, a["Z_hat"], a["x_test"]), dict(Z_hat=Z0, x_test=x)),
    }


@pytest.mark.parametrize("func", ["mlp_forward", "stein_moment", "row_space", "rrr", "refine", "transfer",
                                  "subspace", "true_row_space", "relative_error", "lora", "prediction_error"])
def test_each_tensor_argument_is_named_in_its_error(func):
    t = small_teacher()
    call, args = _calls(t)[func]
    call(args)                                                              # the valid call runs
    for name in args:
        with pytest.raises(ValueError, match=f"^{re.escape(name)} must be a torch.Tensor"):
            call(dict(args, **{name: NOT_A_TENSOR}))


# ------------------------------------------------------------------------------------------ teacher
def test_random_teacher_reproduces_its_definition():
    seeds, d, widths, k = 2, 5, [3, 2], 2
    t = tr.random_teacher(seeds, d, widths, k, z_scale=0.7)
    g = gen(0)                                                              # the default generator
    M1 = torch.randn(seeds, 3, 5, generator=g, dtype=F64) / 5**0.5
    M2 = torch.randn(seeds, 2, 3, generator=g, dtype=F64) / 3**0.5
    P = torch.randn(seeds, 3, k, generator=g, dtype=F64)
    Q = torch.randn(seeds, k, d, generator=g, dtype=F64)
    assert t.M[0].dtype == F64 and t.Z.dtype == F64
    assert torch.equal(t.M[0], M1) and torch.equal(t.M[1], M2)
    assert torch.allclose(t.Z, 0.7 * P @ Q / np.sqrt(d * k), rtol=1e-14, atol=0)
    assert t.activation == "relu" and t.noise == 0.1
    # the defaults: z_scale 1, seed-0 generator; an explicit generator is used
    t1 = tr.random_teacher(seeds, d, widths, k)
    assert torch.allclose(t1.Z, t.Z / 0.7, rtol=1e-14, atol=0)
    t2 = tr.random_teacher(seeds, d, widths, k, generator=gen(0))
    assert torch.equal(t2.Z, t1.Z)
    t3 = tr.random_teacher(seeds, d, widths, k, generator=gen(5))
    assert not torch.allclose(t3.Z, t1.Z)
    # float32 on request
    assert tr.random_teacher(1, 3, [2, 1], 1, dtype=torch.float32).M[1].dtype == torch.float32


def test_random_teacher_validation_boundaries():
    for kw in (dict(z_scale=0.0), dict(noise=0.0), dict(z_scale=0.5)):
        tr.random_teacher(1, 4, [2, 1], 1, **kw)
    for kw in (dict(z_scale=-1e-9), dict(noise=-1e-9), dict(z_scale=-1.0, noise=-1.0)):
        with pytest.raises(ValueError, match=r"^z_scale and noise must be non-negative"):
            tr.random_teacher(1, 4, [2, 1], 1, **kw)
    for widths in ([0, 1], [True, 1], [2, 1.5], []):
        with pytest.raises(ValueError, match=r"^widths must be a non-empty list"):
            tr.random_teacher(1, 4, widths, 1)
    tr.random_teacher(1, 5, [3, 1], 3)                                      # rank up to min(k1, d), not width 2
    with pytest.raises(ValueError, match=r"^rank=4 is out of range"):
        tr.random_teacher(1, 5, [3, 1], 4)
    with pytest.raises(ValueError, match=r"^seeds must be a positive integer"):
        tr.random_teacher(0, 5, [3, 1], 1)
    with pytest.raises(ValueError, match=r"^d must be a positive integer"):
        tr.random_teacher(1, 0, [3, 1], 1)


def test_sample_reproduces_its_definition():
    t = small_teacher(noise=0.3)
    cov = torch.tensor([[2.0, 0.5, 0, 0, 0], [0.5, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 0.5, 0],
                        [0, 0, 0, 0, 3.0]], dtype=torch.float32)             # float32: converted to the teacher's
    x, y = tr.sample(t, 7, generator=gen(1), cov=cov)
    g = gen(1)
    z = torch.randn(2, 7, 5, generator=g, dtype=F64)
    x_ref = z @ torch.linalg.cholesky(cov.double()).T
    f = torch.tanh(torch.tanh(x_ref @ t.W1.transpose(-1, -2)) @ t.M[1].transpose(-1, -2)) @ t.M[2].transpose(-1, -2)
    eps = torch.randn(2, 7, 2, generator=g, dtype=F64)
    assert x.dtype == F64 and y.dtype == F64
    assert torch.allclose(x, x_ref, rtol=1e-6) and torch.allclose(y, f + 0.3 * eps, rtol=1e-6)
    # a noiseless teacher draws no noise: the generator is left where x left it
    t0 = small_teacher(noise=0.0)
    g1, g2 = gen(2), gen(2)
    tr.sample(t0, 7, generator=g1)
    torch.randn(2, 7, 5, generator=g2, dtype=F64)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    with pytest.raises(ValueError, match="^cov must be symmetric"):
        tr.sample(t, 7, generator=gen(1), cov=torch.eye(5, dtype=F64) + torch.triu(torch.ones(5, 5, dtype=F64), 1))
    with pytest.raises(ValueError, match=r"^n must be a positive integer"):
        tr.sample(t, 0, generator=gen(1))


def test_mlp_forward_validation():
    x = torch.randn(4, 3, dtype=F64)
    W1 = torch.randn(2, 3, dtype=F64)
    msg = re.escape("weights must be a non-empty sequence [W_1, ..., W_L]") + "$"
    for bad in ([], W1):
        with pytest.raises(ValueError, match=msg):
            tr.mlp_forward(x, bad)
    with pytest.raises(ValueError, match=r"^W_2 must be a torch.Tensor"):
        tr.mlp_forward(x, [W1, "W2"])
    with pytest.raises(ValueError, match=re.escape("W_2 has 5 columns but its input has width 2")):
        tr.mlp_forward(x, [W1, torch.zeros(1, 5, dtype=F64)])


# ------------------------------------------------------------------------------------------ Stein moment
def _literal_moment(x, y, prec):
    xs = x @ prec
    T = torch.einsum("ni,nj->nij", xs, xs) - prec
    return torch.stack([(y[:, j, None, None] * T).mean(0) for j in range(y.shape[1])])


def test_stein_moment_mean_centering_batched_several_outputs():
    g = gen(4)
    S, n, d = 3, 20, 4
    x = torch.randn(S, n, d, generator=g, dtype=F64)
    y = torch.randn(S, n, 2, generator=g, dtype=F64) + torch.tensor([4.0, -2.0], dtype=F64)
    A = tr.stein_moment(x, y, center="mean")
    I = torch.eye(d, dtype=F64)
    for s in range(S):
        yc = y[s] - y[s].mean(0)
        assert torch.allclose(A[s], _literal_moment(x[s], yc, I), atol=1e-12)
    # a scalar output per slice, (S, n)
    A1 = tr.stein_moment(x, y[..., 0], center="mean")
    assert A1.shape == (S, 1, d, d) and torch.allclose(A1[:, 0], A[:, 0], atol=1e-12)


def test_stein_moment_linear_centering_and_sample_bound():
    g = gen(5)
    d = 4
    x = torch.randn(6, d, generator=g, dtype=F64)                            # n = d + 2: the least allowed
    y = torch.randn(6, 1, generator=g, dtype=F64)
    A = tr.stein_moment(x, y)
    design = torch.cat([torch.ones(6, 1, dtype=F64), x], 1)
    res = y - design @ torch.linalg.lstsq(design, y).solution
    assert torch.allclose(A, _literal_moment(x, res, torch.eye(d, dtype=F64)), atol=1e-10)
    with pytest.raises(ValueError, match=r"^center='linear' needs n > d \+ 1 samples, got n=5, d=4"):
        tr.stein_moment(x[:5], y[:5])
    x3 = torch.randn(3, 50, 4, dtype=F64)
    msg = re.escape("y must have shape (3, 50) or (3, 50) + (m,), got (3, 49, 2)")
    with pytest.raises(ValueError, match=msg):
        tr.stein_moment(x3, torch.zeros(3, 49, 2, dtype=F64))


# ------------------------------------------------------------------------------------------ row space etc.
def test_row_space_symmetrises_and_sorts_per_slice():
    # a non-symmetric input: only its symmetric part counts; two slices with different orderings
    A = torch.zeros(2, 1, 3, 3, dtype=F64)
    A[0, 0] = torch.tensor([[3.0, 2.0, 0], [0.0, 1.0, 0], [0, 0, 0.1]], dtype=F64)
    A[1, 0] = torch.diag(torch.tensor([0.1, -5.0, 2.0], dtype=F64))
    V, mags = tr.row_space(A, 1, combine="sum")
    sym = 0.5 * (A[0, 0] + A[0, 0].T)
    ev, evec = torch.linalg.eigh(sym)
    top = evec[:, ev.abs().argmax()]
    assert abs(abs(V[0, :, 0] @ top) - 1) < 1e-12
    assert abs(abs(V[1, 1, 0]) - 1) < 1e-12
    assert torch.allclose(mags[1], torch.tensor([5.0, 2.0, 0.1], dtype=F64))
    assert torch.allclose(mags[0], ev.abs().sort(descending=True).values)
    with pytest.raises(ValueError, match=r"^moments must be"):
        tr.row_space(torch.zeros(1, 4, 3, dtype=F64), 1)


def test_reduced_rank_regression_validation_and_atol():
    Y = torch.randn(3, 4, generator=gen(0), dtype=F64)
    X = torch.randn(2, 4, generator=gen(1), dtype=F64)
    tr.reduced_rank_regression(Y, X, 0)
    tr.reduced_rank_regression(Y, X, 2)                                      # min(p, s) = 2
    with pytest.raises(ValueError, match=r"^rank=3 is out of range"):
        tr.reduced_rank_regression(Y, X, 3)
    with pytest.raises(ValueError, match=r"^rank=-1 is out of range"):
        tr.reduced_rank_regression(Y, X, -1)
    with pytest.raises(ValueError, match=r"^Y and X must have the same number of columns"):
        tr.reduced_rank_regression(Y, torch.zeros(4, 3, dtype=F64), 1)
    with pytest.raises(ValueError, match=r"^atol must be non-negative, got -1"):
        tr.reduced_rank_regression(Y, X, 1, atol=-1.0)
    # atol = 0 is allowed and keeps every singular value; a large atol (absolute, no relative cut) drops them
    Z0 = tr.reduced_rank_regression(Y, X, 2, atol=0.0)
    assert torch.allclose(Z0, Y @ torch.linalg.pinv(X), atol=1e-12)
    s = torch.linalg.svdvals(X)
    Xs = X / s[0] * 1e-3                                                     # singular values ≤ 1e-3
    Z = tr.reduced_rank_regression(Y, Xs, 2, atol=1e-6)
    assert torch.allclose(Z, Y @ torch.linalg.pinv(Xs), rtol=1e-9)          # a relative cut-off would keep them too
    assert torch.equal(tr.reduced_rank_regression(Y, Xs, 2, atol=1.0), torch.zeros(3, 2, dtype=F64))
    # atol = 0 means no cut-off at all: a singular value 1e-17 times the largest is inverted (torch's relative
    # default would drop it)
    Xd = torch.diag(torch.tensor([1.0, 1e-17], dtype=F64))
    Yd = torch.tensor([[1.0, 1.0]], dtype=F64)
    assert torch.allclose(tr.reduced_rank_regression(Yd, Xd, 1, atol=0.0), torch.tensor([[1.0, 1e17]], dtype=F64))
    # batched: (S, p, q) and (S, s, q) with q different from s
    Yb, Xb = torch.randn(2, 3, 4, generator=gen(2), dtype=F64), torch.randn(2, 2, 4, generator=gen(3), dtype=F64)
    Zb = tr.reduced_rank_regression(Yb, Xb, 2)
    assert torch.allclose(Zb[1], Yb[1] @ torch.linalg.pinv(Xb[1]), atol=1e-12)
    # wide Y P_X (q > p): the reduced SVD shapes work for rank < p
    Z1 = tr.reduced_rank_regression(Y, X, 1)
    assert Z1.shape == (3, 2)


def test_slides_estimate_keeps_dtype_and_subspace_messages():
    M1 = torch.randn(2, 5, generator=gen(0), dtype=F64)
    V = tr.true_row_space(M1 + torch.randn(2, 5, generator=gen(1), dtype=F64))
    Z = tr.slides_estimate(M1, V, 1)
    assert Z.dtype == F64
    assert torch.allclose(Z, -tr.reduced_rank_regression(M1 @ (torch.eye(5, dtype=F64) - V @ V.T),
                                                         torch.eye(5, dtype=F64) - V @ V.T, 1, atol=1e-8))
    with pytest.raises(ValueError, match=r"^W1 must be wide \(k1 ≤ d\), got shape \(3, 2\)"):
        tr.true_row_space(torch.zeros(3, 2, dtype=F64))
    tr.true_row_space(torch.eye(3, dtype=F64))                               # square is fine
    with pytest.raises(ValueError, match=r"^W1 must be wide"):
        tr.true_row_space(torch.zeros(2, 5, 3, dtype=F64))                   # batched tall
    with pytest.raises(ValueError, match=r"^V1 and V2 must have the same shape"):
        tr.subspace_distance(V, V[:, :1])
    with pytest.raises(ValueError, match=re.escape("Z_hat and Z must have the same shape, got (2, 5) and (2, 4)")):
        tr.relative_error(Z, Z[:, :4])


def test_relative_and_subspace_distance_batched_values():
    Z = torch.randn(2, 3, 4, generator=gen(0), dtype=F64)
    E = torch.randn(2, 3, 4, generator=gen(1), dtype=F64)
    ref = torch.tensor([np.linalg.norm(E[i]) / np.linalg.norm(Z[i]) for i in range(2)], dtype=F64)
    assert torch.allclose(tr.relative_error(Z + E, Z), ref)
    e = torch.eye(3, dtype=F64)
    c, s = np.cos(0.3), np.sin(0.3)
    V2 = torch.tensor([[c], [s], [0.0]], dtype=F64)
    assert tr.subspace_distance(e[:, :1], V2).item() == pytest.approx(s, abs=1e-12)


# ------------------------------------------------------------------------------------------ prediction error
def test_prediction_error_closed_form():
    t = small_teacher(activation="tanh", widths=(2, 3, 2), seeds=2)
    Zh = t.Z + 0.1 * torch.randn(t.Z.shape, generator=gen(7), dtype=F64)
    xt = torch.randn(2, 9, 5, generator=gen(8), dtype=F64)
    def f(W1, x):
        return np.tanh(np.tanh(x @ W1.T) @ M2.T) @ M3.T
    out = []
    for s in range(2):
        M2, M3 = t.M[1][s].numpy(), t.M[2][s].numpy()
        truth = f((t.M[0][s] + t.Z[s]).numpy(), xt[s].numpy())
        pred = f((t.M[0][s] + Zh[s]).numpy(), xt[s].numpy())
        num = ((pred - truth) ** 2).sum(1).mean()
        den = ((truth - truth.mean(0)) ** 2).sum(1).mean()
        out.append(num / den)
    got = tr.prediction_error(t, Zh, xt)
    assert got.shape == (2,)
    assert np.allclose(got.numpy(), out, rtol=1e-10)


# ------------------------------------------------------------------------------------------ transfer
def test_transfer_composes_its_steps():
    t = small_teacher(activation="tanh", widths=(2, 3, 2), d=5, seeds=2)
    x, y = tr.sample(t, 60, generator=gen(9))
    cov = torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5], dtype=F64))
    res = tr.transfer(x, y, t.M, 1, activation="tanh", cov=cov, center="mean", combine="sum", iters=2)
    V, ev = tr.row_space(tr.stein_moment(x, y, cov, "mean"), 2, "sum")
    Zs = tr.slides_estimate(t.M[0], V, 1)
    Z = tr.refine_in_row_space(x, y, t.M, V, Zs, 1, "tanh", iters=2)
    assert torch.equal(res.V, V) and torch.equal(res.eigvals, ev)
    assert torch.equal(res.Z_slides, Zs) and torch.equal(res.Z, Z)
    plain = tr.transfer(x, y, t.M, 1, cov=cov, center="mean", combine="sum", refine=False)
    assert torch.equal(plain.V, V) and torch.equal(plain.eigvals, ev) and torch.equal(plain.Z, Zs)
    # a single known layer (a linear model) is a valid population network
    t1 = tr.random_teacher(1, 5, [2], 1, activation="linear", generator=gen(2))
    x1, y1 = tr.sample(t1, 40, generator=gen(3))
    assert tr.transfer(x1, y1, t1.M, 1, activation="linear").Z.shape == (1, 2, 5)


def test_transfer_validation_messages():
    t = small_teacher(seeds=2, d=5)
    x, y = tr.sample(t, 30, generator=gen(0))
    msg = re.escape("M must be a non-empty sequence of population layers [M_1, ..., M_L]") + "$"
    for bad in ([], t.M[0]):
        with pytest.raises(ValueError, match=msg):
            tr.transfer(x, y, bad, 1)
    msg = re.escape("M_1 must have shape (S, k1, d) = (2, k1, 5), got (1, 2, 5)")
    with pytest.raises(ValueError, match=msg):
        tr.transfer(x, y, [t.M[0][:1]] + t.M[1:], 1)
    with pytest.raises(ValueError, match=r"^M_1 must be a torch.Tensor"):
        tr.transfer(x, y, ["M1"] + t.M[1:], 1)
    for r in (0, 3):
        with pytest.raises(ValueError, match=f"^rank={r} is out of range"):
            tr.transfer(x, y, t.M, r)
    # a tall M_1 (k1 = 6 > d = 5): rank is bounded by d, not by n or k1
    tall = [torch.randn(2, 6, 5, dtype=F64), torch.randn(2, 1, 6, dtype=F64)]
    with pytest.raises(ValueError, match=r"^rank=6 is out of range"):
        tr.transfer(x, y[..., :1], tall, 6)
    ts = tr.random_teacher(1, 3, [3, 1], 1)
    xs, ys = tr.sample(ts, 20, generator=gen(0))
    msg = re.escape("k1 = d: the row space of W_1 is all of R^d, so the Stein step identifies nothing (the slides' "
                    "estimate is 0 and cannot be refined); use refine=False") + "$"
    with pytest.raises(ValueError, match=msg):
        tr.transfer(xs, ys, ts.M, 1)


# ------------------------------------------------------------------------------------------ refinement
def _lm_problem(activation, widths, *, d, rank, noise, n, seed):
    """A two-slice teacher, its sample, true row space and the slides' estimate: ``(t, x, y, V, Z0)``."""
    t = small_teacher(activation=activation, widths=widths, d=d, rank=rank, seeds=2, noise=noise)
    x, y = tr.sample(t, n, generator=gen(seed))
    V = tr.true_row_space(t.W1)
    return t, x, y, V, tr.slides_estimate(t.M[0], V, rank)


def _lm_steps(x, y, M, V, Z0, rank, activation, iters, damping):
    """An independent Levenberg–Marquardt replica: autograd Jacobian in H, (JᵀJ + λ(diag JᵀJ + 1e-12 I)) δ = −Jᵀr,
    accept if the mean squared residual drops, λ /3 on success, ×4 on failure."""
    S, n, d = x.shape
    k1 = Z0.shape[-2]
    sigma = tr.ACTIVATIONS[activation]
    out = []
    for s in range(S):
        U = torch.linalg.svd(Z0[s])[0][:, :rank]

        def resid(h):
            W1 = M[0][s] + Z0[s] + U @ h.reshape(rank, k1) @ V[s].T
            return (tr.mlp_forward(x[s], [W1] + [m[s] for m in M[1:]], activation) - y[s]).reshape(-1)

        h = torch.zeros(rank * k1, dtype=F64)
        lam = damping
        r = resid(h)
        for _ in range(iters):
            J = torch.autograd.functional.jacobian(resid, h)
            JtJ = J.T @ J
            A = JtJ + lam * (torch.diag(torch.diagonal(JtJ)) + 1e-12 * torch.eye(rank * k1, dtype=F64))
            hn = h + torch.linalg.solve(A, -(J.T @ r))
            rn = resid(hn)
            if rn.square().mean() < r.square().mean():
                h, r, lam = hn, rn, max(lam / 3, 1e-9)
            else:
                lam = min(lam * 4, 1e9)
        out.append(Z0[s] + U @ h.reshape(rank, k1) @ V[s].T)
    return torch.stack(out)


@pytest.mark.parametrize("damping", [1e-3, 2.0])
def test_refine_matches_an_independent_levenberg_marquardt(damping):
    t, x, y, V, Z0 = _lm_problem("tanh", (3, 4, 2), d=6, rank=2, noise=0.3, n=40, seed=11)
    for iters in (1, 3):
        got = (tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=iters, damping=damping)
               if damping != 1e-3 else tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=iters))
        ref = _lm_steps(x, y, t.M, V, Z0, 2, "tanh", iters, damping)
        assert torch.allclose(got, ref, atol=1e-9), (iters, (got - ref).abs().max())


def test_refine_rejects_a_step_that_increases_the_loss():
    # huge ReLU head and a tiny damping: the first Gauss–Newton step overshoots; the replica decides
    t, x, y, V, Z0 = _lm_problem("relu", (3, 4, 2), d=6, rank=2, noise=1.0, n=25, seed=12)
    for damping in (1e-9, 1e-6):
        got = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "relu", iters=4, damping=damping)
        ref = _lm_steps(x, y, t.M, V, Z0, 2, "relu", 4, damping)
        assert torch.allclose(got, ref, atol=1e-8)


def test_refine_default_iterations_and_stopping():
    t, x, y, V, Z0 = _lm_problem("tanh", (3, 4, 2), d=6, rank=2, noise=0.3, n=40, seed=13)
    Zd = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh")
    assert torch.allclose(Zd, tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=10), atol=0)
    assert not torch.allclose(Zd, tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=11), atol=1e-6)
    # converged: more iterations return the same tensor (the loop stops), and a value is returned
    t, x, y, V, Z0 = _lm_problem("softplus", (2, 3, 1), d=5, rank=1, noise=0.5, n=30, seed=13)
    Z100 = tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "softplus", iters=200)
    assert Z100 is not None
    assert torch.equal(Z100, tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "softplus", iters=400))


def test_float32_inputs_stay_float32():
    """The book's tests run with float64 as torch's default dtype: float32 inputs show that every internal
    tensor takes the inputs' dtype (a tensor created with the default dtype would mix precisions)."""
    f32 = torch.float32
    t = tr.random_teacher(2, 5, [2, 3, 2], 1, activation="tanh", generator=gen(1), dtype=f32)
    assert all(m.dtype == f32 for m in t.M) and t.Z.dtype == f32
    x, y = tr.sample(t, 40, generator=gen(2), cov=torch.eye(5, dtype=F64))
    assert x.dtype == f32 and y.dtype == f32
    g1, g2 = gen(3), gen(3)
    x1, _ = tr.sample(t, 4, generator=g1, noise=False)
    assert torch.equal(x1, torch.randn(2, 4, 5, generator=g2, dtype=f32))
    assert tr.true_row_space(t.W1).dtype == f32
    V64 = tr.true_row_space(t.W1.double())                 # slides_estimate checks VᵀV = I to 1e-8: float64
    Z0, V = tr.slides_estimate(t.M[0].double(), V64, 1).float(), V64.float()
    assert tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "tanh", iters=2).dtype == f32
    for bs in (None, 8):
        assert tr.fit_lora_first_layer(x, y, t.M, 1, [1e-2], 2, activation="tanh", batch_size=bs).dtype == f32


def test_refine_single_layer_and_validation():
    t = tr.random_teacher(2, 5, [2], 1, activation="linear", noise=0.0, generator=gen(4))
    x, y = tr.sample(t, 30, generator=gen(5))
    V = tr.true_row_space(t.W1)
    Z0 = tr.slides_estimate(t.M[0], V, 1)
    Z = tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "linear", iters=30)
    assert torch.allclose(Z, t.Z, atol=1e-8)                                 # noiseless linear: exact
    # one tanh layer: no activation after the last (only) layer
    tt = tr.random_teacher(2, 5, [2], 1, activation="tanh", noise=0.1, generator=gen(4))
    xt, yt = tr.sample(tt, 30, generator=gen(5))
    Vt = tr.true_row_space(tt.W1)
    Z0t = tr.slides_estimate(tt.M[0], Vt, 1)
    assert torch.allclose(tr.refine_in_row_space(xt, yt, tt.M, Vt, Z0t, 1, "tanh", iters=2),
                          _lm_steps(xt, yt, tt.M, Vt, Z0t, 1, "tanh", 2, 1e-3), atol=1e-9)
    with pytest.raises(ValueError, match=re.escape("y must have shape (2, 30, m), got (2, 29, 2)")):
        tr.refine_in_row_space(x, torch.zeros(2, 29, 2, dtype=F64), t.M, V, Z0, 1)
    for bad in (dict(Z0=Z0[:, :1]), dict(V=V[:, :4]), dict(M=[t.M[0][:, :1]])):
        a = dict(Z0=Z0, V=V, M=t.M, **{})
        a.update(bad)
        msg = re.escape(f"need M_1 and Z0 of shape (S, k1, d) and V of shape (S, d, k1); got "
                        f"{tuple(a['M'][0].shape)}, {tuple(a['Z0'].shape)}, {tuple(a['V'].shape)}") + "$"
        with pytest.raises(ValueError, match=msg):
            tr.refine_in_row_space(x, y, a["M"], a["V"], a["Z0"], 1)
    for r in (0, 3):
        with pytest.raises(ValueError, match=f"^rank={r} is out of range"):
            tr.refine_in_row_space(x, y, t.M, V, Z0, r)
    with pytest.raises(ValueError, match=r"^iters must be a positive integer"):
        tr.refine_in_row_space(x, y, t.M, V, Z0, 1, iters=0)


# ------------------------------------------------------------------------------------------ gradient LoRA
def _one_adam_step(x, y, M, rank, lrs, sizes, val_frac, batch_size, seed, activation):
    """One Adam step from B = 0 is B = −lr·sign(∂L/∂B) (bias-corrected moments, eps 1e-8 ≪ |grad|); A is unchanged."""
    S, n, d = x.shape
    R = len(lrs)
    k1 = M[0].shape[-2]
    g = gen(seed)
    A = torch.randn(S * R, rank, d, generator=g, dtype=F64) / d**0.5
    u = torch.rand(S * R, batch_size, generator=g, dtype=F64) if batch_size else None
    Zs, chosen = [], []
    for s in range(S):
        n_val = max(1, int(np.round(val_frac * sizes[s])))
        n_tr = sizes[s] - n_val
        best, Zbest = np.inf, None
        for r in range(R):
            p = s * R + r
            if u is None:
                rows = torch.arange(n_val, n_val + n_tr)
            else:
                rows = n_val + (u[p] * n_tr).long()
            def loss(B, rows=rows):
                pred = tr.mlp_forward(x[s, rows], [M[0][s] + B @ A[p]] + [m[s] for m in M[1:]], activation)
                return (pred - y[s, rows]).square().sum(-1).mean()
            B0 = torch.zeros(k1, rank, dtype=F64, requires_grad=True)
            G = torch.autograd.grad(loss(B0), B0)[0]
            B1 = -lrs[r] * G / (G.abs() + 1e-8)
            Z = B1 @ A[p]
            vrows = torch.arange(n_val)
            pred = tr.mlp_forward(x[s, vrows], [M[0][s] + Z] + [m[s] for m in M[1:]], activation)
            v = (pred - y[s, vrows]).square().sum(-1).mean().item()
            if v < best:
                best, Zbest, rbest = v, Z, r
        Zs.append(Zbest)
        chosen.append(rbest)
    return torch.stack(Zs), chosen


@pytest.mark.parametrize("batch_size", [None, 5])
def test_fit_lora_one_step_matches_a_replica(batch_size):
    t = small_teacher(activation="tanh", widths=(3, 4, 2), d=5, rank=2, seeds=2, noise=0.2)
    x, y = tr.sample(t, 20, generator=gen(14))
    lrs, sizes = [0.2, 0.1], [20, 12]
    got = tr.fit_lora_first_layer(x, y, t.M, 2, lrs, 1, sizes=sizes, activation="tanh", val_frac=0.3,
                                  batch_size=batch_size, generator=gen(21))
    ref, chosen = _one_adam_step(x, y, t.M, 2, lrs, sizes, 0.3, batch_size, 21, "tanh")
    assert got.dtype == F64
    assert torch.allclose(got, ref, atol=1e-10)
    assert sorted(chosen) == [0, 1]               # the slices select different rates: the selection is per slice


def test_fit_lora_defaults_and_generator():
    t = small_teacher(activation="relu", widths=(2, 3, 1), d=4, rank=1, seeds=2)
    x, y = tr.sample(t, 30, generator=gen(15))
    run = lambda **kw: tr.fit_lora_first_layer(x, y, t.M, 1, [1e-2], 2, **kw)
    Z = run()
    assert torch.equal(Z, run(generator=gen(0)))                             # default: a seed-0 generator
    assert torch.equal(Z, run(batch_size=256, val_frac=0.2, activation="relu", generator=gen(0)))
    assert not torch.equal(Z, run(generator=gen(1)))                        # an explicit generator is used
    assert not torch.equal(run(batch_size=5), run(batch_size=6))


def test_fit_lora_validation_boundaries():
    t = small_teacher(activation="relu", widths=(2, 3, 1), d=4, rank=1, seeds=2)
    x, y = tr.sample(t, 10, generator=gen(16))
    fit = lambda **kw: tr.fit_lora_first_layer(**{**dict(x=x, y=y, M=t.M, rank=1, lrs=[1e-2], steps=1), **kw})
    fit(batch_size=1)
    fit(sizes=[2, 2])                                                         # one validation, one training sample
    fit(val_frac=0.05)
    fit(M=[t.M[0]], y=y[..., :2])                                            # one layer
    for bs in (0, True, 1.5, -1):
        with pytest.raises(ValueError, match=r"^batch_size must be a positive integer or None"):
            fit(batch_size=bs)
    for vf in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"^val_frac must lie in \(0, 1\)"):
            fit(val_frac=vf)
    with pytest.raises(ValueError, match=r"^val_frac=0.9 leaves no training sample for some slice"):
        fit(sizes=[2, 10], val_frac=0.9)
    for sizes in ([1, 10], [2, 11], [2.0, 10.0], [2]):
        with pytest.raises(ValueError, match=r"^sizes must be 2 integers in \[2, 10\]"):
            fit(sizes=sizes)
    for lrs in ([0.0], [], [1e-2, -1.0]):
        with pytest.raises(ValueError, match=r"^lrs must be a non-empty list of positive learning rates"):
            fit(lrs=lrs)
    for r in (0, 3):
        with pytest.raises(ValueError, match=f"^rank={r} is out of range"):
            fit(rank=r)
    with pytest.raises(ValueError, match=re.escape("y must have shape (2, 10, m), got (2, 9, 1)")):
        fit(y=y[:, :9])
    msg = re.escape("M must be a list of layers with M_1 of shape (2, k1, 4)")
    for M in ([], t.M[0], [t.M[0][:1]] + t.M[1:], [t.M[0][..., :3]] + t.M[1:], [t.M[0][:1], t.M[1]]):
        with pytest.raises(ValueError, match=msg):
            fit(M=M)


def test_orthonormality_check_follows_the_precision():
    """An orthonormal basis rounded to float32 passes; one off by 1e-2 fails, in float32 and float64."""
    from lorabook import transfer as tr

    g = torch.Generator().manual_seed(0)
    M1 = torch.randn(3, 32, generator=g, dtype=torch.float64)
    V = torch.linalg.qr(torch.randn(32, 3, generator=g, dtype=torch.float64))[0]
    for dtype in (torch.float32, torch.float64):
        tr.slides_estimate(M1.to(dtype), V.to(dtype), 1)
        with pytest.raises(ValueError, match="orthonormal"):
            tr.slides_estimate(M1.to(dtype), (V * 1.01).to(dtype), 1)
    with pytest.raises(ValueError, match="orthonormal"):
        tr.slides_estimate(M1, V + 1e-6, 1)   # float64 keeps its tolerance of 1e-8


# ------------------------------------------------------------------- refinement: slices, stopping, defaults
def test_refine_slices_are_independent_problems():
    """Slice 0 has 20× the noise of slice 1, so its loss is ~400× larger: each slice must accept or reject its
    steps against its own loss (the replica solves the slices one at a time)."""
    t = small_teacher(activation="tanh", widths=(3, 4, 2), d=6, rank=2, seeds=2, noise=0.3)
    x, y = tr.sample(t, 40, generator=gen(11))
    y = y.clone()
    y[0] += 6.0 * torch.randn(y[0].shape, generator=gen(1), dtype=F64)
    V = tr.true_row_space(t.W1)
    Z0 = tr.slides_estimate(t.M[0], V, 2)
    for iters in (1, 3):
        got = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=iters)
        assert torch.allclose(got, _lm_steps(x, y, t.M, V, Z0, 2, "tanh", iters, 1e-3), rtol=0, atol=1e-10)
        alone = tr.refine_in_row_space(x[1:], y[1:], [m[1:] for m in t.M], V[1:], Z0[1:], 2, "tanh", iters=iters)
        assert torch.allclose(got[1:], alone, rtol=0, atol=1e-12)


def test_refine_stops_once_the_damping_reaches_1e8():
    """A slice whose damping λ is 1e8 is finished after its step: with λ = 1e8 from the start, every slice stops
    after one iteration, whatever ``iters`` allows (the replica, which never stops early, moves on)."""
    t, x, y, V, Z0 = _lm_problem("tanh", (3, 4, 2), d=6, rank=2, noise=0.3, n=40, seed=11)
    one = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=1, damping=1e8)
    assert torch.allclose(tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=10, damping=1e8), one,
                          rtol=0, atol=1e-12)
    assert torch.allclose(one, _lm_steps(x, y, t.M, V, Z0, 2, "tanh", 1, 1e8), rtol=0, atol=1e-12)
    assert not torch.allclose(one, _lm_steps(x, y, t.M, V, Z0, 2, "tanh", 10, 1e8), rtol=0, atol=1e-6)


def test_mlp_forward_names_the_columns_of_a_batched_layer():
    x = torch.randn(2, 4, 3, dtype=F64)
    W1, W2 = torch.randn(2, 5, 3, dtype=F64), torch.randn(2, 1, 6, dtype=F64)   # W_2 has 1 row, 6 columns
    with pytest.raises(ValueError, match=re.escape("W_2 has 6 columns but its input has width 5")):
        tr.mlp_forward(x, [W1, W2])


def test_transfer_default_iterations():
    t = small_teacher(activation="tanh", widths=(3, 4, 2), d=6, rank=2, seeds=2, noise=0.3)
    x, y = tr.sample(t, 40, generator=gen(13))
    Z = tr.transfer(x, y, t.M, 2, activation="tanh").Z
    # (repeated calls agree to ~1e-11, not bit for bit: the row-space step is not bitwise reproducible)
    assert torch.allclose(Z, tr.transfer(x, y, t.M, 2, activation="tanh", iters=10).Z, rtol=0, atol=1e-9)
    assert not torch.allclose(Z, tr.transfer(x, y, t.M, 2, activation="tanh", iters=11).Z, rtol=0, atol=1e-6)


def test_fit_lora_validation_uses_only_the_held_out_samples():
    """Slice 0 (size 4, one validation sample) is fitted next to slice 1 (size 8, two): its validation loss must
    use its sample 0 only. The targets come from a rank-1 shift Z* = b aᵀ with a ⟂ x_0, so sample 0 is fitted
    exactly by Z = 0 and the training samples need Z*: the tiny learning rate (Z stays ≈ 0) wins on validation;
    counting the first training sample as well would pick the large one, which fits it better."""
    g = gen(21)
    S, n, d, k1 = 2, 8, 3, 2
    M1, M2 = torch.randn(S, k1, d, generator=g, dtype=F64), torch.randn(S, 1, k1, generator=g, dtype=F64)
    x = torch.randn(S, n, d, generator=g, dtype=F64)
    a = torch.linalg.cross(x[:, 0], torch.randn(S, d, generator=g, dtype=F64))          # a ⟂ x_0
    Zs = 3 * torch.randn(S, k1, 1, generator=g, dtype=F64) * a[:, None, :] / a.norm(dim=-1)[:, None, None]
    y = tr.mlp_forward(x, [M1 + Zs, M2], "linear")
    kw = dict(sizes=[4, 8], activation="linear", val_frac=0.25, batch_size=None, generator=gen(2))
    Z = tr.fit_lora_first_layer(x, y, [M1, M2], 1, [1e-7, 0.1], 100, **kw)
    assert Z[0].abs().max() < 1e-4
    big = tr.fit_lora_first_layer(x, y, [M1, M2], 1, [0.1], 100, **kw)      # the large lr does move Z
    assert big[0].abs().max() > 0.1


def test_refine_raises_the_damping_after_rejected_steps():
    """Large noise and a damping of 1e-9: the first Gauss–Newton steps overshoot and are rejected until λ has
    grown (×4 per rejection); the replica follows the same rule for 12 iterations."""
    t, x, y, V, Z0 = _lm_problem("tanh", (3, 4, 2), d=6, rank=2, noise=1.0, n=25, seed=1)
    got = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=12, damping=1e-9)
    assert torch.allclose(got, _lm_steps(x, y, t.M, V, Z0, 2, "tanh", 12, 1e-9), rtol=0, atol=1e-10)


def test_refine_stops_once_a_step_gains_less_than_1e_10():
    """Once an accepted step lowers the loss by less than a relative 1e-10 (here by iteration 19), the slice is
    finished: more iterations return the same Z (without the stop, the later steps still move it by ~1e-6)."""
    t, x, y, V, Z0 = _lm_problem("tanh", (2, 3, 1), d=5, rank=1, noise=0.05, n=30, seed=3)
    Z19 = tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "tanh", iters=19)
    assert torch.allclose(tr.refine_in_row_space(x, y, t.M, V, Z0, 1, "tanh", iters=25), Z19, rtol=0, atol=1e-9)


def test_refine_damping_never_falls_below_1e_9():
    """Starting at the floor λ = 1e-9, accepted steps divide λ by 3 but it stays at 1e-9 (the replica's rule)."""
    t, x, y, V, Z0 = _lm_problem("tanh", (3, 4, 2), d=6, rank=2, noise=0.3, n=25, seed=11)
    got = tr.refine_in_row_space(x, y, t.M, V, Z0, 2, "tanh", iters=4, damping=1e-9)
    assert torch.allclose(got, _lm_steps(x, y, t.M, V, Z0, 2, "tanh", 4, 1e-9), rtol=0, atol=1e-10)
