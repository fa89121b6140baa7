"""Unit tests of lorabook.expressivity's constructions for Lemma 1, Lemma 2 and the partition theorem
(linear_construction, fnn_construction, partition_construction, partition_threshold, uniform_partition,
rank_needed) and of its random instances (random_fnn_instance, paper_fnn_instance, close_in_rank).

Expected values are worked out by hand on tiny instances (scalar layers, multiples of the identity, diagonal
error matrices) or rebuilt from the documented recipe with the same seeded generator; input checks are tested
at their exact boundaries together with the message that names the offending argument."""
import math

import pytest
import torch

from lorabook import expressivity as ex


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


I3 = torch.eye(3)


# ---------------------------------------------------------------------------------------------- uniform_partition
def test_uniform_partition_target_depth_range_and_message():
    """L̄ lies in [1, 10**6]; out of range the message names n_target and its range, before the layer count
    is compared with it (10**6 itself passes that check and only fails for lack of frozen layers)."""
    with pytest.raises(ValueError, match=r"^n_target=0 is out of range: it must lie in \[1, 1000000\]$"):
        ex.uniform_partition(3, 0)
    with pytest.raises(ValueError, match=r"^n_target=1000001 is out of range: it must lie in \[1, 1000000\]$"):
        ex.uniform_partition(5, 10**6 + 1)
    with pytest.raises(ValueError, match=r"^the frozen model needs at least L̄=1000000 layers, got L=5$"):
        ex.uniform_partition(5, 10**6)


def test_uniform_partition_rejects_a_layer_count_that_is_not_an_integer():
    """L must be a Python int: a bool (True == 1) and a float (2.0) are refused with the layer-count message."""
    with pytest.raises(ValueError, match=r"^the frozen model needs at least L̄=1 layers, got L=True$"):
        ex.uniform_partition(True, 1)
    with pytest.raises(ValueError, match=r"^the frozen model needs at least L̄=1 layers, got L=2\.0$"):
        ex.uniform_partition(2.0, 1)


# ---------------------------------------------------------------------------------------------- rank_needed
def test_rank_needed_messages():
    """One error per rank with strictly increasing ranks, finite errors and a positive tolerance; each message
    says which requirement failed."""
    with pytest.raises(ValueError, match=r"^need one error per rank and strictly increasing ranks$"):
        ex.rank_needed([0.1, 0.2], [2, 1], 0.5)
    with pytest.raises(ValueError, match=r"^rel_err contains NaN or infinite values$"):
        ex.rank_needed([0.1, float("nan")], [1, 2], 0.5)
    with pytest.raises(ValueError, match=r"^tol must be a positive finite number, got 0$"):
        ex.rank_needed([0.1, 0.2], [1, 2], 0)


def test_rank_needed_is_one_past_the_largest_rank_when_no_rank_reaches_the_tolerance():
    """Errors all above tol over ranks (1, 2, 4): the answer is max(ranks) + 1 = 5."""
    assert ex.rank_needed([0.9, 0.8, 0.7], [1, 2, 4], 0.5) == 5


def test_rank_needed_counts_an_error_equal_to_the_tolerance_as_reached():
    """'every relative error ≤ tol': errors (0.5, 0.25, 0.25) with tol 0.25 are reached from rank 2."""
    assert ex.rank_needed([0.5, 0.25, 0.25], [1, 2, 3], 0.25) == 2
    # the errors must stay below tol from the returned rank on: a later rise above tol moves it up
    assert ex.rank_needed([0.1, 0.9, 0.1], [1, 2, 3], 0.25) == 3


def test_rank_needed_compares_float32_errors_at_their_exact_value():
    """A float32 error of 0.1 is 0.100000001490116… > 0.1: it is above tol = 0.1 (the comparison is made in
    float64, not after rounding tol to float32), so rank 1 does not reach the tolerance."""
    err = torch.tensor([0.1], dtype=torch.float32)
    assert float(err[0]) > 0.1
    assert ex.rank_needed(err, [1], 0.1) == 2
    assert ex.rank_needed(torch.tensor([0.1, 0.05], dtype=torch.float32), [1, 2], 0.1) == 2


