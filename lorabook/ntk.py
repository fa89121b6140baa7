"""Chapter 2 (Jang, Lee & Ryu 2024): LoRA on the linearised (NTK) fine-tuning problem.

The fine-tuned model is replaced by its first-order Taylor expansion in ``P`` chosen weight matrices
``W_p ∈ R^{m×n}`` (e.g. a layer's query and value weights):

    f(W0 + δ; x_i) ≈ f(W0; x_i) + ⟨G_i, δ⟩,     G_i = ∂f(W0; x_i)/∂W ∈ R^{K×P×m×n},

and fine-tuning becomes the convex problem (the *mean* loss, our convention, used everywhere here)

    min_δ  L̂(δ) + λ Σ_p ‖δ_p‖_*,     L̂(δ) = (1/N) Σ_i ℓ(f(W0; x_i) + ⟨G_i, δ⟩, y_i).

LoRA ``δ_p = B_p A_pᵀ`` with weight decay ``λ/2 (‖A‖_F² + ‖B‖_F²)`` is the same problem restricted to rank
``≤ r`` (Recht et al. 2010, Lemma 5.1). This module provides

* :func:`rank_threshold` / :func:`pataki_rank` — the rank conditions of Theorems 4.1 and 3.1;
* :func:`per_example_jacobian`, :func:`linearised_predict`, :func:`predict_with_delta` — linearisation of any
  ``nn.Module`` with ``torch.func``;
* :class:`LinearisedProblem` — the convex problem (squared error, logistic or softmax cross-entropy loss), with
  :func:`proximal_gradient` (FISTA with restarts and singular-value soft-thresholding, or plain proximal
  gradient) and :func:`certificate` (duality gap and KKT residual);
* :func:`reduce_rank` — the constructive rank reduction behind Theorem 3.1;
* :func:`lora_gd` — LoRA gradient descent with weight decay (optionally ε-perturbed, Theorem 4.1), batched
  over initialisations and ranks; :func:`train_actual_lora` — the same on the real (non-linearised) model;
* :class:`MiniLMHead` — MiniLM's top layers (the last one by default) with the prompt-style zero-shot logit;
* :func:`rademacher_bound` — the nuclear-norm-ball generalisation bound behind Theorem 5.1.
* :func:`second_order`, :func:`lora_objective`, :func:`pad_zero_column` — exact Hessians of the LoRA objective and
  the escape direction of Lemmas 4.3/4.4;
* :func:`theorem51_lambda`, :func:`theorem51_bound`, :func:`bounded_gradient_sample`, :func:`ce_excess_risk` —
  Theorem 5.1 restated with explicit constants, and a synthetic problem with a computable population risk.

Memory: per-example gradients cost ``N·K·P·m·n`` numbers (32 examples, K = 1, query and value of MiniLM's
384×384 last layer: 9.4 M floats ≈ 38 MB in float32), never the whole network's.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from .checks import check_positive_int
from .config import few_threads

LOSSES = ("mse", "logistic", "ce")


# ----------------------------------------------------------------------------------------------------------
# rank conditions
# ----------------------------------------------------------------------------------------------------------
def rank_threshold(K: int, N: int) -> int:
    """The smallest LoRA rank ``r`` with ``r(r+1)/2 > K·N`` (Theorem 4.1: no spurious local minima).

    ``K`` (output dimension) and ``N`` (number of samples) must be positive integers.
    """
    check_positive_int(K, "K")
    check_positive_int(N, "N")
    r = int(math.isqrt(2 * K * N))
    while r * (r + 1) // 2 <= K * N:
        r += 1
    while r > 1 and (r - 1) * r // 2 > K * N:
        r -= 1
    return r


def pataki_rank(K: int, N: int) -> int:
    """The largest rank ``r`` with ``r(r+1)/2 ≤ K·N`` (Theorem 3.1: a global minimiser of this rank exists)."""
    return rank_threshold(K, N) - 1


# ----------------------------------------------------------------------------------------------------------
# linearisation with torch.func
# ----------------------------------------------------------------------------------------------------------
def _check_names(module: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(names, str) or len(names) == 0:
        raise ValueError("names must be a non-empty sequence of parameter names")
    ws = []
    for n in names:
        try:
            w = module.get_parameter(n)
        except AttributeError as err:
            raise ValueError(f"module has no parameter {n!r}") from err
        if w.dim() != 2:
            raise ValueError(f"parameter {n!r} must be a weight matrix, got shape {tuple(w.shape)}")
        ws.append(w)
    if len({tuple(w.shape) for w in ws}) != 1:
        raise ValueError(f"all chosen weight matrices must share one shape, got {[tuple(w.shape) for w in ws]}")
    return ws


def _check_inputs(inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    if not inputs or any(not isinstance(x, torch.Tensor) for x in inputs):
        raise ValueError("inputs must be a tensor or a non-empty tuple of tensors with a leading batch dimension")
    n = inputs[0].shape[0] if inputs[0].dim() else 0
    if n < 1 or any(x.dim() == 0 or x.shape[0] != n for x in inputs):
        raise ValueError(f"every input needs the same leading batch dimension, got {[tuple(x.shape) for x in inputs]}")
    return inputs


def per_example_jacobian(module: nn.Module, names: Sequence[str], inputs, *, chunk_size: int | None = None,
                         dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and per-example gradients of ``module`` with respect to the weight matrices ``names``.

    Parameters
    ----------
    module : maps a batch ``module(*inputs)`` to ``(N,)`` or ``(N, K)`` outputs; examples must not interact.
    names : ``P`` parameter names of weight matrices of one shape ``(m, n)``.
    inputs : a tensor or tuple of tensors, each with leading dimension ``N``.
    chunk_size : examples per vmap chunk (bounds memory; ``None``: all at once).
    dtype : dtype of the returned tensors (default: the parameters').

    Returns
    -------
    ``(f0, G)``: ``f0`` ``(N, K)`` pretrained outputs and ``G`` ``(N, K, P, m, n)`` with
    ``G[i, k, p] = ∂f_k(W0; x_i)/∂W_p``. Memory ``N·K·P·m·n`` numbers.
    """
    from torch.func import functional_call, jacrev, vmap

    ws = _check_names(module, names)
    inputs = _check_inputs(inputs)
    params = {n: w.detach() for n, w in zip(names, ws)}

    def single(p, *x):
        out = functional_call(module, p, tuple(xi.unsqueeze(0) for xi in x))
        return out.reshape(-1)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        with torch.no_grad():
            f0 = module(*inputs)
        jac = vmap(jacrev(single), in_dims=(None,) + (0,) * len(inputs), chunk_size=chunk_size)(params, *inputs)
    N = inputs[0].shape[0]
    f0 = f0.reshape(N, -1)
    G = torch.stack([jac[n] for n in names], dim=2)  # (N, K, P, m, n)
    dtype = dtype or G.dtype
    return f0.detach().to(dtype), G.detach().to(dtype)


