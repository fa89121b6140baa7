"""Hand-sized checks of the bounds, construction curves, output diagnostics and Transformer pair differences of
lorabook.expressivity: closed-form values, exact validation messages, dtype handling and index conventions."""
import math

import numpy as np
import pytest
import torch

from lorabook import expressivity as ex

F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


# ------------------------------------------------------------------------------------------------ relu_bounds
def test_relu_bounds_closed_form():
    """E = diag(5, 4, 3, 2), R = 1, L = 2: σ_{RL+1}(E) = 3, so σ² = 9. Σ = diag(1, 2, 2, 0) (PSD, singular) has
    ‖Σ‖_F = 3 and tr Σ = 5: the stated bound is 27, the corrected one 45."""
    E = torch.diag(t64([5.0, 4.0, 3.0, 2.0]))
    Sigma = torch.diag(t64([1.0, 2.0, 2.0, 0.0]))
    b = ex.relu_bounds(E, 1, 2, Sigma)
    assert b == {"paper": pytest.approx(27.0, rel=1e-14), "corrected": pytest.approx(45.0, rel=1e-14)}


def test_relu_bounds_rejects_non_square_or_mismatched_sigma():
    E = torch.diag(t64([5.0, 4.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match=r"^Sigma must be square, got shape \(4, 3\)$"):
        ex.relu_bounds(E, 1, 2, torch.ones(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"^Sigma has shape \(3, 3\), E has \(4, 4\)$"):
        ex.relu_bounds(E, 1, 2, torch.eye(3, dtype=F64))


def test_relu_bounds_psd_tolerance_is_relative_to_the_largest_entry():
    """Σ passes when its symmetric part's smallest eigenvalue is ≥ −1e-10·max|Σ| (round-off of an estimated
    second moment), boundary included, and is rejected below it; the tolerance scales with Σ."""
    E = torch.diag(t64([5.0, 4.0, 3.0, 2.0]))

    def sigma(last, scale=1.0):
        return torch.diag(t64([scale, scale, scale, last]))

    for last in (-0.5e-10, -1e-10):                        # inside the tolerance, and exactly on it
        b = ex.relu_bounds(E, 1, 2, sigma(last))
        assert b["corrected"] == pytest.approx(9.0 * (3.0 + last), rel=1e-14)
    with pytest.raises(ValueError, match=r"^Sigma must be positive semi-definite \(a second-moment matrix\)$"):
        ex.relu_bounds(E, 1, 2, sigma(-1.2e-10))
    b = ex.relu_bounds(E, 1, 2, sigma(-2e-9, scale=100.0))   # −2e-9 ≥ −1e-10 · 100
    assert b["corrected"] == pytest.approx(9.0 * (300.0 - 2e-9), rel=1e-14)


# ------------------------------------------------------------------------------------------------ partition_bound
def _partition_instance():
    tw = [torch.diag(t64([3.0, 4.0])), t64([[0.0, 12.0], [5.0, 0.0]])]      # ‖W̄_1‖_F = 5, ‖W̄_2‖_F = 13
    tb = [t64([0.0, 2.0]), t64([1.0, 0.0])]                                    # ‖b̄_1‖ = 2, ‖b̄_2‖ = 1
    fw = [torch.eye(2, dtype=F64), t64([[0.0, 10.0], [4.0, 0.0]])]
    return tw, tb, fw


def test_partition_bound_closed_form():
    """Two targets, two frozen layers (one per group), R = 1, D = 2.

    E_1 = σ_2(diag(3, 4) − I) = 2 and E_2 = σ_2([[0, 2], [1, 0]]) = 1; α = 13 + 2 = 15, so
    Σ_i α^{L̄−i} E_i = 15·2 + 1 = 31. β(c) = max(c, 5c + 2, 65c + 13·2 + 1) = 65c + 27. Σ = diag(3, 4) has
    ‖Σ‖_F = 5 and tr Σ = 7."""
    tw, tb, fw = _partition_instance()
    b = ex.partition_bound(tw, tb, fw, 1, torch.diag(t64([3.0, 4.0])))
    assert b["E"] == pytest.approx([2.0, 1.0], rel=1e-14)
    assert b["paper"] == pytest.approx((65 * math.sqrt(5) + 27) * 31, rel=1e-13)
    assert b["corrected"] == pytest.approx((65 * math.sqrt(7) + 27) * 31, rel=1e-13)


def test_partition_bound_is_zero_when_the_rank_covers_the_width():
    """One group of two layers with R = 1 removes RM = 2 = D singular values: E = 0 and both bounds are 0."""
    tw, tb, fw = _partition_instance()
    b = ex.partition_bound(tw[:1], tb[:1], fw, 1, torch.eye(2, dtype=F64))
    assert b == {"paper": 0.0, "corrected": 0.0, "E": [0.0]}


def test_partition_bound_rejects_a_stacked_weight_tensor():
    """Targets must come as a list: a stacked (L̄, D, D) tensor is refused, and the message names it."""
    tw, tb, fw = _partition_instance()
    with pytest.raises(ValueError, match=r"^target_weights must be a list of \(D, D\) matrices, got Tensor$"):
        ex.partition_bound(torch.stack(tw[:1]), tb[:1], fw, 1, torch.eye(2, dtype=F64))


def test_partition_bound_validation_names_the_argument():
    tw, tb, fw = _partition_instance()
    S = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match=r"^target_weights\[2\] must be square"):
        ex.partition_bound([tw[0], torch.ones(2, 3, dtype=F64)], tb, fw, 1, S)
    with pytest.raises(ValueError, match=r"^target_biases\[1\] must be a floating tensor of shape \(2,\)$"):
        ex.partition_bound(tw, [tb[0][:1], tb[1]], fw, 1, S)
    with pytest.raises(ValueError, match=r"^frozen_weights\[2\] must be square"):
        ex.partition_bound(tw, tb, [fw[0], torch.ones(2, 3, dtype=F64)], 1, S)
    with pytest.raises(ValueError, match=r"^frozen_weights\[1\] has shape \(3, 3\), expected \(2, 2\)$"):
        ex.partition_bound(tw, tb, [torch.eye(3, dtype=F64)] * 2, 1, S)
    with pytest.raises(ValueError, match=r"^rank=0 is out of range"):
        ex.partition_bound(tw, tb, fw, 0, S)
    with pytest.raises(ValueError, match=r"^Sigma must be square, got shape \(2, 3\)$"):
        ex.partition_bound(tw, tb, fw, 1, torch.ones(2, 3, dtype=F64))


# ------------------------------------------------------------------------------------------------ construction_curve
def _curve_instance():
    """One frozen layer I (zero bias), one target layer diag(0.5, 0.75) (zero bias), D = 2. On inputs x ≥ 0 the
    rank-1 construction keeps the larger singular direction of E = diag(−0.5, −0.25): the adapted layer is
    diag(0.5, 1), its error (0.25 x_2)²; the frozen error is (0.5 x_1)² + (0.25 x_2)²."""
    tw = torch.diag(t64([0.5, 0.75]))[None]
    tb = torch.zeros(1, 2, dtype=F64)
    fw = torch.eye(2, dtype=F64)[None]
    fb = torch.zeros(1, 2, dtype=F64)
    return tw, tb, fw, fb


def test_construction_curve_closed_form_with_small_frozen_errors(default_dtype):
    """x = (1, 1): errors 0.0625 / 0.3125 = 0.2; x = (0, 2): 0.25 / 0.25 = 1. Rank 2 is exact. The frozen errors
    (0.3125, 0.25) are below 1; the result is float64 whatever the default dtype."""
    tw, tb, fw, fb = _curve_instance()
    xs = (t64([[1.0, 1.0]]), t64([[0.0, 2.0]]))
    with default_dtype(torch.float32):
        curve = ex.construction_curve(tw, tb, fw, fb, [1, 2], 2.0, xs)
    assert curve.dtype == F64 and curve.shape == (2, 2)
    assert curve[0].tolist() == pytest.approx([0.2, 1.0], rel=1e-12)
    assert curve[1].abs().max() < 1e-25


def test_construction_curve_rejects_an_input_set_where_frozen_equals_target():
    tw, tb, fw, fb = _curve_instance()
    xs = (t64([[1.0, 1.0]]), torch.zeros(1, 2, dtype=F64))          # both models output 0 at x = 0
    with pytest.raises(ValueError, match=r"^the frozen model already equals the target on an input set \(zero "
                                         r"error\)$"):
        ex.construction_curve(tw, tb, fw, fb, [1], 2.0, xs)


def test_construction_curve_validation_messages():
    tw, tb, fw, fb = _curve_instance()
    x = t64([[1.0, 1.0]])
    msg = r"^need target_w \(L̄, D, D\), target_b \(L̄, D\), frozen_w \(L, D, D\), frozen_b \(L, D\)$"
    with pytest.raises(ValueError, match=msg):
        ex.construction_curve(tw, tb, fw, fb[0], [1], 2.0, (x,))               # frozen_b (D,) for (L, D)
    with pytest.raises(ValueError, match=msg):
        ex.construction_curve(tw[0], tb, fw, fb, [1], 2.0, (x,))               # target_w (D, D)
    with pytest.raises(ValueError, match=r"^xs must be a non-empty list of \(n, D\) input sets$"):
        ex.construction_curve(tw, tb, fw, fb, [1], 2.0, (x[0],))               # a (D,) input set


# ------------------------------------------------------------------------------------------------ dead_output_share
def _dead_share_setup():
    """Target ReLU(x) (W̄ = I, b̄ = 0), adapted models ReLU(x + β) with per-(seed, config) biases β, S = 2, C = 3.

    A unit with β = −10 is off on every input (x ≤ 4): dead, error mean(x_k²). A unit with β = δ ≥ 0 is on, error δ².
    Seed 0: x = [[0.5, 0.1], [0.5, 0.3]] (mean x_0² = 0.25, mean x_1² = 0.05):
      β = (−10, 0.5): dead 0.25, alive 0.25 (outputs 0.6, 0.8: on, though below 1) → 0.5 (total 0.5 < 1);
      β = (0, −10): exact unit 0, dead 0.05 → 1;  β = (0.2, 0.1): both on → 0.
    Seed 1: x = [[2, 1], [4, 3]] (mean x_0² = 10, mean x_1² = 5):
      β = (−10, 1) → 10/11;  β = (−1, −10): unit 0 on (1, 3), error 1, unit 1 dead 5 → 5/6;  β = 0: exact → 0."""
    x = t64([[[0.5, 0.1], [0.5, 0.3]], [[2.0, 1.0], [4.0, 3.0]]])
    beta = t64([[[-10.0, 0.5], [0.0, -10.0], [0.2, 0.1]], [[-10.0, 1.0], [-1.0, -10.0], [0.0, 0.0]]])
    W = torch.eye(2, dtype=F64).expand(2, 3, 1, 2, 2).clone()
    b = beta[:, :, None, :]
    tw = torch.eye(2, dtype=F64).expand(2, 1, 2, 2).clone()
    tb = torch.zeros(2, 1, 2, dtype=F64)
    expected = [[0.5, 1.0, 0.0], [10 / 11, 5 / 6, 0.0]]
    return W, b, tw, tb, x, expected


def test_dead_output_share_per_seed_and_config():
    W, b, tw, tb, x, expected = _dead_share_setup()
    share = ex.dead_output_share(W, b, tw, tb, x)
    assert share.shape == (2, 3)
    assert share.tolist() == [pytest.approx(row, rel=1e-12) for row in expected]


def test_dead_output_share_converts_inputs_to_the_models_dtype():
    W, b, tw, tb, x, expected = _dead_share_setup()
    share = ex.dead_output_share(W, b, tw, tb, x.float())
    assert share.dtype == F64
    assert share.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]


def test_dead_output_share_validation_message():
    W, b, tw, tb, x, _ = _dead_share_setup()
    msg = r"^need weights \(S, C, L, D, D\), biases \(S, C, L, D\) and x \(S, n, D\)$"
    with pytest.raises(ValueError, match=msg):
        ex.dead_output_share(W, b, tw, tb, x[:1])                              # one input slice for two seeds
    with pytest.raises(ValueError, match=msg):
        ex.dead_output_share(W, b[:, :, 0], tw, tb, x)                          # biases without the layer axis


# ------------------------------------------------------------------------------------------------ cached_grid
def test_cached_grid_keys_the_cache_by_version_scale_and_arguments(monkeypatch):
    """The cache config holds the grid version, the scale name and every keyword; no progress bar is shown; the
    run calls fnn_grid_experiment with the keywords."""
    import lorabook.train

    calls = []

    def fake_sweep(name, configs, run, **kw):
        calls.append((name, list(configs), kw))
        return [run(configs[0])]

    monkeypatch.setattr(lorabook.train, "cached_sweep", fake_sweep)
    monkeypatch.setattr(ex, "fnn_grid_experiment", lambda **kw: {"ran with": kw})
    out = ex.cached_grid("grid", "quick", D=4, seeds=2)
    assert out == {"ran with": {"D": 4, "seeds": 2}}
    assert len(calls) == 1
    name, configs, kw = calls[0]
    assert name == "grid" and configs == [{"version": ex.GRID_VERSION, "scale": "quick", "D": 4, "seeds": 2}]
    assert kw == {"progress": False}


# ------------------------------------------------------------------------------------------------ Transformer helpers
def _layer(Q, K, V, O, W1=None, W2=None, b1=None, b2=None):
    """A layer dict; Q, K, V, O given per head as (H, D, D)."""
    D = Q.shape[-1]
    eye = torch.eye(D, dtype=F64)
    zero = torch.zeros(D, dtype=F64)
    return {"Q": Q, "K": K, "V": V, "O": O, "W1": eye if W1 is None else W1, "W2": eye if W2 is None else W2,
            "b1": zero if b1 is None else b1, "b2": zero if b2 is None else b2}


def _random_layer(g, D, H, **ffn):
    att = {k: torch.randn(H, D, D, generator=g, dtype=F64) / math.sqrt(D) for k in ("Q", "K", "V", "O")}
    return _layer(**att, **ffn)


def _shared_ffn_pair(D=2, H=1, L=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    target, frozen = [], []
    for _ in range(L):
        ffn = {"W1": torch.eye(D, dtype=F64) + 0.3 * torch.randn(D, D, generator=g, dtype=F64),
               "W2": torch.eye(D, dtype=F64) + 0.3 * torch.randn(D, D, generator=g, dtype=F64),
               "b1": 0.1 * torch.randn(D, generator=g, dtype=F64), "b2": 0.1 * torch.randn(D, generator=g, dtype=F64)}
        target.append(_random_layer(g, D, H, **ffn))
        frozen.append(_random_layer(g, D, H, **ffn))
    return target, frozen


# ------------------------------------------------------------------------------------------------ tfn_construction
def test_tfn_construction_validation_messages():
    target, frozen = _shared_ffn_pair()
    with pytest.raises(ValueError, match=r"^target\[1\] lacks keys \['K', "):
        ex.tfn_construction([{"Q": target[0]["Q"]}], frozen, 1)
    with pytest.raises(ValueError, match=r"^frozen\[1\] lacks keys \['K', "):
        ex.tfn_construction(target, [{"Q": frozen[0]["Q"]}], 1)
    with pytest.raises(ValueError, match=r"^target and frozen TFN must have the same depth, heads and width$"):
        ex.tfn_construction(target, frozen[:1], 1)
    with pytest.raises(ValueError, match=r"^rank=3 is out of range"):
        ex.tfn_construction(target, frozen, 3)


def test_tfn_construction_names_the_layer_whose_feed_forward_block_differs():
    """Layers are numbered from 1: a different b1 in the second of two layers is reported as layer 2."""
    target, frozen = _shared_ffn_pair()
    frozen[1] = dict(frozen[1], b1=frozen[1]["b1"] + 1.0)
    with pytest.raises(ValueError, match=r"^layer 2: feed-forward weight b1 differs; "):
        ex.tfn_construction(target, frozen, 1)
    target, frozen = _shared_ffn_pair()
    frozen[0] = dict(frozen[0], W2=frozen[0]["W2"] * 2.0)
    with pytest.raises(ValueError, match=r"^layer 1: feed-forward weight W2 differs; "):
        ex.tfn_construction(target, frozen, 1)


# ------------------------------------------------------------------------------------------------ tfn_mse
def _mse_setup():
    """Adapted models equal to each seed's target except the last output bias b2 + δ_{s,c}: every token's output is
    off by exactly δ_{s,c}, so the per-token squared error is ‖δ_{s,c}‖² (S = 2, C = 2, n = 3, N = 2, D = 3)."""
    S, C, n, N, D, H = 2, 2, 3, 2, 3, 1
    g = torch.Generator().manual_seed(4)
    targets = [[_random_layer(g, D, H), _random_layer(g, D, H)] for _ in range(S)]
    delta = torch.randn(S, C, D, generator=g, dtype=F64)
    adapted = []
    for l in range(2):
        layer = {}
        for k in ex.TFN_KEYS:
            T = torch.stack([targets[s][l][k] for s in range(S)])[:, None].expand(S, C, *targets[0][l][k].shape)
            if k == "b2" and l == 1:
                T = T + delta
            if k in ("Q", "K", "V", "O", "W1", "W2"):
                layer[k] = T[:, :, None].clone()                      # (S, C, 1, ...)
            else:
                layer[k] = T[:, :, None, None].clone()                # (S, C, 1, 1, D)
        adapted.append(layer)
    X = torch.randn(S, n, N, D, generator=g, dtype=F64)
    return adapted, targets, X, delta.square().sum(-1)


def test_tfn_mse_is_the_squared_error_per_token():
    adapted, targets, X, expected = _mse_setup()
    mse = ex.tfn_mse(adapted, targets, X)
    assert mse.shape == (2, 2)
    assert torch.allclose(mse, expected, rtol=1e-12, atol=0)


def test_tfn_mse_converts_inputs_to_the_adapters_dtype():
    adapted, targets, X, expected = _mse_setup()
    mse = ex.tfn_mse(adapted, targets, X.float())
    assert mse.dtype == F64
    assert torch.allclose(mse, expected, rtol=1e-5, atol=0)


def test_tfn_mse_rejects_inputs_with_the_wrong_number_of_seeds():
    adapted, targets, X, _ = _mse_setup()
    with pytest.raises(ValueError, match=r"^X must have shape \(S, n, N, D\) with one slice per seed$"):
        ex.tfn_mse(adapted, targets, torch.cat([X, X[:1]]))


# ------------------------------------------------------------------------------------------------ pair differences
def test_pair_differences_one_layer_closed_form():
    """One layer, two heads, target K̄_0 = I. The frozen model has Q_0 = Q̄_0 − 3 e_1 e_2ᵀ (score pair of head 0
    differs by 3 e_1 e_2ᵀ: singular values (3, 0, 0); head 1's score pair is equal) and W1 = 2 W̄1 (so each value
    pair differs by −½ Ō_h V̄_h: singular values half those of Ō_h V̄_h)."""
    D, H = 3, 2
    g = torch.Generator().manual_seed(1)
    t = _random_layer(g, D, H, W1=torch.eye(D, dtype=F64) + 0.2 * torch.randn(D, D, generator=g, dtype=F64))
    t["K"] = torch.stack([torch.eye(D, dtype=F64), t["K"][1]])
    f = dict(t, W1=2 * t["W1"], Q=t["Q"].clone())
    f["Q"][0, 0, 1] -= 3.0
    s = ex.tfn_pair_differences([t], [f])
    assert s.shape == (1, H, 2, D)
    assert s[0, 0, 0].tolist() == pytest.approx([3.0, 0.0, 0.0], abs=1e-13)
    assert s[0, 1, 0].abs().max() < 1e-13
    for h in range(H):
        ov = np.linalg.svd((t["O"][h] @ t["V"][h]).numpy(), compute_uv=False)
        assert s[0, h, 1].numpy() == pytest.approx(ov / 2, rel=1e-12)


def _basis_change_pair():
    """A two-layer target and a frozen model that equals it up to an invertible change of hidden-state basis T:
    frozen W2_1 = T W̄2_1, b2_1 = T b̄2_1 (hidden state Z̄_1 Tᵀ), and layer 2 reads it with Q, K, V = Q̄, K̄, V̄ T^{-1}.
    The target's last W2 is singular (the construction never inverts it)."""
    D, H = 3, 2
    g = torch.Generator().manual_seed(2)
    W = lambda: torch.eye(D, dtype=F64) + 0.3 * torch.randn(D, D, generator=g, dtype=F64)   # noqa: E731
    t1 = _random_layer(g, D, H, W1=W(), W2=W(), b1=torch.randn(D, generator=g, dtype=F64),
                       b2=torch.randn(D, generator=g, dtype=F64))
    last_W2 = W()
    last_W2[2] = 0.0
    t2 = _random_layer(g, D, H, W1=W(), W2=last_W2, b2=torch.randn(D, generator=g, dtype=F64))
    T = t64([[1.0, 1.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])
    T_inv = torch.linalg.inv(T)
    f1 = dict(t1, W2=T @ t1["W2"], b2=T @ t1["b2"])
    f2 = dict(t2, Q=t2["Q"] @ T_inv, K=t2["K"] @ T_inv, V=t2["V"] @ T_inv)
    return [t1, t2], [f1, f2]


def test_pair_differences_vanish_for_a_change_of_hidden_basis():
    """The frozen model computes the target's function, and every pair difference is zero: the differences of
    layer 2 are taken in the basis T_1 = W2_1 W̄2_1^{-1} carried from layer 1."""
    target, frozen = _basis_change_pair()
    X = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.allclose(ex.tfn_forward(X, frozen), ex.tfn_forward(X, target), atol=1e-12)
    s = ex.tfn_pair_differences(target, frozen)
    assert s.shape == (2, 2, 2, 3)
    assert s.abs().max() < 1e-12


def test_pair_differences_are_float64_whatever_the_default_dtype(default_dtype):
    target, frozen = _basis_change_pair()
    frozen[1] = dict(frozen[1], Q=frozen[1]["Q"] * 2.0)
    ref = ex.tfn_pair_differences(target, frozen)
    with default_dtype(torch.float32):
        s = ex.tfn_pair_differences(target, frozen)
    assert s.dtype == F64
    assert torch.equal(s, ref) and ref.max() > 0.1


# ------------------------------------------------------------------------------------------------ threshold
def _threshold_pair(score_diag, *, frozen_K=None, frozen_Q=None):
    """One layer, one head, identity feed-forward. Frozen O = V = I (‖W_O W_V‖_2 = 1); target K̄ = I and
    Q̄ = W_Kᵀ W_Q + diag(score_diag), so the score pair differs by diag(score_diag) and the value pair is equal."""
    D = len(score_diag)
    eye = torch.eye(D, dtype=F64)[None]
    fK = eye if frozen_K is None else frozen_K[None]
    fQ = eye if frozen_Q is None else frozen_Q[None]
    frozen = [_layer(Q=fQ, K=fK, V=eye, O=eye)]
    target = [_layer(Q=fK.transpose(-1, -2) @ fQ + torch.diag(t64(score_diag))[None], K=eye, V=eye, O=eye)]
    return target, frozen


def test_threshold_counts_the_difference_rank():
    """Differences (0.9, 0.8, 0.5, 0.1) with frozen products of spectral norm exactly 1: rank 4, threshold 2."""
    target, frozen = _threshold_pair([0.9, 0.8, 0.5, 0.1])
    assert ex.tfn_construction_threshold(target, frozen) == 2


def test_threshold_of_an_attention_free_pair_is_one():
    """All attention weights zero in both models: no difference and no scale at all; the threshold is 1."""
    z = torch.zeros(1, 4, 4, dtype=F64)
    pair = [_layer(Q=z, K=z, V=z, O=z)]
    assert ex.tfn_construction_threshold(pair, [dict(pair[0])]) == 1


def test_threshold_rtol_is_relative_and_strict():
    """With scale 1, rtol = 0.5 counts the singular values strictly above 0.5: (0.9, 0.8) of (0.9, 0.8, 0.5, 0)."""
    target, frozen = _threshold_pair([0.9, 0.8, 0.5, 0.0])
    assert ex.tfn_construction_threshold(target, frozen, rtol=0.5) == 1
    assert ex.tfn_construction_threshold(target, frozen, rtol=0.45) == 2


def test_threshold_scale_is_the_spectral_norm_of_the_frozen_products():
    """Frozen W_Q = 2I: scale ‖W_Kᵀ W_Q‖_2 = 2 (its Frobenius norm would be 2√6). rtol = 0.3 counts the
    differences above 0.6: 3 of (1.5, 0.9, 0.7, 0.3, 0.2, 0.1), threshold 2."""
    target, frozen = _threshold_pair([1.5, 0.9, 0.7, 0.3, 0.2, 0.1], frozen_Q=2 * torch.eye(6, dtype=F64))
    assert ex.tfn_construction_threshold(target, frozen, rtol=0.3) == 2


def test_threshold_scale_uses_the_transposed_key():
    """Frozen W_K = 2·(e_1 e_2ᵀ + e_3 e_4ᵀ), W_Q = diag(1, 0, 1, 0): W_Kᵀ W_Q has spectral norm 2 (while W_K W_Q = 0),
    so the scale is 2 and rtol = 0.3 counts the differences above 0.6: 2 of (1.5, 0.9, 0.5, 0.4), threshold 1."""
    K = torch.zeros(4, 4, dtype=F64)
    K[0, 1] = K[2, 3] = 2.0
    Q = torch.diag(t64([1.0, 0.0, 1.0, 0.0]))
    target, frozen = _threshold_pair([1.5, 0.9, 0.5, 0.4], frozen_K=K, frozen_Q=Q)
    assert ex.tfn_construction_threshold(target, frozen, rtol=0.3) == 1
    assert ex.tfn_construction_threshold(target, frozen, rtol=0.22) == 2


def test_threshold_rejects_a_non_positive_rtol():
    target, frozen = _threshold_pair([0.9, 0.8])
    with pytest.raises(ValueError, match=r"^rtol must be a positive finite number, got -0\.1$"):
        ex.tfn_construction_threshold(target, frozen, rtol=-0.1)

