"""Tests of lorabook.bounds with values computed independently of the code (closed forms, hand-built networks,
the distributions the factors are drawn from) and of each validation on both sides, with asymmetric shapes so
that a swapped axis or index shows."""
import math
import warnings
import re

import numpy as np
import pytest
import torch

from lorabook import bounds as bd

F64, F32 = torch.float64, torch.float32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def linear_mlp(W, b):
    """A one-layer network ``f(x) = (W + BA) x + b`` (no hidden layer) as an mlp dict."""
    W, b = torch.as_tensor(W, dtype=F64), torch.as_tensor(b, dtype=F64)
    return {"weights": [W], "biases": [b], "dims": [W.shape[1], W.shape[0]], "theta_pre_inf": 0.0}


# ------------------------------------------------------------------------------------------------ make_mlp
@pytest.mark.parametrize("i, name", [(0, "d"), (1, "W"), (2, "T"), (3, "D")])
def test_make_mlp_names_each_bad_size(i, name):
    args = [2, 3, 1, 2]
    args[i] = 0
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
        bd.make_mlp(*args, generator=gen())


def test_make_mlp_scales_dtype_and_sup_norm():
    d, W, D = 50, 400, 3
    mlp = bd.make_mlp(d, W, 1, D, generator=gen(1), dtype=F32)
    w0, w1 = mlp["weights"]
    assert mlp["dims"] == [d, W, D] and w0.shape == (W, d) and w1.shape == (D, W)
    # He scaling: std sqrt(2 / fan_in) (20,000 and 1,200 entries: 1 % and 4 % sampling error)
    assert abs(w0.double().std().item() / math.sqrt(2 / d) - 1) < 0.05
    assert abs(w1.double().std().item() / math.sqrt(2 / W) - 1) < 0.12
    # biases N(0, 0.1²): 400 entries in the hidden layer
    assert abs(mlp["biases"][0].double().std().item() / 0.1 - 1) < 0.15
    assert all(t.dtype == F32 for t in mlp["weights"] + mlp["biases"])
    every = torch.cat([t.reshape(-1) for t in mlp["weights"] + mlp["biases"]]).abs()
    assert mlp["theta_pre_inf"] == every.max().item()
    nob = bd.make_mlp(2, 3, 2, 4, generator=gen(), bias=False, dtype=F32)
    assert all(b.dtype == F32 and b.shape == (n,) and not b.any() for b, n in zip(nob["biases"], (3, 3, 4)))


# -------------------------------------------------------------------------------------------- draw_factors
def test_draw_factors_shapes_scale_and_dtype():
    mlp = bd.make_mlp(3, 40, 1, 2, generator=gen(), dtype=F32)
    Bs = bd.draw_factors(mlp, 2, 300, nu=0.3, generator=gen(1))
    assert [tuple(b.shape) for b in Bs] == [(300, 40, 2), (300, 2, 2)]
    assert all(b.dtype == F32 for b in Bs)
    assert abs(Bs[0].double().std().item() / 0.3 - 1) < 0.03            # 24,000 N(0, 0.3²) entries
    assert abs(Bs[0].double().mean().item()) < 0.01
    As = bd.draw_factors(mlp, 2, 300, nu=0.3, generator=gen(1), side="A", device="cpu")
    assert [tuple(a.shape) for a in As] == [(300, 2, 3), (300, 2, 40)] and As[0].dtype == F32
    with pytest.raises(ValueError, match="^n_draws must be a positive integer"):
        bd.draw_factors(mlp, 2, 0, nu=0.3, generator=gen())
    with pytest.raises(ValueError, match="^nu must be a positive"):
        bd.draw_factors(mlp, 2, 3, nu=0.0, generator=gen())


