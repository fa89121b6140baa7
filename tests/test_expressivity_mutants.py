"""Random instances and Transformer pretraining of chapter 1: input ranges, error messages, dtypes, scales,
reproducibility from the caller's generator, and the pretraining checked against a per-pair Adam written out."""
import math

import pytest
import torch

from lorabook import expressivity as ex

F64 = torch.float64


def twice_with_other_global_seeds(fn, seed=5):
    """Call ``fn(generator)`` twice with equally seeded generators but different global torch seeds; the global
    random state is restored afterwards."""
    out = []
    with torch.random.fork_rng(devices=[]):
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            out.append(fn(torch.Generator().manual_seed(seed)))
    return out


def flatten(obj):
    """All tensors of a nested tuple / list / dict structure, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in flatten(obj[k])]
    return [t for x in obj for t in flatten(x)]


def all_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    return len(fa) == len(fb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(fa, fb))


# ----------------------------------------------------------------------------------------------------------
# random_linear_instance
@pytest.mark.parametrize("D,L,r,bad", [
    (10**6 + 1, 1, 0, r"^D=1000001 is out of range: it must lie in \[1, 1000000\]$"),
    (2, 10**6 + 1, 0, r"^n_layers=1000001 is out of range: it must lie in \[1, 1000000\]$"),
    (3, 1, 4, r"^rank_E=4 is out of range: it must lie in \[0, 3\]$"),
])
def test_random_linear_instance_names_the_out_of_range_argument(D, L, r, bad):
    """Sizes are checked before anything is drawn, and the message names the argument and its range."""
    with pytest.raises(ValueError, match=bad):
        ex.random_linear_instance(D, L, r, torch.Generator().manual_seed(0))


def test_random_linear_instance_accepts_sizes_well_inside_the_limits():
    """D = 61 and L = 61 are ordinary sizes (the limits are 10^6), and rank_E = D is allowed."""
    g = torch.Generator().manual_seed(0)
    target, frozen = ex.random_linear_instance(61, 1, 61, g)
    assert target.shape == (61, 61) and len(frozen) == 1
    target, frozen = ex.random_linear_instance(1, 61, 0, g)
    assert target.shape == (1, 1) and len(frozen) == 61


def test_random_linear_instance_honours_the_requested_dtype():
    """Every returned matrix has the requested dtype (float32 here), not the default float64."""
    target, frozen = ex.random_linear_instance(5, 2, 2, torch.Generator().manual_seed(0), dtype=torch.float32)
    assert target.dtype == torch.float32 and all(W.dtype == torch.float32 for W in frozen)


def test_random_linear_instance_depends_only_on_the_generator():
    """Two calls with equally seeded generators agree exactly, whatever the global torch seed."""
    a, b = twice_with_other_global_seeds(lambda g: ex.random_linear_instance(6, 2, 3, g))
    assert all_equal(a, b)


def test_random_linear_instance_scales():
    """Frozen ``W_l − I`` has N(0, 1/(4D)) entries (std 1/(2√D)), and the error ``E = W̄ − ∏ W_l = P Qᵀ/√D`` with
    Gaussian ``P, Q`` of r columns has entries of variance r/D; both checked by sample std (D = 40, so 3 × 1600
    and 1600 samples: a few per cent of sampling error)."""
    D, L, r = 40, 3, 4
    target, frozen = ex.random_linear_instance(D, L, r, torch.Generator().manual_seed(1))
    dev = torch.stack(frozen) - torch.eye(D, dtype=F64)
    assert dev.std().item() == pytest.approx(1 / (2 * math.sqrt(D)), rel=0.08)
    E = target - frozen[2] @ frozen[1] @ frozen[0]
    assert E.std().item() == pytest.approx(math.sqrt(r / D), rel=0.15)
    assert torch.linalg.matrix_rank(E).item() == r


def test_random_linear_instance_follows_its_documented_draws():
    """``W_l = I + G_l/(2√D)``, then ``W̄ = ∏ W_l + P Qᵀ/√D``, with ``G_1, …, G_L, P, Q`` the generator's successive
    standard Gaussian draws: rebuilt here from a generator with the same seed, written out for L = 2."""
    D, r = 4, 2
    target, frozen = ex.random_linear_instance(D, 2, r, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    G1, G2 = torch.randn(D, D, generator=g), torch.randn(D, D, generator=g)
    P, Q = torch.randn(D, r, generator=g), torch.randn(D, r, generator=g)
    W1, W2 = torch.eye(D) + G1 / 4, torch.eye(D) + G2 / 4          # 2√D = 4
    assert torch.allclose(frozen[0], W1, rtol=0, atol=1e-15) and torch.allclose(frozen[1], W2, rtol=0, atol=1e-15)
    assert torch.allclose(target, W2 @ W1 + P @ Q.T / 2, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------
# flat_spectrum_instance
@pytest.mark.parametrize("D,L,bad", [
    (10**5 + 1, 1, r"^D=100001 is out of range: it must lie in \[1, 100000\]$"),
    (2, 10**5 + 1, r"^n_layers=100001 is out of range: it must lie in \[1, 100000\]$"),
])
def test_flat_spectrum_instance_names_the_out_of_range_argument(D, L, bad):
    with pytest.raises(ValueError, match=bad):
        ex.flat_spectrum_instance(D, L, torch.Generator().manual_seed(0))


def test_flat_spectrum_instance_rejects_a_negative_radius_by_name():
    with pytest.raises(ValueError, match=r"^radius must be a positive finite number, got -1\.0$"):
        ex.flat_spectrum_instance(3, 1, torch.Generator().manual_seed(0), radius=-1.0)


def test_flat_spectrum_instance_accepts_sizes_well_inside_the_limits():
    g = torch.Generator().manual_seed(0)
    assert ex.flat_spectrum_instance(51, 1, g)[2].shape == (1, 51, 51)
    assert ex.flat_spectrum_instance(1, 51, g)[0].shape == (51, 1, 1)


def test_flat_spectrum_instance_shapes_dtype_and_zero_frozen_biases(default_dtype):
    """Documented shapes ``(L, D, D), (L, D), (1, D, D), (1, D)``, all float64 even when the default dtype is
    float32; frozen biases are zero."""
    with default_dtype(torch.float32):
        out = ex.flat_spectrum_instance(4, 3, torch.Generator().manual_seed(0))
    assert [tuple(t.shape) for t in out] == [(3, 4, 4), (3, 4), (1, 4, 4), (1, 4)]
    assert all(t.dtype == F64 for t in out)
    assert out[1].abs().max() == 0


def test_flat_spectrum_instance_depends_only_on_the_generator():
    a, b = twice_with_other_global_seeds(lambda g: ex.flat_spectrum_instance(5, 2, g))
    assert all_equal(a, b)


def test_flat_spectrum_instance_bias_keeps_every_relu_on_a_given_radius():
    """With ``radius = ρ`` the smallest pre-activation of target unit k over the ball ``‖x‖ ≤ ρ`` is attained at
    ``x = −ρ W̄_k/‖W̄_k‖`` and equals exactly 1 (the documented margin), for ρ = 2 as for the default ρ = √D."""
    for radius, rho in ((2.0, 2.0), (None, math.sqrt(6))):
        _, _, tw, tb = ex.flat_spectrum_instance(6, 2, torch.Generator().manual_seed(3), radius=radius)
        W, b = tw[0], tb[0]
        x_worst = -rho * W / W.norm(dim=1, keepdim=True)                          # (D units, D)
        assert torch.allclose((x_worst * W).sum(1) + b, torch.ones(6, dtype=F64), rtol=0, atol=1e-12)


def test_flat_spectrum_instance_frozen_scale_and_haar_error():
    """Frozen weights are the generator's first Gaussian draw divided by √D (entries N(0, 1/D)); the error
    ``E = W̄_1 − W_L ⋯ W_1`` is the orthogonal factor of the next Gaussian D×D draw M with a positive triangular
    factor: ``Eᵀ M`` is upper triangular with a positive diagonal (the sign convention that makes E Haar)."""
    D, L = 5, 2
    fw, _, tw, _ = ex.flat_spectrum_instance(D, L, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    G = torch.randn(L, D, D, generator=g)
    M = torch.randn(D, D, generator=g)
    assert torch.allclose(fw, G / math.sqrt(D), rtol=0, atol=1e-15)
    E = tw[0] - fw[1] @ fw[0]
    R = E.T @ M
    assert torch.allclose(E @ E.T, torch.eye(D), atol=1e-12)
    assert torch.tril(R, -1).abs().max() < 1e-12 and (torch.diagonal(R) > 0).all()


# ----------------------------------------------------------------------------------------------------------
# random_tfn_instance
@pytest.mark.parametrize("D,H,L,bad", [
    (10**4 + 1, 1, 1, r"^D=10001 is out of range: it must lie in \[1, 10000\]$"),
    (2, 10**4 + 1, 1, r"^H=10001 is out of range: it must lie in \[1, 10000\]$"),
    (2, 1, 10**4 + 1, r"^n_layers=10001 is out of range: it must lie in \[1, 10000\]$"),
])
def test_random_tfn_instance_names_the_out_of_range_argument(D, H, L, bad):
    with pytest.raises(ValueError, match=bad):
        ex.random_tfn_instance(D, H, L, torch.Generator().manual_seed(0))


def test_random_tfn_instance_accepts_sizes_well_inside_the_limits():
    g = torch.Generator().manual_seed(0)
    assert ex.random_tfn_instance(41, 1, 1, g)[0][0]["Q"].shape == (1, 41, 41)
    assert ex.random_tfn_instance(1, 41, 1, g)[0][0]["Q"].shape == (41, 1, 1)
    assert len(ex.random_tfn_instance(1, 1, 41, g)[1]) == 41


def test_random_tfn_instance_is_float64_and_depends_only_on_the_generator(default_dtype):
    """float64 even under a float32 default dtype; equal seeds give equal models whatever the global seed."""
    with default_dtype(torch.float32):
        target, frozen = ex.random_tfn_instance(3, 2, 2, torch.Generator().manual_seed(0))
    assert all(t.dtype == F64 for t in flatten([target, frozen]))
    a, b = twice_with_other_global_seeds(lambda g: ex.random_tfn_instance(3, 2, 2, g))
    assert all_equal(a, b)


def test_random_tfn_instance_default_bias_std_is_one_tenth():
    a = ex.random_tfn_instance(3, 1, 2, torch.Generator().manual_seed(2))
    b = ex.random_tfn_instance(3, 1, 2, torch.Generator().manual_seed(2), ffn_bias_std=0.1)
    assert all_equal(a, b)


def test_random_tfn_instance_biases_scale_linearly_with_their_std():
    """Doubling ``ffn_bias_std`` doubles every feed-forward bias and leaves every weight unchanged (same seed)."""
    a_t, a_f = ex.random_tfn_instance(3, 2, 2, torch.Generator().manual_seed(2), ffn_bias_std=0.1)
    b_t, b_f = ex.random_tfn_instance(3, 2, 2, torch.Generator().manual_seed(2), ffn_bias_std=0.2)
    for la, lb in zip(a_t + a_f, b_t + b_f):
        for k in ex.TFN_KEYS:
            want = 2 * la[k] if k in ("b1", "b2") else la[k]
            assert torch.allclose(lb[k], want, rtol=1e-15, atol=0), k


def test_random_tfn_instance_weight_scales_and_shared_feed_forward():
    """Attention and feed-forward weights have N(0, 1/D) entries (sample std within 10 % of 1/√D over ≥ 1600
    samples per kind, D = 20); biases N(0, 0.1²); the feed-forward block is shared by target and frozen model,
    the attention weights are not."""
    D, H, L = 20, 2, 2
    target, frozen = ex.random_tfn_instance(D, H, L, torch.Generator().manual_seed(6))
    for keys in (("Q", "K", "V", "O"), ("W1",), ("W2",)):
        sample = torch.cat([lay[k].flatten() for lay in target + frozen for k in keys])
        assert sample.std().item() == pytest.approx(1 / math.sqrt(D), rel=0.1), keys
    for k in ("b1", "b2"):
        sample = torch.cat([lay[k] for lay in target])
        assert sample.std().item() == pytest.approx(0.1, rel=0.35), k
    for t, f in zip(target, frozen):
        assert all(torch.equal(t[k], f[k]) for k in ("W1", "b1", "W2", "b2"))
        assert not torch.equal(t["Q"], f["Q"])


# ----------------------------------------------------------------------------------------------------------
# pretrain_tfn
PD, PH = 3, 2          # width and heads of the pretraining tests


def pretrain_pairs(S=2):
    """S target / frozen TFN pairs at different distances (the frozen model of pair s is ``far`` pulled toward
    the target by a different amount), float64."""
    g = torch.Generator().manual_seed(11)
    out = []
    for s in range(S):
        target, far = ex.random_tfn_pair(PD, PH, 1, g)
        out.append((target, ex.tfn_between(target, far, 1.0 - 0.4 * s)))
    return [t for t, _ in out], [f for _, f in out]


def reference_pretrain(targets, frozens, levels, max_steps, batch, n_tokens, lr, seed):
    """A second implementation: each pair trained on its own (unstacked) by textbook Adam (Kingma & Ba, Algorithm 1:
    betas 0.9 / 0.999, eps 1e-8 added to the bias-corrected root second moment) on the per-token squared error
    ``mean ‖f(X_s) − f̄(X_s)‖²``, X drawn each step as one (S, batch, n_tokens, D) standard Gaussian tensor;
    level c of pair s is kept at the first step t ≥ 1 whose loss is below ``loss_0 / c`` (c = 1: the frozen
    model, step 0), otherwise after the last update."""
    g = torch.Generator().manual_seed(seed)
    S, K = len(targets), len(levels)
    b1, b2, eps = 0.9, 0.999, 1e-8
    params = [[{k: v.detach().clone().requires_grad_(True) for k, v in lay.items()} for lay in f] for f in frozens]
    state = [[(torch.zeros_like(p), torch.zeros_like(p)) for lay in ps for p in lay.values()] for ps in params]
    copy = lambda ps: [{k: v.detach().clone() for k, v in lay.items()} for lay in ps]
    models = [[copy(frozens[s]) if c == 1 else None for s in range(S)] for c in levels]
    used = torch.zeros(K, S, dtype=torch.long)
    init = [None] * S
    for t in range(max_steps):
        X = torch.randn(S, batch, n_tokens, PD, generator=g, dtype=F64)
        for s in range(S):
            with torch.no_grad():
                y = ex.tfn_forward(X[s], targets[s])
            loss = (ex.tfn_forward(X[s], params[s]) - y).square().sum(-1).mean()
            if t == 0:
                init[s] = loss.item()
            for k, c in enumerate(levels):
                if t > 0 and models[k][s] is None and loss.item() < init[s] / c:
                    models[k][s], used[k, s] = copy(params[s]), t
            flat = [p for lay in params[s] for p in lay.values()]
            grads = torch.autograd.grad(loss, flat)
            new_state = []
            with torch.no_grad():
                for p, grad, (m, v) in zip(flat, grads, state[s]):
                    m = b1 * m + (1 - b1) * grad
                    v = b2 * v + (1 - b2) * grad * grad
                    m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
                    p -= lr * m_hat / (torch.sqrt(v_hat) + eps)
                    new_state.append((m, v))
            state[s] = new_state
    for k in range(K):
        for s in range(S):
            if models[k][s] is None:
                models[k][s], used[k, s] = copy(params[s]), max_steps
    return models, used


def test_pretrain_tfn_matches_a_per_pair_adam_reference():
    """Two pairs, levels 1 (the frozen model), 1.05 (reached within the run) and 10^9 (never reached: the model
    after the last update, steps_used = max_steps): models and steps equal a per-pair textbook Adam run to
    1e-13 (an Adam detail such as eps or a bias correction changes the weights by far more)."""
    targets, frozens = pretrain_pairs()
    levels, kw = [1, 1.05, 1e9], dict(max_steps=6, batch=2, n_tokens=4, lr=0.05)
    models, used = ex.pretrain_tfn(targets, frozens, levels=levels, generator=torch.Generator().manual_seed(3), **kw)
    ref_models, ref_used = reference_pretrain(targets, frozens, levels, seed=3, **kw)
    assert used.dtype == torch.long and torch.equal(used, ref_used)
    assert (used[1] < 6).any() and (used[2] == 6).all()
    for k in range(3):
        for s in range(2):
            for lay, ref in zip(models[k][s], ref_models[k][s]):
                for key in ex.TFN_KEYS:
                    assert lay[key].shape == ref[key].shape
                    assert torch.allclose(lay[key], ref[key], rtol=0, atol=1e-13), (k, s, key)


def test_pretrain_tfn_error_messages_name_the_problem():
    targets, frozens = pretrain_pairs()
    g = torch.Generator().manual_seed(0)
    kw = dict(levels=[2], max_steps=1, batch=1, n_tokens=2, lr=0.1, generator=g)
    with pytest.raises(ValueError, match=r"^n_tokens=1000001 is out of range: it must lie in \[1, 1000000\]$"):
        ex.pretrain_tfn(targets, frozens, **{**kw, "n_tokens": 10**6 + 1})
    with pytest.raises(ValueError, match=r"^lr must be a positive finite number, got 0\.0$"):
        ex.pretrain_tfn(targets, frozens, **{**kw, "lr": 0.0})
    for t, f in (([], []), (targets, frozens[:1])):
        with pytest.raises(ValueError, match=r"^need one target and one frozen TFN per pair$"):
            ex.pretrain_tfn(t, f, **kw)
    deeper_t, deeper_f = ex.random_tfn_pair(PD, PH, 2, g)
    with pytest.raises(ValueError, match=r"^all TFNs must share depth, heads and width$"):
        ex.pretrain_tfn([targets[0], deeper_t], [frozens[0], deeper_f], **kw)


def test_pretrain_tfn_single_pair_and_long_sequences():
    """One pair is a valid input, and sequences of 61 tokens are ordinary (the limit is 10^6)."""
    targets, frozens = pretrain_pairs(1)
    models, used = ex.pretrain_tfn(targets, frozens, levels=[1e9], max_steps=1, batch=1, n_tokens=61, lr=0.1,
                                   generator=torch.Generator().manual_seed(0))
    assert len(models) == 1 and len(models[0]) == 1 and used.tolist() == [[1]]
    assert not torch.equal(models[0][0][0]["Q"], frozens[0][0]["Q"])          # one Adam update was made


def test_pretrain_tfn_works_in_float64_whatever_the_inputs_and_default_dtype(default_dtype):
    """float32 models are trained (and returned) in float64; under a float32 default dtype the run is float64 too,
    steps are integers, and a level just above 1 (1 + 2⁻³⁰, equal to 1 in float32) is a real level, kept at a
    step ≥ 1, not the frozen model itself."""
    targets, frozens = pretrain_pairs()
    to32 = lambda models: [[{k: v.float() for k, v in lay.items()} for lay in m] for m in models]
    kw = dict(max_steps=2, batch=2, n_tokens=3, lr=0.05)
    models, _ = ex.pretrain_tfn(to32(targets), to32(frozens), levels=[1e9], generator=torch.Generator().manual_seed(1),
                                **kw)
    assert all(t.dtype == F64 for t in flatten(models))
    with default_dtype(torch.float32):
        models, used = ex.pretrain_tfn(targets, frozens, levels=[1 + 2.0**-30, 1e9],
                                       generator=torch.Generator().manual_seed(1), **kw)
    assert all(t.dtype == F64 for t in flatten(models))
    assert used.dtype == torch.long and (used >= 1).all()
