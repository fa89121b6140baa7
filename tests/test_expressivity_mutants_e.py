"""Input checks, dtypes and values of the FNN evaluation helpers (fnn_forward, adapter_mse), the grid of configs,
and the assembly of the batched gradient experiment (fnn_grid_experiment): which inputs it draws, which models it
trains and evaluates, how it selects within a group and how it counts parameters."""
import math
import warnings

import numpy as np
import pytest
import torch

from lorabook import expressivity as ex

F64, F32 = torch.float64, torch.float32

NEED = r"^need weights \(S, C, L, D, D\), biases \(S, C, L, D\) and x \(S, n, D\)$"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed, scale=1.0, dtype=F64):
    return scale * torch.randn(*shape, generator=gen(seed), dtype=dtype)


def relu_net(x, Ws, bs, relu=True):
    """A plain loop over the layers, ``h ← ReLU(h Wᵀ + b)``: the reference network of these tests."""
    h = x
    for W, b in zip(Ws, bs):
        h = h @ W.T + b
        if relu:
            h = torch.clamp(h, min=0.0)
    return h


def mse(x, Ws, bs, tWs, tbs, relu=True):
    """``mean_n ‖f(x_n) − f̄(x_n)‖²`` by the reference loop."""
    return (relu_net(x, Ws, bs, relu) - relu_net(x, tWs, tbs, relu)).square().sum(-1).mean().item()


# ----------------------------------------------------------------------------------------------------------
# fnn_forward
def test_fnn_forward_rejects_integer_inputs_with_its_message():
    """x must be floating; the message names the expected shape (..., n, D)."""
    W, b = torch.eye(2), torch.zeros(2)
    with pytest.raises(ValueError, match=r"^x must be a floating tensor of shape \(\.\.\., n, D\)$"):
        ex.fnn_forward(torch.ones(3, 2, dtype=torch.int64), [W], [b])


def test_fnn_forward_names_the_first_mismatched_layer_counting_from_one():
    """A weight of the wrong size in the second layer (its bias being right) is reported as layer 2, with both
    shapes and D; a wrong bias alone in the first layer is reported as layer 1."""
    x = torch.ones(5, 4)
    W4, b4 = torch.eye(4), torch.zeros(4)
    with pytest.raises(ValueError, match=r"^layer 2: weight \(3, 3\) / bias \(4,\) do not match D=4$"):
        ex.fnn_forward(x, [W4, torch.eye(3)], [b4, b4])
    with pytest.raises(ValueError, match=r"^layer 1: weight \(4, 4\) / bias \(3,\) do not match D=4$"):
        ex.fnn_forward(x, [W4, W4], [torch.zeros(3), b4])


def test_fnn_forward_reports_non_finite_outputs_with_its_message():
    x = torch.tensor([[1.0, float("inf")]])
    with pytest.raises(ValueError, match=r"^fnn_forward produced NaN or infinite values "
                                         r"\(check the inputs and weights\)$"):
        ex.fnn_forward(x, [torch.eye(2)], [torch.zeros(2)])


# ----------------------------------------------------------------------------------------------------------
# adapter_mse
def _adapted(S, C, L, D, seed):
    W = randn(S, C, L, D, D, seed=seed, scale=1 / math.sqrt(D))
    b = randn(S, C, L, D, seed=seed + 1, scale=0.3)
    tw = randn(S, 1, D, D, seed=seed + 2, scale=1 / math.sqrt(D))
    tb = randn(S, 1, D, seed=seed + 3, scale=0.3)
    return W, b, tw, tb


def test_adapter_mse_rejects_bad_ranks_and_seed_counts_with_the_first_message():
    """Wrong numbers of dimensions, or inputs for a different number of seeds, give the short message (without
    the shapes, which the second check appends): x for 3 seeds with models for 2; 3-D biases; 4-D weights."""
    S, C, L, D = 2, 2, 2, 3
    W, b, tw, tb = _adapted(S, C, L, D, 0)
    x = torch.rand(S, 6, D, generator=gen(1))
    with pytest.raises(ValueError, match=NEED):
        ex.adapter_mse(W, b, tw, tb, torch.rand(S + 1, 6, D, generator=gen(1)))
    with pytest.raises(ValueError, match=NEED):
        ex.adapter_mse(W, b[:, :, 0], tw, tb, x)
    with pytest.raises(ValueError, match=NEED):
        ex.adapter_mse(W[:, :, 0], b, tw, tb, x)


