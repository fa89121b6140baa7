"""Chapter 3 (Kratsios, Cheng, Lucchi & Sáez de Ocáriz Borde 2025): generalisation of asymmetric random LoRA.

Contents
--------
* Bound formulas: :func:`lora_param_count` (eq. 7), :func:`lemma4_radius` (the radius ``R`` of Lemma 4),
  :func:`theorem1_eps` (the proof's ``ε`` for a given ``δ``), :func:`kratsios_upper_bound` (Theorem 1 as
  printed), :func:`box_radius` (the exact ``sup_{|A|≤M} ‖BA‖_∞``), :func:`corrected_radius` (a valid
  high-probability bound on it), :func:`corrected_upper_bound` (Theorem 1 with that radius) and
  :func:`first_nonvacuous_N`.
* Gap estimation: :func:`bounded_abs_loss`, :func:`gap_estimate`, :func:`uniform_gap_lower` (a lower estimate of
  the uniform gap by gradient ascent over the box), :func:`loglog_slope`, :func:`local_slopes`,
  :func:`rate_growth`.
* Theorem 2: :func:`binomial_exceed_prob`, :func:`theorem2_ratio`, :func:`last_layer_witness` (closed form),
  :func:`paper_witness` (eq. 25 as printed), :func:`output_witness` (by optimisation).
* Random-factor MLPs in batched functional form (a leading batch dimension over draws × seeds):
  :func:`make_mlp`, :func:`draw_factors`, :func:`lora_mlp_forward`, :func:`train_frozen_factor`,
  :func:`lipschitz_ratio`; the chapter's experiment :func:`teacher_student_gaps`, :func:`chapter_setting`,
  :func:`gap_sweep`.
* MiniLM's last feed-forward output layer with a LoRA update: :func:`minilm_head_cache`,
  :func:`minilm_head_logits`, :func:`init_head_factors`, :func:`minilm_pool`, :func:`minilm_asymmetry_run`,
  :func:`balanced_error`, :func:`random_feature_probe`.

The network of the paper (eq. 2) is ``x^{(1)} = x``, ``x^{(t+1)} = σ((W^{(t)} + B^{(t)}A^{(t)}) x^{(t)} + b^{(t)})`` for
``t = 1..T`` and ``f(x) = (W^{(T+1)} + B^{(T+1)}A^{(T+1)}) x^{(T+1)} + b^{(T+1)}``, with ``σ = ReLU``, widths
``d → W → … → W → D`` (``T`` hidden layers), ``B^{(t)} ∈ R^{d_{t+1}×r}`` frozen ``N(0, ν²)`` and ``A^{(t)} ∈ R^{r×d_t}``
trained under ``|A_ij| ≤ M``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from .checks import check_positive_int
from .train import batched_adam

__all__ = [
    "lora_param_count", "lemma4_radius", "kratsios_upper_bound", "box_radius", "corrected_radius",
    "bounded_abs_loss", "gap_estimate", "loglog_slope", "binomial_exceed_prob",
    "make_mlp", "draw_factors", "lora_mlp_forward", "train_frozen_factor", "lipschitz_ratio",
    "minilm_head_cache", "minilm_head_logits", "init_head_factors", "MODES", "teacher_student_gaps",
    "output_witness", "chapter_setting", "gap_sweep", "minilm_asymmetry_run", "theorem1_eps",
    "corrected_upper_bound", "first_nonvacuous_N", "theorem2_ratio", "local_slopes", "last_layer_witness",
    "paper_witness", "uniform_gap_lower", "rate_growth", "minilm_pool", "random_feature_probe", "balanced_error",
]

MODES = ("A", "B", "both")


# ----------------------------------------------------------------------------------------------- validation
def _pos_float(v, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {v!r}") from None  # pragma: no mutate
    if isinstance(v, bool) or not math.isfinite(f) or f <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")  # pragma: no mutate
    return f


def _open01(v, name: str, *, right_closed: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1{']' if right_closed else ')'}, got {v!r}") from None  # pragma: no mutate
    ok = 0 < f <= 1 if right_closed else 0 < f < 1
    if not ok or not math.isfinite(f):
        raise ValueError(f"{name}={v!r} is out of range: it must lie in (0, 1{']' if right_closed else ')'}")  # pragma: no mutate
    return f


def _finite(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")  # pragma: no mutate
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")  # pragma: no mutate
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite entries")  # pragma: no mutate


# ------------------------------------------------------------------------------------------ bound formulas
def lora_param_count(r: int, W: int, T: int, d: int, D: int) -> int:
    """Trainable parameters of the paper's setting, eq. (7): ``q = r (W(T−1) + d + D)``.

    All arguments are positive integers. (Counting the entries of ``A^{(t)} ∈ R^{r×d_t}``, ``t = 1..T+1``,
    directly gives ``r(d + TW)``; the book keeps the paper's formula.)
    """
    r, W, T, d, D = (check_positive_int(v, n) for v, n in ((r, "r"), (W, "W"), (T, "T"), (d, "d"), (D, "D")))
    return r * (W * (T - 1) + d + D)


def lemma4_radius(M: float, nu: float, r: int, W: int, eps: float) -> float:
    """The radius of Lemma 4, ``R = M ν √(2 r log(2W/ε))`` (the paper's bound on ``‖B A‖_∞`` over the box).

    ``M, ν > 0``; ``r, W`` positive integers; ``ε ∈ (0, 1]``.
    """
    M, nu = _pos_float(M, "M"), _pos_float(nu, "nu")
    r, W = check_positive_int(r, "r"), check_positive_int(W, "W")
    eps = _open01(eps, "eps", right_closed=True)
    return M * nu * math.sqrt(2 * r * math.log(2 * W / eps))


def _theorem1_value(R: float, *, r: int, N: int, delta: float, T: int, W: int, d: int, D: int,
                    theta_pre_inf: float, c: float) -> float:
    """Theorem 1's right-hand side for a given radius ``R`` (inputs already validated except N, δ, c, R₀)."""
    N = check_positive_int(N, "N")
    delta = _open01(delta, "delta", right_closed=True)
    c = _pos_float(c, "c")
    try:
        R0 = float(theta_pre_inf)
    except (TypeError, ValueError):
        raise ValueError(f"theta_pre_inf must be a non-negative number, got {theta_pre_inf!r}") from None  # pragma: no mutate
    if not math.isfinite(R0) or R0 < 0:
        raise ValueError(f"theta_pre_inf must be a non-negative finite number, got {theta_pre_inf!r}")  # pragma: no mutate
    q = lora_param_count(r, W, T, d, D)
    A = (c * T + 1) * math.log(2 * R + 2 * R0)
    if A <= 0:
        raise ValueError(f"A = (cT+1) log(2R + 2R0) = {A:.3g} is not positive (2R + 2R0 = "  # pragma: no mutate
                         f"{2 * R + 2 * R0:.3g} ≤ 1): the bound is undefined; increase M, nu or "  # pragma: no mutate
                         "theta_pre_inf")  # pragma: no mutate
    eps_t = theorem1_eps(delta)
    return 4 * min(1.0, math.sqrt(q) * 6 * math.sqrt(A) / math.sqrt(N)) + math.sqrt(8 * math.log(2 / eps_t) / N)


def theorem1_eps(delta: float) -> float:
    """The ``ε`` of Theorem 1's proof for a failure probability ``δ ∈ (0, 1]``: ``(1 − ε)² = 1 − δ``, so
    ``ε = 1 − √(1 − δ)``. Both events of the proof (the radius event of Lemma 4 and the concentration event of
    Lemma 9) then fail with probability ``ε`` each."""
    delta = _open01(delta, "delta", right_closed=True)
    return 1 - math.sqrt(1 - delta)


def kratsios_upper_bound(*, r: int, N: int, delta: float, T: int, W: int, d: int, D: int, M: float, nu: float,
                         theta_pre_inf: float, c: float = 1.0, eps: float | None = None) -> float:
    """Theorem 1 as printed: with probability ``≥ 1 − δ`` the uniform gap ``G`` is at most

    ``4 min{1, √q · 6√A / √N} + √(8 log(2/(1 − √(1 − δ))) / N)``, with ``A = (cT + 1) log(2R + 2R₀)``,
    ``q`` from :func:`lora_param_count`, the paper's radius ``R = M ν √(2r log(2W/ε))`` (:func:`lemma4_radius`)
    and ``R₀ = ‖θ_pre‖_∞``.

    Parameters
    ----------
    r, N, T, W, d, D : positive integers (rank, samples, hidden layers, width, input and output dimensions).
    delta : failure probability in ``(0, 1]``.
    M, nu : box size and standard deviation of the frozen factor, ``> 0``.
    theta_pre_inf : ``‖θ_pre‖_∞ ≥ 0``.
    c : the constant ``c₂`` of Petrova & Wojtaszczyk, which the paper does not give (``> 0``).
    eps : the ``ε`` inside ``R``. By default the proof's ``ε = 1 − √(1 − δ)`` (:func:`theorem1_eps`); another
        value overrides it for exploration, and the theorem's probability statement then no longer applies.

    Returns
    -------
    float ``≥ 0``; values ``≥ 1`` are vacuous for a loss in ``[0, 1]``. The paper's ``R`` is not a valid radius
    for every rank (see :func:`box_radius`); :func:`corrected_upper_bound` evaluates the same formula with a
    valid one.

    Raises
    ------
    ValueError
        outside the domain (δ ∉ (0, 1], ε ∉ (0, 1], non-positive integers, ``M, ν ≤ 0``, ``θ_pre_inf < 0``,
        ``c ≤ 0``) and when ``A ≤ 0`` (then ``√A`` and the bound are undefined).
    """
    T, W, d, D = (check_positive_int(v, n) for v, n in ((T, "T"), (W, "W"), (d, "d"), (D, "D")))
    eps = theorem1_eps(delta) if eps is None else eps
    R = lemma4_radius(M, nu, r, W, eps)
    return _theorem1_value(R, r=r, N=N, delta=delta, T=T, W=W, d=d, D=D, theta_pre_inf=theta_pre_inf, c=c)


def corrected_upper_bound(*, r: int, N: int, delta: float, T: int, W: int, d: int, D: int, M: float, nu: float,
                          theta_pre_inf: float, c: float = 1.0) -> float:
    """Theorem 1's formula with a valid radius: :func:`kratsios_upper_bound` with ``R`` replaced by
    ``R' = corrected_radius(M, ν, r, TW + D, ε)``, ``ε = 1 − √(1 − δ)``.

    ``R'`` bounds ``max_t sup_{|A| ≤ M} ‖B^{(t)} A^{(t)}‖_∞ = M max_{t,i} Σ_k |B^{(t)}_{ik}|`` with probability
    ``≥ 1 − ε`` (a union bound over the ``TW + D`` rows of all ``T + 1`` frozen factors). The same ``R'`` also
    absorbs the factor ``‖B‖_{∞→∞}`` that the chain rule of Lemma 4's Step 3 needs: covering the box of ``A``
    (radius ``M``) with the ``A``-Lipschitz constant ``‖B‖_{∞→∞} · 2^{cT}(R' + R₀)^{cT}`` gives the paper's
    covering number ``((2R' + 2R₀)^{cT+1}/ϵ)^q``, so Theorem 1's form survives with ``R → R'``.
    Arguments, return value and errors as in :func:`kratsios_upper_bound` (no ``eps`` override).
    """
    T, W, d, D = (check_positive_int(v, n) for v, n in ((T, "T"), (W, "W"), (d, "d"), (D, "D")))
    R = corrected_radius(M, nu, r, T * W + D, theorem1_eps(delta))
    return _theorem1_value(R, r=r, N=N, delta=delta, T=T, W=W, d=d, D=D, theta_pre_inf=theta_pre_inf, c=c)


def first_nonvacuous_N(bound, *, N_max: int = 10**12) -> int | None:
    """The smallest ``N ≤ N_max`` with ``bound(N) < 1`` for a bound that is non-increasing in ``N``
    (bisection on integers), or ``None`` if ``bound(N_max) ≥ 1``.

    ``bound`` : callable ``int -> float``, e.g. ``lambda N: kratsios_upper_bound(N=N, ...)``.
    """
    if not callable(bound):
        raise ValueError(f"bound must be callable, got {type(bound).__name__}")  # pragma: no mutate
    N_max = check_positive_int(N_max, "N_max")
    if bound(N_max) >= 1:
        return None
    lo, hi = 0, N_max                       # bound(lo) ≥ 1 (lo = 0 stands for "none"), bound(hi) < 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bound(mid) < 1:
            hi = mid
        else:
            lo = mid
    return hi


def box_radius(B: torch.Tensor, M: float) -> torch.Tensor:
    """The exact ``sup_{|A_ij| ≤ M} ‖B A‖_∞ = M · max_i Σ_k |B_ik|`` (attained at ``A_kj = M sign B_ik``).

    Parameters
    ----------
    B : ``(..., m, r)`` frozen factor(s); leading dimensions are draws.
    M : box size ``> 0``.

    Returns
    -------
    ``(...)`` tensor. Lemma 4's proof bounds ``|Σ_k B_ik A_kj|`` by ``M |Σ_k B_ik|`` instead, which is too small:
    compare with :func:`lemma4_radius` and :func:`corrected_radius`.
    """
    _finite(B, "B")
    if B.dim() < 2:
        raise ValueError(f"B must have shape (..., m, r), got {tuple(B.shape)}")  # pragma: no mutate
    M = _pos_float(M, "M")
    return M * B.abs().sum(-1).amax(-1)


def corrected_radius(M: float, nu: float, r: int, W: int, eps: float) -> float:
    """A valid high-probability bound on :func:`box_radius` for frozen factors with ``W`` rows in all (one
    ``W × r`` factor, or ``TW + D`` rows over the ``T + 1`` factors of a network) and i.i.d. ``N(0, ν²)`` entries:

    ``R' = M ν (r √(2/π) + √(2 r log(W/ε)))``.

    Each row sum ``Σ_k |B_ik|`` is a ``ν√r``-Lipschitz function of a Gaussian vector with mean ``ν r √(2/π)``, so
    Gaussian concentration and a union bound over the ``W`` rows give probability ``≥ 1 − ε``. It grows like ``r``,
    not like ``√r`` as Lemma 4's ``R`` (:func:`lemma4_radius`) does.

    ``M, ν > 0``; ``r, W`` positive integers; ``ε ∈ (0, 1]``. Returns a float.
    """
    M, nu = _pos_float(M, "M"), _pos_float(nu, "nu")
    r, W = check_positive_int(r, "r"), check_positive_int(W, "W")
    eps = _open01(eps, "eps", right_closed=True)
    return M * nu * (r * math.sqrt(2 / math.pi) + math.sqrt(2 * r * math.log(W / eps)))


# -------------------------------------------------------------------------------------------- gap estimation
def bounded_abs_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The 1-Lipschitz loss with values in ``[0, 1]``: ``min(1, ‖ŷ − y‖_1)`` over the last axis.

    ``pred``, ``y``: ``(..., D)`` of equal shape → ``(...)``.
    """
    _finite(pred, "pred")
    _finite(y, "y")
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have equal shapes, got {tuple(pred.shape)} and {tuple(y.shape)}")  # pragma: no mutate
    return (pred - y).abs().sum(-1).clamp(max=1.0)


def gap_estimate(train_losses: torch.Tensor, test_losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalisation gap of trained models, ``R̂_test − R^N``, and its Monte-Carlo standard error.

    Parameters
    ----------
    train_losses : ``(..., N)`` losses in ``[0, 1]`` on the ``N`` training samples (the empirical risk is exact).
    test_losses : ``(..., n_test)`` losses in ``[0, 1]`` on fresh samples (the risk ``R`` is estimated).

    Returns
    -------
    ``(gap, stderr)``, each ``(...)``: ``mean(test) − mean(train)`` and ``std(test)/√n_test``.
    """
    for t, n in ((train_losses, "train_losses"), (test_losses, "test_losses")):
        _finite(t, n)
        if t.dim() < 1 or t.shape[-1] < 1:
            raise ValueError(f"{n} must have shape (..., n) with n ≥ 1, got {tuple(t.shape)}")  # pragma: no mutate
        if (t < 0).any() or (t > 1).any():
            raise ValueError(f"{n} must lie in [0, 1] (a bounded loss)")  # pragma: no mutate
    if train_losses.shape[:-1] != test_losses.shape[:-1]:
        raise ValueError(f"leading shapes differ: {tuple(train_losses.shape[:-1])} vs {tuple(test_losses.shape[:-1])}")  # pragma: no mutate
    if test_losses.shape[-1] < 2:
        raise ValueError("test_losses needs at least 2 samples for a standard error")  # pragma: no mutate
    gap = test_losses.mean(-1) - train_losses.mean(-1)
    se = test_losses.std(-1) / math.sqrt(test_losses.shape[-1])
    return gap, se


def loglog_slope(x: Sequence[float], runs, *, n_boot: int = 2000, level: float = 0.95,
                 generator: np.random.Generator | None = None) -> tuple[float, float, float]:
    """Fitted exponent ``a`` of ``mean_runs(y) ≈ C x^a`` (least squares on log–log axes), with a bootstrap CI.

    Parameters
    ----------
    x : ``n ≥ 2`` positive, distinct positions.
    runs : ``(n_runs, n)`` array of measurements (single runs may be negative; their means must be positive).
    n_boot : bootstrap resamples of the runs; ``level`` in (0, 1): the confidence level.

    Returns
    -------
    ``(slope, lo, hi)``: the fit on the means and the percentile interval over resampled runs.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(runs.detach().cpu() if isinstance(runs, torch.Tensor) else runs, dtype=float)
    if y.ndim == 1:
        y = y[None]
    if x.ndim != 1 or x.size < 2 or y.ndim != 2 or y.shape[1] != x.size:
        raise ValueError(f"need x of length n ≥ 2 and runs of shape (n_runs, n); got {x.shape} and {y.shape}")  # pragma: no mutate
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and runs must be finite (no NaN)")  # pragma: no mutate
    if np.any(x <= 0) or np.unique(x).size != x.size:
        raise ValueError("x must be positive and distinct")  # pragma: no mutate
    _open01(level, "level")
    n_boot = check_positive_int(n_boot, "n_boot")
    lx = np.log(x)

    def fit(means):
        if np.any(means <= 0):
            return np.nan
        return np.polyfit(lx, np.log(means), 1)[0]

    slope = fit(y.mean(0))
    if not np.isfinite(slope):
        raise ValueError("the mean over runs must be positive at every x to fit a log-log slope")  # pragma: no mutate
    rng = generator if generator is not None else np.random.default_rng(0)
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    boots = np.array([fit(y[i].mean(0)) for i in idx])
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    lo, hi = (np.quantile(boots, [a, 1 - a]) if boots.size else (np.nan, np.nan))
    return float(slope), float(lo), float(hi)


def binomial_exceed_prob(N: int, s, *, p: float = 0.5) -> np.ndarray:
    """``P(s · |K/N − p| > 1/N)`` for ``K ~ Binomial(N, p)``, exactly.

    In Theorem 2's setting (``d = D = 1``, zero biases, so ``f(0) = 0``; ``X ~ Bernoulli(p)`` with ``p = 1/2``,
    ``Y = 0``, loss ``|ŷ − y|``) the gap of a fixed ``f`` is ``|f(1)| · |K/N − p|``, so with a witness ``|f(1)| = s``
    this is a lower bound on ``P(G > 1/N)``. ``s``: scalar or array of non-negative numbers; ``p ∈ [0, 1]``
    (``p = 1``: a constant input, which violates Assumption 1). Returns an array like ``s``.
    """
    from scipy.stats import binom

    N = check_positive_int(N, "N")
    s = np.asarray(s, dtype=float)
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("s must be finite and non-negative")  # pragma: no mutate
    if isinstance(p, bool) or not (isinstance(p, (int, float, np.floating)) and 0 <= p <= 1):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")  # pragma: no mutate
    k = np.arange(N + 1)
    pk = binom.pmf(k, N, p)
    dev = np.abs(k / N - p)                                   # (N+1,)
    hit = s[..., None] * dev > 1.0 / N + 1e-12
    return (hit * pk).sum(-1)


def theorem2_ratio(s, Ns: Sequence[int], *, delta: float, C: float = 3.0, p: float = 0.5) -> float:
    """How far the witnesses ``s`` (one ``|f(1)|`` per draw of the frozen factors, 0 where a draw has no
    admissible witness) satisfy Theorem 2: ``min_N P(G_s > 1/N) / ((1 − δ/2)(1 − C/√N))`` over the ``N`` of ``Ns``
    with ``C/√N < 1``, where ``P(G_s > 1/N) = mean_draws P(s_i |K/N − p| > 1/N)`` (exact over the data,
    :func:`binomial_exceed_prob`; the mean over draws is the probability over the frozen factors).

    A value ``≥ 1`` means the theorem's bound holds at every ``N`` with the ``Θ(1/√N)`` term read as ``C/√N``.
    ``δ ∈ (0, 1)``, ``C > 0``; at least one ``N`` must have ``C/√N < 1``.
    """
    s = np.asarray(s, dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"s must be a non-empty 1-d array of witnesses, got shape {s.shape}")  # pragma: no mutate
    delta = _open01(delta, "delta")
    C = _pos_float(C, "C")
    use = [check_positive_int(N, "N") for N in Ns if C / math.sqrt(N) < 1]
    if not use:
        raise ValueError(f"no N in Ns has C/sqrt(N) < 1 (C = {C}): the bound is trivial there")  # pragma: no mutate
    ratios = [binomial_exceed_prob(N, s, p=p).mean() / ((1 - delta / 2) * (1 - C / math.sqrt(N))) for N in use]
    return float(min(ratios))


def local_slopes(x: Sequence[float], runs, *, n_boot: int = 2000, level: float = 0.95,
                 generator: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local exponents of ``mean_runs(y)`` between consecutive positions:
    ``a_k = (log ȳ_{k+1} − log ȳ_k) / (log x_{k+1} − log x_k)``, with percentile bootstrap intervals over runs.

    Parameters
    ----------
    x : ``n ≥ 2`` positive, increasing positions.
    runs : ``(n_runs, n)`` measurements; their means must be positive at every ``x``.
    n_boot, level : bootstrap resamples of the runs and the interval's level in (0, 1).

    Returns
    -------
    ``(slopes, lo, hi)``, each ``(n − 1,)``. A power law ``C x^a`` has every local slope equal to ``a``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(runs.detach().cpu() if isinstance(runs, torch.Tensor) else runs, dtype=float)
    if y.ndim == 1:
        y = y[None]
    if x.ndim != 1 or x.size < 2 or y.ndim != 2 or y.shape[1] != x.size:
        raise ValueError(f"need x of length n ≥ 2 and runs of shape (n_runs, n); got {x.shape} and {y.shape}")  # pragma: no mutate
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and runs must be finite (no NaN)")  # pragma: no mutate
    if np.any(x <= 0) or np.any(np.diff(x) <= 0):
        raise ValueError("x must be positive and increasing")  # pragma: no mutate
    _open01(level, "level")
    n_boot = check_positive_int(n_boot, "n_boot")
    lx = np.log(x)

    def slopes(means):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diff(np.log(means)) / np.diff(lx)

    means = y.mean(0)
    if np.any(means <= 0):
        raise ValueError("the mean over runs must be positive at every x to take log-log slopes")  # pragma: no mutate
    rng = generator if generator is not None else np.random.default_rng(0)
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    boots = np.stack([slopes(y[i].mean(0)) for i in idx])           # (n_boot, n-1), NaN where a mean ≤ 0
    a = (1 - level) / 2
    lo = np.nanquantile(boots, a, axis=0)
    hi = np.nanquantile(boots, 1 - a, axis=0)
    return slopes(means), lo, hi


def rate_growth(Ns: Sequence[int], runs, *, rate: float = 0.5) -> float:
    """How much ``mean_runs(y)(N) · N^rate`` grows over ``Ns``: ``max_k ȳ_k N_k^rate / (ȳ_0 N_0^rate)``.

    A quantity that is ``O(N^{−rate})`` keeps this bounded; one that decays more slowly makes it grow.
    ``Ns``: ``n ≥ 2`` positive increasing sample sizes; ``runs``: ``(n_runs, n)`` with positive means;
    ``rate > 0``. Returns a float ``≥ 1``.
    """
    x = np.asarray(Ns, dtype=float)
    y = np.asarray(runs.detach().cpu() if isinstance(runs, torch.Tensor) else runs, dtype=float)
    if y.ndim == 1:
        y = y[None]
    if x.ndim != 1 or x.size < 2 or y.ndim != 2 or y.shape[1] != x.size:
        raise ValueError(f"need Ns of length n ≥ 2 and runs of shape (n_runs, n); got {x.shape} and {y.shape}")  # pragma: no mutate
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x <= 0) or np.any(np.diff(x) <= 0):
        raise ValueError("Ns must be positive and increasing, and runs finite")  # pragma: no mutate
    rate = _pos_float(rate, "rate")
    m = y.mean(0)
    if np.any(m <= 0):
        raise ValueError("the mean over runs must be positive at every N")  # pragma: no mutate
    scaled = m * x ** rate
    return float(scaled.max() / scaled[0])


# ----------------------------------------------------------------------------- random-factor MLPs (batched)
def make_mlp(d: int, W: int, T: int, D: int, *, generator: torch.Generator, bias: bool = True,
             dtype: torch.dtype = torch.float64) -> dict:
    """A "pretrained" ReLU MLP ``d → W (×T) → D`` with He-scaled Gaussian weights (drawn on the CPU).

    Returns
    -------
    dict with ``weights``: list of ``T+1`` tensors ``(d_{t+1}, d_t)``, ``biases``: list of ``(d_{t+1},)`` (zeros
    when ``bias=False``), ``dims``: ``[d, W, …, W, D]`` and ``theta_pre_inf`` = ``‖θ_pre‖_∞``.
    """
    d, W, T, D = (check_positive_int(v, n) for v, n in ((d, "d"), (W, "W"), (T, "T"), (D, "D")))
    dims = [d] + [W] * T + [D]
    weights, biases = [], []
    for t in range(T + 1):
        fan_in = dims[t]
        weights.append(torch.randn(dims[t + 1], fan_in, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in))
        b = 0.1 * torch.randn(dims[t + 1], generator=generator, dtype=dtype) if bias else torch.zeros(dims[t + 1], dtype=dtype)
        biases.append(b)
    theta_inf = max(max(w.abs().max().item() for w in weights), max(b.abs().max().item() for b in biases))
    return {"weights": weights, "biases": biases, "dims": dims, "theta_pre_inf": theta_inf}


def _check_mlp(mlp: dict) -> list[int]:
    if not isinstance(mlp, dict) or not {"weights", "biases", "dims"} <= set(mlp):
        raise ValueError("mlp must be a dict from make_mlp (keys weights, biases, dims)")  # pragma: no mutate
    dims = mlp["dims"]
    for t, (w, b) in enumerate(zip(mlp["weights"], mlp["biases"])):
        _finite(w, f"weights[{t}]")
        if w.shape != (dims[t + 1], dims[t]) or b.shape != (dims[t + 1],):
            raise ValueError(f"layer {t} has weight {tuple(w.shape)} / bias {tuple(b.shape)}, expected "  # pragma: no mutate
                             f"({dims[t + 1]}, {dims[t]}) / ({dims[t + 1]},)")  # pragma: no mutate
    return dims


def draw_factors(mlp: dict, r: int, n_draws: int, *, nu: float, generator: torch.Generator,
                 side: str = "B", device: torch.device | None = None) -> list[torch.Tensor]:
    """Frozen random LoRA factors with i.i.d. ``N(0, ν²)`` entries, one per layer, for ``n_draws`` draws.

    ``side="B"``: ``B^{(t)}`` of shape ``(n_draws, d_{t+1}, r)`` (the paper); ``side="A"``: ``A^{(t)}`` of shape
    ``(n_draws, r, d_t)`` (Zhu et al.). Drawn on the CPU with ``generator``, then moved to ``device``.
    ``r`` must lie in ``[1, min over layers of min(d_t, d_{t+1})]``.
    """
    dims = _check_mlp(mlp)
    r, n_draws = check_positive_int(r, "r"), check_positive_int(n_draws, "n_draws")
    nu = _pos_float(nu, "nu")
    if side not in ("A", "B"):
        raise ValueError(f"side must be 'A' or 'B', got {side!r}")  # pragma: no mutate
    dtype = mlp["weights"][0].dtype
    out = []
    for t in range(len(dims) - 1):
        shape = (n_draws, dims[t + 1], r) if side == "B" else (n_draws, r, dims[t])
        out.append((nu * torch.randn(shape, generator=generator, dtype=dtype)).to(device or torch.device("cpu")))
    return out


def lora_mlp_forward(x: torch.Tensor, mlp: dict, Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor]) -> torch.Tensor:
    """Batched LoRA MLP of eq. (2): ``f(x) = (W + BA) x + b`` layer by layer with ReLU between layers.

    Parameters
    ----------
    x : ``(n, d)`` shared inputs or ``(S, n, d)`` one input set per batch slice.
    mlp : from :func:`make_mlp` (weights are broadcast over the batch).
    Bs : ``T+1`` tensors ``(S, d_{t+1}, r)``; As : ``T+1`` tensors ``(S, r, d_t)``.

    Returns
    -------
    ``(S, n, D)`` outputs.
    """
    dims = _check_mlp(mlp)
    L = len(dims) - 1
    if len(Bs) != L or len(As) != L:
        raise ValueError(f"need {L} factors B and A (one per layer), got {len(Bs)} and {len(As)}")  # pragma: no mutate
    S = Bs[0].shape[0]
    for t in range(L):
        if Bs[t].dim() != 3 or As[t].dim() != 3 or Bs[t].shape[0] != S or As[t].shape[0] != S:
            raise ValueError(f"layer {t}: factors must be (S, ., .) with a common S; got {tuple(Bs[t].shape)}, {tuple(As[t].shape)}")  # pragma: no mutate
        if Bs[t].shape[1] != dims[t + 1] or As[t].shape[2] != dims[t] or Bs[t].shape[2] != As[t].shape[1]:
            raise ValueError(f"layer {t}: B {tuple(Bs[t].shape)} and A {tuple(As[t].shape)} do not fit "  # pragma: no mutate
                             f"a ({dims[t + 1]}, {dims[t]}) weight")  # pragma: no mutate
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(S, -1, -1)
    if x.dim() != 3 or x.shape[0] != S or x.shape[2] != dims[0]:
        raise ValueError(f"x must be (n, {dims[0]}) or ({S}, n, {dims[0]}), got {tuple(x.shape)}")  # pragma: no mutate
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite entries")  # pragma: no mutate
    return _forward(x, mlp, Bs, As)


def _forward(x: torch.Tensor, mlp: dict, Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`lora_mlp_forward` without its checks, for inner loops whose inputs were validated once.

    Each layer forms the adapted weight ``W + B A`` ``(S, d_{t+1}, d_t)`` first (tiny: ``d ≤ W``), so a pass costs
    one batched product per layer instead of three; ``x`` ``(S, n, d)`` or ``(n, d)``.
    """
    h = x
    L = len(mlp["weights"])
    for t in range(L):
        w_eff = mlp["weights"][t] + Bs[t] @ As[t]                              # (S, d_{t+1}, d_t)
        if h.dim() == 2:
            h = h.unsqueeze(0).expand(w_eff.shape[0], -1, -1)
        h = torch.baddbmm(mlp["biases"][t][:, None].T.unsqueeze(0), h, w_eff.transpose(1, 2))
        if t < L - 1:
            h = torch.relu(h)
    return h


def train_frozen_factor(mlp: dict, frozen: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor, *,
                        M: float, steps: int, lr: float = 1e-2, side: str = "A", progress: bool | str = False
                        ) -> list[torch.Tensor]:
    """Train the free factor of an asymmetric LoRA MLP on ``(X, Y)`` by batched Adam on the mean squared error,
    projecting onto the box ``|entries| ≤ M`` after every step (Setting 1).

    Parameters
    ----------
    frozen : the frozen factors from :func:`draw_factors` (the ``B`` factors when ``side="A"`` trains ``A``; the
        ``A`` factors when ``side="B"`` trains ``B``), each with leading batch dimension ``S``.
    X : ``(S, N, d)`` (or ``(N, d)`` shared).
    Y : matching ``(S, N, D)`` (or ``(N, D)``).
    M : box size.
    steps, lr : Adam settings.

    Returns
    -------
    The trained factors (zeros at start), ``T+1`` tensors with leading dimension ``S``, detached.
    """
    dims = _check_mlp(mlp)
    M = _pos_float(M, "M")
    if side not in ("A", "B"):
        raise ValueError(f"side must be 'A' (train A, B frozen) or 'B' (train B, A frozen), got {side!r}")  # pragma: no mutate
    _finite(X, "X")
    _finite(Y, "Y")
    if X.shape[:-1] != Y.shape[:-1] or Y.shape[-1] != dims[-1]:
        raise ValueError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} do not match (Y needs last dimension {dims[-1]})")  # pragma: no mutate
    S, r = frozen[0].shape[0], (frozen[0].shape[2] if side == "A" else frozen[0].shape[1])
    dt, dev = frozen[0].dtype, frozen[0].device
    free = []
    for t in range(len(dims) - 1):
        shape = (S, r, dims[t]) if side == "A" else (S, dims[t + 1], r)
        free.append(torch.zeros(shape, dtype=dt, device=dev))

    Bs, As = (frozen, free) if side == "A" else (free, frozen)
    lora_mlp_forward(X[..., :1, :], mlp, Bs, As)                           # validates shapes once

    def loss_fn(step):
        pred = _forward(X, mlp, Bs, As)
        return (pred - Y).square().sum(-1).mean(-1)

    def project():
        for p in free:
            p.clamp_(-M, M)

    batched_adam(free, loss_fn, steps, lr, project=project, progress=progress)
    return [p.detach() for p in free]


