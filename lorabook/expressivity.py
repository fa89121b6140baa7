"""Chapter 1 — the expressive power of LoRA (Zeng & Lee, ICLR 2024): constructions, bounds, batched training.

Conventions: layer matrices are listed in application order ``[W_1, …, W_L]`` (``W_1`` acts first), inputs
are rows, ``x`` has shape ``(..., n, D)`` and a layer maps ``x ↦ x W^T + b``. The FNN of the paper puts a
ReLU after *every* layer, the last included. Constructions are exact linear algebra: use float64.

Public API
----------
* :func:`lemma1_error` — ``σ_{RL+1}(E)``, the optimum of Lemma 1.
* :func:`linear_construction` — the adapters of the proof of Lemma 1.
* :func:`random_linear_instance` — a frozen product and a target with ``rank E`` prescribed.
* :func:`fnn_forward`, :func:`uniform_partition`, :func:`fnn_construction` — ReLU FNNs (Lemma 2, Theorem 5).
* :func:`relu_bounds`, :func:`partition_bound` — the error bounds, in the paper's form and corrected.
* :func:`tfn_forward`, :func:`tfn_construction` — the Transformer network and its rank-⌈D/2⌉ construction.
* :func:`train_fnn_adapters`, :func:`adapter_mse` — LoRA / final-layer tuning by Adam, batched over a grid.
* :func:`fnn_training_curve` — the same training with a learning-rate schedule, test error along the run.
* :func:`dead_output_share` — the part of an adapted model's error carried by output ReLUs that never fire.
* :func:`flat_spectrum_instance` — a ReLU instance with an orthogonal error matrix (Lemma 2's stated bound).
* :func:`random_fnn_instance`, :func:`grid_configs`, :func:`fnn_grid_experiment`, :func:`cached_grid` — the chapter's
  gradient experiment (instances, grid, validation selection, fresh and shifted test sets, cache).
* :func:`random_tfn_instance`, :func:`train_tfn_lora`, :func:`tfn_mse` — gradient LoRA on Transformer networks.
* :func:`random_tfn_pair`, :func:`tfn_full_construction` — target and frozen Transformers that differ in every
  weight, and the paper's construction for them (rank ⌈D/2⌉ on attention, updated feed-forward biases and last
  output weight).
* :func:`uniform_inputs` — inputs uniform on a cube, drawn on the CPU.
* :func:`paper_fnn_instance`, :func:`gaussian_inputs`, :func:`gaussian_radius`, :func:`train_lora_gaussian`,
  :func:`pretrain_frozen` — the paper's own settings: its initialisations, Gaussian and shifted inputs, trained
  biases, frozen models pretrained towards the target.
* :func:`partition_construction`, :func:`partition_threshold`, :func:`close_in_rank`, :func:`rank_needed`,
  :func:`construction_curve` — general partitions and the rank a construction needs.
* :func:`random_linear_pair`, :func:`linear_rank_needed` — the random-model results as a computed check.
* :func:`tfn_between`, :func:`tfn_low_rank_frozen`, :func:`tfn_pair_differences`,
  :func:`tfn_construction_threshold`, :func:`tfn_construction_curve`, :func:`pretrain_tfn` — frozen Transformers
  near the target, pretrained towards it, or differing from it by a rank-k change.
"""
from __future__ import annotations

import math
import types
from typing import Callable, Sequence

import torch

from .checks import check_positive_int
from .linalg import chain_product, check_matrix, check_rank, numerical_rank
from tqdm import tqdm

from .train import batched_adam

_COND_MAX = 1e12

#: One criterion of an exact match, the same for linear, ReLU and Transformer networks: test MSE of the adapted
#: model at most this fraction of the frozen model's test MSE (the float64 constructions sit at round-off);
#: everything between this value and the construction's level is "not reached within the training budget".
EXACT_REL_MSE = 1e-6
# largest round-off (relative to the target bias) that fnn_construction accepts when it cancels the accumulated shift
_BIAS_LOSS_MAX = 1e-8


# ----------------------------------------------------------------------------------------------------------
# validation helpers
def _check_layers(mats: Sequence[torch.Tensor], name: str, D: int | None = None) -> int:
    if not isinstance(mats, (list, tuple)):
        raise ValueError(f"{name} must be a list of (D, D) matrices, got {type(mats).__name__}")
    if len(mats) == 0:
        raise ValueError(f"{name} must be a non-empty list of (D, D) matrices")
    for l, W in enumerate(mats, start=1):
        check_matrix(W, f"{name}[{l}]", square=True)
        D = W.shape[0] if D is None else D
        if W.shape != (D, D):
            raise ValueError(f"{name}[{l}] has shape {tuple(W.shape)}, expected ({D}, {D})")
    return D


def _check_vectors(vecs: Sequence[torch.Tensor], name: str, n: int, D: int) -> None:
    if isinstance(vecs, torch.Tensor) or not isinstance(vecs, (list, tuple)) or len(vecs) != n:
        raise ValueError(f"{name} must be a list of {n} bias vectors of length {D}")
    for l, b in enumerate(vecs, start=1):
        if not isinstance(b, torch.Tensor) or b.shape != (D,) or not b.is_floating_point():
            raise ValueError(f"{name}[{l}] must be a floating tensor of shape ({D},)")
        if not torch.isfinite(b).all():
            raise ValueError(f"{name}[{l}] contains NaN or infinite entries")


def _check_nonsingular(W: torch.Tensor, what: str) -> None:
    cond = torch.linalg.cond(W).item()
    if not math.isfinite(cond) or cond > _COND_MAX:
        raise ValueError(f"{what} is singular (condition number {cond:.3g}): Lemma 1 assumes it is non-singular")


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# Lemma 1: linear models
def lemma1_error(E: torch.Tensor, rank: int, n_layers: int) -> float:
    """The optimum of Lemma 1, ``σ_{RL+1}(E)`` (0 when ``RL ≥ D``).

    Parameters
    ----------
    E : (D, D) error matrix ``W̄ − W_L⋯W_1``.
    rank : LoRA rank ``R`` in ``[1, D]``.
    n_layers : number of adapted layers ``L ≥ 1``.
    """
    check_matrix(E, "E", square=True)
    check_rank(rank, E.shape[0], "rank")
    check_rank(n_layers, 10**9, "n_layers")
    s = torch.linalg.svdvals(E)
    k = rank * n_layers
    return float(s[k]) if k < s.numel() else 0.0


def linear_construction(target: torch.Tensor, frozen: Sequence[torch.Tensor], rank: int, *,
                        rtol: float = 1e-10) -> list[torch.Tensor]:
    """Adapters ``[ΔW_1, …, ΔW_L]`` of rank ≤ ``rank`` from the proof of Lemma 1 (Zeng & Lee).

    With ``E = W̄ − W_L⋯W_1 = U S Vᵀ``, ``R' = min(RL, rank E)``, ``E' = LR_{R'}(E)`` and
    ``Q_l = V_{(R(l−1), Rl] ∩ [1, R']} V_{…}ᵀ`` (consecutive blocks of right singular vectors), the adapters
    ``ΔW_l = (W_L⋯W_{l+1})^{-1} E' Q_l ((W_{l−1}+ΔW_{l−1})⋯(W_1+ΔW_1))^{-1}`` are built for ``l = 1..L`` in
    order. Then ``∏(W_l + ΔW_l) = ∏ W_l + E'`` and ``‖∏(W_l+ΔW_l) − W̄‖_2 = σ_{RL+1}(E)``.

    Parameters
    ----------
    target : (D, D) target ``W̄``.
    frozen : list of ``L`` (D, D) frozen matrices ``[W_1, …, W_L]`` (``W_1`` applied first).
    rank : LoRA rank ``R`` in ``[1, D]``.
    rtol : relative tolerance of the numerical rank of ``E``.

    Returns
    -------
    list of ``L`` (D, D) tensors, each of rank ≤ ``rank``.

    Raises
    ------
    ValueError
        Wrong shapes, rank out of range, NaN, a singular frozen ``W_l`` or a singular ``∏W_l + LR_r(E)`` met
        during the construction (the lemma's assumptions).
    """
    D = _check_layers(list(frozen), "frozen")
    check_matrix(target, "target", square=True)
    if target.shape != (D, D):
        raise ValueError(f"target has shape {tuple(target.shape)} but the frozen layers are ({D}, {D})")
    check_rank(rank, D, "rank")
    frozen = list(frozen)
    L = len(frozen)
    for l, W in enumerate(frozen, start=1):
        _check_nonsingular(W, f"frozen W_{l}")
    E = target - chain_product(frozen)
    U, S, Vh = torch.linalg.svd(E)
    r_E = numerical_rank(E, rtol)  # 0 when E = 0; rtol is checked either way
    r_prime = min(rank * L, r_E)
    deltas: list[torch.Tensor] = []
    right = torch.eye(D, dtype=E.dtype, device=E.device)           # (W_{l-1}+ΔW_{l-1})⋯(W_1+ΔW_1)
    for l in range(1, L + 1):
        lo, hi = min(rank * (l - 1), r_prime), min(rank * l, r_prime)
        EQ = (U[:, lo:hi] * S[lo:hi]) @ Vh[lo:hi]                  # E' Q_l
        M = EQ
        if l < L:
            M = torch.linalg.solve(chain_product(frozen[l:]), M)     # (W_L⋯W_{l+1})^{-1} E' Q_l
        M = torch.linalg.solve(right.T, M.T).T                       # … (right)^{-1}
        deltas.append(M)
        if l < L:
            _check_nonsingular(frozen[l - 1] + M, f"∏W + LR_{hi}(E) (met as W_{l} + ΔW_{l})")
        right = (frozen[l - 1] + M) @ right
    return deltas


def random_linear_instance(D: int, n_layers: int, rank_E: int, generator: torch.Generator, *,
                           dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A random frozen model and a target whose error matrix has rank ``rank_E`` exactly.

    Frozen ``W_l = I + G_l / (2√D)`` (well conditioned, non-singular); ``W̄ = ∏ W_l + P Qᵀ/√D`` with Gaussian
    ``P, Q ∈ R^{D×rank_E}``. Returns ``(target (D, D), [W_1, …, W_L])``, drawn on the CPU from ``generator``.
    """
    check_rank(D, 10**6, "D")
    check_rank(n_layers, 10**6, "n_layers")
    check_rank(rank_E, D, "rank_E", allow_zero=True)
    frozen = [torch.eye(D, dtype=dtype) + torch.randn(D, D, generator=generator, dtype=dtype) / (2 * math.sqrt(D))
              for _ in range(n_layers)]
    P = torch.randn(D, rank_E, generator=generator, dtype=dtype)
    Q = torch.randn(D, rank_E, generator=generator, dtype=dtype)
    return chain_product(frozen) + P @ Q.T / math.sqrt(D), frozen


# ----------------------------------------------------------------------------------------------------------
# ReLU FNNs: Lemma 2 and the partition theorem
def fnn_forward(x: torch.Tensor, weights: Sequence[torch.Tensor] | torch.Tensor,
                biases: Sequence[torch.Tensor] | torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    """The paper's FNN ``z_l = ReLU(W_l z_{l−1} + b_l)`` (ReLU after every layer, the last included).

    Parameters
    ----------
    x : (..., n, D) inputs as rows.
    weights : list of ``L`` tensors (..., D, D), or one tensor (..., L, D, D); leading dims broadcast with ``x``.
    biases : list of ``L`` tensors (..., D), or one tensor (..., L, D).
    relu : ``False`` gives the linear network (no activation).

    Returns
    -------
    (..., n, D) outputs.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError("x must be a floating tensor of shape (..., n, D)")
    if isinstance(weights, torch.Tensor):
        weights = list(weights.unbind(-3))
    if isinstance(biases, torch.Tensor):
        biases = list(biases.unbind(-2))
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"need as many biases as weights (and at least one), got {len(weights)} and {len(biases)}")
    D = x.shape[-1]
    h = x
    for l, (W, b) in enumerate(zip(weights, biases), start=1):
        if W.shape[-2:] != (D, D) or b.shape[-1] != D:
            raise ValueError(f"layer {l}: weight {tuple(W.shape)} / bias {tuple(b.shape)} do not match D={D}")
        h = h @ W.transpose(-1, -2) + b.unsqueeze(-2)
        if relu:
            h = torch.relu(h)
    if not torch.isfinite(h).all():
        raise ValueError("fnn_forward produced NaN or infinite values (check the inputs and weights)")
    return h


