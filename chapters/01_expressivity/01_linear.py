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
# (ch1-linear)=
# # Linear models: LoRA approximates $RL$ ranks of the error
#
# The simplest case of {cite}`zeng2024expressive`: a frozen linear network $f_0(x) = W_L\cdots W_1 x$ and a linear
# target $\bar f(x) = \bar W x$, all $D\times D$. Each layer gets an adapter $\Delta W_l$ of rank $\le R$. Since
# $\prod_l(W_l+\Delta W_l) - \prod_l W_l$ has rank at most $RL$, LoRA can at best remove the top $RL$ singular
# directions of the error $E = \bar W - \prod_l W_l$. The lemma says it can always do exactly that.

# %% tags=["nbval-ignore-output"]
import math

import numpy as np
import torch

import lorabook as lb
from lorabook import expressivity as ex
from lorabook import plotting

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# ## The construction attains $\sigma_{RL+1}(E)$
#
# ```{prf:lemma} Linear LoRA (Zeng & Lee, Lemma 1)
# :label: lem-ch1-linear
# Let $E = \bar W - \prod_{l=1}^L W_l$ with $R_E = \rank E$. If the $W_l$ and $\prod_l W_l + \LR_r(E)$, $r \le R(L-1)$,
# are non-singular, then $\displaystyle\min_{\rank \Delta W_l \le R}\norm{\prod_{l=1}^L (W_l+\Delta W_l) - \bar W}_2 = \sigma_{RL+1}(E)$,
# so the adapted model equals the target once $R \ge \lceil R_E / L\rceil$.
# ```
#
# The proof is constructive: with $E = UDV^\top$ and $Q_l$ the projector on the $l$-th block of $R$ right singular
# vectors, $\Delta W_l = (\prod_{i>l}W_i)^{-1}\,\LR_{RL\wedge R_E}(E)\,Q_l\,(\prod_{i<l}(W_i+\Delta W_i))^{-1}$, built
# for $l = 1,\dots,L$ in order (`lorabook.expressivity.linear_construction`). The lower bound is Eckart–Young
# {cite}`eckart1936approximation`. We run the construction for every $R \in [D]$ on random instances with prescribed
# $R_E$ (frozen $W_l = I + G_l/(2\sqrt D)$, $E$ a random rank-$R_E$ matrix) and compare its error with $\sigma_{RL+1}(E)$.

