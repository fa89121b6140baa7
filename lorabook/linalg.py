"""Linear algebra shared by the chapters: LR_r, tolerant rank, products of layer matrices.

All functions take torch tensors and keep their dtype and device; use float64 where theory is exact.
"""
from __future__ import annotations

from typing import Sequence

import torch


def check_matrix(M: torch.Tensor, name: str = "M", *, square: bool = False) -> None:
    """Raise ``ValueError`` unless ``M`` is a finite 2-D floating tensor (square if asked)."""
    if not isinstance(M, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    if M.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(M.shape)}")
    if not M.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {M.dtype}")
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    if square and M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(M.shape)}")


def check_rank(r: int, max_rank: int, name: str = "rank", *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``r`` is an integer in ``[1, max_rank]`` (``[0, max_rank]`` if allowed)."""
    lo = 0 if allow_zero else 1
    if isinstance(r, bool) or not isinstance(r, int):
        raise ValueError(f"{name} must be an integer, got {type(r).__name__}")
    if not lo <= r <= max_rank:
        raise ValueError(f"{name}={r} is out of range: it must lie in [{lo}, {max_rank}]")


def low_rank_approx(M: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-``r`` approximation LR_r(M) (Eckart–Young, any unitarily invariant norm).

    Parameters
    ----------
    M : (m, n) floating tensor.
    r : integer in ``[0, min(m, n)]``; ``r = 0`` gives the zero matrix.

    Returns
    -------
    (m, n) tensor ``U[:, :r] diag(s[:r]) V[:, :r]^T`` from the SVD of ``M``.
    """
    check_matrix(M, "M")
    check_rank(r, min(M.shape), "r", allow_zero=True)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vh[:r]


def numerical_rank(M: torch.Tensor, rtol: float | None = None) -> int:
    """Number of singular values of ``M`` above ``rtol · σ_max``.

    Parameters
    ----------
    M : (m, n) floating tensor.
    rtol : relative tolerance in ``(0, 1)``; default ``max(m, n) · eps(dtype)`` (NumPy's convention).

    Returns
    -------
    int in ``[0, min(m, n)]``; 0 for the zero matrix.
    """
    check_matrix(M, "M")
    if rtol is None:
        rtol = max(M.shape) * torch.finfo(M.dtype).eps
    if not (0 < rtol < 1):
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    s = torch.linalg.svdvals(M)
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > rtol * s[0]).sum())


def chain_product(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Product ``W_L ⋯ W_2 W_1`` of layer matrices given in application order ``[W_1, …, W_L]``.

    ``W_1`` acts first on an input column ``x``: ``chain_product([W1, W2]) @ x == W2 @ (W1 @ x)``.

    Parameters
    ----------
    mats : non-empty sequence of 2-D tensors with ``mats[l].shape[1] == mats[l-1].shape[0]``.

    Returns
    -------
    (d_out of W_L, d_in of W_1) tensor.
    """
    if isinstance(mats, torch.Tensor) or len(mats) == 0:
        raise ValueError("mats must be a non-empty sequence of matrices [W_1, ..., W_L]")
    out = None
    for l, W in enumerate(mats, start=1):
        check_matrix(W, f"W_{l}")
        if out is None:
            out = W
            continue
        if W.shape[1] != out.shape[0]:
            raise ValueError(
                f"W_{l} has shape {tuple(W.shape)} but the product so far has {out.shape[0]} rows"
            )
        out = W @ out
    return out
