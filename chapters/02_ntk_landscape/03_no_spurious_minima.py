# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ntk-no-spurious)=
# # LoRA gradient descent finds the global minimum
#
# LoRA writes each update as $\delta_p = B_p A_p^\top$ with $B_p \in \R^{m\times r}$, $A_p \in \R^{n\times r}$ and trains
# with weight decay:
#
# $$ \min_{A, B}\ \hat L(BA^\top) + \frac\lambda2\left(\norm{A}_F^2 + \norm{B}_F^2\right). $$
#
# By the factorised nuclear norm ({prf:ref}`lem-nuclear`) its global minimum equals the convex optimum of
# {prf:ref}`thm-ntk-low-rank` as soon as $r$ is at least the rank of a global minimiser. The landscape in $(A, B)$ is
# not convex, yet:
#
# ```{prf:theorem} No spurious local minima (Jang, Lee & Ryu, Theorem 4.1 and Corollary 4.2)
# :label: thm-ntk-no-spurious
# Let $r(r+1)/2 > KN$ and $\lambda > 0$, and add the perturbation $\frac12\operatorname{tr}(Z^\top \mathbf P Z)$,
# $Z = \begin{bmatrix} B\\ A\end{bmatrix}$, with a random positive semi-definite $\mathbf P$ (any absolutely continuous
# law, however small). Then almost surely every second-order stationary point of the perturbed objective is a global
# minimiser of it, and (Corollary 4.2) it is near-optimal for the unperturbed problem when $\mathbf P$ is small.
# ```
#
# Gradient descent from a random start almost surely avoids strict saddles {cite}`lee2016gradient,ge2015escaping`,
# so it should reach the global minimum. We test this on one random linearised problem (squared error, $K = 2$):
#
# 1. the certified convex optimum (relative duality gap $< 10^{-10}$) gives the target value $F^\star$;
# 2. LoRA gradient descent with weight decay from many random initialisations (both factors Gaussian), for every
#    rank around `rank_threshold(K, N)`, all in one batched run; a run *reaches* the optimum when its relative gap
#    $(F - F^\star)/F^\star$ is below a tolerance;
# 3. the perturbed objective for several sizes $\varepsilon = \norm{\mathbf P}_F$.
#
# The perturbation's scale ($\tfrac12$, Frobenius norm) is our convention; the text of our copy of the paper lost it.
# With it, Corollary 4.2 takes a one-line form that we check: if $Z_\varepsilon$ minimises the perturbed objective and
# $Z^\star$ is the balanced factorisation of the convex optimum $\delta^\star$ (so $\norm{Z^\star}_F^2 = 2\norm{\delta^\star}_*$),
# then $F(Z_\varepsilon) \le F(Z_\varepsilon) + \tfrac12\operatorname{tr}(Z_\varepsilon^\top\mathbf PZ_\varepsilon)
# \le F^\star + \tfrac12\norm{\mathbf P}_2\norm{Z^\star}_F^2 \le F^\star + \varepsilon\norm{\delta^\star}_*$.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import ntk, plotting

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
K = 2
N = scale.pick(quick=6, default=10, paper=32)
m = n = scale.pick(quick=8, default=12, paper=24)
n_init = scale.pick(quick=4, default=20, paper=50)
steps = scale.pick(quick=3_000, default=6_000, paper=20_000)
GAP_TOL = scale.pick(quick=1e-5, default=1e-5, paper=1e-6)  # "reached the optimum" (ours)
LR, INIT_STD, LAM_FRAC = 0.5, 0.3, 0.1

torch_gen, _ = lb.seed_everything(4)
base = ntk.synthetic_problem(N, K, m, n, 0.0, generator=torch_gen)
prob = ntk.LinearisedProblem(base.G, base.f0, base.y, LAM_FRAC * base.lambda_max())
opt = ntk.proximal_gradient(prob, 100_000, tol=1e-10)
F_star, rank_star = opt.cert.primal, lb.numerical_rank(opt.delta[0], rtol=1e-7)
r_th = ntk.rank_threshold(K, N)
ranks = list(range(1, r_th + 3))
print(
    f"KN = {K * N}, threshold r = {r_th}, rank of the convex optimum = {rank_star}, "
    f"relative duality gap = {opt.cert.rel_gap:.1e}"
)

