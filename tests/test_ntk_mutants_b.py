"""Tests of lorabook.ntk's samplers, bounds, second-order diagnostics and validations, with values computed
independently of the code (closed forms, hand-built problems, NumPy, the distributions the samples are drawn from)
and each input check tested on both sides of its boundary, with the error message it must name."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lorabook import ntk

F64, F32 = torch.float64, torch.float32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _draws_only_from(fn, *args, **kw):
    """Call ``fn`` twice with the same seeded generator while the global RNG is re-seeded differently in between;
    return both results and whether the global RNG state was left untouched."""
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = fn(*args, generator=gen(5), **kw)
    untouched = torch.equal(before, torch.get_rng_state())
    torch.manual_seed(2)
    b = fn(*args, generator=gen(5), **kw)
    return a, b, untouched


# ------------------------------------------------------------------------------------- bounded_gradient_sample
@pytest.mark.parametrize("shape, name", [((0, 1, 2, 2), "K"), ((2, 0, 2, 2), "P"), ((2, 1, 0, 2), "m"),
                                         ((2, 1, 2, 0), "n")])
def test_bounded_gradient_sample_names_each_bad_size(shape, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got 0$"):
        ntk.bounded_gradient_sample(3, shape, 1.0, generator=gen())


def test_bounded_gradient_sample_validation_messages_and_boundaries():
    with pytest.raises(ValueError, match="^N must be a positive integer, got 0$"):
        ntk.bounded_gradient_sample(0, (2, 1, 2, 2), 1.0, generator=gen())
    with pytest.raises(ValueError, match=r"^shape must be \(K, P, m, n\), got \(2, 2, 2\)$"):
        ntk.bounded_gradient_sample(3, (2, 2, 2), 1.0, generator=gen())
    with pytest.raises(ValueError, match="^need R > 0 and sigma >= 0, got R=0.0, sigma=0.3$"):
        ntk.bounded_gradient_sample(3, (2, 1, 2, 2), 0.0, generator=gen())
    with pytest.raises(ValueError, match="^need R > 0 and sigma >= 0, got R=1.0, sigma=-0.1$"):
        ntk.bounded_gradient_sample(3, (2, 1, 2, 2), 1.0, generator=gen(), sigma=-0.1)
    # a radius below 1 and sigma = 0 (no noise) are valid
    G = ntk.bounded_gradient_sample(3, (2, 1, 2, 2), 0.5, generator=gen(), sigma=0.0)
    assert torch.allclose(G.flatten(1).norm(dim=1), torch.full((3,), 0.5))


def test_bounded_gradient_sample_noiseless_is_the_class_contrast():
    """With sigma = 0, G_i = s_i c ⊗ e_1 e_1ᵀ normalised to ‖G_i‖_F = R: in every slice p the entry (0, 0) is
    sign(s_i)·R/√(2P) for class 0, its negative for class 1, and every other entry is 0."""
    N, K, P, m, n, R = 40, 3, 2, 3, 4, 2.5
    G = ntk.bounded_gradient_sample(N, (K, P, m, n), R, generator=gen(3), sigma=0.0)
    assert G.shape == (N, K, P, m, n)
    a = R / math.sqrt(2 * P)
    top = G[:, 0, :, 0, 0]
    assert torch.allclose(top.abs(), torch.full((N, P), a))
    assert (top[:, :1] == top).all()                       # one s_i shared by the P slices
    assert 0 < int((top[:, 0] > 0).sum()) < N              # both signs of s_i occur
    assert torch.allclose(G[:, 1, :, 0, 0], -top)
    rest = G.clone()
    rest[:, :2, :, 0, 0] = 0
    assert (rest == 0).all()


def test_bounded_gradient_sample_signal_to_noise_matches_the_documented_mixture():
    """Before normalisation G_i = s_i (e_0 − e_1)/√2 ⊗ e_1 e_1ᵀ + σ W_i. Dividing each example by the mean square
    ν_i of its pure-noise entries (σ²·χ²_d/d with d = 190 here) removes the normalisation, so over many examples
    mean((G_0 − G_1)²/ν) → (2 + 2σ²)/σ² · d/(d − 2) and mean((G_0 + G_1)²/ν) → 2 · d/(d − 2), with G_k the
    (k, 0, 0, 0) entry (s_i standard normal; class 0 and 1 entries carry independent noise)."""
    N, K, P, m, n, sigma = 6000, 3, 1, 8, 8, 0.5
    G = ntk.bounded_gradient_sample(N, (K, P, m, n), 1.7, generator=gen(11), sigma=sigma)
    flat = G.reshape(N, -1)
    e0, e1 = 0, m * n                                      # (0, 0, 0, 0) and (1, 0, 0, 0)
    noise = torch.cat([flat[:, 1:e1], flat[:, e1 + 1:]], 1)
    d = noise.shape[1]
    nu = noise.square().mean(1)
    corr = d / (d - 2)
    diff = float(((flat[:, e0] - flat[:, e1]).square() / nu).mean())
    summ = float(((flat[:, e0] + flat[:, e1]).square() / nu).mean())
    assert diff == pytest.approx((2 + 2 * sigma ** 2) / sigma ** 2 * corr, abs=0.6)   # 10.1, s.e. 0.18
    assert summ == pytest.approx(2 * corr, abs=0.15)                                  # 2.02, s.e. 0.04
    # the noise is Gaussian: its kurtosis (mean w⁴ / (mean w²)²) is 3
    w = noise / nu.sqrt()[:, None]
    assert float(w.pow(4).mean()) == pytest.approx(3.0, abs=0.1)


def test_bounded_gradient_sample_default_sigma_is_0_3():
    a = ntk.bounded_gradient_sample(5, (2, 1, 2, 3), 1.0, generator=gen(4))
    b = ntk.bounded_gradient_sample(5, (2, 1, 2, 3), 1.0, generator=gen(4), sigma=0.3)
    assert torch.equal(a, b)


def test_bounded_gradient_sample_draws_only_from_its_generator():
    a, b, untouched = _draws_only_from(ntk.bounded_gradient_sample, 6, (2, 2, 3, 2), 1.0)
    assert untouched and torch.equal(a, b)


def test_bounded_gradient_sample_dtype_does_not_follow_the_default(default_dtype):
    ref = ntk.bounded_gradient_sample(6, (2, 1, 3, 2), 1.0, generator=gen(2), dtype=F64)
    with default_dtype(F32):
        out = ntk.bounded_gradient_sample(6, (2, 1, 3, 2), 1.0, generator=gen(2), dtype=F64)
    assert out.dtype == F64 and torch.equal(out, ref)
    g32 = ntk.bounded_gradient_sample(6, (2, 1, 3, 2), 1.0, generator=gen(2), dtype=F32)
    assert g32.dtype == F32


# ------------------------------------------------------------------------------------------------- class_targets
def test_class_targets_accepts_two_classes_and_column_labels():
    y = torch.tensor([[1], [0], [1]])                       # (N, 1) integer labels, K = 2
    assert torch.equal(ntk.class_targets(y, 2), torch.tensor([[0., 1.], [1., 0.], [0., 1.]]))
    y3 = torch.tensor([[2], [0]])
    assert torch.equal(ntk.class_targets(y3, 3), torch.tensor([[0., 0., 1.], [1., 0., 0.]]))
    # a floating (N, 1) column is not a label column: with K = 2 its shape is wrong
    with pytest.raises(ValueError, match=r"^cross-entropy targets must be \(N,\) class indices or \(N, 2\) "
                                         r"simplex rows, got shape \(3, 1\)$"):
        ntk.class_targets(torch.tensor([[1.0], [0.0], [1.0]]), 2)


def test_class_targets_validates_K():
    with pytest.raises(ValueError, match="^K must be a positive integer, got 0$"):
        ntk.class_targets(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="^the cross-entropy loss needs K >= 2 classes, got K = 1$"):
        ntk.class_targets(torch.tensor([0]), 1)


def test_class_targets_float_integer_labels_and_a_single_label():
    assert torch.equal(ntk.class_targets(torch.tensor([2.0, 0.0, 1.0]), 3), torch.eye(3)[[2, 0, 1]])
    assert torch.equal(ntk.class_targets([1], 3), torch.tensor([[0., 1., 0.]]))
    with pytest.raises(ValueError, match=r"^class labels must be integers in \{0, \.\.\., K-1\}$"):
        ntk.class_targets(torch.tensor([0.0, 0.5]), 3)
    with pytest.raises(ValueError, match=r"^class labels must be integers in \{0, \.\.\., K-1\}$"):
        ntk.class_targets(torch.tensor([0.0, float("nan")]), 3)


def test_class_targets_range_messages():
    with pytest.raises(ValueError, match=r"^class labels must lie in \{0, \.\.\., 2\}, got range \[-1, 3\]$"):
        ntk.class_targets(torch.tensor([0, -1, 3]), 3)
    with pytest.raises(ValueError, match=r"^class labels must lie in \{0, \.\.\., 3\}, got range \[None, None\]$"):
        ntk.class_targets(torch.zeros(0, dtype=torch.long), 4)


def test_class_targets_returns_the_requested_dtype():
    assert ntk.class_targets(torch.tensor([0, 1]), 2, dtype=F32).dtype == F32
    soft = torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=F64)
    out = ntk.class_targets(soft, 2, dtype=F32)
    assert out.dtype == F32 and torch.equal(out, soft.float())


def test_class_targets_row_sum_tolerance_is_ten_float32_eps():
    """In float32 the allowed deviation of a row sum from 1 is max(1e-9, 10·eps) = 10·eps: exactly 10 eps is
    accepted, 11 eps rejected (0.5 + k·eps is representable, so the row sums are exact)."""
    e = torch.finfo(F32).eps
    ok = torch.tensor([[0.5 + 10 * e, 0.5]], dtype=F32)
    assert torch.equal(ntk.class_targets(ok, 2, dtype=F32), ok)
    bad = torch.tensor([[0.5 + 11 * e, 0.5]], dtype=F32)
    with pytest.raises(ValueError, match="^cross-entropy target rows must be non-negative and sum to 1$"):
        ntk.class_targets(bad, 2, dtype=F32)


# ------------------------------------------------------------------------------------------------ lora_objective
def _small_problem(N=3, K=2, m=4, n=3, P=2, lam=0.3, seed=0):
    g = gen(seed)
    G = torch.randn(N, K, P, m, n, generator=g)
    f0 = torch.randn(N, K, generator=g)
    y = torch.randn(N, K, generator=g)
    return ntk.LinearisedProblem(G, f0, y, lam)


def test_lora_objective_perturbation_term_by_hand():
    """The perturbed objective adds ½ Σ_p tr(Z_pᵀ Pm Z_p), Z_p = [B_p; A_p] (m+n)×r: computed here with NumPy
    per slice and per column (½ Σ_p Σ_j z_pjᵀ Pm z_pj)."""
    pr = _small_problem()
    B = torch.randn(2, 4, 2, generator=gen(1))
    A = torch.randn(2, 3, 2, generator=gen(2))
    Q = torch.randn(7, 7, generator=gen(3))
    Pm = Q @ Q.T
    base = float(ntk.lora_objective(pr, B, A))
    # base by hand: mean of ½‖f0 + ⟨G_i, BAᵀ⟩ − y‖² plus λ/2 (‖A‖² + ‖B‖²)
    Gn, Bn, An = pr.G.numpy(), B.numpy(), A.numpy()
    delta = np.stack([Bn[p] @ An[p].T for p in range(2)])
    f = pr.f0.numpy() + np.einsum("nkpij,pij->nk", Gn, delta)
    hand = 0.5 * ((f - pr.y.numpy()) ** 2).sum(1).mean() + 0.15 * ((Bn ** 2).sum() + (An ** 2).sum())
    assert base == pytest.approx(hand, rel=1e-12)
    extra = 0.0
    for p in range(2):
        Z = np.vstack([Bn[p], An[p]])
        for j in range(2):
            extra += 0.5 * Z[:, j] @ Pm.numpy() @ Z[:, j]
    got = ntk.lora_objective(pr, B, A, Pm)
    assert float(got) == pytest.approx(hand + extra, rel=1e-12)
    # differentiable in the factors: d/dB of the extra term is (Pm Z)[:m]
    Bg = B.clone().requires_grad_(True)
    gB, = torch.autograd.grad(ntk.lora_objective(pr, Bg, A, Pm) - ntk.lora_objective(pr, Bg, A), Bg)
    Z = torch.cat([B, A], 1)
    assert torch.allclose(gB, (Pm @ Z)[:, :4])


def test_lora_objective_perturbation_shape_message():
    pr = _small_problem()
    B, A = torch.zeros(2, 4, 1), torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match=r"^perturbation must have shape \(7, 7\), got \(1, 7\)$"):
        ntk.lora_objective(pr, B, A, torch.zeros(1, 7))
    with pytest.raises(ValueError, match=r"^perturbation must have shape \(7, 7\), got \(7, 1\)$"):
        ntk.lora_objective(pr, B, A, torch.zeros(7, 1))


# ------------------------------------------------------------------------------------------------ ce_excess_risk
def test_ce_excess_risk_shape_messages():
    G = torch.randn(5, 3, 2, 2, generator=gen())
    with pytest.raises(ValueError, match=r"^G must have shape \(M, K, P, m, n\), got \(5, 3, 2, 2\)$"):
        ntk.ce_excess_risk(G, torch.zeros(5, 3), torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"^G must have shape \(M, K, P, m, n\), got \(\)$"):
        ntk.ce_excess_risk([[1.0]], torch.zeros(5, 3), torch.zeros(2, 2), torch.zeros(2, 2))
    G5 = G.unsqueeze(2)
    d = torch.zeros(1, 2, 2)
    msg = r"^f0 must be \(M, K\) and delta, delta_true \(P, m, n\) matching G$"
    with pytest.raises(ValueError, match=msg):
        ntk.ce_excess_risk(G5, torch.zeros(5, 3), d, torch.zeros(1, 2, 3))      # only delta_true is wrong
    with pytest.raises(ValueError, match=msg):
        ntk.ce_excess_risk(G5, torch.zeros(5, 3), torch.zeros(2, 2), d)          # only delta is wrong


def test_ce_excess_risk_by_hand_and_casts_the_updates():
    """Two examples, K = 2, one 1×1 slice: with logits z = f0 + G·d the excess risk is the mean of
    KL(softmax(z_true) ‖ softmax(z)), written out with sigmoids; float32 updates are cast to G's dtype."""
    G = torch.tensor([[1.0, -1.0], [0.5, 2.0]]).reshape(2, 2, 1, 1, 1)
    f0 = torch.tensor([[0.2, 0.0], [0.0, -0.3]])
    dt, d = 0.8, -0.4

    def kl(zt, z):
        pt = 1 / (1 + math.exp(-(zt[0] - zt[1])))
        p = 1 / (1 + math.exp(-(z[0] - z[1])))
        return pt * math.log(pt / p) + (1 - pt) * math.log((1 - pt) / (1 - p))

    vals = []
    for i in range(2):
        g = G[i, :, 0, 0, 0].tolist()
        zt = [f0[i, k].item() + g[k] * dt for k in range(2)]
        z = [f0[i, k].item() + g[k] * d for k in range(2)]
        vals.append(kl(zt, z))
    mean, se = ntk.ce_excess_risk(G, f0, torch.tensor([[[d]]], dtype=F32), torch.tensor([[[dt]]], dtype=F32))
    assert mean == pytest.approx(np.mean(vals), rel=1e-6)
    assert se == pytest.approx(np.std(vals, ddof=1) / math.sqrt(2), rel=1e-5)


