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
# (ch1-multilayer)=
# # Multi-layer targets: partition the frozen layers
#
# A target with $\bar L$ ReLU layers is a composition of one-layer targets. Split the $L$ frozen layers into $\bar L$
# consecutive groups of $M = \lfloor L/\bar L\rfloor$ layers and let group $i$ imitate target layer $i$ with the
# construction of {prf:ref}`lem-ch1-relu` {cite}`zeng2024expressive`. Errors of early groups are propagated by the later
# ones, which the bound accounts for with a factor $\alpha$ per remaining layer.

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
# ## The partition theorem
#
# ```{prf:theorem} Model partition (Zeng & Lee, Theorem 5)
# :label: thm-ch1-partition
# Let $E_i = \sigma_{RM+1}(\bar W_i - \prod_{l\in P_i} W_l)$. Under the assumptions of {prf:ref}`lem-ch1-linear` for each
# group, there are rank-$R$ adapters and biases with
# $\E\norm{f(x) - \bar f(x)}_2 \le \beta\sum_{i=1}^{\bar L}\alpha^{\bar L-i} E_i$; in particular $f = \bar f$ on the input
# set once $R \ge \lceil D/M\rceil$.
# ```
#
# Here $\beta$ bounds $\E\norm{\bar z_{i-1}}$ (the target's hidden states) and $\alpha = \max_k\norm{\bar W_k}_F + \max_i E_i$
# bounds the spectral norm of a group's effective weight $\hat W_i$ (that step is right:
# $\norm{\hat W_i}_2 \le \norm{\bar W_i}_2 + E_i$). As for {prf:ref}`prop-ch1-relu-bound`, one step of the proof is
# not: $\E\norm{x} \le \sqrt{\E\norm{x}^2} = \sqrt{\tr\Sigma}$, not $\sqrt{\norm\Sigma_F}$. The repaired proof changes
# only that constant. We evaluate both
# versions (`partition_bound`). The construction itself must also carry the target's biases and ReLUs between groups:
# group $i$ ends with bias $\bar b_i$ and a ReLU, and the bias shift of group $i+1$ is computed for the image of the
# input ball under group $i$ (`fnn_construction`). Setting: $D = 16$, $\bar L = 2$, $L = 4$ ($M = 2$), inputs $U[-1,1]^D$.

# %%
D, L, Lbar = 16, 4, 2
M = L // Lbar
torch_gen, _ = lb.seed_everything(3)
x = ex.uniform_inputs((scale.n_test, D), torch_gen, dtype=torch.float64)
Sigma = torch.eye(D, dtype=torch.float64) / 3
Rs = np.arange(1, D + 1)
err = np.zeros((scale.seeds, D))
b_paper, b_corr = np.zeros_like(err), np.zeros_like(err)
for s in range(scale.seeds):
    fw, fb, tw, tb = ex.random_fnn_instance(D, L, Lbar, torch_gen)
    fbar = ex.fnn_forward(x, tw, tb)
    for R in Rs:
        deltas, biases = ex.fnn_construction(
            list(tw), list(tb), list(fw), int(R), math.sqrt(D)
        )
        f = ex.fnn_forward(x, [W + d for W, d in zip(fw, deltas)], biases)
        err[s, R - 1] = (f - fbar).norm(dim=-1).mean().item()
        bound = ex.partition_bound(list(tw), list(tb), list(fw), int(R), Sigma)
        b_paper[s, R - 1], b_corr[s, R - 1] = bound["paper"], bound["corrected"]
thr = math.ceil(D / M)
scale_f = np.linalg.norm(fbar.numpy(), axis=-1).mean()
below = Rs < thr

# %% [markdown]
# Mean error $\E\norm{f(x)-\bar f(x)}_2$ of the construction against $R$, with the two versions of the bound (median, IQR
# over seeds). The bounds are zero from the threshold on, where the construction is exact.

# %%
fig, ax = plotting.subplots(1, width=6.4)
plotting.band(
    ax, Rs, err + 1e-17, label="measured (construction)", color=plotting.COLORS["construction"]
)
plotting.band(
    ax,
    Rs[below],
    b_paper[:, below],
    label=r"bound as stated ($\sqrt{\|\Sigma\|_F}$)",
    color=plotting.COLORS["other"],
    marker="",
)
plotting.band(
    ax,
    Rs[below],
    b_corr[:, below],
    label=r"repaired proof ($\sqrt{\mathrm{tr}\,\Sigma}$)",
    color=plotting.COLORS["theory"],
    marker="",
    linestyle="--",
)
plotting.mark_threshold(ax, thr, label=r"$\lceil D/M\rceil$")
ax.set(
    yscale="log",
    xlabel="LoRA rank $R$",
    ylabel=r"$\mathbb{E}\|f(x)-\bar f(x)\|_2$",
    title=rf"Two-layer target, four frozen layers (D={D}, {scale.seeds} seeds)",
)
ax.legend(fontsize=8)

# %% tags=["nbval-check-output"]
lb.claim(
    "the measured error is below the stated bound at every rank below the threshold and seed "
    "(largest "
    "measured / bound)",
    float((err[:, below] / b_paper[:, below]).max()),
    "<=",
    1.0,
    kind="sanity",
)
lb.claim(
    "and below the repaired bound (largest measured / bound)",
    float((err[:, below] / b_corr[:, below]).max()),
    "<=",
    1.0,
    kind="sanity",
)
lb.claim(
    "exact match from R = ceil(D/M) on (largest error / mean ||f_bar(x)||)",
    float(err[:, ~below].max() / scale_f),
    "<=",
    1e-9,
    kind="theorem",
    label="Zeng & Lee, Theorem 5 (threshold)",
    control="test_controls_ch1.py::test_partition_exactness_check_fails_one_rank_short",
)
lb.claim(
    "no exact match below it (smallest error / mean ||f_bar(x)||)",
    float(err[:, below].min() / scale_f),
    ">",
    1e-6,
    kind="theorem",
    label="Zeng & Lee, Theorem 5 (threshold)",
    control="test_controls_ch1.py::test_partition_exactness_check_fails_one_rank_short",
)
lb.claim(
    "the stated bound is loose: it exceeds the measured error by more than 10x below the "
    "threshold (smallest "
    "bound / measured)",
    float((b_paper[:, below] / err[:, below]).min()),
    ">",
    10.0,
    kind="sanity",
)

# %% [markdown]
# The threshold is where the theorem puts it: each group of $M = 2$ layers needs $2R \ge \rank(\bar W_i - \prod W) = D$.
# Below it the bound holds, as stated and as repaired, but is loose by orders of magnitude: $\alpha^{\bar L - i}$
# multiplies Frobenius norms, while the error that actually propagates is governed by spectral norms and halved by
# ReLUs. The stated constant holds here by a wide margin, so the wrong proof step is an error of the proof, not a
# counterexample to the theorem. A bound this loose cannot tell a right construction from a wrong one (adapters of
# the wrong rank, or a bound given the wrong input moment, still pass it), so the bound checks are sanity checks;
# the theorem is tested by its threshold.
