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
# (ntk-low-rank)=
# # Low-rank global minimisers exist
#
# In the NTK regime fine-tuning $P$ weight matrices is the convex problem
#
# $$ \min_{\delta}\ \hat L(\delta) + \lambda \sum_p \norm{\delta_p}_*, \qquad
#    \hat L(\delta) = \frac1N\sum_{i=1}^N \ell\big(f(W_0; x_i) + \langle G_i, \delta\rangle,\ y_i\big),
#    \qquad G_i \in \R^{K\times P\times m\times n}, $$
#
# where $\langle G_i,\delta\rangle \in \R^K$ and $\lambda \ge 0$. Its global minimisers are usually not unique when
# $\lambda = 0$, and the obvious ones (the minimum-Frobenius-norm interpolant) have full rank. Jang, Lee & Ryu
# {cite}`jang2024lora` show that a *low-rank* one always exists.
#
# ```{prf:theorem} Low-rank solutions exist (Jang, Lee & Ryu, Theorem 3.1)
# :label: thm-ntk-low-rank
# If the linearised problem has a global minimiser, it has one of rank $r$ with $r(r+1)/2 \le KN$ (for
# $P$ matrices: $\sum_p r_p(r_p+1)/2 \le KN$), i.e. $r \lesssim \sqrt{2KN}$.
# ```
#
# The proof is constructive, in the style of Barvinok and Pataki {cite}`barvinok1995problems,pataki1998rank`.
# Write $\delta = U S V^\top$ (rank $r$) and move along $\delta(t) = U S^{1/2}(I + t\Delta)S^{1/2}V^\top$ with a
# symmetric $\Delta$ that keeps every output $\langle G_i, \delta(t)\rangle$: these are $KN$ linear conditions on
# $r(r+1)/2$ unknowns, so such a $\Delta \neq 0$ exists while the bound fails. The outputs do not move, the
# trace of the PSD lift $\begin{bmatrix} US^{1/2}\\ VS^{1/2}\end{bmatrix}(I+t\Delta)\begin{bmatrix} US^{1/2}\\ VS^{1/2}\end{bmatrix}^{\!\top}$
# (an upper bound of $2\norm{\delta(t)}_*$) does not increase for the right sign of $t$, and at the first $t$ where
# $I + t\Delta$ becomes singular the rank drops. `lorabook.ntk.reduce_rank` iterates this step.
#
# We test it on random linearised problems (Gaussian $G$, squared error, $K = 2$ outputs, $m\times n$ matrices)
# over a range of $KN$, in two settings: $\lambda = 0$ starting from the full-rank minimum-norm interpolant,
# and $\lambda > 0$ starting from the certified convex optimum (FISTA {cite}`beck2009fista` with singular-value
# soft-thresholding {cite}`cai2010svt`, stopped at a relative duality gap below $10^{-9}$).

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import ntk, plotting
from lorabook.train import cached_sweep

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
K = 2
m = n = scale.pick(quick=10, default=16, paper=32)
Ns = scale.pick(quick=[1, 3, 6, 12], default=[1, 2, 3, 5, 8, 12, 17, 24, 32], paper=[1, 2, 4, 8, 16, 32, 64, 100, 150])
seeds = scale.pick(quick=2, default=3, paper=10)
LAM_FRAC = 0.1           # λ = 0.1·λ_max, λ_max = the smallest λ with δ* = 0 (our choice)
GAP_TOL = 1e-9


