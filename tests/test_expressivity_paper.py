"""Unit tests of the paper-settings block of lorabook.expressivity (Gaussian inputs, the paper's initialisations,
pretrained frozen models, general partitions, random-model thresholds)."""
import math

import numpy as np
import pytest
import torch

from lorabook import expressivity as ex
from lorabook.linalg import chain_product, numerical_rank

D = 8


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- instances, inputs
def test_paper_fnn_instance_shapes_and_range():
    fw, fb, tw, tb = ex.paper_fnn_instance(D, 4, 2, gen())
    assert fw.shape == (4, D, D) and fb.shape == (4, D) and tw.shape == (2, D, D) and tb.shape == (2, D)
    assert fw.dtype == torch.float64
    for T in (fw, fb, tw, tb):
        assert T.abs().max() <= 1 / math.sqrt(D)


def test_paper_fnn_instance_uniform_singular_values_is_a_flat_spectrum():
    fw, fb, tw, tb = ex.paper_fnn_instance(D, 4, 2, gen(), init="uniform_singular_values")
    for i, group in enumerate(ex.uniform_partition(4, 2)):
        E = tw[i] - chain_product([fw[l] for l in group])
        sv = torch.linalg.svdvals(E)
        assert (sv.max() / sv.min() - 1).item() < 1e-12
        assert torch.allclose(E, sv[0] * torch.eye(D, dtype=torch.float64), atol=1e-12)
    fw0, fb0, _, tb0 = ex.paper_fnn_instance(D, 4, 2, gen(), init="default")
    assert torch.equal(fw0, fw) and torch.equal(fb0, fb) and torch.equal(tb0, tb)   # same draws otherwise


@pytest.mark.parametrize("kwargs", [dict(init="xavier"), dict(n_layers=1, n_target=2)])
def test_paper_fnn_instance_rejects_bad_arguments(kwargs):
    args = dict(n_layers=2, n_target=1) | kwargs
    init = args.pop("init", "default")
    with pytest.raises(ValueError):
        ex.paper_fnn_instance(D, args["n_layers"], args["n_target"], gen(), init=init)


def test_gaussian_inputs_scale_and_validation():
    x = ex.gaussian_inputs((20000, D), gen(), std=5.0)
    assert x.shape == (20000, D) and x.dtype == torch.float64
    assert abs(x.std().item() - 5.0) < 0.1
    with pytest.raises(ValueError):
        ex.gaussian_inputs((10, D), gen(), std=0.0)
    with pytest.raises(ValueError):
        ex.gaussian_inputs((10, 0), gen())


def test_gaussian_radius_holds_the_samples():
    assert ex.gaussian_radius(16) == 12.0 and ex.gaussian_radius(16, std=5.0) == 60.0
    x = ex.gaussian_inputs((50000, 16), gen(), std=5.0)
    assert x.norm(dim=1).max().item() < ex.gaussian_radius(16, std=5.0)
    with pytest.raises(ValueError):
        ex.gaussian_radius(16, tail=-1.0)


# ---------------------------------------------------------------------------------------------- errors and training
def _stack(n=2, L=2, Lbar=1, seed=0):
    g = gen(seed)
    inst = [ex.paper_fnn_instance(D, L, Lbar, g) for _ in range(n)]
    return g, [torch.stack([t[k] for t in inst]) for k in range(4)]