# ---------------------------------------------------------------------------------------- lora_mlp_forward
def test_lora_mlp_forward_one_layer_closed_form():
    W = [[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]                 # D = 2 outputs, d = 3 inputs
    mlp = linear_mlp(W, [0.25, -1.0])
    B = torch.tensor([[[1.0], [2.0]], [[-1.0], [0.5]]])     # S = 2, r = 1
    A = torch.tensor([[[0.5, 0.0, -1.0]], [[2.0, 1.0, 0.0]]])
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    out = bd.lora_mlp_forward(x, mlp, [B], [A])
    # slice 0: W + BA = [[1.5, -2, -0.5], [1, 3, -1]]; slice 1: [[-1, -3, 0.5], [1, 3.5, 1]]
    want = torch.tensor([[[-3.75, 3.0], [0.25, -8.0]], [[-5.25, 10.0], [5.25, -0.5]]])
    assert torch.allclose(out, want)


def _two_layer():
    mlp = bd.make_mlp(3, 8, 1, 2, generator=gen())                      # dims [3, 8, 2]
    Bs = bd.draw_factors(mlp, 2, 4, nu=1.0, generator=gen(1))
    As = bd.draw_factors(mlp, 2, 4, nu=1.0, generator=gen(2), side="A")
    return mlp, Bs, As, torch.rand(5, 3, generator=gen(3), dtype=F64)


def test_lora_mlp_forward_rejects_each_bad_factor():
    mlp, Bs, As, x = _two_layer()
    bd.lora_mlp_forward(x, mlp, Bs, As)
    bad = [
        ("need 2 factors", Bs + Bs[:1], As),                                  # one B too many
        ("common S", Bs, [As[0][:1], As[1]]),                                 # A with S = 1
        ("common S", Bs, [As[0][:, 0], As[1]]),                               # A 2-D with S rows
        ("common S", [Bs[0][:, :, 0], Bs[1]], As),                            # B 2-D (S, d_1)
        (r"do not fit a \(8, 3\) weight", Bs, [torch.zeros(4, 2, 5), As[1]]),  # A of the wrong input size
        (r"do not fit a \(8, 3\) weight", [torch.zeros(4, 5, 2), Bs[1]], As),  # B of the wrong output size
    ]
    for match, B_, A_ in bad:
        with pytest.raises(ValueError, match=match):
            bd.lora_mlp_forward(x, mlp, B_, A_)
    for bad_x in (torch.zeros(4), torch.zeros(4, 5, 3, 1)):
        with pytest.raises(ValueError, match="x must be"):
            bd.lora_mlp_forward(bad_x, mlp, Bs, As)


# ----------------------------------------------------------------------------------------- lipschitz_ratio
def test_lipschitz_ratio_closed_form_per_slice():
    """Linear network: f_A1 − f_A2 = B (A1 − A2) x, so both norms are hand-computable; the two slices
    differ in both numerator and denominator."""
    mlp = linear_mlp([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [1.0, 1.0, 1.0])   # D = 3, d = 2
    B = torch.tensor([[[1.0], [0.0], [2.0]], [[0.5], [1.5], [0.0]]])         # (2, 3, 1)
    A1 = torch.tensor([[[0.1, 0.2]], [[0.3, -0.4]]])                         # (2, 1, 2)
    A2 = torch.tensor([[[0.1, -0.3]], [[0.3, 0.6]]])
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # slice 0: ΔA = [0, 0.5], BΔA x rows: x1 → 0, x2 → [1, 0, 2]   → num 2,  den 0.5 → 4
    # slice 1: ΔA = [0, -1],  BΔA x:      x2 → [-1, -3, 0]          → num 3,  den 1   → 3
    r = bd.lipschitz_ratio(x, mlp, [B], [A1], [A2])
    assert torch.allclose(r, torch.tensor([4.0, 3.0]))


def test_lipschitz_ratio_takes_the_largest_layer_difference():
    mlp, Bs, As, x = _two_layer()
    A2 = [As[0] + 0.0, As[1].clone()]
    A2[0][0, 0, 0] += 0.2                                                  # slice 0: layer 1 moves by 0.2
    A2[1][0, 1, 3] -= 0.5                                                  #           layer 2 by 0.5
    A2[1][1:, 0, 0] += torch.tensor([0.1, 0.3, 0.05])                       # other slices: one entry each
    f = lambda A: bd.lora_mlp_forward(x, mlp, Bs, A)
    num = np.abs((f(As) - f(A2)).numpy()).reshape(4, -1).max(1)
    r = bd.lipschitz_ratio(x, mlp, Bs, As, A2)
    assert np.allclose(r.numpy(), num / np.array([0.5, 0.1, 0.3, 0.05]))


# -------------------------------------------------------------------------------------- minilm_head_logits
def _install_fake_minilm(monkeypatch, dtype=F64):
    """A stand-in for MiniLM's last LayerNorm (width 3, non-trivial γ, β, ε) and label directions, so that the
    head's arithmetic is checked on a hand-sized cache without loading the model."""
    from types import SimpleNamespace

    import lorabook.data as data

    ln = torch.nn.LayerNorm(3, eps=0.1, dtype=dtype)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        ln.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    layer = SimpleNamespace(output=SimpleNamespace(LayerNorm=ln))
    model = SimpleNamespace(encoder=SimpleNamespace(layer=[layer]))
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=dtype)
    monkeypatch.setattr(data, "load_minilm", lambda: (None, model))
    monkeypatch.setattr(data, "label_directions", lambda: dirs)
    return ln, dirs


@pytest.fixture
def fake_minilm(monkeypatch):
    return _install_fake_minilm(monkeypatch)


def _head_reference(cache, A, B, mask, ln, dirs):
    """Token by token in NumPy: LayerNorm(base + B (mask·A) h), mean per snippet, cosine difference / 0.05."""
    h, base, seg = cache["h"].double().numpy(), cache["base"].double().numpy(), cache["seg"].numpy()
    g, b, eps = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy(), ln.eps
    A, B, mask, dirs = (torch.as_tensor(t).double() for t in (A, B, mask, dirs))
    out = np.zeros((A.shape[0], cache["n"]))
    for s in range(A.shape[0]):
        dW = B[s].numpy() @ (A[s].numpy() * mask[s].numpy()[:, None])
        for j in range(cache["n"]):
            toks = []
            for t in np.flatnonzero(seg == j):
                x = base[t] + dW @ h[t]
                toks.append((x - x.mean()) / np.sqrt(x.var() + eps) * g + b)
            e = np.mean(toks, 0)
            e = e / np.linalg.norm(e)
            out[s, j] = (e @ dirs[0].numpy() - e @ dirs[1].numpy()) / 0.05
    return out


def test_minilm_head_logits_hand_sized_cache(fake_minilm):
    ln, dirs = fake_minilm
    g = gen(4)
    cache = {"h": torch.randn(5, 4, generator=g), "base": torch.randn(5, 3, generator=g),
             "seg": torch.tensor([1, 0, 1, 2, 2]), "n": 3}
    A, B = torch.randn(2, 2, 4, generator=g), torch.randn(2, 3, 2, generator=g)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])                          # slice 1 has rank 1
    other = torch.tensor([[0.0, 0.0, 1.0], [0.8, 0.6, 0.0]])
    got = bd.minilm_head_logits(cache, A, B, mask)
    assert np.allclose(got.detach().numpy(), _head_reference(cache, A, B, mask, ln, dirs))
    got = bd.minilm_head_logits(cache, A, B, mask, directions=other)
    assert np.allclose(got.detach().numpy(), _head_reference(cache, A, B, mask, ln, other))


def test_minilm_head_logits_rejects_each_bad_shape(fake_minilm):
    cache = {"h": torch.ones(5, 4), "base": torch.ones(5, 3), "seg": torch.tensor([0, 0, 1, 2, 2]), "n": 3}
    A, B, mask = torch.ones(2, 2, 4), torch.ones(2, 3, 2), torch.ones(2, 2)
    bd.minilm_head_logits(cache, A, B, mask)
    cases = [(A, torch.ones(3, 3, 2), mask),                  # B with another S, same rank
             (A, torch.ones(2, 3), mask),                     # B 2-D with S rows
             (torch.ones(2, 2), B, mask)]                     # A 2-D (S, r)
    for A_, B_, m_ in cases:
        with pytest.raises(ValueError, match="A must be"):
            bd.minilm_head_logits(cache, A_, B_, m_)
    with pytest.raises(ValueError, match="do not fit the cached layer"):
        bd.minilm_head_logits(cache, A, torch.ones(2, 5, 2), mask)          # B of the wrong output size
    with pytest.raises(ValueError, match="do not fit the cached layer"):
        bd.minilm_head_logits(cache, torch.ones(2, 2, 6), B, mask)          # A of the wrong input size


