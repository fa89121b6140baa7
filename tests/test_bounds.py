"""Unit and property tests of lorabook.bounds (float64, fast)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lorabook import bounds as bd




KW = dict(r=4, N=1000, delta=0.1, T=2, W=32, d=4, D=1, M=1.0, nu=0.5, eps=0.1, theta_pre_inf=2.0)


def test_param_count():
    assert bd.lora_param_count(2, 32, 3, 4, 1) == 2 * (32 * 2 + 5)
    with pytest.raises(ValueError, match="r must be a positive integer"):
        bd.lora_param_count(0, 32, 3, 4, 1)
    with pytest.raises(ValueError, match="W must be a positive integer"):
        bd.lora_param_count(1, 2.5, 3, 4, 1)


def test_lemma4_radius_and_bound_value():
    R = bd.lemma4_radius(1.0, 0.5, 4, 32, 0.1)
    assert math.isclose(R, 0.5 * math.sqrt(8 * math.log(640)))
    b = bd.kratsios_upper_bound(**KW)
    q = bd.lora_param_count(4, 32, 2, 4, 1)
    A = 3 * math.log(2 * R + 4.0)
    e = 1 - math.sqrt(0.9)
    expect = 4 * min(1, math.sqrt(q) * 6 * math.sqrt(A) / math.sqrt(1000)) + math.sqrt(8 * math.log(2 / e) / 1000)
    assert math.isclose(b, expect)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 10**7), r=st.integers(1, 31), c=st.floats(0.1, 5))
def test_bound_monotone(N, r, c):
    kw = dict(KW, N=N, r=r, c=c)
    b = bd.kratsios_upper_bound(**kw)
    assert b > 0
    assert bd.kratsios_upper_bound(**dict(kw, N=N + 1)) <= b + 1e-12          # decreasing in N
    assert bd.kratsios_upper_bound(**dict(kw, r=r + 1)) >= b - 1e-12          # increasing in r
    assert bd.kratsios_upper_bound(**dict(kw, delta=0.5)) <= bd.kratsios_upper_bound(**dict(kw, delta=0.05)) + 1e-12


@pytest.mark.parametrize("bad, match", [
    (dict(delta=0.0), "delta"), (dict(delta=1.5), "delta"), (dict(eps=1.0), "eps"), (dict(N=0), "N must"),
    (dict(r=-1), "r must"), (dict(T=1.5), "T must"), (dict(M=0.0), "M must"), (dict(nu=-1.0), "nu must"),
    (dict(M=1e-3, nu=1e-3, theta_pre_inf=0.1), "not positive"), (dict(theta_pre_inf=float("nan")), "theta_pre_inf"),
    (dict(c=0.0), "c must"),
])
def test_bound_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        bd.kratsios_upper_bound(**dict(KW, **bad))


def test_box_radius_is_attained_and_corrected_radius_holds():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(200, 16, 8, generator=g, dtype=torch.float64)
    rad = bd.box_radius(B, 2.0)
    A = 2.0 * torch.sign(B[:, :, :].transpose(1, 2))                           # A_kj = M sign(B_jk), (200, 8, 16)
    attained = (B @ A).abs().amax((-1, -2))
    assert torch.allclose(attained, rad)
    assert (rad >= 2.0 * B.sum(-1).abs().amax(-1) - 1e-12).all()             # ≥ the paper's |Σ_k B_ik|
    corr = bd.corrected_radius(2.0, 1.0, 8, 16, 0.1)
    assert (rad <= corr).double().mean() >= 0.9
    with pytest.raises(ValueError, match="B must have shape"):
        bd.box_radius(torch.ones(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        bd.box_radius(torch.full((2, 2), float("nan")), 1.0)
    with pytest.raises(ValueError, match="eps"):
        bd.corrected_radius(1.0, 1.0, 2, 4, 0.0)


def test_paper_radius_fails_for_large_rank():
    # Lemma 4's R grows like sqrt(r); the true sup grows like r: for r = 64, R is exceeded almost surely
    g = torch.Generator().manual_seed(1)
    B = torch.randn(100, 16, 64, generator=g, dtype=torch.float64)
    assert (bd.box_radius(B, 1.0) > bd.lemma4_radius(1.0, 1.0, 64, 16, 0.1)).all()


def test_loss_and_gap():
    p = torch.tensor([[0.2], [3.0]], dtype=torch.float64)
    assert torch.allclose(bd.bounded_abs_loss(p, torch.zeros_like(p)), torch.tensor([0.2, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="equal shapes"):
        bd.bounded_abs_loss(p, torch.zeros(3, 1, dtype=torch.float64))
    tr = torch.tensor([[0.0, 0.2]], dtype=torch.float64)
    te = torch.tensor([[0.5, 0.7, 0.6]], dtype=torch.float64)
    gap, se = bd.gap_estimate(tr, te)
    assert math.isclose(gap.item(), 0.5) and math.isclose(se.item(), 0.1 / math.sqrt(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bd.gap_estimate(tr, te + 1)
    with pytest.raises(ValueError, match="leading shapes"):
        bd.gap_estimate(tr, te.expand(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        bd.gap_estimate(tr * float("nan"), te)


def test_loglog_slope():
    x = np.array([10, 20, 40, 80.0])
    rng = np.random.default_rng(0)
    runs = 3 * x ** -0.5 * (1 + 0.05 * rng.standard_normal((50, 4)))
    s, lo, hi = bd.loglog_slope(x, runs)
    assert abs(s + 0.5) < 0.03 and lo <= s <= hi
    with pytest.raises(ValueError, match="positive and distinct"):
        bd.loglog_slope([1, 1, 2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        bd.loglog_slope([1, 2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="mean over runs"):
        bd.loglog_slope([1, 2], -np.ones((2, 2)))


def test_binomial_exceed_prob():
    # with s large, G > 1/N unless K = N/2 exactly
    from scipy.stats import binom
    assert math.isclose(bd.binomial_exceed_prob(10, 1e6).item(), 1 - binom.pmf(5, 10, 0.5))
    assert math.isclose(bd.binomial_exceed_prob(11, 1e6).item(), 1.0)
    # with s = 1: |K - N/2| > 1
    p = bd.binomial_exceed_prob(10, 1.0).item()
    assert math.isclose(p, 1 - binom.pmf([4, 5, 6], 10, 0.5).sum())
    assert bd.binomial_exceed_prob(10, 0.0).item() == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        bd.binomial_exceed_prob(10, -1.0)


def _mlp(seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return bd.make_mlp(3, 8, 2, 2, generator=g, **kw), g


def test_forward_matches_merged_weights():
    mlp, g = _mlp()
    Bs = bd.draw_factors(mlp, 2, 5, nu=0.7, generator=g)
    As = [torch.randn(5, 2, w.shape[1], generator=g, dtype=torch.float64) for w in mlp["weights"]]
    x = torch.rand(7, 3, generator=g, dtype=torch.float64)
    out = bd.lora_mlp_forward(x, mlp, Bs, As)
    assert out.shape == (5, 7, 2)
    s = 3
    h = x
    for t, (w, b) in enumerate(zip(mlp["weights"], mlp["biases"])):
        h = h @ (w + Bs[t][s] @ As[t][s]).T + b
        if t < 2:
            h = torch.relu(h)
    assert torch.allclose(out[s], h)
    with pytest.raises(ValueError, match="do not fit"):
        bd.lora_mlp_forward(x, mlp, Bs, [a.transpose(1, 2) for a in As])
    with pytest.raises(ValueError, match="x must be"):
        bd.lora_mlp_forward(torch.rand(7, 4, dtype=torch.float64), mlp, Bs, As)
    with pytest.raises(ValueError, match="r must"):
        bd.draw_factors(mlp, 0, 5, nu=1.0, generator=g)
    with pytest.raises(ValueError, match="side"):
        bd.draw_factors(mlp, 1, 5, nu=1.0, generator=g, side="C")


def test_training_respects_box_and_fits():
    mlp, g = _mlp(1)
    Bs = bd.draw_factors(mlp, 2, 4, nu=1.0, generator=g)
    X = torch.rand(4, 20, 3, generator=g, dtype=torch.float64)
    Y = torch.zeros(4, 20, 2, dtype=torch.float64)
    zero = [torch.zeros(4, 2, w.shape[1], dtype=torch.float64) for w in mlp["weights"]]
    before = (bd.lora_mlp_forward(X, mlp, Bs, zero) - Y).square().mean()
    As = bd.train_frozen_factor(mlp, Bs, X, Y, M=0.3, steps=200, lr=0.05)
    assert max(a.abs().max().item() for a in As) <= 0.3 + 1e-12
    after = (bd.lora_mlp_forward(X, mlp, Bs, As) - Y).square().mean()
    assert after < before
    Af = bd.draw_factors(mlp, 2, 4, nu=1.0, generator=g, side="A")
    Bt = bd.train_frozen_factor(mlp, Af, X, Y, M=0.3, steps=5, side="B")
    assert Bt[0].shape == (4, 8, 2)
    with pytest.raises(ValueError, match="M must"):
        bd.train_frozen_factor(mlp, Bs, X, Y, M=0.0, steps=5)
    with pytest.raises(ValueError, match="do not match"):
        bd.train_frozen_factor(mlp, Bs, X, Y[..., :1], M=1.0, steps=5)


def test_lipschitz_ratio_scales():
    mlp, g = _mlp(2)
    Bs = bd.draw_factors(mlp, 2, 3, nu=1.0, generator=g)
    A1 = [torch.randn(3, 2, w.shape[1], generator=g, dtype=torch.float64) * 0.1 for w in mlp["weights"]]
    A2 = [a + 1e-6 * torch.randn(a.shape, generator=g, dtype=torch.float64) for a in A1]
    x = torch.rand(50, 3, generator=g, dtype=torch.float64)
    ratio = bd.lipschitz_ratio(x, mlp, Bs, A1, A2)
    assert ratio.shape == (3,) and (ratio > 0).all()
    with pytest.raises(ValueError, match="coincide"):
        bd.lipschitz_ratio(x, mlp, Bs, A1, A1)


def test_teacher_student_gaps_small():
    cfg = dict(d=2, W=6, T=1, D=1, r=1, N=8, draws=3, steps=20, lr=1e-2, M=1.0, nu=0.5, noise=0.3, n_test=50,
               seed=0, dtype="float64")
    out = bd.teacher_student_gaps(cfg)
    assert out["gap"].shape == (3,) and out["max_abs_A"] <= 1.0 + 1e-12
    again = bd.teacher_student_gaps(cfg)
    assert np.array_equal(out["gap"], again["gap"])                          # seeded
    with pytest.raises(ValueError, match="lacks keys"):
        bd.teacher_student_gaps({"d": 2})
    with pytest.raises(ValueError, match="dtype"):
        bd.teacher_student_gaps(dict(cfg, dtype="int"))


def test_init_head_factors():
    g = torch.Generator().manual_seed(0)
    f = bd.init_head_factors(["A", "B", "both"], [1, 2, 3], 4, d_in=10, d_out=6, generator=g)
    assert f["A"].shape == (3, 4, 10) and f["B"].shape == (3, 6, 4)
    assert (f["A"][0] == 0).all() and (f["B"][0] != 0).all()                 # train A: B frozen random
    assert (f["B"][1] == 0).all() and (f["A"][1] != 0).all()                 # train B: A frozen random
    assert f["train_A"].tolist() == [1, 0, 1] and f["train_B"].tolist() == [0, 1, 1]
    assert f["rank_mask"].sum(1).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        bd.init_head_factors(["A"], [5], 4, generator=g)
    with pytest.raises(ValueError, match="mode"):
        bd.init_head_factors(["C"], [1], 4, generator=g)


def test_minilm_head_matches_loralinear():
    import copy
    from lorabook.data import load_minilm, hidden_before_layer, run_layers, zero_shot_logit
    from lorabook.lora import LoRALinear

    texts = ["a wonderful, moving film", "dull and far too long", "ok"]
    cache = bd.minilm_head_cache(texts)
    g = torch.Generator().manual_seed(0)
    f = bd.init_head_factors(["both"], [3], 4, generator=g)
    f["B"].normal_(generator=g).mul_(0.05)
    logits = bd.minilm_head_logits(cache, f["A"], f["B"], f["rank_mask"])
    model = copy.deepcopy(load_minilm()[1])
    dense = model.encoder.layer[5].output.dense
    lora = LoRALinear(dense, 3, train="both")
    with torch.no_grad():
        lora.A.copy_(f["A"][0, :3])
        lora.B.copy_(f["B"][0, :, :3])
    model.encoder.layer[5].output.dense = lora
    h, m = hidden_before_layer(texts, 5)
    ref = zero_shot_logit(run_layers(h, m, 5, model))
    assert torch.allclose(logits[0], ref, atol=1e-3)
    with pytest.raises(ValueError, match="rank_mask"):
        bd.minilm_head_logits(cache, f["A"], f["B"], f["rank_mask"][:, :2])


def test_output_witness():
    g = torch.Generator().manual_seed(0)
    mlp = bd.make_mlp(1, 8, 2, 1, generator=g, bias=False)
    mlp["weights"][-1] *= 0.01
    Bs = bd.draw_factors(mlp, 2, 6, nu=1.0, generator=g)
    s = bd.output_witness(mlp, Bs, torch.tensor([1e-4] * 3 + [2.0] * 3), steps=300)
    assert s.shape == (6,) and (s[3:] > 0.99).all() and (s[:3] < 0.99).all()
    with pytest.raises(ValueError, match="d = D = 1"):
        bd.output_witness(bd.make_mlp(2, 8, 2, 1, generator=g, bias=False), Bs, 1.0)
    with pytest.raises(ValueError, match="zero biases"):
        bd.output_witness(bd.make_mlp(1, 8, 2, 1, generator=g), Bs, 1.0)
    with pytest.raises(ValueError, match="M must be positive"):
        bd.output_witness(mlp, Bs, -1.0)