# %%
B0, A0, rk = ntk.lora_init(
    prob.shape, ranks, n_init, init_std=INIT_STD, zero_B=False, generator=torch_gen
)
run = ntk.lora_gd(
    prob, B0, A0, rk, steps, LR, record_every=50, progress="LoRA GD (ranks × inits)"
)
gap = ((run.objective - F_star) / F_star).numpy().reshape(len(ranks), n_init)
reached = (gap < GAP_TOL).mean(1)
# runs that share a rank but end at different values would be distinct local minima (or
# unfinished runs)
spread = gap.max(1) - gap.min(1)

# %% [markdown]
# The ε-perturbed objective at the threshold rank, fresh random $\mathbf P$ per initialisation:

# %%
eps_list = scale.pick(
    quick=[1e-2, 1e-1], default=[1e-3, 1e-2, 1e-1, 3e-1], paper=[1e-4, 1e-3, 1e-2, 1e-1, 3e-1]
)
n_pert = scale.pick(quick=3, default=8, paper=20)
Bp, Ap, rkp = ntk.lora_init(
    prob.shape,
    [r_th] * len(eps_list),
    n_pert,
    init_std=INIT_STD,
    zero_B=False,
    generator=torch_gen,
)
Pm = torch.cat([ntk.random_psd(m + n, e, n_pert, generator=torch_gen) for e in eps_list])
pert = ntk.lora_gd(prob, Bp, Ap, rkp, steps, LR, perturbation=Pm, progress="perturbed LoRA GD")
excess = (pert.objective - F_star).numpy().reshape(len(eps_list), n_pert)
dist = (pert.delta - opt.delta).flatten(1).norm(dim=1).numpy().reshape(
    len(eps_list), n_pert
) / opt.delta.norm().item()
cor_bound = np.array(eps_list) * float(prob.nuclear(opt.delta))

# %%
fig, ax = plotting.subplots(3, width=4.3)
ax[0].plot(
    ranks,
    reached,
    "o-",
    color=plotting.COLORS["lora"],
    label=f"LoRA GD, {n_init} random inits",
)
plotting.mark_threshold(ax[0], r_th, label=r"threshold: smallest $r$ with $r(r+1)/2 > KN$")
ax[0].axvline(
    rank_star,
    color=plotting.COLORS["full"],
    linestyle=":",
    label=r"rank of convex optimum $\delta^\star$",
)
ax[0].set(
    xlabel="LoRA rank $r$",
    ylabel="fraction reaching the optimum",
    title="reaching the global minimum",
    ylim=(-0.05, 1.05),
)
ax[0].legend(loc="center right", fontsize=7)
for j, r in enumerate(ranks):
    ax[1].scatter(
        np.full(n_init, r) + np.linspace(-0.2, 0.2, n_init),
        np.maximum(gap[j], 1e-12),
        s=8,
        color=plotting.COLORS["lora"],
        label="one initialisation" if j == 0 else None,
    )
ax[1].axhline(GAP_TOL, color=plotting.COLORS["theory"], linestyle="--", label="tolerance")
plotting.mark_threshold(ax[1], r_th, label="threshold")
ax[1].set(
    yscale="log",
    xlabel="LoRA rank $r$",
    ylabel=r"$(F - F^\star)/F^\star$ after GD",
    title="final gap per run",
)
ax[1].legend(fontsize=7)
plotting.band(
    ax[2],
    eps_list,
    excess.T,
    label=r"excess $F(Z_\varepsilon) - F^\star$",
    color=plotting.COLORS["lora"],
)
plotting.band(
    ax[2],
    eps_list,
    dist.T,
    label=r"$\|\delta_\varepsilon-\delta^\star\|_F/\|\delta^\star\|_F$",
    color=plotting.COLORS["other"],
    marker="s",
)
ax[2].plot(eps_list, cor_bound, "k--", label=r"bound $\varepsilon\|\delta^\star\|_*$")
ax[2].set(
    xscale="log",
    yscale="log",
    xlabel=r"perturbation size $\varepsilon = \|\mathbf{P}\|_F$",
    ylabel="value",
    title=f"ε-perturbed loss at r = {r_th}",
)
ax[2].legend(fontsize=7)
fig.suptitle(f"Theorem 4.1: N = {N}, K = {K}, {m}×{n} update, λ = {LAM_FRAC}·λ_max")
fig.tight_layout()