# ---------------------------------------------------------------------------------------------- partition_threshold
def test_partition_threshold_by_hand():
    """Frozen layers all I, partition [[0, 1], [2]]: E_1 = diag(1, 2, 3) (rank 3 over 2 layers → ⌈3/2⌉ = 2) and
    E_2 = diag(1, 0, 0) (rank 1 → 1): the threshold is 2. With both errors zero it is still at least 1."""
    frozen = [I3.clone() for _ in range(3)]
    targets = [I3 + torch.diag(torch.tensor([1.0, 2.0, 3.0])), I3 + torch.diag(torch.tensor([1.0, 0.0, 0.0]))]
    assert ex.partition_threshold(targets, frozen, [[0, 1], [2]]) == 2
    assert ex.partition_threshold([I3.clone(), I3.clone()], frozen, [[0, 1], [2]]) == 1
    # a single rank-1 error over one layer needs rank 1
    assert ex.partition_threshold([targets[1]], [I3.clone()], [[0]]) == 1


def test_partition_threshold_ranks_errors_with_the_given_relative_tolerance():
    """E = diag(1, 1e-12, 0): with the default rtol = 1e-10 the 1e-12 direction is below tolerance (rank 1);
    with rtol = 1e-14 it counts (rank 2)."""
    target = [I3 + torch.diag(torch.tensor([1.0, 1e-12, 0.0]))]
    assert ex.partition_threshold(target, [I3.clone()], [[0]]) == 1
    assert ex.partition_threshold(target, [I3.clone()], [[0]], rtol=1e-10) == 1
    assert ex.partition_threshold(target, [I3.clone()], [[0]], rtol=1e-14) == 2


