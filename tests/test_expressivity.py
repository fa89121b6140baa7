"""Unit and property tests of lorabook.expressivity (Zeng & Lee constructions), float64."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorabook.expressivity import (
    cached_grid, fnn_grid_experiment, grid_configs, random_fnn_instance, random_tfn_instance, tfn_mse,
    train_tfn_lora,
    adapter_mse, fnn_construction, fnn_forward, lemma1_error, linear_construction, partition_bound,
    random_linear_instance, relu_bounds, tfn_construction, tfn_forward, train_fnn_adapters, uniform_inputs,
    uniform_partition,
)
from lorabook import expressivity as ex_mod
from lorabook.linalg import chain_product, numerical_rank

F64 = torch.float64



def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=F64) * scale


# ---------------------------------------------------------------- Lemma 1
@settings(max_examples=25, deadline=None)
@given(D=st.integers(2, 10), L=st.integers(1, 4), data=st.data())
def test_lemma1_construction_attains_sigma(D, L, data):
    rank_E = data.draw(st.integers(0, D))
    R = data.draw(st.integers(1, D))
    target, frozen = random_linear_instance(D, L, rank_E, gen(data.draw(st.integers(0, 10**6))))
    E = target - chain_product(frozen)
    deltas = linear_construction(target, frozen, R)
    assert len(deltas) == L
    assert all(numerical_rank(d, 1e-9) <= R for d in deltas)
    err = torch.linalg.matrix_norm(chain_product([W + d for W, d in zip(frozen, deltas)]) - target, 2).item()
    assert abs(err - lemma1_error(E, R, L)) <= 1e-8 * max(1.0, torch.linalg.matrix_norm(E, 2).item())
    if R * L >= rank_E:
        assert err <= 1e-8 * max(1.0, E.norm().item())


def test_lemma1_error_values():
    E = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=F64))
    assert lemma1_error(E, 1, 2) == 3.0
    assert lemma1_error(E, 2, 2) == 0.0
    assert lemma1_error(E, 1, 1) == 4.0


def test_lemma1_bad_inputs():
    g = gen()
    target, frozen = random_linear_instance(4, 2, 2, g)
    with pytest.raises(ValueError, match="rank"):
        linear_construction(target, frozen, 0)
    with pytest.raises(ValueError, match="rank"):
        linear_construction(target, frozen, 5)
    with pytest.raises(ValueError, match="shape"):
        linear_construction(target[:3], frozen, 1)
    with pytest.raises(ValueError, match="square"):
        linear_construction(target, [frozen[0][:, :3], frozen[1]], 1)
    bad = target.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        linear_construction(bad, frozen, 1)
    sing = frozen[0].clone()
    sing[0] = 0.0
    with pytest.raises(ValueError, match="singular"):
        linear_construction(target, [sing, frozen[1]], 1)
    with pytest.raises(ValueError, match="rank"):
        lemma1_error(target, 0, 2)


def test_lemma1_singular_intermediate_raises():
    # ∏W = I, E = -I: ∏W + LR_1(E) = diag(0, 1) is singular, which the lemma excludes
    D = 2
    frozen = [torch.eye(D, dtype=F64), torch.eye(D, dtype=F64)]
    with pytest.raises(ValueError, match="singular"):
        linear_construction(torch.zeros(D, D, dtype=F64), frozen, 1)


# ---------------------------------------------------------------- ReLU FNNs
def fnn_instance(D, L, Lbar, seed):
    g = gen(seed)
    tw = [randn(D, D, g=g, scale=1 / math.sqrt(D)) for _ in range(Lbar)]
    tb = [randn(D, g=g, scale=0.3) for _ in range(Lbar)]
    fw = [randn(D, D, g=g, scale=1 / math.sqrt(D)) for _ in range(L)]
    return tw, tb, fw, g


@settings(max_examples=15, deadline=None)
@given(D=st.integers(2, 8), Lbar=st.integers(1, 3), M=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_fnn_construction_exact_above_threshold(D, Lbar, M, seed):
    L = Lbar * M
    tw, tb, fw, g = fnn_instance(D, L, Lbar, seed)
    R = math.ceil(D / M)
    deltas, biases = fnn_construction(tw, tb, fw, R, input_radius=math.sqrt(D))
    assert all(numerical_rank(d, 1e-9) <= R for d in deltas)
    x = uniform_inputs((500, D), g, dtype=F64)
    f = fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases)
    fbar = fnn_forward(x, tw, tb)
    assert (f - fbar).abs().max() <= 1e-7 * max(1.0, fbar.abs().max().item())


def test_fnn_construction_valid_on_whole_ball_not_just_sample():
    D, L = 6, 2
    tw, tb, fw, g = fnn_instance(D, L, 1, 3)
    deltas, biases = fnn_construction(tw, tb, fw, 3, input_radius=2.0)
    # inputs on the sphere of radius 2, in directions that most decrease each pre-activation
    A = fw[0] + deltas[0]
    x = -2.0 * A / A.norm(dim=1, keepdim=True)
    pre = x @ A.T + biases[0]
    assert pre.min() >= 1.0 - 1e-9                      # margin holds on the boundary of the set


def test_lemma2_error_is_relu_of_residual_and_bounds():
    D, L, R = 8, 2, 2
    tw, tb, fw, g = fnn_instance(D, L, 1, 5)
    tb = [tb[0] + 50.0]                                  # every target ReLU active: the error is (Ŵ − W̄) x
    deltas, biases = fnn_construction(tw, tb, fw, R, input_radius=math.sqrt(D))
    x = uniform_inputs((4000, D), g, dtype=F64)
    f = fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases)
    fbar = fnn_forward(x, tw, tb)
    E = tw[0] - chain_product(fw)
    U, S, Vh = torch.linalg.svd(E)
    resid = -(U[:, R * L:] * S[R * L:]) @ Vh[R * L:]    # LR(E) − E
    assert torch.allclose(f - fbar, x @ resid.T, atol=1e-9)
    Sigma = x.T @ x / len(x)
    b = relu_bounds(E, R, L, Sigma)
    mse = (f - fbar).square().sum(-1).mean().item()
    assert mse <= b["corrected"] * (1 + 1e-9)
    assert b["paper"] <= b["corrected"]


def test_partition_bound_holds():
    D, L, Lbar, R = 6, 4, 2, 1
    tw, tb, fw, g = fnn_instance(D, L, Lbar, 7)
    deltas, biases = fnn_construction(tw, tb, fw, R, input_radius=math.sqrt(D))
    x = uniform_inputs((4000, D), g, dtype=F64)
    err = (fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases) - fnn_forward(x, tw, tb)).norm(dim=-1).mean()
    b = partition_bound(tw, tb, fw, R, x.T @ x / len(x))
    assert 0 < err.item() <= b["corrected"]
    assert len(b["E"]) == Lbar and all(e > 0 for e in b["E"])


def test_uniform_partition():
    assert uniform_partition(4, 2) == [[0, 1], [2, 3]]
    assert uniform_partition(5, 2) == [[0, 1], [2, 3, 4]]
    assert uniform_partition(3, 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="at least"):
        uniform_partition(1, 2)


def test_fnn_bad_inputs():
    tw, tb, fw, g = fnn_instance(4, 2, 1, 0)
    with pytest.raises(ValueError, match="input_radius"):
        fnn_construction(tw, tb, fw, 1, input_radius=-1.0)
    with pytest.raises(ValueError, match="target_biases"):
        fnn_construction(tw, [tb[0][:3]], fw, 1, input_radius=1.0)
    with pytest.raises(ValueError, match="at least"):
        fnn_construction(tw * 3, tb * 3, fw, 1, input_radius=1.0)
    with pytest.raises(ValueError, match="rank"):
        fnn_construction(tw, tb, fw, 9, input_radius=1.0)
    with pytest.raises(ValueError, match="x must"):
        fnn_forward(torch.ones(4, dtype=F64), tw, tb)
    with pytest.raises(ValueError, match="as many biases"):
        fnn_forward(torch.ones(3, 4, dtype=F64), tw, [])
    with pytest.raises(ValueError, match="positive semi-definite"):
        relu_bounds(tw[0], 1, 2, -torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match="rank"):
        partition_bound(tw, tb, fw, 0, torch.eye(4, dtype=F64))


# ---------------------------------------------------------------- Transformer
def tfn_instance(D, H, n_layers, seed):
    g = gen(seed)

    def layer(ffn=None):
        d = {k: randn(H, D, D, g=g, scale=1 / math.sqrt(D)) for k in ("Q", "K", "V", "O")}
        d.update(ffn or {"W1": randn(D, D, g=g, scale=1 / math.sqrt(D)), "b1": randn(D, g=g, scale=0.1),
                         "W2": randn(D, D, g=g, scale=1 / math.sqrt(D)), "b2": randn(D, g=g, scale=0.1)})
        return d

    target = [layer() for _ in range(n_layers)]
    frozen = [layer({k: t[k] for k in ("W1", "b1", "W2", "b2")}) for t in target]
    return target, frozen, g


@pytest.mark.parametrize("D,H", [(4, 1), (6, 2)])
def test_tfn_construction_threshold(D, H):
    target, frozen, g = tfn_instance(D, H, 2, 1)
    X = randn(20, 5, D, g=g)
    y = tfn_forward(X, target)
    errs = {}
    for R in range(1, D + 1):
        adapted = tfn_construction(target, frozen, R)
        assert all(numerical_rank(layer[k][h], 1e-9) <= R for layer in adapted for k in ("dQ", "dK", "dV", "dO")
                   for h in range(H))
        errs[R] = (tfn_forward(X, adapted) - y).abs().max().item()
    thr = math.ceil(D / 2)
    assert all(errs[R] < 1e-8 for R in range(thr, D + 1))
    assert all(errs[R] > 1e-4 for R in range(1, thr))


def test_tfn_bad_inputs():
    target, frozen, g = tfn_instance(4, 1, 1, 2)
    other = [dict(frozen[0], b1=frozen[0]["b1"] + 1)]
    with pytest.raises(ValueError, match="feed-forward"):
        tfn_construction(target, other, 1)
    with pytest.raises(ValueError, match="lacks keys"):
        tfn_construction([{"Q": target[0]["Q"]}], frozen, 1)
    with pytest.raises(ValueError, match="rank"):
        tfn_construction(target, frozen, 5)
    with pytest.raises(ValueError, match="X must"):
        tfn_forward(torch.ones(4, dtype=F64), target)


# ---------------------------------------------------------------- gradient training
def test_train_fnn_adapters_shapes_masks_and_learning():
    S, L, D = 2, 2, 4
    g = gen(0)
    fw, fb = randn(S, L, D, D, g=g, scale=0.5), randn(S, L, D, g=g, scale=0.1)
    tw, tb = randn(S, 1, D, D, g=g, scale=0.5), randn(S, 1, D, g=g, scale=0.1)
    configs = [dict(rank=r, lr=1e-2, wd=0.0) for r in (1, 4)] + [dict(rank=0, final=1, bias="final", lr=1e-2)]
    W, b = train_fnn_adapters(fw, fb, tw, tb, configs, steps=200, batch=64, generator=gen(1), dtype=F64)
    assert W.shape == (S, 3, L, D, D) and b.shape == (S, 3, L, D)
    # final-layer tuning leaves the first layer frozen; LoRA rank 1 changes W by rank ≤ 1
    assert torch.equal(W[:, 2, 0], fw[:, 0]) and torch.equal(b[:, 2, 0], fb[:, 0])
    assert numerical_rank(W[0, 0, 0] - fw[0, 0], 1e-9) <= 1
    x = uniform_inputs((S, 2000, D), gen(2), dtype=F64)
    mse = adapter_mse(W, b, tw, tb, x)
    start = adapter_mse(fw[:, None], fb[:, None], tw, tb, x)
    assert mse.shape == (S, 3) and (mse < start).all()


def test_train_fnn_adapters_bad_inputs():
    S, L, D = 1, 2, 3
    fw, fb = torch.zeros(S, L, D, D, dtype=F64), torch.zeros(S, L, D, dtype=F64)
    tw, tb = torch.zeros(S, 1, D, D, dtype=F64), torch.zeros(S, 1, D, dtype=F64)
    with pytest.raises(ValueError, match="rank"):
        train_fnn_adapters(fw, fb, tw, tb, [dict(rank=4, lr=1e-2)], steps=1, batch=2, generator=gen())
    with pytest.raises(ValueError, match="lr"):
        train_fnn_adapters(fw, fb, tw, tb, [dict(rank=1, lr=-1.0)], steps=1, batch=2, generator=gen())
    with pytest.raises(ValueError, match="bias"):
        train_fnn_adapters(fw, fb, tw, tb, [dict(rank=1, lr=1e-2, bias="some")], steps=1, batch=2, generator=gen())
    with pytest.raises(ValueError, match="shapes"):
        train_fnn_adapters(fw, fb[:, :1], tw, tb, [dict(rank=1, lr=1e-2)], steps=1, batch=2, generator=gen())
    with pytest.raises(ValueError, match="configs"):
        train_fnn_adapters(fw, fb, tw, tb, [], steps=1, batch=2, generator=gen())
    with pytest.raises(ValueError, match="need weights"):
        adapter_mse(fw, fb, tw, tb, torch.zeros(S, 4, D, dtype=F64))
    with pytest.raises(ValueError, match="high > low"):
        uniform_inputs((2, 2), gen(), low=1.0, high=0.0)


def test_grid_experiment_and_helpers(tmp_path, monkeypatch):
    fw, fb, tw, tb = random_fnn_instance(4, 2, 1, gen(0))
    assert fw.shape == (2, 4, 4) and fb.shape == (2, 4) and tw.shape == (1, 4, 4) and tb.shape == (1, 4)
    fw, fb, tw, tb = random_fnn_instance(4, 2, 1, gen(0), linear=True)
    assert torch.count_nonzero(fb) == 0 and torch.linalg.matrix_rank(fw[0]) == 4
    configs = grid_configs([1, 4], [1e-2, 1e-3], [0.0, 1e-3], final=[1])
    assert len(configs) == 2 * 2 * 2 + 1 * 2 * 2 and configs[-1]["final"] == 1
    kw = dict(D=4, n_layers=2, n_target=1, configs=configs, seeds=2, steps=30, batch=32, n_val=50, n_test=100,
              construction_ranks=[1, 2], linear=True)
    out = fnn_grid_experiment(**kw)
    assert out["test"].shape == (2, 3) and out["construction_test"].shape == (2, 2) and out["val"].shape == (2, 12)
    assert (out["construction_test"][:, 1] < 1e-20).all()          # R = 2 ≥ D / L: exact for linear nets
    assert list(out["n_params"]) == [2 * 1 * 4 * 2 + 2 * 4, 2 * 4 * 4 * 2 + 2 * 4, 4 * 4 + 4]  # + trainable biases
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    a = cached_grid("t", "quick", **kw)
    b = cached_grid("t", "quick", **kw)                              # second call loads from disk
    assert (a["test"] == b["test"]).all() and any(tmp_path.rglob("*.joblib"))
    with pytest.raises(ValueError, match="seeds"):
        fnn_grid_experiment(**{**kw, "seeds": 0})
    with pytest.raises(ValueError, match="at least"):
        random_fnn_instance(4, 1, 2, gen(0))


def test_train_tfn_lora_and_mse():
    D, H = 4, 1
    pairs = [random_tfn_instance(D, H, 1, gen(s)) for s in range(2)]
    targets, frozens = [p[0] for p in pairs], [p[1] for p in pairs]
    assert torch.equal(targets[0][0]["W1"], frozens[0][0]["W1"])
    X = torch.randn(2, 50, 3, D, generator=gen(9), dtype=F64)
    configs = [dict(rank=1, lr=1e-2), dict(rank=2, lr=1e-2)]
    adapted = train_tfn_lora(targets, frozens, configs, steps=40, batch=16, n_tokens=3, generator=gen(1), dtype=F64)
    assert adapted[0]["Q"].shape == (2, 2, 1, H, D, D)
    mse = tfn_mse(adapted, targets, X)
    start = torch.stack([(tfn_forward(X[s], frozens[s]) - tfn_forward(X[s], targets[s])).square().sum(-1).mean() for s in range(2)])
    assert mse.shape == (2, 2) and (mse < start[:, None]).all()
    assert numerical_rank(adapted[0]["Q"][0, 0, 0, 0] - frozens[0][0]["Q"][0], 1e-9) <= 1
    with pytest.raises(ValueError, match="rank"):
        train_tfn_lora(targets, frozens, [dict(rank=5, lr=1e-2)], steps=1, batch=2, n_tokens=2, generator=gen())
    with pytest.raises(ValueError, match="one target"):
        train_tfn_lora(targets, frozens[:1], configs, steps=1, batch=2, n_tokens=2, generator=gen())
    with pytest.raises(ValueError, match="X must"):
        tfn_mse(adapted, targets, X[0])


def test_partition_bound_repair_changes_only_the_input_moment():
    """With zero target biases beta is sqrt(c) times a product of norms, so the repaired bound is the stated one
    times sqrt(tr Sigma / ||Sigma||_F) = D^(1/4) for Sigma = I/3, and alpha = max ||W_k||_F + max E_i as stated."""
    D, L, Lbar, R = 6, 4, 2, 1
    tw, tb, fw, _ = fnn_instance(D, L, Lbar, 7)
    zeros = [torch.zeros_like(b) for b in tb]
    b = partition_bound(tw, zeros, fw, R, torch.eye(D, dtype=F64) / 3)
    assert b["corrected"] / b["paper"] == pytest.approx(D ** 0.25, rel=1e-12)
    nW = [torch.linalg.matrix_norm(W).item() for W in tw]
    alpha = max(nW) + max(b["E"])
    beta = max(1.0, nW[0], nW[0] * nW[1]) * math.sqrt(math.sqrt(D) / 3)
    assert b["paper"] == pytest.approx(beta * (alpha * b["E"][0] + b["E"][1]), rel=1e-12)


def test_fnn_construction_refuses_a_compounding_bias_bound():
    g = torch.Generator().manual_seed(0)
    fw, fb, tw, tb = random_fnn_instance(16, 8, 1, g)
    with pytest.raises(ValueError, match="compounds the worst-case bias bound"):
        fnn_construction(list(tw), list(tb), list(fw), 2, 6.0)
    deltas, biases = fnn_construction(list(tw), list(tb), list(fw[:2]), 8, 6.0)   # a shallow group is fine
    assert max(b.abs().max().item() for b in biases) < 1e6


def test_flat_spectrum_instance_has_orthogonal_error_and_active_target():
    g = torch.Generator().manual_seed(0)
    fw, fb, tw, tb = ex_mod.flat_spectrum_instance(8, 2, g)
    E = tw[0] - fw[1] @ fw[0]
    assert torch.allclose(E @ E.T, torch.eye(8, dtype=F64), atol=1e-12)
    x = uniform_inputs((500, 8), g, dtype=F64)
    assert (x @ tw[0].T + tb[0]).min() >= 1.0 - 1e-12          # every target ReLU on over the cube
    assert fb.abs().max() == 0
    with pytest.raises(ValueError):
        ex_mod.flat_spectrum_instance(8, 2, g, radius=-1.0)


def test_fnn_training_curve_schedules_records_and_bad_inputs():
    g = torch.Generator().manual_seed(1)
    fw, fb, tw, tb = (t[None] for t in random_fnn_instance(4, 2, 1, g, linear=True))
    x = uniform_inputs((1, 300, 4), g, dtype=F64)
    cfg = [dict(rank=2, lr=3e-2, bias="none")]
    zero = ((x @ (fw[0, 1] @ fw[0, 0]).T - x @ tw[0, 0].T) ** 2).sum(-1).mean().item()
    finals = {}
    for sched in ("constant", "cosine", "exp"):
        at, rec, W, b = ex_mod.fnn_training_curve(fw, fb, tw, tb, cfg, steps=400, batch=64, generator=g,
                                                  x_test=x, n_records=4, schedule=sched, relu=False)
        assert at.tolist() == [1, 7, 54, 400] and rec.shape == (4, 1, 1) and W.shape == (1, 1, 2, 4, 4)
        # the last record is the returned model's error
        out = x @ (W[0, 0, 1] @ W[0, 0, 0]).T
        assert rec[-1, 0, 0].item() == pytest.approx(((out - x @ tw[0, 0].T) ** 2).sum(-1).mean().item())
        assert rec[-1, 0, 0] < 0.5 * zero and rec[-1, 0, 0] < rec[0, 0, 0]
        finals[sched] = rec[-1, 0, 0].item()
    # R L = 4 = D: exactly representable; every schedule gets far below the frozen error, and differently
    assert max(finals.values()) < 1e-2 * zero
    assert len({round(math.log10(v), 3) for v in finals.values()}) == 3
    for bad in (dict(schedule="linear"), dict(n_records=0), dict(x_test=x[0])):
        kw = dict(steps=10, batch=8, generator=g, x_test=x, relu=False) | bad
        with pytest.raises(ValueError):
            ex_mod.fnn_training_curve(fw, fb, tw, tb, cfg, **kw)


def test_dead_output_share():
    """A model whose output unit 0 never fires carries exactly that unit's target error there."""
    g = torch.Generator().manual_seed(2)
    D = 3
    tw = torch.eye(D, dtype=F64)[None, None]
    tb = torch.ones(1, 1, D, dtype=F64)
    W = torch.eye(D, dtype=F64).repeat(1, 1, 1, 1, 1)                         # (1, 1, 1, D, D)
    b = torch.ones(1, 1, 1, D, dtype=F64)
    b[..., 0] = -10.0                                                          # unit 0 dead on the cube
    x = uniform_inputs((1, 200, D), g, dtype=F64)
    share = ex_mod.dead_output_share(W, b, tw, tb, x)
    assert share.shape == (1, 1) and share.item() == pytest.approx(1.0)
    b[..., 0] = 1.0
    assert ex_mod.dead_output_share(W, b, tw, tb, x).item() == 0.0          # exact model: no error at all
    b[..., 1] = 2.0                                                            # alive unit, off by 1 everywhere
    b[..., 0] = -10.0
    err0 = ((x[0, :, 0] + 1) ** 2).mean()
    err1 = 1.0
    assert ex_mod.dead_output_share(W, b, tw, tb, x).item() == pytest.approx((err0 / (err0 + err1)).item())
    with pytest.raises(ValueError):
        ex_mod.dead_output_share(W[0], b, tw, tb, x)