# ------------------------------------------------------------------------------------------------ rank_threshold
def test_rank_threshold_names_the_bad_argument():
    with pytest.raises(ValueError, match="^K must be a positive integer, got 0$"):
        ntk.rank_threshold(0, 3)
    with pytest.raises(ValueError, match="^N must be a positive integer, got 0$"):
        ntk.rank_threshold(2, 0)


# ---------------------------------------------------------------------------------------------- rademacher_bound
def test_rademacher_bound_single_example_is_exact():
    """N = 1: |σ_1| = 1 on every draw, so the estimate is radius·‖G_1‖_2 exactly (largest singular value, over
    the P slices); the lemma value is radius·‖G_1‖_F."""
    G1 = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0], [2.0, 0.0, 0.5]]])   # P = 2, 2×3
    G = G1.reshape(1, 1, 2, 2, 3)
    out = ntk.rademacher_bound(G, 0.7, n_draws=9, generator=gen(1))
    assert out["empirical"] == pytest.approx(0.7 * 3.0, rel=1e-12)
    assert out["lemma"] == pytest.approx(0.7 * math.sqrt(9 + 1 + 4 + 0.25), rel=1e-12)


def test_rademacher_bound_two_equal_examples():
    """G_1 = G_2: ‖σ_1 G_1 + σ_2 G_2‖_2 is 2‖G_1‖_2 for equal signs and 0 otherwise, each with probability ½,
    so the estimate is ≈ radius·‖G_1‖_2/2 (400 draws: s.e. 2.5 %); the lemma value is radius·√2‖G_1‖_F/2."""
    G1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    G = torch.stack([G1, G1]).reshape(2, 1, 1, 2, 2)
    out = ntk.rademacher_bound(G, 3.0, n_draws=400, generator=gen(2))
    assert out["empirical"] == pytest.approx(3.0 * 2.0 / 2, rel=0.1)
    assert out["lemma"] == pytest.approx(3.0 * math.sqrt(2 * 5.0) / 2, rel=1e-12)