# %% [markdown]
# *What to see:* at and above the threshold every initialisation reaches the certified optimum. Below it the
# theorem says nothing: ranks at least $\rank\delta^\star$ still reach it (the threshold is sufficient, not
# necessary), while ranks below $\rank\delta^\star$ cannot, by construction; there the rank-constrained runs end at
# the values printed below. Where the runs of one rank end at *different* values with vanishing gradients, those are
# spurious local minima of the rank-constrained problem: the number of distinct end values per rank is printed
# below. At `default` the 20 rank-1 runs end at three distinct values, between 0.034 and 0.19 above $F^\star$
# (relative), and the rank-2 runs at one (rank 2 is still below $\rank\delta^\star = 3$); at `quick` the rank-1
# runs end at two values. The next section shows on smaller instances that such end points are strict local
# minima, not unfinished runs. The
# perturbed runs stay within the Corollary 4.2 bound, and their distance to $\delta^\star$ shrinks with $\varepsilon$.

# %% tags=["nbval-ignore-output"]
for j, (r, f, g_min, s) in enumerate(zip(ranks, reached, gap.min(1), spread)):
    ends = np.sort(gap[j])
    n_values = 1 + int((np.diff(ends) > 1e-3 * np.maximum(ends[1:], 1e-12) + GAP_TOL).sum())
    note = "  (below rank δ*: cannot reach F*)" if r < rank_star else ""
    print(
        f"r = {r:2d}: reached {f:4.0%}, best gap {g_min:.1e}, spread {s:.1e}, "
        f"distinct end values {n_values}{note}"
    )

# %% tags=["nbval-check-output"]
# Tolerances: "reached" is the scale's relative gap GAP_TOL (what gradient descent reaches in
# its step budget);
# the dual bound and the Corollary 4.2 bound are held to rounding (1e-9 relative, 1e-6 of the
# bound).
above = [j for j, r in enumerate(ranks) if r >= r_th]
lb.claim(
    "every initialisation with r(r+1)/2 > KN reaches the certified optimum (largest relative "
    "gap)",
    float(gap[above].max()),
    "<=",
    GAP_TOL,
    kind="theorem",
    label="Jang et al., Theorem 4.1",
    control=(
        "test_controls_ch2.py::test_theorem41_fails_below_threshold",
        "test_controls_ch2.py::test_theorem41_above_threshold_passes",
    ),
)
lb.claim(
    "no LoRA run goes below the certified dual bound (smallest (F - dual)/F*)",
    float(((run.objective - opt.cert.dual) / abs(F_star)).min()),
    ">=",
    -1e-9,
    kind="sanity",
)
if rank_star > 1:
    lb.claim(
        "ranks below rank(delta*) stay above the optimum (smallest relative gap)",
        float(gap[: rank_star - 1].min()),
        ">",
        GAP_TOL,
        kind="sanity",
    )
lb.claim(
    "perturbed runs are within eps * ||delta*||_* of the optimum (largest excess / bound)",
    float((excess / cor_bound[:, None]).max()),
    "<=",
    1 + 1e-6,
    kind="sanity",
)
lb.claim(
    "perturbed runs are not below the optimum (smallest excess / F*)",
    float(excess.min() / F_star),
    ">=",
    -1e-9,
    kind="sanity",
)
lb.claim(
    "the perturbed solution approaches delta* as eps shrinks (median distance, "
    "smallest/largest eps)",
    float(np.median(dist[0]) / np.median(dist[-1])),
    "<",
    1,
    kind="sanity",
)

# %% [markdown]
# ## Below the threshold: spurious minima, and what the Hessian says
#
# On the instance above $\rank\delta^\star = 3$ sits well below the threshold, so ranks between the two reach the
# optimum too and the check above cannot tell the theorem's condition $r(r+1)/2 > KN$ from $r \ge \rank\delta^\star$.
# We therefore add smaller instances ($K = 2$, $N = 6$, $8\times 8$ updates, $\lambda = 0.1\,\lambda_{\max}$,
# threshold $r = 5$) on which low ranks end at **spurious local minima**: runs of one rank that end at different
# values with a vanishing gradient. For every end point we compute the full Hessian of the LoRA objective
# ({py:func}`lorabook.ntk.second_order`, exact, by `torch.func.hessian`) to see whether it is a true local minimum or
# a saddle, and the ratio $\norm{\nabla\hat L(BA^\top)}_2/\lambda$: given first-order stationarity, the convex
# problem's optimality condition holds exactly when it is $\le 1$. An end point is *spurious* when its value exceeds
# the best end value of its rank on that instance by more than $10^{-3}$ (relative; runs that are merely unfinished
# after the step budget spread by about $10^{-6}$).