# ---------------------------------------------------------------------------------------- uniform_gap_lower
def _gap_setting():
    """A linear network f_A(x) = (W + β_s A) x + b (d = 2, D = 1, r = 1) with three slices β = 0.5, −0.3, 0.8, and
    targets y = f_0(x) − offset with offsets of size 0.4, 0.6 or 1.4: every residual stays at least 0.4 away from
    the kinks of min(|f − y|, 1) at 0 and 1 for the moves below (|Δf| ≤ 0.16), so the risks are linear in A there
    and Adam's steps are ±lr·M g/(|g| + ε) (constant gradients g)."""
    W, b = np.array([[1.0, -0.5]]), np.array([0.2])
    beta = np.array([0.5, -0.3, 0.8])
    rng = np.random.default_rng(5)

    def data(n):
        X = rng.uniform(0, 1, (3, n, 2))
        off = rng.choice([-1.4, -0.6, -0.4, 0.4, 0.6, 1.4], (3, n, 1))
        return X, X @ W.T + b - off

    sets = [data(n) for n in (4, 5, 6)]                      # train, ascent, evaluation
    mlp = linear_mlp(W, b)
    Bs = [torch.tensor(beta).reshape(3, 1, 1)]
    return W, b, beta, sets, mlp, Bs


def _risk(W, b, beta, A, X, Y):
    """Mean bounded absolute loss per slice, A (3, 1, 2)."""
    f = np.einsum("snd,sod->sno", X, W[None] + beta[:, None, None] * A) + b
    return np.minimum(np.abs(f - Y).sum(-1), 1.0).mean(-1)


def _expected_gap(W, b, beta, sets, starts, step, box=np.inf):
    tr_, asc, ev = sets
    R = lambda A, d: _risk(W, b, beta, A, *d)
    best = []
    for A0 in starts:
        # the direction of steepest ascent of R_a − R_N, by central differences (the risks are linear here)
        grad = np.zeros_like(A0)
        for j in range(2):
            e = np.zeros_like(A0)
            e[:, 0, j] = 1e-6
            grad[:, 0, j] = ((R(A0 + e, asc) - R(A0 + e, tr_)) - (R(A0 - e, asc) - R(A0 - e, tr_))) / 2e-6
        assert (np.abs(grad) > 1e-3).all()                      # every coordinate moves
        move = step * grad / (np.abs(grad) + 1e-8)               # Adam's step m̂ / (√v̂ + ε) for a constant gradient
        for A in (A0, np.clip(A0 + move, -box, box), np.clip(A0 - move, -box, box)):
            best.append(np.abs(R(A, ev) - R(A, tr_)))
    return np.array(best)                                       # (3 per start, S)


def test_uniform_gap_lower_two_adam_steps_closed_form():
    W, b, beta, sets, mlp, Bs = _gap_setting()
    M = 0.5
    starts = [np.tile([[[0.05, -0.05]]], (3, 1, 1)), np.zeros((3, 1, 2))]
    T = lambda a: [torch.tensor(a)]
    pairs = [tuple(torch.tensor(t) for t in s) for s in sets]
    # two steps of size lr·M = 0.05·0.5 each, along ± the sign of the gradient of R_a − R_N (up to Adam's ε)
    G = bd.uniform_gap_lower(mlp, Bs, [T(a) for a in starts], *pairs, M=M, steps=2)
    scores = _expected_gap(W, b, beta, sets, starts, 2 * 0.05 * M)
    assert np.allclose(G.numpy(), scores.max(0), rtol=1e-12, atol=1e-14)
    # the setting exercises every candidate: the first start wins somewhere, the descent direction somewhere
    assert (scores[:3].max(0) > scores[3:].max(0) + 1e-6).any()
    assert (scores[2::3].max(0) > np.maximum(scores[0::3], scores[1::3]).max(0) + 1e-6).any()


def test_uniform_gap_lower_projects_onto_the_box():
    """One step of size lr·M = 30·M leaves the box in every coordinate: the projection puts A on ±M."""
    W, b, beta, sets, mlp, Bs = _gap_setting()
    M, A0 = 0.25, np.zeros((3, 1, 2))
    pairs = [tuple(torch.tensor(t) for t in s) for s in sets]
    G = bd.uniform_gap_lower(mlp, Bs, [[torch.tensor(A0)]], *pairs, M=M, steps=1, lr=30.0)
    want = _expected_gap(W, b, beta, sets, [A0], 30 * M, box=M).max(0)
    assert np.allclose(G.numpy(), want, rtol=1e-12, atol=1e-14)


def test_uniform_gap_lower_checks_name_each_argument():
    _, _, _, sets, mlp, Bs = _gap_setting()
    pairs = [tuple(torch.tensor(t) for t in s) for s in sets]
    M = 0.5
    edge = [torch.full((3, 1, 2), M * (1 + 1e-9))]               # within the rounding tolerance: accepted
    bd.uniform_gap_lower(mlp, Bs, [edge], *pairs, M=M, steps=1)
    with pytest.raises(ValueError, match="box"):
        bd.uniform_gap_lower(mlp, Bs, [[torch.full((3, 1, 2), M * (1 + 3e-9))]], *pairs, M=M, steps=1)
    zero = [[torch.zeros(3, 1, 2)]]
    with pytest.raises(ValueError, match="^M must be a positive"):
        bd.uniform_gap_lower(mlp, Bs, zero, *pairs, M=0.0, steps=1)
    with pytest.raises(ValueError, match="^steps must be a positive integer"):
        bd.uniform_gap_lower(mlp, Bs, zero, *pairs, M=M, steps=0)
    X, Y = pairs[1]
    with pytest.raises(ValueError, match="^X contains NaN"):
        bd.uniform_gap_lower(mlp, Bs, zero, pairs[0], (X * np.nan, Y), pairs[2], M=M, steps=1)
    with pytest.raises(ValueError, match="^Y contains NaN"):
        bd.uniform_gap_lower(mlp, Bs, zero, pairs[0], (X, Y * np.nan), pairs[2], M=M, steps=1)