def test_rademacher_bound_accepts_several_slices_and_small_radii():
    G = torch.randn(4, 1, 2, 2, 3, generator=gen())
    out = ntk.rademacher_bound(G, 0.5, n_draws=3, generator=gen(1))
    assert 0 < out["empirical"] <= out["lemma"]
    zero = ntk.rademacher_bound(G, 0.0, n_draws=3, generator=gen(1))
    assert zero == {"empirical": 0.0, "lemma": 0.0}


def test_rademacher_bound_messages_and_default_draws():
    G = torch.randn(4, 1, 1, 2, 2, generator=gen())
    with pytest.raises(ValueError, match=r"^G must have shape \(N, 1, P, m, n\), got \(4, 2, 1, 2\)$"):
        ntk.rademacher_bound(G.reshape(4, 2, 1, 2), 1.0)
    with pytest.raises(ValueError, match=r"^G must have shape \(N, 1, P, m, n\), got \[1, 2\]$"):
        ntk.rademacher_bound([1, 2], 1.0)
    with pytest.raises(ValueError, match="^n_draws must be a positive integer, got 0$"):
        ntk.rademacher_bound(G, 1.0, n_draws=0)
    a = ntk.rademacher_bound(G, 1.0, generator=gen(3))
    b = ntk.rademacher_bound(G, 1.0, n_draws=50, generator=gen(3))
    assert a == b