# %%
SP_K, SP_N, SP_M = 2, 6, 8
# instances 0-7 were screened at default: on 5 and 7 the rank-1 runs need more than 3,000 steps
# to converge (gradient ≈1e-6), so `default` shows four of the others and `paper` all eight
sp_seeds = scale.pick(quick=[0], default=[0, 3, 4, 6], paper=list(range(8)))
sp_init = scale.pick(quick=4, default=10, paper=30)
SP_STEPS = scale.pick(quick=3_000, default=3_000, paper=20_000)
# relative excess over the best end value of the rank (ours): far above the ≈1e-6 spread that
# unfinished runs show within the step budget
SPUR_TOL = 1e-3
sp_thr = ntk.rank_threshold(SP_K, SP_N)
sp_ranks = list(range(1, sp_thr + 2))
rows, padded = [], []
for seed in sp_seeds:
    g_sp = torch.Generator().manual_seed(seed)
    b_sp = ntk.synthetic_problem(SP_N, SP_K, SP_M, SP_M, 0.0, generator=g_sp)
    p_sp = ntk.LinearisedProblem(b_sp.G, b_sp.f0, b_sp.y, LAM_FRAC * b_sp.lambda_max())
    o_sp = ntk.proximal_gradient(p_sp, 100_000, tol=1e-10)
    Bs, As, rks = ntk.lora_init(
        p_sp.shape, sp_ranks, sp_init, init_std=INIT_STD, zero_B=False, generator=g_sp
    )
    r_sp = ntk.lora_gd(p_sp, Bs, As, rks, SP_STEPS, LR, progress=f"instance {seed}")
    F_sp = o_sp.cert.primal
    gaps_sp = ((r_sp.objective - F_sp) / F_sp).numpy()
    for s, r in enumerate(rks.tolist()):
        so = ntk.second_order(p_sp, r_sp.B[s, ..., :r], r_sp.A[s, ..., :r])
        best = gaps_sp[rks.numpy() == r].min()
        rows.append(
            dict(
                seed=seed, r=r, gap=gaps_sp[s], over_best=gaps_sp[s] - best,
                grad=so.grad_norm, hmin=so.hess_min / p_sp.lam,
                hfree=so.hess_min_free / p_sp.lam,
                op=so.grad_op_over_lam, zmin=so.z_sigma_min,
                rank_star=lb.numerical_rank(o_sp.delta[0], rtol=1e-7),
            )
        )
    # Lemma 4.3's escape direction: the worst rank-1 end and the best end of rank sp_thr, each
    # given one zero column (rank-deficient Z, same delta)
    r1 = np.flatnonzero(rks.numpy() == 1)
    rt = np.flatnonzero(rks.numpy() == sp_thr)
    worst1, best_t = r1[gaps_sp[r1].argmax()], rt[gaps_sp[rt].argmin()]
    for kind_, s in (("spurious", worst1), ("global", best_t)):
        r = int(rks[s])
        Bz, Az = ntk.pad_zero_column(r_sp.B[s, ..., :r], r_sp.A[s, ..., :r])
        so = ntk.second_order(p_sp, Bz, Az)
        padded.append(
            dict(
                seed=seed, kind=kind_, gap=gaps_sp[s], grad=so.grad_norm, hmin=so.hess_min,
                predicted=p_sp.lam * (1 - so.grad_op_over_lam), lam=p_sp.lam,
                zmin=so.z_sigma_min,
            )
        )
import pandas as pd  # noqa: E402

tab = pd.DataFrame(rows)
tab["spurious"] = tab.over_best > SPUR_TOL
pad = pd.DataFrame(padded)

# %%
fig, ax = plotting.subplots(2, width=4.6)
for j, r in enumerate(sp_ranks):
    t = tab[tab.r == r]
    x = r + np.linspace(-0.25, 0.25, len(t))
    ax[0].scatter(
        x, np.maximum(t.gap, 1e-16), s=10,
        c=[plotting.COLORS["other"] if s else plotting.COLORS["lora"] for s in t.spurious],
        label=None,
    )