def test_relative_mse_is_one_for_the_frozen_model():
    g, (fw, fb, tw, tb) = _stack()
    x = ex.gaussian_inputs((2, 500, D), g)
    rel = ex.relative_mse(fw[:, None], fb[:, None], fw, fb, tw, tb, x)
    assert rel.shape == (2, 1) and torch.allclose(rel, torch.ones(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError):
        ex.relative_mse(fw[:, None], fb[:, None], fw[0], fb, tw, tb, x)
    with pytest.raises(ValueError, match="already equals"):
        ex.relative_mse(fw[:, None], fb[:, None], tw, tb, tw, tb, x)      # frozen model = target


def test_train_lora_gaussian_shapes_ranks_and_progress():
    g, (fw, fb, tw, tb) = _stack()
    W, b = ex.train_lora_gaussian(fw, fb, tw, tb, [1, 4], steps=60, batch=64, lr=1e-2, generator=g,
                                  dtype=torch.float64)
    assert W.shape == (2, 2, 2, D, D) and b.shape == (2, 2, 2, D)
    for s in range(2):
        for l in range(2):
            assert numerical_rank(W[s, 0, l] - fw[s, l], 1e-8) <= 1
            assert numerical_rank(W[s, 1, l] - fw[s, l], 1e-8) <= 4
    x = ex.gaussian_inputs((2, 1000, D), g)
    assert (ex.relative_mse(W, b, fw, fb, tw, tb, x) < 1).all()


@pytest.mark.parametrize("bad", [dict(ranks=[0]), dict(ranks=[D + 1]), dict(ranks=[]), dict(lr=0.0),
                                 dict(steps=0)])
def test_train_lora_gaussian_validates(bad):
    g, (fw, fb, tw, tb) = _stack()
    kw = dict(ranks=[2], steps=5, batch=8, lr=1e-2) | bad
    with pytest.raises(ValueError):
        ex.train_lora_gaussian(fw, fb, tw, tb, kw.pop("ranks"), generator=g, **kw)


def test_train_lora_gaussian_rejects_mismatched_shapes():
    g, (fw, fb, tw, tb) = _stack()
    with pytest.raises(ValueError):
        ex.train_lora_gaussian(fw, fb[:1], tw, tb, [2], steps=5, batch=8, lr=1e-2, generator=g)
    with pytest.raises(ValueError):
        ex.train_lora_gaussian(fw, fb, tw, tb * float("nan"), [2], steps=5, batch=8, lr=1e-2, generator=g)


def test_pretrain_frozen_levels():
    g, (fw, fb, tw, tb) = _stack()
    W, b, used = ex.pretrain_frozen(fw, fb, tw, tb, levels=[1, 2, 4], max_steps=3000, batch=128, lr=1e-3,
                                    generator=g)
    assert W.shape == (3, 2, 2, D, D) and b.shape == (3, 2, 2, D) and used.shape == (3, 2)
    assert torch.equal(W[0], fw) and torch.equal(b[0], fb) and (used[0] == 0).all()
    assert ((used[1] > 0) & (used[2] > used[1])).all()
    x = ex.gaussian_inputs((2, 4000, D), g)
    err = [ex.adapter_mse(W[k][:, None], b[k][:, None], tw, tb, x)[:, 0] for k in range(3)]
    assert (err[1] < 0.7 * err[0]).all() and (err[2] < err[1]).all()


@pytest.mark.parametrize("levels", [[0.5], [], "3", [float("inf")]])
def test_pretrain_frozen_validates_levels(levels):
    g, (fw, fb, tw, tb) = _stack()
    with pytest.raises(ValueError):
        ex.pretrain_frozen(fw, fb, tw, tb, levels=levels, max_steps=5, batch=8, lr=1e-3, generator=g)


def test_pretrain_frozen_validates_shapes():
    g, (fw, fb, tw, tb) = _stack()
    with pytest.raises(ValueError):
        ex.pretrain_frozen(fw[:1], fb, tw, tb, levels=[2], max_steps=5, batch=8, lr=1e-3, generator=g)


# ---------------------------------------------------------------------------------------------- partitions
def _close_instance(seed=1):
    g = gen(seed)
    _, fb, tw, tb = ex.paper_fnn_instance(D, 4, 2, g)
    fw = torch.eye(D, dtype=torch.float64) + torch.randn(4, D, D, generator=g, dtype=torch.float64) / (2 * math.sqrt(D))
    return g, fw, fb, tw, tb


def test_partition_construction_with_the_uniform_partition_is_fnn_construction():
    g, fw, fb, tw, tb = _close_instance()
    a = ex.partition_construction(list(tw), list(tb), list(fw), [[0, 1], [2, 3]], 3, 5.0)
    b = ex.fnn_construction(list(tw), list(tb), list(fw), 3, 5.0)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12)


def test_partition_threshold_and_exactness_of_a_general_partition():
    g, fw, fb, tw, tb = _close_instance()
    part = [[0], [1, 2, 3]]
    fw = ex.close_in_rank(tw, fw, part, [2, None], g)
    thr = ex.partition_threshold(list(tw), list(fw), part)
    assert thr == max(2, math.ceil(D / 3))
    assert ex.partition_threshold(list(tw), list(fw), [[0, 1], [2, 3]]) == D // 2
    x = ex.gaussian_inputs((500, D), g)
    rel = ex.construction_curve(tw, tb, fw, fb, [thr - 1, thr], ex.gaussian_radius(D), (x,), partition=part)
    assert rel[1, 0] < 1e-20 < rel[0, 0]


@pytest.mark.parametrize("part", [[[0, 1], [3, 2]], [[0, 2], [1, 3]], [[0, 1, 2, 3]], [[], [0, 1, 2, 3]],
                                  [[0], [1, 2]], torch.tensor([[0, 1], [2, 3]])])
def test_partitions_are_validated(part):
    g, fw, fb, tw, tb = _close_instance()
    with pytest.raises(ValueError):
        ex.partition_construction(list(tw), list(tb), list(fw), part, 2, 5.0)
    with pytest.raises(ValueError):
        ex.partition_threshold(list(tw), list(fw), part)