# ------------------------------------------------------------------------------------------ generalisation_bound
def test_generalisation_bound_default_delta_and_zero_inputs():
    """delta defaults to 0.05; zero complexity, Lipschitz constant or range are valid (hand value with
    rademacher = 0: 4·2·√(2 ln 80 / 100))."""
    assert ntk.generalisation_bound(0.1, 1.5, 2.0, 100) == ntk.generalisation_bound(0.1, 1.5, 2.0, 100, 0.05)
    assert ntk.generalisation_bound(0.0, 0.0, 2.0, 100) == pytest.approx(8 * math.sqrt(2 * math.log(80) / 100))
    assert ntk.generalisation_bound(0.3, 2.0, 0.0, 100) == pytest.approx(1.2)


def test_generalisation_bound_messages_and_boundaries():
    with pytest.raises(ValueError, match="^N must be a positive integer, got 0$"):
        ntk.generalisation_bound(0.1, 1.0, 1.0, 0)
    for d in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^delta must lie in \(0, 1\), got {d}$"):
            ntk.generalisation_bound(0.1, 1.0, 1.0, 10, d)
    for i, name in enumerate(("rademacher", "lipschitz", "loss_range")):
        for bad in (-1.0, math.inf):
            args = [0.1, 1.0, 1.0]
            args[i] = bad
            with pytest.raises(ValueError, match=f"^{name} must be finite and non-negative, got {bad}$"):
                ntk.generalisation_bound(*args, 10)


