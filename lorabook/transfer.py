"""Low-rank transfer without gradients: the extension in the last slides of Zeng & Lee (2024).

Setting. A population network with known layers ``M_1, …, M_L`` (``M_1`` is ``k1 × d``, a bottleneck when
``k1 < d``) and a subgroup whose first layer is ``W_1 = M_1 + Z`` with ``rank Z ≤ k``:

    f(x) = M_L σ(M_{L-1} σ(⋯ M_2 σ(W_1 x))),     x ~ N(0, Σ),     y = f(x) + ε.

Steps (1–3 closed form, as in the slides; 4 is ours):

1. :func:`stein_moment` — the second-order Stein moment ``(1/n) Σ_i y_i T(x_i)``,
   ``T(x) = Σ⁻¹ x xᵀ Σ⁻¹ − Σ⁻¹``, one ``d × d`` matrix per output coordinate. Its expectation is
   ``E[∇²_x f] = W_1ᵀ E[∇²_z g(W_1 x)] W_1`` with ``f = g ∘ W_1``, so its range lies in the row space of ``W_1``.
2. :func:`row_space` — an orthonormal basis ``V`` (``d × k1``) of that row space from the top eigenvectors.
   Vector outputs: the per-output moments ``A_j`` are combined as ``Σ_j A_j²`` (``combine="gram"``, default:
   no cancellation between outputs, and the top eigenvectors of an indefinite ``A_j`` by *absolute*
   eigenvalue) or summed, ``Σ_j A_j`` (``combine="sum"``, the projection ``y ↦ 1ᵀy``).
3. :func:`reduced_rank_regression` — the closed form ``argmin_{rank Z ≤ k} ‖Y − Z X‖_F`` (minimum norm).
   :func:`slides_estimate` applies it as the slides do, ``Y = M_1(VVᵀ − I)``, ``X = I − VVᵀ``. Its
   solution is ``LR_k(−M_1 (I − VVᵀ))`` which, with the exact ``V``, equals ``Z (I − VVᵀ)``: only the part of ``Z``
   orthogonal to the row space of ``W_1`` is identified. The part ``Z VVᵀ`` is not.
4. :func:`refine_in_row_space` — our completion: with rank ``Z = k`` generic, the missing part is
   ``Û H V̂ᵀ`` with ``Û`` the left singular vectors of the slides' estimate and ``H`` a ``k × k1`` matrix,
   fitted by damped Gauss–Newton (a few ``k·k1``-dimensional least-squares solves using derivatives of the
   known layers; no learning rate, no training of the full adapter).
5. :func:`transfer` — the whole pipeline.

Also: the teacher (:func:`random_teacher`, :func:`sample`, :func:`mlp_forward`), the subspace distance
:func:`subspace_distance` and the gradient-LoRA baseline :func:`fit_lora_first_layer`.
Every function accepts leading batch dimensions (one slice per seed) where documented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .linalg import check_rank
from .checks import check_positive_int
from .train import batched_adam

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "linear": lambda t: t,
    "softplus": torch.nn.functional.softplus,
}
#: Derivatives σ' of :data:`ACTIVATIONS` (for the Gauss–Newton Jacobians).
DERIVATIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": lambda t: (t > 0).to(t.dtype),
    "tanh": lambda t: 1 - torch.tanh(t).square(),
    "linear": torch.ones_like,
    "softplus": torch.sigmoid,
}


# ----------------------------------------------------------------------------------------------- checks
def _check_tensor(t, name: str, min_dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite entries")


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not known; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_cov(cov: torch.Tensor | None, d: int, like: torch.Tensor) -> torch.Tensor:
    """Return Σ⁻¹ (d × d) after checking that Σ is symmetric positive definite."""
    if cov is None:
        return torch.eye(d, dtype=like.dtype, device=like.device)
    _check_tensor(cov, "cov", 2)
    if cov.shape != (d, d):
        raise ValueError(f"cov must be {d}×{d} to match x, got shape {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.T, atol=1e-10 * cov.abs().max().item() + 1e-300):
        raise ValueError("cov must be symmetric")
    L, info = torch.linalg.cholesky_ex(cov.to(like.dtype))
    if info != 0:
        raise ValueError("cov must be positive definite (Stein's score needs Σ⁻¹)")
    return torch.cholesky_inverse(L).to(like.device)


# ------------------------------------------------------------------------------------ teacher network
def mlp_forward(x: torch.Tensor, weights: Sequence[torch.Tensor], activation: str = "relu") -> torch.Tensor:
    """``W_L σ(W_{L-1} σ(⋯ σ(W_1 x)))`` (no biases; σ after every layer but the last).

    Parameters
    ----------
    x : ``(..., n, d)`` inputs, one per row.
    weights : ``[W_1, …, W_L]`` (``W_1`` applied first), each ``(..., out, in)`` with leading batch dimensions
        that broadcast against ``x``'s.
    activation : a key of :data:`ACTIVATIONS`.

    Returns
    -------
    ``(..., n, m)`` outputs, ``m`` the rows of ``W_L``.
    """
    _check_tensor(x, "x", 2)
    _activation(activation)
    if isinstance(weights, torch.Tensor) or len(weights) == 0:
        raise ValueError("weights must be a non-empty sequence [W_1, ..., W_L]")
    width = x.shape[-1]
    for l, W in enumerate(weights, start=1):
        _check_tensor(W, f"W_{l}", 2)
        if W.shape[-1] != width:
            raise ValueError(f"W_{l} has {W.shape[-1]} columns but its input has width {width}")
        width = W.shape[-2]
    return _forward(x, weights, activation)


def _forward(x: torch.Tensor, weights: Sequence[torch.Tensor], activation: str) -> torch.Tensor:
    """:func:`mlp_forward` without input checks (usable inside ``torch.func`` transforms)."""
    sigma = ACTIVATIONS[activation]
    h = x
    for l, W in enumerate(weights, start=1):
        h = h @ W.transpose(-1, -2)
        if l < len(weights):
            h = sigma(h)
    return h


@dataclass
class Teacher:
    """A population network and its subgroup shift (all tensors carry a leading seed dimension ``S``).

    ``M`` : ``[M_1 (S,k1,d), M_2, …, M_L]`` population layers; ``Z`` : ``(S, k1, d)`` the true shift, rank ``k``;
    ``activation`` : name of σ; ``noise`` : standard deviation of ε.
    """

    M: list[torch.Tensor]
    Z: torch.Tensor
    activation: str
    noise: float

    def to(self, device: torch.device | str) -> "Teacher":
        """A copy with every tensor on ``device``."""
        return Teacher([m.to(device) for m in self.M], self.Z.to(device), self.activation, self.noise)

    @property
    def W1(self) -> torch.Tensor:
        """The subgroup's first layer ``M_1 + Z``, ``(S, k1, d)``."""
        return self.M[0] + self.Z


