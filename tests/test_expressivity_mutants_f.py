"""Transformer networks of chapter 1: the forward pass against a token-by-token loop, random pairs and rank-k
frozen models (scales, draws from the caller's generator, dtypes), the full construction and its curve (error
messages, dtypes, per-token MSE), and gradient LoRA checked against a per-(seed, config) Adam written out."""
import math

import pytest
import torch

from lorabook import expressivity as ex

F64 = torch.float64


def loop_forward(X, layers):
    """The TFN of Zeng & Lee written token by token for one (N, D) sequence: per layer and token i,
    ``a_i = Σ_h Σ_j p_ij^h W_O^h W_V^h x_j`` with ``p_i^h`` the softmax over the keys j of
    ``(W_Q^h x_i) · (W_K^h x_j)``, then ``x_i ← W2 relu(W1 a_i + b1) + b2``."""
    Z = [X[i] for i in range(X.shape[0])]
    for layer in layers:
        new = []
        for x_i in Z:
            a = torch.zeros_like(x_i)
            for h in range(layer["Q"].shape[0]):
                scores = torch.stack([torch.dot(layer["Q"][h] @ x_i, layer["K"][h] @ x_j) for x_j in Z])
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                for w_j, x_j in zip(w, Z):
                    a = a + w_j * (layer["O"][h] @ (layer["V"][h] @ x_j))
            new.append(layer["W2"] @ torch.clamp(layer["W1"] @ a + layer["b1"], min=0.0) + layer["b2"])
        Z = new
    return torch.stack(Z)