# ---------------------------------------------------------------------------------------------------- random_psd
def test_random_psd_defaults_validation_and_zero_radius():
    assert ntk.random_psd(3, 0.5, generator=gen()).shape == (1, 3, 3)
    with pytest.raises(ValueError, match="^dim must be a positive integer, got 0$"):
        ntk.random_psd(0, 0.5)
    with pytest.raises(ValueError, match="^n must be a positive integer, got 0$"):
        ntk.random_psd(3, 0.5, 0)
    assert torch.equal(ntk.random_psd(3, 0.0, 2, generator=gen()), torch.zeros(2, 3, 3))


def test_random_psd_generator_and_dtype(default_dtype):
    a, b, untouched = _draws_only_from(ntk.random_psd, 4, 0.3, 2)
    assert untouched and torch.equal(a, b)
    p32 = ntk.random_psd(4, 0.3, 2, generator=gen(), dtype=F32)
    assert p32.dtype == F32
    with default_dtype(F32):
        p64 = ntk.random_psd(4, 0.3, 2, generator=gen(), dtype=F64)
    assert p64.dtype == F64 and torch.equal(p64, ntk.random_psd(4, 0.3, 2, generator=gen(), dtype=F64))


# ------------------------------------------------------------------------------------------------ Theorem 5.1
def test_theorem51_lambda_defaults_and_messages():
    """λ = 4·(2R/√N)·(2 + √ln(2/η)) with η = 0.05 by default."""
    assert ntk.theorem51_lambda(1.5, 36) == pytest.approx(4 * (3 / 6) * (2 + math.sqrt(math.log(40))))
    with pytest.raises(ValueError, match="^N must be a positive integer, got 0$"):
        ntk.theorem51_lambda(1.0, 0)
    with pytest.raises(ValueError, match="^R must be a positive number, got 0.0$"):
        ntk.theorem51_lambda(0.0, 10)
    for eta in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^eta must lie in \(0, 1\), got {eta}$"):
            ntk.theorem51_lambda(1.0, 10, eta)


def test_theorem51_bound_defaults_eta_and_messages():
    """3λ‖δ_true‖_* + 2ε with ε = 0 and η = 0.05 by default; a given η reaches λ (η = 0.5: ln 4)."""
    lam05 = 4 * (2 * 2.0 / 10) * (2 + math.sqrt(math.log(40)))
    assert ntk.theorem51_bound(2.0, 100, 1.5) == pytest.approx(3 * lam05 * 1.5)
    lam5 = 4 * (2 * 2.0 / 10) * (2 + math.sqrt(math.log(4)))
    assert ntk.theorem51_bound(2.0, 100, 1.5, 0.25, 0.5) == pytest.approx(3 * lam5 * 1.5 + 0.5)
    with pytest.raises(ValueError, match="^nuclear_true must be a finite non-negative number, got -1.0$"):
        ntk.theorem51_bound(1.0, 10, -1.0)
    with pytest.raises(ValueError, match="^eps must be a finite non-negative number, got -0.1$"):
        ntk.theorem51_bound(1.0, 10, 1.0, -0.1)


