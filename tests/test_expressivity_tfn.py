"""Transformer networks whose every weight differs: instances, the full construction, gradient LoRA options."""
import math

import pytest
import torch

from lorabook import expressivity as ex


def _pair(D=6, H=2, L=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    target, frozen = ex.random_tfn_pair(D, H, L, g)
    return target, frozen, g


def test_random_tfn_pair_differs_in_every_weight():
    target, frozen, _ = _pair(D=5, H=3, L=3)
    assert len(target) == len(frozen) == 3
    for t, f in zip(target, frozen):
        for k in ex.TFN_KEYS:
            assert t[k].shape == f[k].shape and t[k].dtype == torch.float64
            assert not torch.allclose(t[k], f[k])
        assert t["Q"].shape == (3, 5, 5) and t["W1"].shape == (5, 5) and t["b2"].shape == (5,)


@pytest.mark.parametrize("kwargs, match", [(dict(D=0), "D"), (dict(H=0), "H"), (dict(n_layers=0), "n_layers"),
                                           (dict(ffn_bias_std=-1.0), "ffn_bias_std"),
                                           (dict(ffn_bias_std=float("nan")), "ffn_bias_std")])
def test_random_tfn_pair_bad_inputs(kwargs, match):
    args = dict(D=4, H=1, n_layers=1, ffn_bias_std=0.1)
    args.update(kwargs)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=match):
        ex.random_tfn_pair(args.pop("D"), args.pop("H"), args.pop("n_layers"), g, **args)


@pytest.mark.parametrize("D, H, L", [(6, 2, 2), (7, 1, 3), (4, 3, 1)])
def test_full_construction_is_exact_from_half_the_width(D, H, L):
    target, frozen, g = _pair(D, H, L, seed=D)
    X = torch.randn(50, 5, D, generator=g, dtype=torch.float64)
    y = ex.tfn_forward(X, target)
    scale = y.abs().max().item()
    thr = math.ceil(D / 2)
    for R in range(1, D + 1):
        adapted = ex.tfn_full_construction(target, frozen, R)
        for layer in adapted:
            for k in ("Q", "K", "V", "O"):
                assert all(torch.linalg.matrix_rank(d) <= R for d in layer["d" + k])
        err = (ex.tfn_forward(X, adapted) - y).abs().max().item()
        assert (err < 1e-9 * scale) == (R >= thr), (R, err)


def test_full_construction_keeps_what_it_does_not_adapt():
    target, frozen, _ = _pair(D=6, L=3)
    adapted = ex.tfn_full_construction(target, frozen, 3)
    for l, (a, f, t) in enumerate(zip(adapted, frozen, target)):
        assert torch.equal(a["W1"], f["W1"])
        assert torch.equal(a["b1"], t["b1"])
        for k in ("Q", "K", "V", "O"):
            assert torch.allclose(a[k], f[k] + a["d" + k])
        assert torch.equal(a["W2"], t["W2"] if l == 2 else f["W2"])
    # the hidden state of layer 1 is the target's up to T = W2 W̄2^{-1}
    T = frozen[0]["W2"] @ torch.linalg.inv(target[0]["W2"])
    assert torch.allclose(adapted[0]["b2"], T @ target[0]["b2"])


def test_full_construction_bad_inputs():
    target, frozen, _ = _pair(D=6)
    with pytest.raises(ValueError, match="rank"):
        ex.tfn_full_construction(target, frozen, 0)
    with pytest.raises(ValueError, match="rank"):
        ex.tfn_full_construction(target, frozen, 7)
    with pytest.raises(ValueError, match="same depth"):
        ex.tfn_full_construction(target, frozen[:1], 3)
    with pytest.raises(ValueError, match="lacks keys"):
        ex.tfn_full_construction(target, [{k: v for k, v in frozen[0].items() if k != "b1"}, frozen[1]], 3)
    bad = [dict(frozen[0], W1=frozen[0]["W1"].clone()), frozen[1]]
    bad[0]["W1"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"frozen\[1\]\['W1'\]"):
        ex.tfn_full_construction(target, bad, 3)
    with pytest.raises(ValueError, match=r"target\[2\]\['b2'\]"):
        ex.tfn_full_construction([target[0], dict(target[1], b2=torch.zeros(5, dtype=torch.float64))], frozen, 3)
    sing = [dict(target[0], W2=torch.zeros(6, 6, dtype=torch.float64)), target[1]]
    with pytest.raises(ValueError, match="target W2 of layer 1 is singular"):
        ex.tfn_full_construction(sing, frozen, 3)
    # the last layer's target W2 is copied, not inverted: a singular one is accepted
    last = [target[0], dict(target[1], W2=torch.zeros(6, 6, dtype=torch.float64))]
    ex.tfn_full_construction(last, frozen, 3)


def test_train_tfn_lora_trains_the_feed_forward_and_records_a_curve():
    S, D = 2, 4
    pairs = [_pair(D=D, H=1, L=2, seed=s)[:2] for s in range(S)]
    targets, frozens = [p[0] for p in pairs], [p[1] for p in pairs]
    X = torch.randn(S, 40, 3, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    configs = [dict(rank=1, lr=1e-2), dict(rank=2, lr=1e-2)]
    adapted, curve = ex.train_tfn_lora(targets, frozens, configs, steps=60, batch=8, n_tokens=3,
                                       generator=torch.Generator().manual_seed(1), train_ffn=True,
                                       lr_factors=(1.0, 0.1, 0.01), eval_X=X, dtype=torch.float64)
    assert curve.shape == (3, S, 2)
    assert torch.allclose(curve[-1], ex.tfn_mse(adapted, targets, X))
    zero = torch.stack([(ex.tfn_forward(X[s], frozens[s]) - ex.tfn_forward(X[s], targets[s])).square().sum(-1).mean()
                        for s in range(S)])
    assert (curve[-1] < zero[:, None]).all()
    assert adapted[1]["W2"].shape == (S, 2, 1, D, D) and adapted[0]["b1"].shape == (S, 2, 1, 1, D)
    assert not torch.equal(adapted[0]["b1"][0, 0, 0, 0], frozens[0][0]["b1"])
    assert adapted[0]["W2"].shape == (S, 1, 1, D, D)               # only the last W2 is trained
    plain = ex.train_tfn_lora(targets, frozens, configs, steps=2, batch=4, n_tokens=3,
                              generator=torch.Generator().manual_seed(1))
    assert isinstance(plain, list) and plain[0]["b1"].shape == (S, 1, 1, 1, D)


@pytest.mark.parametrize("kwargs, match", [(dict(lr_factors=()), "lr_factors"),
                                           (dict(lr_factors=(1.0, -0.1)), "lr_factors"),
                                           (dict(lr_factors="ab"), "lr_factors"),
                                           (dict(steps=5, lr_factors=(1.0, 0.1)), "divisible"),
                                           (dict(eval_X=torch.zeros(1, 4, 3, 4)), "eval_X"),
                                           (dict(eval_X=torch.zeros(2, 4, 3, 5)), "eval_X")])
def test_train_tfn_lora_bad_schedule_and_eval_inputs(kwargs, match):
    pairs = [_pair(D=4, H=1, L=1, seed=s)[:2] for s in range(2)]
    args = dict(steps=4, batch=2, n_tokens=3, generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ex.train_tfn_lora([p[0] for p in pairs], [p[1] for p in pairs], [dict(rank=1, lr=1e-2)], **args)