def lipschitz_ratio(x: torch.Tensor, mlp: dict, Bs: Sequence[torch.Tensor], A1: Sequence[torch.Tensor],
                    A2: Sequence[torch.Tensor]) -> torch.Tensor:
    """Empirical Lipschitz ratio of the parameter-to-LoRA map: ``‖f_{A1} − f_{A2}‖_∞ / ‖A1 − A2‖_∞``.

    The sup over inputs is taken over the rows of ``x`` ``(n, d)``; parameter distance is the max-entry norm over
    all layers. Shapes as in :func:`lora_mlp_forward`; returns ``(S,)``.
    """
    num = (lora_mlp_forward(x, mlp, Bs, A1) - lora_mlp_forward(x, mlp, Bs, A2)).abs().amax((-1, -2))
    den = torch.stack([(a - b).abs().amax((-1, -2)) for a, b in zip(A1, A2)]).amax(0)
    if (den == 0).any():
        raise ValueError("A1 and A2 coincide in some slice: the ratio is undefined")  # pragma: no mutate
    return num / den


# ------------------------------------------------------------------------- MiniLM's last layer, functional
@torch.no_grad()
def minilm_head_cache(texts: list[str], *, layer: int = 5, max_length: int = 64, batch_size: int = 128,
                      progress: bool = False) -> dict:
    """Cache what MiniLM's last feed-forward output layer (``encoder.layer[5].output.dense``, 1536 → 384) sees.

    Only this layer is adapted, so everything below it is frozen and run once. Snippets are tokenised as in
    :func:`lorabook.data.hidden_before_layer` (truncated to ``max_length`` tokens) but batched by length and padded
    only to the longest snippet of a batch (about 3× cheaper than padding to 64); padding tokens are dropped.

    Returns
    -------
    dict with ``h`` ``(n_tok, 1536)`` (the GELU activations entering the dense layer), ``base`` ``(n_tok, 384)``
    (``W₀h + b`` plus the residual), ``seg`` ``(n_tok,)`` snippet index of each token and ``n`` snippets.
    """
    from tqdm import tqdm

    from .data import attention_bias, load_minilm

    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")  # pragma: no mutate
    tok, model = load_minilm()
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(model.encoder.layer):
        raise ValueError(f"layer must be an integer in [0, {len(model.encoder.layer) - 1}], got {layer!r}")  # pragma: no mutate
    blk = model.encoder.layer[layer]
    lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    hs, bases, segs = [], [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="MiniLM", disable=not progress, leave=False):
        idx = order[i:i + batch_size]
        b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        mb = b["attention_mask"]
        hidden = model.embeddings(input_ids=b["input_ids"], token_type_ids=b.get("token_type_ids"))
        for lower in model.encoder.layer[:layer]:                          # the layers above are not needed
            out = lower(hidden, attention_mask=attention_bias(mb, hidden.dtype))
            hidden = out[0] if isinstance(out, tuple) else out
        att = blk.attention(hidden, attention_mask=attention_bias(mb, hidden.dtype))[0]
        inter = blk.intermediate(att)
        keep = mb.bool()
        hs.append(inter[keep])
        bases.append((blk.output.dense(inter) + att)[keep])
        segs.append(torch.as_tensor(idx)[torch.nonzero(keep)[:, 0]])
    return {"h": torch.cat(hs), "base": torch.cat(bases), "seg": torch.cat(segs), "n": len(texts)}