def run(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    base = ntk.synthetic_problem(cfg["N"], K, m, n, 0.0, generator=gen)
    # λ = 0: from the minimum-norm interpolant
    d0 = ntk.min_norm_interpolant(base)
    r0, _ = ntk.reduce_rank(base, d0)
    # λ > 0: from the certified optimum
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, LAM_FRAC * base.lambda_max())
    sol = ntk.proximal_gradient(prob, 50_000, tol=GAP_TOL)
    r1, _ = ntk.reduce_rank(prob, sol.delta, rtol=1e-7)
    rank = lambda d: lb.numerical_rank(d[0], rtol=1e-7)  # noqa: E731
    return {
        "rank_interp": rank(d0), "rank_interp_red": rank(r0),
        "out_err": float((base.outputs(r0) - base.outputs(d0)).abs().max() / base.y.abs().max()),
        "nuc_interp": float(base.nuclear(d0)), "nuc_interp_red": float(base.nuclear(r0)),
        "rank_opt": rank(sol.delta), "rank_opt_red": rank(r1), "rel_gap": sol.cert.rel_gap,
        "obj_change": float((prob.objective(r1) - sol.cert.primal) / sol.cert.primal),
    }


configs = [{"N": N, "seed": s, "m": m, "K": K, "lam_frac": LAM_FRAC, "scale": scale.name, "v": 1}
           for N in Ns for s in range(seeds)]
res = cached_sweep("ntk_low_rank", configs, run)
get = lambda key: np.array([r[key] for r in res], dtype=float).reshape(len(Ns), seeds)  # noqa: E731
KN = K * np.array(Ns)
bound = np.array([ntk.pataki_rank(K, int(N)) for N in Ns])

# %%
fig, ax = plotting.subplots(2, width=4.6, sharey=True)
for a, (before, after, title) in zip(ax, [("rank_interp", "rank_interp_red", r"$\lambda = 0$: minimum-norm interpolant"),
                                         ("rank_opt", "rank_opt_red", r"$\lambda > 0$: certified optimum")]):
    plotting.band(a, KN, get(before).T, label="before reduction", color=plotting.COLORS["full"])
    plotting.band(a, KN, get(after).T, label="after reduction", color=plotting.COLORS["lora"], marker="s")
    a.plot(KN, bound, "x--", color=plotting.COLORS["theory"], label=r"largest $r$ with $r(r+1)/2 \leq KN$")
    a.set(xscale="log", xlabel="$KN$ (outputs × samples)", ylabel="rank of the global minimiser", title=title)
    a.set_xticks(KN, [str(k) for k in KN], minor=False)
    a.minorticks_off()
    a.legend(loc="upper left")
fig.suptitle(f"Theorem 3.1 on random linearised problems ({m}×{m} matrices, K = {K}, {seeds} seeds per N)")
fig.tight_layout()

# %% [markdown]
# *What to see:* the interpolant has full rank $\min(m, n)$ whatever $KN$; after reduction every global
# minimiser sits on or below the dashed Pataki curve. With $\lambda > 0$ the certified optimum (unique for generic
# data) already satisfies the bound, so the reduction has nothing to do — the nuclear norm itself selects a
# low-rank solution, well below the bound at this $\lambda$.

# %% tags=["nbval-check-output"]
ok_bound = all(r * (r + 1) / 2 <= k for rr, k in zip(get("rank_interp_red"), KN) for r in rr) and \
    all(r * (r + 1) / 2 <= k for rr, k in zip(get("rank_opt_red"), KN) for r in rr)
lb.claim("every reduced global minimiser satisfies r(r+1)/2 <= KN", ok_bound,
         ranks=get("rank_interp_red").tolist(), bound=bound.tolist())
lb.claim("the reduction keeps every output (lambda = 0)", get("out_err").max() < 1e-8, max_err=get("out_err").max())
lb.claim("the reduction never increases the nuclear norm",
         bool((get("nuc_interp_red") <= get("nuc_interp") * (1 + 1e-10)).all()))
lb.claim("the convex optima are certified (relative duality gap below 1e-9)", get("rel_gap").max() < GAP_TOL,
         max_gap=get("rel_gap").max())
lb.claim("reduction keeps the regularised objective (relative change below 1e-8)",
         np.abs(get("obj_change")).max() < 1e-8, max_change=np.abs(get("obj_change")).max())
lb.claim("the certified optimum itself satisfies the rank bound",
         all(r * (r + 1) / 2 <= k for rr, k in zip(get("rank_opt"), KN) for r in rr), ranks=get("rank_opt").tolist())