def test_adapter_mse_reports_non_finite_values_with_its_message():
    W, b, tw, tb = _adapted(1, 1, 1, 2, 0)
    with pytest.raises(ValueError, match=r"^adapter_mse produced NaN or infinite values "
                                         r"\(check the inputs and weights\)$"):
        ex.adapter_mse(W, b * float("inf"), tw, tb, torch.rand(1, 4, 2, generator=gen(1)))


def test_adapter_mse_per_config_values_over_uneven_chunks():
    """With 16384 inputs the configs are evaluated two at a time, so three configs end with a chunk of one; every
    (seed, config) entry is its own mean squared error (checked against the reference loop), and no warning
    (such as a resized output buffer) is raised."""
    S, C, L, D, n = 2, 3, 2, 2, 16384
    W, b, tw, tb = _adapted(S, C, L, D, 10)
    x = -1 + 2 * torch.rand(S, n, D, generator=gen(11))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ex.adapter_mse(W, b, tw, tb, x)
    ref = torch.tensor([[mse(x[s], W[s, c], b[s, c], tw[s], tb[s]) for c in range(C)] for s in range(S)])
    assert out.shape == (S, C)
    assert torch.allclose(out, ref, rtol=1e-12, atol=0)
    assert ref.std() > 0.01 * ref.mean()                             # the configs differ


def test_adapter_mse_works_in_the_weights_dtype():
    """float32 models evaluated on float64 inputs: the inputs are converted to float32 and the (S, C) errors are
    float32, close to the float64 reference; no warning is raised."""
    S, C, L, D = 2, 3, 2, 3
    W, b, tw, tb = _adapted(S, C, L, D, 20)
    x = -1 + 2 * torch.rand(S, 50, D, generator=gen(21))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ex.adapter_mse(W.float(), b.float(), tw.float(), tb.float(), x)
    ref = ex.adapter_mse(W, b, tw, tb, x)
    assert out.dtype == F32 and out.shape == (S, C)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------------------
# grid_configs
def test_grid_configs_lists_every_config_with_all_its_keys():
    """Ranks × lrs × wds (in that nesting order) with the given bias option, then the full-tuning configs with
    rank 0 and trainable biases on the tuned layers only."""
    got = ex.grid_configs([1, 2], [1e-2], [0.0, 1e-3], bias="none", final=[1])
    assert got == [dict(rank=1, lr=1e-2, wd=0.0, bias="none"), dict(rank=1, lr=1e-2, wd=1e-3, bias="none"),
                   dict(rank=2, lr=1e-2, wd=0.0, bias="none"), dict(rank=2, lr=1e-2, wd=1e-3, bias="none"),
                   dict(rank=0, final=1, bias="final", lr=1e-2, wd=0.0),
                   dict(rank=0, final=1, bias="final", lr=1e-2, wd=1e-3)]


# ----------------------------------------------------------------------------------------------------------
# fnn_grid_experiment: its assembly around the training (training replaced by a recorded deterministic fake)
class FakeTraining:
    """Stands in for train_fnn_adapters: records each call and returns adapted models that differ from the frozen
    ones by fixed pseudo-random perturbations (drawn from their own generators, not the experiment's), as float32
    like the real default."""

    def __init__(self):
        self.calls, self.returned = [], []

    def __call__(self, fw, fb, tw, tb, configs, **kw):
        self.calls.append(dict(fw=fw.clone(), fb=fb.clone(), tw=tw.clone(), tb=tb.clone(), configs=list(configs), **kw))
        S, L, D = fw.shape[:3]
        k = len(self.calls)
        W = fw[:, None] + randn(S, len(configs), L, D, D, seed=100 + k, scale=0.4 / math.sqrt(D))
        b = fb[:, None] + randn(S, len(configs), L, D, seed=200 + k, scale=0.2)
        self.returned.append((W.float(), b.float()))
        return W.float(), b.float()