def test_partition_threshold_messages():
    """The target list and the frozen list are checked, and frozen layers must have the targets' size."""
    with pytest.raises(ValueError, match=r"^target_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.partition_threshold([], [I3], [[0]])
    with pytest.raises(ValueError, match=r"^frozen_weights\[1\] has shape \(2, 2\), expected \(3, 3\)$"):
        ex.partition_threshold([I3], [torch.eye(2)], [[0]])
    with pytest.raises(ValueError, match=r"^frozen_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.partition_threshold([I3], [], [[0]])


# ---------------------------------------------------------------------------------------------- linear_construction
def test_linear_construction_scalar_layers_by_hand():
    """1×1 layers W_1 = 2, W_2 = 4, target 10: E = 10 − 8 = 2 (rank 1), so R' = 1 and only the first block is
    used: ΔW_1 = W_2^{-1} E = 0.5, ΔW_2 = 0, and (4 + 0)(2 + 0.5) = 10 exactly."""
    d1, d2 = ex.linear_construction(torch.tensor([[10.0]]), [torch.tensor([[2.0]]), torch.tensor([[4.0]])], 1)
    assert d1.item() == pytest.approx(0.5, abs=1e-15)
    assert d2.item() == 0.0
    (d,) = ex.linear_construction(torch.tensor([[3.0]]), [torch.tensor([[2.0]])], 1)
    assert d.item() == pytest.approx(1.0, abs=1e-15)


def test_linear_construction_leaves_directions_below_rtol_unadapted():
    """E = diag(1, 1e-12, 0) with one frozen layer I and R = 2: at the default rtol = 1e-10, rank E is 1, so only
    the σ = 1 direction is adapted and the spectral error is the 1e-12 left out; with rtol = 1e-14 both non-zero
    directions are adapted and the match is exact."""
    target = I3 + torch.diag(torch.tensor([1.0, 1e-12, 0.0]))
    sigma2 = (target - I3)[1, 1].item()               # ≈ 1e-12 after rounding 1 + 1e-12
    (d,) = ex.linear_construction(target, [I3.clone()], 2)
    err = torch.linalg.matrix_norm(target - (I3 + d), 2).item()
    assert err == pytest.approx(sigma2, rel=1e-6)
    (d10,) = ex.linear_construction(target, [I3.clone()], 2, rtol=1e-10)
    assert torch.equal(d, d10)
    (d14,) = ex.linear_construction(target, [I3.clone()], 2, rtol=1e-14)
    assert torch.linalg.matrix_norm(target - (I3 + d14), 2).item() < 1e-15


def test_linear_construction_checks_rtol_even_when_the_target_is_already_met():
    """E = 0 (target = frozen product): the adapters are zero, and an rtol outside (0, 1) is still refused."""
    (d,) = ex.linear_construction(I3.clone(), [I3.clone()], 1)
    assert torch.equal(d, torch.zeros(3, 3))
    for bad in (5.0, 0.0):
        with pytest.raises(ValueError, match="rtol"):
            ex.linear_construction(I3.clone(), [I3.clone()], 1, rtol=bad)


def test_linear_construction_reaches_a_singular_target():
    """Lemma 1 needs non-singular frozen layers and intermediate products, not a non-singular target: with
    W̄ = diag(1, 1, 0) and W_1 = I the rank-1 adapter gives W_1 + ΔW_1 = W̄ exactly."""
    target = torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    (d,) = ex.linear_construction(target, [I3.clone()], 1)
    assert torch.allclose(I3 + d, target, atol=1e-15, rtol=0)


def test_linear_construction_refuses_a_singular_intermediate_product_and_names_it():
    """W_1 = I, W_2 = 2I, W̄ = diag(0, 3): E = diag(−2, 1), ΔW_1 = W_2^{-1} LR_1(E) = diag(−1, 0), so
    W_1 + ΔW_1 = diag(0, 1) is singular; the message names ∏W + LR_1(E), met as W_1 + ΔW_1."""
    frozen = [torch.eye(2), 2.0 * torch.eye(2)]
    target = torch.diag(torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match=r"^∏W \+ LR_1\(E\) \(met as W_1 \+ ΔW_1\) is singular \(condition number"):
        ex.linear_construction(target, frozen, 1)


def test_linear_construction_messages():
    """Each check names its argument: the frozen list, a non-square target, a target of another size, the rank
    range and a singular frozen layer (numbered from 1, W_1 applied first)."""
    with pytest.raises(ValueError, match=r"^frozen must be a non-empty list of \(D, D\) matrices$"):
        ex.linear_construction(I3, [], 1)
    with pytest.raises(ValueError, match=r"^target must be square, got shape \(3, 2\)$"):
        ex.linear_construction(torch.ones(3, 2), [I3], 1)
    with pytest.raises(ValueError, match=r"^target contains NaN or infinite entries$"):
        ex.linear_construction(torch.full((3, 3), float("inf")), [I3], 1)
    with pytest.raises(ValueError, match=r"^target has shape \(2, 2\) but the frozen layers are \(3, 3\)$"):
        ex.linear_construction(torch.eye(2), [I3], 1)
    with pytest.raises(ValueError, match=r"^rank=4 is out of range: it must lie in \[1, 3\]$"):
        ex.linear_construction(I3, [I3], 4)
    with pytest.raises(ValueError, match=r"^frozen W_2 is singular \(condition number .*\): Lemma 1 assumes"):
        ex.linear_construction(I3, [I3, torch.zeros(3, 3)], 1)


def test_linear_construction_keeps_float32_inputs_in_float32():
    """float32 layers and target (with float64 as torch's default dtype) give float32 adapters that match."""
    W = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    target = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float32)
    deltas = ex.linear_construction(target, [W, W.clone()], 1)
    assert all(d.dtype == torch.float32 for d in deltas)
    prod = (W + deltas[1]) @ (W + deltas[0])
    assert torch.allclose(prod, target, atol=1e-5)


# ---------------------------------------------------------------------------------------------- fnn_construction
def _scaled_identity_group(rho=1.5, margin=0.5):
    """Three frozen layers 2I (D = 2), target W̄ = 8I, b̄ = (1, −1): E = 0, so the adapters are 0 and the
    biases follow from the row norms (2) and the spectral norm (2) of each layer, by hand:
    b_1 = 2ρ + m, r_1 = 2ρ + ‖b_1‖, b_2 = 2 r_1 + m, b_3 = b̄ − 2(2 b_1 + b_2)."""
    b1 = 2 * rho + margin
    r1 = 2 * rho + b1 * math.sqrt(2)
    b2 = 2 * r1 + margin
    carried = 2 * (2 * b1 + b2)
    return [torch.full((2,), b1), torch.full((2,), b2), torch.tensor([1.0 - carried, -1.0 - carried])]


def test_fnn_construction_biases_of_a_three_layer_group_by_hand():
    """The linearising biases use ‖(W+ΔW)[k, :]‖_2 ρ_{l−1} + margin with ρ_l = ‖W+ΔW‖_2 ρ_{l−1} + ‖b_l‖_2; on
    the ball ‖x‖ ≤ ρ every hidden ReLU is active and the adapted network is exactly ReLU(8x + b̄)."""
    frozen = [2.0 * torch.eye(2) for _ in range(3)]
    tb = torch.tensor([1.0, -1.0])
    deltas, biases = ex.fnn_construction([8.0 * torch.eye(2)], [tb], frozen, 1, 1.5, margin=0.5)
    assert all(torch.equal(d, torch.zeros(2, 2)) for d in deltas)
    for b, want in zip(biases, _scaled_identity_group()):
        assert torch.allclose(b, want, rtol=1e-14, atol=0)
    x = torch.tensor([[1.5, 0.0], [0.0, -1.5], [1.0, -1.0], [-0.3, 0.2]])
    out = ex.fnn_forward(x, [W + d for W, d in zip(frozen, deltas)], biases)
    assert torch.allclose(out, torch.relu(8.0 * x + tb), atol=1e-12)


def test_fnn_construction_default_margin_is_one():
    """margin defaults to 1.0: the same biases as with margin=1.0 given explicitly, and not those of 0.5."""
    frozen = [2.0 * torch.eye(2) for _ in range(3)]
    tb = torch.tensor([1.0, -1.0])
    _, b_default = ex.fnn_construction([8.0 * torch.eye(2)], [tb], frozen, 1, 1.5)
    for b, want in zip(b_default, _scaled_identity_group(margin=1.0)):
        assert torch.allclose(b, want, rtol=1e-14, atol=0)


def _roundoff_case(carried, target_bias):
    """Two frozen layers I, target I (so ΔW = 0): the first bias is 1·ρ + margin with margin = 1, so the shift
    cancelled at the last layer is exactly ``carried`` = ρ + 1 in every coordinate, and the round-off the
    construction estimates is eps·carried (eps = 2^-52)."""
    rho = carried - 1.0
    assert rho + 1.0 == carried
    return ([torch.eye(2)], [torch.tensor(target_bias)], [torch.eye(2), torch.eye(2)], 1, rho)


def test_fnn_construction_round_off_guard_accepts_a_loss_exactly_at_the_limit():
    """The guard refuses a loss *above* 1e-8·max(1, max|b̄|): with carried = 1e-8·2^52 the estimated loss is
    exactly 1e-8 (|b̄| ≤ 1), which is accepted; the last bias cancels the shift."""
    c = 1e-8 * 2**52
    assert torch.finfo(torch.float64).eps * c == 1e-8
    deltas, biases = ex.fnn_construction(*_roundoff_case(c, [0.5, -0.25]))
    assert torch.equal(biases[0], torch.full((2,), c))
    assert torch.equal(biases[1], torch.tensor([0.5 - c, -0.25 - c]))


def test_fnn_construction_round_off_guard_refuses_a_loss_above_the_limit_with_advice():
    """A loss of 1.5e-8 with max|b̄| = 0.5 (the floor max(1, ·) = 1 applies) is refused; the message says what
    to change."""
    c = 1.5e-8 * 2**52
    with pytest.raises(ValueError, match=r"^fnn_construction: group 0 \(2 layers\) compounds the worst-case bias "
                                         r"bound to 6\.8e\+07; .* Use fewer frozen layers per target layer, "
                                         r"a smaller input_radius, or float64$"):
        ex.fnn_construction(*_roundoff_case(c, [0.5, -0.25]))


def test_fnn_construction_round_off_guard_scales_with_the_target_bias():
    """The limit is relative to the target bias: with max|b̄| = 100 a loss of 1e-8 is far below 1e-8·100 and
    accepted, while a loss of 2e-6 is above it and refused."""
    ex.fnn_construction(*_roundoff_case(1e-8 * 2**52, [100.0, -3.0]))
    with pytest.raises(ValueError, match=r"^fnn_construction: group 0"):
        ex.fnn_construction(*_roundoff_case(2e-6 * 2**52, [100.0, -3.0]))


def test_fnn_construction_keeps_float32_inputs_in_float32():
    """Lemma 2 with one frozen layer in float32 (torch's default dtype float64): float32 adapters and biases,
    and the adapted layer is the target layer."""
    W = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    tW = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float32)
    tb = torch.tensor([0.5, -0.5], dtype=torch.float32)
    deltas, biases = ex.fnn_construction([tW], [tb], [W], 2, 1.0)
    assert deltas[0].dtype == torch.float32 and biases[0].dtype == torch.float32
    assert torch.allclose(W + deltas[0], tW, atol=1e-5) and torch.equal(biases[0], tb)