def init_head_factors(modes: Sequence[str], ranks: Sequence[int], r_max: int, *, d_in: int = 1536, d_out: int = 384,
                      generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict:
    """Initial factors of a batch of LoRA configurations, with :class:`lorabook.lora.LoRALinear`'s conventions.

    ``"both"``: ``A ~ N(0, 1/d_in)``, ``B = 0``; ``"A"``: ``B ~ N(0, 1/r)`` frozen, ``A = 0``; ``"B"``: ``A ~ N(0, 1/d_in)``
    frozen, ``B = 0``. Ranks are padded to ``r_max`` and masked. Returns dict with ``A`` ``(S, r_max, d_in)``,
    ``B`` ``(S, d_out, r_max)``, ``train_A``, ``train_B`` ``(S,)`` 0/1 and ``rank_mask`` ``(S, r_max)``.
    """
    if len(modes) != len(ranks) or len(modes) == 0:
        raise ValueError("modes and ranks must be non-empty and of equal length")  # pragma: no mutate
    r_max = check_positive_int(r_max, "r_max")
    S = len(modes)
    A = torch.zeros(S, r_max, d_in, dtype=dtype)
    B = torch.zeros(S, d_out, r_max, dtype=dtype)
    tA, tB = torch.zeros(S, dtype=dtype), torch.zeros(S, dtype=dtype)
    for i, (m, r) in enumerate(zip(modes, ranks)):
        if m not in MODES:
            raise ValueError(f"mode {m!r} is not one of {MODES}")  # pragma: no mutate
        r = check_positive_int(r, "rank")
        if r > r_max:
            raise ValueError(f"rank={r} is out of range: it must lie in [1, r_max={r_max}]")  # pragma: no mutate
        gA = torch.randn(r_max, d_in, generator=generator, dtype=dtype) / math.sqrt(d_in)
        gB = torch.randn(d_out, r_max, generator=generator, dtype=dtype) / math.sqrt(r)
        if m in ("both", "B"):
            A[i] = gA
        if m == "A":
            B[i] = gB
        tA[i], tB[i] = float(m in ("both", "A")), float(m in ("both", "B"))
    mask = (torch.arange(r_max)[None] < torch.as_tensor(list(ranks))[:, None]).to(dtype)
    return {"A": A, "B": B, "train_A": tA, "train_B": tB, "rank_mask": mask}


def minilm_head_logits(cache: dict, A: torch.Tensor, B: torch.Tensor, rank_mask: torch.Tensor,
                       directions: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-shot logits of MiniLM with ``ΔW = B A`` on its last dense layer, for ``S`` adapters at once.

    Per token: ``LayerNorm(base + B A h)``; then mean pooling per snippet and
    :func:`lorabook.data.zero_shot_logit`. ``A`` ``(S, r, 1536)``, ``B`` ``(S, 384, r)``, ``rank_mask`` ``(S, r)``;
    returns ``(S, n)``. Equals running the layer with a :class:`lorabook.lora.LoRALinear` (``alpha=None``).
    """
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise ValueError(f"A must be (S, r, d_in) and B (S, d_out, r); got {tuple(A.shape)} and {tuple(B.shape)}")  # pragma: no mutate
    if rank_mask.shape != A.shape[:2]:
        raise ValueError(f"rank_mask must have shape {tuple(A.shape[:2])}, got {tuple(rank_mask.shape)}")  # pragma: no mutate
    h, base = cache["h"], cache["base"]
    if A.shape[2] != h.shape[1] or B.shape[1] != base.shape[1]:
        raise ValueError(f"factor sizes {tuple(A.shape)}, {tuple(B.shape)} do not fit the cached layer {h.shape[1]} → {base.shape[1]}")  # pragma: no mutate
    return _head_logits_from_proj(cache, _head_proj(cache, A, rank_mask), B, directions)


def _head_proj(cache: dict, A: torch.Tensor, rank_mask: torch.Tensor) -> torch.Tensor:
    """``P = h Aᵀ`` for ``S`` adapters at once: ``(S, n_tok, r)`` (one GEMM)."""
    S, r = A.shape[:2]
    P = cache["h"] @ (A * rank_mask[..., None]).reshape(S * r, -1).T
    return P.view(-1, S, r).transpose(0, 1)


def _head_logits_from_proj(cache: dict, P: torch.Tensor, B: torch.Tensor,
                           directions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of :func:`minilm_head_logits` from the projections ``P = h Aᵀ`` ``(S, n_tok, r)``."""
    from .data import label_directions, load_minilm

    base, seg, n = cache["base"], cache["seg"], cache["n"]
    _, model = load_minilm()
    ln = model.encoder.layer[-1].output.LayerNorm
    S = P.shape[0]
    z = P @ B.transpose(1, 2)                                                    # (S, n_tok, 384)
    out = torch.nn.functional.layer_norm(base + z, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    pooled = torch.zeros(S, n, out.shape[-1], dtype=out.dtype).index_add_(1, seg, out)
    counts = torch.zeros(n, dtype=out.dtype).index_add_(0, seg, torch.ones_like(seg, dtype=out.dtype))
    pooled = pooled / counts[None, :, None]
    d = label_directions() if directions is None else directions
    e = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (e @ d[0] - e @ d[1]) / 0.05


def _head_prep(cache: dict, chunk: int = 64) -> dict:
    """Per-cache constants of :func:`_head_logits_group` (computed once, stored in ``cache["_prep"]``).

    ``bc`` ``(n_tok, 384)``: ``base`` centred over features; ``vb`` ``(n_tok,)``: its biased variance; ``chunks``:
    snippets sorted by length in groups of ``chunk``, each with a padded token index ``(n_c, L_c)`` (``n_tok`` for
    padding) and the padded ``bc`` ``(n_c, L_c, 384)``; ``order``: the inverse permutation back to snippet order.
    """
    if "_prep" in cache:
        return cache["_prep"]
    from .data import load_minilm

    base, seg, n = cache["base"], cache["seg"], cache["n"]
    ln = load_minilm()[1].encoder.layer[-1].output.LayerNorm
    bc = base - base.mean(-1, keepdim=True)
    counts = torch.bincount(seg, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    tok_order = torch.argsort(seg, stable=True)          # tokens grouped by snippet, in snippet order
    snip = torch.argsort(counts, stable=True)
    bc_ext = torch.cat([bc, torch.zeros(1, bc.shape[1], dtype=bc.dtype)])
    chunks = []
    for i in range(0, n, chunk):
        ids = snip[i:i + chunk]
        L = int(counts[ids].max())
        pos = torch.arange(L)[None]
        idx = torch.where(pos < counts[ids][:, None], tok_order[(starts[ids][:, None] + pos).clamp(max=len(seg) - 1)],
                          torch.full_like(pos, len(seg)))
        chunks.append((idx, bc_ext[idx]))
    prep = {"bc": bc, "vb": bc.square().mean(-1), "counts": counts.to(base.dtype), "chunks": chunks,
            "order": torch.argsort(snip), "gamma": ln.weight.detach(), "beta": ln.bias.detach(), "eps": ln.eps}
    cache["_prep"] = prep
    return prep


def _head_logits_group(cache: dict, Ps: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor],
                       directions: torch.Tensor) -> torch.Tensor:
    """The logits of :func:`_head_logits_from_proj` for several adapters at once, without forming the
    ``(n_tok, 384)`` layer outputs.

    With ``x = base + B p`` per token, LayerNorm needs only ``x − mean(x) = b_c + B_c p`` (``b_c``, ``B_c`` centred over
    features) and its variance ``(|b_c|² + 2 b_cᵀB p + pᵀB_cᵀB_c p)/384``; mean pooling is linear, so the pooled output
    is ``γ ⊙ (Σ_t s_t b_{c,t} + B_c Σ_t s_t p_t)/n_s + β`` with ``s_t = (var_t + eps)^{-1/2}``. The only passes over the
    ``(n_tok, 384)`` activations are ``b_c B`` (all adapters in one product) and the weighted sums ``Σ_t s_t b_{c,t}``
    (one batched product per chunk of snippets), instead of a dozen per adapter. Exact up to rounding.

    ``Ps``: list of ``(n_tok, r_k)``; ``Bs``: list of ``(384, r_k)``; returns ``(len(Ps), n)``.
    """
    prep = _head_prep(cache)
    seg, n, bc = cache["seg"], cache["n"], prep["bc"]
    width = bc.shape[1]
    ranks = [p.shape[1] for p in Ps]
    Bcat = torch.cat(list(Bs), 1)                                                 # (384, R)
    cross = (bc @ Bcat) * torch.cat(list(Ps), 1)                                  # (n_tok, R): b_c·B_k p per column
    s_all, V, Bcs = [], [], []
    for cr, P, B in zip(torch.split(cross, ranks, 1), Ps, Bs):
        Bc = B - B.mean(0, keepdim=True)
        q = ((P @ (Bc.T @ Bc)) * P).sum(1)
        s_t = torch.rsqrt(prep["vb"] + (2 * cr.sum(1) + q) / width + prep["eps"])    # (n_tok,)
        s_all.append(s_t)
        V.append(torch.zeros(n, P.shape[1], dtype=P.dtype).index_add(0, seg, s_t[:, None] * P))
        Bcs.append(Bc)
    S_ext = torch.cat([torch.stack(s_all), torch.zeros(len(Ps), 1, dtype=bc.dtype)], 1)   # (S, n_tok + 1)
    U = torch.cat([torch.bmm(S_ext[:, idx].permute(1, 0, 2), bpad) for idx, bpad in prep["chunks"]])
    U = U[prep["order"]].transpose(0, 1)                                          # (S, n, 384)
    pooled = torch.stack([u + v @ Bc.T for u, v, Bc in zip(U, V, Bcs)])
    pooled = prep["gamma"] * pooled / prep["counts"][None, :, None] + prep["beta"]
    e = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (e @ directions[0] - e @ directions[1]) / 0.05


# --------------------------------------------------------------------------------- the chapter's sweep unit
def teacher_student_gaps(config: dict, *, progress: bool | str = False) -> dict:
    """One teacher–student experiment of the chapter, batched over ``draws`` draws of (data, frozen ``B``).

    ``config`` keys: ``d, W, T, D`` (network), ``r`` (rank), ``N`` (training samples), ``draws``, ``steps``, ``lr``,
    ``M`` (box), ``nu`` (std of ``B``), ``noise`` (label noise std), ``n_test``, ``seed``, ``dtype`` (``"float32"`` or
    ``"float64"``). Optional keys:

    * ``n_data`` and ``n_B`` (together): a crossed layout, ``n_data`` training/test sets × ``n_B`` frozen factors,
      ``draws = n_data · n_B`` ordered data-major (draw ``i`` uses data set ``i // n_B`` and factor ``i % n_B``);
      without them every draw has its own data and factor.
    * ``ascent_steps`` (default 0), ``n_ascent``, ``n_eval``: if ``ascent_steps > 0``, also a lower estimate of the
      uniform gap ``G`` by :func:`uniform_gap_lower` from the trained ``A`` and from ``A = 0``.

    The pretrained network and the teacher (another random MLP) depend only on ``seed``. The learner trains ``A``
    (``|A_ij| ≤ M``) on the squared error; gaps use :func:`bounded_abs_loss`.

    Returns
    -------
    dict of numpy arrays over draws: ``gap`` (trained run, ``R̂_test − R^N``), ``se`` (Monte-Carlo error of the test
    risk), ``train``, ``test`` (risks), ``gap_zero`` (the ``A = 0`` member, against its risk on 200,000 fresh
    samples), ``G_lower`` (only with ascent); plus ``theta_pre_inf`` and ``max_abs_A`` (to check the box).
    """
    need = {"d", "W", "T", "D", "r", "N", "draws", "steps", "lr", "M", "nu", "noise", "n_test", "seed", "dtype"}
    if not isinstance(config, dict) or not need <= set(config):
        raise ValueError(f"config lacks keys {sorted(need - set(config or {}))}")  # pragma: no mutate
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(config["dtype"])
    if dtype is None:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {config['dtype']!r}")  # pragma: no mutate
    from .config import device

    dev = device()
    g = torch.Generator().manual_seed(int(config["seed"]))
    d, W, T, D = config["d"], config["W"], config["T"], config["D"]
    mlp = make_mlp(d, W, T, D, generator=g, dtype=dtype)
    teacher = make_mlp(d, W, T, D, generator=g, dtype=dtype)
    g = torch.Generator().manual_seed(int(config["seed"]) * 7919 + 31 * int(config["N"]) + int(config["r"]))
    S, N = check_positive_int(config["draws"], "draws"), check_positive_int(config["N"], "N")
    crossed = "n_data" in config or "n_B" in config
    if crossed:
        n_data, n_B = check_positive_int(config.get("n_data"), "n_data"), check_positive_int(config.get("n_B"), "n_B")
        if n_data * n_B != S:
            raise ValueError(f"a crossed layout needs draws = n_data * n_B, got {S} != {n_data} * {n_B}")  # pragma: no mutate
    else:
        n_data = n_B = S

    def to(m):
        return {**m, "weights": [w.to(dev) for w in m["weights"]], "biases": [b.to(dev) for b in m["biases"]]}

    mlp_d, teacher_d = to(mlp), to(teacher)

    def zeros(k):
        return ([torch.zeros(k, w.shape[0], 1, dtype=dtype, device=dev) for w in mlp["weights"]],
                [torch.zeros(k, 1, w.shape[1], dtype=dtype, device=dev) for w in mlp["weights"]])

    def sample(n, k):
        X = torch.rand(k, n, d, generator=g, dtype=dtype).to(dev)
        eps = config["noise"] * torch.randn(k, n, D, generator=g, dtype=dtype).to(dev)
        with torch.no_grad():
            return X, lora_mlp_forward(X, teacher_d, *zeros(k)) + eps

    def spread(t):                                   # data sets → draws (data-major)
        return t.repeat_interleave(S // n_data, 0) if crossed else t

    X, Y = (spread(t) for t in sample(N, n_data))
    Xt, Yt = (spread(t) for t in sample(check_positive_int(config["n_test"], "n_test"), n_data))
    Bs = draw_factors(mlp, config["r"], n_B, nu=config["nu"], generator=g, device=dev)
    if crossed:
        Bs = [b.repeat(n_data, 1, 1) for b in Bs]
    As = train_frozen_factor(mlp_d, Bs, X, Y, M=config["M"], steps=config["steps"], lr=config["lr"], progress=progress)
    zero_A = [torch.zeros_like(a) for a in As]
    with torch.no_grad():
        tr = bounded_abs_loss(lora_mlp_forward(X, mlp_d, Bs, As), Y)
        te = bounded_abs_loss(lora_mlp_forward(Xt, mlp_d, Bs, As), Yt)
        gap, se = gap_estimate(tr, te)
        gz = torch.Generator().manual_seed(int(config["seed"]) + 10**6)
        Xr = torch.rand(1, 200_000, d, generator=gz, dtype=dtype).to(dev)
        Yr = lora_mlp_forward(Xr, teacher_d, *zeros(1)) + config["noise"] * torch.randn(
            1, 200_000, D, generator=gz, dtype=dtype).to(dev)
        z1 = [a[:1] for a in zero_A]
        risk_zero = bounded_abs_loss(lora_mlp_forward(Xr, mlp_d, [b[:1] for b in Bs], z1), Yr).mean()
        gap_zero = risk_zero - bounded_abs_loss(lora_mlp_forward(X, mlp_d, Bs, zero_A), Y).mean(-1)
    f = lambda t: t.double().cpu().numpy()
    out = {"gap": f(gap), "se": f(se), "train": f(tr.mean(-1)), "test": f(te.mean(-1)), "gap_zero": f(gap_zero),
           "theta_pre_inf": mlp["theta_pre_inf"], "max_abs_A": max(a.abs().max().item() for a in As)}
    if int(config.get("ascent_steps", 0)) > 0:
        asc = tuple(spread(t) for t in sample(check_positive_int(config["n_ascent"], "n_ascent"), n_data))
        ev = tuple(spread(t) for t in sample(check_positive_int(config["n_eval"], "n_eval"), n_data))
        out["G_lower"] = f(uniform_gap_lower(mlp_d, Bs, [As, zero_A], (X, Y), asc, ev, M=config["M"],
                                             steps=int(config["ascent_steps"]), progress=progress))
    return out


def output_witness(mlp: dict, Bs: Sequence[torch.Tensor], M, *, target: float = 1.0, steps: int = 500,
                   lr: float = 0.05, progress: bool | str = False) -> torch.Tensor:
    """Theorem 2's witness: train ``A`` (``|A_ij| ≤ M``) so that the LoRA MLP has ``|f(1)| ≥ target``
    (projected Adam on the hinge ``max(0, target − |f(1)|)²``).

    For ``d = D = 1`` and zero biases ``f(0) = 0``, so a network with ``|f(1)| = s`` has gap ``s |K/N − 1/2|`` on
    Bernoulli(1/2) inputs with targets 0; ``s ≥ 1`` plays the role of the paper's identity emulation (whose
    pseudo-inverse construction needs ``B B^† = I``, false for a tall ``B``; we optimise instead).

    Parameters
    ----------
    mlp : from :func:`make_mlp` with ``d = D = 1``; Bs : frozen factors ``(S, d_{t+1}, r)``.
    M : box size, scalar or ``(S,)`` tensor (one per draw).
    lr : Adam step size relative to ``M`` (the step of slice ``s`` is ``lr · M_s``, so small boxes are not overshot
        into dead-ReLU regions).

    Returns
    -------
    ``(S,)`` tensor ``s = |f(1)|`` at the trained, admissible ``A``.
    """
    dims = _check_theorem2_mlp(mlp)
    S, r = Bs[0].shape[0], Bs[0].shape[2]
    dt, dev = Bs[0].dtype, Bs[0].device
    Mt = torch.as_tensor(M, dtype=dt, device=dev)
    if Mt.dim() == 0:
        Mt = Mt.expand(S)
    if Mt.shape != (S,) or not torch.isfinite(Mt).all() or (Mt <= 0).any():
        raise ValueError(f"M must be positive: a scalar or a ({S},) tensor")  # pragma: no mutate
    As = [torch.zeros(S, r, dims[t], dtype=dt, device=dev) for t in range(len(dims) - 1)]
    one = torch.ones(1, 1, dtype=dt, device=dev)

    def loss_fn(step):
        return (target - lora_mlp_forward(one, mlp, Bs, As)[:, 0, 0].abs()).clamp(min=0).square()

    def project():
        for a in As:
            torch.minimum(torch.maximum(a, -Mt.view(S, 1, 1)), Mt.view(S, 1, 1), out=a)

    batched_adam(As, loss_fn, steps, lr * Mt, project=project, progress=progress)
    with torch.no_grad():
        return lora_mlp_forward(one, mlp, Bs, [a.detach() for a in As])[:, 0, 0].abs()


def _check_theorem2_mlp(mlp: dict) -> list[int]:
    dims = _check_mlp(mlp)
    if dims[0] != 1 or dims[-1] != 1:
        raise ValueError(f"Theorem 2 needs d = D = 1, got d={dims[0]}, D={dims[-1]}")  # pragma: no mutate
    if any((b != 0).any() for b in mlp["biases"]):
        raise ValueError("Theorem 2's construction needs zero biases (make_mlp(..., bias=False))")  # pragma: no mutate
    return dims


def last_layer_witness(mlp: dict, Bs: Sequence[torch.Tensor], *, target: float = 1.0) -> dict:
    """Theorem 2's witness in closed form, with the last layer alone.

    With ``A^{(t)} = 0`` for ``t ≤ T`` the last hidden state at ``x = 1`` is the pretrained ``h = x^{(T+1)}(1)``.
    The last frozen factor ``B = B^{(T+1)}`` is ``1 × r``, so ``B B^† = 1`` whenever ``B ≠ 0``, and
    ``A^{(T+1)} = B^†(c − W^{(T+1)})`` with ``c = target · hᵀ/‖h‖²`` gives ``W^{(T+1)} + B A^{(T+1)} = c``, hence
    ``f(1) = target`` exactly (and ``f(0) = 0``). The witness lies in the box ``|A_ij| ≤ M`` iff ``size ≤ M``.

    Parameters
    ----------
    mlp : from :func:`make_mlp` with ``d = D = 1`` and zero biases.
    Bs : frozen factors ``(S, d_{t+1}, r)``, ``T + 1`` of them.
    target : the value of ``f(1)`` (``> 0``).

    Returns
    -------
    dict with ``As`` (the witness factors, ``(S, r, d_t)`` each), ``f1`` ``(S,)`` (``f(1)`` at the witness),
    ``size`` ``(S,)`` (``max_ij |A_ij|``; ``inf`` where no witness exists: ``h = 0`` or ``B = 0``).
    """
    dims = _check_theorem2_mlp(mlp)
    target = _pos_float(target, "target")
    L = len(dims) - 1
    if len(Bs) != L:
        raise ValueError(f"need {L} frozen factors, got {len(Bs)}")  # pragma: no mutate
    S, dt, dev = Bs[0].shape[0], Bs[0].dtype, Bs[0].device
    for t, B in enumerate(Bs):
        _finite(B, f"Bs[{t}]")
        if B.dim() != 3 or B.shape[:2] != (S, dims[t + 1]) or B.shape[2] != Bs[0].shape[2]:
            raise ValueError(f"Bs[{t}] must have shape ({S}, {dims[t + 1]}, r), got {tuple(B.shape)}")  # pragma: no mutate
    r = Bs[0].shape[2]
    As = [torch.zeros(S, r, dims[t], dtype=dt, device=dev) for t in range(L)]
    one = torch.ones(1, 1, dtype=dt, device=dev)
    h = one
    for t in range(L - 1):                                       # pretrained hidden state at x = 1
        h = torch.relu(h @ mlp["weights"][t].to(dev).T)
    h = h[0]                                                     # (W,)
    hn = h.square().sum()
    B = Bs[-1][:, 0, :]                                          # (S, r)
    bn = B.square().sum(-1)                                      # (S,)
    ok = (bn > 0) & (hn > 0)
    c = target * h / hn.clamp_min(1e-300)                        # (W,)
    w = mlp["weights"][-1].to(dev)[0]                            # (W,)
    A_last = (B / bn.clamp_min(1e-300)[:, None])[:, :, None] * (c - w)[None, None, :]   # B^† (c − w): (S, r, W)
    As[-1] = torch.where(ok[:, None, None], A_last, torch.zeros_like(A_last))
    with torch.no_grad():
        f1 = lora_mlp_forward(one, mlp, Bs, As)[:, 0, 0]
    size = As[-1].abs().amax((-1, -2))
    size = torch.where(ok, size, torch.full_like(size, math.inf))
    return {"As": As, "f1": f1, "size": size}


def paper_witness(mlp: dict, Bs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The construction of Theorem 2's proof, eq. (25): ``A^{(t)} = B^{(t)†}(Ī − W^{(t)})`` in every layer, with
    ``Ī`` the ``d_{t+1} × d_t`` identity block (``torch.eye``). It emulates ``f(x) = x`` only if every
    ``B^{(t)} B^{(t)†} = I``, which fails for ``B^{(t)} ∈ R^{d_{t+1}×r}`` with ``d_{t+1} > r``.

    ``mlp`` with ``d = D = 1`` and zero biases; ``Bs`` ``(S, d_{t+1}, r)``. Returns ``f(1)`` ``(S,)``
    (``1`` where the construction works).
    """
    dims = _check_theorem2_mlp(mlp)
    if len(Bs) != len(dims) - 1:
        raise ValueError(f"need {len(dims) - 1} frozen factors, got {len(Bs)}")  # pragma: no mutate
    As = []
    for t, B in enumerate(Bs):
        _finite(B, f"Bs[{t}]")
        Wt = mlp["weights"][t].to(B.device)
        eye = torch.eye(dims[t + 1], dims[t], dtype=B.dtype, device=B.device)
        As.append(torch.linalg.pinv(B) @ (eye - Wt))
    one = torch.ones(1, 1, dtype=Bs[0].dtype, device=Bs[0].device)
    with torch.no_grad():
        return lora_mlp_forward(one, mlp, Bs, As)[:, 0, 0]


def uniform_gap_lower(mlp: dict, Bs: Sequence[torch.Tensor], starts: Sequence[Sequence[torch.Tensor]],
                      train: tuple[torch.Tensor, torch.Tensor], ascent: tuple[torch.Tensor, torch.Tensor],
                      evaluation: tuple[torch.Tensor, torch.Tensor], *, M: float, steps: int, lr: float = 0.05,
                      progress: bool | str = False) -> torch.Tensor:
    """A lower estimate of the uniform gap ``G = sup_{|A_ij| ≤ M} |R(f_A) − R^N(f_A)|`` for each draw.

    From each start and for both signs ``σ = ±1``, projected Adam maximises ``σ (R_a(f_A) − R^N(f_A))``, with
    ``R_a`` the mean :func:`bounded_abs_loss` on an *ascent* sample and ``R^N`` on the training sample; the
    result is scored by ``|R_e(f_A) − R^N(f_A)|`` on an independent *evaluation* sample (so the choice of ``A``
    does not bias ``R_e``), and the largest score over starts and signs is returned. Every start is also scored
    before the ascent. The estimate is a lower bound on ``G`` up to the Monte-Carlo error of ``R_e``.

    Parameters
    ----------
    mlp, Bs : as in :func:`lora_mlp_forward` (``S`` draws).
    starts : one or more lists of ``T+1`` factors ``A`` ``(S, r, d_t)`` inside the box.
    train, ascent, evaluation : ``(X, Y)`` pairs, ``X`` ``(S, n, d)``, ``Y`` ``(S, n, D)``.
    M : box size; steps, lr : Adam steps and step size relative to ``M``.

    Returns
    -------
    ``(S,)`` tensor.
    """
    _check_mlp(mlp)
    M = _pos_float(M, "M")
    steps = check_positive_int(steps, "steps")
    if not starts:
        raise ValueError("starts must hold at least one list of factors")  # pragma: no mutate
    for X, Y in (train, ascent, evaluation):
        _finite(X, "X")
        _finite(Y, "Y")

    lora_mlp_forward(train[0][..., :1, :], mlp, Bs, starts[0])               # validates shapes once

    def risk(As, X, Y):
        return (_forward(X, mlp, Bs, As) - Y).abs().sum(-1).clamp(max=1.0).mean(-1)   # bounded_abs_loss

    def score(As):
        with torch.no_grad():
            return (risk(As, *evaluation) - risk(As, *train)).abs()

    best = None
    for A0 in starts:
        if any((a.abs() > M * (1 + 1e-9)).any() for a in A0):
            raise ValueError("every start must lie in the box |A_ij| <= M")  # pragma: no mutate
        best = score(A0) if best is None else torch.maximum(best, score(A0))
        for sign in (1.0, -1.0):
            As = [a.detach().clone() for a in A0]

            def loss_fn(step, As=As, sign=sign):
                return -sign * (risk(As, *ascent) - risk(As, *train))

            def project(As=As):
                for a in As:
                    a.clamp_(-M, M)

            batched_adam(As, loss_fn, steps, lr * M, project=project, progress=progress)
            best = torch.maximum(best, score([a.detach() for a in As]))
    return best


def chapter_setting(scale) -> dict:
    """The synthetic teacher–student setting shared by the chapter's sections (a base config for
    :func:`teacher_student_gaps`; ``r`` and ``N`` are filled in per experiment).

    ``d = 4`` inputs uniform on ``[0, 1]^4``, ``T = 2`` hidden ReLU layers of width ``W = 16``, ``D = 1`` output, frozen
    ``B ~ N(0, 0.5²)``, box ``M = 1``, label noise 0.5, draws and steps from ``scale``. These constants are ours.
    """
    return {
        "d": 4, "W": 16, "T": 2, "D": 1, "M": 1.0, "nu": 0.5, "noise": 0.5, "lr": 2e-2, "seed": 0,
        "dtype": "float32", "draws": scale.pick(quick=16, default=64, paper=256),
        "steps": scale.pick(quick=150, default=300, paper=1000), "n_test": scale.pick(quick=1000, default=4000, paper=20000),
        "version": 1, "scale": scale.name,
    }


def gap_sweep(base: dict, pairs: Sequence[tuple[int, int]], *, progress: bool = True) -> dict:
    """Run :func:`teacher_student_gaps` for each ``(r, N)`` in ``pairs`` (cached on disk by
    :func:`lorabook.train.cached_sweep`, keyed by the full config). Returns ``{(r, N): result}``."""
    from .train import cached_sweep

    pairs = [(int(r), int(N)) for r, N in pairs]
    for r, N in pairs:
        if not 1 <= r < base["W"]:
            raise ValueError(f"rank r={r} is out of range: Setting 1 needs 1 ≤ r < W = {base['W']}")  # pragma: no mutate
        check_positive_int(N, "N")
    configs = [dict(base, r=r, N=N) for r, N in pairs]
    results = cached_sweep("ch3_gaps", configs, teacher_student_gaps, progress=progress)
    return dict(zip(pairs, results))


def _subset_cache(cache: dict, idx: Sequence[int]) -> dict:
    """The tokens of snippets ``idx`` of a :func:`minilm_head_cache` result, renumbered ``0..len(idx)−1``."""
    keep = torch.as_tensor(list(idx), dtype=torch.long)
    tok = torch.isin(cache["seg"], keep)
    remap = torch.full((cache["n"],), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    return {"h": cache["h"][tok], "base": cache["base"][tok], "seg": remap[cache["seg"][tok]], "n": len(keep)}


@functools.lru_cache(maxsize=2)
def minilm_pool(n_per_class: int, n_dev: int, n_test: int, split_seed: int = 0) -> dict:
    """MiniLM features (:func:`minilm_head_cache`) of a balanced Rotten Tomatoes training pool and of disjoint dev
    and test snippets, computed once per process.

    Parameters
    ----------
    n_per_class : training snippets per label; n_dev, n_test : sizes of the dev and test splits (random draws
        from the remaining snippets, so with the corpus' label mix); split_seed : seed of the split.

    Returns
    -------
    dict with ``train``, ``dev``, ``test`` caches, labels ``y_train`` (the ``n_per_class`` positives first),
    ``y_dev``, ``y_test`` (float32 tensors), and the zero-shot balanced errors ``zero_shot`` (dict per split,
    :func:`balanced_error`).
    """
    from .data import rotten_tomatoes_split

    n_dev, n_test = check_positive_int(n_dev, "n_dev"), check_positive_int(n_test, "n_test")
    split = rotten_tomatoes_split(n_per_class, n_dev + n_test, split_seed)
    rest = split["test_texts"]
    out = {"train": minilm_head_cache(split["train_texts"]), "dev": minilm_head_cache(rest[:n_dev]),
           "test": minilm_head_cache(rest[n_dev:]),
           "y_train": torch.as_tensor(split["train_labels"], dtype=torch.float32),
           "y_dev": torch.as_tensor(split["test_labels"][:n_dev], dtype=torch.float32),
           "y_test": torch.as_tensor(split["test_labels"][n_dev:], dtype=torch.float32)}
    zero = init_head_factors(["A"], [1], 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out["zero_shot"] = {k: balanced_error(minilm_head_logits(out[k], zero["A"], zero["B"],
                                                                 zero["rank_mask"])[0], out[f"y_{k}"])
                            for k in ("train", "dev", "test")}
    return out


def balanced_error(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Balanced 0–1 error of ``logits > 0`` against 0/1 labels ``y``: the mean of the two classes' error rates
    (insensitive to the label mix, which differs between a balanced training set and the corpus).

    ``logits``, ``y``: ``(n,)`` tensors; both classes must occur in ``y``.
    """
    if logits.shape != y.shape or logits.dim() != 1:
        raise ValueError(f"logits and y must be equal-length vectors, got {tuple(logits.shape)}, {tuple(y.shape)}")  # pragma: no mutate
    pos = y > 0.5
    if pos.all() or not pos.any():
        raise ValueError("balanced error needs both classes in y")  # pragma: no mutate
    wrong = (logits > 0) != pos
    return 0.5 * (wrong[pos].double().mean().item() + wrong[~pos].double().mean().item())


def minilm_asymmetry_run(config: dict, *, progress: bool | str = False) -> dict:
    """One seed of the real-model experiment: LoRA on MiniLM's last dense layer (1536 → 384) in several
    (mode, rank, learning rate) configurations, trained on the same balanced Rotten Tomatoes snippets and
    evaluated with the 0–1 loss on the training, dev and test splits of :func:`minilm_pool`.

    ``config`` keys: ``pool`` (dict of :func:`minilm_pool`'s arguments), ``seed`` (frozen factors and
    initialisation), ``configs`` (list of ``[mode, rank, lr]``, mode in :data:`MODES`), ``steps`` (full-batch
    Adam steps on the logistic loss of the zero-shot logit), ``m`` (the box of Setting 1 on the scale of the
    update: every *trained* factor is projected after each step onto ``|entries| ≤ m / ν``, with ``ν`` the
    standard deviation its partner has when frozen, i.e. ``|A_ij| ≤ m √r`` and ``|B_ij| ≤ m √d_in``; in mode
    ``"both"`` each factor gets the box it has when trained alone; frozen factors are not boxed).
    Initialisations as :func:`init_head_factors`. Configurations of equal (mode, learning rate) train in one
    program, whose projections ``h Aᵀ`` take one matrix product with the cached activations per pass (with
    ``A`` frozen, mode ``"B"``, they are computed once); a configuration's factors depend only on ``seed``, its
    mode and its rank, and Adam's updates are elementwise, so grouping does not change any result.

    Returns
    -------
    dict with arrays over configs: ``train_err``, ``dev_err``, ``test_err`` (balanced 0–1 errors,
    :func:`balanced_error`), ``train_loss``, ``at_box`` (fraction
    of trained entries on the box's boundary), ``params`` (trainable parameters); the pool's ``zero_shot``
    errors and the ``configs``.
    """
    need = {"pool", "seed", "configs", "steps", "m"}
    if not isinstance(config, dict) or not need <= set(config):
        raise ValueError(f"config lacks keys {sorted(need - set(config or {}))}")  # pragma: no mutate
    pool = minilm_pool(**config["pool"])
    m_box, steps = _pos_float(config["m"], "m"), check_positive_int(config["steps"], "steps")
    configs = [(str(m), int(r), float(lr)) for m, r, lr in config["configs"]]
    if not configs:
        raise ValueError("configs must list at least one [mode, rank, lr]")  # pragma: no mutate
    d_in, d_out = pool["train"]["h"].shape[1], pool["train"]["base"].shape[1]
    n = len(configs)
    res = {k: np.zeros(n) for k in ("train_err", "dev_err", "test_err", "train_loss", "at_box", "params")}
    groups: dict[tuple[str, float], list[int]] = {}
    for i, (m, r, lr) in enumerate(configs):
        if m not in MODES:
            raise ValueError(f"mode {m!r} is not one of {MODES}")  # pragma: no mutate
        check_positive_int(r, "rank")
        groups.setdefault((m, _pos_float(lr, "lr")), []).append(i)
    from .data import label_directions

    y, dirs = pool["y_train"], label_directions()
    for (m, lr), idx in groups.items():          # one program per (mode, lr): a single GEMM with h per pass
        ranks = [configs[i][1] for i in idx]
        As, Bs, limits = [], [], []
        for r in ranks:
            g = torch.Generator().manual_seed(int(config["seed"]) * 1009 + r * 7 + MODES.index(m))
            f = init_head_factors([m], [r], r, d_in=d_in, d_out=d_out, generator=g)
            box = {"A": m_box * math.sqrt(r), "B": m_box * math.sqrt(d_in)}
            As.append(f["A"].clamp(-box["A"], box["A"]) if m == "both" else f["A"])
            Bs.append(f["B"])
            limits.append(box)
        params = Bs if m == "B" else (As if m == "A" else As + Bs)
        lims = ([b["B"] for b in limits] if m == "B" else [b["A"] for b in limits]
                + ([b["B"] for b in limits] if m == "both" else []))

        def projections(cache, As=As, ranks=ranks):
            P = cache["h"] @ torch.cat([a[0] for a in As]).T                  # (n_tok, sum of ranks)
            return [p[None] for p in torch.split(P, ranks, dim=1)]

        P_train = projections(pool["train"]) if m == "B" else None          # A frozen: computed once

        def losses(cache, yy, P=None, As=As, Bs=Bs):
            Ps = projections(cache, As) if P is None else P
            logits = _head_logits_group(cache, [p[0] for p in Ps], [b[0] for b in Bs], dirs)   # (S, n)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yy.expand_as(logits), reduction="none").mean(1)

        def loss_fn(step, y=y, P_train=P_train, losses=losses):
            return losses(pool["train"], y, P_train).sum().reshape(1)

        def project(params=params, lims=lims):
            for p, lim in zip(params, lims):
                p.clamp_(-lim, lim)

        batched_adam(params, loss_fn, steps, lr, project=project,
                     progress=f"{progress} {m}" if isinstance(progress, str) else progress)  # pragma: no mutate
        with torch.no_grad():
            As, Bs = [a.detach() for a in As], [b.detach() for b in Bs]
            for split in ("train", "dev", "test"):
                cache = pool[split]
                Ps = P_train if split == "train" and P_train is not None else projections(cache, As)
                logits = _head_logits_group(cache, [p[0] for p in Ps], [b[0] for b in Bs], dirs)
                for i, lg in zip(idx, logits):
                    res[f"{split}_err"][i] = balanced_error(lg, pool[f"y_{split}"])
            res["train_loss"][idx] = losses(pool["train"], y, P_train, As, Bs).numpy()
            trained = Bs if m == "B" else (As if m == "A" else None)
            for k, i in enumerate(idx):
                own = [trained[k]] if trained is not None else [As[k], Bs[k]]
                own_lim = ([lims[k]] if trained is not None else [limits[k]["A"], limits[k]["B"]])
                on = torch.cat([(p.abs() >= lim * (1 - 1e-6)).reshape(-1) for p, lim in zip(own, own_lim)])
                res["at_box"][i] = on.double().mean().item()
                res["params"][i] = on.numel()
    return {**res, "zero_shot": dict(pool["zero_shot"]), "configs": configs}


def random_feature_probe(pool: dict, ranks: Sequence[int | None], *, seed: int = 0,
                         Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> dict:
    """What a frozen random ``A`` leaves for the trained ``B`` to use, to first order.

    Mode ``"B"`` changes MiniLM's last dense layer by ``B (A h)``: it only sees ``r`` random projections of the
    activations ``h``. This fits a logistic regression on the zero-shot logit plus the ``r`` projections
    ``A h̄`` of the mean-pooled activations (``A ~ N(0, 1/d_in)``, drawn from ``seed``), with the inverse
    regularisation ``C`` chosen from ``Cs`` on the dev split, and reports its balanced test error. ``r = None`` uses
    all ``d_in`` coordinates: what a *learned* projection could reach.

    Parameters
    ----------
    pool : from :func:`minilm_pool`; ranks : positive integers (or ``None``); Cs : positive numbers.

    Returns
    -------
    dict ``{r: test error}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    if not ranks:
        raise ValueError("ranks must be non-empty")  # pragma: no mutate
    if not Cs or any(not (isinstance(c, (int, float)) and c > 0) for c in Cs):
        raise ValueError(f"Cs must be positive numbers, got {Cs!r}")  # pragma: no mutate

    def features(split):
        c = pool[split]
        n, d = c["n"], c["h"].shape[1]
        H = torch.zeros(n, d, dtype=c["h"].dtype).index_add_(0, c["seg"], c["h"])
        cnt = torch.zeros(n, dtype=c["h"].dtype).index_add_(0, c["seg"], torch.ones_like(c["seg"], dtype=c["h"].dtype))
        zero = init_head_factors(["A"], [1], 1, d_in=d, d_out=c["base"].shape[1], generator=torch.Generator())
        with torch.no_grad():
            z = minilm_head_logits(c, zero["A"], zero["B"], zero["rank_mask"])[0]
        return (H / cnt[:, None]).double().numpy(), z.double().numpy(), pool[f"y_{split}"].numpy()

    data = {s: features(s) for s in ("train", "dev", "test")}
    d_in = data["train"][0].shape[1]
    rng = np.random.default_rng(seed)
    out = {}
    for r in ranks:
        if r is None:
            proj = np.eye(d_in)
        else:
            r = check_positive_int(r, "rank")
            proj = rng.standard_normal((d_in, r)) / math.sqrt(d_in)
        X = {s: np.c_[z, H @ proj] for s, (H, z, _) in data.items()}
        mu, sd = X["train"].mean(0), X["train"].std(0) + 1e-12
        X = {s: (v - mu) / sd for s, v in X.items()}
        fits = [LogisticRegression(C=C, max_iter=3000).fit(X["train"], data["train"][2]) for C in Cs]
        err = lambda f, split: 1 - balanced_accuracy_score(data[split][2], f.predict(X[split]))
        best = min(fits, key=lambda f: err(f, "dev"))
        out[r] = float(err(best, "test"))
    return out
