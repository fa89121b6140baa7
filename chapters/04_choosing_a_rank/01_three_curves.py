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
# (rank-three-curves)=
# # Three curves on one task
#
# The task is chapter 2's real-model experiment: all-MiniLM-L6-v2 {cite}`wang2020minilm,reimers2019sentencebert`
# on Rotten Tomatoes snippets {cite}`pang2005seeing` ($N/2$ fresh, $N/2$ rotten), a scalar prompt-style logit
# $f(W; x) = (\cos(e_x, \text{"a great movie"}) - \cos(e_x, \text{"a terrible movie"}))/0.05$ (so $K = 1$), the
# logistic loss, and the last layer's query and value weights $W_q, W_v \in \R^{384\times 384}$ linearised around
# the pretrained model, as in {doc}`../02_ntk_landscape/06_minilm_landscape`:
#
# $$ \min_{\delta}\ \hat L(\delta) + \lambda\left(\norm{\delta_q}_* + \norm{\delta_v}_*\right),\qquad
#    \hat L(\delta) = \frac1N \sum_{i=1}^N \ell\big(f(W_0; x_i) + \langle G_i, \delta\rangle, y_i\big). $$
#
# **Our reduction (not the papers').** To sweep ranks, initialisations and several $N$ on two CPU cores, we
# fine-tune inside a fixed $k\times k$ subspace of each matrix, $\delta_p = U_{L,p}\,\tilde\delta_p\,U_R^\top$, where
# $U_R$ spans the top-$k$ principal directions of the training tokens' states and $U_{L,p}$ those of the per-token
# output gradients (training snippets only; `lorabook.rank_choice.subspace_bases`). The reduced problem is again a
# linearised fine-tuning problem, with $\tilde G_i = U_L^\top G_i U_R$, so every theorem below applies to it as
# stated; at `paper` scale $k = 384$ and the reduction is the identity. The per-example gradients of all snippets
# come from one forward and one backward pass (`lorabook.rank_choice.reduced_jacobian`).
#
# The weight decay is $\lambda = 0.3\,\lambda_{\max}$, where $\lambda_{\max}$ is the smallest $\lambda$ for which the
# pretrained model is already optimal — our choice (chapter 2 chooses its λ on a dev split), strong
# enough for plain gradient descent to get within a relative gap of $10^{-3}$ of the optimum within our step budget
# (the `paper` scale asks for $10^{-5}$ with 5× more steps).
# Convergence is slowest where the optimum's dual margin $\lambda - \sigma_2(\nabla\hat L(\delta^\star))$ is small.
#
# For each rank $r$ we measure three curves, one per paper:
#
# * **expressivity** (chapter 1, {prf:ref}`lem-ch1-linear`; chapter 2, {prf:ref}`thm-ntk-low-rank`): the relative
#   error $\norm{\delta^\star - \LR_r(\delta^\star)}_F / \norm{\delta^\star}_F$ of the best rank-$r$ adapters for
#   the certified optimum $\delta^\star$ of full fine-tuning (relative duality gap $< 10^{-9}$);
# * **trainability** (chapter 2, {prf:ref}`thm-ntk-no-spurious`): the fraction of random initialisations from which
#   LoRA gradient descent with weight decay reaches the optimum value $F^\star$, with `rank_threshold(K, N)` marked;
# * **generalisation** (chapter 3, {prf:ref}`thm-kratsios-upper`): the measured train–test gap of the 0–1 loss
#   with a frozen random factor (Kratsios et al.'s setting: the output-side factor $B$ Gaussian $N(0, 1/k)$ and
#   frozen, $A$ trained by Adam with the same weight decay), and Kratsios et al.'s bound for the same adapter.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import bounds, data, ntk, plotting
from lorabook import rank_choice as rc

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
K = 1
Ns = scale.pick(quick=[4, 8], default=[8, 16, 32], paper=[16, 32, 64])
k = scale.pick(quick=16, default=32, paper=384)             # subspace size (ours)
n_test = scale.pick(quick=200, default=1_000, paper=2_000)  # paper: 2·384² gradients, 4.7 GB
n_init = scale.pick(quick=3, default=5, paper=20)           # random initialisations per rank
gd_steps = scale.pick(quick=2_500, default=4_000, paper=20_000)
n_draws = scale.pick(quick=3, default=6, paper=20)          # frozen-factor draws per rank
ff_steps = scale.pick(quick=300, default=600, paper=2_000)
GAP_TOL = scale.pick(quick=1e-3, default=1e-3, paper=1e-5)  # "reached the optimum" (ours)
EXPR_TOL = 1e-3                                             # "expresses the optimum" (ours)
LAM_FRAC, INIT_STD = 0.3, 0.02
r_max = ntk.rank_threshold(K, max(Ns)) + 1
ranks = list(range(1, r_max + 1))
torch_gen, _ = lb.seed_everything(0)

