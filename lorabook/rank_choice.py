"""Chapter 4: choosing a LoRA rank with the three papers on one task.

The task is chapter 2's: MiniLM's last layer with the prompt-style zero-shot logit
(:class:`lorabook.ntk.MiniLMHead`), linearised in its query and value weights (``P = 2`` matrices of size
384×384), ``K = 1``, logistic loss. To make sweeps over ranks, initialisations and several ``N`` affordable on two
CPU cores we fine-tune inside a fixed ``k×k`` subspace of each matrix,

    δ_p = U_{L,p} δ̃_p U_Rᵀ,     U_{L,p} ∈ R^{384×k},  U_R ∈ R^{384×k}  (orthonormal columns),

chosen from the *training* data only (:func:`subspace_bases`). The reduced problem is again a linearised
fine-tuning problem, with per-example gradients ``G̃_i = U_Lᵀ G_i U_R`` (:func:`reduced_jacobian`), so every theorem
of chapters 2 and 3 applies to it verbatim; ``k = 384`` (``paper`` scale) is the full problem.

Per-example gradients come from ONE forward and backward pass: examples do not interact, so the gradient of
``Σ_i f_i`` with respect to token ``t`` of example ``i``'s query (value) output is ``∂f_i/∂q_{i,t}``, and
``G_i = Σ_t (∂f_i/∂q_{i,t}) x_{i,t}ᵀ``.

Contents: :func:`token_gradients`, :func:`subspace_bases`, :func:`reduced_jacobian`, :func:`truncation_error`,
:func:`frozen_factor_fit`, :func:`reach_fraction`, :func:`recommend_rank`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .checks import check_positive_int
from .config import few_threads
from .linalg import low_rank_approx
from .train import batched_adam

__all__ = ["QV_MODULES", "token_gradients", "subspace_bases", "reduced_jacobian", "truncation_error",
           "frozen_factor_fit", "reach_fraction", "recommend_rank"]

#: The linear sub-modules of :class:`lorabook.ntk.MiniLMHead` whose weights are linearised (query, value).
QV_MODULES = ("layer.attention.self.query", "layer.attention.self.value")


def _check_inputs(head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> list[nn.Linear]:
    if not isinstance(head, nn.Module):
        raise ValueError(f"head must be an nn.Module, got {type(head).__name__}")
    try:
        mods = [head.get_submodule(name) for name in QV_MODULES]
    except AttributeError as err:
        raise ValueError(f"head has no sub-modules {QV_MODULES} (use lorabook.ntk.MiniLMHead)") from err
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must have shape (n, T, H), got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    if not isinstance(mask, torch.Tensor) or mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(hidden.shape[:2])}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if hidden.shape[0] < 1 or not torch.isfinite(hidden).all():
        raise ValueError("hidden must be non-empty and finite (no NaN)")
    if hidden.shape[2] != mods[0].in_features:
        raise ValueError(f"hidden size {hidden.shape[2]} does not match the layer's {mods[0].in_features}")
    return mods


def token_gradients(head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretrained logits and per-token output gradients of the query and value projections.

    Parameters
    ----------
    head : :class:`lorabook.ntk.MiniLMHead` (``forward(hidden, mask) -> (n,)``).
    hidden : ``(n, T, 384)`` token states entering the layer; ``mask`` ``(n, T)`` 0/1 padding mask.

    Returns
    -------
    ``(f0, g)``: ``f0`` ``(n,)`` float64 logits and ``g`` ``(n, T, P=2, 384)`` (``hidden``'s dtype) with
    ``g[i, t, p] = ∂f_i/∂(W_p x_{i,t})``; then ``∂f_i/∂W_p = Σ_t g[i, t, p] x_{i,t}ᵀ``.
    """
    mods = _check_inputs(head, hidden, mask)
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in mods]
    try:
        with torch.enable_grad():
            f = head(hidden.detach().requires_grad_(True), mask)  # the weights are frozen: track the input
            grads = torch.autograd.grad(f.sum(), outs)
    finally:
        for h in hooks:
            h.remove()
    return f.detach().double(), torch.stack([g.detach() for g in grads], dim=2)