def pair(D=3, H=2, L=2, seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    target, frozen = ex.random_tfn_pair(D, H, L, g, ffn_bias_std=std)
    return target, frozen


def without(layers, l, key):
    """A copy of ``layers`` whose layer ``l`` (0-based) lacks ``key``."""
    out = [dict(layer) for layer in layers]
    del out[l][key]
    return out


def same_tensors(a, b):
    """Nested lists / dicts of tensors equal bitwise, dtypes included."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))


def under(switch, dtype, global_seed, fn):
    """``fn()`` under another default dtype (``switch``: the ``default_dtype`` fixture) and global torch seed, both
    restored afterwards."""
    with torch.random.fork_rng(devices=[]), switch(dtype):
        torch.manual_seed(global_seed)
        return fn()


# ----------------------------------------------------------------------------------------------------------
# tfn_forward
def test_tfn_forward_matches_a_token_by_token_loop_for_one_and_several_sequences():
    """Two layers, two heads, non-zero feed-forward biases (b1 shifts which ReLUs fire, b2 is added last),
    N = 4 tokens of width 3: the batched forward equals the token-by-token loop (softmax over the keys, i.e.
    each row of attention weights sums to 1) for a single (N, D) sequence and for a (2, N, D) batch."""
    target, _ = pair(D=3, H=2, L=2, seed=4, std=0.7)
    X = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    single = ex.tfn_forward(X[0], target)
    assert single.shape == (4, 3)
    assert torch.allclose(single, loop_forward(X[0], target), rtol=0, atol=1e-13)
    batched = ex.tfn_forward(X, target)
    assert torch.allclose(batched, torch.stack([loop_forward(x, target) for x in X]), rtol=0, atol=1e-13)


def test_tfn_forward_error_message():
    target, _ = pair()
    for X in (torch.ones(3, dtype=F64), torch.ones(2, 3, dtype=torch.long), [[1.0, 2.0, 3.0]]):
        with pytest.raises(ValueError, match=r"^X must be a floating tensor of shape \(\.\.\., N, D\)$"):
            ex.tfn_forward(X, target)


# ----------------------------------------------------------------------------------------------------------
# random_tfn_pair
def test_random_tfn_pair_default_bias_scale_is_one_tenth():
    """The documented default ``ffn_bias_std = 0.1``: a call without it equals one with 0.1 passed."""
    a = ex.random_tfn_pair(3, 2, 2, torch.Generator().manual_seed(7))
    b = ex.random_tfn_pair(3, 2, 2, torch.Generator().manual_seed(7), ffn_bias_std=0.1)
    assert same_tensors(a, b)


def test_random_tfn_pair_entry_scales():
    """Weights have entries N(0, 1/D): D · mean(W²) ≈ 1 over 4 models × 2 layers × 256 entries per key (a
    relative standard error of 3%); biases N(0, std²) with std = 0.3: the sample standard deviation over 256
    entries is within 20% of 0.3 (about 4.5 standard errors)."""
    D = 16
    g = torch.Generator().manual_seed(2)
    models = [m for _ in range(2) for m in ex.random_tfn_pair(D, 1, 2, g, ffn_bias_std=0.3)]
    for key in ("Q", "K", "V", "O", "W1", "W2"):
        W = torch.stack([layer[key].reshape(-1) for m in models for layer in m])
        assert 0.85 < D * W.square().mean().item() < 1.15, key
    for key in ("b1", "b2"):
        b = torch.stack([layer[key] for m in models for layer in m])
        assert 0.24 < b.square().mean().sqrt().item() < 0.36, key


def test_random_tfn_pair_is_float64_and_drawn_from_the_generator_only(default_dtype):
    """The same generator seed gives the same pair, float64, whatever the global seed and default dtype."""
    draw = lambda: ex.random_tfn_pair(3, 2, 2, torch.Generator().manual_seed(5))
    a = under(default_dtype, F64, 1, draw)
    b = under(default_dtype, torch.float32, 2, draw)
    assert all(t.dtype == F64 for m in a for layer in m for t in layer.values())
    assert same_tensors(a, b)


def test_random_tfn_pair_error_messages_at_the_upper_limits():
    """D, H and n_layers are capped at 10⁴: the first argument out of range is named with the admissible range
    (the later arguments are also invalid here, so a looser cap would report another one)."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"^D=10001 is out of range: it must lie in \[1, 10000\]$"):
        ex.random_tfn_pair(10**4 + 1, 0, 0, g)
    with pytest.raises(ValueError, match=r"^H=10001 is out of range: it must lie in \[1, 10000\]$"):
        ex.random_tfn_pair(1, 10**4 + 1, 0, g)
    with pytest.raises(ValueError, match=r"^n_layers=10001 is out of range: it must lie in \[1, 10000\]$"):
        ex.random_tfn_pair(1, 1, 10**4 + 1, g, ffn_bias_std=-1.0)
    with pytest.raises(ValueError, match=r"^ffn_bias_std must be a positive finite number, got -1\.0$"):
        ex.random_tfn_pair(1, 1, 1, g, ffn_bias_std=-1.0)


# ----------------------------------------------------------------------------------------------------------
# tfn_full_construction
def test_full_construction_error_messages():
    target, frozen = pair(D=4, H=1, L=2)
    with pytest.raises(ValueError, match=r"^target\[1\] lacks keys \['b1'\]$"):
        ex.tfn_full_construction(without(target, 0, "b1"), frozen, 2)
    with pytest.raises(ValueError, match=r"^frozen\[2\] lacks keys \['O'\]$"):
        ex.tfn_full_construction(target, without(frozen, 1, "O"), 2)
    with pytest.raises(ValueError, match=r"^target and frozen TFN must have the same depth, heads and width$"):
        ex.tfn_full_construction(target, frozen[:1], 2)
    with pytest.raises(ValueError, match=r"^rank=5 is out of range: it must lie in \[1, 4\]$"):
        ex.tfn_full_construction(target, frozen, 5)


def test_full_construction_keeps_float64_under_a_float32_default_dtype(default_dtype):
    """float64 models give the same float64 adapters under a float32 default dtype as under a float64 one, and an
    exact match (to float64 round-off amplified by the inverted W1, W2) at rank ⌈D/2⌉."""
    target, frozen = pair(D=4, H=1, L=2, seed=3)
    X = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    with default_dtype(torch.float32):
        adapted = ex.tfn_full_construction(target, frozen, 2)
    assert same_tensors(adapted, ex.tfn_full_construction(target, frozen, 2))
    assert all(layer[k].dtype == F64 for layer in adapted for k in ("Q", "dQ", "b1", "b2", "W2"))
    y = ex.tfn_forward(X, target)
    assert (ex.tfn_forward(X, adapted) - y).abs().max() < 1e-8 * y.abs().max()


# ----------------------------------------------------------------------------------------------------------
# tfn_construction_curve
def per_token_mse(model, target, X):
    """Σ over all entries of the squared difference, divided by the number of tokens n·N."""
    diff = ex.tfn_forward(X, model) - ex.tfn_forward(X, target)
    return float((diff * diff).sum()) / (X.shape[0] * X.shape[1])


def test_construction_curve_is_the_per_token_error_over_the_reference():
    """n = 5 sequences of N = 3 tokens of width D = 4 (N ≠ D, n·N ≠ 1): with ``reference=1`` the curve is the
    adapted model's per-token squared error; without it, that error over the frozen model's."""
    target, frozen = pair(D=4, H=1, L=2, seed=1)
    X = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    errs = [per_token_mse(ex.tfn_full_construction(target, frozen, R), target, X) for R in (1, 2)]
    assert errs[0] > 1e-3 and errs[1] < 1e-20
    raw = ex.tfn_construction_curve(target, frozen, [1, 2], X, reference=1.0)
    assert torch.allclose(raw, torch.tensor(errs, dtype=F64), rtol=1e-12, atol=1e-20)
    rel = ex.tfn_construction_curve(target, frozen, [1], X)
    assert rel.item() == pytest.approx(errs[0] / per_token_mse(frozen, target, X), rel=1e-12)


def test_construction_curve_is_float64_under_a_float32_default_dtype(default_dtype):
    target, frozen = pair(D=4, H=1, L=1, seed=1)
    X = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    with default_dtype(torch.float32):
        out = ex.tfn_construction_curve(target, frozen, [1], X)
    assert out.dtype == F64


def test_construction_curve_error_messages():
    target, frozen = pair(D=4, H=1, L=1, seed=1)
    X = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    with pytest.raises(ValueError, match=r"^ranks must be a non-empty list$"):
        ex.tfn_construction_curve(target, frozen, [], X)
    with pytest.raises(ValueError, match=r"^rank=5 is out of range: it must lie in \[1, 4\]$"):
        ex.tfn_construction_curve(target, frozen, [1, 5], X)
    with pytest.raises(ValueError, match=r"^the frozen model already equals the target on X \(zero error\)$"):
        ex.tfn_construction_curve(target, target, [1], X)
    with pytest.raises(ValueError, match=r"^reference must be a positive finite number, got -1\.0$"):
        ex.tfn_construction_curve(target, frozen, [1], X, reference=-1.0)


# ----------------------------------------------------------------------------------------------------------
# tfn_low_rank_frozen
def test_low_rank_frozen_follows_the_documented_recipe_from_the_generator():
    """Per layer, factor (in the order given) and head, the change is ``U S Vᵀ`` with ``U``, ``V`` the first k
    columns of the Q factor of a QR of a standard Gaussian (D, D) draw and ``S`` = 0.25 + 0.25·uniform draws:
    a replay of these draws from an equally seeded generator gives the frozen model to round-off. As
    properties, independent of the replay: each change has exactly k singular values, all in [0.25, 0.5]."""
    D, H, k, factors = 4, 2, 2, ("K", "O")
    target, _ = pair(D=D, H=H, L=2, seed=6)
    frozen = ex.tfn_low_rank_frozen(target, k, torch.Generator().manual_seed(8), factors=factors)
    g = torch.Generator().manual_seed(8)
    for t, f in zip(target, frozen):
        for key in ex.TFN_KEYS:
            if key not in factors:
                assert torch.equal(f[key], t[key])
        for key in factors:
            for h in range(H):
                U = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))[0][:, :k]
                V = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))[0][:, :k]
                S = torch.diag(0.25 + 0.25 * torch.rand(k, generator=g, dtype=F64))
                change = f[key][h] - t[key][h]
                assert torch.allclose(change, U @ S @ V.T, rtol=0, atol=1e-14)
                s = torch.linalg.svdvals(change)
                assert (s[:k] >= 0.25 - 1e-12).all() and (s[:k] <= 0.5 + 1e-12).all() and s[k:].max() < 1e-14


