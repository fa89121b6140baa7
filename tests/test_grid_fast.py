"""The fast batched FNN adapter training (hand-written backward pass, flat Adam) against the autograd path it
replaces: :func:`lorabook.train.batched_adam` on the loss of ``_fnn_problem``. Same iterates up to rounding."""
import math

import numpy as np
import pytest
import torch

from lorabook import expressivity as ex
from lorabook.train import batched_adam

F64, F32 = torch.float64, torch.float32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def instances(S, L, D, seed, *, linear=False, n_target=1):
    g = gen(seed)
    inst = [ex.random_fnn_instance(D, L, n_target, g, linear=linear) for _ in range(S)]
    return [torch.stack([t[i] for t in inst]) for i in range(4)]


def configs_for(L, D):
    """Every kind of slice: LoRA ranks 1..D (masked rows and columns), full tuning, each bias option, λ = 0 and
    λ > 0, distinct learning rates."""
    out = ex.grid_configs([1, D // 2, D], [1e-2, 3e-3], [0.0, 1e-2], final=[1])
    out += [dict(rank=2, lr=1e-2, bias="none"), dict(rank=0, final=L, bias="all", lr=2e-3, wd=1e-3),
            dict(rank=1, final=1, bias="final", lr=5e-3, wd=3e-3)]
    return out


def old_train(fw, fb, tw, tb, configs, *, steps, batch, generator, relu=True, dtype=F64, low=-1.0, high=1.0):
    """The autograd path (batched_adam on _fnn_problem's loss), as train_fnn_adapters ran it before."""
    params, loss_fn, model, lr, (S, C, L, D) = ex._fnn_problem(
        fw, fb, tw, tb, configs, batch=batch, generator=generator, relu=relu, low=low, high=high, dtype=dtype,
        device="cpu")
    batched_adam(params, loss_fn, steps, lr)
    with torch.no_grad():
        W, b, _ = model()
    return W.detach(), b.detach()


@pytest.mark.parametrize("L, relu, n_target", [(1, True, 1), (2, True, 1), (3, True, 1), (2, False, 1),
                                               (3, True, 3)])
def test_fast_training_equals_autograd_path_float64(L, relu, n_target):
    D = 6
    fw, fb, tw, tb = instances(2, L, D, 1, linear=not relu, n_target=n_target)
    configs = configs_for(L, D)
    g_old, g_new = gen(5), gen(5)
    W0, b0 = old_train(fw, fb, tw, tb, configs, steps=150, batch=32, generator=g_old, relu=relu, low=-0.5,
                       high=1.5)
    W1, b1 = ex.train_fnn_adapters(fw, fb, tw, tb, configs, steps=150, batch=32, generator=g_new, relu=relu,
                                   low=-0.5, high=1.5, dtype=F64)
    assert W1.shape == W0.shape and b1.shape == b0.shape and W1.dtype == F64
    assert (W0 - fw[:, None]).abs().max() > 0.1                   # the adapters moved
    assert torch.allclose(W1, W0, rtol=0, atol=1e-12) and torch.allclose(b1, b0, rtol=0, atol=1e-12)
    # the generator is left where the old path left it (inputs drawn in blocks, not one step too many)
    assert torch.equal(g_old.get_state(), g_new.get_state())
    # structurally frozen parts stay exactly frozen
    ranks = torch.tensor([c.get("rank", 0) for c in configs])
    for c, cfg in enumerate(configs):
        finals = cfg.get("final", 0)
        for layer in range(L - finals):
            if cfg.get("rank", 0) == 0:
                assert torch.equal(W1[:, c, layer], fw[:, layer])
        if cfg.get("bias") == "none":
            assert torch.equal(b1[:, c], fb)
    assert ranks.max() == D


def test_fast_training_float32_close_to_autograd_path():
    fw, fb, tw, tb = instances(3, 2, 16, 2)
    configs = ex.grid_configs([1, 4, 16], [1e-2, 1e-3], [0.0, 1e-3])
    W0, b0 = old_train(fw, fb, tw, tb, configs, steps=100, batch=256, generator=gen(3), dtype=F32)
    W1, b1 = ex.train_fnn_adapters(fw, fb, tw, tb, configs, steps=100, batch=256, generator=gen(3))
    assert W1.dtype == F32
    assert torch.allclose(W1, W0, rtol=0, atol=1e-5) and torch.allclose(b1, b0, rtol=0, atol=1e-5)


def test_input_blocks_are_the_per_step_draws():
    """Drawing the inputs of many steps in one call gives the numbers of one call per step."""
    a = ex.uniform_inputs((5, 3, 7, 4), gen(9), low=-0.5, high=1.5)
    g = gen(9)
    b = torch.stack([ex.uniform_inputs((3, 7, 4), g, low=-0.5, high=1.5) for _ in range(5)])
    assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [1, ex._DRAW_BLOCK - 1, ex._DRAW_BLOCK, ex._DRAW_BLOCK + 1])
def test_fast_training_block_boundaries(steps):
    fw, fb, tw, tb = instances(1, 2, 4, 3)
    configs = [dict(rank=2, lr=1e-2, wd=1e-3)]
    g_old, g_new = gen(1), gen(1)
    W0, b0 = old_train(fw, fb, tw, tb, configs, steps=steps, batch=8, generator=g_old)
    W1, b1 = ex.train_fnn_adapters(fw, fb, tw, tb, configs, steps=steps, batch=8, generator=g_new, dtype=F64)
    assert torch.allclose(W1, W0, rtol=0, atol=1e-13) and torch.allclose(b1, b0, rtol=0, atol=1e-13)
    assert torch.equal(g_old.get_state(), g_new.get_state())


def old_curve(fw, fb, tw, tb, configs, *, steps, batch, generator, x_test, at, schedule, relu):
    """The former loop of fnn_training_curve (autograd, Adam with a learning-rate schedule)."""
    params, loss_fn, model, lr, _ = ex._fnn_problem(fw, fb, tw, tb, configs, batch=batch, generator=generator,
                                                    relu=relu, low=-1.0, high=1.0, dtype=F64, device="cpu")
    yt = ex.fnn_forward(x_test, tw, tb, relu=relu)[:, None]
    factor = {"constant": lambda t: 1.0, "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps)),
              "exp": lambda t: 10.0 ** (-3.0 * t / steps)}[schedule]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for p in params:
        p.requires_grad_(True)
    records = []
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss_fn(t - 1).sum(), params)
        with torch.no_grad():
            rate = lr * factor(t - 1)
            for p, g, mi, vi in zip(params, grads, m, v):
                shape = (p.shape[0],) + (1,) * (p.dim() - 1)
                mi.mul_(0.9).add_(g, alpha=0.1)
                vi.mul_(0.999).addcmul_(g, g, value=0.001)
                p.sub_(rate.view(shape) * (mi / (1 - 0.9**t)) / ((vi / (1 - 0.999**t)).sqrt() + 1e-8))
            if t in at:
                W, b, _ = model()
                records.append((ex.fnn_forward(x_test[:, None], W, b, relu=relu) - yt).square().sum(-1).mean(-1))
    return torch.stack(records)


