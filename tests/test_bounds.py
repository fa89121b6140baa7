"""Unit and property tests of lorabook.bounds (float64, fast)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lorabook import bounds as bd




KW = dict(r=4, N=1000, delta=0.1, T=2, W=32, d=4, D=1, M=1.0, nu=0.5, theta_pre_inf=2.0)
# A setting where min(1, .) does not saturate, worked by hand: r = 1, W = 2, T = 1, d = D = 1 gives q = 2;
# delta = 0.75 gives eps = 1 - sqrt(0.25) = 0.5; M = nu = 1: R = sqrt(2 ln(2*2/0.5)) = sqrt(2 ln 8) = 2.0393340;
# R0 = 0.5: 2R + 2R0 = 5.0786680, A = (1*1 + 1) ln(5.0786680) = 3.2500980;
# first term 4 * sqrt(2) * 6 * sqrt(3.2500980) / sqrt(10^4) = 0.6118916, second sqrt(8 ln 4 / 10^4) = 0.0333022.
HAND = dict(r=1, N=10**4, delta=0.75, T=1, W=2, d=1, D=1, M=1.0, nu=1.0, theta_pre_inf=0.5)


def test_param_count():
    assert bd.lora_param_count(2, 32, 3, 4, 1) == 2 * (32 * 2 + 5)
    with pytest.raises(ValueError, match="r must be a positive integer"):
        bd.lora_param_count(0, 32, 3, 4, 1)
    with pytest.raises(ValueError, match="W must be a positive integer"):
        bd.lora_param_count(1, 2.5, 3, 4, 1)


def test_lemma4_radius_and_bound_value():
    R = bd.lemma4_radius(1.0, 0.5, 4, 32, 0.1)
    assert math.isclose(R, 0.5 * math.sqrt(8 * math.log(640)))
    assert math.isclose(bd.lemma4_radius(1.0, 1.0, 1, 2, 0.5), 2.0393340, rel_tol=1e-7)
    assert math.isclose(bd.theorem1_eps(0.75), 0.5) and math.isclose(bd.theorem1_eps(0.19), 0.1)
    # unsaturated: a log(2R + R0) slip gives 0.62536, q for sqrt(q) gives 0.89865
    assert math.isclose(bd.kratsios_upper_bound(**HAND), 0.6451938, rel_tol=1e-6)
    # N = 10: saturated first term 4, second sqrt(8 ln 4 / 10) = 1.0531075
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, N=10)), 5.0531075, rel_tol=1e-6)
    # c = 3, T = 1: A = 4 ln(5.0786680) = 6.5001961 -> first term 4*sqrt(2)*6*sqrt(6.5001961)/100 = 0.8653463
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, c=3.0)), 0.8986475, rel_tol=1e-6)
    # an explicit eps overrides the one inside R only: eps = 0.25 -> R = sqrt(2 ln 16) = 2.3548200,
    # A = 2 ln(5.7096401) = 3.4843120, first term 0.6335556
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, eps=0.25)), 0.6668578, rel_tol=1e-6)


def test_corrected_bound_value():
    # R' = 1 * 1 * (sqrt(2/pi) + sqrt(2 ln((T W + D)/eps))) = 0.7978846 + sqrt(2 ln 6) = 2.6909030;
    # A = 2 ln(2 R' + 1) = 3.7069023, first term 4*sqrt(2)*6*sqrt(3.7069023)/100 = 0.6534792
    assert math.isclose(bd.corrected_radius(1.0, 1.0, 1, 3, 0.5), 2.6909030, rel_tol=1e-7)
    assert math.isclose(bd.corrected_upper_bound(**HAND), 0.6867814, rel_tol=1e-6)
    big = dict(KW, r=12, N=10**7)
    assert bd.corrected_upper_bound(**big) > bd.kratsios_upper_bound(**big)
    with pytest.raises(ValueError, match="delta"):
        bd.corrected_upper_bound(**dict(HAND, delta=0.0))


def test_first_nonvacuous_N():
    assert bd.first_nonvacuous_N(lambda N: 10 / math.sqrt(N)) == 101
    assert bd.first_nonvacuous_N(lambda N: 0.5) == 1
    assert bd.first_nonvacuous_N(lambda N: 2.0, N_max=1000) is None
    b = bd.first_nonvacuous_N(lambda N: bd.kratsios_upper_bound(**dict(HAND, N=N)))
    assert bd.kratsios_upper_bound(**dict(HAND, N=b)) < 1 <= bd.kratsios_upper_bound(**dict(HAND, N=b - 1))
    with pytest.raises(ValueError, match="callable"):
        bd.first_nonvacuous_N(3.0)


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
    (dict(delta=0.0), "delta"), (dict(delta=1.5), "delta"), (dict(eps=1.5), "eps"), (dict(N=0), "N must"),
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
    # rows: one factor of 8 rows vs the whole stack; value by hand: 2 * (3 sqrt(2/pi) + sqrt(6 ln(8/0.1)))
    assert math.isclose(bd.corrected_radius(2.0, 1.0, 3, 8, 0.1), 2 * (2.3936537 + 5.1275881), rel_tol=1e-7)


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


def test_head_logits_group_matches_reference():
    """The grouped head (no (n_tok, 384) outputs) equals the direct LayerNorm-and-pool path, values and
    gradients, for several adapters of different ranks at once."""
    from lorabook.data import label_directions

    texts = ["a wonderful, moving film", "dull and far too long", "ok", "not bad at all, really"]
    cache = bd.minilm_head_cache(texts)
    d = label_directions()
    g = torch.Generator().manual_seed(1)
    Ps = [(cache["h"] @ torch.randn(1536, r, generator=g, dtype=torch.float32) / 40).requires_grad_(True) for r in (1, 3)]
    Bs = [(0.3 * torch.randn(384, r, generator=g, dtype=torch.float32)).requires_grad_(True) for r in (1, 3)]
    new = bd._head_logits_group(cache, Ps, Bs, d)
    grads = torch.autograd.grad(new.square().sum(), Ps + Bs)
    ref = torch.stack([bd._head_logits_from_proj(cache, p[None], b[None], d)[0] for p, b in zip(Ps, Bs)])
    ref_grads = torch.autograd.grad(ref.square().sum(), Ps + Bs)
    assert new.shape == (2, 4)
    assert torch.allclose(new, ref, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


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


def test_local_slopes_and_rate_growth():
    x = [1.0, 2.0, 8.0]
    y = np.array([[4.0, 2.0, 2.0], [4.0, 2.0, 2.0]])          # slope -1 then 0
    s, lo, hi = bd.local_slopes(x, y)
    assert np.allclose(s, [-1.0, 0.0]) and np.allclose(lo, s) and np.allclose(hi, s)
    runs = np.array([[1.0, 1.0], [3.0, 3.0]])                  # means 2 at both x: slope 0, CI spans runs
    s, lo, hi = bd.local_slopes([1.0, 4.0], runs)
    assert s[0] == 0.0 and lo[0] <= 0 <= hi[0]
    with pytest.raises(ValueError, match="increasing"):
        bd.local_slopes([2.0, 1.0], y[:, :2])
    with pytest.raises(ValueError, match="positive"):
        bd.local_slopes([1.0, 2.0], -np.ones((2, 2)))
    # y = (1, 1/2, 1/2) at N = (1, 4, 16): y sqrt(N) = (1, 1, 2) -> growth 2; with rate 1: (1, 2, 8) -> 8
    g = np.array([[1.0, 0.5, 0.5]])
    assert math.isclose(bd.rate_growth([1, 4, 16], g), 2.0)
    assert math.isclose(bd.rate_growth([1, 4, 16], g, rate=1.0), 8.0)
    assert math.isclose(bd.rate_growth([1, 4], np.array([[2.0, 0.5], [2.0, 1.5]])), 1.0)  # max at the start
    with pytest.raises(ValueError, match="positive"):
        bd.rate_growth([1, 4], np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="shape"):
        bd.rate_growth([1, 4, 9], g[:, :2])


def test_binomial_p_and_theorem2_ratio():
    from scipy.stats import binom
    # p = 1: K = N always, so no gap
    assert bd.binomial_exceed_prob(10, 5.0, p=1.0).item() == 0.0
    # p = 0.2, N = 5, s = 10: 10 |K/5 - 0.2| > 0.2 unless K = 1
    assert math.isclose(bd.binomial_exceed_prob(5, 10.0, p=0.2).item(), 1 - binom.pmf(1, 5, 0.2))
    with pytest.raises(ValueError, match="probability"):
        bd.binomial_exceed_prob(5, 1.0, p=1.5)
    # s = 1 for every draw, N = 16: P(|K - 8| > 1) / ((1 - 0.05)(1 - 3/4)); N = 4 is skipped (3/2 >= 1)
    p16 = 1 - binom.pmf([7, 8, 9], 16, 0.5).sum()
    assert math.isclose(bd.theorem2_ratio(np.ones(3), [4, 16], delta=0.1), p16 / (0.95 * 0.25))
    # half the draws without a witness halve it; C = 2 changes the denominator to (1 - 2/4)
    assert math.isclose(bd.theorem2_ratio(np.array([1.0, 0.0]), [16], delta=0.1, C=2.0), p16 / 2 / (0.95 * 0.5))
    # the minimum over N is taken: at N = 64 the ratio is larger than at N = 16
    p64 = 1 - binom.pmf([31, 32, 33], 64, 0.5).sum()
    r = bd.theorem2_ratio(np.ones(2), [16, 64], delta=0.2)
    assert math.isclose(r, min(p16 / (0.9 * 0.25), p64 / (0.9 * (1 - 3 / 8))))
    with pytest.raises(ValueError, match="no N"):
        bd.theorem2_ratio(np.ones(2), [4], delta=0.1)
    with pytest.raises(ValueError, match="non-empty"):
        bd.theorem2_ratio(np.ones((2, 2)), [16], delta=0.1)


def _t2_mlp(W=4, r=2, draws=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mlp = bd.make_mlp(1, W, 2, 1, generator=g, bias=False)
    return mlp, bd.draw_factors(mlp, r, draws, nu=1.0, generator=g)


def test_last_layer_witness():
    mlp, Bs = _t2_mlp()
    wit = bd.last_layer_witness(mlp, Bs, target=2.0)
    assert torch.allclose(wit["f1"], torch.full((6,), 2.0, dtype=torch.float64), atol=1e-12)
    assert all((a == 0).all() for a in wit["As"][:-1])
    # size by hand for draw 0: A = B^T (c - w) / |B|^2 with c = 2 h / |h|^2
    h = torch.ones(1, dtype=torch.float64)
    for w in mlp["weights"][:-1]:
        h = torch.relu(w @ h)
    B = Bs[-1][0, 0]
    A = torch.outer(B, 2 * h / h.dot(h) - mlp["weights"][-1][0]) / B.dot(B)
    assert torch.allclose(wit["As"][-1][0], A) and math.isclose(wit["size"][0].item(), A.abs().max().item())
    # a zero last factor has no witness
    Bz = [b.clone() for b in Bs]
    Bz[-1][1] = 0
    wz = bd.last_layer_witness(mlp, Bz)
    assert math.isinf(wz["size"][1].item()) and math.isfinite(wz["size"][0].item())
    with pytest.raises(ValueError, match="d = D = 1"):
        bd.last_layer_witness(bd.make_mlp(2, 4, 2, 1, generator=torch.Generator(), bias=False), Bs)
    with pytest.raises(ValueError, match="zero biases"):
        bd.last_layer_witness(bd.make_mlp(1, 4, 2, 1, generator=torch.Generator()), Bs)
    with pytest.raises(ValueError, match="frozen factors"):
        bd.last_layer_witness(mlp, Bs[:2])
    with pytest.raises(ValueError, match="shape"):
        bd.last_layer_witness(mlp, [Bs[0], Bs[1][:, :3], Bs[2]])


def test_paper_witness_needs_full_row_rank():
    # r = width: every B is square (invertible) or 1 x r, so eq. (25) emulates the identity and f(1) = 1
    mlp, Bs = _t2_mlp(W=2, r=2)
    assert torch.allclose(bd.paper_witness(mlp, Bs), torch.ones(6, dtype=torch.float64), atol=1e-9)
    # r < width: B B^+ is a projection and the construction misses
    mlp, Bs = _t2_mlp(W=8, r=2, draws=50)
    assert ((bd.paper_witness(mlp, Bs) - 1).abs() > 0.1).double().mean() > 0.5


def test_uniform_gap_lower():
    g = torch.Generator().manual_seed(3)
    mlp = bd.make_mlp(2, 6, 1, 1, generator=g)
    Bs = bd.draw_factors(mlp, 2, 4, nu=1.0, generator=g)
    zero = [torch.zeros(4, 2, w.shape[1], dtype=torch.float64) for w in mlp["weights"]]

    def sample(n):
        X = torch.rand(4, n, 2, generator=g, dtype=torch.float64)
        return X, X[..., :1] * 0.3

    tr, asc, ev = sample(8), sample(200), sample(400)
    G = bd.uniform_gap_lower(mlp, Bs, [zero], tr, asc, ev, M=0.5, steps=30)
    with torch.no_grad():
        risk = lambda d: bd.bounded_abs_loss(bd.lora_mlp_forward(d[0], mlp, Bs, zero), d[1]).mean(-1)
        start = (risk(ev) - risk(tr)).abs()
    assert G.shape == (4,) and (G >= start - 1e-12).all() and (G > start + 1e-3).any()
    with pytest.raises(ValueError, match="box"):
        bd.uniform_gap_lower(mlp, Bs, [[z + 1 for z in zero]], tr, asc, ev, M=0.5, steps=3)
    with pytest.raises(ValueError, match="starts"):
        bd.uniform_gap_lower(mlp, Bs, [], tr, asc, ev, M=0.5, steps=3)


def test_teacher_student_crossed_layout_and_members():
    cfg = dict(d=2, W=6, T=1, D=1, r=1, N=8, draws=6, steps=10, lr=1e-2, M=1.0, nu=0.5, noise=0.3,
               n_test=50, seed=0, dtype="float64", n_data=2, n_B=3)
    out = bd.teacher_student_gaps(cfg)
    gz = out["gap_zero"].reshape(2, 3)          # the A = 0 member depends on the data only
    assert np.allclose(gz, gz[:, :1]) and not np.isclose(gz[0, 0], gz[1, 0])
    assert not np.allclose(out["gap"].reshape(2, 3), out["gap"].reshape(2, 3)[:, :1])
    with pytest.raises(ValueError, match="crossed"):
        bd.teacher_student_gaps(dict(cfg, n_B=2))
    asc = bd.teacher_student_gaps(dict(cfg, ascent_steps=5, n_ascent=40, n_eval=60))
    assert asc["G_lower"].shape == (6,) and (asc["G_lower"] >= 0).all()
    assert np.array_equal(asc["gap"], out["gap"])                              # ascent does not touch training


def test_minilm_asymmetry_run_small():
    pool = dict(n_per_class=4, n_dev=12, n_test=12, split_seed=1)
    cfg = dict(pool=pool, seed=0, steps=3, m=0.001,
               configs=[["A", 2, 1e-2], ["A", 2, 1e-3], ["B", 3, 1e-2], ["both", 1, 1e-2]])
    out = bd.minilm_asymmetry_run(cfg)
    assert out["test_err"].shape == (4,) and out["params"].tolist() == [2 * 1536, 2 * 1536, 3 * 384, 1920]
    assert ((out["at_box"] >= 0) & (out["at_box"] <= 1)).all() and out["at_box"][0] > 0
    assert set(out["zero_shot"]) == {"train", "dev", "test"}
    with pytest.raises(ValueError, match="mode"):
        bd.minilm_asymmetry_run(dict(cfg, configs=[["C", 1, 1e-2]]))
    with pytest.raises(ValueError, match="lacks"):
        bd.minilm_asymmetry_run({"pool": pool})


def test_random_feature_probe_small():
    pool = bd.minilm_pool(n_per_class=4, n_dev=12, n_test=12, split_seed=1)
    out = bd.random_feature_probe(pool, [2, None], Cs=(0.1, 1.0))
    assert set(out) == {2, None} and all(0 <= v <= 1 for v in out.values())
    with pytest.raises(ValueError, match="ranks"):
        bd.random_feature_probe(pool, [])
    with pytest.raises(ValueError, match="Cs"):
        bd.random_feature_probe(pool, [2], Cs=(0.0,))


def test_balanced_error():
    y = torch.tensor([1.0, 1.0, 1.0, 0.0])
    lg = torch.tensor([1.0, -1.0, 2.0, 3.0])          # positives: 1 of 3 wrong; negatives: 1 of 1 wrong
    assert math.isclose(bd.balanced_error(lg, y), 0.5 * (1 / 3 + 1.0))
    assert bd.balanced_error(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0])) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        bd.balanced_error(lg, torch.ones(4))
    with pytest.raises(ValueError, match="equal-length"):
        bd.balanced_error(lg, y[:3])


@pytest.mark.parametrize("fn", [bd.kratsios_upper_bound, bd.corrected_upper_bound])
@pytest.mark.parametrize("name", ["r", "N", "T", "W", "d", "D"])
def test_bound_names_each_bad_integer(fn, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        fn(**dict(HAND, **{name: 0}))


@pytest.mark.parametrize("fn", [bd.kratsios_upper_bound, bd.corrected_upper_bound])
@pytest.mark.parametrize("name, bad, match", [("M", 0.0, "^M must"), ("nu", -1.0, "^nu must"),
                                              ("c", 0.0, "^c must"), ("delta", 0.0, "^delta="),
                                              ("theta_pre_inf", -1.0, "^theta_pre_inf must"),
                                              ("theta_pre_inf", "x", "^theta_pre_inf must")])
def test_bound_names_each_bad_number(fn, name, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(**dict(HAND, **{name: bad}))


@pytest.mark.parametrize("fn", [bd.lemma4_radius, bd.corrected_radius])
@pytest.mark.parametrize("i, name, bad", [(0, "M", 0.0), (1, "nu", 0.0), (2, "r", 0), (3, "W", 0),
                                          (4, "eps", 1.5)])
def test_radius_names_each_bad_argument(fn, i, name, bad):
    args = [1.0, 1.0, 2, 4, 0.1]
    args[i] = bad
    with pytest.raises(ValueError, match=rf"^{name}"):
        fn(*args)


@pytest.mark.parametrize("i, name", [(0, "r"), (1, "W"), (2, "T"), (3, "d"), (4, "D")])
def test_param_count_names_each_argument(i, name):
    args = [2, 32, 3, 4, 1]
    args[i] = 0
    with pytest.raises(ValueError, match=rf"^{name} must"):
        bd.lora_param_count(*args)


def test_first_nonvacuous_N_is_exact():
    for t in (2, 37, 38, 64, 999, 1000):
        assert bd.first_nonvacuous_N(lambda N, t=t: 0.5 if N >= t else 1.0, N_max=1000) == t
    assert bd.first_nonvacuous_N(lambda N: 1.5, N_max=100) is None      # between 1 and 2: still vacuous
    assert bd.first_nonvacuous_N(lambda N: 1.0, N_max=100) is None      # exactly 1 is vacuous
    with pytest.raises(ValueError, match="^N_max must"):
        bd.first_nonvacuous_N(lambda N: 0.5, N_max=0)


def test_box_radius_shapes_and_values():
    B = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=torch.float64)      # row sums of |B|: 3 and 1
    assert bd.box_radius(B, 2.0).item() == 6.0                              # a single (m, r) factor
    B4 = torch.zeros(2, 3, 2, 2, dtype=torch.float64)                       # (draws, layers, m, r)
    B4[1, 2, 0] = torch.tensor([1.0, -1.0])
    out = bd.box_radius(B4, 1.0)
    assert out.shape == (2, 3) and out[1, 2] == 2.0 and out.sum() == 2.0
    with pytest.raises(ValueError, match="^M must"):
        bd.box_radius(B, 0.0)
    with pytest.raises(ValueError, match="^B must"):
        bd.box_radius([[1.0]], 1.0)


def test_corrected_radius_scales_and_eps_one():
    # M = 2, nu = 0.5, r = 3, W = 8, eps = 0.1: 2 * 0.5 * (3 sqrt(2/pi) + sqrt(6 ln 80)) = 7.5212418
    assert math.isclose(bd.corrected_radius(2.0, 0.5, 3, 8, 0.1), 7.5212418, rel_tol=1e-7)
    # eps = 1 is allowed (delta = 1 in Theorem 1): sqrt(2/pi) + sqrt(2 ln 3) = 2.2801884
    assert math.isclose(bd.corrected_radius(1.0, 1.0, 1, 3, 1.0), 2.2801884, rel_tol=1e-7)
    assert math.isclose(bd.lemma4_radius(1.0, 1.0, 1, 2, 1.0), math.sqrt(2 * math.log(4)))


def test_theorem2_ratio_edges():
    from scipy.stats import binom
    p16 = 1 - binom.pmf([7, 8, 9], 16, 0.5).sum()
    assert math.isclose(bd.theorem2_ratio([1.0], [16], delta=0.1), p16 / (0.95 * 0.25))   # one draw
    with pytest.raises(ValueError, match="no N"):
        bd.theorem2_ratio([1.0], [9], delta=0.1, C=3.0)                     # C / sqrt(9) = 1: excluded
    with pytest.raises(ValueError, match="^C must"):
        bd.theorem2_ratio([1.0], [16], delta=0.1, C=0.0)
    with pytest.raises(ValueError, match="^N must"):
        bd.theorem2_ratio([1.0], [16, 0.5], delta=0.1, C=0.1)


def test_bound_values_in_each_regime():
    # T = 2 (q = 1 * (2 * 1 + 1 + 1) = 4): A = (1 * 2 + 1) ln(5.0786680) = 4.8751470,
    # first term 4 * 2 * 6 * sqrt(4.8751470) / 100 = 1.0598273 (min not saturated: 6 sqrt(qA/N) = 0.265)
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, T=2)), 1.0931295, rel_tol=1e-6)
    # a small radius: M = 0.1 gives R = 0.2039334; R0 = 0.55: 2R + 2R0 = 1.5078668, A = 2 ln(.) = 0.8213919
    # (0 < A < 1 is a valid bound): 4 sqrt(2) 6 sqrt(0.8213919) / 100 + 0.0333022 = 0.3409129
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, M=0.1, theta_pre_inf=0.55)), 0.3409129,
                        rel_tol=1e-6)
    # R0 = 0 is allowed: A = 2 ln(2 * 2.0393340) = 2.8115409 -> 0.6024151
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, theta_pre_inf=0.0)), 0.6024151, rel_tol=1e-6)
    # delta = 1 is allowed: eps = 1, R = sqrt(2 ln 4) = 1.6651092, A = 2 ln(4.3302184) = 2.9312360,
    # second term sqrt(8 ln 2 / 10^4) = 0.0235482 -> 0.6046492
    assert bd.theorem1_eps(1.0) == 1.0
    assert math.isclose(bd.kratsios_upper_bound(**dict(HAND, delta=1.0)), 0.6046492, rel_tol=1e-6)


def test_bounded_abs_loss_nonzero_targets():
    pred = torch.tensor([[0.5, 0.25], [3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.25, 0.5], [2.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(bd.bounded_abs_loss(pred, y), torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="^pred "):
        bd.bounded_abs_loss(pred * float("nan"), y)
    with pytest.raises(ValueError, match="^y "):
        bd.bounded_abs_loss(pred, y * float("nan"))


def test_binomial_exceed_prob_edges():
    from scipy.stats import binom
    # p = 0: K = 0 always, no gap; N = 4, s = 2: 2 |K/4 - 1/2| > 1/4 iff K != 2 (K = 1, 3 give exactly 1/2 > 1/4)
    assert bd.binomial_exceed_prob(6, 3.0, p=0.0).item() == 0.0
    assert math.isclose(bd.binomial_exceed_prob(4, 2.0).item(), 1 - binom.pmf(2, 4, 0.5))
    # the boundary is strict: s |K/N - 1/2| = 1/N exactly does not count (N = 4, s = 1, K = 1 or 3)
    assert math.isclose(bd.binomial_exceed_prob(4, 1.0).item(), binom.pmf([0, 4], 4, 0.5).sum())
    # integer witnesses are accepted as numbers
    assert np.allclose(bd.binomial_exceed_prob(4, [1, 2]), [binom.pmf([0, 4], 4, 0.5).sum(), 1 - 0.375])
    with pytest.raises(ValueError, match="^N must"):
        bd.binomial_exceed_prob(0, 1.0)


def test_gap_estimate_axes_and_limits():
    tr = torch.tensor([[[0.0, 0.2], [0.4, 0.4], [1.0, 0.0]], [[0.1, 0.1], [0.0, 0.0], [0.3, 0.5]]],
                      dtype=torch.float64)                                   # (2, 3, 2)
    te = torch.tensor([[[0.5, 0.7, 0.6, 0.2], [0.0, 0.0, 0.0, 0.4], [1.0, 1.0, 0.0, 0.0]],
                       [[0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.5, 0.7], [0.9, 0.1, 0.9, 0.1]]],
                      dtype=torch.float64)                                   # (2, 3, 4)
    gap, se = bd.gap_estimate(tr, te)
    # by hand: test means 0.5, 0.1, 0.5 / 0.2, 0.4, 0.5; train means 0.1, 0.4, 0.5 / 0.1, 0.0, 0.4
    assert torch.allclose(gap, torch.tensor([[0.4, -0.3, 0.0], [0.1, 0.4, 0.1]], dtype=torch.float64))
    # sample std of (0.5, 0.7, 0.6, 0.2) is 0.2160247, / sqrt(4)
    assert math.isclose(se[0, 0].item(), 0.2160247 / 2, rel_tol=1e-6) and se.shape == (2, 3)
    g1, _ = bd.gap_estimate(tr[0, 0], te[0, 0, :2])                        # 1-d inputs, two test samples
    assert math.isclose(g1.item(), 0.5) and g1.dim() == 0
    with pytest.raises(ValueError, match="at least 2"):
        bd.gap_estimate(tr[0, 0], te[0, 0, :1])
    with pytest.raises(ValueError, match="^train_losses must have shape"):
        bd.gap_estimate(tr[..., :0], te)
    with pytest.raises(ValueError, match="^test_losses must lie"):
        bd.gap_estimate(tr, te + 1)
    with pytest.raises(ValueError, match="leading shapes"):
        bd.gap_estimate(tr, te[:, :2])
    with pytest.raises(ValueError, match="^train_losses contains"):
        bd.gap_estimate(tr * float("nan"), te)


@pytest.mark.parametrize("fn", [bd.local_slopes, bd.loglog_slope])
def test_slope_bootstrap_matches_an_independent_resampling(fn):
    rng = np.random.default_rng(5)
    x = np.array([1.0, 2.0, 4.0])
    runs = np.exp(rng.normal(size=(7, 3))) * x ** -0.5
    for level in (0.95, 0.5):
        out = fn(x, runs, n_boot=300, level=level, generator=np.random.default_rng(11))
        idx = np.random.default_rng(11).integers(0, 7, size=(300, 7))
        if fn is bd.local_slopes:
            boots = np.stack([np.diff(np.log(runs[i].mean(0))) / np.diff(np.log(x)) for i in idx])
        else:
            boots = np.array([np.polyfit(np.log(x), np.log(runs[i].mean(0)), 1)[0] for i in idx])
        a = (1 - level) / 2
        assert np.allclose(out[1], np.quantile(boots, a, axis=0))
        assert np.allclose(out[2], np.quantile(boots, 1 - a, axis=0))
    one = fn(x, runs[0], n_boot=10)                                         # a single run (1-d)
    assert np.allclose(one[0], fn(x, runs[:1], n_boot=10)[0])
    for bad, match in ((dict(level=1.0), "^level"), (dict(n_boot=0), "^n_boot must")):
        with pytest.raises(ValueError, match=match):
            fn(x, runs, **bad)
    with pytest.raises(ValueError, match="finite"):
        fn(x, runs * np.nan)
    with pytest.raises(ValueError, match="positive"):
        fn(np.array([0.0, 2.0, 4.0]), runs)


def test_local_slopes_and_rate_growth_inputs():
    with pytest.raises(ValueError, match="increasing"):
        bd.local_slopes([1.0, 1.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        bd.local_slopes([1.0], np.ones((2, 1)))
    assert np.allclose(bd.local_slopes(torch.tensor([1.0, 2.0]).tolist(), torch.ones(3, 2))[0], [0.0])
    assert math.isclose(bd.rate_growth([1, 4], torch.tensor([[1.0, 1.0]])), 2.0)        # a tensor of runs
    assert math.isclose(bd.rate_growth([1, 4], [1.0, 0.25]), 1.0)                       # one run, 1-d
    with pytest.raises(ValueError, match="increasing"):
        bd.rate_growth([4, 1], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="^rate must"):
        bd.rate_growth([1, 4], [[1.0, 1.0]], rate=0.0)


def test_last_layer_witness_small_and_dead_hidden_states():
    mlp, Bs = _t2_mlp()
    wit = bd.last_layer_witness(mlp, Bs)                                    # default target 1
    assert torch.allclose(wit["f1"], torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert all(a.dtype == torch.float64 for a in wit["As"])
    small = {**mlp, "weights": [w * 0.1 for w in mlp["weights"]]}          # |h(1)|^2 < 1
    h = torch.ones(1, dtype=torch.float64)
    for w in small["weights"][:-1]:
        h = torch.relu(w @ h)
    assert 0 < h.dot(h).item() < 1
    ws = bd.last_layer_witness(small, Bs, target=0.5)
    assert torch.allclose(ws["f1"], torch.full((6,), 0.5, dtype=torch.float64), atol=1e-12)
    assert torch.isfinite(ws["size"]).all()
    dead = {**mlp, "weights": [-w.abs() if t == 0 else w for t, w in enumerate(mlp["weights"])]}
    wd = bd.last_layer_witness(dead, Bs)                                    # h(1) = 0: no witness
    assert torch.isinf(wd["size"]).all() and (wd["f1"].abs() < 1e-12).all()
    with pytest.raises(ValueError, match="^target must"):
        bd.last_layer_witness(mlp, Bs, target=0.0)
    bad = [b.clone() for b in Bs]
    bad[2][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^Bs\[2\] contains"):
        bd.last_layer_witness(mlp, bad)


def test_balanced_error_at_zero_logit_and_theorem2_delta():
    # a logit of exactly 0 predicts the negative class
    assert bd.balanced_error(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="^delta="):
        bd.theorem2_ratio([1.0], [16], delta=0.0)


def test_slope_and_rate_inputs_are_checked():
    with pytest.raises(ValueError, match="positive"):
        bd.local_slopes([1.0, 2.0], np.zeros((2, 2)))                     # a zero mean cannot be logged
    with pytest.raises(ValueError, match="positive"):
        bd.rate_growth([1, 2], np.zeros((2, 2)))
    for fn in (bd.local_slopes, bd.rate_growth, bd.loglog_slope):
        with pytest.raises(ValueError, match="need"):
            fn([1.0, 2.0], np.ones((2, 3)))                               # runs do not match x
        with pytest.raises(ValueError, match="need"):
            fn([1.0], np.ones((2, 1)))                                    # a single position
        with pytest.raises(ValueError, match="need"):
            fn(np.ones((2, 2)), np.ones((2, 2)))                          # x not 1-d
    for bad_x, bad_y in (([1, 2], [[1.0, np.nan]]), ([0, 2], [[1.0, 1.0]]), ([2, 2], [[1.0, 1.0]]),
                         ([1, np.inf], [[1.0, 1.0]])):
        with pytest.raises(ValueError, match="increasing"):
            bd.rate_growth(bad_x, bad_y)


def test_rate_growth_with_close_sample_sizes():
    # positions 1 and 1.5 (difference below 1) are valid: 0.5 * sqrt(1.5) / (1 * 1) = 0.6124 < 1, so growth 1
    assert math.isclose(bd.rate_growth([1.0, 1.5], [[1.0, 0.5]]), 1.0)
    assert math.isclose(bd.rate_growth([1.0, 1.5], [[1.0, 1.0]]), math.sqrt(1.5))