def run_experiment(monkeypatch, **kw):
    """fnn_grid_experiment with the fake training; also records the input radius given to fnn_construction."""
    fake, radii, real = FakeTraining(), [], ex.fnn_construction

    def construction(tws, tbs, fws, R, radius, **k):
        radii.append(radius)
        return real(tws, tbs, fws, R, radius, **k)

    monkeypatch.setattr(ex, "train_fnn_adapters", fake)
    monkeypatch.setattr(ex, "fnn_construction", construction)
    return ex.fnn_grid_experiment(**kw), fake, radii


# configs with keys left out (rank, bias, wd take their documented defaults 0, "all", 0), two per group
GRID = [dict(rank=1, lr=1e-2), dict(rank=1, lr=3e-2, wd=1e-3),
        dict(final=1, bias="final", lr=1e-2), dict(final=1, bias="final", lr=3e-3),
        dict(rank=2, bias="none", lr=1e-2), dict(rank=2, bias="none", lr=2e-2, wd=0.0)]


@pytest.mark.parametrize("linear, shift", [(False, (-2.0, 0.5)), (True, (-0.5, 1.5))])
def test_grid_experiment_assembles_pretraining_training_selection_and_tests(monkeypatch, linear, shift):
    """Replays the documented recipe with the same generator: per seed a frozen model and a target, pretraining of
    all frozen weights (biases too for ReLU nets, none for linear ones) toward the target, the grid trained from the
    pretrained model, then float64 validation inputs on [−1, 1]^D, test inputs on [−1, 1]^D and shifted inputs on
    the cube ``shift``. Every error is recomputed with the reference loop (ReLU or linear as the experiment), the
    selected run of a group is the one of least validation error within that group, the construction is
    evaluated on the same inputs (for ReLU nets built for the ball of radius √D·max(1, |lo|, |hi|), the smallest
    ball about 0 holding both cubes), and n_params counts 2RDL LoRA weights, kD² full weights and D per trained
    bias vector."""
    D, L, S, seed, n_val, n_test, R = 3, 2, 2, 7, 30, 40, 1
    dev = torch.device("cpu")
    out, fake, radii = run_experiment(monkeypatch, D=D, n_layers=L, n_target=1, configs=GRID, seeds=S, steps=5,
                                      batch=8, linear=linear, pretrain_steps=2, n_val=n_val, n_test=n_test,
                                      shift=shift, seed=seed, construction_ranks=[R], device=dev)
    relu = not linear
    g = gen(seed)
    inst = [ex.random_fnn_instance(D, L, 1, g, linear=linear) for _ in range(S)]
    fw0, fb0, tw, tb = (torch.stack([t[i] for t in inst]) for i in range(4))
    # the two trainings: pretraining (one config) and the grid, with the experiment's sizes, net and device
    assert len(fake.calls) == 2
    pre, main = fake.calls
    assert torch.equal(pre["fw"], fw0) and torch.equal(pre["fb"], fb0) and torch.equal(pre["tw"], tw)
    [cfg] = pre["configs"]
    assert (cfg.get("rank", 0), cfg.get("final", 0), cfg.get("bias", "all"), cfg.get("wd", 0.0)) == \
        (0, L, "none" if linear else "all", 0.0)
    fw, fb = fake.returned[0][0][:, 0].double(), fake.returned[0][1][:, 0].double()
    assert torch.equal(main["fw"], fw) and torch.equal(main["fb"], fb) and main["configs"] == GRID
    for call, steps in ((pre, 2), (main, 5)):
        assert call["steps"] == steps and call["batch"] == 8 and call["relu"] is relu and call["device"] is dev
    W, b = (t.double() for t in fake.returned[1])
    x_val = ex.uniform_inputs((S, n_val, D), g, dtype=F64)
    x_test = ex.uniform_inputs((S, n_test, D), g, dtype=F64)
    x_shift = ex.uniform_inputs((S, n_test, D), g, low=shift[0], high=shift[1], dtype=F64)

    def errors(x):
        return np.array([[mse(x[s], W[s, c], b[s, c], tw[s], tb[s], relu) for c in range(len(GRID))]
                         for s in range(S)])

    val, test, shf = errors(x_val), errors(x_test), errors(x_shift)
    assert np.allclose(out["val"], val, rtol=1e-12, atol=0)
    assert out["groups"] == [(1, 0, "all"), (0, 1, "final"), (2, 0, "none")]
    for j, members in enumerate([[0, 1], [2, 3], [4, 5]]):
        best = [members[int(np.argmin(val[s, members]))] for s in range(S)]
        assert np.allclose(out["test"][:, j], [test[s, c] for s, c in enumerate(best)], rtol=1e-12, atol=0)
        assert np.allclose(out["shift"][:, j], [shf[s, c] for s, c in enumerate(best)], rtol=1e-12, atol=0)
    assert np.allclose(out["zero_test"], [mse(x_test[s], fw[s], fb[s], tw[s], tb[s], relu) for s in range(S)],
                       rtol=1e-12, atol=0)
    # the construction of rank R on the pretrained frozen model (the ReLU one for the radius 2√D)
    assert radii == ([] if linear else [math.sqrt(D) * 2.0] * S)
    for s in range(S):
        if linear:
            deltas, biases = ex.linear_construction(tw[s, 0], list(fw[s]), R), list(fb[s])
        else:
            radius = math.sqrt(D) * 2.0
            deltas, biases = ex.fnn_construction(list(tw[s]), list(tb[s]), list(fw[s]), R, radius)
        Wc = [w + d for w, d in zip(fw[s], deltas)]
        for key, x in (("construction_test", x_test), ("construction_shift", x_shift)):
            assert out[key][s, 0] == pytest.approx(mse(x[s], Wc, biases, tw[s], tb[s], relu), rel=1e-9, abs=1e-15)
    # LoRA rank 1 on 2 layers of width 3 with all biases; last layer full with its bias; rank 2 without biases
    assert list(out["n_params"]) == [2 * 1 * 3 * 2 + 2 * 3, 3 * 3 + 3, 2 * 2 * 3 * 2]
    assert np.array_equal(out["frozen_w"], fw.numpy()) and np.array_equal(out["target_w"], tw.numpy())