@pytest.mark.parametrize("schedule, relu", [("cosine", True), ("exp", False), ("constant", True)])
def test_training_curve_equals_former_loop(schedule, relu):
    fw, fb, tw, tb = instances(2, 2, 4, 4, linear=not relu)
    configs = [dict(rank=1, lr=3e-2), dict(rank=2, lr=1e-2, wd=1e-3, bias="none")]
    x = ex.uniform_inputs((2, 100, 4), gen(7), dtype=F64)
    at, rec, W, b = ex.fnn_training_curve(fw, fb, tw, tb, configs, steps=120, batch=16, generator=gen(8),
                                          x_test=x, n_records=5, schedule=schedule, relu=relu)
    ref = old_curve(fw, fb, tw, tb, configs, steps=120, batch=16, generator=gen(8), x_test=x, at=at.tolist(),
                    schedule=schedule, relu=relu)
    assert rec.shape == ref.shape == (len(at), 2, 2)
    assert torch.allclose(rec, ref, rtol=1e-10, atol=1e-14)


def test_fast_training_raises_on_divergence():
    fw, fb, tw, tb = instances(1, 2, 4, 5)
    fw = fw * 1e18                                                  # outputs overflow float32
    with pytest.raises(FloatingPointError, match="non-finite"):
        ex.train_fnn_adapters(fw, fb, tw, tb, [dict(rank=1, lr=1e-2)], steps=3, batch=8, generator=gen())
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        ex.train_fnn_adapters(fw, fb, tw, tb, [dict(rank=1, lr=1e-2)], steps=0, batch=8, generator=gen())


