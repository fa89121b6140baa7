"""Unit tests of lorabook.expressivity's Lemma 1 helpers (lemma1_error, linear_rank_needed, close_in_rank,
random_linear_pair) and of relative_mse: input checks with their messages, and values checked by hand."""
import numpy as np
import pytest
import torch

from lorabook import expressivity as ex


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- lemma1_error
def test_lemma1_error_rejects_a_non_square_error_matrix_by_name():
    """E must be a square (D, D) matrix; the message names E."""
    with pytest.raises(ValueError, match=r"^E must be square, got shape \(3, 4\)$"):
        ex.lemma1_error(torch.ones(3, 4), 1, 1)
    with pytest.raises(ValueError, match=r"^E must be a 2-D matrix"):
        ex.lemma1_error(torch.ones(3), 1, 1)


def test_lemma1_error_rank_and_layer_count_range_messages():
    """rank lies in [1, D]; n_layers in [1, 10**9]; the messages name the offending argument."""
    E = torch.diag(torch.tensor([4.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match=r"^rank=4 is out of range: it must lie in \[1, 3\]$"):
        ex.lemma1_error(E, 4, 1)
    with pytest.raises(ValueError, match=r"^n_layers=0 is out of range: it must lie in \[1, 1000000000\]$"):
        ex.lemma1_error(E, 1, 0)
    with pytest.raises(ValueError, match=r"^n_layers=1000000001 is out of range"):
        ex.lemma1_error(E, 1, 10**9 + 1)


def test_lemma1_error_accepts_many_layers_up_to_the_limit():
    """Any layer count up to 10**9 is accepted; with RL ≥ D the optimum is exactly 0."""
    E = torch.diag(torch.tensor([4.0, 3.0, 2.0]))
    assert ex.lemma1_error(E, 1, 91) == 0.0
    assert ex.lemma1_error(E, 1, 10**9) == 0.0
    # σ_{RL+1}(E) by hand: R = 1, L = 2 leaves the third singular value 2
    assert ex.lemma1_error(E, 1, 2) == pytest.approx(2.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- relative_mse
def _fnn_pair(seed=0, S=2, L=2, D=3):
    g = gen(seed)
    fw = torch.randn(S, L, D, D, generator=g)
    fb = torch.randn(S, L, D, generator=g)
    tw = torch.randn(S, 1, D, D, generator=g)
    tb = torch.randn(S, 1, D, generator=g)
    x = torch.randn(S, 20, D, generator=g)
    return fw, fb, tw, tb, x


def _np_relu_mse(W, b, tW, tb, x):
    """A NumPy re-implementation of E‖f(x) − f̄(x)‖² for one model and one input set."""
    def f(Ws, bs, h):
        for Wl, bl in zip(Ws, bs):
            h = np.maximum(h @ Wl.T + bl, 0.0)
        return h
    return float(((f(W, b, x) - f(tW, tb, x)) ** 2).sum(-1).mean())


def test_relative_mse_matches_a_numpy_ratio_and_converts_a_float32_frozen_model():
    """The ratio is err(adapted) / err(frozen); a float32 frozen model is converted to the adapted weights'
    float64 dtype before the comparison, so the ratio agrees with a float64 reference to 1e-12."""
    fw, fb, tw, tb, x = _fnn_pair()
    fw32 = fw.float()
    fw64 = fw32.double()                                  # the float32 values, exactly, in float64
    W = torch.stack([fw64, fw64 + 0.1], dim=1)            # (S, C=2, L, D, D)
    b = torch.stack([fb, fb - 0.2], dim=1)
    rel = ex.relative_mse(W, b, fw32, fb, tw, tb, x)
    assert rel.dtype == torch.float64 and rel.shape == (2, 2)
    for s in range(2):
        zero = _np_relu_mse(fw64[s].numpy(), fb[s].numpy(), tw[s].numpy(), tb[s].numpy(), x[s].numpy())
        for c in range(2):
            err = _np_relu_mse(W[s, c].numpy(), b[s, c].numpy(), tw[s].numpy(), tb[s].numpy(), x[s].numpy())
            assert rel[s, c].item() == pytest.approx(err / zero, rel=1e-12)


def test_relative_mse_checks_the_frozen_shapes_and_a_zero_frozen_error():
    """frozen_w must be 4-D and frozen_b 3-D (each checked on its own); a frozen model equal to the target is
    rejected because the ratio would divide by zero."""
    fw, fb, tw, tb, x = _fnn_pair()
    W, b = fw[:, None], fb[:, None]
    msg = r"^frozen_w must be \(S, L, D, D\) and frozen_b \(S, L, D\)$"
    with pytest.raises(ValueError, match=msg):
        ex.relative_mse(W, b, fw[0], fb, tw, tb, x)
    with pytest.raises(ValueError, match=msg):
        ex.relative_mse(W, b, fw, fb[0], tw, tb, x)
    with pytest.raises(ValueError, match=r"^the frozen model already equals the target on these inputs \(zero "
                                         r"error\)$"):
        ex.relative_mse(tw[:, None], tb[:, None], tw, tb, tw, tb, x)
