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
# (ntk-landscape)=
# # A picture of the landscape
#
# The paper's Figure 1 shows, on a toy problem, where the low-rank solutions lie for three objectives; the exact
# objectives were lost from our copy of the text. This page is **our own** small analog with the same message.
# Take $2\times2$ updates $\delta$, one sample ($N = K = 1$) and the squared error
# $\hat L(\delta) = \tfrac12(\langle G, \delta\rangle - y)^2$ with $G = I_2$, $y = 1$, so the loss only sees
# $\tr\delta$. We draw the plane of diagonal-plus-symmetric updates
# $\delta(a, b) = \begin{bmatrix} a & c\\ c & b\end{bmatrix}$ at a fixed off-diagonal $c$ and colour:
#
# * (a) $\lambda = 0$: the global minimisers form the line $a + b = 1$; the rank-1 ones are where it crosses the
#   conic $ab = c^2$ — they exist, as Theorem 3.1 promises ($r = 1$, $r(r+1)/2 = 1 \le KN$);
# * (b) $\lambda > 0$: since $|\tr\delta| \le \norm{\delta}_*$ with equality exactly for symmetric PSD $\delta$, the
#   global minimisers are the PSD matrices with trace $1 - \lambda$ and the optimum is $\lambda(1 - \lambda/2)$; in
#   the slice $c = 0$ they form a segment whose endpoints have rank 1.
#
# Then LoRA with rank 1 and weight decay, $\delta = \beta\alpha^\top$, from many random starts: every run ends on that
# set of global minima (the threshold $r(r+1)/2 > KN$ already holds at $r = 2$; here even $r = 1$ works).

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import ntk, plotting

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
G = torch.eye(2, dtype=torch.float64).reshape(1, 1, 2, 2)
y = torch.ones(1, 1, dtype=torch.float64)
lam = 0.2
prob0 = ntk.LinearisedProblem(G, torch.zeros(1, 1), y, 0.0)
prob = ntk.LinearisedProblem(G, torch.zeros(1, 1), y, lam)
opt = ntk.proximal_gradient(prob, 2_000, tol=1e-12)
F_star = opt.cert.primal  # = λ(1 − λ/2) for this problem

grid = np.linspace(-0.6, 1.6, 221)
a, b = np.meshgrid(grid, grid)
D = torch.tensor(np.stack([a, np.zeros_like(a), np.zeros_like(a), b], -1).reshape(-1, 1, 2, 2))
surf0 = prob0.objective(D).numpy().reshape(a.shape)
surf = prob.objective(D).numpy().reshape(a.shape)

n_init = scale.pick(quick=8, default=40, paper=200)
torch_gen, _ = lb.seed_everything(6)
B0, A0, rk = ntk.lora_init(
    prob.shape, [1], n_init, init_std=0.8, zero_B=False, generator=torch_gen
)
runs = ntk.lora_gd(prob, B0, A0, rk, scale.pick(quick=1_500, default=3_000, paper=5_000), 0.1)
ends = runs.delta[:, 0]
gaps = ((runs.objective - F_star) / F_star).numpy()

# %%
fig, ax = plotting.subplots(2, width=4.4)
for axi, z, title in [
    (ax[0], surf0, r"(a) $\lambda = 0$"),
    (ax[1], surf, rf"(b) $\lambda = {lam}$"),
]:
    cs = axi.contourf(a, b, np.log10(z - z.min() + 1e-3), levels=20, cmap="Greys_r")
    axi.set(
        xlabel="$a = \\delta_{11}$", ylabel="$b = \\delta_{22}$", title=title, aspect="equal"
    )
ax[0].plot(grid, 1 - grid, color=plotting.COLORS["full"], label="global minima ($a+b=1$)")
ax[0].plot(
    [0, 1], [1, 0], "o", color=plotting.COLORS["lora"], label="rank-1 global minima ($c = 0$)"
)
ax[1].plot(
    [0, 1 - lam],
    [1 - lam, 0],
    color=plotting.COLORS["full"],
    lw=3,
    label="global minima (PSD, trace $1-\\lambda$)",
)
ax[1].scatter(
    ends[:, 0, 0],
    ends[:, 1, 1],
    s=14,
    color=plotting.COLORS["lora"],
    zorder=3,
    label=f"rank-1 LoRA ends ({n_init} starts)",
)
for axi in ax:
    axi.legend(fontsize=7, loc="upper right")
fig.suptitle(
    "Our toy analog of the paper's Figure 1 (slice c = 0 of 2×2 updates; grey: log objective)"
)
fig.tight_layout()

# %% [markdown]
# *What to see:* without regularisation a whole line of global minima, two of rank 1; with $\lambda > 0$ the minima
# shrink to the segment of PSD matrices with trace $1 - \lambda$, and rank-1 LoRA from every start lands on it
# (plotted are the diagonal entries of the LoRA ends; their off-diagonal entries are small but not zero, which
# the slice does not show).

# %% tags=["nbval-check-output"]
# Tolerances: every quantity below reaches rounding level (≈1e-16) at `quick` and `default`;
# we hold the optimum's value (solved to a relative duality gap of 1e-12) and the LoRA ends'
# gap, trace and smallest eigenvalue to 1e-12.
eig_min = float(torch.linalg.eigvalsh(0.5 * (ends + ends.transpose(-1, -2))).min())
trace_err = float((ends.diagonal(dim1=-2, dim2=-1).sum(-1) - (1 - lam)).abs().max())
lb.claim(
    "the certified optimum equals lambda(1 - lambda/2)",
    abs(F_star - lam * (1 - lam / 2)),
    "<=",
    1e-12,
    kind="sanity",
    F=F_star,
)
lb.claim(
    "every rank-1 LoRA run reaches the global minimum (relative gap)",
    float(gaps.max()),
    "<=",
    1e-12,
    kind="sanity",
)
lb.claim("every LoRA end has trace 1 - lambda", trace_err, "<=", 1e-12, kind="sanity")
lb.claim(
    "every LoRA end is PSD (smallest eigenvalue of its symmetric part)",
    eig_min,
    ">=",
    -1e-12,
    kind="sanity",
)