def test_fnn_construction_messages():
    """Each check names its argument: targets given as a stacked tensor instead of a list, an empty target
    list, the number of target biases, frozen layers of another size (checked before the radius), the input
    radius and the margin."""
    tb = [torch.zeros(3)]
    with pytest.raises(ValueError, match=r"^target_weights must be a list of \(D, D\) matrices, got Tensor$"):
        ex.fnn_construction(I3[None].clone(), tb, [I3], 1, 1.0)
    with pytest.raises(ValueError, match=r"^target_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.fnn_construction([], [], [I3], 1, 1.0)
    with pytest.raises(ValueError, match=r"^target_biases must be a list of 1 bias vectors of length 3$"):
        ex.fnn_construction([I3], tb * 2, [I3], 1, 1.0)
    with pytest.raises(ValueError, match=r"^frozen_weights\[1\] has shape \(2, 2\), expected \(3, 3\)$"):
        ex.fnn_construction([I3], tb, [torch.eye(2)], 1, 0.0)
    with pytest.raises(ValueError, match=r"^frozen_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.fnn_construction([I3], tb, [], 1, 1.0)
    with pytest.raises(ValueError, match=r"^input_radius must be a positive finite number, got 0\.0$"):
        ex.fnn_construction([I3], tb, [I3], 1, 0.0)
    with pytest.raises(ValueError, match=r"^margin must be a positive finite number, got 0$"):
        ex.fnn_construction([I3], tb, [I3], 1, 1.0, margin=0)


# ---------------------------------------------------------------------------------------------- partition_construction
def test_partition_construction_passes_the_margin_to_each_group():
    """One group of three layers 2I for the target (8I, b̄): the biases are the hand values of the margin
    given (0.5 here), the same as those of fnn_construction's uniform partition."""
    frozen = [2.0 * torch.eye(2) for _ in range(3)]
    tb = torch.tensor([1.0, -1.0])
    _, biases = ex.partition_construction([8.0 * torch.eye(2)], [tb], frozen, [[0, 1, 2]], 1, 1.5, margin=0.5)
    for b, want in zip(biases, _scaled_identity_group()):
        assert torch.allclose(b, want, rtol=1e-14, atol=0)


def test_partition_construction_messages():
    """Each check names its argument: stacked-tensor targets, an empty target list, the number of target biases,
    frozen layers of another size (checked before the rank and radius), the rank range and the radius."""
    tb = [torch.zeros(3)]
    with pytest.raises(ValueError, match=r"^target_weights must be a list of \(D, D\) matrices, got Tensor$"):
        ex.partition_construction(I3[None].clone(), tb, [I3], [[0]], 1, 1.0)
    with pytest.raises(ValueError, match=r"^target_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.partition_construction([], [], [I3], [], 1, 1.0)
    with pytest.raises(ValueError, match=r"^target_biases must be a list of 2 bias vectors of length 3$"):
        ex.partition_construction([I3, I3], tb, [I3, I3], [[0], [1]], 1, 1.0)
    with pytest.raises(ValueError, match=r"^frozen_weights\[1\] has shape \(2, 2\), expected \(3, 3\)$"):
        ex.partition_construction([I3], tb, [torch.eye(2)], [[0]], 1, 0.0)
    with pytest.raises(ValueError, match=r"^frozen_weights must be a non-empty list of \(D, D\) matrices$"):
        ex.partition_construction([I3], tb, [], [[0]], 1, 1.0)
    with pytest.raises(ValueError, match=r"^rank=4 is out of range: it must lie in \[1, 3\]$"):
        ex.partition_construction([I3], tb, [I3], [[0]], 4, 1.0)
    with pytest.raises(ValueError, match=r"^input_radius must be a positive finite number, got 0$"):
        ex.partition_construction([I3], tb, [I3], [[0]], 1, 0)


# ---------------------------------------------------------------------------------------------- random instances
def _size_checks(make):
    """D and L̄ lie in [1, 10**5], checked before the partition (whose own error shows that the limit passed)."""
    with pytest.raises(ValueError, match=r"^D=0 is out of range: it must lie in \[1, 100000\]$"):
        make(0, 1, 1)
    with pytest.raises(ValueError, match=r"^D=100001 is out of range: it must lie in \[1, 100000\]$"):
        make(10**5 + 1, 1, 2)
    with pytest.raises(ValueError, match=r"^the frozen model needs at least L̄=2 layers, got L=1$"):
        make(10**5, 1, 2)
    with pytest.raises(ValueError, match=r"^n_target=0 is out of range: it must lie in \[1, 100000\]$"):
        make(2, 1, 0)
    with pytest.raises(ValueError, match=r"^n_target=100001 is out of range: it must lie in \[1, 100000\]$"):
        make(2, 1, 10**5 + 1)
    with pytest.raises(ValueError, match=r"^the frozen model needs at least L̄=100000 layers, got L=1$"):
        make(2, 1, 10**5)


def test_random_fnn_instance_size_messages():
    _size_checks(lambda D, L, Lb: ex.random_fnn_instance(D, L, Lb, gen()))


def test_paper_fnn_instance_size_and_init_messages():
    _size_checks(lambda D, L, Lb: ex.paper_fnn_instance(D, L, Lb, gen()))
    with pytest.raises(ValueError, match=r"^init must be one of \('default', 'uniform_singular_values'\), "
                                         r"got 'bogus'$"):
        ex.paper_fnn_instance(2, 1, 1, gen(), init="bogus")


def test_random_fnn_instance_follows_the_documented_recipe(default_dtype):
    """ReLU case: W ~ N(0, 1/D) and b ~ N(0, bias_std²), drawn in the order frozen W, frozen b, target W,
    target b from the generator, in float64 whatever torch's default dtype; bias_std defaults to 0.1 and
    linear to False."""
    D, L, Lb, s = 4, 3, 2, 0.5
    g = gen(5)
    fw = torch.randn(L, D, D, generator=g, dtype=torch.float64) / 2.0        # √D = 2
    fb = torch.randn(L, D, generator=g, dtype=torch.float64) * s
    tw = torch.randn(Lb, D, D, generator=g, dtype=torch.float64) / 2.0
    tb = torch.randn(Lb, D, generator=g, dtype=torch.float64) * s
    with default_dtype(torch.float32):
        got = ex.random_fnn_instance(D, L, Lb, gen(5), bias_std=s)
    for a, b in zip(got, (fw, fb, tw, tb)):
        assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=1e-15, atol=0)
    dflt = ex.random_fnn_instance(D, L, Lb, gen(5))
    expl = ex.random_fnn_instance(D, L, Lb, gen(5), bias_std=0.1, linear=False)
    assert all(torch.equal(a, b) for a, b in zip(dflt, expl))
    assert torch.allclose(dflt[1], fb * (0.1 / s), rtol=1e-14, atol=0)


def test_random_fnn_instance_linear_recipe(default_dtype):
    """linear=True: frozen W_l = I + G_l / (2√D), target W̄ = G / √D, zero biases, all float64."""
    D, L, Lb = 4, 2, 1
    g = gen(6)
    fw = torch.eye(D) + torch.randn(L, D, D, generator=g, dtype=torch.float64) / 4.0     # 2√D = 4
    tw = torch.randn(Lb, D, D, generator=g, dtype=torch.float64) / 2.0
    with default_dtype(torch.float32):
        got = ex.random_fnn_instance(D, L, Lb, gen(6), linear=True)
    assert all(t.dtype == torch.float64 for t in got)
    assert torch.allclose(got[0], fw, rtol=1e-15, atol=0) and torch.allclose(got[2], tw, rtol=1e-15, atol=0)
    assert torch.equal(got[1], torch.zeros(L, D, dtype=torch.float64))
    assert torch.equal(got[3], torch.zeros(Lb, D, dtype=torch.float64))


def _paper_draws(D, L, Lb, seed):
    """The documented draws: every entry uniform on [−1/√D, 1/√D], in the order fw, fb, tw, tb (float64)."""
    g = gen(seed)
    a = 1.0 / math.sqrt(D)
    return [(2.0 * torch.rand(*shape, generator=g, dtype=torch.float64) - 1.0) * a
            for shape in ((L, D, D), (L, D), (Lb, D, D), (Lb, D))]


def test_paper_fnn_instance_default_init_is_pytorchs_uniform_in_float64(default_dtype):
    """init="default" is the draws themselves, float64 even under a float32 default dtype."""
    want = _paper_draws(3, 2, 1, 4)
    with default_dtype(torch.float32):
        got = ex.paper_fnn_instance(3, 2, 1, gen(4))
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and torch.equal(a, b)


def test_paper_fnn_instance_uniform_singular_values_targets(default_dtype):
    """init="uniform_singular_values": W̄_i = ∏_{P_i} W_l + c_i I with c_i the mean singular value of the drawn
    W̄_i − ∏_{P_i} W_l (uniform partition [[0], [1, 2]] of L = 3 layers: the last group takes the remainder), in float64 whatever the default dtype;
    the frozen weights and all biases are the draws."""
    fw, fb, tw, tb = _paper_draws(3, 3, 2, 8)
    want = tw.clone()
    for i, g in enumerate([[0], [1, 2]]):
        P = fw[g[0]] if len(g) == 1 else fw[g[1]] @ fw[g[0]]
        c = torch.linalg.svdvals(tw[i] - P).mean()
        want[i] = P + c * torch.eye(3, dtype=torch.float64)
    with default_dtype(torch.float32):
        got = ex.paper_fnn_instance(3, 3, 2, gen(8), init="uniform_singular_values")
    assert torch.equal(got[0], fw) and torch.equal(got[1], fb) and torch.equal(got[3], tb)
    assert got[2].dtype == torch.float64
    assert torch.allclose(got[2], want, rtol=0, atol=1e-15)


def test_close_in_rank_sets_a_one_layer_group_to_the_target_minus_the_drawn_low_rank_matrix():
    """Group [0] with rank 2, D = 3: the documented recipe draws U and V as the first k columns of the Q factor of
    a Gaussian D×D matrix (U first) and S uniform on [0.25, 0.5]; the new layer is W̄_1 − U S Vᵀ (so the group
    falls *short* of the target by U S Vᵀ); group [1] (rank None) is unchanged."""
    g = gen(2)
    tw = torch.randn(2, 3, 3, generator=g)
    fw = torch.randn(2, 3, 3, generator=g)
    r = gen(9)
    U = torch.linalg.qr(torch.randn(3, 3, generator=r))[0][:, :2]
    V = torch.linalg.qr(torch.randn(3, 3, generator=r))[0][:, :2]
    S = 0.25 + 0.25 * torch.rand(2, generator=r)
    out = ex.close_in_rank(tw, fw, [[0], [1]], [2, None], gen(9))
    assert torch.allclose(out[0], tw[0] - U @ torch.diag(S) @ V.T, rtol=0, atol=1e-14)
    assert torch.equal(out[1], fw[1])