# %%
torch_gen, _ = lb.seed_everything(0)
Ds = scale.pick(quick=[8], default=[8, 16], paper=[8, 16, 32])
Ls = [1, 2, 4]
n_inst = scale.seeds
# (D, L, R_E, R, construction error / ||E||_2, sigma_{RL+1} / ||E||_2, max adapter rank)
records = []
for D in Ds:
    for L in Ls:
        for rank_E in (D // 2, D):
            for _ in range(n_inst):
                target, frozen = ex.random_linear_instance(D, L, rank_E, torch_gen)
                E = target - lb.chain_product(frozen)
                norm_E = torch.linalg.matrix_norm(E, 2).item()
                for R in range(1, D + 1):
                    deltas = ex.linear_construction(target, frozen, R)
                    adapted = lb.chain_product([W + d for W, d in zip(frozen, deltas)])
                    err = torch.linalg.matrix_norm(adapted - target, 2).item()
                    max_rank = max(lb.numerical_rank(d, 1e-9) for d in deltas)
                    records.append(
                        (
                            D,
                            L,
                            rank_E,
                            R,
                            err / norm_E,
                            ex.lemma1_error(E, R, L) / norm_E,
                            max_rank,
                        )
                    )
rec = np.array(records, dtype=float)
dev_sigma = np.abs(rec[:, 4] - rec[:, 5]).max()
above = rec[:, 3] >= np.ceil(rec[:, 2] / rec[:, 1])
max_err_above = rec[above, 4].max()
min_err_below = rec[~above, 4].min()
rank_ok = bool((rec[:, 6] <= rec[:, 3]).all())

# %% [markdown]
# Error of the construction against $R$ for $D = 8$, $R_E = D$, one curve per depth $L$; dashed lines mark the
# thresholds $\lceil R_E/L\rceil$. Markers are the construction, lines the theory $\sigma_{RL+1}(E)/\norm{E}_2$ (median over instances).

# %%
fig, ax = plotting.subplots(1, width=6.0)
colors = [plotting.COLORS["construction"], plotting.COLORS["lora"], plotting.COLORS["full"]]
for L, color in zip(Ls, colors):
    sel = (rec[:, 0] == Ds[0]) & (rec[:, 1] == L) & (rec[:, 2] == Ds[0])
    Rs = np.arange(1, Ds[0] + 1)
    err = rec[sel, 4].reshape(n_inst, Ds[0])
    theory = rec[sel, 5].reshape(n_inst, Ds[0])
    plotting.band(
        ax, Rs, err + 1e-17, label=f"construction, L={L}", color=color, linestyle="none"
    )
    ax.plot(
        Rs,
        np.median(theory, 0) + 1e-17,
        color=color,
        alpha=0.6,
        label=rf"$\sigma_{{RL+1}}(E)$, L={L}",
    )
    plotting.mark_threshold(ax, math.ceil(Ds[0] / L), label=None, color=color)
ax.set(
    yscale="log",
    xlabel="LoRA rank $R$",
    ylabel=r"$\|\prod(W_l+\Delta W_l)-\bar W\|_2 / \|E\|_2$",
    title=f"Lemma 1, D={Ds[0]}, rank E = D ({n_inst} instances)",
)
ax.legend(ncol=2, fontsize=8)

# %% [markdown]
# The construction is float64 linear algebra; its error agrees with $\sigma_{RL+1}(E)$ to about $10^{-14}\norm{E}_2$
# (round-off of products of $L$ matrices and their inverses), so we hold it to $10^{-9}$, five decades above
# round-off and seven below the smallest error that is not an exact match ($\approx 2\cdot10^{-3}\norm{E}_2$).

# %% tags=["nbval-check-output"]
lb.claim(
    "construction error equals sigma_{RL+1}(E) in every instance (largest deviation / "
    "||E||_2)",
    dev_sigma,
    "<=",
    1e-9,
    kind="theorem",
    label="Zeng & Lee, Lemma 1",
    control=(
        "test_controls_ch1.py::test_lemma1_check_fails_one_rank_short",
        "test_controls_ch1.py::test_lemma1_construction_refuses_singular_frozen_layers",
    ),
)
lb.claim(
    "exact match from R = ceil(R_E / L) on (largest error / ||E||_2 at and above the "
    "threshold)",
    max_err_above,
    "<=",
    1e-9,
    kind="theorem",
    label="Zeng & Lee, Lemma 1 (threshold)",
    control="test_controls_ch1.py::test_lemma1_check_fails_one_rank_short",
)
lb.claim(
    "no exact match below the threshold (smallest error / ||E||_2 below it)",
    min_err_below,
    ">",
    1e-6,
    kind="theorem",
    label="Zeng & Lee, Lemma 1 (threshold)",
    control="test_controls_ch1.py::test_lemma1_below_threshold_check_fails_at_the_threshold",
)
lb.claim(
    "every adapter has rank at most R (adapters over the rank)",
    int((rec[:, 6] > rec[:, 3]).sum()),
    "==",
    0,
    kind="sanity",
)

# %% [markdown]
# ## Gradient-trained LoRA finds the same optimum
#
# Does Adam on the adapters reach what the construction proves possible? $D = 16$, $L = 2$ (so $\bar L = 1$ and the
# threshold is $R = 8$): the target $\bar W = G/\sqrt D$, frozen $W_l = I + G_l / (2\sqrt D)$ ("random"), or the same
# frozen model first trained with Adam toward the target for a few hundred steps, all weights free ("pretrained":
# a smaller, still full-rank $E$). LoRA ($B = 0$, $A$ Gaussian) is trained on fresh inputs $x\sim U[-1,1]^D$ at
# every step, batched over rank × seed × learning rate × weight decay; the learning rate and weight decay are
# selected per rank and seed on a held-out validation set, and the selected run is tested on fresh inputs and on
# a shifted input distribution $U[-\tfrac12, \tfrac32]^D$. Since $\E\norm{(M - \bar W)x}^2 = \norm{M-\bar W}_F^2/3$ for
# $x \sim U[-1,1]^D$, the best achievable test error is $\sum_{i>RL}\sigma_i^2(E)/3$, which the construction attains
# (its residual is $E - \LR_{RL}(E)$).

# %%
ranks = scale.pick(quick=[1, 4, 8, 12], default=list(range(1, 17)), paper=list(range(1, 17)))
grid = dict(
    D=16,
    n_layers=2,
    n_target=1,
    linear=True,
    seeds=scale.pick(quick=2, default=3, paper=5),
    configs=ex.grid_configs(
        ranks,
        scale.pick(quick=[1e-2], default=[1e-2, 3e-3], paper=[1e-2, 1e-3, 1e-4]),
        scale.pick(quick=[0.0], default=[0.0], paper=[0.0, 1e-4, 1e-3, 1e-2]),
        bias="none",
    ),
    steps=scale.pick(quick=400, default=1000, paper=5000),
    batch=256,
    n_test=scale.n_test,
    construction_ranks=ranks,
    device=str(lb.device()),
)
runs = {
    kind: ex.cached_grid(f"ch1-linear-{kind}", scale.name, pretrain_steps=pre, **grid)
    for kind, pre in (
        ("random", 0),
        ("pretrained", scale.pick(quick=100, default=200, paper=500)),
    )
}

# %% [markdown]
# Test MSE against the rank, median and interquartile band over seeds; solid: fresh inputs, dotted: shifted inputs.

# %%
fig, axes = plotting.subplots(2, width=4.6, sharey=True)
for ax, (kind, out) in zip(axes, runs.items()):
    plotting.band(
        ax, ranks, out["test"] + 1e-12, label="gradient LoRA", color=plotting.COLORS["lora"]
    )
    plotting.band(
        ax,
        ranks,
        out["construction_test"] + 1e-12,
        label="construction",
        color=plotting.COLORS["construction"],
        marker="s",
        linestyle="--",
    )
    plotting.band(
        ax,
        ranks,
        out["shift"] + 1e-12,
        label="gradient LoRA, shifted inputs",
        color=plotting.COLORS["lora"],
        marker="",
        linestyle=":",
    )
    plotting.mark_threshold(ax, 8, label=r"$\lceil D/L\rceil$")
    ax.set(
        yscale="log",
        xlabel="LoRA rank $R$",
        ylabel=r"test $\mathbb{E}\|f(x)-\bar f(x)\|^2$",
        title=f"{kind} frozen model",
    )
axes[0].legend(fontsize=8)
fig.suptitle("Linear model, D=16, L=2: Adam vs the construction")
fig.tight_layout()

# %%
# excess test error of the selected gradient run over the construction's (the optimum),
# relative to the frozen
# model's error, over every seed at ranks below the threshold (where the optimum is not 0) and
# at and above it
below = np.array(ranks) < 8
gap = {
    k: (np.abs(o["test"] - o["construction_test"]) / o["zero_test"][:, None])
    for k, o in runs.items()
}


def frozen_shift_error(o):
    """The frozen model's MSE on the shifted cube U[-1/2, 3/2]^D (mean 1/2, variance 1/3)."""
    E = o["target_w"][:, 0] - o["frozen_w"][:, 1] @ o["frozen_w"][:, 0]
    return (E**2).sum((1, 2)) / 3 + ((E @ np.full(E.shape[-1], 0.5)) ** 2).sum(-1)


shift_gap = {
    k: (np.abs(o["shift"] - o["construction_shift"]) / frozen_shift_error(o)[:, None])
    for k, o in runs.items()
}
exact_frac = {
    k: float((o["test"][:, ~below] / o["zero_test"][:, None] <= ex.EXACT_REL_MSE).mean())
    for k, o in runs.items()
}
gap_tol = scale.pick(quick=2e-2, default=1e-2, paper=2e-3)
shift_tol = 0.3 * math.sqrt(gap_tol)  # shifted excess: order sqrt(in-distribution excess)

# %% [markdown]
# Below the threshold the optimum is the fraction $\sum_{i>RL}\sigma_i^2/\sum_i\sigma_i^2$ of the frozen error; Adam
# is held to reach it within `gap_tol` of the frozen model's error ($2\%$ at `quick`'s 400 steps, $1\%$ at
# `default`, $0.2\%$ at `paper`), the accuracy the selected runs reach at these budgets (the largest measured at
# `paper` is $0.14\,\%$). At and above the threshold the optimum is an exact match, and the single criterion of
# this chapter is `EXACT_REL_MSE` $= 10^{-6}$ of the frozen model's error: we report the fraction of runs that meet
# it and make no claim that Adam must (see the training-budget discussion in {doc}`02_relu_fnn`).

# %% tags=["nbval-check-output"]
for kind in runs:
    lb.claim(
        f"{kind} frozen model: below the threshold the selected gradient LoRA reaches the "
        f"optimal "
        "test error (largest excess / frozen error)",
        gap[kind][:, below].max(),
        "<=",
        gap_tol,
        kind="sanity",
    )
    lb.claim(
        f"{kind} frozen model: below the threshold the fit carries over to shifted inputs "
        f"(largest "
        "excess / frozen model's error on the shifted inputs)",
        shift_gap[kind][:, below].max(),
        "<=",
        shift_tol,
        kind="sanity",
    )
    lb.claim(
        f"{kind} frozen model: at and above the threshold the selected runs come within the "
        f"budget's "
        "reach of exact (largest test error / frozen error)",
        gap[kind][:, ~below].max(),
        "<=",
        gap_tol,
        kind="sanity",
        exact_fraction=exact_frac[kind],
    )

# %% [markdown]
# Below the threshold Adam with a validated learning rate reaches the Eckart–Young optimum, also on a shifted
# input distribution (the learned product is the optimal matrix, not a fit to the training distribution); on
# shifted inputs the excess is measured against the frozen model's error there. The optimum for the training
# distribution is not the optimum for the shifted second moment $I/3 + \mathbf 1\mathbf 1^\top/4$, so the shifted
# excess is *linear* in the learned product's distance from the optimum, while the in-distribution excess is
# quadratic in it: an in-distribution excess $\varepsilon$ allows a shifted one of order $\sqrt\varepsilon$. We hold
# it to `shift_tol` $= 0.3\sqrt{\texttt{gap\_tol}}$ (4.2 %, 3 % and 1.3 % at `quick`, `default` and `paper`; the
# largest measured are 2.4 % at `default` and 0.58 % at `paper`). At and above the threshold the runs come within
# `gap_tol` of an exact match, but the fraction that meets the exact-match criterion (recorded with the claim) is
# what this budget reaches, not a property of LoRA.
#
# ## Error against the training budget
#
# Does a longer budget close the gap at and above the threshold? Same random instances, $R \in \{8, 12\}$, Adam in
# float64 with a cosine-decaying learning rate from $10^{-2}$, for several budgets $T$ (one run each), error
# relative to the frozen model's (the same exact-match criterion as everywhere in this chapter). The check asks the
# median error to fall by the factor the budgets reach: 5 between `quick`'s 150 and 400 steps, $10^6$ between
# `default`'s 500 and 3,000 steps.

# %%
lin_gen = torch.Generator().manual_seed(0)
lin_seeds = scale.pick(quick=2, default=3, paper=5)
lin = [ex.random_fnn_instance(16, 2, 1, lin_gen, linear=True) for _ in range(lin_seeds)]
lfw, lfb, ltw, ltb = (torch.stack([t[i] for t in lin]) for i in range(4))
x_lin = ex.uniform_inputs((lin_seeds, scale.n_test, 16), lin_gen, dtype=torch.float64)
lin_zero = ex.adapter_mse(lfw[:, None], lfb[:, None], ltw, ltb, x_lin, relu=False)[
    :, 0
].numpy()
lin_budgets = scale.pick(quick=[150, 400], default=[500, 3000], paper=[5000, 25000])
lin_rel = []
for T in lin_budgets:
    _, rec, _, _ = ex.fnn_training_curve(
        lfw,
        lfb,
        ltw,
        ltb,
        ex.grid_configs([8, 12], [1e-2], bias="none"),
        steps=T,
        batch=256,
        generator=lin_gen,
        x_test=x_lin,
        n_records=1,
        relu=False,
    )
    lin_rel.append(rec[-1].numpy() / lin_zero[:, None])
lin_rel = np.array(lin_rel)  # (budgets, seeds, ranks)
lin_exact = (lin_rel <= ex.EXACT_REL_MSE).mean((1, 2))
# what the budgets reach: a factor 5 at quick's 150 -> 400 steps, many decades at default and
# paper
lin_fall = scale.pick(quick=0.2, default=1e-6, paper=1e-6)
print(
    "budgets",
    lin_budgets,
    "median error / frozen",
    np.median(lin_rel, (1, 2)),
    "fraction exact",
    lin_exact,
)

# %% tags=["nbval-check-output"]
lb.claim(
    "cosine schedule, float64, at and above the threshold: the median error falls with the "
    "budget (median "
    "at the longest budget / median at the shortest)",
    float(np.median(lin_rel[-1]) / np.median(lin_rel[0])),
    "<",
    lin_fall,
    kind="sanity",
    fraction_exact=[float(v) for v in lin_exact],
    budgets=lin_budgets,
)

# %% [markdown]
# With a decaying learning rate in float64 the linear runs keep improving by orders of magnitude with the budget;
# at `default` (3,000 steps) every run met the exact-match criterion (the fractions per budget are recorded
# with the claim). The constant-rate runs of the grid above stop near $10^{-5}$–$10^{-4}$
# of the frozen error because of the step size, not because LoRA cannot represent the target: in the linear case
# the gap to the construction is a matter of the training budget and schedule.
