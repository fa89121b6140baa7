"""Unit tests of lorabook.expressivity's Lemma 1 helpers (lemma1_error, linear_rank_needed, close_in_rank,
random_linear_pair) and of relative_mse: input checks with their messages, and values checked by hand."""
import numpy as np
import pytest
import torch

from lorabook import expressivity as ex


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- lemma1_error
def test_lemma1_error_rejects_a_non_square_error_matrix_by_name():
    """E must be a square (D, D) matrix; the message names E."""
    with pytest.raises(ValueError, match=r"^E must be square, got shape \(3, 4\)$"):
        ex.lemma1_error(torch.ones(3, 4), 1, 1)
    with pytest.raises(ValueError, match=r"^E must be a 2-D matrix"):
        ex.lemma1_error(torch.ones(3), 1, 1)


def test_lemma1_error_rank_and_layer_count_range_messages():
    """rank lies in [1, D]; n_layers in [1, 10**9]; the messages name the offending argument."""
    E = torch.diag(torch.tensor([4.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match=r"^rank=4 is out of range: it must lie in \[1, 3\]$"):
        ex.lemma1_error(E, 4, 1)
    with pytest.raises(ValueError, match=r"^n_layers=0 is out of range: it must lie in \[1, 1000000000\]$"):
        ex.lemma1_error(E, 1, 0)
    with pytest.raises(ValueError, match=r"^n_layers=1000000001 is out of range"):
        ex.lemma1_error(E, 1, 10**9 + 1)


def test_lemma1_error_accepts_many_layers_up_to_the_limit():
    """Any layer count up to 10**9 is accepted; with RL ≥ D the optimum is exactly 0."""
    E = torch.diag(torch.tensor([4.0, 3.0, 2.0]))
    assert ex.lemma1_error(E, 1, 91) == 0.0
    assert ex.lemma1_error(E, 1, 10**9) == 0.0
    # σ_{RL+1}(E) by hand: R = 1, L = 2 leaves the third singular value 2
    assert ex.lemma1_error(E, 1, 2) == pytest.approx(2.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- relative_mse
def _fnn_pair(seed=0, S=2, L=2, D=3):
    g = gen(seed)
    fw = torch.randn(S, L, D, D, generator=g)
    fb = torch.randn(S, L, D, generator=g)
    tw = torch.randn(S, 1, D, D, generator=g)
    tb = torch.randn(S, 1, D, generator=g)
    x = torch.randn(S, 20, D, generator=g)
    return fw, fb, tw, tb, x


def _np_relu_mse(W, b, tW, tb, x):
    """A NumPy re-implementation of E‖f(x) − f̄(x)‖² for one model and one input set."""
    def f(Ws, bs, h):
        for Wl, bl in zip(Ws, bs):
            h = np.maximum(h @ Wl.T + bl, 0.0)
        return h
    return float(((f(W, b, x) - f(tW, tb, x)) ** 2).sum(-1).mean())


def test_relative_mse_matches_a_numpy_ratio_and_converts_a_float32_frozen_model():
    """The ratio is err(adapted) / err(frozen); a float32 frozen model is converted to the adapted weights'
    float64 dtype before the comparison, so the ratio agrees with a float64 reference to 1e-12."""
    fw, fb, tw, tb, x = _fnn_pair()
    fw32 = fw.float()
    fw64 = fw32.double()                                  # the float32 values, exactly, in float64
    W = torch.stack([fw64, fw64 + 0.1], dim=1)            # (S, C=2, L, D, D)
    b = torch.stack([fb, fb - 0.2], dim=1)
    rel = ex.relative_mse(W, b, fw32, fb, tw, tb, x)
    assert rel.dtype == torch.float64 and rel.shape == (2, 2)
    for s in range(2):
        zero = _np_relu_mse(fw64[s].numpy(), fb[s].numpy(), tw[s].numpy(), tb[s].numpy(), x[s].numpy())
        for c in range(2):
            err = _np_relu_mse(W[s, c].numpy(), b[s, c].numpy(), tw[s].numpy(), tb[s].numpy(), x[s].numpy())
            assert rel[s, c].item() == pytest.approx(err / zero, rel=1e-12)


def test_relative_mse_checks_the_frozen_shapes_and_a_zero_frozen_error():
    """frozen_w must be 4-D and frozen_b 3-D (each checked on its own); a frozen model equal to the target is
    rejected because the ratio would divide by zero."""
    fw, fb, tw, tb, x = _fnn_pair()
    W, b = fw[:, None], fb[:, None]
    msg = r"^frozen_w must be \(S, L, D, D\) and frozen_b \(S, L, D\)$"
    with pytest.raises(ValueError, match=msg):
        ex.relative_mse(W, b, fw[0], fb, tw, tb, x)
    with pytest.raises(ValueError, match=msg):
        ex.relative_mse(W, b, fw, fb[0], tw, tb, x)
    with pytest.raises(ValueError, match=r"^the frozen model already equals the target on these inputs \(zero "
                                         r"error\)$"):
        ex.relative_mse(tw[:, None], tb[:, None], tw, tb, tw, tb, x)


# ---------------------------------------------------------------------------------------------- linear_rank_needed
def _diag_instance():
    """One frozen layer W_1 = I and W̄ = I + diag(4, 2, 1): E = diag(4, 2, 1), ‖E‖_2 = 4, and the rank-R
    construction leaves the error σ_{R+1}(E): 2 at R = 1, 1 at R = 2, 0 at R = 3 (all exact in floating point)."""
    I = torch.eye(3)
    return I + torch.diag(torch.tensor([4.0, 2.0, 1.0])), [I]


def test_linear_rank_needed_measures_errors_relative_to_the_spectral_norm_of_E():
    """Exact at rank R means σ_{R+1}(E) ≤ tol·‖E‖_2 = 4·tol, so the answer is read off the singular values."""
    target, frozen = _diag_instance()
    assert ex.linear_rank_needed(target, frozen, tol=0.7) == 1      # 2 ≤ 2.8
    assert ex.linear_rank_needed(target, frozen, tol=0.3) == 2      # 2 > 1.2 ≥ 1
    assert ex.linear_rank_needed(target, frozen, tol=0.24) == 3     # 1 > 0.96
    assert ex.linear_rank_needed(target, frozen, tol=0.2) == 3


def test_linear_rank_needed_counts_an_error_equal_to_the_tolerance_as_exact():
    """At tol = 0.5 the rank-1 error, ‖diag(0, 2, 1)‖_2 = 2, equals tol·‖E‖_2 = 2 exactly: rank 1 is exact
    (the spectral norm of the residual is used, not its Frobenius norm √5)."""
    target, frozen = _diag_instance()
    assert ex.linear_rank_needed(target, frozen, tol=0.5) == 1


def test_linear_rank_needed_default_tolerance_and_an_error_of_unit_norm():
    """With ‖E‖_2 = 1 (E = diag(1, 0.5, 0.25), full rank) every singular value must be matched: rank 3."""
    I = torch.eye(3)
    assert ex.linear_rank_needed(I + torch.diag(torch.tensor([1.0, 0.5, 0.25])), [I]) == 3
    assert ex.linear_rank_needed(I.clone(), [I]) == 1               # E = 0: any rank is exact


def test_linear_rank_needed_is_d_plus_one_when_a_lower_rank_meets_a_singular_partial_product():
    """L = 2, W_1 = W_2 = I, E = −2 e_1 vᵀ + ½ e_2 v₂ᵀ with v = (½, √3/2), v₂ ⊥ v: σ(E) = (2, ½). At rank 2
    the construction is exact (I + E is non-singular), but at rank 1 its first adapted layer is I + LR_1(E),
    which has the eigenvalue 1 − 2·vᵀe_1 = 0: the construction refuses, and the answer is D + 1 = 3."""
    s = np.sqrt(3.0)
    E = torch.tensor([[-1.0, -s], [-s / 4, 0.25]])
    I = torch.eye(2)
    assert torch.allclose(torch.linalg.svdvals(E), torch.tensor([2.0, 0.5]))
    assert ex.linear_rank_needed(I + E, [I, I.clone()]) == 3


def test_linear_rank_needed_input_messages():
    """Each input check names the offending argument."""
    I = torch.eye(3)
    with pytest.raises(ValueError, match=r"^frozen must be a non-empty list of \(D, D\) matrices$"):
        ex.linear_rank_needed(I, [])
    with pytest.raises(ValueError, match=r"^frozen\[2\] has shape \(2, 2\), expected \(3, 3\)$"):
        ex.linear_rank_needed(I, [I, torch.eye(2)])
    with pytest.raises(ValueError, match=r"^target must be square, got shape \(3, 2\)$"):
        ex.linear_rank_needed(torch.ones(3, 2), [I])
    with pytest.raises(ValueError, match=r"^target has shape \(2, 2\), expected \(3, 3\)$"):
        ex.linear_rank_needed(torch.eye(2), [I])
    with pytest.raises(ValueError, match=r"^tol must be a positive finite number, got -1\.0$"):
        ex.linear_rank_needed(I, [I], tol=-1.0)


# ---------------------------------------------------------------------------------------------- random_linear_pair
def test_random_linear_pair_default_is_gaussian_and_reproducible_from_the_generator_alone():
    """The default entry law is "gaussian"; the draws come from the given generator only (the global RNG state
    does not matter), for every law."""
    torch.manual_seed(1)
    t0, f0 = ex.random_linear_pair(3, 2, gen(5))
    for dist in ex.ENTRY_DISTS:
        torch.manual_seed(2)
        t1, f1 = ex.random_linear_pair(3, 2, gen(5), dist=dist)
        torch.manual_seed(3)
        t2, f2 = ex.random_linear_pair(3, 2, gen(5), dist=dist)
        assert torch.equal(t1, t2) and all(torch.equal(a, b) for a, b in zip(f1, f2))
        if dist == "gaussian":
            assert torch.equal(t0, t1) and all(torch.equal(a, b) for a, b in zip(f0, f1))


def test_random_linear_pair_is_float64_whatever_the_default_dtype(float32_default):
    """The matrices are float64 even when torch's default dtype is float32."""
    for dist in ex.ENTRY_DISTS:
        t, f = ex.random_linear_pair(3, 2, gen(), dist=dist)
        assert t.dtype == torch.float64 and all(W.dtype == torch.float64 for W in f)


def test_random_linear_pair_entry_ranges_and_an_independent_target():
    """"uniform" entries fill [−1/√D, 1/√D] (both halves occupied), "sign" entries are ±1/√D with both signs,
    and the target is a separate draw, not one of the frozen layers."""
    D, L = 4, 50
    c = 1 / np.sqrt(D)
    t, f = ex.random_linear_pair(D, L, gen(), dist="uniform")
    M = torch.stack([t] + f)
    assert M.abs().max().item() <= c
    assert M.max().item() > 0.9 * c and M.min().item() < -0.9 * c
    t, f = ex.random_linear_pair(D, L, gen(), dist="sign")
    M = torch.stack([t] + f)
    assert torch.allclose(M.abs(), torch.full_like(M, c))
    assert (M > 0).any() and (M < 0).any()
    for dist in ex.ENTRY_DISTS:
        t, f = ex.random_linear_pair(D, 2, gen(1), dist=dist)
        assert len(f) == 2 and not any(torch.equal(t, W) for W in f)


def test_random_linear_pair_size_limits_and_messages():
    """D and n_layers lie in [1, 10**5] (checked before the entry law); an unknown law is named in the error."""
    t, f = ex.random_linear_pair(51, 1, gen())
    assert t.shape == (51, 51) and len(f) == 1
    t, f = ex.random_linear_pair(1, 51, gen())
    assert t.shape == (1, 1) and len(f) == 51
    with pytest.raises(ValueError, match=r"^D=0 is out of range: it must lie in \[1, 100000\]$"):
        ex.random_linear_pair(0, 1, gen())
    with pytest.raises(ValueError, match=r"^D=100001 is out of range"):
        ex.random_linear_pair(100001, 1, gen(), dist="cauchy")
    with pytest.raises(ValueError, match=r"^n_layers=0 is out of range: it must lie in \[1, 100000\]$"):
        ex.random_linear_pair(2, 0, gen())
    with pytest.raises(ValueError, match=r"^n_layers=100001 is out of range"):
        ex.random_linear_pair(2, 100001, gen(), dist="cauchy")
    with pytest.raises(ValueError, match=r"^dist must be one of \('gaussian', 'uniform', 'sign'\), got 'cauchy'$"):
        ex.random_linear_pair(2, 1, gen(), dist="cauchy")


# ---------------------------------------------------------------------------------------------- close_in_rank
def _close_setup(D=3):
    g = gen(7)
    tw = torch.randn(2, D, D, generator=g)
    fw = torch.eye(D) + 0.1 * torch.randn(4, D, D, generator=g)
    return tw, fw


def test_close_in_rank_moves_each_requested_group_to_a_rank_k_error_with_separated_singular_values():
    """Partition [[0], [1, 2, 3]], ranks [None, 2]: group 0 is untouched, and the 3-layer group's product differs
    from W̄_2 by a rank-2 matrix with both singular values in [0.25, 0.5]; its first two layers are kept."""
    tw, fw = _close_setup()
    out = ex.close_in_rank(tw, fw, [[0], [1, 2, 3]], [None, 2], gen(1))
    assert torch.equal(out[:3], fw[:3])
    s = torch.linalg.svdvals(tw[1] - out[3] @ out[2] @ out[1])
    assert (s[:2] >= 0.25).all() and (s[:2] <= 0.5).all() and s[2].item() < 1e-12
    # rank 0 is allowed: the group's product equals the target layer
    out = ex.close_in_rank(tw, fw, [[0, 1], [2, 3]], [0, 1], gen(1))
    assert torch.allclose(out[1] @ out[0], tw[0], atol=1e-12)
    assert torch.equal(out[2], fw[2])
    s = torch.linalg.svdvals(tw[1] - out[3] @ out[2])
    assert 0.25 <= s[0].item() <= 0.5 and s[1].item() < 1e-12


def test_close_in_rank_is_reproducible_from_the_generator_and_in_the_inputs_dtype(default_dtype):
    """The random factors come from the given generator only (not the global RNG, not torch's default dtype):
    the result is the same under other global seeds and with float32 as default dtype, and the rank-2 error
    is exact to float64 precision."""
    tw, fw = _close_setup(4)
    part, ranks = [[0, 1], [2, 3]], [2, 1]
    torch.manual_seed(1)
    a = ex.close_in_rank(tw, fw, part, ranks, gen(3))
    with default_dtype(torch.float32):
        torch.manual_seed(2)
        b = ex.close_in_rank(tw, fw, part, ranks, gen(3))
    assert b.dtype == torch.float64 and torch.equal(a, b)
    s = torch.linalg.svdvals(tw[0] - a[1] @ a[0])
    assert s[2:].max().item() < 1e-12


def test_close_in_rank_input_messages():
    """Each check names its argument: the tensors' dimensions, a non-square frozen layer, a target of another
    size, the number of ranks, a rank above D and a singular partial product."""
    tw, fw = _close_setup()
    part = [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"^need target_w \(L̄, D, D\) and frozen_w \(L, D, D\)$"):
        ex.close_in_rank(tw[0], fw, part, [1, 1], gen())
    with pytest.raises(ValueError, match=r"^frozen_w\[1\] must be square, got shape \(3, 2\)$"):
        ex.close_in_rank(tw, fw[:, :, :2], part, [1, 1], gen())
    with pytest.raises(ValueError, match=r"^target_w\[1\] has shape \(2, 2\), expected \(3, 3\)$"):
        ex.close_in_rank(tw[:, :2, :2], fw, part, [1, 1], gen())
    with pytest.raises(ValueError, match=r"^ranks must have one entry per target layer \(2\)$"):
        ex.close_in_rank(tw, fw, part, [1], gen())
    with pytest.raises(ValueError, match=r"^ranks entry=4 is out of range: it must lie in \[0, 3\]$"):
        ex.close_in_rank(tw, fw, part, [None, 4], gen())
    bad = fw.clone()
    bad[0] = 0.0
    with pytest.raises(ValueError, match=r"^the product of group 0 before its last layer is singular"):
        ex.close_in_rank(tw, bad, part, [1, None], gen())