def test_low_rank_frozen_draws_in_the_models_dtype_from_the_generator_only(default_dtype):
    """A float64 target gives the same frozen model under any global seed and default dtype."""
    target, _ = pair(D=4, H=1, L=1, seed=6)
    draw = lambda: ex.tfn_low_rank_frozen(target, 2, torch.Generator().manual_seed(3))
    a = under(default_dtype, F64, 1, draw)
    b = under(default_dtype, torch.float32, 2, draw)
    assert a[0]["Q"].dtype == F64 and same_tensors(a, b)


def test_low_rank_frozen_error_messages():
    target, _ = pair(D=4, H=1, L=1)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"^target\[1\] lacks keys \['K'\]$"):
        ex.tfn_low_rank_frozen(without(target, 0, "K"), 1, g)
    bad = [dict(target[0], W1=torch.zeros(4, 3, dtype=F64))]
    with pytest.raises(ValueError, match=r"^target\[1\]\['W1'\] must be finite with shape \(4, 4\)$"):
        ex.tfn_low_rank_frozen(bad, 1, g)
    with pytest.raises(ValueError, match=r"^k=-1 is out of range: it must lie in \[0, 4\]$"):
        ex.tfn_low_rank_frozen(target, -1, g)


# ----------------------------------------------------------------------------------------------------------
# train_tfn_lora
TD, TH = 3, 2            # width and heads of the training tests