# ---------------------------------------------------------------------------------------- init_head_factors
def test_init_head_factors_distributions_dtypes_and_seed():
    d_in, d_out, r_max = 300, 200, 4
    modes, ranks = ["both", "B", "A", "A"], [2, 4, 1, 4]
    f = bd.init_head_factors(modes, ranks, r_max, d_in=d_in, d_out=d_out, generator=gen(7))
    assert all(f[k].dtype == F32 for k in ("A", "B", "train_A", "train_B", "rank_mask"))     # the default dtype
    assert f["train_A"].tolist() == [1, 0, 1, 1] and f["train_B"].tolist() == [1, 1, 0, 0]
    assert f["rank_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    for i in (0, 1):                         # "both" and "B": A ~ N(0, 1/d_in) (1,200 entries), B = 0
        A = f["A"][i].double()
        assert abs(A.std().item() * math.sqrt(d_in) - 1) < 0.08 and not f["B"][i].any()
        assert torch.linalg.matrix_rank(A).item() == r_max                     # rows drawn independently
    for i, r in ((2, 1), (3, 4)):            # "A": B ~ N(0, 1/r) (800 entries), A = 0
        B = f["B"][i].double()
        assert abs(B.std().item() * math.sqrt(r) - 1) < 0.1 and not f["A"][i].any()
        assert torch.linalg.matrix_rank(B).item() == r_max
    again = bd.init_head_factors(modes, ranks, r_max, d_in=d_in, d_out=d_out, generator=gen(7))
    assert torch.equal(again["A"], f["A"]) and torch.equal(again["B"], f["B"])          # seeded by generator
    f64 = bd.init_head_factors(["A"], [1], 2, d_in=3, d_out=2, generator=gen(), dtype=F64)
    assert all(f64[k].dtype == F64 for k in ("A", "B", "train_A", "train_B", "rank_mask"))


def test_init_head_factors_checks_name_each_argument():
    with pytest.raises(ValueError, match="equal length"):
        bd.init_head_factors(["A", "B"], [1], 2, d_in=3, d_out=2, generator=gen())
    with pytest.raises(ValueError, match="^r_max must be a positive integer"):
        bd.init_head_factors(["A"], [1], 0, d_in=3, d_out=2, generator=gen())
    with pytest.raises(ValueError, match="^rank must be a positive integer"):
        bd.init_head_factors(["A"], [0], 2, d_in=3, d_out=2, generator=gen())


# ------------------------------------------------------------------------------------------- output_witness
def _witness_mlp():
    """d = D = 1, one hidden layer of width 4, zero biases; f(1) = (w2 + B2 A2) relu(w1 + B1 A1)."""
    w1 = torch.tensor([[0.5], [-0.2], [0.3], [0.1]])
    w2 = torch.tensor([[0.2, 0.1, -0.3, 0.05]])
    mlp = {"weights": [w1, w2], "biases": [torch.zeros(4), torch.zeros(1)], "dims": [1, 4, 1], "theta_pre_inf": 0.5}
    B1 = torch.tensor([[[1.0], [0.5], [-1.0], [2.0]], [[-0.5], [1.0], [0.3], [-1.0]]])      # (S = 2, 4, r = 1)
    B2 = torch.tensor([[[1.5]], [[-0.8]]])
    return mlp, [B1, B2]


def _box_bound(mlp, Bs, M):
    """An upper bound on |f(1)| over |A_ij| ≤ M, per slice (triangle inequality, layer by layer)."""
    w1, w2 = (w.double() for w in mlp["weights"])
    B1, B2 = (b.double() for b in Bs)
    h = torch.relu(w1[None, :, 0] + M[:, None] * B1.abs().sum(-1))                       # (S, 4)
    return ((w2.abs()[None, 0] + M[:, None] * B2.abs().sum((-1, -2))[:, None]) * h).sum(-1)


def test_output_witness_reaches_target_stays_in_box_and_defaults():
    mlp, Bs = _witness_mlp()
    M = torch.tensor([1.0, 1.0])
    s = bd.output_witness(mlp, Bs, M, target=1.0, steps=60)
    assert ((s >= 1 - 1e-3) & (s <= _box_bound(mlp, Bs, M) + 1e-12)).all()
    # projection: 40 steps of size lr·M = M would leave the box many times over; |f(1)| obeys the box bound
    small = torch.tensor([0.01, 0.02])
    s = bd.output_witness(mlp, Bs, small, target=50.0, steps=40, lr=1.0)
    assert (s <= _box_bound(mlp, Bs, small) + 1e-12).all()
    # default lr 0.05: one Adam step moves every entry by at most 0.05·M
    s = bd.output_witness(mlp, Bs, torch.tensor([4.0, 4.0]), target=50.0, steps=1)
    assert (s <= _box_bound(mlp, Bs, torch.tensor([0.2, 0.2])) + 1e-12).all()
    # default target 1: at A = 0, f(1) = 100·(0.2·0.5 − 0.3·0.3 + 0.05·0.1) = 1.5 ≥ 1, so the hinge is flat
    # and A never moves
    big = {**mlp, "weights": [mlp["weights"][0], 100 * mlp["weights"][1]]}
    s = bd.output_witness(big, Bs, M, steps=3)
    assert torch.allclose(s, torch.tensor([1.5, 1.5]), rtol=1e-12)


def test_output_witness_scalar_box_float32_and_checks():
    mlp, Bs = _witness_mlp()
    m32 = {**mlp, "weights": [w.float() for w in mlp["weights"]], "biases": [b.float() for b in mlp["biases"]]}
    s = bd.output_witness(m32, [b.float() for b in Bs], 1.0, steps=60)        # scalar M, float32 network
    assert s.dtype == F32 and s.shape == (2,) and (s >= 1 - 1e-3).all()
    for bad in (0.0, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, float("nan")])):
        with pytest.raises(ValueError, match="M must be positive"):
            bd.output_witness(mlp, Bs, bad, steps=1)
    with pytest.raises(ValueError, match="common S"):                       # factors of two batch sizes
        bd.output_witness(mlp, [Bs[0], torch.cat([Bs[1], Bs[1]])], torch.tensor([1.0, 1.0]), steps=1)


