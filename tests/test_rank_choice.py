"""Unit tests of lorabook.rank_choice (float64, a tiny BERT layer instead of MiniLM, fast)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lorabook import data, ntk
from lorabook import rank_choice as rc

H, T = 8, 5


class ToyHead(nn.Module):
    """Same sub-module names as ntk.MiniLMHead: one small BERT layer, mean pooling, a fixed linear read-out."""

    def __init__(self, seed=0):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer

        torch.manual_seed(seed)
        cfg = BertConfig(hidden_size=H, num_attention_heads=2, intermediate_size=16, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.layer = BertLayer(cfg).double().eval()
        for p in self.layer.parameters():
            p.requires_grad_(False)
        self.register_buffer("w", torch.randn(H, dtype=torch.float64))

    def forward(self, hidden, mask):
        out = self.layer(hidden, attention_mask=data.attention_bias(mask, hidden.dtype))
        out = out[0] if isinstance(out, tuple) else out
        return data.mean_pool(out, mask) @ self.w


def _inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, T, H, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return hidden, mask


QV = tuple(f"{m}.weight" for m in rc.QV_MODULES)


def test_token_gradients_match_per_example_jacobian():
    head, (hidden, mask) = ToyHead(), _inputs()
    f0, g = rc.token_gradients(head, hidden, mask)
    f_ref, G_ref = ntk.per_example_jacobian(head, QV, (hidden, mask))
    G = torch.einsum("ntpm,ntk->npmk", g, hidden)
    assert torch.allclose(f0, f_ref[:, 0].double(), atol=1e-12)
    assert torch.allclose(G, G_ref[:, 0], atol=1e-10)


@pytest.mark.parametrize("k", [3, H])
def test_reduced_jacobian_is_projected_jacobian(k):
    head, (hidden, mask) = ToyHead(), _inputs()
    U_L, U_R = rc.subspace_bases(head, hidden, mask, k)
    assert U_L.shape == (2, H, k) and U_R.shape == (H, k)
    assert torch.allclose(U_R.T @ U_R, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(U_L.transpose(1, 2) @ U_L, torch.eye(k, dtype=torch.float64).expand(2, k, k), atol=1e-10)
    f0, G = rc.reduced_jacobian(head, hidden, mask, U_L, U_R, batch_size=4)
    _, G_ref = ntk.per_example_jacobian(head, QV, (hidden, mask))
    proj = torch.einsum("pmk,nqpmo,ol->nqpkl", U_L, G_ref.double(), U_R)
    assert f0.shape == (6, 1) and G.shape == (6, 1, 2, k, k)
    assert torch.allclose(G, proj, atol=1e-10)
    if k == H:  # the identity: the full problem
        assert torch.allclose(G, G_ref.double(), atol=1e-10)


def test_bad_inputs_raise():
    head, (hidden, mask) = ToyHead(), _inputs()
    with pytest.raises(ValueError, match="hidden must have shape"):
        rc.token_gradients(head, hidden[0], mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        rc.token_gradients(head, hidden, mask[:, :2])
    bad = hidden.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rc.token_gradients(head, bad, mask)
    with pytest.raises(ValueError, match="sub-modules"):
        rc.token_gradients(nn.Linear(2, 2), hidden, mask)
    with pytest.raises(ValueError, match="out of range"):
        rc.subspace_bases(head, hidden, mask, 0)
    with pytest.raises(ValueError, match="out of range"):
        rc.subspace_bases(head, hidden, mask, H + 1)
    U_L, U_R = rc.subspace_bases(head, hidden, mask, 3)
    with pytest.raises(ValueError, match="U_L must have shape"):
        rc.reduced_jacobian(head, hidden, mask, U_L[:1], U_R)
    with pytest.raises(ValueError, match="U_R must have shape"):
        rc.reduced_jacobian(head, hidden, mask, U_L, U_R[:2])
    with pytest.raises(ValueError, match="batch_size"):
        rc.reduced_jacobian(head, hidden, mask, U_L, U_R, batch_size=0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_truncation_error_eckart_young(seed, rank):
    g = torch.Generator().manual_seed(seed)
    delta = torch.stack([torch.randn(6, rank, generator=g, dtype=torch.float64)
                         @ torch.randn(rank, 5, generator=g, dtype=torch.float64) for _ in range(2)])
    err = rc.truncation_error(delta, range(0, 6))
    assert err[0] == pytest.approx(1.0)
    assert np.all(np.diff(err) <= 1e-12)                      # non-increasing
    assert np.all(err[rank:] < 1e-10) and err[rank - 1] > 1e-8  # exact from rank on
    s = torch.linalg.svdvals(delta)                          # Eckart–Young value
    expect = float(s[:, 1:].square().sum().sqrt() / delta.norm())
    assert err[1] == pytest.approx(expect, rel=1e-10)


def test_truncation_error_rejects():
    with pytest.raises(ValueError, match="shape"):
        rc.truncation_error(torch.ones(3, 3), [1])
    with pytest.raises(ValueError, match="zero"):
        rc.truncation_error(torch.zeros(1, 3, 3), [1])
    with pytest.raises(ValueError, match="NaN"):
        rc.truncation_error(torch.full((1, 3, 3), float("nan")), [1])
    with pytest.raises(ValueError, match="out of range"):
        rc.truncation_error(torch.ones(1, 3, 3, dtype=torch.float64), [4])


def _logistic_problem(lam_frac=0.3):
    pr = ntk.synthetic_problem(8, 1, 4, 5, 0.0, generator=torch.Generator().manual_seed(0), loss="logistic")
    return ntk.LinearisedProblem(pr.G, pr.f0, pr.y, lam_frac * pr.lambda_max(), "logistic")


def test_frozen_factor_fit_ranks_and_convexity():
    prob = _logistic_problem()
    delta, rk = rc.frozen_factor_fit(prob, [1, 3], 2, steps=400, lr=0.05, generator=torch.Generator().manual_seed(1))
    assert delta.shape == (4, 1, 4, 5) and rk.tolist() == [1, 1, 3, 3]
    assert [int(torch.linalg.matrix_rank(d[0])) for d in delta] == [1, 1, 3, 3]
    # training lowers the loss below the pretrained model's
    assert (prob.data_loss(delta) < prob.data_loss(prob.zeros()) - 1e-3).all()
    opt = ntk.proximal_gradient(prob, 5_000, tol=1e-10)
    assert (prob.objective(delta) >= opt.cert.dual - 1e-9).all()   # never below the certified optimum


def test_frozen_factor_fit_rejects():
    prob = _logistic_problem()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="ranks"):
        rc.frozen_factor_fit(prob, [0], 1, steps=1, lr=0.1, generator=g)
    with pytest.raises(ValueError, match="ranks"):
        rc.frozen_factor_fit(prob, [5], 1, steps=1, lr=0.1, generator=g)
    with pytest.raises(ValueError, match="seeds"):
        rc.frozen_factor_fit(prob, [1], 0, steps=1, lr=0.1, generator=g)


def test_reach_fraction():
    obj = np.array([1.0, 1.0 + 1e-8, 1.5, 1.0, 2.0, 2.0])
    assert rc.reach_fraction(obj, 1.0, 1e-6, 3).tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="multiple"):
        rc.reach_fraction(obj, 1.0, 1e-6, 4)
    with pytest.raises(ValueError, match="finite"):
        rc.reach_fraction(np.array([np.nan, 1.0]), 1.0, 1e-6, 1)
    with pytest.raises(ValueError, match="tol"):
        rc.reach_fraction(obj, 1.0, 0.0, 3)


def test_recommend_rank():
    ranks = [1, 2, 3, 4, 5]
    out = rc.recommend_rank(ranks, [0.5, 1e-5, 0, 0, 0], [1, 0.5, 1, 1, 1], [0.1] * 5, expr_tol=1e-3)
    assert out == {"r_expr": 2, "r_train": 3, "r_rec": 3, "gap_rec": 0.1}
    out = rc.recommend_rank(ranks, [0, 0, 0, 0, 0], [1] * 5, [0.0, 0.1, 0.2, 0.3, 0.4], expr_tol=1e-3)
    assert out["r_rec"] == 1 and out["gap_rec"] == 0.0
    with pytest.raises(ValueError, match="increasing"):
        rc.recommend_rank([2, 1], [0, 0], [1, 1], [0, 0], expr_tol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        rc.recommend_rank(ranks, [0, 0], [1] * 5, [0] * 5, expr_tol=1e-3)
    with pytest.raises(ValueError, match="no tested rank expresses"):
        rc.recommend_rank(ranks, [1] * 5, [1] * 5, [0] * 5, expr_tol=1e-3)
    with pytest.raises(ValueError, match="largest tested rank"):
        rc.recommend_rank(ranks, [0] * 5, [1, 1, 1, 1, 0.5], [0] * 5, expr_tol=1e-3)
    with pytest.raises(ValueError, match="fractions"):
        rc.recommend_rank(ranks, [0] * 5, [2] * 5, [0] * 5, expr_tol=1e-3)
    with pytest.raises(ValueError, match="NaN"):
        rc.recommend_rank(ranks, [np.nan] * 5, [1] * 5, [0] * 5, expr_tol=1e-3)
