import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorabook.linalg import chain_product, check_matrix, check_rank, low_rank_approx, numerical_rank

dims = st.integers(min_value=1, max_value=8)


def random_rank(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, data=st.data())
def test_low_rank_approx_is_eckart_young(m, n, data):
    seed = data.draw(st.integers(0, 10_000))
    r = data.draw(st.integers(0, min(m, n)))
    M = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    L = low_rank_approx(M, r)
    s = torch.linalg.svdvals(M)
    assert numerical_rank(L) <= r if r else torch.count_nonzero(L) == 0
    # spectral error = sigma_{r+1}, Frobenius error^2 = tail sum (Eckart-Young)
    tail = s[r:]
    assert torch.linalg.matrix_norm(M - L, 2) == pytest.approx(tail[0].item() if len(tail) else 0.0, abs=1e-10)
    assert torch.linalg.matrix_norm(M - L).square() == pytest.approx(tail.square().sum().item(), abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, data=st.data())
def test_numerical_rank_of_products(m, n, data):
    r = data.draw(st.integers(0, min(m, n)))
    M = random_rank(m, n, r, data.draw(st.integers(0, 10_000)))
    assert numerical_rank(M) == r


def test_numerical_rank_tolerance():
    M = torch.diag(torch.tensor([1.0, 1e-3, 1e-9]))
    assert numerical_rank(M) == 3
    assert numerical_rank(M, rtol=1e-6) == 2
    assert numerical_rank(torch.zeros(3, 3)) == 0


@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_chain_product_order(L, seed):
    g = torch.Generator().manual_seed(seed)
    dims_ = [int(d) for d in torch.randint(1, 6, (L + 1,), generator=g)]
    mats = [torch.randn(dims_[l + 1], dims_[l], generator=g) for l in range(L)]
    x = torch.randn(dims_[0], generator=g)
    y = x
    for W in mats:
        y = W @ y
    assert torch.allclose(chain_product(mats) @ x, y)


def test_chain_product_bad_input():
    with pytest.raises(ValueError, match="non-empty sequence"):
        chain_product([])
    with pytest.raises(ValueError, match="non-empty sequence"):
        chain_product(torch.eye(3))
    with pytest.raises(ValueError, match="W_2 has shape"):
        chain_product([torch.eye(3), torch.eye(4)])


@pytest.mark.parametrize(
    "M, match",
    [
        (torch.ones(3), "2-D matrix"),
        (torch.ones(2, 2, 2), "2-D matrix"),
        (torch.ones(3, 3, dtype=torch.int64), "floating dtype"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_check_matrix_bad_input(M, match):
    with pytest.raises(ValueError, match=match):
        low_rank_approx(M, 1) if isinstance(M, torch.Tensor) and M.dim() == 2 and M.is_floating_point() else check_matrix(M)


def test_check_matrix_square():
    with pytest.raises(ValueError, match="must be square"):
        check_matrix(torch.ones(2, 3), square=True)


@pytest.mark.parametrize("r", [-1, 4, 2.0, True])
def test_low_rank_approx_rank_out_of_range(r):
    with pytest.raises(ValueError, match="r"):
        low_rank_approx(torch.ones(3, 5), r)


def test_check_rank_messages():
    with pytest.raises(ValueError, match=r"rank=0 is out of range: it must lie in \[1, 3\]"):
        check_rank(0, 3)
    check_rank(0, 3, allow_zero=True)


@pytest.mark.parametrize("rtol", [0.0, 1.0, -1e-3])
def test_numerical_rank_bad_rtol(rtol):
    with pytest.raises(ValueError, match="rtol"):
        numerical_rank(torch.eye(2), rtol)


def test_error_messages_name_the_argument_and_the_problem():
    """Each validator names the offending argument, what it got and what it needs (not just 'ValueError')."""
    M = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^M contains NaN"):
        low_rank_approx(torch.full((2, 2), float("nan")), 1)
    with pytest.raises(ValueError, match=r"^M must be a torch.Tensor, got list$"):
        numerical_rank([[1.0]])
    with pytest.raises(ValueError, match=r"^r=3 is out of range: it must lie in \[0, 2\]$"):
        low_rank_approx(M, 3)
    with pytest.raises(ValueError, match=r"^r must be an integer, got float$"):
        low_rank_approx(M, 1.0)
    with pytest.raises(ValueError, match=r"^W_2 must have a floating dtype"):
        chain_product([M, torch.ones(2, 3, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"^W_2 has shape \(4, 4\) but the product so far has 3 rows$"):
        chain_product([M, torch.ones(4, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"^mats must be a non-empty sequence of matrices \[W_1, \.\.\., W_L\]$"):
        chain_product([])


def test_numerical_rank_edges():
    # a singular value exactly at the threshold does not count (strictly above rtol·σ_max)
    assert numerical_rank(torch.diag(torch.tensor([1.0, 0.5], dtype=torch.float64)), rtol=0.5) == 1
    assert numerical_rank(torch.zeros(0, 3)) == 0          # empty matrix
    assert numerical_rank(torch.zeros(2, 3)) == 0          # zero matrix


def test_check_matrix_default_name_and_square():
    with pytest.raises(ValueError, match=r"^M must be a 2-D matrix, got shape \(3,\)$"):
        check_matrix(torch.ones(3))
    with pytest.raises(ValueError, match=r"^A must be square, got shape \(2, 3\)$"):
        check_matrix(torch.ones(2, 3), "A", square=True)