# -------------------------------------------------------------------------------------- train_frozen_factor
def test_train_frozen_factor_one_adam_step_closed_form():
    """Linear network f(x) = (W + B A) x + b with D = 2 outputs and n = 3 samples: the loss is the mean over
    samples of ‖f(x) − y‖², its gradient at A = 0 is (2/n) Σ_i Bᵀ(f_i − y_i) x_iᵀ, and Adam's first step with the
    default lr 0.01 moves A to −0.01 g/(|g| + ε)."""
    W, b = np.array([[1.0, -0.5], [0.3, 0.8]]), np.array([0.1, -0.2])
    mlp = linear_mlp(W, b)
    B = np.array([[[1.0], [-2.0]], [[0.5], [0.7]]])                          # (S = 2, D = 2, r = 1)
    X = np.array([[[0.2, 0.9], [1.0, 0.3], [0.5, 0.5]], [[0.1, 0.4], [0.7, 0.2], [0.9, 1.0]]])
    Y = np.array([[[0.5, 0.1], [1.2, -0.3], [0.0, 0.4]], [[-0.2, 0.6], [0.3, 0.3], [1.1, 0.0]]])
    R = X @ W.T + b - Y                                                      # residuals at A = 0, (S, n, D)
    g = 2 / 3 * np.einsum("sdr,snd,sne->sre", B, R, X)                       # (S, r, d)
    (A,) = bd.train_frozen_factor(mlp, [torch.tensor(B)], torch.tensor(X), torch.tensor(Y), M=1.0, steps=1)
    assert np.allclose(A.numpy(), -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-13, atol=0)
    # a box smaller than the step: the projection puts every entry on ±M
    (A,) = bd.train_frozen_factor(mlp, [torch.tensor(B)], torch.tensor(X), torch.tensor(Y), M=0.004, steps=1)
    assert np.array_equal(A.numpy(), -0.004 * np.sign(g))


def test_train_frozen_factor_float32_and_names():
    mlp = bd.make_mlp(2, 4, 1, 3, generator=gen(), dtype=F32)
    Bs = bd.draw_factors(mlp, 1, 2, nu=1.0, generator=gen(1))
    X, Y = torch.rand(2, 5, 2, dtype=F32), torch.zeros(2, 5, 3, dtype=F32)
    As = bd.train_frozen_factor(mlp, Bs, X, Y, M=1.0, steps=2)
    assert [a.dtype for a in As] == [F32, F32] and [tuple(a.shape) for a in As] == [(2, 1, 2), (2, 1, 4)]
    with pytest.raises(ValueError, match="^X contains NaN"):
        bd.train_frozen_factor(mlp, Bs, X * np.nan, Y, M=1.0, steps=1)
    with pytest.raises(ValueError, match="^Y contains NaN"):
        bd.train_frozen_factor(mlp, Bs, X, Y * np.nan, M=1.0, steps=1)


# ------------------------------------------------------------------------------------- teacher_student_gaps
def _tsg(**kw):
    cfg = dict(d=3, W=5, T=1, D=2, r=1, N=6, draws=4, steps=3, lr=1e-2, M=1.0, nu=0.5, noise=0.3, n_test=40,
               seed=1, dtype="float64")
    return {**cfg, **kw}


def _np_forward(net, X):
    """The ReLU MLP of eq. (2) at A = 0, in NumPy."""
    h = np.asarray(X, dtype=float)
    ws, bs = net["weights"], net["biases"]
    for t, (w, b) in enumerate(zip(ws, bs)):
        h = h @ w.double().numpy().T + b.double().numpy()
        if t < len(ws) - 1:
            h = np.maximum(h, 0)
    return h


@pytest.fixture
def spy(monkeypatch):
    """Record the networks teacher_student_gaps builds and the data and factors it trains on."""
    seen = {"nets": [], "train": []}
    make, train = bd.make_mlp, bd.train_frozen_factor

    def make_spy(*a, **k):
        seen["nets"].append(make(*a, **k))
        return seen["nets"][-1]

    def train_spy(mlp, frozen, X, Y, **k):
        As = train(mlp, frozen, X, Y, **k)
        seen["train"].append((frozen, X, Y, As))
        return As

    monkeypatch.setattr(bd, "make_mlp", make_spy)
    monkeypatch.setattr(bd, "train_frozen_factor", train_spy)
    return seen