# one split; the training set of size N is the first N/2 fresh and first N/2 rotten snippets
split = data.rotten_tomatoes_split(max(Ns) // 2, n_test, seed=0)
h_tr, m_tr = ntk.embed_texts(split["train_texts"], 5, progress="MiniLM (train)")
h_te, m_te = ntk.embed_texts(split["test_texts"], 5, progress="MiniLM (test)")
head = ntk.MiniLMHead(5)
U_L, U_R = rc.subspace_bases(head, h_tr, m_tr, k)
f0_tr, G_tr = rc.reduced_jacobian(head, h_tr, m_tr, U_L, U_R)
f0_te, G_te = rc.reduced_jacobian(head, h_te, m_te, U_L, U_R)
y_tr = torch.as_tensor(split["train_labels"], dtype=torch.float64)
y_te = torch.as_tensor(split["test_labels"], dtype=torch.float64)
test = ntk.LinearisedProblem(G_te, f0_te, y_te, 0.0, "logistic")
half = max(Ns) // 2


def subset(N):
    """Indices of the N training snippets (N/2 per class) inside the largest training set."""
    return torch.cat([torch.arange(N // 2), half + torch.arange(N // 2)])


def zero_one(outputs, y):
    """(..., n, 1) logits and (n,) labels -> (..., n) 0/1 losses."""
    return ((outputs[..., 0] > 0).to(y.dtype) != y).to(torch.float64)


def three_curves(prob, ranks, test_loss, *, label):
    """Certified optimum, LoRA GD from n_init starts per rank, frozen-factor fits (n_draws per
    rank) on one linearised problem; test_loss(outputs_of_train, outputs_of_test_deltas)."""
    opt = ntk.proximal_gradient(prob, 50_000, tol=1e-10)
    F_star = opt.cert.primal
    block_ranks = [lb.numerical_rank(d, rtol=1e-6) if d.norm() > 0 else 0 for d in opt.delta]
    trunc = rc.truncation_error(opt.delta, [0] + ranks)
    # trainability: plain GD, step size from the curvature at the optimum's scale (ours)
    lr = 1.8 / (prob.lipschitz() * (1 + 2 * float(prob.nuclear(opt.delta))))
    B0, A0, rk = ntk.lora_init(prob.shape, ranks, n_init, init_std=INIT_STD, zero_B=False,
                               generator=torch_gen)
    run = ntk.lora_gd(prob, B0, A0, rk, gd_steps, lr, progress=f"LoRA GD, {label}")
    reached = rc.reach_fraction(run.objective, F_star, GAP_TOL, len(ranks))
    # generalisation: frozen random B, trained A
    ff_delta, _ = rc.frozen_factor_fit(prob, ranks, n_draws, steps=ff_steps, lr=0.05,
                                       generator=torch_gen, progress=f"frozen factor, {label}")
    gap = test_loss(ff_delta)
    below = (run.objective - opt.cert.dual) / abs(F_star)   # >= 0 by weak duality
    return dict(lam=prob.lam, F_star=F_star, cert=opt.cert, block_ranks=block_ranks,
                trunc=trunc, reached=reached, below_dual=float(below.min()),
                gap=gap.numpy().reshape(len(ranks), n_draws).T, delta=opt.delta)


# %% [markdown]
# For every $N$: the certified optimum, LoRA gradient descent from `n_init` random initialisations per rank (both
# factors Gaussian with standard deviation 0.02, batched over ranks × initialisations), and the frozen-factor fits
# (batched over ranks × draws).

# %%
results = {}
for N in Ns:
    idx = subset(N)
    p0 = ntk.LinearisedProblem(G_tr[idx], f0_tr[idx], y_tr[idx], 0.0, "logistic")
    prob = ntk.LinearisedProblem(G_tr[idx], f0_tr[idx], y_tr[idx], LAM_FRAC * p0.lambda_max(),
                                 "logistic")

    def test_gap(delta, prob=prob):
        gap, _ = bounds.gap_estimate(zero_one(prob.outputs(delta), prob.y[:, 0]),
                                     zero_one(test.outputs(delta), y_te))
        return gap

    results[N] = three_curves(prob, ranks, test_gap, label=f"N = {N}")
    results[N]["full_gap"] = float(test_gap(results[N]["delta"][None])[0])

# %% [markdown]
# Kratsios et al.'s Theorem 1 for the frozen-factor adapter, with the paper's network read as one hidden layer of
# width $k$ ($T = 1$, $W = d = k$, $D = 1$), $\nu = 1/\sqrt k$ (our factor's law), $M = 1$,
# $\theta_{\text{pre}}$ the pretrained query/value entries, $\delta = 0.05$ (and, as the proof requires,
# $\varepsilon = 1 - \sqrt{1-\delta}$) and $c = 1$ (the paper leaves $c$ unspecified). These identifications
# are ours; the point is the order of magnitude.

# %%
theta_pre = max(float(head.get_parameter(n).abs().max()) for n in ntk.QV_NAMES)
net = dict(T=1, W=k, d=k, D=1, M=1.0, nu=k**-0.5, theta_pre_inf=theta_pre)
bound = {
    N: np.array([bounds.kratsios_upper_bound(r=r, N=N, delta=0.05, **net) for r in ranks])
    for N in Ns
}

# %%
colors = dict(zip(Ns, [plotting.COLORS[c] for c in ("lora", "full", "construction", "other")]))
fig, ax = plotting.subplots(4, width=3.6, height=3.3)
for N in Ns:
    res, c = results[N], colors[N]
    ax[0].plot([0] + ranks, np.maximum(res["trunc"], 1e-16), "o-", color=c, label=f"N = {N}")
    ax[1].plot(ranks, res["reached"], "o-", color=c, label=f"N = {N}")
    plotting.mark_threshold(ax[1], ntk.rank_threshold(K, N), label=f"threshold, N = {N}",
                            color=c)
    plotting.band(ax[2], ranks, res["gap"], label=f"N = {N}", color=c)
    ax[3].plot(ranks, bound[N], "o-", color=c, label=f"bound, N = {N}")
ax[0].set(yscale="log", xlabel="LoRA rank $r$",
          ylabel=r"$\|\delta^\star-\mathrm{LR}_r(\delta^\star)\|_F/\|\delta^\star\|_F$",
          title="expressivity")
ax[0].axhline(EXPR_TOL, color=plotting.COLORS["theory"], linestyle=":", label="tolerance")
ax[1].set(xlabel="LoRA rank $r$", ylabel="fraction reaching $F^\\star$", title="trainability",
          ylim=(-0.05, 1.05))
ax[2].set(xlabel="LoRA rank $r$", ylabel="test − train 0–1 loss",
          title="generalisation gap (frozen random B)")
ax[3].set(yscale="log", xlabel="LoRA rank $r$", ylabel="bound on the gap",
          title="Kratsios et al. bound")
ax[3].axhline(1.0, color=plotting.COLORS["theory"], linestyle="--", label="vacuous above 1")
for a in ax:
    a.legend(fontsize=6)
fig.suptitle(f"MiniLM on Rotten Tomatoes, linearised query/value ({k}×{k} subspace), "
             f"λ = {LAM_FRAC}·λ_max")
fig.tight_layout()

# %% [markdown]
# *What to see:* the certified optimum of full fine-tuning is a rank-one update of the value matrix, so one rank
# already expresses it exactly — far below Theorem 3.1's worst case $r(r+1)/2 \le KN$. Every initialisation
# reaches it at every tested rank, at, above and (the theorem being only sufficient) below `rank_threshold(K, N)`.
# The frozen-factor gap is noisy, widens with the rank and narrows with $N$ — the trends of Kratsios et al.'s worst
# case — but the bound itself is above 1 everywhere: its first term is clipped at $4\min\{1, \cdot\}= 4$, so it is
# **vacuous** for a loss in $[0, 1]$ at these $N$ and says nothing about $r$, as chapter 3 found
# ({doc}`../03_asymmetric_bounds/01_theorem1`).

# %% tags=["nbval-ignore-output"]
for N in Ns:
    r_ = results[N]
    print(f"N = {N:3d}: λ = {r_['lam']:.3g}, F* = {r_['F_star']:.4g}, "
          f"rel. duality gap {r_['cert'].rel_gap:.1e}, "
          f"ranks of (δ_q, δ_v) = {r_['block_ranks']}, "
          f"threshold {ntk.rank_threshold(K, N)}, "
          f"reached {np.round(r_['reached'], 2).tolist()}, "
          f"median gap {np.round(np.median(r_['gap'], 0), 2).tolist()}, "
          f"bound ≥ {bound[N].min():.2f}, gap of the full-FT optimum {r_['full_gap']:.2f}")


def pataki_ratio(res, N, K):
    """sum_p r_p(r_p+1)/2 of the optimum's blocks over KN (Theorem 3.1: <= 1)."""
    return sum(r * (r + 1) // 2 for r in res["block_ranks"]) / (K * N)


def reach_above_threshold(res, N, K):
    """Smallest fraction of starts reaching F* over the tested ranks with r(r+1)/2 > KN."""
    return float(res["reached"][ntk.rank_threshold(K, N) - 1:].min())


# %% [markdown]
# The checks. The solver's certificate, weak duality and the truncation identity are checks of our own code
# (sanity); the relative duality gaps reached are $10^{-11}$ or smaller, so the limit $10^{-9}$ that defines
# "certified" has two orders to spare. The optimum comes out of singular-value thresholding, whose discarded
# singular values are exactly zero, so the truncation error at its numerical rank is rounding alone (about
# $10^{-16}$ measured); we test it against $10^{-12}$. Theorem 3.1 and Theorem 4.1 of Jang et al. are tested as theorems, with negative controls that feed
# the same checks a full-rank update and a rank below the threshold.

# %% tags=["nbval-check-output"]
lb.claim("each full-fine-tuning optimum is certified (largest relative duality gap over N)",
         max(results[N]["cert"].rel_gap for N in Ns), "<", 1e-9, kind="sanity")
lb.claim("the optimum's ranks obey Theorem 3.1: sum_p r_p(r_p+1)/2 <= KN "
         "(largest ratio over N)",
         max(pataki_ratio(results[N], N, K) for N in Ns), "<=", 1.0, kind="theorem",
         label="Jang et al., Theorem 3.1",
         control="test_controls_ch4.py::test_pataki_check_fails_for_a_full_rank_update",
         ranks=str({N: results[N]["block_ranks"] for N in Ns}))
lb.claim("the best rank-r adapters express the optimum once r >= max_p rank(delta*_p) "
         "(largest truncation error there)",
         max(results[N]["trunc"][max(results[N]["block_ranks"])] for N in Ns), "<=", 1e-12,
         kind="sanity")
lb.claim("every initialisation with r(r+1)/2 > KN reaches the certified optimum "
         "(smallest fraction over N and ranks)",
         min(reach_above_threshold(results[N], N, K) for N in Ns), ">=", 1.0, kind="theorem",
         label="Jang et al., Theorem 4.1",
         control="test_controls_ch4.py::test_reach_check_fails_below_the_threshold")
lb.claim("no LoRA run goes below the certified dual bound (smallest relative excess over it)",
         min(results[N]["below_dual"] for N in Ns), ">=", -1e-9, kind="sanity")
min_bound = min(bound[N].min() for N in Ns)
lb.claim("the Kratsios et al. bound is vacuous (above 1) at every N and rank tested",
         min_bound, ">", 1.0, kind="sanity")
lb.claim("every measured frozen-factor gap lies below the bound",
         max(results[N]["gap"].max() for N in Ns), "<", min_bound, kind="sanity")
widen = np.mean([results[N]["gap"][:, -1].mean() - results[N]["gap"][:, 0].mean() for N in Ns])
lb.claim("the frozen-factor gap is wider at the largest tested rank than at rank one "
         "(mean over N and draws)", widen, ">", 0.0, kind="sanity")

# %% [markdown]
# (rank-recommendation)=
# ## Which rank?
#
# ```{prf:proposition} A rank from the three curves (our combination)
# :label: prop-rank-recommendation
# Take the smallest rank $r_{\text{rec}} = \max(r_{\text{expr}}, r_{\text{train}})$, where $r_{\text{expr}}$ is the
# smallest rank whose best adapters are within a relative error $10^{-3}$ of the certified optimum and
# $r_{\text{train}}$ the smallest rank from which every tested rank reaches the optimum from every initialisation.
# Theorem 4.1 guarantees $r_{\text{train}} \le$ `rank_threshold(K, N)`, Theorem 3.1 guarantees
# $r_{\text{expr}} \le \lfloor\sqrt{2KN}\rfloor$; a larger rank only widens the worst-case gap of the
# generalisation bounds (chapter 3: $\sqrt{q} \propto \sqrt r$), so nothing is gained above $r_{\text{rec}}$.
# ```
#
# The recommendation is computed from the measured curves (`lorabook.rank_choice.recommend_rank`), for each $N$.

# %%
rec = {
    N: rc.recommend_rank(ranks, results[N]["trunc"][1:], results[N]["reached"],
                         np.median(results[N]["gap"], 0), expr_tol=EXPR_TOL)
    for N in Ns
}
Ns_fine = np.arange(1, max(Ns) + 1)
fig, ax = plotting.subplots(1, width=5.5, height=3.6)
ax.plot(Ns_fine, [ntk.rank_threshold(K, int(n)) for n in Ns_fine], "--",
        color=plotting.COLORS["theory"],
        label=r"threshold: smallest $r$ with $r(r+1)/2 > KN$ (Thm 4.1)")
ax.plot(Ns_fine, [ntk.pataki_rank(K, int(n)) for n in Ns_fine], ":",
        color=plotting.COLORS["full"],
        label=r"largest $r$ with $r(r+1)/2 \leq KN$ (Thm 3.1)")
ax.plot(Ns, [rec[N]["r_expr"] for N in Ns], "s", color=plotting.COLORS["construction"],
        markersize=9, label=r"$r_{\mathrm{expr}}$ (measured)")
ax.plot(Ns, [rec[N]["r_train"] for N in Ns], "^", color=plotting.COLORS["lora"], markersize=7,
        label=r"$r_{\mathrm{train}}$ (measured)")
ax.plot(Ns, [rec[N]["r_rec"] for N in Ns], "o-", color="k",
        label=r"recommended $r_{\mathrm{rec}}$")
ax.set(xscale="log", xlabel="training snippets $N$", ylabel="LoRA rank $r$",
       title="the rank the three papers suggest")
ax.set_xticks(Ns, [str(N) for N in Ns])
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* the measured ranks sit at the bottom of the plot while the worst-case ranks of the theorems grow like
# $\sqrt{2KN}$. On this task the recommendation is the smallest rank, and it does not move with $N$ in the range we
# can afford: the bounds are worst cases over all tasks, and this task's optimum happens to be rank one (the gradient
# of the prompt-style logit with respect to $W_v$ is dominated by one direction, the pull-back of "great − terrible").
# The measured frozen-factor gap, which widens with $r$, points the same way. What moves with $N$ is only the
# guarantee: at `rank_threshold(K, N)` gradient descent is *certain* to find the optimum, and that costs
# $O(\sqrt N)$ ranks. The paper's own choices (RoBERTa, $N = 32$, LoRA ranks up to 16) sit at or above this
# guarantee; our measurement says that, for this task and this regularisation, far less suffices.
# A task where the curves do decide — an optimum of higher rank — follows in
# {ref}`rank-synthesis-higher`.

# %% tags=["nbval-ignore-output"]
for N in Ns:
    print(f"N = {N:3d}: r_expr = {rec[N]['r_expr']}, r_train = {rec[N]['r_train']}, "
          f"recommended r = {rec[N]['r_rec']}, threshold = {ntk.rank_threshold(K, N)}, "
          f"median frozen-factor gap there = {rec[N]['gap_rec']:.2f}")

# %% tags=["nbval-check-output"]
lb.claim("the recommended rank never exceeds rank_threshold(K, N) (largest difference over N)",
         max(rec[N]["r_rec"] - ntk.rank_threshold(K, N) for N in Ns), "<=", 0, kind="sanity",
         rec=str({N: rec[N]["r_rec"] for N in Ns}))
lb.claim("the recommended rank does not decrease as N grows (smallest step)",
         min(rec[b]["r_rec"] - rec[a]["r_rec"] for a, b in zip(Ns, Ns[1:])), ">=", 0,
         kind="sanity")
lb.claim("the expressive rank is below Theorem 3.1's worst case at the largest N",
         rec[max(Ns)]["r_expr"], "<", ntk.pataki_rank(K, max(Ns)), kind="sanity")

# %% [markdown]
# (rank-synthesis-higher)=
# ## A task whose optimum has a higher rank
#
# On the MiniLM task the recommendation is rank one at every $N$, so it cannot show the curves deciding
# anything. Lowering $\lambda$ there does not help within our budget: at $\lambda = 0.03\,\lambda_{\max}$ the
# optimum has rank two and proximal gradient no longer certifies it within 50,000 steps. We therefore repeat the
# synthesis on a synthetic linearised problem ({py:func}`lorabook.ntk.synthetic_problem`) with **three outputs**
# ($K = 3$), the squared loss, a $16\times16$ weight, targets from a rank-two teacher plus noise, and a weaker
# regularisation $\lambda = 0.1\,\lambda_{\max}$: the noise then pulls the optimum's rank well above the
# teacher's. The generalisation curve is the train–test gap of the squared loss on 200 fresh examples of the
# same teacher (an unbounded loss, so Kratsios et al.'s bound does not apply; the curve is descriptive).

# %%
K_s, mn, LAM_S = 3, 16, 0.1
Ns_s = scale.pick(quick=[8], default=[8, 16], paper=[8, 16, 32])
n_test_s = 200
syn = {}
for N in Ns_s:
    full = ntk.synthetic_problem(N + n_test_s, K_s, mn, mn, 0.0, generator=torch_gen,
                                 loss="mse")
    part = lambda sl, lam: ntk.LinearisedProblem(full.G[sl], full.f0[sl], full.y[sl], lam,
                                                 "mse")
    tr, te = slice(0, N), slice(N, N + n_test_s)
    prob = part(tr, LAM_S * part(tr, 0.0).lambda_max())
    test_s = part(te, 0.0)

    def mse_gap(delta, prob=prob, test_s=test_s):
        err = lambda p, d: (p.outputs(d) - p.y).square().sum(-1).mean(-1)
        return err(test_s, delta) - err(prob, delta)

    ranks_s = list(range(1, ntk.rank_threshold(K_s, N) + 2))
    syn[N] = three_curves(prob, ranks_s, mse_gap, label=f"synthetic, N = {N}")
    syn[N]["ranks"] = ranks_s
    syn[N]["rec"] = rc.recommend_rank(ranks_s, syn[N]["trunc"][1:], syn[N]["reached"],
                                      np.median(syn[N]["gap"], 0), expr_tol=EXPR_TOL)

# %% tags=["hide-input"]
fig, ax = plotting.subplots(3, width=3.8, height=3.3)
for N, c in zip(Ns_s, ("lora", "full", "construction")):
    res, col = syn[N], plotting.COLORS[c]
    ax[0].plot([0] + res["ranks"], np.maximum(res["trunc"], 1e-16), "o-", color=col,
               label=f"N = {N}")
    ax[1].plot(res["ranks"], res["reached"], "o-", color=col, label=f"N = {N}")
    plotting.mark_threshold(ax[1], ntk.rank_threshold(K_s, N), label=f"threshold, N = {N}",
                            color=col)
    plotting.band(ax[2], res["ranks"], res["gap"], label=f"N = {N}", color=col)
    for a in ax[:2]:
        a.axvline(res["rec"]["r_rec"], color=col, linestyle=":", alpha=0.7)
ax[0].axhline(EXPR_TOL, color=plotting.COLORS["theory"], linestyle=":", label="tolerance")
ax[0].set(yscale="log", xlabel="LoRA rank $r$", ylabel="relative truncation error",
          title="expressivity")
ax[1].set(xlabel="LoRA rank $r$", ylabel="fraction reaching $F^\\star$", title="trainability",
          ylim=(-0.05, 1.05))
ax[2].set(xlabel="LoRA rank $r$", ylabel="test − train squared loss",
          title="generalisation gap (frozen random B)")
for a in ax:
    a.legend(fontsize=6)
fig.suptitle(f"synthetic linearised problem, K = {K_s}, {mn}×{mn}, λ = {LAM_S}·λ_max "
             "(dotted: recommended rank)")
fig.tight_layout()

# %% tags=["nbval-ignore-output"]
for N in Ns_s:
    r_, c_ = syn[N], syn[N]["rec"]
    print(f"N = {N:3d}: rel. duality gap {r_['cert'].rel_gap:.1e}, optimum rank "
          f"{r_['block_ranks']}, truncation error {np.round(r_['trunc'][1:], 4).tolist()}, "
          f"reached {np.round(r_['reached'], 2).tolist()}, threshold "
          f"{ntk.rank_threshold(K_s, N)}; r_expr = {c_['r_expr']}, r_train = {c_['r_train']}, "
          f"recommended r = {c_['r_rec']}, median gap there {c_['gap_rec']:.3f}")

# %% [markdown]
# *What to see* (`default`): the certified optimum has rank 3 at $N = 8$ and rank 4 at $N = 16$ (relative
# duality gaps about $10^{-10}$), so the expressivity curve falls below the tolerance only at that rank. Gradient
# descent reaches $F^\star$ (within a relative gap of $10^{-3}$) from every start from rank 3 on, and from none at
# ranks 1 and 2, which cannot express the optimum. The recommendation is $r_{\text{rec}} = 3$ at $N = 8$ and
# $4$ at $N = 16$: it moves with $N$, as the optimum's rank does, but stays well below
# `rank_threshold(3, N)` (7 and 10), the rank at which Theorem 4.1 *guarantees* success. The checks: the
# certificate and the recommendation are computations of ours (sanity), the reach above the threshold is
# Theorem 4.1 again. The check that the recommended rank is at least 3 can fail: on the MiniLM task above
# it would (rank 1).

# %% tags=["nbval-check-output"]
lb.claim("synthetic task: each optimum is certified (largest relative duality gap over N)",
         max(syn[N]["cert"].rel_gap for N in Ns_s), "<", 1e-9, kind="sanity")
lb.claim("synthetic task: every initialisation with r(r+1)/2 > KN reaches the certified "
         "optimum (smallest fraction over N and ranks)",
         min(reach_above_threshold(syn[N], N, K_s) for N in Ns_s), ">=", 1.0, kind="theorem",
         label="Jang et al., Theorem 4.1",
         control="test_controls_ch4.py::test_reach_check_fails_below_the_threshold")
lb.claim("synthetic task: the recommended rank is at least 3 at every N (smallest over N)",
         min(syn[N]["rec"]["r_rec"] for N in Ns_s), ">=", 3, kind="sanity",
         rec=str({N: syn[N]["rec"]["r_rec"] for N in Ns_s}))
lb.claim("synthetic task: the recommended rank stays below rank_threshold(K, N) "
         "(largest difference over N)",
         max(syn[N]["rec"]["r_rec"] - ntk.rank_threshold(K_s, N) for N in Ns_s), "<", 0,
         kind="sanity")

# %% [markdown]
# (rank-real-lora)=
# ## Does real LoRA agree?
#
# The recommendation above comes from the linearised problem. The question a reader cares about is whether
# real fine-tuning stops gaining at that rank. We train real `peft` LoRA (chapter 5,
# {py:func}`lorabook.real.top_run`) on the same layer — the last layer's query and value projections of
# MiniLM, both factors trained, the lower layers frozen and cached, the same zero-shot head and temperature,
# two-class cross-entropy (the logistic loss on the same scalar logit) — with the largest $N$ of the sweep
# above ($N/2$ snippets per class, drawn with a balanced dev split, so the snippets are not the same ones),
# for ranks 1 to 8. Per rank the learning rate is chosen on the dev split (first seed, two values), then
# several seeds are run; the **plateau rank** is the smallest rank whose mean dev balanced accuracy is within
# one standard deviation (over seeds) of the best rank's mean. Only the dev split is used here.

# %%
from lorabook import real  # noqa: E402
from lorabook.train import cached_sweep  # noqa: E402

ranks_real = scale.pick(quick=[1, 2], default=[1, 2, 4, 8], paper=[1, 2, 4, 8, 16])
seeds_real = list(range(scale.pick(quick=2, default=3, paper=5)))
N_real = max(Ns)
real_common = dict(
    classes=["fresh", "rotten"], n_train=N_real // 2, n_pool=N_real // 2,
    n_dev=scale.pick(quick=16, default=64, paper=200), n_test=8, split_seed=0,
    targets=["query", "value"], mode="both", steps=scale.pick(quick=6, default=30, paper=200),
    batch_size=8, temperature=0.05, max_length=64, layers=[5], n_train_eval=N_real,
    scale=scale.name,
)
grid_real = scale.pick(quick=[1e-2], default=[3e-3, 1e-2], paper=[1e-3, 3e-3, 1e-2])
G = len(grid_real)
sel_real = cached_sweep("ch4_real_lr", [dict(real_common, rank=r, lr=v, seed=0)
                                        for r in ranks_real for v in grid_real], real.top_run)
lr_real = {r: grid_real[int(np.argmax([sel_real[i * G + j]["dev"]["bacc"] for j in range(G)]))]
           for i, r in enumerate(ranks_real)}
more_cfgs = [dict(real_common, rank=r, lr=lr_real[r], seed=s)
             for r in ranks_real for s in seeds_real[1:]]
more = iter(cached_sweep("ch4_real", more_cfgs, real.top_run))
dev_real = np.array([[sel_real[i * G + grid_real.index(lr_real[r])]["dev"]["bacc"] if s == 0
                      else next(more)["dev"]["bacc"] for s in seeds_real]
                     for i, r in enumerate(ranks_real)])          # (ranks, seeds)
zero_real = real.top_run(dict(real_common, rank=1, lr=1e-3, seed=0, steps=0))["dev"]["bacc"]
mean_r, sd_r = dev_real.mean(1), dev_real.std(1, ddof=1)
j_best = int(np.argmax(mean_r))
r_plateau = ranks_real[int(np.flatnonzero(mean_r >= mean_r[j_best] - sd_r[j_best])[0])]
print(f"N = {N_real}: dev balanced accuracy per rank "
      f"(mean ± sd over {len(seeds_real)} seeds), "
      f"zero-shot {zero_real:.3f}")
for r, mu, sd in zip(ranks_real, mean_r, sd_r):
    print(f"  r = {r:2d} (lr {lr_real[r]:g}): {mu:.3f} ± {sd:.3f}")
print(f"plateau rank of real LoRA: {r_plateau}; recommended by the three curves: "
      f"{rec[N_real]['r_rec']}; rank_threshold(1, {N_real}) = {ntk.rank_threshold(1, N_real)}")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(1, width=5.0, height=3.4)
ax.errorbar(ranks_real, mean_r, yerr=sd_r, fmt="o-", color=plotting.COLORS["lora"],
            label="real LoRA (peft), dev")
ax.axhline(zero_real, color="k", linestyle="--", label="zero-shot head, dev")
ax.axvline(rec[N_real]["r_rec"], color=plotting.COLORS["construction"], linestyle=":",
           label="recommended by the three curves")
ax.set(xscale="log", xlabel="LoRA rank $r$", ylabel="dev balanced accuracy",
       title=f"real LoRA on the last layer, N = {N_real}")
ax.set_xticks(ranks_real, [str(r) for r in ranks_real])
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What we measured* (`default`, $N = 32$, 30 steps of 8, three seeds, 128 dev snippets): dev balanced
# accuracy 0.706 ± 0.030 at rank 1, then 0.672, 0.680 and 0.669 at ranks 2, 4 and 8 (standard deviations
# 0.012–0.023), against 0.664 for the zero-shot head. Real LoRA's dev accuracy stops improving at rank 1 —
# the rank the three curves recommend for this task — and larger ranks bring nothing measurable, far
# below `rank_threshold(1, 32)` = 8. The dev split has a binomial standard error of about 0.04, so the
# ranks 1–8 are within noise of each other: the measurement is consistent with the recommendation, and it
# could not detect a gain of a few points from a higher rank. The check below fails if the plateau rank is
# more than twice the recommended one.

# %% tags=["nbval-check-output"]
lb.claim("real LoRA's dev plateau rank is at most the rank the three curves recommend, "
         "plus one doubling (plateau rank / recommended rank)",
         r_plateau / rec[N_real]["r_rec"], "<=", 2,
         kind="sanity", plateau=r_plateau, recommended=rec[N_real]["r_rec"])