def random_teacher(seeds: int, d: int, widths: Sequence[int], rank: int, *, z_scale: float = 1.0,
                   activation: str = "relu", noise: float = 0.1, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float64) -> Teacher:
    """Draw ``seeds`` random teachers: ``M_l`` Gaussian with variance ``1/fan_in``, ``Z = z_scale · P Q / √(d k)``
    with Gaussian ``P (k1 × k)``, ``Q (k × d)`` (rank ``k`` almost surely; ``E‖Z‖²_F = z_scale² E‖M_1‖²_F``).

    Parameters
    ----------
    seeds : number of independent teachers ``S``.
    d : input dimension.
    widths : ``[k1, k2, …, m]``, the output widths of layers ``1 … L`` (``k1`` is the bottleneck).
    rank : ``k``, in ``[1, min(k1, d)]``.
    z_scale : size of the shift relative to ``M_1``.

    Returns
    -------
    :class:`Teacher` on the CPU (move it with :meth:`Teacher.to`).
    """
    check_positive_int(seeds, "seeds")
    check_positive_int(d, "d")
    widths = list(widths)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
    check_rank(rank, min(widths[0], d), "rank")
    if not (z_scale >= 0 and noise >= 0):
        raise ValueError(f"z_scale and noise must be non-negative, got {z_scale}, {noise}")
    _activation(activation)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    fans = [d] + widths[:-1]
    M = [torch.randn(seeds, w, f, generator=g, dtype=dtype) / f**0.5 for w, f in zip(widths, fans)]
    P = torch.randn(seeds, widths[0], rank, generator=g, dtype=dtype)
    Q = torch.randn(seeds, rank, d, generator=g, dtype=dtype)
    Z = z_scale * P @ Q / (d * rank) ** 0.5
    return Teacher(M=M, Z=Z, activation=activation, noise=float(noise))


