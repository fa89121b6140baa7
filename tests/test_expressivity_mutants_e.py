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