def test_teacher_student_gaps_data_noise_and_risks(spy):
    cfg = _tsg(noise=1.0)
    out = bd.teacher_student_gaps(cfg)
    student, teacher = spy["nets"]
    (Bs, X, Y, As), = spy["train"]
    assert student["dims"] == teacher["dims"] == [3, 5, 2]
    assert tuple(X.shape) == (4, 6, 3) and tuple(Y.shape) == (4, 6, 2) and 0 <= X.min() and X.max() <= 1
    assert [tuple(b.shape) for b in Bs] == [(4, 5, 1), (4, 2, 1)]
    eps = Y.numpy() - _np_forward(teacher, X)                                # label noise N(0, 1), per draw
    assert 0.7 < eps.std() < 1.3 and np.abs(eps).max() < 4
    assert not np.allclose(eps[0], eps[1])
    # risks: bounded absolute loss min(‖f − y‖₁, 1) at the trained A, averaged over the N samples
    with torch.no_grad():
        pred = bd.lora_mlp_forward(X, student, Bs, As).numpy()
    train = np.minimum(np.abs(pred - Y.numpy()).sum(-1), 1).mean(-1)
    assert set(out) == {"gap", "se", "train", "test", "gap_zero", "theta_pre_inf", "max_abs_A"}
    assert np.allclose(out["train"], train, rtol=1e-12) and np.allclose(out["gap"], out["test"] - out["train"])
    assert out["se"].shape == (4,) and (out["se"] > 0).all() and (out["se"] < 0.5 / np.sqrt(40)).all()
    every = torch.cat([t.reshape(-1) for t in student["weights"] + student["biases"]]).abs().max().item()
    assert out["theta_pre_inf"] == every and out["max_abs_A"] == max(a.abs().max().item() for a in As)
    # gap_zero: the risk of the pretrained network (A = 0), by our own Monte-Carlo sample of 200,000 points,
    # minus its training risk on each draw's data
    rng = np.random.default_rng(0)
    Xr = rng.uniform(0, 1, (200_000, 3))
    Yr = _np_forward(teacher, Xr) + rng.standard_normal((200_000, 2))
    risk = np.minimum(np.abs(_np_forward(student, Xr) - Yr).sum(-1), 1).mean()
    train0 = np.minimum(np.abs(_np_forward(student, X) - Y.numpy()).sum(-1), 1).mean(-1)
    assert np.allclose(out["gap_zero"] + train0, risk, atol=0.006)          # 3 standard errors of the estimate


def test_teacher_student_gaps_crossed_layout_and_seeding(spy):
    cfg = _tsg(r=2, draws=6, n_data=2, n_B=3, lr=1e-9)
    out = bd.teacher_student_gaps(cfg)
    (Bs, X, Y, As), = spy["train"]
    assert [tuple(b.shape) for b in Bs] == [(6, 5, 2), (6, 2, 2)]
    assert torch.equal(X[0], X[2]) and torch.equal(X[3], X[5]) and not torch.equal(X[0], X[3])   # data-major
    assert torch.equal(Bs[0][0], Bs[0][3]) and not torch.equal(Bs[0][0], Bs[0][1])            # factor i % n_B
    assert out["max_abs_A"] <= 3 * 1e-9 * (1 + 1e-6)                  # the config's lr: 3 steps of at most lr
    again = bd.teacher_student_gaps(cfg)
    assert np.array_equal(again["gap_zero"], out["gap_zero"])        # the 200,000-point sample is seeded too