@pytest.mark.parametrize("shift, scale", [((-0.5, 0.5), 1.0), ((-0.5, 1.5), 1.5)])
def test_grid_experiment_construction_radius_covers_both_cubes(monkeypatch, shift, scale):
    """The ReLU construction is built for inputs of norm ≤ √D·max(1, |lo|, |hi|): √D for a shifted cube inside
    [−1, 1]^D, √D·1.5 for [−0.5, 1.5]^D."""
    _, fake, radii = run_experiment(monkeypatch, D=2, n_layers=1, n_target=1, configs=[dict(rank=1, lr=1e-2)],
                                    seeds=1, steps=1, batch=2, n_val=3, n_test=4, shift=shift,
                                    construction_ranks=[1, 2])
    assert radii == [math.sqrt(2) * scale] * 2 and len(fake.calls) == 1


def test_grid_experiment_defaults(monkeypatch):
    """Leaving out the optional arguments is the same as passing their documented defaults: ReLU nets, no
    pretraining, 1000 validation and 5000 test inputs, shift (−0.5, 1.5), seed 0."""
    kw = dict(D=2, n_layers=1, n_target=1, configs=[dict(rank=1, lr=1e-2)], seeds=1, steps=1, batch=2)
    a, fa, _ = run_experiment(monkeypatch, **kw)
    b, fb, _ = run_experiment(monkeypatch, **kw, linear=False, pretrain_steps=0, n_val=1000, n_test=5000,
                              shift=(-0.5, 1.5), seed=0)
    assert len(fa.calls) == len(fb.calls) == 1 and fa.calls[0]["relu"] is True
    for key in ("test", "shift", "val", "zero_test", "frozen_w", "target_w"):
        assert np.array_equal(a[key], b[key]), key


def test_grid_experiment_rejects_too_many_seeds_first():
    """At most 10**5 seeds; 10**5 + 1 is rejected, naming seeds and the bound, before anything else is checked."""
    with pytest.raises(ValueError, match=r"^seeds=100001 is out of range: it must lie in \[1, 100000\]$"):
        ex.fnn_grid_experiment(D=0, n_layers=1, n_target=1, configs=[dict(rank=1, lr=1e-2)], seeds=10**5 + 1,
                               steps=1, batch=2)
