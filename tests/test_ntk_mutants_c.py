"""Tests of lorabook.ntk.synthetic_problem (the documented random linearised problem, rebuilt draw by draw from
its recipe) and of per_example_loss's handling of cross-entropy target layouts."""
import math

import numpy as np
import pytest
import torch
from test_ntk_mutants_b import _ce_by_hand

from lorabook import ntk

F64, F32 = torch.float64, torch.float32


def _recipe(N, K, m, n, P, loss, seed, dtype):
    """The documented recipe in NumPy from the same stream of Gaussian draws: G scaled so ‖G‖²_op/N = 1, a
    rank-min(2, m, n) teacher of Frobenius norm √(Pmn)/2, unit-RMS teacher outputs z, and noise of std 0.5."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(N, K, P, m, n, generator=g, dtype=dtype).double().numpy()
    Gm = G.reshape(N * K, -1)
    Gm = Gm * math.sqrt(N) / np.linalg.norm(Gm, 2)
    r0 = min(2, m, n)
    U = torch.randn(P, m, r0, generator=g, dtype=dtype).double().numpy()
    V = torch.randn(P, r0, n, generator=g, dtype=dtype).double().numpy()
    T = np.einsum("pmr,prn->pmn", U, V)
    T = T / np.sqrt((T ** 2).sum()) * math.sqrt(P * m * n) / 2
    z = (Gm @ T.reshape(-1)).reshape(N, K)
    z = z / np.sqrt((z ** 2).mean())
    noise = torch.randn(N, K, generator=g, dtype=dtype).double().numpy()
    s = z + 0.5 * noise
    if loss == "mse":
        y = s
    elif loss == "ce":
        y = s.argmax(1)
    else:
        y = (s > 0).astype(float)
    return Gm.reshape(G.shape), y


@pytest.mark.parametrize("N,K,m,n,P,loss", [(5, 2, 3, 4, 2, "mse"), (6, 3, 4, 3, 2, "ce"),
                                            (7, 1, 3, 2, 3, "logistic"), (4, 2, 1, 3, 2, "mse"),
                                            (30, 1, 2, 1, 2, "logistic")])
def test_synthetic_problem_follows_its_documented_recipe(N, K, m, n, P, loss):
    """G, f0 = 0 and the targets agree with the recipe rebuilt in NumPy from the same generator draws; every
    tensor has the requested float32 dtype (``ce`` labels are stored as one-hot rows)."""
    prob = ntk.synthetic_problem(N, K, m, n, 0.3, generator=torch.Generator().manual_seed(3), loss=loss, P=P,
                                 dtype=F32)
    G, y = _recipe(N, K, m, n, P, loss, 3, F32)
    assert prob.G.dtype == F32 and prob.G.shape == (N, K, P, m, n)
    assert np.allclose(prob.G.double().numpy(), G, rtol=1e-4, atol=1e-5)
    assert prob.f0.dtype == F32 and torch.equal(prob.f0, torch.zeros(N, K, dtype=F32))
    if loss == "ce":
        assert prob.y.shape == (N, K) and np.array_equal(prob.y.numpy(), np.eye(K)[y])
    else:
        assert prob.y.dtype == F32 and prob.y.shape == (N, K)
        assert np.allclose(prob.y.double().numpy(), y, rtol=1e-4, atol=1e-4)


def test_synthetic_problem_in_float64_by_default():
    """Without ``dtype`` the problem is float64 and matches the recipe to rounding."""
    prob = ntk.synthetic_problem(5, 2, 3, 4, 0.3, generator=torch.Generator().manual_seed(1), P=2)
    G, y = _recipe(5, 2, 3, 4, 2, "mse", 1, F64)
    assert prob.G.dtype == F64 and np.allclose(prob.G.numpy(), G, rtol=1e-10, atol=1e-12)
    assert np.allclose(prob.y.numpy(), y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["N", "K", "m", "n", "P"])
def test_synthetic_problem_names_the_size_that_is_not_a_positive_integer(name):
    sizes = dict(N=4, K=2, m=3, n=3, P=1)
    sizes[name] = 0
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got 0$"):
        ntk.synthetic_problem(sizes["N"], sizes["K"], sizes["m"], sizes["n"], 0.1,
                              generator=torch.Generator().manual_seed(0), P=sizes["P"])


def test_synthetic_problem_cross_entropy_class_count_boundary():
    """K = 2 classes is the smallest accepted for ``ce``; K = 1 is rejected with its message; the logistic loss
    needs K = 1."""
    prob = ntk.synthetic_problem(6, 2, 2, 2, 0.1, generator=torch.Generator().manual_seed(0), loss="ce")
    assert prob.y.shape == (6, 2) and torch.equal(prob.y.sum(1), torch.ones(6, dtype=prob.y.dtype))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(ValueError, match="^the cross-entropy loss needs K >= 2 classes, got K = 1$"):
        ntk.synthetic_problem(6, 1, 2, 2, 0.1, generator=g, loss="ce")
    assert torch.equal(g.get_state(), state)      # rejected before any draw
    with pytest.raises(ValueError, match="^the logistic loss needs K = 1$"):
        ntk.synthetic_problem(6, 2, 2, 2, 0.1, generator=torch.Generator().manual_seed(0), loss="logistic")




def test_per_example_loss_ce_target_layouts():
    """Float class indices (N,) with N = K become one-hot rows; batched soft targets (S, N, K) are used as given
    (S, N, K all different); a float (N, 1) column is neither layout and is rejected; integer (N, K) rows that are
    not on the simplex are rejected."""
    g = torch.Generator().manual_seed(2)
    f = torch.randn(3, 3, generator=g, dtype=F64)
    labels = torch.tensor([2.0, 0.0, 1.0], dtype=F64)
    onehot = torch.eye(3, dtype=F64)[[2, 0, 1]]
    assert np.allclose(ntk.per_example_loss(f, labels, "ce").tolist(), _ce_by_hand(f, onehot), rtol=1e-12)
    fb = torch.randn(2, 5, 4, generator=g, dtype=F64)
    pb = torch.softmax(torch.randn(2, 5, 4, generator=g, dtype=F64), -1)
    out = ntk.per_example_loss(fb, pb, "ce")
    for s in range(2):
        assert np.allclose(out[s].tolist(), _ce_by_hand(fb[s], pb[s]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"^cross-entropy targets must be"):
        ntk.per_example_loss(fb[0], torch.ones(5, 1, dtype=F64), "ce")
    with pytest.raises(ValueError, match="^cross-entropy target rows must be non-negative and sum to 1$"):
        ntk.per_example_loss(fb[0], torch.full((5, 4), 2), "ce")