def train_pairs(S, L=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = [ex.random_tfn_pair(TD, TH, L, g, ffn_bias_std=0.5) for _ in range(S)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def reference_lora(targets, frozens, configs, *, steps, batch, n_tokens, seed, lr_factors, eval_X):
    """A second implementation: each (seed s, config c) trained on its own by textbook Adam (Kingma & Ba,
    Algorithm 1: betas 0.9 / 0.999, eps 1e-8 added to the bias-corrected root second moment; moments and step
    count restarted at each phase of ``lr_factors``) on the per-token squared error of one (batch, N, D) slice
    of the shared Gaussian draw. Parameters: per layer and attention key, ``W + B A`` with ``A`` (H, R, D)
    the first R rows of the ``N(0, 1/D)`` initialisation drawn for slice s·C + c (all keys and layers first,
    then one input draw per step) and ``B`` (H, D, R) from zero; feed-forward biases of every layer and the
    last layer's W2 added to from zero. Returns the adapted layers per (s, c) and the eval MSE per phase."""
    g = torch.Generator().manual_seed(seed)
    S, C, L, D = len(targets), len(configs), len(targets[0]), TD
    r_max = max(c["rank"] for c in configs)
    init = [{key: torch.randn(S * C, 1, TH, r_max, D, generator=g, dtype=F64) / math.sqrt(D)
             for key in ("Q", "K", "V", "O")} for _ in range(L)]
    per_phase = steps // len(lr_factors)
    Xs = [torch.randn(S, batch, n_tokens, D, generator=g, dtype=F64) for _ in range(steps)]
    models, curve = {}, torch.zeros(len(lr_factors), S, C, dtype=F64)
    for s in range(S):
        for c, cfg in enumerate(configs):
            R = cfg["rank"]
            params = []
            for l in range(L):
                layer = {}
                for key in ("Q", "K", "V", "O"):
                    layer["A" + key] = init[l][key][s * C + c, 0, :, :R].clone()
                    layer["B" + key] = torch.zeros(TH, D, R, dtype=F64)
                layer["b1"], layer["b2"] = torch.zeros(D, dtype=F64), torch.zeros(D, dtype=F64)
                if l == L - 1:
                    layer["W2"] = torch.zeros(D, D, dtype=F64)
                params.append(layer)
            flat = [p.requires_grad_(True) for layer in params for p in layer.values()]

            def model():
                out = []
                for f, p in zip(frozens[s], params):
                    new = dict(f)
                    for key in ("Q", "K", "V", "O"):
                        new[key] = f[key] + p["B" + key] @ p["A" + key]
                    new["b1"], new["b2"] = f["b1"] + p["b1"], f["b2"] + p["b2"]
                    if "W2" in p:
                        new["W2"] = f["W2"] + p["W2"]
                    out.append(new)
                return out

            t_all = 0
            for phase, factor in enumerate(lr_factors):
                m = [torch.zeros_like(p) for p in flat]
                v = [torch.zeros_like(p) for p in flat]
                for t in range(1, per_phase + 1):
                    X = Xs[t_all][s]
                    t_all += 1
                    diff = ex.tfn_forward(X, model()) - ex.tfn_forward(X, targets[s]).detach()
                    loss = (diff * diff).sum() / (batch * n_tokens)
                    grads = torch.autograd.grad(loss, flat)
                    with torch.no_grad():
                        for i, (p, gr) in enumerate(zip(flat, grads)):
                            m[i] = 0.9 * m[i] + 0.1 * gr
                            v[i] = 0.999 * v[i] + 0.001 * gr * gr
                            m_hat, v_hat = m[i] / (1 - 0.9**t), v[i] / (1 - 0.999**t)
                            p -= cfg["lr"] * factor * m_hat / (torch.sqrt(v_hat) + 1e-8)
                with torch.no_grad():
                    curve[phase, s, c] = per_token_mse(model(), targets[s], eval_X[s])
            with torch.no_grad():
                models[s, c] = model()
    return models, curve


def test_train_tfn_lora_matches_a_per_slice_adam_reference():
    """Two seeds × two configs (ranks 1 and 2 below r_max = 2, different learning rates), two layers, two heads,
    N = 4 tokens of width 3, feed-forward training on, two phases of ``lr_factors``: every adapted weight and the
    recorded test curve equal the per-(seed, config) textbook Adam to round-off (a changed initial scale, input
    draw, loss axis or an Adam detail moves the weights by far more than 1e-12)."""
    targets, frozens = train_pairs(2, L=2, seed=3)
    configs = [dict(rank=1, lr=0.05), dict(rank=2, lr=0.02)]
    eval_X = torch.randn(2, 3, 4, TD, generator=torch.Generator().manual_seed(4), dtype=F64)
    kw = dict(steps=4, batch=2, n_tokens=4, lr_factors=(1.0, 0.5), eval_X=eval_X)
    adapted, curve = ex.train_tfn_lora(targets, frozens, configs, generator=torch.Generator().manual_seed(9),
                                       train_ffn=True, dtype=F64, **kw)
    ref, ref_curve = reference_lora(targets, frozens, configs, seed=9, **kw)
    assert curve.shape == (2, 2, 2)
    assert torch.allclose(curve, ref_curve, rtol=1e-12, atol=0)
    moved = 0
    for (s, c), model in ref.items():
        for l, (lay, ref_lay) in enumerate(zip(adapted, model)):
            for key in ex.TFN_KEYS:
                got = lay[key][s, c if lay[key].shape[1] == 2 else 0].reshape(ref_lay[key].shape)
                assert torch.allclose(got, ref_lay[key], rtol=0, atol=1e-12), (s, c, l, key)
                moved += not torch.equal(ref_lay[key], frozens[s][l][key])
    assert moved == 4 * (4 + 2) * 2 + 4            # attention and biases of both layers, and the last W2


def test_train_tfn_lora_defaults_to_float32_and_accepts_a_single_seed():
    """One seed is a valid input; without ``dtype`` the training (and the adapters) are float32."""
    targets, frozens = train_pairs(1)
    out = ex.train_tfn_lora(targets, frozens, [dict(rank=1, lr=0.01)], steps=1, batch=1, n_tokens=2,
                            generator=torch.Generator().manual_seed(0))
    assert out[0]["Q"].shape == (1, 1, 1, TH, TD, TD) and out[0]["Q"].dtype == torch.float32


def test_train_tfn_lora_uses_the_generator_only_and_the_requested_dtype(default_dtype):
    """float64 training with feed-forward updates gives the same adapters whatever the global seed and the default
    dtype (every draw comes from the caller's generator, every tensor is in the requested dtype)."""
    targets, frozens = train_pairs(1, seed=1)
    run = lambda: ex.train_tfn_lora(targets, frozens, [dict(rank=2, lr=0.03)], steps=2, batch=20, n_tokens=2,
                                    generator=torch.Generator().manual_seed(2), dtype=F64, train_ffn=True)
    a = under(default_dtype, F64, 1, run)
    b = under(default_dtype, torch.float32, 2, run)
    assert a[0]["Q"].dtype == F64 and same_tensors(a, b)


def test_train_tfn_lora_error_messages():
    targets, frozens = train_pairs(2)
    cfg = [dict(rank=1, lr=0.01)]
    kw = dict(steps=1, batch=1, n_tokens=2, generator=torch.Generator().manual_seed(0))

    def fails(match, t=targets, f=frozens, configs=cfg, **extra):
        with pytest.raises(ValueError, match=match):
            ex.train_tfn_lora(t, f, configs, **{**kw, **extra})

    fails(r"^need one target and one frozen TFN per seed$", t=[], f=[])
    fails(r"^need one target and one frozen TFN per seed$", f=frozens[:1])
    fails(r"^targets\[0\]\[1\] lacks keys \['W2'\]$", t=[without(targets[0], 0, "W2"), targets[1]])
    fails(r"^target\[1\] lacks keys \['W2'\]$", t=[targets[0], without(targets[1], 0, "W2")])
    fails(r"^frozen\[1\] lacks keys \['V'\]$", f=[without(frozens[0], 0, "V"), frozens[1]])
    share = r"^all TFNs must share depth, heads and width$"
    deeper = train_pairs(2, L=2)
    fails(share, t=[targets[0], deeper[0][1]])                       # depth differs between pairs
    fails(share, t=deeper[0][:1], f=frozens[:1])                      # depth differs within a pair
    one_head = [{**layer, **{k: layer[k][:1] for k in ("Q", "K", "V", "O")}} for layer in targets[1]]
    fails(share, t=[targets[0], one_head])                            # heads of one target differ
    fails(r"^configs must be a non-empty list of dicts$", configs=[])
    fails(r"^rank=4 is out of range: it must lie in \[1, 3\]$", configs=[dict(rank=4, lr=0.01)])
    fails(r"^lr must be a positive finite number, got 0\.0$", configs=[dict(rank=1, lr=0.0)])
    seq = r"^lr_factors must be a non-empty sequence of positive numbers$"
    fails(seq, lr_factors={1.0})
    fails(seq, lr_factors="ab")
    fails(r"^lr_factors entry must be a positive finite number, got -0\.1$", lr_factors=(1.0, -0.1), steps=2)
    steps_range = r"^steps=%d is out of range: it must lie in \[1, 1000000000\]$"
    fails(steps_range % 0, steps=0)
    fails(steps_range % (10**9 + 1), steps=10**9 + 1, eval_X=torch.zeros(1))   # the step cap comes first
    fails(r"^eval_X must have shape \(S=2, n, N, D=3\)$", eval_X=[[0.0] * 3] * 2)