def test_adapter_mse_equals_fnn_forward_and_validates():
    fw, fb, tw, tb = instances(2, 3, 5, 6)
    W = fw[:, None] + 0.1 * torch.randn(2, 7, 3, 5, 5, generator=gen(1), dtype=F64)
    b = fb[:, None] + 0.1 * torch.randn(2, 7, 3, 5, generator=gen(2), dtype=F64)
    x = ex.uniform_inputs((2, 40_000, 5), gen(3), dtype=F64)         # several chunks of configs
    for relu in (True, False):
        ref = (ex.fnn_forward(x[:, None], W, b, relu=relu) - ex.fnn_forward(x, tw, tb, relu=relu)[:, None]
               ).square().sum(-1).mean(-1)
        assert torch.allclose(ex.adapter_mse(W, b, tw, tb, x, relu=relu), ref, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="need weights"):
        ex.adapter_mse(W, b[:, :, :2], tw, tb, x)
    with pytest.raises(ValueError, match="need weights"):
        ex.adapter_mse(W, b, tw, tb, x[..., :4])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ex.adapter_mse(W * float("inf"), b, tw, tb, x)


@pytest.mark.parametrize("linear, pretrain", [(False, 0), (False, 40), (True, 20)])
def test_grid_experiment_equals_autograd_path(monkeypatch, linear, pretrain):
    """The whole experiment (pretraining, grid, validation selection, test sets) on a small grid: the same values
    up to float32 rounding and the same selected configurations."""
    kw = dict(D=8, n_layers=2, n_target=1, configs=ex.grid_configs([1, 2, 8], [1e-2, 1e-3], [0.0, 1e-3], final=[1]),
              seeds=2, steps=200, batch=64, n_val=200, n_test=400, linear=linear, pretrain_steps=pretrain, seed=3,
              construction_ranks=[2])
    new = ex.fnn_grid_experiment(**kw)

    def autograd_train(fw, fb, tw, tb, configs, *, steps, batch, generator, relu=True, progress=False,
                       device="cpu", dtype=F32):
        return old_train(fw, fb, tw, tb, configs, steps=steps, batch=batch, generator=generator, relu=relu,
                         dtype=dtype)

    monkeypatch.setattr(ex, "train_fnn_adapters", autograd_train)
    old = ex.fnn_grid_experiment(**kw)
    assert new["groups"] == old["groups"]
    for key in ("test", "shift", "val"):
        assert np.allclose(new[key], old[key], rtol=1e-3, atol=1e-9), key
    for key in ("construction_test", "construction_shift", "zero_test", "frozen_w"):
        assert np.allclose(new[key], old[key], rtol=1e-4, atol=1e-12), key
    # the same learning rate and weight decay selected in every group
    keys = [(c.get("rank", 0), c.get("final", 0), c.get("bias", "all")) for c in kw["configs"]]
    for group in new["groups"]:
        idx = [i for i, k in enumerate(keys) if k == group]
        assert (new["val"][:, idx].argmin(1) == old["val"][:, idx].argmin(1)).all(), group
