"""Negative controls of the front matter's theorem claims: the same check as the page, on an input where the
theorem's hypothesis is violated, must fail.

The primer (chapters/00_lora_primer) checks Lemma 5.1 of Recht, Fazel & Parrilo (Lemma 2.2 of Jang, Lee & Ryu):
every factorisation ``B A = X`` costs at least ``‖X‖_*`` in weight decay. The page measures the *deficit*, the most
negative relative gap ``weight_decay_gap(X, B, A)`` among the factorisations it visits, and holds it to ``<= 1e-12``.
"""
import pytest
import torch

from lorabook.checks import evaluate
from lorabook.lora import weight_decay_gap

OP, LIMIT = "<=", 1e-12  # the primer's check: deficit <= 1e-12


def _rank_r(n_mats: int, m: int, n: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_mats, m, r, dtype=torch.float64, generator=g)
            @ torch.randn(n_mats, r, n, dtype=torch.float64, generator=g))


def _balanced(M: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of LR_k(M): B = U_k Σ_k^½, A = Σ_k^½ V_kᵀ (batched)."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[..., :k] * S[..., None, :k].sqrt(), S[..., :k, None].sqrt() * Vh[..., :k, :]


def test_weight_decay_lemma_fails_one_rank_short():
    """A pair that factorises LR_{r-1}(X) instead of X costs σ_r(X) less than ‖X‖_*: the check must fail."""
    r = 4
    X = _rank_r(16, 12, 10, r, seed=0)
    B, A = _balanced(X, r - 1)
    gap = weight_decay_gap(X, B, A)
    S = torch.linalg.svdvals(X)
    torch.testing.assert_close(gap, -S[:, r - 1] / S.sum(-1))  # exactly σ_r / ‖X‖_* below
    deficit = (-gap).max().item()
    assert not evaluate(deficit, OP, LIMIT).passed


def test_weight_decay_lemma_fails_on_a_shrunk_factorisation():
    """Factors of X scaled by 0.9 (so BA = 0.81 X): cheaper than ‖X‖_* — the check must fail."""
    X = _rank_r(8, 12, 10, 4, seed=1)
    B, A = _balanced(X, 4)
    assert not evaluate((-weight_decay_gap(X, 0.9 * B, 0.9 * A)).max().item(), OP, LIMIT).passed


def test_weight_decay_check_passes_on_true_factorisations():
    """The same check passes on the balanced factorisation and on unbalanced ones (BG, G⁻¹A)."""
    r = 4
    X = _rank_r(8, 12, 10, r, seed=2)
    B, A = _balanced(X, r)
    g = torch.Generator().manual_seed(3)
    G = torch.linalg.matrix_exp(0.5 * torch.randn(8, r, r, dtype=torch.float64, generator=g))
    gaps = torch.cat([weight_decay_gap(X, B, A), weight_decay_gap(X, B @ G, torch.linalg.solve(G, A))])
    assert evaluate((-gaps).max().item(), OP, LIMIT).passed
    assert weight_decay_gap(X, B, A).abs().max() < 1e-13
    assert (weight_decay_gap(X, B @ G, torch.linalg.solve(G, A)) > 1e-3).all()  # unbalanced costs more


def test_weight_decay_gap_by_hand():
    """X = diag(3, 1): ‖X‖_* = 4. B = [[2, 0], [0, 1]], A = [[1.5, 0], [0, 1]] gives BA = X and cost
    ½(4 + 1 + 2.25 + 1) = 4.125, gap 0.125/4; an unbatched call works too."""
    X = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    B = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    A = torch.tensor([[1.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert weight_decay_gap(X, B, A).item() == pytest.approx(0.125 / 4, abs=1e-15)
    B1, A1 = B[:, :1], A[:1]                     # rank-1 "factorisation": BA = diag(3, 0) ≠ X
    assert weight_decay_gap(X, B1, A1).item() == pytest.approx((0.5 * (4 + 2.25) - 4) / 4, abs=1e-15)


@pytest.mark.parametrize("X, B, A, message", [
    (torch.ones(3, 4), torch.ones(3, 2), torch.ones(2, 5), "cannot have the shape"),
    (torch.ones(3, 4), torch.ones(3, 2), torch.ones(3, 4), "cannot have the shape"),
    (torch.ones(2, 3, 4), torch.ones(3, 3, 2), torch.ones(2, 2, 4), "leading dimensions"),
    (torch.zeros(3, 4), torch.ones(3, 2), torch.ones(2, 4), "zero slice"),
    (torch.full((3, 4), float("nan")), torch.ones(3, 2), torch.ones(2, 4), "NaN"),
    (torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 2), torch.ones(2, 4), "floating"),
    (torch.ones(4), torch.ones(3, 2), torch.ones(2, 4), "at least 2"),
])
def test_weight_decay_gap_validates(X, B, A, message):
    with pytest.raises(ValueError, match=message):
        weight_decay_gap(X, B, A)