# ---------------------------------------------------------------------------------------- min_norm_interpolant
def test_min_norm_interpolant_with_a_nonzero_f0_and_as_many_conditions_as_parameters():
    """K·N = P·m·n = 8 is allowed (G square and invertible: the unique solution of ⟨G_i, δ⟩ = y_i − f0_i)."""
    g = gen(9)
    G = torch.randn(4, 2, 1, 2, 4, generator=g)
    f0 = torch.randn(4, 2, generator=g)
    y = torch.randn(4, 2, generator=g)
    pr = ntk.LinearisedProblem(G, f0, y, 0.0)
    d = ntk.min_norm_interpolant(pr)
    assert torch.allclose(pr.outputs(d), y, atol=1e-10)
    sol = np.linalg.solve(G.reshape(8, 8).numpy(), (y - f0).reshape(8).numpy())
    assert np.allclose(d.reshape(-1).numpy(), sol)


def test_min_norm_interpolant_messages():
    G = torch.randn(4, 2, 1, 2, 3, generator=gen())
    pr = ntk.LinearisedProblem(G, torch.zeros(4, 2), torch.zeros(4, 2), 0.0)
    with pytest.raises(ValueError, match="^K·N = 8 exceeds the number of parameters 6$"):
        ntk.min_norm_interpolant(pr)
    prl = ntk.LinearisedProblem(G[:, :1], torch.zeros(4, 1), torch.zeros(4, 1), 0.0, "logistic")
    with pytest.raises(ValueError, match="^min_norm_interpolant needs the squared-error loss$"):
        ntk.min_norm_interpolant(prl)


# ------------------------------------------------------------------------------------------------ pad_zero_column
def test_pad_zero_column_rejects_one_bad_factor():
    msg = r"^B and A must be \(P, m, r\) and \(P, n, r\)$"
    with pytest.raises(ValueError, match=msg):
        ntk.pad_zero_column(torch.zeros(4, 1), torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match=msg):
        ntk.pad_zero_column(torch.zeros(1, 4, 1), torch.zeros(3, 1))


# -------------------------------------------------------------------------------------------------- second_order
def _denoising_problem(Y, lam):
    """K = 1 and one example per entry with G_i = E_ab: L̂(δ) = ‖δ − Y‖_F² / (2N), N = m·n."""
    m, n = Y.shape
    N = m * n
    G = torch.eye(N).reshape(N, 1, 1, m, n)
    return ntk.LinearisedProblem(G, torch.zeros(N, 1), Y.reshape(N, 1), lam)


def test_second_order_at_a_balanced_optimum_removes_only_the_rotation():
    """Denoising: the convex optimum is the SVT of Y at Nλ, here diag(2.5, 1.5) from Y = diag(3, 2) with Nλ = 0.5;
    its balanced factors B = U√S, A = V√S are a stationary point of rank 2, with one zero Hessian eigenvalue
    from the rotation (B, A) ↦ (BQ, AQ) and every other curvature positive; ‖∇L̂‖_op = Nλ/N = λ."""
    Y = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    lam = 0.5 / 6
    pr = _denoising_problem(Y, lam)
    B = torch.tensor([[math.sqrt(2.5), 0.0], [0.0, math.sqrt(1.5)], [0.0, 0.0]]).reshape(1, 3, 2)
    A = torch.tensor([[math.sqrt(2.5), 0.0], [0.0, math.sqrt(1.5)]]).reshape(1, 2, 2)
    so = ntk.second_order(pr, B, A)
    assert so.grad_norm < 1e-12 and so.sym_dim == 1
    assert abs(so.hess_min) < 1e-12
    assert isinstance(so.hess_min_free, float) and so.hess_min_free > 1e-3
    srt = np.sort(np.abs(so.hess_eigs.numpy()))
    assert srt[0] < 1e-12 and srt[1] > 1e-3              # exactly one eigenvalue at zero
    assert so.grad_op_over_lam == pytest.approx(1.0, rel=1e-12)
    assert so.z_sigma_min == pytest.approx(math.sqrt(1.5 * 2) / math.sqrt(2.5 * 2), rel=1e-12)