def test_teacher_student_gaps_float32_and_ascent_from_one_step():
    out = bd.teacher_student_gaps(_tsg(dtype="float32", ascent_steps=1, n_ascent=10, n_eval=20))
    assert out["G_lower"].shape == (4,) and all(np.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("bad, name", [
    (dict(draws=0), "draws"), (dict(N=0), "N"), (dict(n_test=0), "n_test"),
    (dict(n_data=2), "n_B"), (dict(n_B=2), "n_data"), (dict(n_data=0, n_B=2), "n_data"),
    (dict(n_data=2, n_B=0), "n_B"), (dict(ascent_steps=1, n_ascent=0, n_eval=5), "n_ascent"),
    (dict(ascent_steps=1, n_ascent=5, n_eval=0), "n_eval")])
def test_teacher_student_gaps_names_each_bad_count(bad, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
        bd.teacher_student_gaps(_tsg(**bad))


def test_output_witness_first_step_on_a_linear_network():
    """One layer, f(1) = w + Σ_k B_k A_k: the hinge's gradient in A_k is −2(1 − |f|) sign(f) B_k, so Adam's first
    step with the default lr moves A_k by 0.05·M·sign(f) sign(B_k) (up to ε) and |f(1)| = |f_0| + 0.05·M·‖B‖₁."""
    mlp = {"weights": [torch.tensor([[0.2]])], "biases": [torch.zeros(1)], "dims": [1, 1], "theta_pre_inf": 0.2}
    B = torch.tensor([[[1.0, -2.0]], [[0.5, 0.25]]])                        # (S = 2, 1, r = 2)
    M = torch.tensor([0.5, 3.0])
    s = bd.output_witness(mlp, [B], M, steps=1)
    g = 2 * 0.8 * B.abs()                                                   # |gradient| at A = 0 (1 − 0.2 = 0.8)
    want = 0.2 + (0.05 * M[:, None, None] * B.abs() * g / (g + 1e-8)).sum((-1, -2))
    assert torch.allclose(s, want, rtol=1e-13)


# ------------------------------------------------------------------------------------- minilm_asymmetry_run
def _fake_pool(d_in=5):
    """Hand-sized float32 caches (snippets of 1–3 tokens, width d_in → 3) standing in for minilm_pool."""
    g = gen(8)

    def cache(lens):
        seg = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
        return {"h": torch.randn(len(seg), d_in, generator=g, dtype=F32),
                "base": torch.randn(len(seg), 3, generator=g, dtype=F32), "seg": seg, "n": len(lens)}

    y = lambda *v: torch.tensor(v, dtype=F32)
    return {"train": cache([1, 2, 3, 1, 2, 2]), "dev": cache([2, 1, 3, 1, 2]), "test": cache([1, 1, 2, 3, 2]),
            "y_train": y(1, 1, 1, 0, 0, 0), "y_dev": y(1, 0, 1, 0, 0), "y_test": y(0, 1, 1, 0, 1),
            "zero_shot": {"train": 0.5, "dev": 0.25, "test": 0.75}}


def _bce(z, y):
    return np.where(y > 0.5, np.logaddexp(0, -z), np.logaddexp(0, z)).mean()


def _balanced(z, y):
    pos, wrong = y > 0.5, (z > 0) != (y > 0.5)
    return 0.5 * (wrong[pos].mean() + wrong[~pos].mean())


def _adam(loss, Ps, lr, lims, steps):
    """Full-batch Adam (β = 0.9, 0.999, ε = 1e-8) on the arrays Ps with gradients by central differences, each
    projected onto |entries| ≤ its limit after every step."""
    Ps = [P.copy() for P in Ps]
    m = [np.zeros_like(P) for P in Ps]
    v = [np.zeros_like(P) for P in Ps]
    for t in range(1, steps + 1):
        grads = []
        for k, P in enumerate(Ps):
            g = np.zeros_like(P)
            for i in np.ndindex(P.shape):
                up, down = [Q.copy() for Q in Ps], [Q.copy() for Q in Ps]
                up[k][i] += 1e-6
                down[k][i] -= 1e-6
                g[i] = (loss(*up) - loss(*down)) / 2e-6
            grads.append(g)
        for k, g in enumerate(grads):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            step = (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
            Ps[k] = np.clip(Ps[k] - lr * step, -lims[k], lims[k])
    return Ps


def test_minilm_asymmetry_run_two_steps_against_a_reference(monkeypatch):
    """Two full-batch Adam steps per configuration on a hand-sized pool, redone with the NumPy head of
    _head_reference: trained factors (the frozen one never moves), box per mode (|A| ≤ m√r, |B| ≤ m√d_in),
    losses, balanced errors, the fraction of entries on the box and the parameter counts. Configurations of one
    (mode, lr) share a program."""
    ln, dirs = _install_fake_minilm(monkeypatch, F32)
    pool = _fake_pool()
    monkeypatch.setattr(bd, "minilm_pool", lambda **kw: pool)
    inits, init = {}, bd.init_head_factors

    def init_spy(modes, ranks, *a, **k):
        f = init(modes, ranks, *a, **k)
        inits[(modes[0], ranks[0])] = {key: v.clone() for key, v in f.items()}
        return f

    monkeypatch.setattr(bd, "init_head_factors", init_spy)
    m, d_in = 0.05, 5
    configs = [["A", 2, 10.0], ["A", 1, 10.0], ["B", 1, 0.03], ["B", 2, 10.0], ["both", 2, 10.0],
               ["both", 2, 0.05]]
    run = lambda: bd.minilm_asymmetry_run({"pool": {}, "seed": 3, "configs": configs, "steps": 2, "m": m})
    out = run()
    logits = lambda split, A, B: _head_reference(pool[split], A[None], B[None], np.ones((1, A.shape[0])), ln,
                                                 dirs)[0]
    y = {s: pool[f"y_{s}"].numpy() for s in ("train", "dev", "test")}
    loss = lambda A, B: _bce(logits("train", A, B), y["train"])
    near = lambda P, lim: np.abs(P) >= lim * (1 - 1e-6)
    for i, (mode, r, lr) in enumerate(configs):
        A0, B0 = (inits[(mode, r)][k][0].double().numpy() for k in ("A", "B"))
        boxA, boxB = m * math.sqrt(r), m * math.sqrt(d_in)
        if mode == "A":
            (A,), B = _adam(lambda A: loss(A, B0), [A0], lr, [boxA], 2), B0
            on = near(A, boxA)
        elif mode == "B":
            A, (B,) = A0, _adam(lambda B: loss(A0, B), [B0], lr, [boxB], 2)
            on = near(B, boxB)
        else:
            A, B = _adam(loss, [np.clip(A0, -boxA, boxA), B0], lr, [boxA, boxB], 2)
            on = np.concatenate([near(A, boxA).ravel(), near(B, boxB).ravel()])
        assert out["params"][i] == on.size and out["at_box"][i] == on.mean()
        assert np.isclose(out["train_loss"][i], loss(A, B), rtol=1e-4)
        if i == 2:                 # lr 0.03: B passes m√r (A's box at r = 1) but stays inside its own box m√d_in
            assert out["at_box"][i] == 0 and np.abs(B).max() > m
        for split in ("train", "dev", "test"):
            assert out[f"{split}_err"][i] == _balanced(logits(split, A, B), y[split])
    assert out["zero_shot"] == pool["zero_shot"] and out["configs"] == [tuple(c) for c in configs]
    again = run()
    assert all(np.array_equal(out[k], again[k]) for k in ("train_loss", "at_box"))     # seeded


@pytest.mark.parametrize("bad, name", [(dict(m=0.0), "m"), (dict(steps=0), "steps"),
                                       (dict(configs=[["A", 0, 0.1]]), "rank"), (dict(configs=[["A", 1, 0.0]]), "lr")])
def test_minilm_asymmetry_run_names_each_bad_value(monkeypatch, bad, name):
    monkeypatch.setattr(bd, "minilm_pool", lambda **kw: _fake_pool())
    cfg = {"pool": {}, "seed": 0, "configs": [["A", 1, 0.1]], "steps": 1, "m": 0.1, **bad}
    with pytest.raises(ValueError, match=f"^{name} must be a positive"):
        bd.minilm_asymmetry_run(cfg)


# ------------------------------------------------------------------------------------- random_feature_probe
def _probe_pool(n=(30, 20, 20), d_in=4, scale=1.0, offset=0.0):
    """Snippets of 1–3 identical tokens whose mean activation has first coordinate 1 + label (+ noise 0.1): the
    label is linearly separable in the mean-pooled activations, and not in the token sums (1–3 × the mean).
    Two thirds of the snippets are positive; ``scale`` multiplies the informative coordinate and ``offset`` is
    added to it."""
    rng = np.random.default_rng(4)
    pool = {"zero_shot": {}}
    for split, k in zip(("train", "dev", "test"), n):
        y = (np.arange(k) % 3 != 0).astype(int)                              # two positives in three
        cnt = rng.integers(1, 4, k)
        mean = rng.normal(0, 1, (k, d_in))
        mean[:, 0] = scale * (1 + y + 0.1 * rng.normal(size=k)) + offset
        seg = np.repeat(np.arange(k), cnt)
        pool[split] = {"h": torch.tensor(mean[seg], dtype=F32), "base": torch.tensor(rng.normal(size=(len(seg), 3)),
                       dtype=F32), "seg": torch.tensor(seg), "n": k}
        pool[f"y_{split}"] = torch.tensor(y, dtype=F32)
    return pool


def test_random_feature_probe_pools_by_the_mean_and_uses_each_C(monkeypatch):
    _install_fake_minilm(monkeypatch, F32)
    pool = _probe_pool()
    assert bd.random_feature_probe(pool, [None]) == {None: 0.0}             # separable: a large C fits it
    # a tiny C shrinks every weight to ~0 and the (unpenalised) intercept predicts the majority class
    # everywhere: balanced error 1/2
    assert bd.random_feature_probe(pool, [None], Cs=(1e-6,)) == {None: 0.5}
    out = bd.random_feature_probe(pool, [1, 2, 3], Cs=(1.0,))
    assert out == bd.random_feature_probe(pool, [1, 2, 3], seed=0, Cs=(1.0,))   # the default seed, reproducibly
    with pytest.raises(ValueError, match="^rank must be a positive integer"):
        bd.random_feature_probe(pool, [0])
    # each feature is standardised on its own: an informative coordinate 1000× smaller than the others is as
    # usable as any (without per-feature scaling, C = 1 would shrink its weight, ~1000, away)
    assert bd.random_feature_probe(_probe_pool(scale=1e-3), [None], Cs=(1.0,)) == {None: 0.0}
    # and centred: an offset of 300 (300 standard deviations) does not hinder the fit
    assert bd.random_feature_probe(_probe_pool(offset=300.0), [None], Cs=(1.0,)) == {None: 0.0}


def test_random_feature_probe_fits_converge_where_lbfgs_needs_over_100_iterations(monkeypatch):
    """200 snippets of 100 correlated features (a spectrum falling over three decades) with C = 100: lbfgs needs
    about 180 iterations here (and 111–121 on the chapter's rank-256 probe at `default`), so the probe's fits must
    be allowed more than sklearn's default 100 and must end converged."""
    from sklearn.exceptions import ConvergenceWarning

    _install_fake_minilm(monkeypatch, F32)
    rng = np.random.default_rng(4)
    pool = {"zero_shot": {}}
    for split, k in (("train", 200), ("dev", 40), ("test", 40)):
        y = (np.arange(k) % 3 != 0).astype(int)
        mean = rng.normal(size=(k, 100)) @ (np.logspace(0, -3, 100)[:, None] * rng.normal(size=(100, 100)))
        mean[:, 0] += 0.5 * y
        pool[split] = {"h": torch.tensor(mean, dtype=F32), "base": torch.tensor(rng.normal(size=(k, 3)), dtype=F32),
                       "seg": torch.arange(k), "n": k}
        pool[f"y_{split}"] = torch.tensor(y, dtype=F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        out = bd.random_feature_probe(pool, [None], Cs=(100.0,))
    assert 0 <= out[None] < 0.5


@pytest.mark.parametrize("key", sorted(_tsg()))
def test_teacher_student_gaps_names_each_missing_key(key):
    cfg = _tsg()
    del cfg[key]
    with pytest.raises(ValueError, match=re.escape(f"config lacks keys ['{key}']")):
        bd.teacher_student_gaps(cfg)


# ------------------------------------------------------------------------------------- chapter_setting, gap_sweep
@pytest.mark.parametrize("name, draws, steps, n_test", [("quick", 16, 150, 1000), ("default", 64, 300, 4000),
                                                        ("paper", 256, 1000, 20000)])
def test_chapter_setting_is_the_documented_setting_at_each_scale(name, draws, steps, n_test):
    """The chapter's text and its cached results rely on this configuration: d = 4, W = 16, T = 2, D = 1, ν = 0.5,
    M = 1, noise 0.5 (the docstring), Adam at 2e-2 from seed 0 in float32, and the sizes of each scale."""
    from lorabook.config import get_scale

    assert bd.chapter_setting(get_scale(name)) == {
        "d": 4, "W": 16, "T": 2, "D": 1, "M": 1.0, "nu": 0.5, "noise": 0.5, "lr": 0.02, "seed": 0,
        "dtype": "float32", "draws": draws, "steps": steps, "n_test": n_test, "version": 1, "scale": name}


def test_gap_sweep_runs_each_pair_once_in_order_and_validates_the_ranks(monkeypatch, tmp_path):
    """gap_sweep fills r and N into the base config, returns {(r, N): result} with integer keys in the given
    order, and (through the on-disk cache) does not rerun a finished pair. Setting 1 needs 1 ≤ r < W."""
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    calls = []

    def fake(config, **kw):
        calls.append(dict(config))
        return {"r": config["r"], "N": config["N"], "W": config["W"]}

    monkeypatch.setattr(bd, "teacher_student_gaps", fake)
    base = {"W": 5, "seed": 3}
    out = bd.gap_sweep(base, [(np.int64(4), 7.0), (1, 2)], progress=False)
    assert list(out) == [(4, 7), (1, 2)] and all(type(k) is int for pair in out for k in pair)
    assert out[(4, 7)] == {"r": 4, "N": 7, "W": 5} and out[(1, 2)] == {"r": 1, "N": 2, "W": 5}
    assert calls == [{"W": 5, "seed": 3, "r": 4, "N": 7}, {"W": 5, "seed": 3, "r": 1, "N": 2}]
    assert base == {"W": 5, "seed": 3}                                            # the base is not modified
    assert bd.gap_sweep(base, [(1, 2)], progress=False) == {(1, 2): out[(1, 2)]} and len(calls) == 2   # cached
    assert [p.name for p in tmp_path.iterdir()] == ["ch3_gaps"]                  # the chapter's cache folder
    for r in (0, 5):
        with pytest.raises(ValueError, match=rf"^rank r={r} is out of range: Setting 1 needs 1 ≤ r < W = 5"):
            bd.gap_sweep(base, [(1, 2), (r, 3)], progress=False)
    with pytest.raises(ValueError, match="^N must be a positive integer"):
        bd.gap_sweep(base, [(1, 0)], progress=False)
    assert len(calls) == 2                                                       # nothing ran for a bad pair
