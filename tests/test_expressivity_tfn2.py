"""Frozen Transformers near the target and differing by rank-k attention changes (chapter 1, TFN section)."""
import math

import pytest
import torch

from lorabook import expressivity as ex

D, H, L, N = 8, 2, 2, 6


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(3)
    target, far = ex.random_tfn_pair(D, H, L, g)
    X = torch.randn(40, N, D, generator=g, dtype=torch.float64)
    return g, target, far, X


def test_between_interpolates_every_weight(pair):
    _, target, far, _ = pair
    assert all(torch.allclose(a[k], b[k]) for a, b in zip(ex.tfn_between(target, far, 1.0), far)
               for k in ex.TFN_KEYS)
    half = ex.tfn_between(target, far, 0.5)
    for h, t, f in zip(half, target, far):
        for k in ex.TFN_KEYS:
            assert torch.allclose(h[k], (t[k] + f[k]) / 2)


@pytest.mark.parametrize("t", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_between_rejects_bad_t(pair, t):
    _, target, far, _ = pair
    with pytest.raises(ValueError, match="t must be"):
        ex.tfn_between(target, far, t)


def test_between_rejects_mismatched_models(pair):
    g, target, _, _ = pair
    other, _ = ex.random_tfn_pair(D, H, L + 1, g)
    with pytest.raises(ValueError, match="same depth"):
        ex.tfn_between(target, other, 0.5)
    bad = [dict(layer) for layer in target]
    bad[0]["W1"] = torch.zeros(D + 1, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="W1"):
        ex.tfn_between(target, bad, 0.5)


@pytest.mark.parametrize("factors,pair_rank", [(("Q", "V"), 3), (("Q",), 3), (("Q", "K", "V", "O"), 6)])
def test_low_rank_frozen_rank_of_pair_differences(pair, factors, pair_rank):
    """One factor per pair changed by rank 3: pair differences of rank 3; both factors: rank 6."""
    g, target, _, _ = pair
    frozen = ex.tfn_low_rank_frozen(target, 3, g, factors=factors)
    for a, b in zip(frozen, target):                                     # feed-forward blocks kept
        assert all(torch.equal(a[k], b[k]) for k in ("W1", "b1", "W2", "b2"))
        for k in factors:
            assert all(torch.linalg.matrix_rank(a[k][h] - b[k][h]) == 3 for h in range(H))
    s = ex.tfn_pair_differences(target, frozen)
    assert s.shape == (L, H, 2, D)
    assert int((s > 1e-10 * s.max()).sum(-1).max()) == pair_rank
    assert ex.tfn_construction_threshold(target, frozen) == math.ceil(pair_rank / 2)


def test_low_rank_frozen_zero_change_and_validation(pair):
    g, target, _, _ = pair
    same = ex.tfn_low_rank_frozen(target, 0, g)
    assert ex.tfn_pair_differences(target, same).max() < 1e-12
    assert ex.tfn_construction_threshold(target, same) == 1
    for k in (-1, D + 1, 2.0):
        with pytest.raises(ValueError, match="k"):
            ex.tfn_low_rank_frozen(target, k, g)
    for factors in ((), ("Q", "Q"), ("W1",), "QV"):
        with pytest.raises(ValueError, match="factors"):
            ex.tfn_low_rank_frozen(target, 2, g, factors=factors)


def test_threshold_of_a_random_pair_is_half_the_width(pair):
    _, target, far, _ = pair
    assert ex.tfn_construction_threshold(target, far) == math.ceil(D / 2)
    with pytest.raises(ValueError, match="rtol"):
        ex.tfn_construction_threshold(target, far, rtol=0.0)


def test_pair_differences_rejects_singular_feed_forward(pair):
    _, target, far, _ = pair
    bad = [dict(layer) for layer in far]
    bad[0]["W1"] = torch.zeros(D, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="W1"):
        ex.tfn_pair_differences(target, bad)


def test_curve_is_exact_from_the_derived_threshold(pair):
    g, target, _, X = pair
    frozen = ex.tfn_low_rank_frozen(target, 5, g)                      # rank 5 -> exact from 3
    rel = ex.tfn_construction_curve(target, frozen, list(range(1, D + 1)), X)
    assert rel.shape == (D,)
    assert rel[2:].max() < ex.EXACT_REL_MSE < rel[1]
    assert ex.rank_needed(rel, list(range(1, D + 1)), ex.EXACT_REL_MSE) == 3
    ref = ex.tfn_construction_curve(target, frozen, [1], X, reference=2.0)
    assert torch.allclose(ref * 2.0, rel[:1] * (ex.tfn_forward(X, frozen) - ex.tfn_forward(X, target))
                          .square().sum(-1).mean())


def test_curve_validation(pair):
    _, target, far, X = pair
    with pytest.raises(ValueError, match="X must"):
        ex.tfn_construction_curve(target, far, [1], X[0])
    with pytest.raises(ValueError, match="X must"):
        ex.tfn_construction_curve(target, far, [1], X * float("nan"))
    with pytest.raises(ValueError, match="ranks"):
        ex.tfn_construction_curve(target, far, [], X)
    with pytest.raises(ValueError, match="rank"):
        ex.tfn_construction_curve(target, far, [D + 1], X)
    with pytest.raises(ValueError, match="reference"):
        ex.tfn_construction_curve(target, far, [1], X, reference=-1.0)
    with pytest.raises(ValueError, match="zero error"):
        ex.tfn_construction_curve(target, target, [1], X)


def test_pretrain_tfn_moves_frozen_models_toward_the_target(pair):
    g, target, far, X = pair
    models, used = ex.pretrain_tfn([target, target], [far, far], levels=[1, 2], max_steps=200, batch=16,
                                   n_tokens=N, lr=1e-2, generator=g)
    assert len(models) == 2 and len(models[0]) == 2 and used.shape == (2, 2)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(models[0][0], far) for k in ex.TFN_KEYS)
    y = ex.tfn_forward(X, target)
    z0 = (ex.tfn_forward(X, far) - y).square().sum(-1).mean()
    z1 = (ex.tfn_forward(X, models[1][0]) - y).square().sum(-1).mean()
    assert models[1][0][0]["Q"].shape == (H, D, D) and models[1][0][0]["b1"].shape == (D,)
    assert 0 < used[1, 0] < 200 and z1 < 0.8 * z0


def test_pretrain_tfn_validation(pair):
    g, target, far, _ = pair
    kw = dict(max_steps=5, batch=4, n_tokens=N, lr=1e-2, generator=g)
    for levels in ([], [0.5], [float("nan")], "3"):
        with pytest.raises(ValueError, match="level"):
            ex.pretrain_tfn([target], [far], levels=levels, **kw)
    with pytest.raises(ValueError, match="one target and one frozen"):
        ex.pretrain_tfn([target], [], levels=[2], **kw)
    with pytest.raises(ValueError, match="lr"):
        ex.pretrain_tfn([target], [far], levels=[2], **{**kw, "lr": 0.0})
    with pytest.raises(ValueError, match="max_steps"):
        ex.pretrain_tfn([target], [far], levels=[2], **{**kw, "max_steps": 0})
    other, _ = ex.random_tfn_pair(D, H, L + 1, g)
    with pytest.raises(ValueError, match="share depth|same depth"):
        ex.pretrain_tfn([target, other], [far, other], levels=[2], **kw)