def test_second_order_rank_one_has_no_symmetry_and_hand_ratios():
    """r = 1: nothing to remove (hess_min_free = hess_min). The optimality ratio is the spectral norm of
    ∇L̂(BAᵀ) (autograd, NumPy's 2-norm) over λ, and z_sigma_min is σ_min/σ_max of [B_p; A_p] (here small
    factors, σ_max < 1); float32 factors are used in the problem's float64."""
    pr = _small_problem(P=2, lam=0.7)
    B = 0.1 * torch.randn(2, 4, 2, generator=gen(4))
    A = 0.1 * torch.randn(2, 3, 2, generator=gen(5))
    so = ntk.second_order(pr, B[..., :1], A[..., :1])
    assert so.sym_dim == 0 and so.hess_min_free == so.hess_min == float(so.hess_eigs[0])
    assert so.hess_eigs[1] > so.hess_eigs[0]
    so2 = ntk.second_order(pr, B, A)
    d = (B @ A.transpose(-1, -2)).requires_grad_(True)
    g, = torch.autograd.grad(pr.data_loss(d), d)
    op = max(np.linalg.norm(g[p].numpy(), 2) for p in range(2))
    assert so2.grad_op_over_lam == pytest.approx(op / 0.7, rel=1e-10)
    ratios = []
    for p in range(2):
        s = np.linalg.svd(np.vstack([B[p].numpy(), A[p].numpy()]), compute_uv=False)
        assert s[0] < 1
        ratios.append(s[-1] / s[0])
    assert so2.z_sigma_min == pytest.approx(min(ratios), rel=1e-10)
    s32 = ntk.second_order(pr, B.float(), A.float())
    ref = ntk.second_order(pr, B.float().double(), A.float().double())
    assert s32.grad_norm == pytest.approx(ref.grad_norm, rel=1e-12)
    assert s32.grad_op_over_lam == pytest.approx(ref.grad_op_over_lam, rel=1e-12)
    assert torch.allclose(s32.hess_eigs, ref.hess_eigs, rtol=0, atol=1e-12)


def test_second_order_uses_the_perturbation():
    """The gradient norm of the perturbed objective matches central differences of lora_objective with the
    perturbation, and at B = A = 0 the Hessian in each of B's and A's columns holds λI + Pm's blocks."""
    pr = _small_problem(P=1, lam=0.4)
    B = torch.randn(1, 4, 1, generator=gen(6))
    A = torch.randn(1, 3, 1, generator=gen(7))
    Pm = ntk.random_psd(7, 2.0, generator=gen(8))[0]
    so = ntk.second_order(pr, B, A, Pm)
    x = torch.cat([B.reshape(-1), A.reshape(-1)])

    def f(v):
        return float(ntk.lora_objective(pr, v[:4].reshape(1, 4, 1), v[4:].reshape(1, 3, 1), Pm))

    h = 1e-6
    g_fd = torch.tensor([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in torch.eye(7)])
    assert so.grad_norm == pytest.approx(float(g_fd.norm()), rel=1e-6)
    plain = ntk.second_order(pr, B, A)
    assert abs(plain.grad_norm - so.grad_norm) > 1e-3


class _HessianReached(Exception):
    pass


def test_second_order_size_limit_is_4000_unknowns(monkeypatch):
    """P(m+n)r = 4000 unknowns pass the size check (the Hessian is then requested; a stand-in stops there),
    4001 are refused before any Hessian."""
    import torch.func

    def stop(f):
        raise _HessianReached

    monkeypatch.setattr(torch.func, "hessian", stop)
    pr = ntk.LinearisedProblem(torch.randn(2, 1, 1, 60, 40, generator=gen()), torch.zeros(2, 1), torch.zeros(2, 1),
                               0.1)
    with pytest.raises(_HessianReached):
        ntk.second_order(pr, torch.zeros(1, 60, 40), torch.zeros(1, 40, 40))
    pr1 = ntk.LinearisedProblem(torch.randn(2, 1, 1, 4000, 1, generator=gen()), torch.zeros(2, 1),
                                torch.zeros(2, 1), 0.1)
    with pytest.raises(ValueError, match="^the Hessian would have 4001² entries; too large$"):
        ntk.second_order(pr1, torch.zeros(1, 4000, 1), torch.zeros(1, 1, 1))


def test_second_order_lam_message():
    pr = ntk.LinearisedProblem(torch.randn(2, 1, 1, 2, 2, generator=gen()), torch.zeros(2, 1), torch.zeros(2, 1), 0.0)
    with pytest.raises(ValueError, match=r"^second_order needs lam > 0 \(the ratio \|\|grad\|\|_op / lam\)$"):
        ntk.second_order(pr, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1))


# ------------------------------------------------------------------------------ jacobian and predictions (tiny net)
class _Counting(nn.Module):
    """A tiny network that counts its forward calls (torch.func traces one call per vmap chunk)."""

    def __init__(self, act=torch.tanh):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(3, 4).double()
        self.out = nn.Linear(4, 2).double()
        self.act = act
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.out(self.act(self.l1(x)))


def test_per_example_jacobian_processes_chunk_size_examples_at_a_time():
    net = _Counting()
    x = torch.randn(7, 3, generator=gen())
    f0, G = ntk.per_example_jacobian(net, ["l1.weight"], x, chunk_size=2)
    assert net.calls == 1 + 4                              # the pretrained pass, then ⌈7/2⌉ chunks
    net.calls = 0
    f0b, Gb = ntk.per_example_jacobian(net, ["l1.weight"], x)
    assert net.calls == 1 + 1
    assert torch.allclose(G, Gb) and torch.equal(f0, f0b)