def subspace_bases(head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases of the fine-tuning subspace, from the training examples only.

    ``U_R`` ``(384, k)``: the top-``k`` right singular vectors of the stacked non-padding token states (the inputs of
    both matrices). ``U_L`` ``(P, 384, k)``: per matrix, the top-``k`` right singular vectors of the stacked per-token
    output gradients. The subspace contains the dominant directions of every ``G_i``; ``k = 384`` gives the
    identity (the full problem). Returns float64 tensors.
    """
    _check_inputs(head, hidden, mask)
    H = hidden.shape[2]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= H:
        raise ValueError(f"k={k!r} is out of range: it must be an integer in [1, {H}]")
    _, g = token_gradients(head, hidden, mask)
    keep = mask.bool()
    X = hidden[keep].double()                       # (n_tok, H)
    if k == H:
        eye = torch.eye(H, dtype=torch.float64)
        return eye.expand(g.shape[2], H, H).clone(), eye
    U_R = torch.linalg.svd(X, full_matrices=True)[2][:k].T
    U_L = torch.stack([torch.linalg.svd(g[:, :, p][keep].double(), full_matrices=True)[2][:k].T
                       for p in range(g.shape[2])])
    return U_L, U_R


def reduced_jacobian(head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, U_L: torch.Tensor,
                     U_R: torch.Tensor, *, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-example gradients in the subspace: ``G̃_i = U_Lᵀ (∂f_i/∂W) U_R``.

    Parameters
    ----------
    hidden, mask : ``(n, T, 384)`` and ``(n, T)``, processed in batches of ``batch_size``.
    U_L : ``(P, 384, k)``; U_R : ``(384, k)`` (from :func:`subspace_bases`).

    Returns
    -------
    ``(f0, G)``: ``f0`` ``(n, 1)`` and ``G`` ``(n, 1, P, k, k)``, float64 — the inputs of
    :class:`lorabook.ntk.LinearisedProblem` (``K = 1``). Memory ``n·P·k²`` numbers.
    """
    _check_inputs(head, hidden, mask)
    H = hidden.shape[2]
    if not isinstance(U_R, torch.Tensor) or U_R.dim() != 2 or U_R.shape[0] != H:
        got = tuple(U_R.shape) if isinstance(U_R, torch.Tensor) else type(U_R).__name__
        raise ValueError(f"U_R must have shape ({H}, k), got {got}")
    k = U_R.shape[1]
    if not isinstance(U_L, torch.Tensor) or U_L.shape != (len(QV_MODULES), H, k):
        raise ValueError(f"U_L must have shape ({len(QV_MODULES)}, {H}, {k}), got "
                         f"{tuple(U_L.shape) if isinstance(U_L, torch.Tensor) else U_L}")
    check_positive_int(batch_size, "batch_size")
    f0s, Gs = [], []
    UL, UR = U_L.to(hidden.dtype), U_R.to(hidden.dtype)
    for i in range(0, hidden.shape[0], batch_size):
        h, m = hidden[i:i + batch_size], mask[i:i + batch_size]
        f0, g = token_gradients(head, h, m)
        gl = torch.einsum("ntpm,pmk->ntpk", g * m[:, :, None, None].to(g.dtype), UL)   # (b, T, P, k)
        xr = h @ UR                                                                 # (b, T, k)
        Gs.append(torch.einsum("ntpk,ntl->npkl", gl.double(), xr.double()))
        f0s.append(f0)
    return torch.cat(f0s)[:, None], torch.cat(Gs)[:, None]


def truncation_error(delta: torch.Tensor, ranks: Sequence[int]) -> np.ndarray:
    """Relative error of the best rank-``r`` adapters for ``delta``: ``‖δ − LR_r(δ)‖_F / ‖δ‖_F``.

    Parameters
    ----------
    delta : ``(P, m, n)`` update (each of the ``P`` matrices truncated to rank ``r``); must be non-zero.
    ranks : integers in ``[0, min(m, n)]``.

    Returns
    -------
    ``(len(ranks),)`` array, non-increasing in ``r`` (Eckart–Young), zero once ``r ≥ max_p rank δ_p``.
    """
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3:
        raise ValueError(f"delta must have shape (P, m, n), got "
                         f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
    if not torch.isfinite(delta).all():
        raise ValueError("delta contains NaN or infinite entries")
    total = float(delta.norm())
    if total == 0:
        raise ValueError("delta is zero: the relative error is undefined")
    out = []
    for r in ranks:
        approx = torch.stack([low_rank_approx(d, int(r) if not isinstance(r, bool) else r) for d in delta])
        out.append(float((delta - approx).norm()) / total)
    return np.array(out)


def frozen_factor_fit(problem, ranks: Sequence[int], seeds: int, *, steps: int, lr: float,
                      generator: torch.Generator, progress: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA with a frozen random factor on a linearised problem, batched over ranks × seeds.

    ``δ_p = B_p A_pᵀ`` with the output-side factor ``B_p`` ``(m, r)`` frozen, i.i.d. ``N(0, 1/m)`` (Kratsios et al.'s
    setting), and ``A_p`` ``(n, r)`` trained by Adam on the mean loss plus weight decay ``problem.lam/2 ‖A‖_F²`` from
    ``A = 0``. The problem is convex in ``A``.

    Parameters
    ----------
    problem : :class:`lorabook.ntk.LinearisedProblem`; ranks : integers in ``[1, min(m, n)]``; seeds ≥ 1.

    Returns
    -------
    ``(delta, rank_of_slice)``: ``(S, P, m, n)`` updates and ``(S,)`` ranks, ``S = len(ranks)·seeds`` (rank-major).
    """
    P, m, n = problem.shape
    ranks = list(ranks)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= min(m, n)
                        for r in ranks):
        raise ValueError(f"ranks must be integers in [1, {min(m, n)}], got {ranks}")
    check_positive_int(seeds, "seeds")
    rmax = int(max(ranks))
    rk = torch.tensor([int(r) for r in ranks]).repeat_interleave(seeds)
    S = len(rk)
    mask = (torch.arange(rmax)[None] < rk[:, None]).to(problem.G.dtype)[:, None, None]     # (S, 1, 1, rmax)
    B = torch.randn(S, P, m, rmax, generator=generator, dtype=problem.G.dtype) / math.sqrt(m) * mask
    B = B.to(problem.G.device)
    mask = mask.to(problem.G.device)
    A = torch.zeros(S, P, n, rmax, dtype=problem.G.dtype, device=problem.G.device)

    def loss_fn(_step):
        return problem.data_loss(B @ (A * mask).transpose(-1, -2))

    with few_threads(problem.G.numel() + A.numel(), problem.G.device):
        batched_adam([A], loss_fn, steps, lr, weight_decay=problem.lam, progress=progress)
    return B @ (A.detach() * mask).transpose(-1, -2), rk


def reach_fraction(objective: torch.Tensor | np.ndarray, optimum: float, tol: float, n_ranks: int) -> np.ndarray:
    """Fraction of runs per rank whose relative gap ``(F − F*)/|F*|`` is below ``tol``.

    ``objective`` : ``(n_ranks·n_init,)`` final objectives, rank-major (as :func:`lorabook.ntk.lora_init`).
    Returns ``(n_ranks,)`` fractions in ``[0, 1]``.
    """
    obj = np.asarray(objective.detach().cpu() if isinstance(objective, torch.Tensor) else objective, dtype=float)
    if obj.ndim != 1 or n_ranks < 1 or obj.size % n_ranks:
        raise ValueError(f"objective must be a vector whose length is a multiple of n_ranks={n_ranks}, got {obj.shape}")
    if not np.isfinite(obj).all() or not math.isfinite(optimum) or optimum == 0:
        raise ValueError("objective and a non-zero optimum must be finite")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    gap = (obj - optimum) / abs(optimum)
    return (gap.reshape(n_ranks, -1) < tol).mean(1)


def recommend_rank(ranks: Sequence[int], trunc_err: Sequence[float], reached: Sequence[float],
                   gap: Sequence[float], *, expr_tol: float) -> dict:
    """Combine the three curves into one rank.

    Parameters
    ----------
    ranks : increasing tested ranks ``r_1 < … < r_J``.
    trunc_err : ``(J,)`` relative error of the best rank-``r`` approximation of the certified optimum (expressivity).
    reached : ``(J,)`` fraction of random initialisations reaching the optimum (trainability).
    gap : ``(J,)`` measured train–test gap with a frozen random factor (generalisation).
    expr_tol : an adapter of rank ``r`` *expresses* the optimum when ``trunc_err ≤ expr_tol``.

    Returns
    -------
    dict with ``r_expr`` (smallest expressive rank), ``r_train`` (smallest rank from which every tested rank
    reaches the optimum from every initialisation), ``r_rec = max(r_expr, r_train)`` — larger ranks only widen the
    generalisation gap's worst case, so the smallest rank that is expressive and trainable is the answer — and
    ``gap_rec`` (the measured gap there). ``ValueError`` when no tested rank qualifies.
    """
    r = np.asarray(ranks)
    e, f, g = (np.asarray(v, dtype=float) for v in (trunc_err, reached, gap))
    if r.ndim != 1 or r.size == 0 or np.any(np.diff(r) <= 0):
        raise ValueError("ranks must be a non-empty increasing sequence")
    if not (e.shape == f.shape == g.shape == r.shape):
        raise ValueError(f"trunc_err, reached and gap must have shape {r.shape}, got {e.shape}, {f.shape}, {g.shape}")
    if not (np.isfinite(e).all() and np.isfinite(f).all() and np.isfinite(g).all()):
        raise ValueError("the curves contain NaN or infinite values")
    if np.any((f < 0) | (f > 1)):
        raise ValueError("reached must be fractions in [0, 1]")
    if not expr_tol > 0:
        raise ValueError(f"expr_tol must be positive, got {expr_tol}")
    ok_e = np.flatnonzero(e <= expr_tol)
    if ok_e.size == 0:
        raise ValueError(f"no tested rank expresses the optimum within expr_tol={expr_tol}; test larger ranks")
    bad = np.flatnonzero(f < 1)
    j_train = 0 if bad.size == 0 else int(bad[-1]) + 1
    if j_train >= r.size:
        raise ValueError("the largest tested rank does not reach the optimum from every initialisation")
    j = max(int(ok_e[0]), j_train)
    return {"r_expr": int(r[ok_e[0]]), "r_train": int(r[j_train]), "r_rec": int(r[j]), "gap_rec": float(g[j])}