ax[0].scatter([], [], s=10, color=plotting.COLORS["lora"], label="end point")
ax[0].scatter(
    [], [], s=10, color=plotting.COLORS["other"], label="spurious (above best of its rank)"
)
plotting.mark_threshold(ax[0], sp_thr, label="threshold")
ax[0].set(
    yscale="log", xlabel="LoRA rank $r$", ylabel=r"$(F - F^\star)/F^\star$",
    title=f"{len(sp_seeds)} instance(s) × {sp_init} inits",
)
ax[0].legend(fontsize=7)
t1 = tab[tab.r == 1]
ax[1].scatter(t1.gap, t1.hmin, s=12, color=plotting.COLORS["lora"], label="rank-1 end points")
ax[1].axhline(0, color="k", lw=0.6)
ax[1].set(
    xlabel=r"$(F - F^\star)/F^\star$", ylabel=r"smallest Hessian eigenvalue / $\lambda$",
    title="rank 1: all end points are strict local minima",
)
ax[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* every run at or above the threshold reaches $F^\star$. Below it, the rank-1 runs of each instance
# end at several values (printed below) and the higher ones are **spurious local minima**: the gradient vanishes to
# rounding and the Hessian is positive definite (rank 1 has no continuous symmetry), so they are strict local minima,
# not saddles that gradient descent failed to leave. From rank 2 on no spurious end point was found, below the
# threshold included: the threshold is sufficient, not necessary. (On an instance with $\rank\delta^\star = 3$
# the rank-2 runs cannot reach $F^\star$, and at `default` all of them end at one value, the best rank-2 one.) At every
# spurious point $\norm{\nabla\hat L}_2 > \lambda$ — the convex optimality condition fails, which is why it is not
# global.

# %% tags=["nbval-ignore-output"]
for (seed, r), t in tab.groupby(["seed", "r"]):
    ends = np.unique(np.round(t.gap.to_numpy(), 3))
    print(
        f"instance {seed} (rank δ* = {t.rank_star.iloc[0]}), r = {r}: end values (F-F*)/F* "
        f"{ends if r < 3 else f'max {t.gap.max():.1e}'}, spurious {int(t.spurious.sum())}/"
        f"{len(t)}, |grad| ≤ {t.grad.max():.0e}, min Hessian eig/λ {t.hmin.min():.2e}, "
        f"‖∇L̂‖₂/λ ∈ [{t.op.min():.3f}, {t.op.max():.3f}]"
    )

# %% tags=["nbval-check-output"]
# Tolerances: the gradient at the rank-1 ends is at rounding (≈1e-16; we ask 1e-10); Hessian
# eigenvalues are computed to ≈1e-12, so a smallest eigenvalue above 1e-6 λ is a positive one.
sp_above = tab[tab.r >= sp_thr]
lb.claim(
    "on the small instances every run with r(r+1)/2 > KN reaches the certified optimum "
    "(largest relative gap)",
    float(sp_above.gap.max()),
    "<=",
    GAP_TOL,
    kind="theorem",
    label="Jang et al., Theorem 4.1",
    control=(
        "test_controls_ch2.py::test_theorem41_fails_below_threshold",
        "test_controls_ch2.py::test_theorem41_above_threshold_passes",
    ),
)
spur = tab[tab.spurious]
lb.claim(
    "below the threshold rank-1 runs end at spurious local minima (number of spurious ends)",
    int((spur.r == 1).sum()),
    ">=",
    1,
    kind="sanity",
)
lb.claim(
    "the spurious ends are first-order stationary (largest gradient norm)",
    float(spur.grad.max()),
    "<=",
    1e-10,
    kind="sanity",
)
lb.claim(
    "every rank-1 end, spurious or not, is a strict local minimum (smallest Hessian "
    "eigenvalue / lambda)",
    float(tab[tab.r == 1].hmin.min()),
    ">=",
    1e-6,
    kind="sanity",
)
lb.claim(
    "at every spurious end the convex optimality condition fails (smallest ||grad L||_2 / "
    "lambda)",
    float(spur.op.min()),
    ">",
    1 + 1e-6,
    kind="sanity",
)

# %% [markdown]
# ## The mechanism of the proof: rank-deficient second-order points are global
#
# ```{prf:lemma} Jang, Lee & Ryu, Lemmas 4.3 and 4.4 (Haeffele et al., Theorem 2)
# :label: lem-ntk-rank-deficient
# :nonumber:
# :class: paper
# If $Z = \begin{bmatrix}B\\ A\end{bmatrix}$ is a second-order stationary point of the (perturbed) LoRA objective and
# $Z$ is rank-deficient, then $BA^\top$ is a global minimum.
# ```
#
# Theorem 4.1 follows because, for $r(r+1)/2 > KN$ and almost every perturbation, every second-order stationary
# point is rank-deficient. The lemma's mechanism is explicit: if a column of $Z$ is zero, moving it along the top
# singular pair $(u, v)$ of $\nabla\hat L(BA^\top)$ (as $b = -tu$, $a = tv$) changes the objective by
# $t^2(\lambda - \norm{\nabla\hat L}_2)$, so second-order stationarity forces $\norm{\nabla\hat L}_2 \le \lambda$, which
# with first-order stationarity is the convex optimality condition. We check it three ways:
#
# 1. every end point above whose $Z$ is rank-deficient ($\sigma_{\min}(Z)/\sigma_{\max}(Z) \le 10^{-3}$) and
#    approximately second-order stationary (gradient $\le 10^{-4}$, smallest Hessian eigenvalue $\ge -10^{-5}\lambda$)
#    is global;
# 2. appending a zero column to a spurious rank-1 minimum gives a rank-deficient *first*-order stationary point of the
#    rank-2 problem that is not global; the lemma says it cannot be second-order stationary, and its smallest Hessian
#    eigenvalue is exactly $\lambda - \norm{\nabla\hat L}_2 < 0$ (the new column's block decouples);
# 3. the same padding of a global end point gives smallest eigenvalue $\lambda - \norm{\nabla\hat L}_2 = 0$.

# %%
deficient = tab[(tab.zmin <= 1e-3) & (tab.grad <= 1e-4) & (tab.hmin >= -1e-5)]
spad, gpad = pad[pad.kind == "spurious"], pad[pad.kind == "global"]

# %% tags=["nbval-ignore-output"]
print(
    f"rank-deficient approximate SOSPs: {len(deficient)} of {len(tab)} end points, "
    f"largest gap {deficient.gap.max():.1e}"
)
print(pad.to_string(float_format=lambda v: f"{v:.3g}"))

# %% tags=["nbval-check-output"]
# Tolerances: the escape-direction identity is exact up to the Hessian's rounding (≈1e-12
# relative to lambda); "global" is the page's GAP_TOL; the padded global end points are held
# to the same -1e-5 λ as the approximate SOSPs (on slowly converging instances ||grad L||_2
# exceeds lambda by ≈1e-6 after the step budget).
lb.claim(
    "every rank-deficient second-order stationary end point is a global minimum (largest "
    "relative gap)",
    float(deficient.gap.max()),
    "<=",
    GAP_TOL,
    kind="theorem",
    label="Jang et al., Lemma 4.3",
    control=(
        "test_controls_ch2.py::test_lemma43_fails_without_second_order",
        "test_controls_ch2.py::test_lemma43_rank_deficient_sosp_passes",
    ),
)
lb.claim(
    "rank-deficient SOSPs were found (count)",
    len(deficient),
    ">=",
    len(sp_seeds),
    kind="sanity",
)
lb.claim(
    "a zero column added to a spurious minimum is an escape direction: smallest Hessian "
    "eigenvalue = lambda - ||grad L||_2 (largest deviation / lambda)",
    float(((spad.hmin - spad.predicted).abs() / spad.lam).max()),
    "<=",
    1e-10,
    kind="sanity",
)
lb.claim(
    "that eigenvalue is negative: the padded spurious point is a strict saddle (largest "
    "(lambda - ||grad L||_2) / lambda)",
    float((spad.predicted / spad.lam).max()),
    "<",
    -1e-3,
    kind="sanity",
)
lb.claim(
    "padding a global end point leaves no negative curvature (smallest Hessian eigenvalue / "
    "lambda)",
    float((gpad.hmin / gpad.lam).min()),
    ">=",
    -1e-5,
    kind="sanity",
)