def sample(teacher: Teacher, n: int, *, generator: torch.Generator, cov: torch.Tensor | None = None,
           subgroup: bool = True, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` samples ``x ~ N(0, Σ)``, ``y = f(x) + ε`` per teacher.

    Random numbers are drawn on the CPU with ``generator`` (identical on every device), then moved to the
    teacher's device. Returns ``x (S, n, d)`` and ``y (S, n, m)``; ``subgroup=False`` uses ``M_1`` instead of ``M_1 + Z``,
    ``noise=False`` returns ``f(x)``.
    """
    check_positive_int(n, "n")
    S, k1, d = teacher.Z.shape
    x = torch.randn(S, n, d, generator=generator, dtype=teacher.Z.dtype)
    if cov is not None:
        _check_cov(cov, d, x)
        x = x @ torch.linalg.cholesky(cov.to(x.dtype)).T
    x = x.to(teacher.Z.device)
    W1 = teacher.W1 if subgroup else teacher.M[0]
    y = mlp_forward(x, [W1] + teacher.M[1:], teacher.activation)
    if noise and teacher.noise > 0:
        y = y + teacher.noise * torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    return x, y


# ------------------------------------------------------------------------------------------ the method
def stein_moment(x: torch.Tensor, y: torch.Tensor, cov: torch.Tensor | None = None,
                 center: str = "linear") -> torch.Tensor:
    """Second-order Stein moment ``(1/n) Σ_i y_ij T(x_i)``, ``T(x) = Σ⁻¹xxᵀΣ⁻¹ − Σ⁻¹``, per output ``j``.

    Parameters
    ----------
    x : ``(..., n, d)`` Gaussian inputs ``N(0, Σ)``.
    y : ``(..., n, m)`` outputs, or ``(..., n)`` for a scalar output (then ``m = 1``).
    cov : ``(d, d)`` the known input covariance Σ (symmetric positive definite); default the identity.
    center : control variate. ``"linear"`` (default) replaces ``y`` by its residual after a least-squares fit of
        ``a + Bx``, ``"mean"`` by ``y − ȳ``, ``"none"`` keeps ``y``. Since ``E[T(x)] = 0`` and ``E[x_l T(x)] = 0``
        (odd moments of a centred Gaussian), the expectation is unchanged, but the variance drops (a ReLU
        network has a large mean and linear part).

    Returns
    -------
    ``(..., m, d, d)`` symmetric matrices, estimates of ``E[y_j T(x)] = E[∇²_x f_j(x)]`` (second-order Stein).
    """
    _check_tensor(x, "x", 2)
    _check_tensor(y, "y", 1)
    if y.dim() == x.dim() - 1:
        y = y.unsqueeze(-1)
    if y.dim() != x.dim() or y.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"y must have shape {tuple(x.shape[:-1])} or {tuple(x.shape[:-1])} + (m,), got {tuple(y.shape)}")
    n, d = x.shape[-2:]
    prec = _check_cov(cov, d, x)
    if center == "linear":
        if n <= d + 1:
            raise ValueError(f"center='linear' needs n > d + 1 samples, got n={n}, d={d}")
        design = torch.cat([torch.ones_like(x[..., :1]), x], -1)
        coef = torch.linalg.lstsq(design, y).solution
        y = y - design @ coef
    elif center == "mean":
        y = y - y.mean(-2, keepdim=True)
    elif center != "none":
        raise ValueError(f"center={center!r} is not known; choose 'linear', 'mean' or 'none'")
    xs = x @ prec                                                           # Σ⁻¹ x, (..., n, d)
    second = torch.einsum("...ni,...nj,...nk->...jik", xs, y, xs) / n        # (..., m, d, d)
    return second - y.mean(-2)[..., :, None, None] * prec


def row_space(moments: torch.Tensor, k1: int, combine: str = "gram") -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of the top-``k1`` eigenspace of the combined Stein moment.

    Parameters
    ----------
    moments : ``(..., m, d, d)`` symmetric matrices from :func:`stein_moment`.
    k1 : dimension of the row space, in ``[1, d]``.
    combine : ``"gram"`` uses ``Σ_j A_j²`` (positive semi-definite; its range is the sum of the ranges of the ``A_j``);
        ``"sum"`` uses ``Σ_j A_j`` and ranks its eigenvalues by absolute value.

    Returns
    -------
    ``V (..., d, k1)`` with orthonormal columns, and the ``(..., d)`` eigenvalue magnitudes in decreasing order.
    """
    _check_tensor(moments, "moments", 3)
    d = moments.shape[-1]
    if moments.shape[-2] != d:
        raise ValueError(f"moments must be (..., m, d, d) square matrices, got shape {tuple(moments.shape)}")
    check_rank(k1, d, "k1")
    if combine == "gram":
        G = (moments @ moments).sum(-3)
    elif combine == "sum":
        G = moments.sum(-3)
    else:
        raise ValueError(f"combine={combine!r} is not known; choose 'gram' or 'sum'")
    G = 0.5 * (G + G.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(G)
    mags, order = evals.abs().sort(dim=-1, descending=True)
    V = torch.gather(evecs, -1, order[..., None, :].expand(evecs.shape))[..., :k1]
    return V, mags


def reduced_rank_regression(Y: torch.Tensor, X: torch.Tensor, rank: int, atol: float | None = None) -> torch.Tensor:
    """Closed-form ``argmin_{rank Z ≤ k} ‖Y − Z X‖_F`` of minimum Frobenius norm.

    With ``X⁺`` the pseudo-inverse and ``P_X = X⁺X`` the projection onto the row space of ``X``, the minimiser is
    ``Z = LR_k(Y P_X) X⁺`` (Izenman 1975 for invertible ``XXᵀ``; the pseudo-inverse form also covers singular ``X``,
    where ``Z + K`` with ``K X = 0`` fits equally well — the non-identified part).

    Parameters
    ----------
    Y : ``(..., p, q)``; X : ``(..., s, q)``; rank : ``k`` in ``[0, min(p, s)]``.
    atol : singular values of ``X`` below ``atol`` count as zero in ``X⁺`` (default: torch's relative cut-off).

    Returns
    -------
    ``Z (..., p, s)``.
    """
    _check_tensor(Y, "Y", 2)
    _check_tensor(X, "X", 2)
    if Y.shape[-1] != X.shape[-1]:
        raise ValueError(f"Y and X must have the same number of columns, got {tuple(Y.shape)} and {tuple(X.shape)}")
    check_rank(rank, min(Y.shape[-2], X.shape[-2]), "rank", allow_zero=True)
    if atol is not None and not atol >= 0:
        raise ValueError(f"atol must be non-negative, got {atol}")
    Xp = torch.linalg.pinv(X) if atol is None else torch.linalg.pinv(X, atol=atol, rtol=0.0)   # (..., q, s)
    U, s, Vh = torch.linalg.svd(Y @ Xp @ X, full_matrices=False)
    return (U[..., :rank] * s[..., None, :rank]) @ Vh[..., :rank, :] @ Xp


def _check_M1_V(M1: torch.Tensor, V: torch.Tensor) -> None:
    _check_tensor(M1, "M1", 2)
    _check_tensor(V, "V", 2)
    if V.shape[-2] != M1.shape[-1]:
        raise ValueError(f"V must have d={M1.shape[-1]} rows like M1's columns, got shape {tuple(V.shape)}")
    eye = torch.eye(V.shape[-1], dtype=V.dtype, device=V.device)
    # 1e-8 in float64; in lower precision the rounding of an orthonormal basis (about eps · d) must pass
    atol = max(1e-8, 50 * torch.finfo(V.dtype).eps * V.shape[-2])
    if not torch.allclose(V.transpose(-1, -2) @ V, eye.expand(V.shape[:-2] + eye.shape), atol=atol):
        raise ValueError("V must have orthonormal columns (VᵀV = I)")


def slides_estimate(M1: torch.Tensor, V: torch.Tensor, rank: int) -> torch.Tensor:
    """The slides' estimate ``argmin_{rank Z ≤ k} ‖M_1(VVᵀ − I) + Z(VVᵀ − I)‖_F`` (minimum norm).

    Written as :func:`reduced_rank_regression` with ``Y = M_1(VVᵀ − I)`` and ``X = I − VVᵀ``; the closed form is
    ``LR_k(−M_1(I − VVᵀ))``. It equals ``Z(I − VVᵀ)`` when ``V`` spans the row space of ``M_1 + Z``.

    Parameters
    ----------
    M1 : ``(..., k1, d)`` population first layer; V : ``(..., d, k1)`` orthonormal row-space basis; rank : ``k``.

    Returns
    -------
    ``Ẑ (..., k1, d)`` of rank ``≤ k``.
    """
    _check_M1_V(M1, V)
    d = M1.shape[-1]
    perp = torch.eye(d, dtype=M1.dtype, device=M1.device) - V @ V.transpose(-1, -2)
    # X = I − VVᵀ is a projection (singular values 0 or 1): an absolute cut-off keeps rounding noise out of X⁺
    return reduced_rank_regression(-M1 @ perp, perp, rank, atol=1e-8)


def refine_in_row_space(x: torch.Tensor, y: torch.Tensor, M: Sequence[torch.Tensor], V: torch.Tensor,
                        Z0: torch.Tensor, rank: int, activation: str = "relu", *, iters: int = 10,
                        damping: float = 1e-3) -> torch.Tensor:
    """Complete the slides' estimate with the part of ``Z`` inside the row space: ``Z = Z0 + Û H Vᵀ``.

    ``Û`` are the top-``k`` left singular vectors of ``Z0`` and ``H (k × k1)`` minimises the mean squared residual
    ``‖y − f_{M_1 + Z}(x)‖²`` by Levenberg–Marquardt (Gauss–Newton with an adaptive damping; exact Jacobians in the
    ``k·k1`` unknowns by forward mode through the known layers), starting from ``H = 0`` (the slides' estimate).
    Only the ``k1``-dimensional pre-activations ``(M_1 + Z)x`` change with ``H``, so each step costs ``O(n k1)``
    forward passes of the small head, whatever ``d``.

    Parameters
    ----------
    x : ``(S, n, d)``; y : ``(S, n, m)``; M : ``[M_1 (S,k1,d), M_2, …]``; V : ``(S, d, k1)``; Z0 : ``(S, k1, d)``;
    rank : ``k`` in ``[1, min(k1, d)]``; iters : positive number of Gauss–Newton steps.

    Returns
    -------
    ``Z (S, k1, d)`` of rank ``≤ k``.
    """
    for name, t in (("x", x), ("y", y), ("V", V), ("Z0", Z0)):
        _check_tensor(t, name, 3)
    S, n, d = x.shape
    k1 = Z0.shape[-2]
    if y.shape[:2] != (S, n) or y.dim() != 3:
        raise ValueError(f"y must have shape ({S}, {n}, m), got {tuple(y.shape)}")
    if Z0.shape != (S, k1, d) or V.shape != (S, d, k1) or M[0].shape != (S, k1, d):
        raise ValueError(f"need M_1 and Z0 of shape (S, k1, d) and V of shape (S, d, k1); got {tuple(M[0].shape)}, "
                         f"{tuple(Z0.shape)}, {tuple(V.shape)}")
    check_rank(rank, min(k1, d), "rank")
    check_positive_int(iters, "iters")
    U = torch.linalg.svd(Z0, full_matrices=False)[0][..., :rank]             # (S, k1, k)
    rest = list(M[1:])
    sigma = ACTIVATIONS[activation]
    z0 = x @ (M[0] + Z0).transpose(-1, -2)                                  # (S, n, k1) pre-activations at H = 0
    u = x @ V                                                               # (S, n, k1) row-space coordinates

    dsigma = DERIVATIVES[activation]

    def head(z):                                                            # the known layers above W_1
        return _forward(sigma(z), rest, activation) if rest else z

    def head_jvp(z, dz):                                                    # tangents dz (p, S, n, k1) -> (p, S, n, m)
        a, da = z, dz
        for W in rest:
            da = (dsigma(a) * da) @ W.transpose(-1, -2)
            a = sigma(a) @ W.transpose(-1, -2)
        return da

    def residual(h):                                                        # h: (S, k, k1)
        z = z0 + u @ (U @ h).transpose(-1, -2)
        return z, head(z) - y

    h = torch.zeros(S, rank, k1, dtype=x.dtype, device=x.device)
    z, r = residual(h)
    loss = r.square().mean((-1, -2))
    done = torch.zeros(S, dtype=torch.bool, device=x.device)
    lam = torch.full((S,), damping, dtype=x.dtype, device=x.device)
    eye = torch.eye(rank * k1, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        # ∂r/∂H_ab = K_a u_b with K_a = (∂ head/∂z) U_{:,a}: k forward-mode tangents, then contract over samples
        K = head_jvp(z, U.transpose(-1, -2)[:, :, None, :].expand(S, rank, n, k1).transpose(0, 1))   # (k, S, n, m)
        G = torch.einsum("asnm,csnm->snac", K, K).reshape(S, n, rank * rank)
        uu = (u[..., :, None] * u[..., None, :]).reshape(S, n, k1 * k1)
        JtJ = (G.transpose(-1, -2) @ uu).reshape(S, rank, rank, k1, k1).permute(0, 1, 3, 2, 4).reshape(S, rank * k1, rank * k1)
        g = (torch.einsum("asnm,snm->sna", K, r).transpose(-1, -2) @ u).reshape(S, rank * k1, 1)
        diag = torch.diagonal(JtJ, dim1=-2, dim2=-1)
        A = JtJ + lam[:, None, None] * (torch.diag_embed(diag) + 1e-12 * eye)
        h_new = h + torch.linalg.solve(A, -g).reshape(S, rank, k1)
        z_new, r_new = residual(h_new)
        loss_new = r_new.square().mean((-1, -2))
        better = loss_new < loss
        done = done | (better & (loss_new > (1 - 1e-10) * loss)) | (lam >= 1e8)
        h = torch.where(better[:, None, None], h_new, h)
        z = torch.where(better[:, None, None], z_new, z)
        r = torch.where(better[:, None, None], r_new, r)
        loss = torch.where(better, loss_new, loss)
        lam = torch.where(better, lam / 3, lam * 4).clamp(1e-9, 1e9)
        if bool(done.all()):
            break                                                            # converged everywhere
    return Z0 + U @ h @ V.transpose(-1, -2)


@dataclass
class TransferResult:
    """Output of :func:`transfer`: ``Z`` (refined, or the slides' estimate if ``refine=False``), ``Z_slides``,
    the row-space basis ``V`` and the combined moment's eigenvalue magnitudes ``eigvals``."""

    Z: torch.Tensor
    Z_slides: torch.Tensor
    V: torch.Tensor
    eigvals: torch.Tensor


def transfer(x: torch.Tensor, y: torch.Tensor, M: Sequence[torch.Tensor], rank: int, *, activation: str = "relu",
             cov: torch.Tensor | None = None, combine: str = "gram", center: str = "linear", refine: bool = True,
             iters: int = 10) -> TransferResult:
    """The whole gradient-free transfer: Stein moment → row space → reduced-rank regression (→ refinement).

    Parameters
    ----------
    x : ``(S, n, d)`` subgroup inputs ``N(0, Σ)``; y : ``(S, n, m)`` subgroup outputs.
    M : ``[M_1 (S, k1, d), M_2, …, M_L]`` the known population layers; ``k1 = M_1.shape[-2]`` is the row-space dimension.
    rank : ``k``, the rank of the shift. cov : Σ (default identity). combine : see :func:`row_space`;
    center : see :func:`stein_moment`.
    refine : also fit the within-row-space part (:func:`refine_in_row_space`); otherwise ``Z = Z_slides``.

    Returns
    -------
    :class:`TransferResult`.
    """
    _check_tensor(x, "x", 3)
    if isinstance(M, torch.Tensor) or len(M) == 0:
        raise ValueError("M must be a non-empty sequence of population layers [M_1, ..., M_L]")
    _check_tensor(M[0], "M_1", 3)
    if M[0].shape[0] != x.shape[0] or M[0].shape[-1] != x.shape[-1]:
        raise ValueError(f"M_1 must have shape (S, k1, d) = ({x.shape[0]}, k1, {x.shape[-1]}), got {tuple(M[0].shape)}")
    k1 = M[0].shape[-2]
    check_rank(rank, min(k1, x.shape[-1]), "rank")
    V, eigvals = row_space(stein_moment(x, y, cov, center), k1, combine)
    Z_slides = slides_estimate(M[0], V, rank)
    if not refine:
        return TransferResult(Z_slides, Z_slides, V, eigvals)
    if k1 == x.shape[-1]:
        raise ValueError("k1 = d: the row space of W_1 is all of R^d, so the Stein step identifies nothing "
                         "(the slides' estimate is 0 and cannot be refined); use refine=False")
    Z = refine_in_row_space(x, y, M, V, Z_slides, rank, activation, iters=iters)
    return TransferResult(Z, Z_slides, V, eigvals)


def subspace_distance(V1: torch.Tensor, V2: torch.Tensor) -> torch.Tensor:
    """``‖V1V1ᵀ − V2V2ᵀ‖_2`` (sine of the largest principal angle) for orthonormal ``(..., d, k)`` bases."""
    _check_tensor(V1, "V1", 2)
    _check_tensor(V2, "V2", 2)
    if V1.shape != V2.shape:
        raise ValueError(f"V1 and V2 must have the same shape, got {tuple(V1.shape)} and {tuple(V2.shape)}")
    P = V1 @ V1.transpose(-1, -2) - V2 @ V2.transpose(-1, -2)
    return torch.linalg.matrix_norm(P, 2)


def true_row_space(W1: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``(..., d, k1)`` of the row space of a full-row-rank ``W1 (..., k1, d)``."""
    _check_tensor(W1, "W1", 2)
    if W1.shape[-2] > W1.shape[-1]:
        raise ValueError(f"W1 must be wide (k1 ≤ d), got shape {tuple(W1.shape)}")
    return torch.linalg.svd(W1, full_matrices=False)[2].transpose(-1, -2)


def relative_error(Z_hat: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """``‖Ẑ − Z‖_F / ‖Z‖_F`` over the last two dimensions."""
    _check_tensor(Z_hat, "Z_hat", 2)
    _check_tensor(Z, "Z", 2)
    if Z_hat.shape != Z.shape:
        raise ValueError(f"Z_hat and Z must have the same shape, got {tuple(Z_hat.shape)} and {tuple(Z.shape)}")
    return torch.linalg.matrix_norm(Z_hat - Z) / torch.linalg.matrix_norm(Z)


# --------------------------------------------------------------------------------- gradient baseline
def fit_lora_first_layer(x: torch.Tensor, y: torch.Tensor, M: Sequence[torch.Tensor], rank: int, lrs: Sequence[float],
                         steps: int, *, sizes: Sequence[int] | None = None, activation: str = "relu",
                         val_frac: float = 0.2, batch_size: int | None = 256, generator: torch.Generator | None = None,
                         progress: bool | str = False) -> torch.Tensor:
    """Gradient LoRA on the first layer, ``W_1 = M_1 + BA``, fitted on the same samples; lr chosen on validation.

    Slice ``s`` uses its first ``sizes[s]`` samples: the first ``round(val_frac · size)`` are held out for
    validation, the rest are the training set. Adam (:func:`lorabook.train.batched_adam`) runs every slice and
    every learning rate at once (``S × len(lrs)`` problems in one tensor program); each step draws a fresh
    minibatch of ``batch_size`` training samples with replacement (``None``: the full training set, weighted).
    ``B = 0``, ``A ~ N(0, 1/d)`` at the start (Hu et al.). Per slice, the learning rate with the lowest final
    validation loss is kept.

    Parameters
    ----------
    x : ``(S, n, d)``; y : ``(S, n, m)``; M : ``[M_1 (S, k1, d), M_2 (S, ·, ·), …]``; rank : ``k``;
    lrs : positive learning rates; steps : Adam steps; sizes : ``S`` sample counts in ``[2, n]`` (default ``n``);
    val_frac : in ``(0, 1)``, leaving at least one sample on each side.

    Returns
    -------
    ``Z = BA`` of the selected run, ``(S, k1, d)``.
    """
    _check_tensor(x, "x", 3)
    _check_tensor(y, "y", 3)
    S, n, d = x.shape
    if y.shape[:2] != (S, n):
        raise ValueError(f"y must have shape ({S}, {n}, m), got {tuple(y.shape)}")
    if isinstance(M, torch.Tensor) or len(M) == 0 or M[0].shape[0] != S or M[0].shape[-1] != d:
        raise ValueError(f"M must be a list of layers with M_1 of shape ({S}, k1, {d})")
    k1 = M[0].shape[-2]
    check_rank(rank, min(k1, d), "rank")
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {lrs!r}")
    if not 0 < val_frac < 1:
        raise ValueError(f"val_frac must lie in (0, 1), got {val_frac}")
    sizes_t = torch.full((S,), n) if sizes is None else torch.as_tensor(list(sizes))
    if sizes_t.shape != (S,) or sizes_t.is_floating_point() or (sizes_t < 2).any() or (sizes_t > n).any():
        raise ValueError(f"sizes must be {S} integers in [2, {n}], got {sizes!r}")
    n_val = (val_frac * sizes_t).round().long().clamp(min=1)
    n_tr = sizes_t - n_val
    if (n_tr < 1).any():
        raise ValueError(f"val_frac={val_frac} leaves no training sample for some slice")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    R = len(lrs)
    dev = x.device
    owner = torch.arange(S).repeat_interleave(R).to(dev)                     # slice of each of the S·R problems
    Ms = [m.repeat_interleave(R, 0) for m in M]
    A = (torch.randn(S * R, rank, d, generator=g, dtype=x.dtype) / d**0.5).to(dev)
    B = torch.zeros(S * R, k1, rank, dtype=x.dtype, device=dev)
    lr_t = torch.tensor(lrs, dtype=x.dtype).repeat(S).to(dev)
    lo, width = n_val.repeat_interleave(R).to(dev), n_tr.repeat_interleave(R).to(dev)
    pos = torch.arange(n, device=dev)

    def per_sample(xs, ys):                                                  # (S·R, b, d) -> (S·R, b)
        return (_forward(xs, [Ms[0] + B @ A, *Ms[1:]], activation) - ys).square().sum(-1)

    if batch_size is None:
        train_w = ((pos >= lo[:, None]) & (pos < (lo + width)[:, None])).to(x.dtype) / width[:, None]

        def step_loss(step):
            return (per_sample(x[owner], y[owner]) * train_w).sum(-1)
    else:
        def step_loss(step):
            u = torch.rand(S * R, batch_size, generator=g, dtype=x.dtype).to(dev)
            idx = lo[:, None] + (u * width[:, None]).long().clamp(max=n - 1)
            return per_sample(x[owner[:, None], idx], y[owner[:, None], idx]).mean(-1)

    batched_adam([A, B], step_loss, steps, lr_t, progress=progress)
    with torch.no_grad():
        nv = int(n_val.max())
        val_w = (pos[:nv] < lo[:, None]).to(x.dtype) / lo[:, None]
        val = (per_sample(x[owner, :nv], y[owner, :nv]) * val_w).sum(-1).reshape(S, R)
        val = torch.where(torch.isfinite(val), val, torch.inf)
        best = val.argmin(-1)
        Z = (B @ A).reshape(S, R, k1, d)
    return Z[torch.arange(S, device=dev), best].detach()


def prediction_error(teacher: Teacher, Z_hat: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    """Relative test error ``E‖f_Ẑ(x) − f_Z(x)‖² / E‖f_Z(x) − E f_Z‖²`` on ``x_test (S, n, d)``; returns ``(S,)``."""
    _check_tensor(x_test, "x_test", 3)
    _check_tensor(Z_hat, "Z_hat", 3)
    if Z_hat.shape != teacher.Z.shape:
        raise ValueError(f"Z_hat must have shape {tuple(teacher.Z.shape)}, got {tuple(Z_hat.shape)}")
    truth = mlp_forward(x_test, [teacher.W1] + teacher.M[1:], teacher.activation)
    pred = mlp_forward(x_test, [teacher.M[0] + Z_hat] + teacher.M[1:], teacher.activation)
    return (pred - truth).square().sum(-1).mean(-1) / (truth - truth.mean(-2, keepdim=True)).square().sum(-1).mean(-1)


# ------------------------------------------------------------------------------------------ experiment
def run_experiment(config: dict, progress: bool | str = False) -> dict:
    """One sweep of the chapter: the Stein transfer (and optionally gradient LoRA) vs subgroup size ``n``.

    ``config`` keys: ``seed``, ``seeds``, ``d``, ``widths`` (``[k1, …, m]``), ``rank``, ``z_scale``, ``noise``,
    ``activation``, ``ns`` (increasing subgroup sizes; samples are nested), ``n_test``, ``center``, and for the
    gradient baseline ``lora_steps`` (0 to skip), ``lrs``, ``batch_size``. Everything runs batched over seeds;
    gradient LoRA over ``len(ns) × seeds × len(lrs)`` problems in one Adam run. Random numbers are drawn on the
    CPU, the computation runs on :func:`lorabook.config.device`.

    Returns
    -------
    dict of ``(len(ns), seeds)`` numpy arrays — ``row_space`` (subspace distance of ``V̂``), ``moment_norm``
    (spectral norm of the combined moment ``Σ_j A_j²``, square-rooted), ``slides`` / ``completed`` / ``lora``
    (relative Z errors), ``pred_slides`` / ``pred_completed`` / ``pred_lora`` (relative prediction errors) — and
    ``plateau`` ``(seeds,)``: ``‖Z VVᵀ‖_F / ‖Z‖_F`` with the true ``V``, the slides' error in the limit ``n → ∞``;
    ``oracle``: completed Z error with the true row space at the largest ``n``; ``oracle_slides_gap``: max entry of
    ``|slides_estimate(M_1, V) − Z(I − VVᵀ)|`` with the true ``V`` (0 by the derivation).
    """
    from .config import device, few_threads

    with few_threads(dev=device()):  # every tensor here is small
        return _run_experiment(config, progress)


def _run_experiment(config: dict, progress: bool | str) -> dict:
    from .config import device

    required = {"seed", "seeds", "d", "widths", "rank", "z_scale", "noise", "activation", "ns", "n_test"}
    missing = required - set(config)
    if missing:
        raise ValueError(f"config is missing {sorted(missing)}")
    ns = list(config["ns"])
    if not ns or any(b <= a for a, b in zip(ns, ns[1:])):
        raise ValueError(f"ns must be a non-empty increasing list, got {ns!r}")
    dev = device()
    g = torch.Generator().manual_seed(int(config["seed"]))
    S, d, k, k1 = config["seeds"], config["d"], config["rank"], config["widths"][0]
    teacher = random_teacher(S, d, config["widths"], k, z_scale=config["z_scale"], activation=config["activation"],
                             noise=config["noise"], generator=g).to(dev)
    x, y = sample(teacher, ns[-1], generator=g)
    x_test, _ = sample(teacher, config["n_test"], generator=g, noise=False)
    V_true = true_row_space(teacher.W1)
    P_true = V_true @ V_true.transpose(-1, -2)
    out = {key: [] for key in ("row_space", "moment_norm", "slides", "completed", "pred_slides", "pred_completed")}
    for n in ns:
        moments = stein_moment(x[:, :n], y[:, :n], center=config.get("center", "linear"))
        res = transfer(x[:, :n], y[:, :n], teacher.M, k, activation=teacher.activation,
                       center=config.get("center", "linear"), refine=config.get("refine", True)) if k1 < d else None
        V = res.V if res is not None else row_space(moments, k1)[0]
        Z_slides = res.Z_slides if res is not None else slides_estimate(teacher.M[0], V, k)
        Z_done = res.Z if res is not None else Z_slides
        out["row_space"].append(subspace_distance(V, V_true))
        out["moment_norm"].append(torch.linalg.matrix_norm((moments @ moments).sum(-3), 2).sqrt())
        out["slides"].append(relative_error(Z_slides, teacher.Z))
        out["completed"].append(relative_error(Z_done, teacher.Z))
        out["pred_slides"].append(prediction_error(teacher, Z_slides, x_test))
        out["pred_completed"].append(prediction_error(teacher, Z_done, x_test))
    steps = int(config.get("lora_steps", 0))
    if steps:
        L = len(ns)
        Zl = fit_lora_first_layer(x.repeat(L, 1, 1), y.repeat(L, 1, 1), [m.repeat(L, 1, 1) for m in teacher.M], k,
                                  config["lrs"], steps, sizes=[n for n in ns for _ in range(S)],
                                  activation=teacher.activation, batch_size=config.get("batch_size", 256),
                                  generator=g, progress=progress).reshape(L, S, k1, d)
        out["lora"] = [relative_error(Zl[i], teacher.Z) for i in range(L)]
        out["pred_lora"] = [prediction_error(teacher, Zl[i], x_test) for i in range(L)]
    result = {key: torch.stack(v).cpu().numpy() for key, v in out.items()}
    result["plateau"] = (torch.linalg.matrix_norm(teacher.Z @ P_true) / torch.linalg.matrix_norm(teacher.Z)).cpu().numpy()
    Z_exact = slides_estimate(teacher.M[0], V_true, k)
    eye = torch.eye(d, dtype=x.dtype, device=dev)
    result["oracle_slides_gap"] = float((Z_exact - teacher.Z @ (eye - P_true)).abs().max())
    if k1 < d and config.get("refine", True):
        Z_oracle = refine_in_row_space(x, y, teacher.M, V_true, Z_exact, k, teacher.activation)
        result["oracle"] = relative_error(Z_oracle, teacher.Z).cpu().numpy()
    return result