def _delta_dict(names, delta, ws):
    if not isinstance(delta, torch.Tensor) or delta.shape != (len(names),) + tuple(ws[0].shape):
        raise ValueError(f"delta must have shape {(len(names),) + tuple(ws[0].shape)}, got "
                         f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
    if not torch.isfinite(delta).all():
        raise ValueError("delta contains NaN or infinite entries")
    return {n: delta[p].to(ws[p].dtype) for p, n in enumerate(names)}


def linearised_predict(module: nn.Module, names: Sequence[str], delta: torch.Tensor, inputs, *,
                       batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The linearised model ``f(W0; x) + ⟨∇_W f(W0; x), δ⟩`` on new inputs, by ``torch.func.jvp`` (no stored G).

    Parameters
    ----------
    delta : ``(P, m, n)`` update of the ``P`` weight matrices ``names``.
    inputs : tensor(s) with leading dimension ``N``; processed in batches of ``batch_size``.

    Returns
    -------
    ``(f0, f_lin)``, both ``(N, K)``: the pretrained outputs and the linearised predictions (which include f0).
    """
    from torch.func import functional_call, jvp

    ws = _check_names(module, names)
    inputs = _check_inputs(inputs)
    tangent = _delta_dict(names, delta, ws)
    primal = {n: w.detach() for n, w in zip(names, ws)}
    N = inputs[0].shape[0]
    f0s, fls = [], []
    for i in range(0, N, batch_size):
        xb = tuple(x[i:i + batch_size] for x in inputs)
        with torch.no_grad():
            out, dout = jvp(lambda p: functional_call(module, p, xb), (primal,), (tangent,))
        f0s.append(out.reshape(len(xb[0]), -1))
        fls.append((out + dout).reshape(len(xb[0]), -1))
    return torch.cat(f0s), torch.cat(fls)


def predict_with_delta(module: nn.Module, names: Sequence[str], delta: torch.Tensor, inputs, *,
                       batch_size: int = 256) -> torch.Tensor:
    """The actual (non-linearised) model ``f(W0 + δ; x)``: ``(N, K)`` outputs, ``delta`` ``(P, m, n)``."""
    from torch.func import functional_call

    ws = _check_names(module, names)
    inputs = _check_inputs(inputs)
    d = _delta_dict(names, delta, ws)
    params = {n: w.detach() + d[n] for n, w in zip(names, ws)}
    N = inputs[0].shape[0]
    outs = []
    with torch.no_grad():
        for i in range(0, N, batch_size):
            xb = tuple(x[i:i + batch_size] for x in inputs)
            outs.append(functional_call(module, params, xb).reshape(len(xb[0]), -1))
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------
def class_targets(y, K: int, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Targets of the softmax cross-entropy as ``(N, K)`` rows of the probability simplex.

    ``y`` is either ``(N,)`` integer class indices in ``{0, …, K−1}`` (returned one-hot) or ``(N, K)`` rows that
    are non-negative and sum to 1 (one-hot or soft labels). ``K ≥ 2``. Anything else raises ``ValueError``.
    """
    check_positive_int(K, "K")
    if K < 2:
        raise ValueError(f"the cross-entropy loss needs K >= 2 classes, got K = {K}")
    y = torch.as_tensor(y, device=device)
    if y.dim() == 2 and y.shape[1] == 1 and K > 1 and not y.is_floating_point():
        y = y[:, 0]
    if y.dim() == 1:
        if y.is_floating_point():
            if not torch.isfinite(y).all() or (y != y.round()).any():
                raise ValueError("class labels must be integers in {0, ..., K-1}")
            y = y.round().long()
        if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= K:
            raise ValueError(f"class labels must lie in {{0, ..., {K - 1}}}, got range "
                             f"[{int(y.min()) if y.numel() else None}, {int(y.max()) if y.numel() else None}]")
        return nn.functional.one_hot(y.long(), K).to(dtype)
    if y.dim() != 2 or y.shape[1] != K:
        raise ValueError(f"cross-entropy targets must be (N,) class indices or (N, {K}) simplex rows, got "
                         f"shape {tuple(y.shape)}")
    y = y.to(dtype)
    if not torch.isfinite(y).all() or (y < 0).any() or \
            (y.sum(-1) - 1).abs().max() > max(1e-9, 10 * torch.finfo(dtype).eps):
        raise ValueError("cross-entropy target rows must be non-negative and sum to 1")
    return y


def per_example_loss(f: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """``ℓ(f_i, y_i)`` for outputs ``f`` ``(..., N, K)``: ``(..., N)``.

    ``mse``: ``½‖f − y‖²`` with ``y`` ``(N, K)``. ``logistic`` (K = 1): ``log(1 + e^f) − y f`` with labels
    ``y ∈ {0, 1}`` of shape ``(N, 1)``. ``ce`` (softmax cross-entropy, K ≥ 2):
    ``log Σ_k e^{f_k} − ⟨y, f⟩`` with ``y`` ``(N, K)`` simplex rows (one-hot labels) or ``(N,)`` class indices.
    """
    if loss == "mse":
        return 0.5 * (f - y).square().sum(-1)
    if loss == "logistic":
        return (nn.functional.softplus(f) - y * f).sum(-1)
    if loss == "ce":
        if y.dim() == 1 or y.shape[-1] != f.shape[-1] or not y.is_floating_point():
            y = class_targets(y, f.shape[-1], dtype=f.dtype, device=f.device)
        # reductions over the class axis run several times faster on a (..., K, N) layout
        ft = f.transpose(-1, -2).contiguous()
        return torch.logsumexp(ft, -2) - (y.transpose(-1, -2) * ft).sum(-2)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def heldout_metrics(f: torch.Tensor, labels) -> tuple[float, float]:
    """Balanced accuracy and mean loss of outputs ``f`` ``(n, K)`` on integer ``labels`` ``(n,)``: the logistic loss
    for ``K = 1`` (label 1 = positive logit), the softmax cross-entropy for ``K ≥ 2``."""
    from .data import balanced_accuracy

    if not isinstance(f, torch.Tensor) or f.dim() != 2 or not torch.isfinite(f).all():
        raise ValueError(f"f must be a finite (n, K) tensor, got {tuple(getattr(f, 'shape', ()))}")
    y = torch.as_tensor(labels)
    if y.shape != (f.shape[0],):
        raise ValueError(f"labels must have shape ({f.shape[0]},), got {tuple(y.shape)}")
    if f.shape[1] == 1:
        loss = per_example_loss(f, y.to(f.dtype)[:, None], "logistic")
        return balanced_accuracy(f[:, 0], labels), float(loss.mean())
    loss = per_example_loss(f, class_targets(y, f.shape[1], dtype=f.dtype), "ce")
    return balanced_accuracy(f, labels), float(loss.mean())


def _loss_conjugate(w: torch.Tensor, y: torch.Tensor, f0: torch.Tensor, N: int, loss: str) -> torch.Tensor:
    """F*(w) for F(z) = (1/N) Σ_i ℓ(f0_i + z_i, y_i); ``w`` ``(N, K)``.

    Logistic and cross-entropy: ``F*(w) = (1/N) Σ_i [φ(N w_i + y_i) − N ⟨w_i, f0_i⟩]`` with ``φ`` the negative
    (binary, resp. Shannon) entropy of ``s = N w_i + y_i``, which must lie in ``[0, 1]`` (logistic) or in the
    simplex (cross-entropy), else ``F* = +∞``. The dual points built by :func:`certificate` are of the form
    ``s = t·p + (1 − t)·y`` with ``p`` the model's probabilities and ``t ∈ [0, 1]``, so they are feasible; rounding
    is clamped away.
    """
    if loss == "mse":
        return (w * (y - f0)).sum() + 0.5 * N * w.square().sum()
    s = N * w + y
    if loss == "ce":
        tol = max(1e-6, 100 * torch.finfo(w.dtype).eps)
        if (s < -tol).any() or (s.sum(-1) - 1).abs().max() > tol:
            return torch.tensor(math.inf, dtype=w.dtype, device=w.device)
        s = s.clamp(0.0, 1.0)
        ent = torch.special.xlogy(s, s)
    else:
        s = s.clamp(0.0, 1.0)
        ent = torch.special.xlogy(s, s) + torch.special.xlogy(1 - s, 1 - s)
    return (ent - N * w * f0).sum() / N


# ----------------------------------------------------------------------------------------------------------
# the convex problem
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LinearisedProblem:
    """``min_δ (1/N) Σ_i ℓ(f0_i + ⟨G_i, δ⟩, y_i) + lam · Σ_p ‖δ_p‖_*`` over ``δ ∈ R^{P×m×n}``.

    Attributes
    ----------
    G : ``(N, K, P, m, n)`` per-example gradients (a 4-D ``(N, K, m, n)`` tensor means ``P = 1``).
    f0 : ``(N, K)`` pretrained outputs.
    y : ``(N, K)`` targets (``mse``); ``(N, 1)`` / ``(N,)`` labels in {0, 1} (``logistic``, K = 1);
        ``(N,)`` class indices in ``{0, …, K−1}`` or ``(N, K)`` one-hot / simplex rows (``ce``, K ≥ 2; stored
        as ``(N, K)`` rows).
    lam : regularisation ``λ ≥ 0`` (nuclear norm; equivalently LoRA weight decay).
    loss : ``"mse"``, ``"logistic"`` or ``"ce"`` (softmax cross-entropy over the K outputs).
    """

    G: torch.Tensor
    f0: torch.Tensor
    y: torch.Tensor
    lam: float
    loss: str = "mse"
    _Gmat: torch.Tensor = field(init=False, repr=False)
    _L: float | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not isinstance(self.G, torch.Tensor) or not self.G.is_floating_point():
            raise ValueError("G must be a floating torch tensor")
        if self.G.dim() == 4:
            self.G = self.G.unsqueeze(2)
        if self.G.dim() != 5:
            raise ValueError(f"G must have shape (N, K, P, m, n) or (N, K, m, n), got {tuple(self.G.shape)}")
        N, K = self.G.shape[:2]
        if not torch.isfinite(self.G).all():
            raise ValueError("G contains NaN or infinite entries")
        self.f0 = torch.as_tensor(self.f0, dtype=self.G.dtype, device=self.G.device)
        if self.f0.dim() == 1:
            self.f0 = self.f0[:, None]
        if self.f0.shape != (N, K) or not torch.isfinite(self.f0).all():
            raise ValueError(f"f0 must be finite with shape (N, K) = ({N}, {K}), got {tuple(self.f0.shape)}")
        if self.loss == "ce":
            self.y = class_targets(self.y, K, dtype=self.G.dtype, device=self.G.device)
        self.y = torch.as_tensor(self.y, dtype=self.G.dtype, device=self.G.device)
        if self.y.dim() == 1:
            self.y = self.y[:, None]
        if self.y.shape != (N, K) or not torch.isfinite(self.y).all():
            raise ValueError(f"y must be finite with shape (N, K) = ({N}, {K}), got {tuple(self.y.shape)}")
        if self.loss == "logistic":
            if K != 1:
                raise ValueError(f"the logistic loss needs K = 1 (a scalar logit), got K = {K}")
            if not ((self.y == 0) | (self.y == 1)).all():
                raise ValueError("logistic labels must be 0 or 1")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) \
                or self.lam < 0:
            raise ValueError(f"lam must be a finite non-negative number, got {self.lam!r}")
        self.lam = float(self.lam)
        self._Gmat = self.G.reshape(N * K, -1)

    # sizes -------------------------------------------------------------------------------------------
    @property
    def N(self) -> int:
        return self.G.shape[0]

    @property
    def K(self) -> int:
        return self.G.shape[1]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(P, m, n)``, the shape of δ."""
        return tuple(self.G.shape[2:])

    def zeros(self) -> torch.Tensor:
        """The zero update ``(P, m, n)`` (the pretrained model)."""
        return self.G.new_zeros(self.shape)

    def _check_delta(self, delta: torch.Tensor) -> None:
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape[-3:]) != self.shape:
            raise ValueError(f"delta must have shape (..., {', '.join(map(str, self.shape))}), got "
                             f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")

    # values -------------------------------------------------------------------------------------------
    def outputs(self, delta: torch.Tensor) -> torch.Tensor:
        """Linearised outputs ``f0 + ⟨G_i, δ⟩``: ``(..., P, m, n) -> (..., N, K)``."""
        self._check_delta(delta)
        batch = delta.shape[:-3]
        z = delta.reshape(-1, self._Gmat.shape[1]) @ self._Gmat.T
        return self.f0 + z.reshape(*batch, self.N, self.K)

    def data_loss(self, delta: torch.Tensor) -> torch.Tensor:
        """Mean training loss ``L̂(δ)``: ``(..., P, m, n) -> (...)``."""
        return per_example_loss(self.outputs(delta), self.y, self.loss).mean(-1)

    def nuclear(self, delta: torch.Tensor) -> torch.Tensor:
        """``Σ_p ‖δ_p‖_*``: ``(..., P, m, n) -> (...)``."""
        self._check_delta(delta)
        return singular_values(delta).sum((-1, -2))

    def objective(self, delta: torch.Tensor) -> torch.Tensor:
        """``L̂(δ) + λ Σ_p ‖δ_p‖_*``: ``(..., P, m, n) -> (...)``."""
        return self.data_loss(delta) + self.lam * self.nuclear(delta)

    def output_grad(self, delta: torch.Tensor) -> torch.Tensor:
        """``∂L̂/∂z_i`` at the outputs: ``(N, K)`` for a single ``δ`` ``(P, m, n)``."""
        return self._output_grad_at(self.outputs(delta))

    def _output_grad_at(self, f: torch.Tensor) -> torch.Tensor:
        if self.loss == "mse":
            r = f - self.y
        elif self.loss == "logistic":
            r = torch.sigmoid(f) - self.y
        else:
            r = torch.softmax(f.transpose(-1, -2).contiguous(), -2).transpose(-1, -2) - self.y
        return r / self.N

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        """``Σ_{i,k} u_{ik} G_{ik}``: ``(N, K) -> (P, m, n)``."""
        return (u.reshape(-1) @ self._Gmat).reshape(self.shape)

    def grad(self, delta: torch.Tensor) -> torch.Tensor:
        """``∇L̂(δ)``, ``(P, m, n)``."""
        return self.adjoint(self.output_grad(delta))

    def lipschitz(self) -> float:
        """Lipschitz constant of ``∇L̂``: ``c ‖G‖²_op / N`` with ``c = 1`` (mse), ``1/4`` (logistic) or ``1/2``
        (cross-entropy: the softmax Hessian ``diag(p) − p pᵀ`` has norm ≤ 1/2)."""
        if self._L is None:
            Gm = self._Gmat
            gram = Gm @ Gm.T if Gm.shape[0] <= Gm.shape[1] else Gm.T @ Gm
            c = {"mse": 1.0, "logistic": 0.25, "ce": 0.5}[self.loss]
            self._L = max(c * float(torch.linalg.eigvalsh(gram)[-1]) / self.N, 1e-300)
        return self._L

    def lambda_max(self) -> float:
        """The smallest λ for which ``δ = 0`` is optimal: ``max_p ‖∇L̂(0)_p‖_2``."""
        return float(singular_values(self.grad(self.zeros()))[..., 0].max())


#: Matrices with ``min(m, n)`` above this use the Gram-matrix eigendecomposition instead of the SVD (on a
#: busy 2-core CPU the 384×384 float32 SVD took 1.5 s against 0.15 s for ``eigh`` of the Gram matrix).
GRAM_MIN_DIM = 96


def _gram_eig(X: torch.Tensor):
    """Eigen-decomposition of the smaller Gram matrix: ``(σ², V, transposed)``, ascending."""
    t = X.shape[-2] < X.shape[-1]
    Xt = X.transpose(-1, -2) if t else X
    ev, V = torch.linalg.eigh(Xt.transpose(-1, -2) @ Xt)
    cut = ev[..., -1:].clamp_min(0) * (ev.shape[-1] * torch.finfo(X.dtype).eps)
    ev = torch.where(ev > cut, ev, torch.zeros_like(ev))
    return ev, V, Xt, t


def _check_matrices(X) -> None:
    """Raise ``ValueError`` unless ``X`` is a finite tensor of matrices ``(..., m, n)``."""
    if not isinstance(X, torch.Tensor) or X.dim() < 2:
        raise ValueError("X must be a tensor of shape (..., m, n)")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or infinite entries")


def singular_values(X: torch.Tensor) -> torch.Tensor:
    """Singular values ``(..., min(m, n))`` of ``X`` ``(..., m, n)``, descending; for large matrices from the Gram
    matrix (values below ``√(n·eps)·σ_max`` are returned as 0)."""
    _check_matrices(X)
    if min(X.shape[-2:]) <= GRAM_MIN_DIM:
        return torch.linalg.svdvals(X)
    ev, _, _, _ = _gram_eig(X)
    return ev.flip(-1).sqrt()


def svt(X: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular-value soft-thresholding, the prox of ``tau ‖·‖_*``: ``(..., m, n) -> ((..., m, n), (..., min(m, n)))``.

    Returns the thresholded matrix ``U diag((σ − tau)_+) Vᵀ`` (with ``Vᵀ``: the authors' code forgot the
    transpose) and its singular values. Large matrices go through the Gram matrix: ``X V diag(s/σ) Vᵀ``.
    """
    _check_matrices(X)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be finite and non-negative, got {tau}")
    if min(X.shape[-2:]) <= GRAM_MIN_DIM:
        U, s, Vh = torch.linalg.svd(X, full_matrices=False)
        s = (s - tau).clamp_min(0.0)
        return (U * s.unsqueeze(-2)) @ Vh, s
    ev, V, Xt, t = _gram_eig(X)
    sig = ev.sqrt()
    s = (sig - tau).clamp_min(0.0)
    factor = torch.where(sig > 0, s / sig.clamp_min(1e-300), torch.zeros_like(sig))
    out = ((Xt @ V) * factor.unsqueeze(-2)) @ V.transpose(-1, -2)
    return (out.transpose(-1, -2) if t else out), s.flip(-1)


# ----------------------------------------------------------------------------------------------------------
# certificate and solvers
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Certificate:
    """Optimality certificate of a point ``δ`` of a :class:`LinearisedProblem`.

    ``primal`` objective; ``dual`` value of a feasible dual point (so ``primal − optimum ≤ gap``);
    ``gap = primal − dual ≥ 0``; ``rel_gap = gap / max(primal, 1e-12)``; ``kkt``: the norm of the proximal
    gradient mapping ``L‖δ − prox_{λ/L}(δ − ∇L̂/L)‖_F`` divided by ``max(λ, 1e-12)`` — zero exactly when the
    subgradient condition ``−∇L̂(δ) ∈ λ ∂‖δ‖_*`` holds.
    """

    primal: float
    dual: float
    gap: float
    rel_gap: float
    kkt: float


def certificate(problem: LinearisedProblem, delta: torch.Tensor) -> Certificate:
    """Duality gap and KKT residual of ``delta`` ``(P, m, n)`` (Fenchel dual of the nuclear-norm problem).

    The dual point is ``u = ∇F(Gδ)`` scaled into the dual feasible set ``max_p ‖Σ u_ik G_ikp‖_2 ≤ λ``; for
    ``λ = 0`` the gap is finite only at exact stationarity, so ``kkt`` is then the gradient norm.
    """
    problem._check_delta(delta)
    if delta.dim() != 3:
        raise ValueError(f"certificate needs a single delta of shape {problem.shape}, got {tuple(delta.shape)}")
    primal = float(problem.objective(delta))
    u = problem.output_grad(delta)
    g = problem.adjoint(u)
    spec = float(singular_values(g)[..., 0].max())
    lam = problem.lam
    scale = 1.0 if spec <= lam else (lam / spec if spec > 0 else 1.0)
    us = u * scale
    dual = float(-_loss_conjugate(us, problem.y, problem.f0, problem.N, problem.loss))
    gap = max(primal - dual, 0.0)
    L = problem.lipschitz()
    moved, _ = svt(delta - g / L, lam / L)
    kkt = float(L * (delta - moved).norm()) / max(lam, 1e-12)
    return Certificate(primal, dual, gap, gap / max(abs(primal), 1e-12), kkt)


@dataclass
class ProxResult:
    """Result of :func:`proximal_gradient`: the final ``delta`` ``(P, m, n)``, its :class:`Certificate` (``None``
    when not asked for),
    the recorded objectives ``history`` ``(n_records,)``, the steps taken and the final step size ``lr`` (smaller
    than the starting one where backtracking halved it)."""

    delta: torch.Tensor
    cert: Certificate | None
    history: torch.Tensor
    steps: int
    lr: float = 0.0


def _proximal_gradient(problem: LinearisedProblem, steps: int, *, lr: float | None = None, accelerate: bool = True,
                      backtrack: bool = False, tol: float = 0.0, delta0: torch.Tensor | None = None, check_every: int = 25,
                      record_every: int = 0, certify: bool = True, progress: bool | str = False) -> ProxResult:
    """Proximal gradient on ``L̂(δ) + λ‖δ‖_*``: ``δ ← SVT_{lr·λ}(δ − lr ∇L̂(δ))`` (threshold ``lr·λ``, mean loss).

    Parameters
    ----------
    steps : maximum number of steps (positive integer).
    lr : step size; default ``1/L`` (:meth:`LinearisedProblem.lipschitz`). Must not exceed ``2/L`` unless
        ``backtrack``.
    backtrack : halve the step until the quadratic upper bound holds at each step (Beck & Teboulle's
        backtracking), so ``lr`` may start far above ``1/L`` (``L`` is a worst-case bound).
    accelerate : FISTA (Beck & Teboulle 2009) with adaptive restart when the objective increases;
        ``False``: the plain proximal gradient of the paper's Appendix D.
    tol : stop once the certificate's relative duality gap is below ``tol`` (checked every ``check_every``).
    delta0 : starting point ``(P, m, n)`` (default zero, the pretrained model).
    record_every : if positive, record the objective every ``record_every`` steps (step 0 included).
    certify : compute the final point's :class:`Certificate` (``False``: ``cert`` is ``None``, which saves three
        spectral decompositions when the caller continues from the point anyway).

    Returns
    -------
    :class:`ProxResult`.
    """
    check_positive_int(steps, "steps")
    L = problem.lipschitz()
    lr = 1.0 / L if lr is None else lr
    if not (isinstance(lr, (int, float)) and 0 < lr and (backtrack or lr <= 2.0 / L * (1 + 1e-9))):
        raise ValueError(f"lr must lie in (0, 2/L] = (0, {2 / L:.3g}], got {lr!r}")
    delta = problem.zeros() if delta0 is None else delta0.detach().clone().to(problem.G.dtype)
    problem._check_delta(delta)
    if delta.dim() != 3 or not torch.isfinite(delta).all():
        raise ValueError("delta0 must be a finite tensor of shape (P, m, n)")
    x_prev, y_pt, t_k = delta, delta, 1.0
    obj_prev = float(problem.objective(delta))
    hist = [obj_prev] if record_every else []
    bar = tqdm(range(1, steps + 1), desc=progress if isinstance(progress, str) else "prox", disable=not progress,
               leave=False)
    done = steps
    for k in bar:
        out_y = problem.outputs(y_pt)  # one pass over G serves the gradient and the backtracking test
        g = problem.adjoint(problem._output_grad_at(out_y))
        f_y = float(per_example_loss(out_y, problem.y, problem.loss).mean()) if backtrack else 0.0
        while True:
            x, s = svt(y_pt - lr * g, lr * problem.lam)
            f_x = float(problem.data_loss(x))
            d = x - y_pt
            if not backtrack or f_x <= f_y + float((g * d).sum()) + float(d.square().sum()) / (2 * lr) \
                    + 1e-7 * abs(f_y) or lr < 1e-3 / L:
                break
            lr /= 2
        obj = f_x + problem.lam * float(s.sum())
        if accelerate:
            if obj > obj_prev:  # adaptive restart
                t_k, y_pt = 1.0, x
            else:
                t_next = 0.5 * (1 + math.sqrt(1 + 4 * t_k * t_k))
                y_pt = x + ((t_k - 1) / t_next) * (x - x_prev)
                t_k = t_next
        else:
            y_pt = x
        x_prev, obj_prev = x, obj
        if record_every and k % record_every == 0:
            hist.append(obj)
        if not math.isfinite(obj):
            raise FloatingPointError(f"non-finite objective at step {k}")
        if tol > 0 and k % check_every == 0 and certificate(problem, x).rel_gap < tol:
            done = k
            break
    cert = certificate(problem, x_prev) if certify else None
    return ProxResult(x_prev, cert, torch.tensor(hist, dtype=torch.float64), done, lr)


def min_norm_interpolant(problem: LinearisedProblem) -> torch.Tensor:
    """The minimum-Frobenius-norm ``δ`` ``(P, m, n)`` with ``⟨G_i, δ⟩ = y_i − f0_i`` (mse; needs ``K·N ≤ P·m·n``).

    For ``λ = 0`` and the squared error it is a global minimiser (loss 0) — generically of full rank, the
    natural starting point of :func:`reduce_rank`.
    """
    if problem.loss != "mse":
        raise ValueError("min_norm_interpolant needs the squared-error loss")
    if problem.N * problem.K > problem._Gmat.shape[1]:
        raise ValueError(f"K·N = {problem.N * problem.K} exceeds the number of parameters {problem._Gmat.shape[1]}")
    rhs = (problem.y - problem.f0).reshape(-1, 1)
    sol = problem._Gmat.T @ torch.linalg.solve(problem._Gmat @ problem._Gmat.T, rhs)
    return sol.reshape(problem.shape)


# ----------------------------------------------------------------------------------------------------------
# rank reduction (Theorem 3.1)
# ----------------------------------------------------------------------------------------------------------
def _block_ranks(delta: torch.Tensor, rtol: float):
    out = []
    smax = float(torch.linalg.svdvals(delta).max()) if delta.numel() else 0.0
    for d in delta:
        U, s, Vh = torch.linalg.svd(d, full_matrices=False)
        keep = s > rtol * max(smax, 1e-300)
        out.append((U[:, keep], s[keep], Vh[keep].T))
    return out


def _reduce_rank(problem: LinearisedProblem, delta: torch.Tensor, *, rtol: float = 1e-9,
                max_iter: int = 10_000) -> tuple[torch.Tensor, list[int]]:
    """From a global minimiser ``δ`` build one with ``Σ_p r_p(r_p+1)/2 ≤ K·N`` and the same objective.

    The constructive step of Theorem 3.1 (Barvinok–Pataki): with ``δ_p = U_p S_p V_pᵀ`` (rank ``r_p``), look
    for symmetric ``Δ_p`` (``r_p × r_p``) with ``⟨G_ik, U_p S_p^{1/2} Δ_p S_p^{1/2} V_pᵀ⟩`` summing to 0 for all
    ``i, k`` — ``K·N`` linear conditions on ``Σ r_p(r_p+1)/2`` unknowns, so a solution exists while the
    bound fails. Moving ``δ_p(t) = U_p S_p^{1/2}(I + tΔ_p)S_p^{1/2}V_pᵀ`` keeps every output and does not
    increase the PSD-lift trace ``Σ tr S_p`` (the sign of ``Δ`` is chosen so), hence neither the nuclear norm;
    at the first ``t`` where some ``I + tΔ_p`` turns singular a rank drops. Repeat.

    Parameters
    ----------
    delta : ``(P, m, n)`` — should be a global minimiser (otherwise the objective still does not increase).
    rtol : singular values below ``rtol · σ_max`` count as zero.

    Returns
    -------
    ``(delta_reduced, total_ranks)``: the reduced ``(P, m, n)`` update and ``Σ_p rank`` after each step
    (first entry: the starting rank).
    """
    problem._check_delta(delta)
    if delta.dim() != 3 or not torch.isfinite(delta).all():
        raise ValueError(f"delta must be a finite tensor of shape {problem.shape}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    delta = delta.detach().clone()
    NK = problem.N * problem.K
    Gb = problem.G.reshape(NK, *problem.shape)  # (NK, P, m, n)
    history = []
    for _ in range(max_iter):
        blocks = _block_ranks(delta, rtol)
        ranks = [len(s) for _, s, _ in blocks]
        history.append(sum(ranks))
        cols, idx = [], []
        for p, (U, s, V) in enumerate(blocks):
            r = len(s)
            if r == 0:
                idx.append(None)
                continue
            h = s.sqrt()
            M = h[:, None] * (U.T @ Gb[:, p] @ V) * h[None, :]  # (NK, r, r)
            iu = torch.triu_indices(r, r)
            Msym = M + M.transpose(-1, -2)
            diag = iu[0] == iu[1]
            c = Msym[:, iu[0], iu[1]]
            c[:, diag] = c[:, diag] / 2
            cols.append(c)
            idx.append(iu)
        if not cols:
            break
        C = torch.cat(cols, dim=1)  # (NK, unknowns)
        n_unknown = C.shape[1]
        sv = torch.linalg.svdvals(C)
        crank = int((sv > 1e-10 * max(float(sv.max()) if sv.numel() else 0.0, 1e-300)).sum())
        if n_unknown <= crank:
            break
        _, _, Vh = torch.linalg.svd(C, full_matrices=True)
        d = Vh[-1]
        # split into symmetric blocks; trace term of the lift: 2 Σ_j s_j Δ_jj
        Ds, trace, off = [], 0.0, 0
        for p, (U, s, V) in enumerate(blocks):
            r = len(s)
            if r == 0:
                Ds.append(None)
                continue
            iu = idx[p]
            k = iu.shape[1]
            D = delta.new_zeros(r, r)
            D[iu[0], iu[1]] = d[off:off + k]
            D = D + D.T - torch.diag(torch.diag(D))
            off += k
            trace += 2 * float((s * torch.diag(D)).sum())
            Ds.append(D)
        sign = -1.0 if trace > 0 else 1.0
        emin = min(float(torch.linalg.eigvalsh(sign * D)[0]) for D in Ds if D is not None)
        if emin >= 0:  # only possible when the trace term vanishes: the other direction works
            sign = -sign
            emin = min(float(torch.linalg.eigvalsh(sign * D)[0]) for D in Ds if D is not None)
        t = -1.0 / emin
        new = delta.clone()
        for p, ((U, s, V), D) in enumerate(zip(blocks, Ds)):
            if D is None:
                continue
            ev, Q = torch.linalg.eigh(torch.eye(len(s), dtype=delta.dtype, device=delta.device) + t * sign * D)
            ev = ev.clamp_min(0.0)
            h = s.sqrt()
            W = h[:, None] * ((Q * ev) @ Q.T) * h[None, :]
            new[p] = U @ W @ V.T
        # cut the singular values that hit zero
        for p, (U, s, V) in enumerate(_block_ranks(new, rtol)):
            new[p] = (U * s) @ V.T
        delta = new
    return delta, history


# ----------------------------------------------------------------------------------------------------------
# LoRA gradient descent on the linearised problem (Theorem 4.1)
# ----------------------------------------------------------------------------------------------------------
def random_psd(dim: int, eps: float, n: int = 1, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` random PSD matrices ``(n, dim, dim)`` with Frobenius norm ``eps`` (``Q Qᵀ``, ``Q`` Gaussian)."""
    check_positive_int(dim, "dim")
    check_positive_int(n, "n")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and non-negative, got {eps}")
    Q = torch.randn(n, dim, dim, generator=generator, dtype=dtype)
    Pm = Q @ Q.transpose(-1, -2)
    return eps * Pm / Pm.norm(dim=(-1, -2), keepdim=True)


@dataclass
class LoRAResult:
    """Result of :func:`lora_gd`, for ``S`` slices (initialisations × ranks).

    ``B`` ``(S, P, m, r_max)``, ``A`` ``(S, P, n, r_max)`` (columns beyond each slice's rank are masked),
    ``ranks`` ``(S,)``, ``delta`` ``(S, P, m, n)``, ``objective`` ``(S,)`` — the *unperturbed* LoRA objective
    ``L̂(BAᵀ) + λ/2(‖A‖²+‖B‖²)`` at the end, ``history`` ``(n_records, S)`` of it, ``grad_norm`` ``(S,)`` the
    final gradient norm of the (perturbed, if any) objective.
    """

    B: torch.Tensor
    A: torch.Tensor
    ranks: torch.Tensor
    delta: torch.Tensor
    objective: torch.Tensor
    history: torch.Tensor
    grad_norm: torch.Tensor


def lora_init(shape: tuple[int, int, int], ranks: Sequence[int], seeds: int, *, init_std: float,
              zero_B: bool, generator: torch.Generator, dtype=torch.float64):
    """Random LoRA factors for every (rank, seed): ``B`` ``(S, P, m, r_max)``, ``A`` ``(S, P, n, r_max)``,
    ``ranks`` ``(S,)`` with ``S = len(ranks)·seeds`` (rank-major). ``zero_B``: Hu et al.'s ``B = 0`` start."""
    P, m, n = shape
    ranks = [int(r) for r in ranks]
    if not ranks or any(r < 1 or r > min(m, n) for r in ranks):
        raise ValueError(f"ranks must be integers in [1, {min(m, n)}], got {ranks}")
    check_positive_int(seeds, "seeds")
    if not math.isfinite(init_std) or init_std <= 0:
        raise ValueError(f"init_std must be positive, got {init_std}")
    rmax = max(ranks)
    rk = torch.tensor(ranks).repeat_interleave(seeds)
    S = len(rk)
    A = init_std * torch.randn(S, P, n, rmax, generator=generator, dtype=dtype)
    B = torch.zeros(S, P, m, rmax, dtype=dtype) if zero_B else \
        init_std * torch.randn(S, P, m, rmax, generator=generator, dtype=dtype)
    mask = (torch.arange(rmax)[None] < rk[:, None]).to(dtype)
    return B * mask[:, None, None], A * mask[:, None, None], rk


def _lora_gd(problem: LinearisedProblem, B: torch.Tensor, A: torch.Tensor, ranks: torch.Tensor, steps: int, lr: float,
            *, perturbation: torch.Tensor | None = None, record_every: int = 0,
            progress: bool | str = False) -> LoRAResult:
    """Full-batch gradient descent on LoRA with weight decay on the linearised loss, all slices at once.

    Minimises ``L̂(B_p A_pᵀ) + λ/2 (‖A‖_F² + ‖B‖_F²) [+ ½ tr(Zᵀ P Z), Z = [B; A]]`` per slice, where the
    optional ε-perturbation ``P`` (``(m+n, m+n)`` or ``(S, m+n, m+n)``, PSD) is Theorem 4.1's (our scaling).

    Parameters
    ----------
    B, A, ranks : from :func:`lora_init` (copied; columns beyond a slice's rank stay zero).
    steps, lr : number of steps and step size.
    record_every : record the unperturbed objective every ``record_every`` steps (step 0 included).

    Returns
    -------
    :class:`LoRAResult`.
    """
    check_positive_int(steps, "steps")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    P, m, n = problem.shape
    if B.dim() != 4 or A.dim() != 4 or B.shape[:3] != (B.shape[0], P, m) or A.shape != (B.shape[0], P, n, B.shape[3]):
        raise ValueError(f"need B (S, {P}, {m}, r) and A (S, {P}, {n}, r), got {tuple(B.shape)} and {tuple(A.shape)}")
    S, rmax = B.shape[0], B.shape[3]
    if ranks.shape != (S,):
        raise ValueError(f"ranks must have shape ({S},), got {tuple(ranks.shape)}")
    mask = (torch.arange(rmax, device=B.device)[None] < ranks[:, None].to(B.device)).to(B.dtype)[:, None, None]
    if perturbation is not None:
        if perturbation.dim() == 2:
            perturbation = perturbation.expand(S, -1, -1)
        if perturbation.shape != (S, m + n, m + n):
            raise ValueError(f"perturbation must have shape ({m + n}, {m + n}) or ({S}, {m + n}, {m + n})")
        if not torch.allclose(perturbation, perturbation.transpose(-1, -2)) or \
                float(torch.linalg.eigvalsh(perturbation).min()) < -1e-10 * float(perturbation.abs().max() + 1e-300):
            raise ValueError("perturbation must be symmetric positive semi-definite")
    B = (B.detach().clone() * mask).requires_grad_(True)
    A = (A.detach().clone() * mask).requires_grad_(True)
    lam = problem.lam

    def objective(B_, A_):
        delta = B_ @ A_.transpose(-1, -2)
        return problem.data_loss(delta) + 0.5 * lam * (A_.square().sum((1, 2, 3)) + B_.square().sum((1, 2, 3)))

    def perturbed(B_, A_):
        obj = objective(B_, A_)
        if perturbation is None:
            return obj, obj
        Z = torch.cat([B_, A_], dim=2)  # (S, P, m+n, r)
        pert = 0.5 * torch.einsum("spir,sij,spjr->s", Z, perturbation, Z)
        return obj + pert, obj

    hist = []
    bar = tqdm(range(steps + 1), desc=progress if isinstance(progress, str) else "lora", disable=not progress,
               leave=False)
    for k in bar:
        total, obj = perturbed(B, A)
        if not torch.isfinite(total).all():
            raise FloatingPointError(f"non-finite LoRA objective at step {k}; lower lr")
        if record_every and k % record_every == 0:
            hist.append(obj.detach().clone())
        gB, gA = torch.autograd.grad(total.sum(), (B, A))
        if k == steps:
            break
        with torch.no_grad():
            B -= lr * gB * mask
            A -= lr * gA * mask
    gnorm = (gB.square().sum((1, 2, 3)) + gA.square().sum((1, 2, 3))).sqrt()
    B, A = B.detach(), A.detach()
    H = torch.stack(hist) if hist else torch.empty(0, S, dtype=B.dtype)
    return LoRAResult(B, A, ranks, B @ A.transpose(-1, -2), obj.detach(), H, gnorm.detach())


# ----------------------------------------------------------------------------------------------------------
# a real model: MiniLM's last layer with a prompt-style logit
# ----------------------------------------------------------------------------------------------------------
#: The query and value weights of the first layer a :class:`MiniLMHead` runs (the last layer for the default head).
QV_NAMES = ("layer.attention.self.query.weight", "layer.attention.self.value.weight")


class MiniLMHead(nn.Module):
    """MiniLM's encoder layers ``layer_index, …, 5`` (copies) + mean pooling + the zero-shot logit(s).

    ``forward(hidden (B, T, 384), mask (B, T))``: with ``classes=None`` the binary prompt-style logit
    ``(cos(e, "a great movie") − cos(e, "a terrible movie")) / temperature`` of :mod:`lorabook.data`, shape
    ``(B,)`` (positive = fresh); with ``classes`` (two or three names of :data:`lorabook.data.CLASS_PHRASES`) the
    K-class logits ``cos(e, d_k) / temperature``, shape ``(B, K)``.
    ``hidden`` are the token states entering layer ``layer_index`` (:func:`lorabook.data.hidden_before_layer`,
    :func:`embed_texts`). The first layer run is the sub-module ``layer`` (its query and value weights are
    :data:`QV_NAMES`), the layers above it are ``upper.0``, ``upper.1``, …; :meth:`qv_names` lists the query and
    value weights of all of them. The default head (``layer_index=5``) runs the last layer only.
    """

    def __init__(self, layer_index: int = 5, temperature: float = 0.05, classes: Sequence[str] | None = None):
        super().__init__()
        import copy

        from . import data

        model = data.load_minilm()[1]
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or \
                not 0 <= layer_index < len(model.encoder.layer):
            raise ValueError(f"layer_index must be an integer in [0, {len(model.encoder.layer) - 1}], got {layer_index!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.layer = copy.deepcopy(model.encoder.layer[layer_index])
        self.upper = nn.ModuleList(copy.deepcopy(model.encoder.layer[layer_index + 1:]))
        # eager attention: CPU flash attention has neither forward-mode AD (jvp) nor a vmap batching rule;
        # the deep copies own their config, so the shared model is untouched
        for mod in self.modules():
            cfg = getattr(mod, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                cfg._attn_implementation = "eager"
        self.classes = None if classes is None else tuple(classes)
        self.register_buffer("directions", data.label_directions() if classes is None
                             else data.class_directions(self.classes))
        self.temperature = temperature

    def qv_names(self) -> tuple[str, ...]:
        """Names of the query and value weights of every layer the head runs, bottom layer first (``2·L`` names
        for ``L`` layers; the first two are :data:`QV_NAMES`)."""
        ups = tuple(f"upper.{i}.attention.self.{w}.weight" for i in range(len(self.upper))
                    for w in ("query", "value"))
        return QV_NAMES + ups

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from . import data

        bias = data.attention_bias(mask, hidden.dtype)
        for layer in (self.layer, *self.upper):
            out = layer(hidden, attention_mask=bias)
            hidden = out[0] if isinstance(out, tuple) else out
        pooled = data.mean_pool(hidden, mask)
        if self.classes is not None:
            return data.zero_shot_logits(pooled, self.directions, self.temperature)
        return data.zero_shot_logit(pooled, self.directions, self.temperature)


def train_actual_lora(module: nn.Module, names: Sequence[str], inputs, labels: torch.Tensor, rank: int, steps: int,
                      lr: float, lam: float, *, A0: torch.Tensor, adam: bool = True, record_every: int = 0,
                      progress: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Real (non-linearised) LoRA fine-tuning of ``module``, full batch, weight decay, logistic loss.

    Minimises ``(1/N) Σ_i ℓ(f(W0 + B Aᵀ; x_i), y_i) + λ/2(‖A‖² + ‖B‖²)`` from ``B = 0``, ``A = A0`` with Adam
    (``adam=True``, coupled weight decay as in :func:`lorabook.train.batched_adam`) or gradient descent.

    Parameters
    ----------
    inputs : tensor(s) with leading dimension ``N``; ``labels`` ``(N,)`` in {0, 1}.
    A0 : ``(P, n, rank)`` starting ``A`` (the same draw as the linearised run's, for a fair comparison).

    Returns
    -------
    ``(delta, history)``: the final update ``(P, m, n)`` and the recorded objectives.
    """
    from torch.func import functional_call

    ws = _check_names(module, names)
    inputs = _check_inputs(inputs)
    P, (m, n) = len(ws), ws[0].shape
    check_positive_int(rank, "rank")
    check_positive_int(steps, "steps")
    if not isinstance(A0, torch.Tensor) or A0.shape != (P, n, rank):
        raise ValueError(f"A0 must have shape ({P}, {n}, {rank}), got {tuple(getattr(A0, 'shape', ()))}")
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"need lr > 0 and lam >= 0, got lr={lr}, lam={lam}")
    y = torch.as_tensor(labels, dtype=ws[0].dtype).reshape(-1, 1)
    if y.shape[0] != inputs[0].shape[0] or not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be N values in {0, 1}")
    base = {nm: w.detach() for nm, w in zip(names, ws)}
    A = A0.detach().clone().to(ws[0].dtype).requires_grad_(True)
    B = torch.zeros(P, m, rank, dtype=ws[0].dtype, requires_grad=True)
    opt = torch.optim.Adam([B, A], lr=lr, weight_decay=lam) if adam else torch.optim.SGD([B, A], lr=lr, weight_decay=lam)
    hist = []
    bar = tqdm(range(steps + 1), desc=progress if isinstance(progress, str) else "actual LoRA",
               disable=not progress, leave=False)
    for k in bar:
        params = {nm: base[nm] + B[p] @ A[p].T for p, nm in enumerate(names)}
        f = functional_call(module, params, inputs).reshape(-1, 1)
        data_loss = per_example_loss(f, y, "logistic").mean()
        if record_every and k % record_every == 0:
            hist.append(float(data_loss.detach() + 0.5 * lam * (A.detach().square().sum() + B.detach().square().sum())))
        if k == steps:
            break
        opt.zero_grad()
        data_loss.backward()
        opt.step()
    return (B @ A.transpose(-1, -2)).detach(), torch.tensor(hist, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# generalisation (Theorem 5.1)
# ----------------------------------------------------------------------------------------------------------
def rademacher_bound(G: torch.Tensor, radius: float, *, n_draws: int = 50, generator: torch.Generator | None = None
                     ) -> dict:
    """Rademacher complexity of ``{x ↦ ⟨G(x), δ⟩ : Σ_p ‖δ_p‖_* ≤ radius}`` on the sample ``G`` ``(N, K, P, m, n)``.

    Returns a dict with ``empirical`` — the Monte-Carlo estimate ``radius · E_σ max_p ‖Σ_i σ_i G_ip‖_2 / N``
    (K = 1; ``n_draws`` sign draws) — and ``lemma`` — the paper's Lemma C.4 bound
    ``radius · √(Σ_i ‖G_i‖_F²) / N ≤ radius · max_i ‖G_i‖_F / √N``.
    """
    if not isinstance(G, torch.Tensor) or G.dim() != 5 or G.shape[1] != 1:
        raise ValueError(f"G must have shape (N, 1, P, m, n), got {tuple(G.shape) if isinstance(G, torch.Tensor) else G}")
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be finite and non-negative, got {radius}")
    check_positive_int(n_draws, "n_draws")
    N = G.shape[0]
    sig = (torch.randint(0, 2, (n_draws, N), generator=generator) * 2 - 1).to(G.dtype)
    Gm = G.reshape(N, -1)
    sums = (sig @ Gm).reshape(n_draws, *G.shape[2:])
    spec = singular_values(sums)[..., 0].amax(-1)
    emp = radius * float(spec.mean()) / N
    lemma = radius * float(Gm.square().sum().sqrt()) / N
    return {"empirical": emp, "lemma": lemma}


def generalisation_bound(rademacher: float, lipschitz: float, loss_range: float, N: int, delta: float = 0.05,
                         *, empirical: bool = True) -> float:
    """Uniform train-test gap bound from a Rademacher complexity (scalars in, scalar out).

    With the *empirical* Rademacher complexity ``R̂_S`` of the predictor class on the sample (``empirical=True``,
    the default; both of :func:`rademacher_bound`'s values are of this kind) the bound is
    ``2·lipschitz·R̂_S + 4·loss_range·√(2 ln(4/delta)/N)``; with the *expected* complexity
    (``empirical=False``) it is ``2·lipschitz·R + loss_range·√(2 ln(2/delta)/N)``. Both hold with probability
    ``≥ 1 − delta`` for all predictors of the class (contraction + McDiarmid; Shalev-Shwartz & Ben-David,
    Thm 26.5). ``loss_range`` is the bound ``b`` on the loss over the class.
    """
    check_positive_int(N, "N")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    for name, v in (("rademacher", rademacher), ("lipschitz", lipschitz), ("loss_range", loss_range)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be finite and non-negative, got {v}")
    if empirical:
        return 2 * lipschitz * rademacher + 4 * loss_range * math.sqrt(2 * math.log(4 / delta) / N)
    return 2 * lipschitz * rademacher + loss_range * math.sqrt(2 * math.log(2 / delta) / N)


# ----------------------------------------------------------------------------------------------------------
# synthetic problems
# ----------------------------------------------------------------------------------------------------------
def synthetic_problem(N: int, K: int, m: int, n: int, lam: float, *, generator: torch.Generator,
                      loss: str = "mse", P: int = 1, dtype=torch.float64) -> LinearisedProblem:
    """A random linearised problem: Gaussian ``G`` ``(N, K, P, m, n)`` scaled so that ``‖G‖²_op/N ≈ 1``·c,
    ``f0 = 0`` and targets from a random rank-2 teacher plus noise (mse), its signs (logistic) or the index of
    its largest noisy output (``ce``, K ≥ 2 classes)."""
    for v, nm in ((N, "N"), (K, "K"), (m, "m"), (n, "n"), (P, "P")):
        check_positive_int(v, nm)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "ce" and K < 2:
        raise ValueError(f"the cross-entropy loss needs K >= 2 classes, got K = {K}")
    G = torch.randn(N, K, P, m, n, generator=generator, dtype=dtype)
    G = G * math.sqrt(N) / torch.linalg.matrix_norm(G.reshape(N * K, -1), ord=2)
    r0 = min(2, m, n)
    teacher = torch.randn(P, m, r0, generator=generator, dtype=dtype) @ torch.randn(P, r0, n, generator=generator,
                                                                                    dtype=dtype)
    teacher = teacher / teacher.norm() * math.sqrt(P * m * n) / 2
    z = (G.reshape(N * K, -1) @ teacher.reshape(-1)).reshape(N, K)
    z = z / z.square().mean().sqrt().clamp_min(1e-12)
    noise = torch.randn(N, K, generator=generator, dtype=dtype)
    if loss == "mse":
        y = z + 0.5 * noise
    elif loss == "ce":
        y = (z + 0.5 * noise).argmax(-1)
    else:
        if K != 1:
            raise ValueError("the logistic loss needs K = 1")
        y = ((z + 0.5 * noise) > 0).to(dtype)
    return LinearisedProblem(G, torch.zeros(N, K, dtype=dtype), y, lam, loss)


def proximal_gradient(problem: LinearisedProblem, steps: int, **kw) -> ProxResult:  # noqa: D103
    with few_threads(problem.G.numel(), problem.G.device):
        return _proximal_gradient(problem, steps, **kw)


def lora_gd(problem: LinearisedProblem, B: torch.Tensor, A: torch.Tensor, ranks: torch.Tensor, steps: int, lr: float,
            **kw) -> LoRAResult:  # noqa: D103
    with few_threads(problem.G.numel() + B.numel() * problem.shape[2], problem.G.device):
        return _lora_gd(problem, B, A, ranks, steps, lr, **kw)


proximal_gradient.__doc__ = _proximal_gradient.__doc__
lora_gd.__doc__ = _lora_gd.__doc__


def reduce_rank(problem: LinearisedProblem, delta: torch.Tensor, **kw) -> tuple[torch.Tensor, list[int]]:  # noqa: D103
    with few_threads(problem.G.numel(), problem.G.device):
        return _reduce_rank(problem, delta, **kw)


reduce_rank.__doc__ = _reduce_rank.__doc__



# --- second-order conditions and Theorem 5.1 ---
def _check_factors(problem: LinearisedProblem, B: torch.Tensor, A: torch.Tensor) -> None:
    P, m, n = problem.shape
    if not isinstance(B, torch.Tensor) or not isinstance(A, torch.Tensor) or B.dim() != 3 or A.dim() != 3 \
            or B.shape[:2] != (P, m) or A.shape[:2] != (P, n) or B.shape[2] != A.shape[2] or B.shape[2] < 1:
        raise ValueError(f"need B ({P}, {m}, r) and A ({P}, {n}, r) with r >= 1, got "
                         f"{tuple(getattr(B, 'shape', ()))} and {tuple(getattr(A, 'shape', ()))}")
    if not (torch.isfinite(B).all() and torch.isfinite(A).all()):
        raise ValueError("B and A must be finite")


def lora_objective(problem: LinearisedProblem, B: torch.Tensor, A: torch.Tensor,
                   perturbation: torch.Tensor | None = None) -> torch.Tensor:
    """The LoRA objective ``L̂(B Aᵀ) + λ/2 (‖A‖_F² + ‖B‖_F²) [+ ½ Σ_p tr(Z_pᵀ P Z_p)]`` at one point.

    ``B`` ``(P, m, r)``, ``A`` ``(P, n, r)``, ``Z_p = [B_p; A_p]`` ``(m+n, r)``, ``perturbation`` ``(m+n, m+n)``
    (PSD, Theorem 4.1's ε-perturbation in :func:`lora_gd`'s scaling). Returns a scalar tensor (differentiable).
    """
    _check_factors(problem, B, A)
    obj = problem.data_loss(B @ A.transpose(-1, -2)) + 0.5 * problem.lam * (A.square().sum() + B.square().sum())
    if perturbation is not None:
        P_, m, n = problem.shape
        if perturbation.shape != (m + n, m + n):
            raise ValueError(f"perturbation must have shape ({m + n}, {m + n}), got {tuple(perturbation.shape)}")
        Z = torch.cat([B, A], dim=1)
        obj = obj + 0.5 * torch.einsum("pir,ij,pjr->", Z, perturbation, Z)
    return obj


@dataclass
class SecondOrder:
    """Second-order information of the LoRA objective at one point ``(B, A)`` (see :func:`second_order`).

    ``grad_norm``: ``‖∇F‖`` over ``(B, A)``; ``hess_eigs``: the eigenvalues of the Hessian of ``F`` in
    ``(B, A)`` (``P(m+n)r`` of them, ascending); ``hess_min`` the smallest; ``sym_dim`` the number
    ``P·r(r−1)/2`` of zero eigenvalues forced at a stationary point by the rotations ``(B, A) ↦ (BQ, AQ)``;
    ``hess_min_free`` the smallest eigenvalue after removing ``sym_dim`` eigenvalues nearest zero (the curvature
    in the directions that change ``BAᵀ`` or the balance); ``grad_op_over_lam`` ``max_p ‖∇L̂(BAᵀ)_p‖_2 / λ``
    (≤ 1 exactly when the convex problem's optimality condition holds at ``δ = BAᵀ``, given first-order
    stationarity); ``z_sigma_min`` the smallest singular value of ``Z_p = [B_p; A_p]`` over ``p``, relative to
    the largest (0: rank-deficient, the case of Lemmas 4.3/4.4).
    """

    grad_norm: float
    hess_eigs: torch.Tensor
    hess_min: float
    sym_dim: int
    hess_min_free: float
    grad_op_over_lam: float
    z_sigma_min: float


def second_order(problem: LinearisedProblem, B: torch.Tensor, A: torch.Tensor,
                 perturbation: torch.Tensor | None = None) -> SecondOrder:
    """Gradient, full Hessian spectrum and the convex optimality ratio of the LoRA objective at ``(B, A)``.

    The Hessian is formed exactly with ``torch.func.hessian`` (``P(m+n)r`` unknowns, fine up to a few hundred).

    Parameters
    ----------
    B, A : ``(P, m, r)`` and ``(P, n, r)`` LoRA factors of one run (for :func:`lora_gd`'s output take
        ``res.B[s, ..., :r]``, ``res.A[s, ..., :r]``).
    perturbation : optional ``(m+n, m+n)`` PSD matrix of the perturbed objective.

    Returns
    -------
    A :class:`SecondOrder`.
    """
    from torch.func import hessian

    _check_factors(problem, B, A)
    if problem.lam <= 0:
        raise ValueError("second_order needs lam > 0 (the ratio ||grad||_op / lam)")
    P, m, n = problem.shape
    r = B.shape[2]
    nB = B.numel()
    x0 = torch.cat([B.reshape(-1), A.reshape(-1)]).detach().to(problem.G.dtype)
    if x0.numel() > 4000:
        raise ValueError(f"the Hessian would have {x0.numel()}² entries; too large")

    def f(x):
        return lora_objective(problem, x[:nB].reshape(P, m, r), x[nB:].reshape(P, n, r), perturbation)

    xg = x0.clone().requires_grad_(True)
    g, = torch.autograd.grad(f(xg), xg)
    H = hessian(f)(x0)
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
    sym = P * r * (r - 1) // 2
    if sym:
        near = ev.abs().argsort()[:sym]
        keep = torch.ones_like(ev, dtype=torch.bool)
        keep[near] = False
        free = float(ev[keep].min())
    else:
        free = float(ev[0])
    Bd, Ad = B.detach().to(problem.G.dtype), A.detach().to(problem.G.dtype)
    grad_delta = problem.grad(Bd @ Ad.transpose(-1, -2))
    op = float(singular_values(grad_delta)[..., 0].max())
    sz = singular_values(torch.cat([Bd, Ad], dim=1))
    zmin = float((sz[..., -1] / sz[..., 0].clamp_min(1e-300)).min())
    return SecondOrder(float(g.norm()), ev, float(ev[0]), sym, free, op / problem.lam, zmin)


def pad_zero_column(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` ``(P, m, r)``, ``(P, n, r)`` with one zero column appended: the same ``δ = BAᵀ`` as a rank-(r+1)
    LoRA point whose ``Z = [B; A]`` is rank-deficient (the situation of Lemmas 4.3/4.4)."""
    if B.dim() != 3 or A.dim() != 3:
        raise ValueError("B and A must be (P, m, r) and (P, n, r)")
    return (torch.cat([B, B.new_zeros(*B.shape[:2], 1)], -1), torch.cat([A, A.new_zeros(*A.shape[:2], 1)], -1))


def theorem51_lambda(R: float, N: int, eta: float = 0.05) -> float:
    """The regularisation our restatement of Theorem 5.1 prescribes: ``λ = 4τ``, ``τ = (2R/√N)(2 + √ln(2/η))``.

    ``τ·D`` bounds, with probability ``≥ 1 − η``, the uniform deviation of the centred cross-entropy risk
    ``sup_{Σ‖δ_p‖_* ≤ D} |(L̂(δ) − L̂(0)) − (L(δ) − L(0))|`` for gradients with ``‖G(x)‖_F ≤ R`` almost surely
    (vector contraction with the loss's Lipschitz constant √2, Lemma C.4's Rademacher bound ``D R/√N`` and
    McDiarmid with differences ``2√2 R D/N``, two-sided). ``R > 0``, ``N`` a positive integer, ``η ∈ (0, 1)``.
    """
    check_positive_int(N, "N")
    if not (isinstance(R, (int, float)) and math.isfinite(R) and R > 0):
        raise ValueError(f"R must be a positive number, got {R!r}")
    if not 0 < eta < 1:
        raise ValueError(f"eta must lie in (0, 1), got {eta}")
    return 4 * (2 * R / math.sqrt(N)) * (2 + math.sqrt(math.log(2 / eta)))


def theorem51_bound(R: float, N: int, nuclear_true: float, eps: float = 0.0, eta: float = 0.05) -> float:
    """Excess population risk bound ``3 λ ‖δ_true‖_* + 2ε`` of our restatement of Theorem 5.1.

    With ``λ`` = :func:`theorem51_lambda` and ``δ̂`` any ``ε``-minimiser of ``L̂(δ) + λ Σ_p‖δ_p‖_*`` (e.g. ``BAᵀ``
    at a second-order stationary point of the perturbed LoRA objective, by Theorem 4.1 and Corollary 4.2), with
    probability ``≥ 1 − η``: ``L(δ̂) − L(δ_true) ≤ 3λ‖δ_true‖_* + 2ε``.
    """
    for v, nm in ((nuclear_true, "nuclear_true"), (eps, "eps")):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{nm} must be a finite non-negative number, got {v!r}")
    return 3 * theorem51_lambda(R, N, eta) * nuclear_true + 2 * eps


def bounded_gradient_sample(N: int, shape: tuple[int, int, int, int], R: float, *, generator: torch.Generator,
                            sigma: float = 0.3, dtype=torch.float64) -> torch.Tensor:
    """Per-example gradients ``G`` ``(N, K, P, m, n)`` with ``‖G_i‖_F = R`` exactly (Theorem 5.1's a.s. bound).

    ``shape = (K, P, m, n)``, ``K ≥ 2``. Before normalisation ``G_i = s_i · c ⊗ e_1 e_1ᵀ + σ W_i`` with ``s_i``
    standard normal, ``c`` the class contrast ``(1, −1, 0, …)/√2`` and ``W_i`` Gaussian: a dominant shared direction
    (so that a teacher along ``e_1 e_1ᵀ`` gives logits of size ``≈ R‖δ‖_*``) plus isotropic noise (so that every
    direction of ``δ`` is identifiable).
    """
    check_positive_int(N, "N")
    if len(shape) != 4:
        raise ValueError(f"shape must be (K, P, m, n), got {shape}")
    K, P, m, n = shape
    for v, nm in ((K, "K"), (P, "P"), (m, "m"), (n, "n")):
        check_positive_int(v, nm)
    if K < 2:
        raise ValueError(f"need K >= 2 classes, got {K}")
    if not (math.isfinite(R) and R > 0 and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"need R > 0 and sigma >= 0, got R={R}, sigma={sigma}")
    s = torch.randn(N, generator=generator, dtype=dtype)
    G = sigma * torch.randn(N, K, P, m, n, generator=generator, dtype=dtype)
    G[:, 0, :, 0, 0] += s[:, None] / math.sqrt(2)
    G[:, 1, :, 0, 0] -= s[:, None] / math.sqrt(2)
    return G * (R / G.flatten(1).norm(dim=1).clamp_min(1e-300))[:, None, None, None, None]


def ce_excess_risk(G: torch.Tensor, f0: torch.Tensor, delta: torch.Tensor, delta_true: torch.Tensor,
                   *, chunk: int = 200_000) -> tuple[float, float]:
    """Excess population cross-entropy risk ``L(δ) − L(δ_true)`` of a well-specified softmax model, estimated on
    a fresh sample, and its standard error.

    Labels follow ``y | x ~ softmax(f0(x) + ⟨G(x), δ_true⟩)``, so ``E[ℓ(f_δ, y) − ℓ(f_true, y) | x] =
    KL(p_true(x) ‖ p_δ(x))``: the label noise is integrated exactly and only the draw of ``x`` is Monte Carlo.
    ``G`` ``(M, K, P, m, n)`` and ``f0`` ``(M, K)`` a fresh sample; ``delta``, ``delta_true`` ``(P, m, n)``.
    Returns ``(mean, standard error)``.
    """
    if not isinstance(G, torch.Tensor) or G.dim() != 5:
        raise ValueError(f"G must have shape (M, K, P, m, n), got {tuple(getattr(G, 'shape', ()))}")
    M, K = G.shape[:2]
    if f0.shape != (M, K) or delta.shape != G.shape[2:] or delta_true.shape != G.shape[2:]:
        raise ValueError("f0 must be (M, K) and delta, delta_true (P, m, n) matching G")
    kl = []
    for i in range(0, M, chunk):
        Gm = G[i:i + chunk].reshape(-1, delta.numel())
        z = f0[i:i + chunk] + (Gm @ delta.reshape(-1).to(G.dtype)).reshape(-1, K)
        zt = f0[i:i + chunk] + (Gm @ delta_true.reshape(-1).to(G.dtype)).reshape(-1, K)
        lt = torch.log_softmax(zt, -1)
        kl.append((lt.exp() * (lt - torch.log_softmax(z, -1))).sum(-1))
    kl = torch.cat(kl)
    return float(kl.mean()), float(kl.std() / math.sqrt(M))


# --- real model: protocol and data splits ---
def embed_texts(texts: Sequence[str], layer: int, *, max_length: int = 64, batch_size: int = 64,
                progress: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states entering MiniLM's layer ``layer``, as :func:`lorabook.data.hidden_before_layer`, but faster.

    The texts are sorted by token length and run in batches padded only to their own longest text; the results
    are put back in the input order and padded to ``max_length`` (padding positions carry mask 0 and values that
    differ from full padding, which no masked consumer — attention bias, mean pooling — reads).

    Returns
    -------
    ``(hidden, mask)``: ``(n, max_length, 384)`` float32 and ``(n, max_length)`` 0/1.
    """
    from . import data

    if isinstance(texts, str) or not len(texts) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of strings")
    check_positive_int(max_length, "max_length")
    check_positive_int(batch_size, "batch_size")
    tok = data.load_minilm()[0]
    lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    hidden, mask = None, None
    batches = range(0, len(texts), batch_size)
    for i in tqdm(batches, desc=progress if isinstance(progress, str) else "MiniLM", disable=not progress,
                  leave=False):
        idx = order[i:i + batch_size]
        h, m = data.hidden_before_layer([texts[j] for j in idx], layer, max_length=max(lengths[j] for j in idx),
                                        batch_size=batch_size)
        if hidden is None:
            hidden = h.new_zeros(len(texts), max_length, h.shape[-1])
            mask = m.new_zeros(len(texts), max_length)
        hidden[idx, :h.shape[1]] = h
        mask[idx, :m.shape[1]] = m
    return hidden, mask


@dataclass
class DevPath:
    """Result of :func:`dev_selected_path`.

    ``fracs`` ``(F,)`` the λ / λ_max path; ``steps`` ``(C,)`` the step counts at which the dev set was scored
    (per λ, counted from its warm start); ``dev_loss`` and ``dev_bacc`` ``(F, C)``; ``best`` ``(i, j)`` the
    selected (λ, step) index (smallest dev loss); ``delta`` ``(P, m, n)`` the selected update; ``ends`` ``(F, P, m, n)``
    the update at the end of each λ; ``rel_gap`` ``(F,)`` their relative duality gaps; ``lam_max``.
    """

    fracs: list
    steps: list
    dev_loss: torch.Tensor
    dev_bacc: torch.Tensor
    best: tuple
    delta: torch.Tensor
    ends: torch.Tensor
    rel_gap: list
    lam_max: float


def dev_selected_path(G: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, dev: LinearisedProblem,
                      fracs: Sequence[float], steps: int, *, every: int = 5, loss: str = "logistic",
                      progress: bool | str = False) -> DevPath:
    """Linearised full fine-tuning along a path of λ, with λ and the step budget selected on a dev set.

    For each ``λ = frac · λ_max`` (``fracs`` decreasing in (0, 1]), FISTA with backtracking
    (:func:`proximal_gradient`, starting at step ``32/L`` and keeping the step size it backtracks to) runs ``steps``
    steps warm-started at the previous λ's end point; every ``every``
    steps the iterate is scored on ``dev`` (a :class:`LinearisedProblem` of the same ``δ`` shape whose ``G``,
    ``f0`` and ``y`` are the dev set's; its ``lam`` is ignored). The selected point has the smallest dev loss
    (step 0 of the first λ, the zero-shot model, is not a candidate).

    Parameters
    ----------
    G, f0, y : training data of :class:`LinearisedProblem`: ``(N, K, P, m, n)``, ``(N, K)``, labels.
    fracs : λ / λ_max values, each in (0, 1], strictly decreasing.
    steps : FISTA steps per λ (a multiple of ``every``).
    """
    from .data import balanced_accuracy

    check_positive_int(steps, "steps")
    check_positive_int(every, "every")
    if steps % every:
        raise ValueError(f"steps={steps} must be a multiple of every={every}")
    fracs = [float(f) for f in fracs]
    if not fracs or any(not 0 < f <= 1 for f in fracs) or any(a <= b for a, b in zip(fracs, fracs[1:])):
        raise ValueError(f"fracs must be a non-empty strictly decreasing sequence in (0, 1], got {fracs}")
    if not isinstance(dev, LinearisedProblem) or dev.shape != tuple(G.shape[-3:]) or dev.loss != loss:
        raise ValueError("dev must be a LinearisedProblem with the same delta shape and loss as the training data")
    base = LinearisedProblem(G, f0, y, 0.0, loss)
    lam_max, _ = base.lambda_max(), base.lipschitz()  # the Lipschitz constant is cached for the copies below
    labels = dev.y[:, 0] if dev.K == 1 else dev.y.argmax(1)

    def score(delta):
        out = dev.outputs(delta)
        return float(dev.data_loss(delta)), balanced_accuracy(out[:, 0] if dev.K == 1 else out, labels)

    checks = list(range(every, steps + 1, every))
    dl = torch.empty(len(fracs), len(checks), dtype=torch.float64)
    db = torch.empty_like(dl)
    delta, ends, gaps, best, best_delta = None, [], [], (0, 0), None
    bar = tqdm(total=len(fracs) * len(checks), desc=progress if isinstance(progress, str) else "λ path",
               disable=not progress, leave=False)
    lr = None
    for i, frac in enumerate(fracs):
        # a shallow copy with another λ: G is validated once and the Lipschitz constant of ∇L̂ (which λ does
        # not enter; a pass over G·Gᵀ) is computed once
        prob = copy.copy(base)
        prob.lam = float(frac * lam_max)
        for j in range(len(checks)):
            # the step size found by backtracking carries over (λ changes only the prox, not ∇L̂'s Lipschitz bound)
            res = proximal_gradient(prob, every, lr=lr or 32 / prob.lipschitz(), backtrack=True, delta0=delta,
                                    certify=False)
            delta, lr = res.delta, res.lr
            dl[i, j], db[i, j] = score(delta)
            if best_delta is None or dl[i, j] < dl[best]:
                best, best_delta = (i, j), delta.clone()
            bar.update()
        ends.append(delta.clone())
        gaps.append(certificate(prob, delta).rel_gap)
    bar.close()
    return DevPath(fracs, checks, dl, db, best, best_delta, torch.stack(ends), gaps, lam_max)


def steps_to_reach(history: torch.Tensor, target: float, record_every: int) -> list[int | None]:
    """First recorded step at which each column of ``history`` ``(n_records, S)`` is ``≤ target``; ``None`` if
    never. Records are ``record_every`` steps apart, starting at step 0."""
    check_positive_int(record_every, "record_every")
    if not isinstance(history, torch.Tensor) or history.dim() != 2 or not math.isfinite(target):
        raise ValueError("history must be a (n_records, S) tensor and target a finite number")
    hit = history <= target
    return [int(hit[:, s].nonzero()[0, 0]) * record_every if hit[:, s].any() else None
            for s in range(history.shape[1])]


def apply_by_length(fn, inputs: tuple[torch.Tensor, torch.Tensor], batch_size: int = 64):
    """``fn`` applied to length-sorted batches of padded token states, trimmed to each batch's longest text.

    ``inputs = (hidden (n, T, H), mask (n, T))``; ``fn((hidden_b, mask_b))`` must return a tensor, or a tuple of
    tensors, with leading dimension the batch's size, computed independently per example (e.g.
    :func:`per_example_jacobian`, :func:`linearised_predict`, :func:`predict_with_delta` of a masked module).
    The results are concatenated back in the input order. Exact for masked consumers, and cheaper, since short
    texts no longer pay for the padding of long ones. An input with no texts (``n = 0``) raises ``ValueError``.
    """
    check_positive_int(batch_size, "batch_size")
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise ValueError("inputs must be a pair (hidden (n, T, H), mask (n, T))")
    hidden, mask = inputs
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"need hidden (n, T, H) and mask (n, T); got {tuple(hidden.shape)} and {tuple(mask.shape)}")
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    res, single = None, False
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        T = max(int(lengths[idx].max()), 1)
        out = fn((hidden[idx, :T], mask[idx, :T]))
        single = not isinstance(out, tuple)
        out = (out,) if single else out
        if res is None:  # the results are written in place, in the input order: no concatenated copy
            res = tuple(o.new_empty((len(order),) + tuple(o.shape[1:])) for o in out)
        for r, o in zip(res, out):
            r[idx] = o
    if res is None:  # no batch ran, so nothing tells the shape of the results
        raise ValueError("inputs hold no texts (n = 0): there is nothing to apply fn to")
    return res[0] if single else res