def test_close_in_rank():
    g, fw, fb, tw, tb = _close_instance()
    before = fw.clone()
    new = ex.close_in_rank(tw, fw, [[0, 1], [2, 3]], [3, None], g)
    assert torch.equal(fw, before)                                  # input untouched
    assert numerical_rank(tw[0] - new[1] @ new[0], 1e-10) == 3
    assert torch.equal(new[2:], fw[2:]) and torch.equal(new[0], fw[0])
    sv = torch.linalg.svdvals(tw[0] - new[1] @ new[0])[:3]
    assert ((sv >= 0.25 - 1e-12) & (sv <= 0.5 + 1e-12)).all()
    with pytest.raises(ValueError):
        ex.close_in_rank(tw, fw, [[0, 1], [2, 3]], [3], g)
    with pytest.raises(ValueError):
        ex.close_in_rank(tw, fw, [[0, 1], [2, 3]], [D + 1, None], g)


# ---------------------------------------------------------------------------------------------- rank needed
def test_rank_needed():
    assert ex.rank_needed([1.0, 0.1, 1e-9, 0.0], [1, 2, 3, 4], 1e-6) == 3
    assert ex.rank_needed([1.0, 1e-9, 1.0, 0.0], [1, 2, 3, 4], 1e-6) == 4     # exact must hold from there on
    assert ex.rank_needed([1.0, 1.0], [2, 5], 1e-6) == 6
    for bad in (dict(rel_err=[1.0, float("nan")]), dict(ranks=[2, 1]), dict(rel_err=[1.0])):
        args = dict(rel_err=[1.0, 0.0], ranks=[1, 2]) | bad
        with pytest.raises(ValueError):
            ex.rank_needed(args["rel_err"], args["ranks"], 1e-6)


@pytest.mark.parametrize("dist", ex.ENTRY_DISTS)
def test_random_linear_pair(dist):
    t, f = ex.random_linear_pair(D, 3, gen(), dist=dist)
    assert t.shape == (D, D) and len(f) == 3 and all(W.shape == (D, D) for W in f)
    if dist == "sign":
        assert torch.allclose(t.abs(), torch.full((D, D), 1 / math.sqrt(D), dtype=torch.float64))
    with pytest.raises(ValueError):
        ex.random_linear_pair(D, 3, gen(), dist="cauchy")


@pytest.mark.parametrize("rank_E", [1, 3, 5, 8])
def test_linear_rank_needed_is_ceil_rank_over_L(rank_E):
    target, frozen = ex.random_linear_instance(D, 2, rank_E, gen(rank_E))
    assert ex.linear_rank_needed(target, frozen) == math.ceil(rank_E / 2)


def test_linear_rank_needed_edge_cases():
    target, frozen = ex.random_linear_instance(D, 2, 4, gen())
    assert ex.linear_rank_needed(chain_product(frozen), frozen) == 1            # E = 0
    singular = [frozen[0].clone(), frozen[1]]
    singular[0][:, 0] = 0.0
    assert ex.linear_rank_needed(target, singular) == D + 1                     # hypothesis fails: refused
    with pytest.raises(ValueError):
        ex.linear_rank_needed(target[:4, :4], frozen)
    with pytest.raises(ValueError):
        ex.linear_rank_needed(target, frozen, tol=0.0)


def test_construction_curve_matches_a_direct_evaluation():
    g, (fw, fb, tw, tb) = _stack(n=1)
    fw, fb, tw, tb = fw[0], fb[0], tw[0], tb[0]
    x = ex.gaussian_inputs((300, D), g)
    curve = ex.construction_curve(tw, tb, fw, fb, [2, D // 2], 12.0, (x, 2 * x))
    assert curve.shape == (2, 2)
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), 2, 12.0)
    W = torch.stack([w + d for w, d in zip(fw, deltas)])[None, None]
    direct = ex.relative_mse(W, torch.stack(biases)[None, None], fw[None], fb[None], tw[None], tb[None], x[None])
    assert np.isclose(curve[0, 0].item(), direct.item(), rtol=1e-10)
    assert curve[1].max() < 1e-20
    with pytest.raises(ValueError):
        ex.construction_curve(tw, tb, fw, fb, [2], 12.0, [])
    with pytest.raises(ValueError):
        ex.construction_curve(tw, tb, fw[None], fb, [2], 12.0, (x,))


def test_train_lora_gaussian_learning_rates_per_entry_and_phases():
    g, (fw, fb, tw, tb) = _stack()
    W, b = ex.train_lora_gaussian(fw, fb, tw, tb, [2, 2], lr=[1e-2, 1e-12], steps=40, batch=32, generator=g,
                                  dtype=torch.float64, lr_factors=[1.0, 0.1])
    assert W.shape == (2, 2, 2, D, D)
    assert (W[:, 0] - fw).abs().max() > 1e-4 > (W[:, 1] - fw).abs().max()      # a tiny rate barely moves
    for bad in (dict(lr=[1e-2]), dict(lr_factors=[]), dict(lr_factors=[1.0, 0.0]), dict(steps=41,
                                                                                      lr_factors=[1.0, 0.1])):
        kw = dict(lr=1e-2, steps=40, lr_factors=(1.0,)) | bad
        with pytest.raises(ValueError):
            ex.train_lora_gaussian(fw, fb, tw, tb, [2, 2], batch=8, generator=g, **kw)