def _fnn_fast(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    """:func:`fnn_forward` without validation, for training loops: W (..., L, D, D), b (..., L, D)."""
    h = x
    for l in range(W.shape[-3]):
        h = h @ W[..., l, :, :].transpose(-1, -2) + b[..., l, None, :]
        if relu:
            h = torch.relu(h)
    return h


def uniform_partition(n_layers: int, n_target: int) -> list[list[int]]:
    """The paper's uniform partition ``P^u`` of layers ``0..L−1`` (0-based) into ``L̄`` consecutive groups.

    Groups have ``M = ⌊L/L̄⌋`` layers; the last group also takes the remainder. Needs ``1 ≤ L̄ ≤ L``.
    """
    check_rank(n_target, 10**6, "n_target")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < n_target:
        raise ValueError(f"the frozen model needs at least L̄={n_target} layers, got L={n_layers!r}")
    M = n_layers // n_target
    groups = [list(range(i * M, (i + 1) * M)) for i in range(n_target)]
    groups[-1] = list(range((n_target - 1) * M, n_layers))
    return groups


def fnn_construction(target_weights: Sequence[torch.Tensor], target_biases: Sequence[torch.Tensor],
                     frozen_weights: Sequence[torch.Tensor], rank: int, input_radius: float, *,
                     margin: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """LoRA adapters and biases that make a frozen L-layer ReLU FNN match an L̄-layer ReLU target.

    Lemma 2 (``L̄ = 1``) and the partition theorem: the frozen layers are split by :func:`uniform_partition`;
    in group ``i`` the weights get the adapters of :func:`linear_construction` for ``W̄_i`` (so the group's
    product is ``Ŵ_i = ∏_{P_i}W + LR_{R|P_i|}(W̄_i − ∏_{P_i}W)``). Every layer of a group but its last gets the
    bias ``b̂_l[k] = ‖(W_l+ΔW_l)[k,:]‖_2 ρ_{l−1} + margin``, where ``ρ`` bounds ``‖z‖_2`` over the whole input
    set, so that all its ReLUs are active (pre-activation ≥ ``margin``) for *every* input with
    ``‖x‖_2 ≤ input_radius``; the group becomes affine, and its last bias cancels the shifts and adds the
    target bias, giving exactly ``ReLU(Ŵ_i z + b̄_i)``. The input bound of the next group is
    ``‖Ŵ_i‖_2 ρ + ‖b̄_i‖_2`` (ReLU is 1-Lipschitz and ReLU(0) = 0).

    Parameters
    ----------
    target_weights, target_biases : ``L̄`` matrices (D, D) and vectors (D,).
    frozen_weights : ``L ≥ L̄`` matrices (D, D); the frozen biases play no role (all biases are replaced).
    rank : LoRA rank ``R`` in ``[1, D]``.
    input_radius : the bounded input set is ``{‖x‖_2 ≤ input_radius}``.
    margin : smallest pre-activation of a linearised ReLU on that set (> 0).

    Returns
    -------
    ``(deltas, biases)``: lists of ``L`` tensors (D, D) of rank ≤ ``rank`` and ``L`` bias vectors (D,).

    Raises
    ------
    ValueError
        also when the worst-case bias bound compounds through a deep group so far that cancelling it at the group's
        last layer would lose more than ``1e-8`` (relative to the target bias) to round-off: with 8 random layers in
        one group the biases reach about ``1e31`` and the construction would silently return errors of ``1e31``.
    """
    D = _check_layers(target_weights, "target_weights")
    Lbar = len(target_weights)
    _check_vectors(list(target_biases), "target_biases", Lbar, D)
    _check_layers(list(frozen_weights), "frozen_weights", D)
    rho = _positive(input_radius, "input_radius")
    margin = _positive(margin, "margin")
    groups = uniform_partition(len(frozen_weights), Lbar)
    deltas: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    for i, group in enumerate(groups):
        Ws = [frozen_weights[l] for l in group]
        dW = linear_construction(target_weights[i], Ws, rank)
        shift = torch.zeros(D, dtype=Ws[0].dtype, device=Ws[0].device)   # bias accumulated so far in the group
        r = rho
        for j, (W, d) in enumerate(zip(Ws, dW)):
            A = W + d
            if j < len(Ws) - 1:
                b = A.norm(dim=1) * r + margin
                shift = A @ shift + b
                r = torch.linalg.matrix_norm(A, 2).item() * r + b.norm().item()
            else:
                carried = A @ shift
                lost = torch.finfo(carried.dtype).eps * carried.abs().max().item()
                if not math.isfinite(lost) or lost > _BIAS_LOSS_MAX * max(1.0, target_biases[i].abs().max().item()):
                    raise ValueError(
                        f"fnn_construction: group {i} ({len(Ws)} layers) compounds the worst-case bias bound to "
                        f"{carried.abs().max().item():.1e}; cancelling it in {carried.dtype} leaves an error of about "
                        f"{lost:.1e}, so the construction would not be exact. Use fewer frozen layers per target "
                        "layer, a smaller input_radius, or float64")
                b = target_biases[i] - carried
            deltas.append(d)
            biases.append(b)
        W_hat = chain_product([W + d for W, d in zip(Ws, dW)])
        rho = torch.linalg.matrix_norm(W_hat, 2).item() * rho + target_biases[i].norm().item()
    return deltas, biases


def relu_bounds(E: torch.Tensor, rank: int, n_layers: int, Sigma: torch.Tensor) -> dict[str, float]:
    """The expected-squared-error bound of Lemma 2, as stated and corrected.

    ``paper = ‖Σ‖_F σ²_{RL∧R_E+1}(E)`` (the statement) and ``corrected = tr(Σ) σ²_{RL∧R_E+1}(E)`` (what the
    proof's step ``E‖Ax‖² ≤ ‖A‖²_2 E‖x‖²`` gives, since ``E‖x‖² = tr Σ ≥ ‖Σ‖_F``).

    Parameters
    ----------
    E : (D, D) error matrix; rank : R in [1, D]; n_layers : L ≥ 1; Sigma : (D, D) PSD second moment ``E[x xᵀ]``.
    """
    check_matrix(Sigma, "Sigma", square=True)
    if Sigma.shape != E.shape:
        raise ValueError(f"Sigma has shape {tuple(Sigma.shape)}, E has {tuple(E.shape)}")
    if torch.linalg.eigvalsh((Sigma + Sigma.T) / 2).min() < -1e-10 * Sigma.abs().max():
        raise ValueError("Sigma must be positive semi-definite (a second-moment matrix)")
    s2 = lemma1_error(E, rank, n_layers) ** 2
    return {"paper": float(torch.linalg.matrix_norm(Sigma)) * s2, "corrected": float(torch.trace(Sigma)) * s2}


def partition_bound(target_weights: Sequence[torch.Tensor], target_biases: Sequence[torch.Tensor],
                    frozen_weights: Sequence[torch.Tensor], rank: int, Sigma: torch.Tensor) -> dict[str, float]:
    """The bound ``β Σ_i α^{L̄−i} E_i`` of the partition theorem on ``E‖f(x) − f̄(x)‖_2``.

    ``E_i = σ_{RM_i+1}(W̄_i − ∏_{P_i}W)`` with ``M_i = |P_i|``. Two versions:

    * ``paper``: ``β = max_i(√‖Σ‖_F ∏_{j≤i}‖W̄_j‖_F + Σ_{j≤i} ∏_{j<k<i}‖W̄_k‖_F ‖b̄_j‖) ∨ √‖Σ‖_F`` and
      ``α = max_k ‖W̄_k‖_F + max_i E_i``, as stated;
    * ``corrected``: the repaired proof: ``√tr Σ`` in place of ``√‖Σ‖_F`` (``E‖x‖ ≤ √(E‖x‖²) = √tr Σ``), all else
      as stated. The paper's ``α`` needs no repair: ``‖Ŵ_k‖_2 ≤ ‖W̄_k‖_F + E_k`` always holds.

    Returns ``{"paper": float, "corrected": float, "E": list of E_i}``.
    """
    D = _check_layers(target_weights, "target_weights")
    Lbar = len(target_weights)
    _check_vectors(list(target_biases), "target_biases", Lbar, D)
    _check_layers(list(frozen_weights), "frozen_weights", D)
    check_rank(rank, D, "rank")
    check_matrix(Sigma, "Sigma", square=True)
    groups = uniform_partition(len(frozen_weights), Lbar)
    Es, nW, nb = [], [], []
    for i, g in enumerate(groups):
        Ei = target_weights[i] - chain_product([frozen_weights[l] for l in g])
        s = torch.linalg.svdvals(Ei)
        k = rank * len(g)
        Es.append(float(s[k]) if k < D else 0.0)
        nW.append(float(torch.linalg.matrix_norm(target_weights[i])))
        nb.append(float(target_biases[i].norm()))

    def beta(ex: float) -> float:
        best = ex
        for i in range(Lbar):
            top = i + 1
            val = ex * math.prod(nW[:top]) + sum(math.prod(nW[j + 1:top]) * nb[j] for j in range(top))
            best = max(best, val)
        return best

    sq_f, sq_t = math.sqrt(float(torch.linalg.matrix_norm(Sigma))), math.sqrt(float(torch.trace(Sigma)))
    alpha = max(nW) + max(Es)
    paper = beta(sq_f) * sum(alpha ** (Lbar - 1 - i) * Es[i] for i in range(Lbar))
    corrected = beta(sq_t) * sum(alpha ** (Lbar - 1 - i) * Es[i] for i in range(Lbar))
    return {"paper": paper, "corrected": corrected, "E": Es}


# ----------------------------------------------------------------------------------------------------------
# Transformer networks
TFN_KEYS = ("Q", "K", "V", "O", "W1", "b1", "W2", "b2")


def _check_tfn(layers: Sequence[dict], name: str) -> tuple[int, int]:
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{name} must be a non-empty list of layer dicts with keys {TFN_KEYS}")
    H, D = None, None
    for l, layer in enumerate(layers, start=1):
        missing = [k for k in TFN_KEYS if k not in layer]
        if missing:
            raise ValueError(f"{name}[{l}] lacks keys {missing}")
        for k in ("Q", "K", "V", "O"):
            T = layer[k]
            if not isinstance(T, torch.Tensor) or T.dim() != 3 or T.shape[1] != T.shape[2]:
                raise ValueError(f"{name}[{l}]['{k}'] must have shape (H, D, D)")
            H, D = (T.shape[0], T.shape[1]) if H is None else (H, D)
            if T.shape != (H, D, D) or not torch.isfinite(T).all():
                raise ValueError(f"{name}[{l}]['{k}'] must be finite with shape ({H}, {D}, {D})")
    return H, D


def tfn_forward(X: torch.Tensor, layers: Sequence[dict]) -> torch.Tensor:
    """A Transformer network as in Zeng & Lee: per layer, multi-head attention then a ReLU feed-forward block.

    ``Attn(Z) = Σ_h Z W_V^hᵀ W_O^hᵀ``-weighted by ``softmax_rows(Z W_Q^hᵀ W_K^h Zᵀ)`` (scores depend on the
    weights only through ``W_K^hᵀ W_Q^h``, values through ``W_O^h W_V^h``), then
    ``Z ← ReLU(Attn W1ᵀ + b1) W2ᵀ + b2``. No residual connection or normalisation (as in the paper's TFN).

    Parameters
    ----------
    X : (..., N, D) tokens as rows.
    layers : list of dicts with ``Q, K, V, O`` of shape (H, D, D) (may carry extra leading batch dims in
        front of H only if ``X`` does too), and ``W1, W2`` (D, D), ``b1, b2`` (D,).

    Returns
    -------
    (..., N, D).
    """
    if not isinstance(X, torch.Tensor) or X.dim() < 2 or not X.is_floating_point():
        raise ValueError("X must be a floating tensor of shape (..., N, D)")
    Z = X
    for layer in layers:
        Zh = Z.unsqueeze(-3)                                                  # (..., 1, N, D)
        q = Zh @ layer["Q"].transpose(-1, -2)
        k = Zh @ layer["K"].transpose(-1, -2)
        v = Zh @ layer["V"].transpose(-1, -2) @ layer["O"].transpose(-1, -2)
        att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)                  # (..., H, N, N)
        A = (att @ v).sum(-3)
        Z = torch.relu(A @ layer["W1"].transpose(-1, -2) + layer["b1"]) @ layer["W2"].transpose(-1, -2) + layer["b2"]
    return Z


def tfn_construction(target: Sequence[dict], frozen: Sequence[dict], rank: int) -> list[dict]:
    """Rank-``rank`` adapters on ``W_Q, W_K, W_V, W_O`` of every head that match the target's attention pairs.

    For each layer and head, :func:`linear_construction` with ``L = 2`` matches the products
    ``W_Kᵀ W_Q`` (frozen list ``[W_Q, W_Kᵀ]``) and ``W_O W_V`` (``[W_V, W_O]``) to the target's; the error of
    each product is ``σ_{2R+1}`` of its difference, hence zero once ``R ≥ ⌈D/2⌉``. The feed-forward blocks
    must be equal in target and frozen model (a special case; :func:`tfn_full_construction` handles the
    paper's setting, where every weight differs).

    Returns the adapted layers (same dict format) with the extra keys ``dQ, dK, dV, dO``.
    """
    H, D = _check_tfn(target, "target")
    H2, D2 = _check_tfn(frozen, "frozen")
    if (H, D, len(target)) != (H2, D2, len(frozen)):
        raise ValueError("target and frozen TFN must have the same depth, heads and width")
    check_rank(rank, D, "rank")
    for l, (t, f) in enumerate(zip(target, frozen), start=1):
        for k in ("W1", "b1", "W2", "b2"):
            if not torch.equal(t[k], f[k]):
                raise ValueError(f"layer {l}: feed-forward weight {k} differs; tfn_construction adapts attention only")
    out = []
    for t, f in zip(target, frozen):
        new = dict(f)
        dQ, dK, dV, dO = [], [], [], []
        for h in range(H):
            d1, d2 = linear_construction(t["K"][h].T @ t["Q"][h], [f["Q"][h], f["K"][h].T], rank)
            dQ.append(d1)
            dK.append(d2.T)
            d3, d4 = linear_construction(t["O"][h] @ t["V"][h], [f["V"][h], f["O"][h]], rank)
            dV.append(d3)
            dO.append(d4)
        for key, d in (("Q", dQ), ("K", dK), ("V", dV), ("O", dO)):
            new["d" + key] = torch.stack(d)
            new[key] = f[key] + new["d" + key]
        out.append(new)
    return out


# ----------------------------------------------------------------------------------------------------------
# gradient training, batched over a grid
def uniform_inputs(shape: Sequence[int], generator: torch.Generator, *, low: float = -1.0, high: float = 1.0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inputs uniform on the cube ``[low, high]^D``, drawn on the CPU from ``generator`` and moved to ``device``."""
    if not high > low:
        raise ValueError(f"need high > low, got [{low}, {high}]")
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).to(dtype=dtype, device=device)


def _check_fnn_pair(frozen_w, frozen_b, target_w, target_b) -> tuple[int, int, int]:
    """Validate a batch of frozen and target FNNs; return ``(S, L, D)``."""
    for name, T, nd in (("frozen_w", frozen_w, 4), ("frozen_b", frozen_b, 3), ("target_w", target_w, 4),
                        ("target_b", target_b, 3)):
        if not isinstance(T, torch.Tensor) or T.dim() != nd or not torch.isfinite(T).all():
            raise ValueError(f"{name} must be a finite tensor with {nd} dimensions")
    S, L, D, D_in = frozen_w.shape
    if D_in != D or frozen_b.shape != (S, L, D) or target_w.shape[0] != S or target_w.shape[2:] != (D, D) \
            or target_b.shape != target_w.shape[:3]:
        raise ValueError("shapes must be frozen_w (S, L, D, D), frozen_b (S, L, D), target_w (S, L̄, D, D), "
                         "target_b (S, L̄, D)")
    return S, L, D


def _fnn_setup(frozen_w, frozen_b, target_w, target_b, configs, *, batch, generator, relu, low, high, dtype,
               device) -> types.SimpleNamespace:
    """Validate a batched adapter-training problem and draw its initial adapters; return its tensors and sizes."""
    S, L, D = _check_fnn_pair(frozen_w, frozen_b, target_w, target_b)
    if not configs:
        raise ValueError("configs must be a non-empty list of dicts")
    C = len(configs)
    for c in configs:
        check_rank(c.get("rank", 0), D, "rank", allow_zero=True)
        check_rank(c.get("final", 0), L, "final", allow_zero=True)
        if c.get("bias", "all") not in ("all", "none", "final"):
            raise ValueError(f"bias must be 'all', 'none' or 'final', got {c.get('bias')!r}")
        _positive(c["lr"], "lr")
        if not (c.get("wd", 0.0) >= 0):
            raise ValueError(f"wd must be non-negative, got {c.get('wd')!r}")
    check_rank(batch, 10**8, "batch")
    kw = dict(dtype=dtype, device=device)
    r_max = max(1, max(c.get("rank", 0) for c in configs))
    ranks = torch.tensor([c.get("rank", 0) for c in configs])
    lora_mask = (torch.arange(r_max)[None] < ranks[:, None]).to(**kw)                    # (C, r)
    finals = torch.tensor([c.get("final", 0) for c in configs])
    full_mask = (torch.arange(L)[None] >= L - finals[:, None]).to(**kw)                   # (C, L)
    bias_mask = torch.stack([torch.ones(L) if c.get("bias", "all") == "all" else
                             torch.zeros(L) if c.get("bias") == "none" else
                             (torch.arange(L) >= L - c.get("final", 0)).float() for c in configs]).to(**kw)
    lr = torch.tensor([float(c["lr"]) for c in configs], **kw).repeat(S)
    wd = torch.tensor([float(c.get("wd", 0.0)) for c in configs], **kw).repeat(S)

    fw, fb = frozen_w.to(**kw), frozen_b.to(**kw)
    tw, tb = target_w.to(**kw), target_b.to(**kw)
    A = (torch.randn(S * C, L, r_max, D, generator=generator, dtype=torch.float64) / math.sqrt(D)).to(**kw)
    Bm = torch.zeros(S * C, L, D, r_max, **kw)
    dFull = torch.zeros(S * C, L, D, D, **kw)
    db = torch.zeros(S * C, L, D, **kw)
    lm = lora_mask.repeat(S, 1)[:, None, None, :]                                          # (SC, 1, 1, r)
    fm = full_mask.repeat(S, 1)[:, :, None, None]
    bm = bias_mask.repeat(S, 1)[:, :, None]

    return types.SimpleNamespace(S=S, C=C, L=L, D=D, r=r_max, batch=batch, generator=generator, relu=relu,
                                 low=low, high=high, kw=kw, fw=fw, fb=fb, tw=tw, tb=tb, A=A, Bm=Bm, dFull=dFull,
                                 db=db, lm=lm, fm=fm, bm=bm, lr=lr, wd=wd, any_full=bool(finals.any()),
                                 any_wd=bool((wd > 0).any()))


def _fnn_problem(frozen_w, frozen_b, target_w, target_b, configs, *, batch, generator, relu, low, high, dtype,
                 device):
    """Validate a batched adapter-training problem; return ``(params, loss_fn, model, lr, (S, C, L, D))`` for
    :func:`lorabook.train.batched_adam` (autograd; the reference that :func:`_fnn_adam` computes by hand)."""
    P = _fnn_setup(frozen_w, frozen_b, target_w, target_b, configs, batch=batch, generator=generator, relu=relu,
                   low=low, high=high, dtype=dtype, device=device)
    S, C, L, D, kw = P.S, P.C, P.L, P.D, P.kw
    fw, fb, tw, tb, A, Bm, dFull, db = P.fw, P.fb, P.tw, P.tb, P.A, P.Bm, P.dFull, P.db
    lm, fm, bm, lr, wd, any_full, any_wd = P.lm, P.fm, P.bm, P.lr, P.wd, P.any_full, P.any_wd

    def model() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        Bl = Bm * lm
        W = fw[:, None] + (Bl @ A).view(S, C, L, D, D)
        if any_full:
            W = W + (fm * dFull).view(S, C, L, D, D)
        b = fb[:, None] + (bm * db).view(S, C, L, D)
        return W, b, Bl                                                                # (S, C, L, D, D), (S, C, L, D)

    def loss_fn(step: int) -> torch.Tensor:
        x = uniform_inputs((S, batch, D), generator, low=low, high=high, **kw)
        with torch.no_grad():
            y = _fnn_fast(x, tw, tb, relu)                                             # (S, n, D)
        W, b, Bl = model()
        out = _fnn_fast(x[:, None], W, b, relu)                                        # (S, C, n, D)
        mse = (out - y[:, None]).square().sum(-1).mean(-1).reshape(S * C)
        if not any_wd:
            return mse
        pen = Bl.square().sum((1, 2, 3)) + (A * lm.transpose(-1, -2)).square().sum((1, 2, 3))
        if any_full:
            pen = pen + (fm * dFull).square().sum((1, 2, 3))
        return mse + 0.5 * wd * pen

    params = [A, Bm, dFull, db] if any_full else [A, Bm, db]
    return params, loss_fn, model, lr, (S, C, L, D)


# inputs are drawn this many steps at a time (one generator call: the same numbers as one call per step)
_DRAW_BLOCK = 64  # pragma: no mutate
# the parameters are checked for non-finite values every this many steps (and after the last one)
_FINITE_EVERY = 50  # pragma: no mutate


def _fnn_adam(P: types.SimpleNamespace, steps: int, *, lr_factor: Callable[[int], float] | None = None,
              on_step: Callable[[int, Callable[[], tuple[torch.Tensor, torch.Tensor]]], None] | None = None,
              progress: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no mutate
    """Adam on the problem of :func:`_fnn_setup` with a hand-written backward pass; the same iterates as
    :func:`lorabook.train.batched_adam` on :func:`_fnn_problem`'s loss, up to float rounding.

    What makes it fast: every layer, forward and backward, is one batched matrix product over (seed, config)
    (the first layer reads each seed's shared inputs through a stride-0 view); every large tensor is allocated
    once and written in place; the ReLU masks are read from the stored activations (``ReLU(z) > 0`` iff
    ``z > 0``); the factor ``2/n`` of the loss is applied to the small weight gradients; masked LoRA rows of ``A`` are zeroed once (they never move and
    meet only zero columns of ``B``), so no rank mask is applied per step; the inputs of ``_DRAW_BLOCK`` steps are
    drawn in one call; all parameters live in one flat buffer, so an Adam step is a dozen vector operations with
    a per-element learning rate. ``lr_factor(t)`` scales the learning rates at step ``t`` (0-based);
    ``on_step(t, current)`` is called after step ``t`` (1-based) with a function returning the current model.

    Returns ``(W (S, C, L, D, D), b (S, C, L, D))``, detached.
    """
    S, C, L, D, n, r = P.S, P.C, P.L, P.D, P.batch, P.r
    SC, kw, relu = S * C, P.kw, P.relu
    # one flat buffer, layer-major blocks: A (L, SC, r, D), B (L, SC, D, r), db (L, SC, D)[, dF (L, SC, D, D)]
    shapes = [(L, SC, r, D), (L, SC, D, r), (L, SC, D)] + ([(L, SC, D, D)] if P.any_full else [])
    sizes = [math.prod(s) for s in shapes]
    theta, grad = torch.zeros(sum(sizes), **kw), torch.zeros(sum(sizes), **kw)
    m, v, num, den = (torch.zeros_like(theta) for _ in range(4))
    views = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
    gviews = [t.view(s) for t, s in zip(grad.split(sizes), shapes)]
    A, B, db = views[:3]
    gA, gB, gdb = gviews[:3]
    A.copy_((P.A * P.lm.transpose(-1, -2)).transpose(0, 1))          # masked rows zero: they never move
    B.copy_(P.Bm.transpose(0, 1))
    # frozen entries (masked LoRA rows and columns, untrained biases and layers) get g = m = 0 and an update
    # 0 / (√v̂ + eps) = 0 whatever v is; v = 1 there keeps the square root away from zeros, its slow path on CPUs
    frozen = [(P.lm.transpose(-1, -2) == 0).expand(SC, L, r, D), (P.lm == 0).expand(SC, L, D, r),
              (P.bm == 0).expand(SC, L, D)] + ([(P.fm == 0).expand(SC, L, D, D)] if P.any_full else [])
    v.masked_fill_(torch.cat([f.transpose(0, 1).reshape(-1) for f in frozen]), 1.0)  # pragma: no mutate
    lr_flat = torch.cat([P.lr.repeat_interleave(size // (L * SC)).repeat(L) for size in sizes])
    lr_step = torch.empty_like(lr_flat) if lr_factor is not None else lr_flat
    wd4 = P.wd.view(1, SC, 1, 1)
    bm = P.bm.transpose(0, 1)                                          # (L, SC, 1)
    if P.any_full:
        dF, gdF = views[3], gviews[3]
        fm = P.fm.transpose(0, 1)                                      # (L, SC, 1, 1)
    fw = P.fw.transpose(0, 1)[:, :, None].expand(L, S, C, D, D).reshape(L * SC, D, D)
    fb = P.fb.transpose(0, 1)[:, :, None].expand(L, S, C, D).reshape(L, SC, D)
    W, b = torch.empty(L, SC, D, D, **kw), torch.empty(L, SC, D, **kw)
    gW, gbias = torch.empty(L, SC, D, D, **kw), torch.empty(L, SC, D, **kw)
    H = [torch.empty(SC, n, D, **kw) for _ in range(L)]               # post-activations
    G, G2 = torch.empty(SC, n, D, **kw), torch.empty(SC, n, D, **kw)
    scale = 2.0 / n
    b1, b2, eps = 0.9, 0.999, 1e-8

    def build() -> None:
        torch.baddbmm(fw, B.view(L * SC, D, r), A.view(L * SC, r, D), out=W.view(L * SC, D, D))
        if P.any_full:
            W.add_(dF)
        torch.add(fb, db, out=b)

    def current() -> tuple[torch.Tensor, torch.Tensor]:
        build()
        return (W.transpose(0, 1).reshape(S, C, L, D, D).clone(), b.transpose(0, 1).reshape(S, C, L, D).clone())

    bar = tqdm(range(1, steps + 1), desc=progress if isinstance(progress, str) else "adam",  # pragma: no mutate
               disable=not progress, leave=False)  # pragma: no mutate
    xs = ys = None
    for t in bar:
        k = (t - 1) % _DRAW_BLOCK
        if k == 0:                                         # inputs and targets of the next block of steps
            blk = min(_DRAW_BLOCK, steps - t + 1)
            xs = uniform_inputs((blk, S, n, D), P.generator, low=P.low, high=P.high, **kw)
            ys = _fnn_fast(xs, P.tw, P.tb, relu)                                       # (blk, S, n, D)
        x, y = xs[k], ys[k]
        build()
        # forward: h_l = ReLU(h_{l−1} W_l^T + b_l), one batched product per layer
        for s in range(S):                                 # the first layer reads the seed's inputs C times
            i = slice(s * C, (s + 1) * C)
            torch.bmm(x[s].expand(C, n, D), W[0, i].transpose(1, 2), out=H[0][i])
        for l in range(L):
            if l:
                torch.bmm(H[l - 1], W[l].transpose(1, 2), out=H[l])
            H[l].add_(b[l].unsqueeze(1))
            if relu:
                H[l].clamp_min_(0.0)
        # backward of Σ_n ‖out − y‖² (the 2/n of the mean goes on the weight gradients)
        torch.sub(H[L - 1].view(S, C, n, D), y[:, None], out=G.view(S, C, n, D))
        if relu:
            torch.ops.aten.threshold_backward.grad_input(G, H[L - 1], 0.0, grad_input=G)
        for l in range(L - 1, 0, -1):
            torch.bmm(G.transpose(1, 2), H[l - 1], out=gW[l])
            torch.sum(G, 1, out=gbias[l])
            torch.bmm(G, W[l], out=G2)
            if relu:
                torch.ops.aten.threshold_backward.grad_input(G2, H[l - 1], 0.0, grad_input=G2)
            G, G2 = G2, G
        for s in range(S):
            i = slice(s * C, (s + 1) * C)
            torch.bmm(G[i].transpose(1, 2), x[s].expand(C, n, D), out=gW[0, i])
        torch.sum(G, 1, out=gbias[0])
        gW.mul_(scale)
        gbias.mul_(scale)
        # adapter gradients (coupled weight decay λθ, the gradient of λ/2 ‖θ‖²)
        gWf = gW.view(L * SC, D, D)
        torch.bmm(gWf, A.view(L * SC, r, D).transpose(1, 2), out=gB.view(L * SC, D, r))
        torch.bmm(B.view(L * SC, D, r).transpose(1, 2), gWf, out=gA.view(L * SC, r, D))
        torch.mul(gbias, bm, out=gdb)
        if P.any_full:
            torch.mul(gW, fm, out=gdF)
        if P.any_wd:
            gB.addcmul_(B, wd4)
            gA.addcmul_(A, wd4)
            if P.any_full:
                gdF.addcmul_(dF, wd4)
        # Adam, the formula of batched_adam, on the flat buffer
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        torch.div(v, 1 - b2**t, out=den).sqrt_().add_(eps)
        torch.div(m, 1 - b1**t, out=num).div_(den)
        if lr_factor is not None:
            torch.mul(lr_flat, lr_factor(t - 1), out=lr_step)
        theta.sub_(num.mul_(lr_step))
        if t % _FINITE_EVERY == 0 or t == steps:  # pragma: no mutate
            if not torch.isfinite(theta).all():
                raise FloatingPointError(f"non-finite loss or parameters by step {t - 1} (lower the learning rate)")
        if on_step is not None:
            on_step(t, current)
    build()
    return W.transpose(0, 1).reshape(S, C, L, D, D).detach(), b.transpose(0, 1).reshape(S, C, L, D).detach()


def train_fnn_adapters(frozen_w: torch.Tensor, frozen_b: torch.Tensor, target_w: torch.Tensor,
                       target_b: torch.Tensor, configs: Sequence[dict], *, steps: int, batch: int,
                       generator: torch.Generator, relu: bool = True, low: float = -1.0, high: float = 1.0,
                       progress: bool | str = False, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Train adapters of a frozen FNN toward a target FNN by Adam, every (seed, config) in one batched program.

    Each config is a dict ``{"rank": R ≥ 0, "final": k ≥ 0, "bias": "all"|"none"|"final", "lr": η, "wd": λ}``:
    LoRA ``ΔW_l = B_l A_l`` of rank ``R`` on every layer (``R = 0``: none), full tuning of the last ``k`` layers'
    weights, and trainable biases on all layers, none, or the last ``k``. Weight decay ``λ/2 ‖θ‖²`` applies to the
    adapter weights (not the biases). LoRA starts at ``A`` Gaussian (std ``1/√D``), ``B = 0``. Fresh inputs,
    uniform on ``[low, high]^D``, are drawn at every step (one batch per seed, shared by its configs).

    The gradients are computed by a hand-written backward pass (one batched matrix product per layer and
    direction over all runs, buffers allocated once) and Adam is the update of
    :func:`lorabook.train.batched_adam`: the same iterates as autograd with ``batched_adam``, up to float rounding.
    A run whose loss overflows raises ``FloatingPointError`` (lower its learning rate).

    Parameters
    ----------
    frozen_w (S, L, D, D), frozen_b (S, L, D) : one frozen model per seed.
    target_w (S, L̄, D, D), target_b (S, L̄, D) : one target per seed.
    configs : C dicts as above.
    steps, batch : Adam steps and batch size.

    Returns
    -------
    ``(weights (S, C, L, D, D), biases (S, C, L, D))``: the adapted models, detached.
    """
    check_positive_int(steps, "steps")
    P = _fnn_setup(frozen_w, frozen_b, target_w, target_b, configs, batch=batch, generator=generator, relu=relu,
                   low=low, high=high, dtype=dtype, device=device)
    return _fnn_adam(P, steps, progress=progress)


def fnn_training_curve(frozen_w: torch.Tensor, frozen_b: torch.Tensor, target_w: torch.Tensor,
                       target_b: torch.Tensor, configs: Sequence[dict], *, steps: int, batch: int,
                       generator: torch.Generator, x_test: torch.Tensor, n_records: int = 8,
                       schedule: str = "cosine", relu: bool = True, dtype: torch.dtype = torch.float64,
                       progress: bool | str = False, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test error of batched adapter training (as :func:`train_fnn_adapters`) recorded along the run.

    Adam with the learning rate of each config multiplied by a schedule ``s(t)``: ``"constant"`` (1),
    ``"cosine"`` (``½(1 + cos(π t/T))``, from 1 down to 0 at the last step) or ``"exp"`` (``10^{−3 t/T}``, three
    decades). The test MSE on ``x_test`` is recorded at ``n_records`` step counts spaced geometrically up to
    ``steps`` (the last record is the final model). Parameters as :func:`train_fnn_adapters`; ``x_test`` (S, n, D).

    Returns
    -------
    ``(record_steps (n_records,), test_mse (n_records, S, C), weights (S, C, L, D, D), biases (S, C, L, D))``:
    the record steps (fewer than ``n_records`` if ``steps`` is small), the test errors there, and the final models.
    """
    check_rank(steps, 10**9, "steps")
    check_rank(n_records, steps, "n_records")
    if schedule not in ("constant", "cosine", "exp"):
        raise ValueError(f"schedule must be 'constant', 'cosine' or 'exp', got {schedule!r}")
    if not isinstance(x_test, torch.Tensor) or x_test.dim() != 3 or x_test.shape[0] != frozen_w.shape[0] \
            or x_test.shape[2] != frozen_w.shape[-1]:
        raise ValueError("x_test must be (S, n, D) with S and D those of frozen_w")
    P = _fnn_setup(frozen_w, frozen_b, target_w, target_b, configs, batch=batch, generator=generator, relu=relu,
                   low=-1.0, high=1.0, dtype=dtype, device=device)
    at = sorted({int(round(10 ** (math.log10(steps) * i / max(1, n_records - 1)))) for i in range(n_records)})
    at[-1] = steps
    xt = x_test.to(dtype=dtype, device=device)
    with torch.no_grad():
        yt = fnn_forward(xt, target_w.to(xt), target_b.to(xt), relu=relu)[:, None]

    def factor(t: int) -> float:
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / steps))
        return 10.0 ** (-3.0 * t / steps) if schedule == "exp" else 1.0

    records = []

    def record(t: int, current) -> None:
        if t in at:
            W, b = current()
            out = fnn_forward(xt[:, None], W, b, relu=relu)
            records.append((out - yt).square().sum(-1).mean(-1))

    W, b = _fnn_adam(P, steps, lr_factor=factor, on_step=record,
                     progress=progress if isinstance(progress, str) else progress and "curve")
    return torch.tensor(at), torch.stack(records).cpu(), W.cpu(), b.cpu()


def dead_output_share(weights: torch.Tensor, biases: torch.Tensor, target_w: torch.Tensor,
                      target_b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Share of each adapted model's test error carried by output ReLUs that are off on every input of ``x``.

    A unit of the last layer that is off on the whole input set gets no gradient, for its weights or its bias, so
    gradient training cannot revive it: its error ``E[ReLU(f̄_k(x))²]`` stays whatever the budget.

    Parameters
    ----------
    weights (S, C, L, D, D), biases (S, C, L, D) : adapted models; target_w (S, L̄, D, D), target_b (S, L̄, D);
    x : (S, n, D) inputs.

    Returns
    -------
    (S, C) tensor in ``[0, 1]`` (0 where the model's error is 0).
    """
    if weights.dim() != 5 or biases.dim() != 4 or x.dim() != 3 or x.shape[0] != weights.shape[0]:
        raise ValueError("need weights (S, C, L, D, D), biases (S, C, L, D) and x (S, n, D)")
    kw = dict(dtype=weights.dtype, device=weights.device)
    x = x.to(**kw)
    with torch.no_grad():
        y = fnn_forward(x, target_w.to(**kw), target_b.to(**kw))[:, None]
        out = fnn_forward(x[:, None], weights, biases)                           # (S, C, n, D)
        err = (out - y).square().mean(-2)                                        # (S, C, D)
        dead = ~(out > 0).any(-2)
        total = err.sum(-1)
        return torch.where(total > 0, (err * dead).sum(-1) / total.clamp_min(1e-300), torch.zeros_like(total))


def flat_spectrum_instance(D: int, n_layers: int, generator: torch.Generator, *, radius: float | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A one-layer ReLU target whose error matrix is orthogonal, with every target ReLU active on the ball.

    Frozen ``W_l`` are ``N(0, 1/D)`` (non-singular almost surely), ``W̄_1 = ∏_l W_l + Q`` with ``Q`` a random
    orthogonal matrix, so ``E = Q`` has all ``D`` singular values equal to 1 (a flat spectrum); the target bias
    ``b̄_1[k] = ‖W̄_1[k, :]‖_2 · radius + 1`` (default ``radius = √D``, the ball around the cube ``[−1, 1]^D``) keeps
    every target ReLU on, so the target is affine there. Frozen biases are zero.

    Returns ``(frozen_w (L, D, D), frozen_b (L, D), target_w (1, D, D), target_b (1, D))``, float64.
    """
    check_rank(D, 10**5, "D")
    check_rank(n_layers, 10**5, "n_layers")
    rho = math.sqrt(D) if radius is None else _positive(radius, "radius")
    kw = dict(generator=generator, dtype=torch.float64)
    fw = torch.randn(n_layers, D, D, **kw) / math.sqrt(D)
    Q, Rq = torch.linalg.qr(torch.randn(D, D, **kw))
    Q = Q * torch.sign(torch.diagonal(Rq))[None]                    # Haar-distributed
    tw = (chain_product(list(fw)) + Q)[None]
    tb = (tw[0].norm(dim=1) * rho + 1.0)[None]
    return fw, torch.zeros(n_layers, D, dtype=torch.float64), tw, tb


def adapter_mse(weights: torch.Tensor, biases: torch.Tensor, target_w: torch.Tensor, target_b: torch.Tensor,
                x: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    """Mean squared error ``E‖f(x) − f̄(x)‖²`` of adapted models on fixed inputs.

    Parameters
    ----------
    weights (S, C, L, D, D), biases (S, C, L, D) : adapted models (from :func:`train_fnn_adapters`).
    target_w (S, L̄, D, D), target_b (S, L̄, D) : targets.
    x : (S, n, D) inputs, one set per seed.

    Returns
    -------
    (S, C) tensor.
    """
    if weights.dim() != 5 or biases.dim() != 4 or x.dim() != 3 or x.shape[0] != weights.shape[0]:
        raise ValueError("need weights (S, C, L, D, D), biases (S, C, L, D) and x (S, n, D)")
    S, C, L, D = weights.shape[:4]
    n = x.shape[1]
    if weights.shape[-2:] != (D, D) or biases.shape != (S, C, L, D) or x.shape[2] != D:
        raise ValueError(f"need weights (S, C, L, D, D), biases (S, C, L, D) and x (S, n, D); got "
                         f"{tuple(weights.shape)}, {tuple(biases.shape)} and {tuple(x.shape)}")
    kw = dict(dtype=weights.dtype, device=weights.device)
    x = x.to(**kw)
    out = torch.empty(S, C, **kw)
    with torch.no_grad():
        y = fnn_forward(x, target_w.to(**kw), target_b.to(**kw), relu=relu)        # (S, n, D)
        k = max(1, min(C, 2**15 // n))  # pragma: no mutate  (configs per chunk: activations of a few MB)
        h, d = torch.empty(k, n, D, **kw), torch.empty(k, n, D, **kw)
        for s in range(S):
            for c in range(0, C, k):                        # each config's forward pass as in fnn_forward
                j = min(k, C - c)
                hj, dj = h[:j], d[:j]
                torch.bmm(x[s].expand(j, n, D), weights[s, c:c + j, 0].transpose(1, 2), out=hj)
                for l in range(L):
                    if l:
                        torch.bmm(hj, weights[s, c:c + j, l].transpose(1, 2), out=dj)
                        hj.copy_(dj)
                    hj.add_(biases[s, c:c + j, l].unsqueeze(1))
                    if relu:
                        hj.clamp_min_(0.0)
                torch.sub(hj, y[s], out=dj)
                out[s, c:c + j] = dj.square_().sum(-1).mean(-1)
    if not torch.isfinite(out).all():
        raise ValueError("adapter_mse produced NaN or infinite values (check the inputs and weights)")
    return out


# ----------------------------------------------------------------------------------------------------------
# one experiment: random instances, (optional) pretraining, a batched gradient grid, selection, test
def random_fnn_instance(D: int, n_layers: int, n_target: int, generator: torch.Generator, *,
                        bias_std: float = 0.1, linear: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random frozen FNN and a random target FNN (float64, drawn on the CPU).

    ReLU case: all weights ``N(0, 1/D)``, biases ``N(0, bias_std²)``. ``linear=True``: frozen
    ``W_l = I + G_l/(2√D)``, target ``W̄ = G/√D``, zero biases (well-conditioned, non-singular frozen layers).

    Returns ``(frozen_w (L, D, D), frozen_b (L, D), target_w (L̄, D, D), target_b (L̄, D))``.
    """
    check_rank(D, 10**5, "D")
    check_rank(n_target, 10**5, "n_target")
    uniform_partition(n_layers, n_target)
    kw = dict(generator=generator, dtype=torch.float64)
    if linear:
        fw = torch.eye(D, dtype=torch.float64) + torch.randn(n_layers, D, D, **kw) / (2 * math.sqrt(D))
        tw = torch.randn(n_target, D, D, **kw) / math.sqrt(D)
        return fw, torch.zeros(n_layers, D, dtype=torch.float64), tw, torch.zeros(n_target, D, dtype=torch.float64)
    fw = torch.randn(n_layers, D, D, **kw) / math.sqrt(D)
    fb = torch.randn(n_layers, D, **kw) * bias_std
    tw = torch.randn(n_target, D, D, **kw) / math.sqrt(D)
    tb = torch.randn(n_target, D, **kw) * bias_std
    return fw, fb, tw, tb


def fnn_grid_experiment(*, D: int, n_layers: int, n_target: int, configs: Sequence[dict], seeds: int, steps: int,
                        batch: int, linear: bool = False, pretrain_steps: int = 0, n_val: int = 1000,
                        n_test: int = 5000, shift: tuple[float, float] = (-0.5, 1.5), seed: int = 0,
                        construction_ranks: Sequence[int] = (), progress: bool | str = False,
                        device: torch.device | str = "cpu") -> dict:
    """The chapter's gradient experiment, as one batched program over (seed × config).

    For each seed: draw a frozen model and a target (:func:`random_fnn_instance`); if ``pretrain_steps > 0``,
    first train *all* frozen weights and biases toward the target for that many Adam steps (the "pretrained"
    frozen model); train every config with :func:`train_fnn_adapters` on fresh inputs uniform on ``[−1, 1]^D``;
    for every group of configs sharing ``(rank, final, bias)`` select the learning rate and weight decay on a
    held-out validation set of ``n_val`` inputs; report the selected model's MSE on ``n_test`` fresh inputs and on
    ``n_test`` inputs uniform on the shifted cube ``shift``. The construction (:func:`fnn_construction`, or
    :func:`linear_construction` when ``linear``) is evaluated on the same inputs for ``construction_ranks``.

    Returns a dict of numpy arrays: ``groups`` (list of (rank, final, bias)), ``test``/``shift`` (S, G) of the
    selected runs, ``val`` (S, C), ``construction_test``/``construction_shift`` (S, len(construction_ranks)),
    ``zero_test`` (S,) the frozen model's MSE, ``n_params`` (G,) trainable parameters per group.
    """
    import numpy as np

    check_rank(seeds, 10**5, "seeds")
    g = torch.Generator().manual_seed(seed)
    inst = [random_fnn_instance(D, n_layers, n_target, g, linear=linear) for _ in range(seeds)]
    fw, fb, tw, tb = (torch.stack([t[i] for t in inst]) for i in range(4))
    relu = not linear
    if pretrain_steps:
        pre = [dict(rank=0, final=n_layers, bias="none" if linear else "all", lr=1e-3, wd=0.0)]
        W, b = train_fnn_adapters(fw, fb, tw, tb, pre, steps=pretrain_steps, batch=batch, generator=g, relu=relu,
                                  device=device, progress=progress and "pretrain")
        fw, fb = W[:, 0].double().cpu(), b[:, 0].double().cpu()
    W, b = train_fnn_adapters(fw, fb, tw, tb, configs, steps=steps, batch=batch, generator=g, relu=relu,
                              device=device, progress=progress)
    x_val = uniform_inputs((seeds, n_val, D), g, dtype=torch.float64)
    x_test = uniform_inputs((seeds, n_test, D), g, dtype=torch.float64)
    x_shift = uniform_inputs((seeds, n_test, D), g, low=shift[0], high=shift[1], dtype=torch.float64)
    W64, b64 = W.double().cpu(), b.double().cpu()
    val = adapter_mse(W64, b64, tw, tb, x_val, relu=relu)
    test = adapter_mse(W64, b64, tw, tb, x_test, relu=relu)
    shf = adapter_mse(W64, b64, tw, tb, x_shift, relu=relu)
    keys = [(c.get("rank", 0), c.get("final", 0), c.get("bias", "all")) for c in configs]
    groups = list(dict.fromkeys(keys))
    sel_test = np.zeros((seeds, len(groups)))
    sel_shift = np.zeros((seeds, len(groups)))
    for j, key in enumerate(groups):
        idx = torch.tensor([i for i, k in enumerate(keys) if k == key])
        best = idx[val[:, idx].argmin(1)]
        sel_test[:, j] = test[torch.arange(seeds), best].numpy()
        sel_shift[:, j] = shf[torch.arange(seeds), best].numpy()
    radius = math.sqrt(D) * max(1.0, abs(shift[0]), abs(shift[1]))
    c_test = np.zeros((seeds, len(construction_ranks)))
    c_shift = np.zeros((seeds, len(construction_ranks)))
    for s in range(seeds):
        for j, R in enumerate(construction_ranks):
            if linear:
                deltas = linear_construction(tw[s, 0], list(fw[s]), R)
                Wc, bc = torch.stack([w + d for w, d in zip(fw[s], deltas)]), fb[s]
            else:
                deltas, biases = fnn_construction(list(tw[s]), list(tb[s]), list(fw[s]), R, radius)
                Wc, bc = torch.stack([w + d for w, d in zip(fw[s], deltas)]), torch.stack(biases)
            c_test[s, j] = adapter_mse(Wc[None, None], bc[None, None], tw[s:s + 1], tb[s:s + 1], x_test[s:s + 1], relu=relu).item()
            c_shift[s, j] = adapter_mse(Wc[None, None], bc[None, None], tw[s:s + 1], tb[s:s + 1], x_shift[s:s + 1], relu=relu).item()
    zero = adapter_mse(fw[:, None], fb[:, None], tw, tb, x_test, relu=relu)[:, 0].numpy()
    L = n_layers

    def count(key):
        r, k, bias = key
        nb = {"all": L, "none": 0, "final": k}[bias] * D
        return 2 * r * D * L + k * D * D + nb

    return {"groups": groups, "test": sel_test, "shift": sel_shift, "val": val.numpy(), "construction_test": c_test,
            "construction_shift": c_shift, "zero_test": zero, "n_params": np.array([count(k) for k in groups]),
            "frozen_w": fw.numpy(), "target_w": tw.numpy()}


GRID_VERSION = 1


def cached_grid(name: str, scale_name: str, **kwargs) -> dict:
    """:func:`fnn_grid_experiment` through :func:`lorabook.train.cached_sweep` (keyed by scale, sizes, seeds, version)."""
    from .train import cached_sweep

    config = {"version": GRID_VERSION, "scale": scale_name, **kwargs}
    [out] = cached_sweep(name, [config], lambda c: fnn_grid_experiment(**kwargs), progress=False)
    return out


def grid_configs(ranks: Sequence[int], lrs: Sequence[float], wds: Sequence[float] = (0.0,), *,
                 bias: str = "all", final: Sequence[int] = ()) -> list[dict]:
    """The configs of a grid: LoRA ranks × lr × wd (biases ``bias``), plus full tuning of the last ``k`` layers."""
    out = [dict(rank=int(r), lr=float(lr), wd=float(wd), bias=bias) for r in ranks for lr in lrs for wd in wds]
    out += [dict(rank=0, final=int(k), bias="final", lr=float(lr), wd=float(wd)) for k in final for lr in lrs for wd in wds]
    return out


# ----------------------------------------------------------------------------------------------------------
# Transformer networks: random instances and batched gradient LoRA
def random_tfn_instance(D: int, H: int, n_layers: int, generator: torch.Generator, *, ffn_bias_std: float = 0.1
                        ) -> tuple[list[dict], list[dict]]:
    """A random target TFN and a frozen TFN with the same feed-forward blocks (float64, CPU draws); see
    :func:`random_tfn_pair` for a pair that differs in every weight.

    Attention weights ``N(0, 1/D)`` drawn independently for target and frozen model; feed-forward ``W1, W2``
    ``N(0, 1/D)``, biases ``N(0, ffn_bias_std²)``, shared. Returns ``(target, frozen)`` lists of layer dicts.
    """
    check_rank(D, 10**4, "D")
    check_rank(H, 10**4, "H")
    check_rank(n_layers, 10**4, "n_layers")
    kw = dict(generator=generator, dtype=torch.float64)

    def att():
        return {k: torch.randn(H, D, D, **kw) / math.sqrt(D) for k in ("Q", "K", "V", "O")}

    target, frozen = [], []
    for _ in range(n_layers):
        ffn = {"W1": torch.randn(D, D, **kw) / math.sqrt(D), "b1": torch.randn(D, **kw) * ffn_bias_std,
               "W2": torch.randn(D, D, **kw) / math.sqrt(D), "b2": torch.randn(D, **kw) * ffn_bias_std}
        target.append({**att(), **ffn})
        frozen.append({**att(), **ffn})
    return target, frozen


def _stack_layers(instances: Sequence[Sequence[dict]], extra: int, dtype, device) -> list[dict]:
    """Stack per-seed layer dicts to a leading S dim, and insert ``extra`` singleton dims so they broadcast
    against inputs of shape (S, [C,] n, N, D) (attention weights also get one dim for the sample axis)."""
    out = []
    for l in range(len(instances[0])):
        layer = {}
        for k in TFN_KEYS:
            T = torch.stack([inst[l][k] for inst in instances]).to(dtype=dtype, device=device)
            n_unsq = extra + (1 if k in ("Q", "K", "V", "O", "W1", "W2") else 2)
            layer[k] = T.reshape(T.shape[:1] + (1,) * n_unsq + T.shape[1:])
        out.append(layer)
    return out


def train_tfn_lora(targets: Sequence[Sequence[dict]], frozens: Sequence[Sequence[dict]], configs: Sequence[dict], *,
                   steps: int, batch: int, n_tokens: int, generator: torch.Generator,
                   progress: bool | str = False, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", train_ffn: bool = False,
                   lr_factors: Sequence[float] = (1.0,), eval_X: torch.Tensor | None = None):
    """Gradient LoRA on ``W_Q, W_K, W_V, W_O`` of every head and layer of a TFN, batched over (seed × config).

    Parameters
    ----------
    targets, frozens : S lists of layer dicts (one TFN pair per seed, as from :func:`random_tfn_instance` or
        :func:`random_tfn_pair`).
    configs : C dicts ``{"rank": R ≥ 1, "lr": η}``.
    steps, batch, n_tokens : Adam steps in all; fresh inputs (batch, n_tokens, D) with ``N(0, 1)`` entries every
        step.
    train_ffn : also train the feed-forward biases ``b1, b2`` of every layer and the output weight ``W2`` of the
        last layer in full (the parameters :func:`tfn_full_construction` changes besides the adapters).
    lr_factors : a piecewise-constant schedule: ``steps`` is split into ``len(lr_factors)`` equal phases, phase
        ``k`` runs Adam (moments restarted) at ``η · lr_factors[k]``; ``steps`` must be divisible by the count.
    eval_X : optional (S, n, N, D) test inputs; then the test MSE is also recorded after every phase.

    Returns
    -------
    adapted layers: list of dicts whose ``Q, K, V, O`` have shape (S, C, 1, H, D, D) (other keys broadcast), for
    :func:`tfn_forward` on inputs of shape (S, C, n, N, D) or (S, 1, n, N, D). With ``eval_X``, the pair
    ``(adapted, curve)`` with ``curve`` of shape (len(lr_factors), S, C) (test MSE after each phase).
    """
    S = len(targets)
    if S == 0 or len(frozens) != S:
        raise ValueError("need one target and one frozen TFN per seed")
    H, D = _check_tfn(list(targets[0]), "targets[0]")
    for t, f in zip(targets, frozens):
        if _check_tfn(list(t), "target") != (H, D) or _check_tfn(list(f), "frozen") != (H, D) or len(t) != len(f):
            raise ValueError("all TFNs must share depth, heads and width")
    if not configs:
        raise ValueError("configs must be a non-empty list of dicts")
    for c in configs:
        check_rank(c["rank"], D, "rank")
        _positive(c["lr"], "lr")
    if isinstance(lr_factors, (str, bytes)) or not isinstance(lr_factors, Sequence) or not lr_factors:
        raise ValueError("lr_factors must be a non-empty sequence of positive numbers")
    for a in lr_factors:
        _positive(a, "lr_factors entry")
    check_rank(steps, 10**9, "steps")
    if steps % len(lr_factors):
        raise ValueError(f"steps={steps} is not divisible by the {len(lr_factors)} phases of lr_factors")
    if eval_X is not None and (not isinstance(eval_X, torch.Tensor) or eval_X.dim() != 4
                               or eval_X.shape[0] != S or eval_X.shape[-1] != D):
        raise ValueError(f"eval_X must have shape (S={S}, n, N, D={D})")
    C, n_layers = len(configs), len(targets[0])
    kw = dict(dtype=dtype, device=device)
    tgt = _stack_layers(targets, 0, **kw)
    frz = _stack_layers(frozens, 1, **kw)
    r_max = max(c["rank"] for c in configs)
    mask = (torch.arange(r_max)[None] < torch.tensor([c["rank"] for c in configs])[:, None]).to(**kw)
    mask = mask.reshape(1, C, 1, 1, 1, r_max)
    params, factors, ffn = [], [], []
    for l in range(n_layers):
        layer = {}
        for k in ("Q", "K", "V", "O"):
            A = (torch.randn(S * C, 1, H, r_max, D, generator=generator, dtype=torch.float64) / math.sqrt(D)).to(**kw)
            B = torch.zeros(S * C, 1, H, D, r_max, **kw)
            params += [A, B]
            layer[k] = (A, B)
        factors.append(layer)
        extra = {}
        if train_ffn:
            extra = {"b1": torch.zeros(S * C, D, **kw), "b2": torch.zeros(S * C, D, **kw)}
            if l == n_layers - 1:
                extra["W2"] = torch.zeros(S * C, D, D, **kw)
            params += list(extra.values())
        ffn.append(extra)
    lr = torch.tensor([float(c["lr"]) for c in configs], **kw).repeat(S)

    def adapted() -> list[dict]:
        out = []
        for fl, fac, extra in zip(frz, factors, ffn):
            new = dict(fl)
            for k, (A, B) in fac.items():
                delta = (B.view(S, C, 1, H, D, r_max) * mask) @ A.view(S, C, 1, H, r_max, D)
                new[k] = fl[k] + delta
            for k, P in extra.items():
                new[k] = fl[k] + P.view((S, C, 1) + (1,) * (3 - P.dim()) + P.shape[1:])
            out.append(new)
        return out

    def loss_fn(step: int) -> torch.Tensor:
        X = torch.randn(S, batch, n_tokens, D, generator=generator, dtype=torch.float64).to(**kw)
        with torch.no_grad():
            y = tfn_forward(X, tgt)                                                    # (S, n, N, D)
        out = tfn_forward(X[:, None], adapted())                                      # (S, C, n, N, D)
        return (out - y[:, None]).square().sum(-1).mean((-1, -2)).reshape(S * C)

    curve = []
    for a in lr_factors:
        batched_adam(params, loss_fn, steps // len(lr_factors), lr * float(a), progress=progress)
        if eval_X is not None:
            with torch.no_grad():
                curve.append(tfn_mse(adapted(), targets, eval_X))
    with torch.no_grad():
        result = [{k: v.detach() for k, v in layer.items()} for layer in adapted()]
    return result if eval_X is None else (result, torch.stack(curve))


def tfn_mse(adapted: Sequence[dict], targets: Sequence[Sequence[dict]], X: torch.Tensor) -> torch.Tensor:
    """``E‖f(X) − f̄(X)‖²`` per token, for adapted TFNs from :func:`train_tfn_lora` on inputs X (S, n, N, D) → (S, C)."""
    if X.dim() != 4 or X.shape[0] != len(targets):
        raise ValueError("X must have shape (S, n, N, D) with one slice per seed")
    kw = dict(dtype=adapted[0]["Q"].dtype, device=adapted[0]["Q"].device)
    with torch.no_grad():
        X = X.to(**kw)
        y = tfn_forward(X, _stack_layers(targets, 0, **kw))
        out = tfn_forward(X[:, None], list(adapted))
    return (out - y[:, None]).square().sum(-1).mean((-1, -2))


# ----------------------------------------------------------------------------------------------------------
# Transformer networks whose every weight differs (the paper's setting)
def random_tfn_pair(D: int, H: int, n_layers: int, generator: torch.Generator, *, ffn_bias_std: float = 0.1
                    ) -> tuple[list[dict], list[dict]]:
    """A random target TFN and a frozen TFN that differ in every weight, feed-forward blocks included.

    All weights are drawn independently for the two models (float64, on the CPU from ``generator``):
    attention ``W_Q, W_K, W_V, W_O`` of shape (H, D, D) and feed-forward ``W1, W2`` (D, D) with entries
    ``N(0, 1/D)``, biases ``b1, b2`` (D,) with entries ``N(0, ffn_bias_std²)``.

    Returns ``(target, frozen)``, two lists of ``n_layers`` layer dicts for :func:`tfn_forward`.
    """
    check_rank(D, 10**4, "D")
    check_rank(H, 10**4, "H")
    check_rank(n_layers, 10**4, "n_layers")
    _positive(ffn_bias_std, "ffn_bias_std")
    kw = dict(generator=generator, dtype=torch.float64)

    def layer() -> dict:
        out = {k: torch.randn(H, D, D, **kw) / math.sqrt(D) for k in ("Q", "K", "V", "O")}
        out.update(W1=torch.randn(D, D, **kw) / math.sqrt(D), b1=torch.randn(D, **kw) * ffn_bias_std,
                   W2=torch.randn(D, D, **kw) / math.sqrt(D), b2=torch.randn(D, **kw) * ffn_bias_std)
        return out

    target, frozen = [], []
    for _ in range(n_layers):
        target.append(layer())
        frozen.append(layer())
    return target, frozen


def _check_ffn(layers: Sequence[dict], name: str, D: int) -> None:
    for l, layer in enumerate(layers, start=1):
        for k, shape in (("W1", (D, D)), ("W2", (D, D)), ("b1", (D,)), ("b2", (D,))):
            T = layer[k]
            if not isinstance(T, torch.Tensor) or tuple(T.shape) != shape or not torch.isfinite(T).all():
                raise ValueError(f"{name}[{l}]['{k}'] must be finite with shape {shape}")


def _check_tfn_invertible(target, frozen) -> None:
    """The construction inverts the frozen ``W1`` of every layer and the frozen and target ``W2`` before the last:
    raise a ``ValueError`` naming the first singular one."""
    L = len(target)
    for l, (t, f) in enumerate(zip(target, frozen), start=1):
        _check_nonsingular(f["W1"], f"frozen W1 of layer {l}")
        if l < L:
            _check_nonsingular(f["W2"], f"frozen W2 of layer {l}")
            _check_nonsingular(t["W2"], f"target W2 of layer {l}")


def tfn_full_construction(target: Sequence[dict], frozen: Sequence[dict], rank: int) -> list[dict]:
    """Adapters that make a frozen TFN equal a target TFN differing in every weight (Zeng & Lee's TFN theorem).

    Rank-``rank`` adapters on ``W_Q, W_K, W_V, W_O`` of every head and layer, new feed-forward biases
    ``b1, b2`` in every layer, and a (full) update of the output weight ``W2`` of the last layer. With tokens as
    rows, the adapted layer ``l`` reproduces the target's hidden state ``Z̄_l`` up to an invertible map,
    ``Z_l = Z̄_l T_lᵀ`` with ``T_l = W2_l W̄2_l^{-1}`` (``T_0 = T_L = I``), by matching per head

    * the score product ``W_Kᵀ W_Q`` to ``T_{l-1}^{-ᵀ} W̄_Kᵀ W̄_Q T_{l-1}^{-1}`` (frozen pair ``[W_Q, W_Kᵀ]``),
    * the value product ``W_O W_V`` to ``W1_l^{-1} W̄1_l W̄_O W̄_V T_{l-1}^{-1}`` (frozen pair ``[W_V, W_O]``),

    each with :func:`linear_construction` (``L = 2``): exact once ``2R ≥ D``, i.e. ``R ≥ ⌈D/2⌉``; below that each
    product keeps the error ``σ_{2R+1}`` of its difference. Then ``b1 ← b̄1``, ``b2 ← T_l b̄2`` (last layer:
    ``W2 ← W̄2``, ``b2 ← b̄2``).

    Parameters
    ----------
    target, frozen : lists of ``L`` layer dicts (``Q, K, V, O`` (H, D, D); ``W1, W2`` (D, D); ``b1, b2`` (D,)).
    rank : LoRA rank ``R`` in ``[1, D]``.

    Returns
    -------
    The adapted layers (same dict format) with the extra keys ``dQ, dK, dV, dO`` (H, D, D) holding the adapters.

    Raises
    ------
    ValueError
        Wrong shapes or keys, NaN, rank out of range, a singular frozen ``W1`` or ``W2`` or target ``W2``
        (in a layer before the last), or a pair violating the assumptions of Lemma 1.
    """
    H, D = _check_tfn(target, "target")
    if _check_tfn(frozen, "frozen") != (H, D) or len(target) != len(frozen):
        raise ValueError("target and frozen TFN must have the same depth, heads and width")
    _check_ffn(target, "target", D)
    _check_ffn(frozen, "frozen", D)
    check_rank(rank, D, "rank")
    L = len(target)
    _check_tfn_invertible(target, frozen)
    T = torch.eye(D, dtype=target[0]["Q"].dtype, device=target[0]["Q"].device)
    out = []
    for l, (t, f) in enumerate(zip(target, frozen), start=1):
        T_inv = torch.linalg.inv(T)
        new = dict(f)
        ds: dict[str, list] = {k: [] for k in ("Q", "K", "V", "O")}
        for h in range(H):
            score = T_inv.T @ t["K"][h].T @ t["Q"][h] @ T_inv
            dq, dkT = linear_construction(score, [f["Q"][h], f["K"][h].T], rank)
            value = torch.linalg.solve(f["W1"], t["W1"] @ t["O"][h] @ t["V"][h] @ T_inv)
            dv, do = linear_construction(value, [f["V"][h], f["O"][h]], rank)
            for k, d in (("Q", dq), ("K", dkT.T), ("V", dv), ("O", do)):
                ds[k].append(d)
        for k, d in ds.items():
            new["d" + k] = torch.stack(d)
            new[k] = f[k] + new["d" + k]
        new["b1"] = t["b1"].clone()
        if l < L:
            T = torch.linalg.solve(t["W2"].T, f["W2"].T).T                   # W2 W̄2^{-1}
            new["b2"] = T @ t["b2"]
        else:
            new["W2"], new["b2"] = t["W2"].clone(), t["b2"].clone()
        out.append(new)
    return out


# --- paper settings: shifted inputs, pretrained frozen models, random-model corollaries ---
#: initialisations of :func:`paper_fnn_instance`
PAPER_INITS = ("default", "uniform_singular_values")
#: distributions of the entries of :func:`random_linear_pair` ("sign" is discrete: the corollaries' control)
ENTRY_DISTS = ("gaussian", "uniform", "sign")


def paper_fnn_instance(D: int, n_layers: int, n_target: int, generator: torch.Generator, *,
                       init: str = "default") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A frozen FNN and a target FNN initialised as in the paper's experiments (float64, CPU draws).

    ``init="default"``: every weight and bias uniform on ``[−1/√D, 1/√D]`` (the default initialisation of a
    fully connected layer in PyTorch). ``init="uniform_singular_values"``: the same draws, then each target weight
    is replaced by ``W̄_i = ∏_{P_i} W_l + c_i I`` with ``c_i`` the mean singular value of ``W̄_i − ∏_{P_i} W_l``
    (uniform partition ``P_i``), so every error matrix ``E_i = c_i I`` has a flat spectrum.

    Returns ``(frozen_w (L, D, D), frozen_b (L, D), target_w (L̄, D, D), target_b (L̄, D))``.
    """
    check_rank(D, 10**5, "D")
    check_rank(n_target, 10**5, "n_target")
    groups = uniform_partition(n_layers, n_target)
    if init not in PAPER_INITS:
        raise ValueError(f"init must be one of {PAPER_INITS}, got {init!r}")
    a = 1.0 / math.sqrt(D)

    def unif(*shape):
        return (2.0 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1.0) * a

    fw, fb, tw, tb = unif(n_layers, D, D), unif(n_layers, D), unif(n_target, D, D), unif(n_target, D)
    if init == "uniform_singular_values":
        eye = torch.eye(D, dtype=torch.float64)
        for i, g in enumerate(groups):
            P = chain_product([fw[l] for l in g])
            tw[i] = P + torch.linalg.svdvals(tw[i] - P).mean() * eye
    return fw, fb, tw, tb


def gaussian_inputs(shape: Sequence[int], generator: torch.Generator, *, std: float = 1.0,
                    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inputs ``std · N(0, I)`` of shape ``shape`` (last dim ``D``), drawn on the CPU and moved to ``device``.

    ``std = 1`` is the paper's training and test distribution, ``std = 5`` its shifted test set.
    """
    _positive(std, "std")
    shape = tuple(shape)
    if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive integers, got {shape!r}")
    return (std * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype=dtype, device=device)


def gaussian_radius(D: int, *, std: float = 1.0, tail: float = 8.0) -> float:
    """A radius that holds ``std · N(0, I_D)`` inputs except with probability at most ``exp(−tail²/2)``.

    ``ρ = std (√D + tail)``: the norm is 1-Lipschitz, ``E‖z‖ ≤ √D``, and Gaussian concentration gives
    ``P(‖z‖ ≥ √D + t) ≤ exp(−t²/2)`` (``tail = 8``: below ``1.3·10⁻¹⁴``). The constructions certify exactness on
    the ball of this radius, so Gaussian inputs are covered up to that probability.
    """
    check_rank(D, 10**6, "D")
    return _positive(std, "std") * (math.sqrt(D) + _positive(tail, "tail"))


def relative_mse(weights: torch.Tensor, biases: torch.Tensor, frozen_w: torch.Tensor, frozen_b: torch.Tensor,
                 target_w: torch.Tensor, target_b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Test MSE of adapted ReLU models divided by the frozen model's test MSE on the same inputs.

    Parameters
    ----------
    weights (S, C, L, D, D), biases (S, C, L, D) : adapted models; frozen_w (S, L, D, D), frozen_b (S, L, D);
    target_w (S, L̄, D, D), target_b (S, L̄, D); x (S, n, D).

    Returns
    -------
    (S, C) tensor, the exact-match criterion's ratio (compare with :data:`EXACT_REL_MSE`).
    """
    if frozen_w.dim() != 4 or frozen_b.dim() != 3:
        raise ValueError("frozen_w must be (S, L, D, D) and frozen_b (S, L, D)")
    err = adapter_mse(weights, biases, target_w, target_b, x)
    zero = adapter_mse(frozen_w[:, None].to(weights), frozen_b[:, None].to(weights), target_w, target_b, x)
    if not (zero > 0).all():
        raise ValueError("the frozen model already equals the target on these inputs (zero error)")
    return err / zero


def train_lora_gaussian(frozen_w: torch.Tensor, frozen_b: torch.Tensor, target_w: torch.Tensor,
                        target_b: torch.Tensor, ranks: Sequence[int], *, steps: int, batch: int,
                        lr: float | Sequence[float], generator: torch.Generator,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        lr_factors: Sequence[float] = (1.0,), progress: bool | str = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient LoRA (and trainable biases) on the paper's inputs: fresh ``N(0, I)`` batches at every step.

    Rank-``R`` LoRA ``ΔW_l = B_l A_l`` on every layer (``A`` Gaussian with std ``1/√D``, ``B = 0``) and all biases
    trainable, one run per (seed, rank) in a single batched Adam program (:func:`lorabook.train.batched_adam`),
    constant learning rate ``lr`` (or a piecewise-constant schedule), MSE loss summed over output coordinates.

    Parameters
    ----------
    frozen_w (S, L, D, D), frozen_b (S, L, D), target_w (S, L̄, D, D), target_b (S, L̄, D) : one pair per seed.
    ranks : C LoRA ranks in ``[1, D]``.
    steps, batch : Adam steps in all and batch size.
    lr : one learning rate, or C of them (one per rank entry, so a rank may appear with several rates).
    lr_factors : ``steps`` is split into ``len(lr_factors)`` equal phases; phase ``k`` runs Adam (moments
        restarted) at ``lr · lr_factors[k]``; ``steps`` must be divisible by their number.

    Returns
    -------
    ``(weights (S, C, L, D, D), biases (S, C, L, D))`` of the adapted models (``dtype``, on ``device``).
    """
    S, L, D = _check_fnn_pair(frozen_w, frozen_b, target_w, target_b)
    ranks = list(ranks)
    if not ranks:
        raise ValueError("ranks must be a non-empty list")
    for r in ranks:
        check_rank(r, D, "rank")
    check_rank(steps, 10**9, "steps")
    check_rank(batch, 10**8, "batch")
    C, r_max = len(ranks), max(ranks)
    lrs = [lr] * C if isinstance(lr, (int, float)) else list(lr)
    if len(lrs) != C:
        raise ValueError(f"lr must be one number or one per rank entry ({C}), got {len(lrs)}")
    for a in lrs:
        _positive(a, "lr")
    if isinstance(lr_factors, (str, bytes)) or not isinstance(lr_factors, Sequence) or not lr_factors:
        raise ValueError("lr_factors must be a non-empty sequence of positive numbers")
    for a in lr_factors:
        _positive(a, "lr_factors entry")
    if steps % len(lr_factors):
        raise ValueError(f"steps={steps} is not divisible by the {len(lr_factors)} phases of lr_factors")
    from .train import batched_adam

    kw = dict(dtype=dtype, device=device)
    mask = (torch.arange(r_max)[None] < torch.tensor(ranks)[:, None]).to(**kw).repeat(S, 1)[:, None, None, :]
    A = (torch.randn(S * C, L, r_max, D, generator=generator, dtype=torch.float64) / math.sqrt(D)).to(**kw)
    B = torch.zeros(S * C, L, D, r_max, **kw)
    db = torch.zeros(S * C, L, D, **kw)
    fw, fb, tw, tb = (T.to(**kw) for T in (frozen_w, frozen_b, target_w, target_b))

    def model() -> tuple[torch.Tensor, torch.Tensor]:
        W = fw[:, None] + ((B * mask) @ A).view(S, C, L, D, D)
        return W, fb[:, None] + db.view(S, C, L, D)

    def loss_fn(step: int) -> torch.Tensor:
        x = gaussian_inputs((S, batch, D), generator, **kw)
        with torch.no_grad():
            y = _fnn_fast(x, tw, tb, True)
        W, b = model()
        return (_fnn_fast(x[:, None], W, b, True) - y[:, None]).square().sum(-1).mean(-1).reshape(S * C)

    rate = torch.tensor(lrs, **kw).repeat(S)
    for a in lr_factors:
        batched_adam([A, B, db], loss_fn, steps // len(lr_factors), rate * float(a), progress=progress)
    with torch.no_grad():
        W, b = model()
    return W.detach(), b.detach()


def _check_pretrain_schedule(levels, max_steps, batch) -> None:
    """Validate the closeness levels (numbers ``>= 1``), the step budget and the batch size of a pretraining."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError("levels must be a non-empty sequence of numbers >= 1")
    for c in levels:
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 1 or not math.isfinite(c):
            raise ValueError(f"every level must be a finite number >= 1, got {c!r}")
    check_rank(max_steps, 10**9, "max_steps")
    check_rank(batch, 10**8, "batch")


def _newly_reached(loss: torch.Tensor, init: torch.Tensor, lev: torch.Tensor, done: torch.Tensor) -> list:
    """Pretraining bookkeeping: the ``(level k, slice s)`` pairs whose loss ``(S,)`` is below ``init / lev[k]`` for the
    first time; marks them in ``done`` ``(K, S)`` (in place) and returns them as ``[k, s]`` lists."""
    new = ~done & (loss[None] < init[None] / lev[:, None])                               # (K, S)
    done |= new
    return new.nonzero().tolist()


def pretrain_frozen(frozen_w: torch.Tensor, frozen_b: torch.Tensor, target_w: torch.Tensor,
                    target_b: torch.Tensor, *, levels: Sequence[float], max_steps: int, batch: int, lr: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's "pretrained" frozen model: all its weights and biases trained toward the target until closer.

    Adam (learning rate ``lr``) on every weight and bias of each frozen model, on fresh ``N(0, I)`` batches, in
    float64. For each closeness level ``c`` the model is kept at the first step whose batch loss is below
    ``initial loss / c`` (or after ``max_steps``); one run serves all levels. ``c = 1`` is the random frozen model.

    Parameters
    ----------
    frozen_w (S, L, D, D), frozen_b (S, L, D), target_w (S, L̄, D, D), target_b (S, L̄, D) : float64 models.
    levels : K closeness factors ``≥ 1``; max_steps, batch : positive integers.

    Returns
    -------
    ``(frozen_w (K, S, L, D, D), frozen_b (K, S, L, D), steps_used (K, S))`` (float64, CPU).
    """
    _check_pretrain_schedule(levels, max_steps, batch)
    _positive(lr, "lr")
    if frozen_w.dim() != 4 or frozen_w.shape[2] != frozen_w.shape[3] or frozen_b.shape != frozen_w.shape[:3] \
            or target_w.dim() != 4 or target_b.shape != target_w.shape[:3] or target_w.shape[0] != frozen_w.shape[0] \
            or target_w.shape[2:] != frozen_w.shape[2:]:
        raise ValueError("need frozen_w (S, L, D, D), frozen_b (S, L, D), target_w (S, L̄, D, D), "
                         "target_b (S, L̄, D)")
    S, D, K = frozen_w.shape[0], frozen_w.shape[-1], len(levels)
    W, b = frozen_w.double().clone(), frozen_b.double().clone()
    lev = torch.tensor([float(c) for c in levels], dtype=torch.float64)
    outW, outb = W[None].repeat(K, 1, 1, 1, 1), b[None].repeat(K, 1, 1, 1)
    used = torch.zeros(K, S, dtype=torch.long)
    done = (lev == 1)[:, None].expand(K, S).clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    moments = [(torch.zeros_like(P), torch.zeros_like(P)) for P in (W, b)]     # Adam, written out: importing
    beta1, beta2 = 0.9, 0.999                                                  # torch.optim costs seconds
    tw, tb = target_w.double(), target_b.double()
    init = None
    for t in range(max_steps):
        if done.all():
            return outW, outb, used
        x = gaussian_inputs((S, batch, D), generator)
        with torch.no_grad():
            y = _fnn_fast(x, tw, tb, True)
        loss = (_fnn_fast(x, W, b, True) - y).square().sum(-1).mean(-1)
        with torch.no_grad():
            if init is None:
                init = loss.detach().clone()
            else:
                for k, s in _newly_reached(loss, init, lev, done):
                    outW[k, s], outb[k, s], used[k, s] = W[s], b[s], t
        grads = torch.autograd.grad(loss.sum(), [W, b])
        with torch.no_grad():
            for P, G, (m, v) in zip((W, b), grads, moments):
                m.mul_(beta1).add_(G, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(G, G, value=1 - beta2)
                P.sub_(lr * (m / (1 - beta1 ** (t + 1))) / ((v / (1 - beta2 ** (t + 1))).sqrt() + 1e-8))
    with torch.no_grad():
        for k, s in (~done).nonzero().tolist():
            outW[k, s], outb[k, s], used[k, s] = W[s], b[s], max_steps
    return outW, outb, used


def _check_partition(partition: Sequence[Sequence[int]], n_layers: int, n_target: int) -> list[list[int]]:
    if isinstance(partition, torch.Tensor) or not isinstance(partition, (list, tuple)) or len(partition) != n_target:
        raise ValueError(f"partition must be a list of {n_target} groups (one per target layer)")
    flat = [l for g in partition for l in g]
    if any(len(g) == 0 for g in partition) or flat != list(range(n_layers)):
        raise ValueError(f"partition must split layers 0..{n_layers - 1} into non-empty consecutive groups in "
                         f"order, got {partition!r}")
    return [list(g) for g in partition]


def partition_construction(target_weights: Sequence[torch.Tensor], target_biases: Sequence[torch.Tensor],
                           frozen_weights: Sequence[torch.Tensor], partition: Sequence[Sequence[int]], rank: int,
                           input_radius: float, *, margin: float = 1.0
                           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`fnn_construction` for any ordered partition of the frozen layers (the paper's general partition).

    Group ``i`` (the 0-based consecutive layers ``partition[i]``) imitates target layer ``i`` with the one-layer
    construction of Lemma 2, certified on the ball its input lies in: radius ``input_radius`` for the first group,
    then ``‖Ŵ_i‖_2 ρ_i + ‖b̄_i‖_2`` (ReLU is 1-Lipschitz). Exact on that ball once
    ``R ≥ max_i ⌈rank(W̄_i − ∏_{P_i} W_l) / |P_i|⌉`` (see :func:`partition_threshold`).

    Returns ``(deltas, biases)``, ``L`` tensors (D, D) of rank ≤ ``rank`` and ``L`` bias vectors (D,).
    """
    D = _check_layers(target_weights, "target_weights")
    Lbar = len(target_weights)
    _check_vectors(list(target_biases), "target_biases", Lbar, D)
    _check_layers(list(frozen_weights), "frozen_weights", D)
    groups = _check_partition(partition, len(frozen_weights), Lbar)
    check_rank(rank, D, "rank")
    rho = _positive(input_radius, "input_radius")
    deltas: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    for i, g in enumerate(groups):
        Ws = [frozen_weights[l] for l in g]
        d, b = fnn_construction([target_weights[i]], [target_biases[i]], Ws, rank, rho, margin=margin)
        deltas += d
        biases += b
        W_hat = chain_product([W + dd for W, dd in zip(Ws, d)])
        rho = torch.linalg.matrix_norm(W_hat, 2).item() * rho + target_biases[i].norm().item()
    return deltas, biases


def partition_threshold(target_weights: Sequence[torch.Tensor], frozen_weights: Sequence[torch.Tensor],
                        partition: Sequence[Sequence[int]], *, rtol: float = 1e-10) -> int:
    """``max_i ⌈rank(W̄_i − ∏_{l∈P_i} W_l) / |P_i|⌉``, the rank from which the partition's construction is exact."""
    D = _check_layers(list(target_weights), "target_weights")
    _check_layers(list(frozen_weights), "frozen_weights", D)
    groups = _check_partition(partition, len(frozen_weights), len(target_weights))
    need = 0
    for Wt, g in zip(target_weights, groups):
        E = Wt - chain_product([frozen_weights[l] for l in g])
        need = max(need, -(-numerical_rank(E, rtol) // len(g)))
    return max(need, 1)


def rank_needed(rel_err: "torch.Tensor | Sequence[float]", ranks: Sequence[int], tol: float) -> int:
    """The smallest rank of ``ranks`` (increasing) from which every relative error is ``≤ tol``.

    ``rel_err`` has one entry per rank; returns ``max(ranks) + 1`` if the last one is still above ``tol``.
    """
    import numpy as np

    err = np.asarray(rel_err, dtype=float)
    ranks = [int(r) for r in ranks]
    if err.shape != (len(ranks),) or not ranks or sorted(set(ranks)) != ranks:
        raise ValueError("need one error per rank and strictly increasing ranks")
    if not np.isfinite(err).all():
        raise ValueError("rel_err contains NaN or infinite values")
    _positive(tol, "tol")
    need = ranks[-1] + 1
    for r, e in zip(reversed(ranks), reversed(err)):
        if e > tol:
            break
        need = r
    return need


def random_linear_pair(D: int, n_layers: int, generator: torch.Generator, *, dist: str = "gaussian"
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A target ``W̄`` and frozen ``[W_1, …, W_L]`` with i.i.d. entries (float64): ``"gaussian"`` ``N(0, 1/D)``,
    ``"uniform"`` on ``[−1/√D, 1/√D]`` (both continuous: the corollaries' hypothesis) or ``"sign"`` ``±1/√D``
    (discrete: singular matrices and rank-deficient errors have positive probability)."""
    check_rank(D, 10**5, "D")
    check_rank(n_layers, 10**5, "n_layers")
    if dist not in ENTRY_DISTS:
        raise ValueError(f"dist must be one of {ENTRY_DISTS}, got {dist!r}")
    kw = dict(generator=generator, dtype=torch.float64)
    if dist == "gaussian":
        M = torch.randn(n_layers + 1, D, D, **kw)
    elif dist == "uniform":
        M = 2.0 * torch.rand(n_layers + 1, D, D, **kw) - 1.0
    else:
        M = 2.0 * torch.randint(0, 2, (n_layers + 1, D, D), generator=generator).double() - 1.0
    M = M / math.sqrt(D)
    return M[0], list(M[1:])


def linear_rank_needed(target: torch.Tensor, frozen: Sequence[torch.Tensor], *, tol: float = 1e-6) -> int:
    """The smallest LoRA rank at which the adapters of :func:`linear_construction` match ``W̄`` exactly
    (spectral error ``≤ tol · ‖E‖_2``), by bisection over ``1..D`` (the construction's error ``σ_{RL+1}(E)`` does
    not increase with ``R``); ``D + 1`` if no rank does or if the construction refuses the instance (a singular
    frozen layer or product: Lemma 1's hypothesis fails). Below the returned rank no adapters at all are exact:
    ``∏(W_l + ΔW_l) − ∏W_l`` has rank at most ``RL``."""
    D = _check_layers(list(frozen), "frozen")
    check_matrix(target, "target", square=True)
    if target.shape != (D, D):
        raise ValueError(f"target has shape {tuple(target.shape)}, expected ({D}, {D})")
    _positive(tol, "tol")
    nE = torch.linalg.matrix_norm(target - chain_product(list(frozen)), 2).item()
    if nE == 0:
        return 1

    def exact(R: int) -> bool | None:
        try:
            deltas = linear_construction(target, list(frozen), R)
        except ValueError:
            return None
        adapted = chain_product([W + d for W, d in zip(frozen, deltas)])
        return torch.linalg.matrix_norm(adapted - target, 2).item() <= tol * nE

    lo, hi = 1, D                       # invariant: the answer lies in [lo, hi] if rank D is exact
    top = exact(D)
    if not top:
        return D + 1
    while lo < hi:
        mid = (lo + hi) // 2
        ok = exact(mid)
        if ok is None:
            return D + 1
        lo, hi = (lo, mid) if ok else (mid + 1, hi)
    return lo


def close_in_rank(target_w: torch.Tensor, frozen_w: torch.Tensor, partition: Sequence[Sequence[int]],
                  ranks: Sequence[int | None], generator: torch.Generator) -> torch.Tensor:
    """Frozen weights moved so that group ``i`` of ``partition`` differs from target layer ``i`` by rank ``ranks[i]``.

    The last layer ``l`` of group ``i`` is replaced by ``W_l = (W̄_i − U S Vᵀ)(W_{l−1}⋯W_{first})^{-1}`` with
    ``U, V ∈ R^{D×k}`` random orthonormal columns and ``S`` diagonal, entries uniform on ``[0.25, 0.5]``, so
    ``W̄_i − ∏_{P_i} W = U S Vᵀ`` has rank ``k`` with well-separated non-zero singular values (a frozen model
    already close to the target "in rank", as after a low-rank update); ``None`` leaves the group unchanged.

    Parameters
    ----------
    target_w (L̄, D, D), frozen_w (L, D, D) : float64 weights; partition : L̄ consecutive groups of ``0..L−1``;
    ranks : L̄ entries, each ``None`` or an integer in ``[0, D]``.

    Returns
    -------
    (L, D, D) new frozen weights (the input is not modified).
    """
    if target_w.dim() != 3 or frozen_w.dim() != 3:
        raise ValueError("need target_w (L̄, D, D) and frozen_w (L, D, D)")
    D = _check_layers(list(frozen_w), "frozen_w")
    _check_layers(list(target_w), "target_w", D)
    groups = _check_partition(partition, frozen_w.shape[0], target_w.shape[0])
    if isinstance(ranks, (str, bytes)) or len(ranks) != len(groups):
        raise ValueError(f"ranks must have one entry per target layer ({len(groups)})")
    out = frozen_w.clone()
    for i, (g, k) in enumerate(zip(groups, ranks)):
        if k is None:
            continue
        check_rank(k, D, "ranks entry", allow_zero=True)
        U = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=out.dtype))[0][:, :k]
        V = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=out.dtype))[0][:, :k]
        sv = 0.25 + 0.25 * torch.rand(k, generator=generator, dtype=out.dtype)
        goal = target_w[i] - (U * sv) @ V.T
        if len(g) > 1:
            before = chain_product([out[l] for l in g[:-1]])
            _check_nonsingular(before, f"the product of group {i} before its last layer")
            goal = torch.linalg.solve(before.T, goal.T).T
        out[g[-1]] = goal
    return out


def construction_curve(target_w: torch.Tensor, target_b: torch.Tensor, frozen_w: torch.Tensor,
                       frozen_b: torch.Tensor, ranks: Sequence[int], input_radius: float,
                       xs: Sequence[torch.Tensor], *, partition: Sequence[Sequence[int]] | None = None
                       ) -> torch.Tensor:
    """Relative test error of the construction at each rank, on each input set: MSE / frozen model's MSE.

    The construction is :func:`fnn_construction` (uniform partition) or, with ``partition``,
    :func:`partition_construction`, certified on the ball of radius ``input_radius``.

    Parameters
    ----------
    target_w (L̄, D, D), target_b (L̄, D), frozen_w (L, D, D), frozen_b (L, D) : one float64 instance.
    ranks : ranks in ``[1, D]``; xs : input sets, each (n, D).

    Returns
    -------
    (len(ranks), len(xs)) float64 tensor.
    """
    if target_w.dim() != 3 or frozen_w.dim() != 3 or frozen_b.shape != frozen_w.shape[:2]:
        raise ValueError("need target_w (L̄, D, D), target_b (L̄, D), frozen_w (L, D, D), frozen_b (L, D)")
    xs = list(xs)
    if not xs or any(not isinstance(x, torch.Tensor) or x.dim() != 2 for x in xs):
        raise ValueError("xs must be a non-empty list of (n, D) input sets")
    ys = [fnn_forward(x, target_w, target_b) for x in xs]
    zero = [(fnn_forward(x, frozen_w, frozen_b) - y).square().sum(-1).mean() for x, y in zip(xs, ys)]
    if any(z <= 0 for z in zero):
        raise ValueError("the frozen model already equals the target on an input set (zero error)")
    out = torch.zeros(len(ranks), len(xs), dtype=torch.float64)
    for j, R in enumerate(ranks):
        if partition is None:
            deltas, biases = fnn_construction(list(target_w), list(target_b), list(frozen_w), int(R),
                                              input_radius)
        else:
            deltas, biases = partition_construction(list(target_w), list(target_b), list(frozen_w), partition,
                                                    int(R), input_radius)
        W = [w + d for w, d in zip(frozen_w, deltas)]
        for i, (x, y, z) in enumerate(zip(xs, ys, zero)):
            out[j, i] = (fnn_forward(x, W, biases) - y).square().sum(-1).mean() / z
    return out


# --- Transformer: pretrained and rank-k frozen models ---
_ATT_KEYS = ("Q", "K", "V", "O")


def _check_pair(target: Sequence[dict], frozen: Sequence[dict]) -> tuple[int, int]:
    H, D = _check_tfn(target, "target")
    if _check_tfn(frozen, "frozen") != (H, D) or len(target) != len(frozen):
        raise ValueError("target and frozen TFN must have the same depth, heads and width")
    _check_ffn(target, "target", D)
    _check_ffn(frozen, "frozen", D)
    return H, D


def tfn_between(target: Sequence[dict], far: Sequence[dict], t: float) -> list[dict]:
    """A frozen TFN at a controlled distance from the target: every weight and bias ``θ̄ + t (θ_far − θ̄)``.

    ``t = 1`` gives ``far`` (a random frozen model), ``t → 0`` the target; every weight differs from the
    target's by ``t`` times a generic (full-rank) difference, so the products the construction matches differ by
    full-rank matrices of size ``O(t)`` (a frozen model "closer" to the target, not closer in rank).

    Parameters
    ----------
    target, far : lists of ``L`` layer dicts (``Q, K, V, O`` (H, D, D); ``W1, W2`` (D, D); ``b1, b2`` (D,)).
    t : finite number in ``(0, 1]``.

    Returns
    -------
    list of ``L`` new layer dicts (inputs are not modified).
    """
    _check_pair(target, far)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1:
        raise ValueError(f"t must be a finite number in (0, 1], got {t!r}")
    return [{k: tl[k] + float(t) * (fl[k] - tl[k]) for k in TFN_KEYS} for tl, fl in zip(target, far)]


def tfn_low_rank_frozen(target: Sequence[dict], k: int, generator: torch.Generator, *,
                        factors: Sequence[str] = ("Q", "V")) -> list[dict]:
    """A frozen TFN equal to the target except for rank-``k`` changes of the attention weights in ``factors``.

    For every layer and head, each weight named in ``factors`` becomes ``W̄ + U S Vᵀ`` with ``U, V`` (D, k)
    random orthonormal columns and ``S`` diagonal with entries uniform on ``[0.25, 0.5]``; the feed-forward blocks
    are the target's. With one factor per attention pair (the default ``Q`` and ``V``) each product
    ``W_Kᵀ W_Q``, ``W_O W_V`` differs from the target's by a rank-``k`` matrix (the other factor is invertible);
    with both factors of a pair changed (``Q`` and ``K``) the product differs by rank ``min(2k, D)`` generically.

    Parameters
    ----------
    target : list of ``L`` layer dicts (``Q, K, V, O`` (H, D, D); ``W1, W2`` (D, D); ``b1, b2`` (D,)).
    k : rank of each change, in ``[0, D]``.
    generator : torch.Generator for the random directions.
    factors : non-empty subset of ``("Q", "K", "V", "O")``, without repeats.

    Returns
    -------
    list of ``L`` new layer dicts.
    """
    H, D = _check_tfn(target, "target")
    _check_ffn(target, "target", D)
    check_rank(k, D, "k", allow_zero=True)
    if isinstance(factors, (str, bytes)) or not factors or len(set(factors)) != len(factors) \
            or any(f not in _ATT_KEYS for f in factors):
        raise ValueError(f"factors must be a non-empty subset of {_ATT_KEYS} without repeats, got {factors!r}")
    out = []
    for layer in target:
        new = {key: layer[key].clone() for key in TFN_KEYS}
        dtype = new["Q"].dtype
        for f in factors:
            for h in range(H):
                U = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=dtype))[0][:, :k]
                V = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=dtype))[0][:, :k]
                sv = 0.25 + 0.25 * torch.rand(k, generator=generator, dtype=dtype)
                new[f][h] = new[f][h] + ((U * sv) @ V.T).to(new[f].device)
        out.append(new)
    return out


def tfn_pair_differences(target: Sequence[dict], frozen: Sequence[dict]) -> torch.Tensor:
    """The differences :func:`tfn_full_construction` removes, as singular values.

    Per layer ``l`` and head ``h``: ``E_s = T^{-ᵀ} W̄_Kᵀ W̄_Q T^{-1} − W_Kᵀ W_Q`` (score pair) and
    ``E_v = W1^{-1} W̄1 W̄_O W̄_V T^{-1} − W_O W_V`` (value pair), with ``T = T_{l−1}`` the map the construction
    carries between the hidden states (``T_0 = I``, ``T_l = W2_l W̄2_l^{-1}``).

    Parameters
    ----------
    target, frozen : lists of ``L`` layer dicts of the same shapes (float64 recommended).

    Returns
    -------
    (L, H, 2, D) singular values, index 0 of the third axis the score pair, 1 the value pair.

    Raises
    ------
    ValueError
        Wrong shapes or keys, NaN, or a singular frozen ``W1`` / ``W2`` or target ``W2`` (before the last layer).
    """
    H, D = _check_pair(target, frozen)
    L = len(target)
    _check_tfn_invertible(target, frozen)
    T = torch.eye(D, dtype=target[0]["Q"].dtype, device=target[0]["Q"].device)
    out = torch.zeros(L, H, 2, D, dtype=torch.float64)
    for l, (t, f) in enumerate(zip(target, frozen)):
        T_inv = torch.linalg.inv(T)
        for h in range(H):
            E_s = T_inv.T @ t["K"][h].T @ t["Q"][h] @ T_inv - f["K"][h].T @ f["Q"][h]
            value = torch.linalg.solve(f["W1"], t["W1"] @ t["O"][h] @ t["V"][h] @ T_inv)
            E_v = value - f["O"][h] @ f["V"][h]
            out[l, h, 0] = torch.linalg.svdvals(E_s).double().cpu()
            out[l, h, 1] = torch.linalg.svdvals(E_v).double().cpu()
        if l < L - 1:
            T = torch.linalg.solve(t["W2"].T, f["W2"].T).T
    return out


def tfn_construction_threshold(target: Sequence[dict], frozen: Sequence[dict], *, rtol: float = 1e-10) -> int:
    """The rank from which :func:`tfn_full_construction` is exact, derived from the construction.

    Each attention pair is a two-factor chain (Lemma 1 with ``L = 2``): rank-``R`` adapters remove ``2R``
    singular directions of its difference, so the pair is matched exactly iff ``2R ≥ rank E``; the TFN is exact
    iff every pair is, i.e. from ``R = max_{l,h,pair} ⌈rank E / 2⌉`` (at least 1). ``rank E`` counts the singular
    values of :func:`tfn_pair_differences` above ``rtol`` times a scale: the largest of these singular values and
    of the spectral norms of the frozen products ``W_Kᵀ W_Q``, ``W_O W_V`` (so round-off differences count as 0).

    Parameters
    ----------
    target, frozen : lists of ``L`` layer dicts of the same shapes.
    rtol : positive relative tolerance of the numerical rank.

    Returns
    -------
    int in ``[1, ⌈D/2⌉]``.
    """
    _positive(rtol, "rtol")
    s = tfn_pair_differences(target, frozen)
    top = max([float(s.max())] + [float(torch.linalg.matrix_norm(P, 2).max())
                                  for f in frozen for P in (f["K"].transpose(-1, -2) @ f["Q"], f["O"] @ f["V"])])
    if top == 0:
        return 1
    ranks = (s > rtol * top).sum(-1)
    return max(1, math.ceil(int(ranks.max()) / 2))


def tfn_construction_curve(target: Sequence[dict], frozen: Sequence[dict], ranks: Sequence[int],
                           X: torch.Tensor, *, reference: float | None = None) -> torch.Tensor:
    """Test MSE of :func:`tfn_full_construction` at each rank, relative to the frozen model's (or ``reference``).

    Parameters
    ----------
    target, frozen : lists of ``L`` layer dicts of the same shapes.
    ranks : ranks in ``[1, D]``.
    X : (n, N, D) test token sequences, same dtype as the weights.
    reference : optional positive MSE to divide by instead of the frozen model's (e.g. a random frozen
        model's, to compare frozen models at different distances on one scale).

    Returns
    -------
    (len(ranks),) float64 tensor: per-token ``E‖f(X) − f̄(X)‖²`` of the adapted model / the reference.
    """
    _, D = _check_pair(target, frozen)
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[-1] != D or not torch.isfinite(X).all():
        raise ValueError(f"X must be a finite tensor of shape (n, N, D={D})")
    ranks = [int(r) for r in ranks]
    if not ranks:
        raise ValueError("ranks must be a non-empty list")
    for r in ranks:
        check_rank(r, D, "rank")
    y = tfn_forward(X, target)
    if reference is None:
        reference = (tfn_forward(X, frozen) - y).square().sum(-1).mean().item()
        if reference <= 0:
            raise ValueError("the frozen model already equals the target on X (zero error)")
    else:
        _positive(reference, "reference")
    out = torch.zeros(len(ranks), dtype=torch.float64)
    for j, R in enumerate(ranks):
        adapted = tfn_full_construction(target, frozen, R)
        out[j] = (tfn_forward(X, adapted) - y).square().sum(-1).mean().item() / reference
    return out


def pretrain_tfn(targets: Sequence[Sequence[dict]], frozens: Sequence[Sequence[dict]], *, levels: Sequence[float],
                 max_steps: int, batch: int, n_tokens: int, lr: float, generator: torch.Generator
                 ) -> tuple[list[list[list[dict]]], torch.Tensor]:
    """The paper's "pretrained" frozen model for Transformers: every weight and bias trained toward the target.

    Adam (learning rate ``lr``, float64) on all weights and biases of each frozen TFN, on fresh token sequences
    with ``N(0, 1)`` entries, batched over the S pairs. For each closeness level ``c`` the model is kept at the
    first step whose batch loss (per-token ``‖f(X) − f̄(X)‖²``) is below ``initial loss / c`` (or after
    ``max_steps``); one run serves all levels; ``c = 1`` is the frozen model itself.

    Parameters
    ----------
    targets, frozens : S lists of ``L`` layer dicts each (``Q, K, V, O`` (H, D, D); ``W1, W2`` (D, D);
        ``b1, b2`` (D,)), all of the same shapes.
    levels : K closeness factors ``≥ 1``.
    max_steps, batch, n_tokens : positive integers (inputs of shape (S, batch, n_tokens, D) every step).
    lr : positive learning rate.
    generator : torch.Generator for the inputs.

    Returns
    -------
    ``(models, steps_used)``: ``models[k][s]`` the pretrained TFN (list of layer dicts, float64, CPU) of level
    ``k`` and pair ``s``; ``steps_used`` (K, S) the step at which it was kept.
    """
    _check_pretrain_schedule(levels, max_steps, batch)
    check_rank(n_tokens, 10**6, "n_tokens")
    _positive(lr, "lr")
    S = len(targets)
    if S == 0 or len(frozens) != S:
        raise ValueError("need one target and one frozen TFN per pair")
    shape = _check_pair(list(targets[0]), list(frozens[0])) + (len(targets[0]),)
    for t, f in zip(targets, frozens):
        if _check_pair(list(t), list(f)) + (len(t),) != shape:
            raise ValueError("all TFNs must share depth, heads and width")
    H, D, _ = shape
    kw = dict(dtype=torch.float64, device="cpu")
    tgt = _stack_layers(targets, 0, **kw)
    params = _stack_layers(frozens, 0, **kw)
    flat = [P.requires_grad_(True) for layer in params for P in layer.values()]
    lev = torch.tensor([float(c) for c in levels], dtype=torch.float64)
    K = len(levels)

    def snapshot(s: int) -> list[dict]:
        return [{k: P[s].detach().clone().reshape(P.shape[-3:] if k in _ATT_KEYS else
                                                  P.shape[-2:] if k in ("W1", "W2") else P.shape[-1:])
                 for k, P in layer.items()} for layer in params]

    models = [[snapshot(s) for s in range(S)] for _ in range(K)]
    used = torch.zeros(K, S, dtype=torch.long)
    done = (lev == 1)[:, None].expand(K, S).clone()
    moments = [(torch.zeros_like(P), torch.zeros_like(P)) for P in flat]
    beta1, beta2 = 0.9, 0.999
    init = None
    for step in range(max_steps):
        if done.all():
            return models, used
        X = torch.randn(S, batch, n_tokens, D, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            y = tfn_forward(X, tgt)
        loss = (tfn_forward(X, params) - y).square().sum(-1).mean((-1, -2))          # (S,)
        with torch.no_grad():
            if init is None:
                init = loss.detach().clone()
            else:
                for k, s in _newly_reached(loss, init, lev, done):
                    models[k][s], used[k, s] = snapshot(s), step
        grads = torch.autograd.grad(loss.sum(), flat)
        with torch.no_grad():
            for P, G, (m, v) in zip(flat, grads, moments):
                m.mul_(beta1).add_(G, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(G, G, value=1 - beta2)
                P.sub_(lr * (m / (1 - beta1 ** (step + 1))) / ((v / (1 - beta2 ** (step + 1))).sqrt() + 1e-8))
    for k, s in (~done).nonzero().tolist():
        models[k][s], used[k, s] = snapshot(s), max_steps
    return models, used