def test_per_example_jacobian_dtype():
    net = _Counting()
    x = torch.randn(4, 3, generator=gen())
    f0, G = ntk.per_example_jacobian(net, ["l1.weight"], x, dtype=F32)
    assert f0.dtype == F32 and G.dtype == F32
    f0d, Gd = ntk.per_example_jacobian(net, ["l1.weight"], x)
    assert f0d.dtype == F64 and Gd.dtype == F64
    assert torch.allclose(G.double(), Gd, atol=1e-6)


def test_per_example_jacobian_silences_only_the_batching_rule_warning():
    """torch.cummax has no vmap batching rule: its performance warning is silenced (an error filter would turn it
    into an exception), while the module's own warnings still reach the caller."""
    net = _Counting(act=lambda h: torch.cummax(h, -1).values)
    x = torch.randn(3, 3, generator=gen())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ntk.per_example_jacobian(net, ["l1.weight"], x)

    def noisy(h):
        warnings.warn("custom module warning", UserWarning)
        return torch.tanh(h)

    with pytest.warns(UserWarning, match="custom module warning"):
        ntk.per_example_jacobian(_Counting(act=noisy), ["l1.weight"], x)


def test_predictions_use_batches_of_256_by_default():
    """257 examples take two forward calls with the default batch size of 256 (one per batch)."""
    net = _Counting()
    x = torch.randn(257, 3, generator=gen())
    delta = 0.01 * torch.randn(1, 4, 3, generator=gen(1))
    out = ntk.predict_with_delta(net, ["l1.weight"], delta, x)
    assert net.calls == 2 and out.shape == (257, 2)
    net.calls = 0
    f0, fl = ntk.linearised_predict(net, ["l1.weight"], delta, x)
    assert fl.shape == (257, 2)
    calls_default = net.calls
    net.calls = 0
    ntk.linearised_predict(net, ["l1.weight"], delta, x, batch_size=256)
    assert calls_default == net.calls and net.calls >= 2
    net.calls = 0
    ntk.linearised_predict(net, ["l1.weight"], delta, x, batch_size=257)
    assert net.calls < calls_default


def test_predict_with_delta_covers_every_example_in_small_batches():
    """7 examples of 3 features in batches of 2: every example is predicted, as the actual model with W + δ."""
    net = _Counting()
    x = torch.randn(7, 3, generator=gen())
    delta = 0.1 * torch.randn(1, 4, 3, generator=gen(1))
    out = ntk.predict_with_delta(net, ["l1.weight"], delta, x, batch_size=2)
    W = net.l1.weight.detach() + delta[0]
    direct = net.out(torch.tanh(x @ W.T + net.l1.bias)).detach()
    assert out.shape == (7, 2) and torch.allclose(out, direct)


# ------------------------------------------------------------------------------------- per_example_loss (ce)
def _ce_by_hand(f, p):
    """Softmax cross-entropy log Σ_k e^{f_k} − ⟨p, f⟩ row by row, in plain Python floats."""
    return [math.log(sum(math.exp(v) for v in row)) - sum(a * b for a, b in zip(prow, row))
            for row, prow in zip(f.tolist(), p.tolist())]


def test_per_example_loss_ce_uses_float_targets_as_given_and_batches_over_leading_dims():
    """Soft targets of the outputs' width are used as given: probabilities computed in float32 (rows summing to 1
    only to ~1e-7) work with float64 outputs, batched over a leading dimension (S = 2, N = 3, K = 4, so N ≠ K), and
    agree with the cross-entropy computed by hand. Integer labels of a batched output become one-hot rows of width
    K; float32 outputs give a float32 loss; an unknown loss is named."""
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 3, 4, generator=g, dtype=F64)
    p = torch.softmax(torch.randn(3, 4, generator=g, dtype=F32), -1)
    assert (p.double().sum(-1) - 1).abs().max() > 1e-9                   # not a simplex row in float64
    out = ntk.per_example_loss(f, p, "ce")
    assert out.shape == (2, 3)
    for s in range(2):
        assert np.allclose(out[s].tolist(), _ce_by_hand(f[s], p.double()), rtol=1e-12, atol=0)
    labels = torch.tensor([3, 0, 2])
    out = ntk.per_example_loss(f, labels, "ce")
    onehot = torch.zeros(3, 4, dtype=F64)
    onehot[torch.arange(3), labels] = 1
    for s in range(2):
        assert np.allclose(out[s].tolist(), _ce_by_hand(f[s], onehot), rtol=1e-12, atol=0)
    assert ntk.per_example_loss(f[0].float(), labels, "ce").dtype == F32
    with pytest.raises(ValueError, match=r"^loss must be one of \('mse', 'logistic', 'ce'\), got 'hinge'$"):
        ntk.per_example_loss(f, p, "hinge")
