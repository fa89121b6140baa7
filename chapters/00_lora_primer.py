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
# (primer)=
# # LoRA in one page
#
# All three papers of this book study one object: a frozen pretrained weight
# $W_0 \in \R^{d_\text{out}\times d_\text{in}}$ plus a trainable low-rank update {cite}`hu2022lora`,
#
# $$ W = W_0 + \Delta W, \qquad \Delta W = s\, B A, \qquad B \in \R^{d_\text{out}\times r},\
# A \in \R^{r\times d_\text{in}}, $$
#
# with a rank $r \ll \min(d_\text{in}, d_\text{out})$ and a scaling $s$ ($s = \alpha/r$ in Hu et al.; $s=1$ here
# unless stated). This page fixes the notation and checks the facts the later chapters lean on. Each section is
# *claim → code → figure → check*: the last cell of a section asserts the claim and fails the build if it is false.
# Most checks here are **sanity** checks of the book's own code; one tests a published lemma, and its negative
# control (a test in which the same check fails) is named in the {ref}`claims ledger <ledger>`.
#
# ## Notation
#
# The symbols every chapter uses (the {ref}`notation page <notation>` lists all of them):
#
# | symbol | meaning |
# |---|---|
# | $W_0$, $W_l$ | frozen (pretrained) weight; $W_l$ of layer $l$, applied in the order $W_1$ first |
# | $\Delta W = BA$ | LoRA update of rank $\le r$; $B$ is $d_\text{out}\times r$, $A$ is $r\times d_\text{in}$ |
# | $\LR_r(M)$ | best rank-$r$ approximation of $M$ (truncated SVD, {cite}`eckart1936approximation`) |
# | $\sigma_i(M)$ | $i$-th largest singular value; $\sigma_i = 0$ for $i > \rank M$ |
# | $\norm{M}_*$, $\norm{M}_F$, $\norm{M}_2$ | nuclear ($\sum_i\sigma_i$), Frobenius, spectral norm |
# | $N$, $K$, $\lambda$ | fine-tuning samples, output dimension, weight decay |
#
# In code, {py:class}`lorabook.LoRALinear <lorabook.lora.LoRALinear>` is this object;
# {py:func}`lorabook.get_scale <lorabook.config.get_scale>` sets the sizes of every experiment.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch
from myst_nb import glue
from torch import nn

import lorabook as lb
from lorabook import plotting
from lorabook.lora import weight_decay_gap
from lorabook.train import batched_adam

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# ## The update is low-rank and cheap
#
# ```{prf:proposition} Parameter count
# :label: prop-lora-count
# $\rank(BA) \le r$, and the adapter has $r(d_\text{in} + d_\text{out})$ entries instead of the
# $d_\text{in}d_\text{out}$ of a full update.
# ```
#
# We give a $512 \times 256$ layer adapters of every rank with random (non-zero) factors and measure the
# numerical rank of $\Delta W$ (singular values above $\max(m, n)\,\varepsilon\,\sigma_1$) and the parameter counts.
#
# Code: {py:class}`lorabook.lora.LoRALinear`, {py:func}`lorabook.linalg.numerical_rank`.

# %%
d_in, d_out = 256, 512
torch_gen, _ = lb.seed_everything(0)
base = nn.Linear(d_in, d_out).double()
ranks = [1, 2, 4, 8, 16, 32, 64]
measured_rank, counts = [], []
for r in ranks:
    layer = lb.LoRALinear(base, r, generator=torch_gen)
    with torch.no_grad():
        layer.B.normal_(generator=torch_gen)  # non-zero B, as after training
    measured_rank.append(lb.numerical_rank(layer.delta_weight()))
    counts.append(layer.num_trainable())

# %% tags=["hide-input"]
fig, ax = plotting.subplots(2, width=4.0)
ax[0].plot(ranks, measured_rank, "o-", color=plotting.COLORS["lora"],
           label=r"numerical rank of $BA$")
ax[0].plot(ranks, ranks, "k:", label="$r$")
ax[0].set(xscale="log", yscale="log", xlabel="LoRA rank $r$", ylabel="rank",
          title="rank of the update")
ax[1].plot(ranks, counts, "o-", color=plotting.COLORS["lora"], label="LoRA")
ax[1].axhline(d_in * d_out, color=plotting.COLORS["full"], label="full update")
ax[1].set(xscale="log", yscale="log", xlabel="LoRA rank $r$", ylabel="trainable parameters",
          title="cost")
for a in ax:
    a.legend()
fig.suptitle(f"A {d_out}×{d_in} layer: the update has rank r and r(d_in+d_out) parameters")
fig.tight_layout()

# %% [markdown]
# Both checks are exact integer comparisons: ranks and counts either agree at every $r$ or they do not.

# %% tags=["nbval-check-output"]
rank_misses = sum(m != r for m, r in zip(measured_rank, ranks))
count_misses = sum(c != r * (d_in + d_out) for c, r in zip(counts, ranks))
lb.claim("rank(BA) equals r for generic factors, at every rank", rank_misses, "==", 0,
         kind="sanity", measured_ranks=measured_rank)
lb.claim("LoRA trains r(d_in + d_out) parameters, at every rank", count_misses, "==", 0,
         kind="sanity", counts=counts)

# %% [markdown]
# ## Merging is exact
#
# After training, $\Delta W$ is added into $W_0$ and the adapter disappears: inference costs nothing extra. In
# float64 the merged layer and the adapted layer agree to rounding error. Each output entry is a sum of
# $d_\text{in} = 256$ products, so rounding can reach a few hundred times $\varepsilon \approx 2\cdot10^{-16}$ in the
# worst case; we hold the relative difference to $10^{-12}$, well above that and far below any real disagreement.
#
# Code: {py:meth}`lorabook.lora.LoRALinear.merge`.

# %%
layer = lb.LoRALinear(base, 8, generator=torch_gen)
with torch.no_grad():
    layer.B.normal_(generator=torch_gen)
x = torch.randn(1_000, d_in, dtype=torch.float64, generator=torch_gen)
merged = layer.merge()
merge_err = (merged(x) - layer(x)).abs().max().item() / layer(x).abs().max().item()

# %% tags=["nbval-check-output"]
lb.claim("merged layer equals adapter layer to float64 rounding", merge_err, "<=", 1e-12,
         kind="sanity")

# %% [markdown]
# ## Weight decay on the factors is the nuclear norm
#
# ```{prf:lemma} Jang et al., Lemma 2.2 — weight decay on the factors is the nuclear norm
# :label: lem-nuclear
# :nonumber:
# :class: paper
# (Lemma 5.1 of Recht, Fazel & Parrilo {cite}`recht2010guaranteed`, restated by Jang, Lee & Ryu
# {cite}`jang2024lora`.) For any $X$ of rank $\le r$,
# $\displaystyle \min_{BA = X} \tfrac12\left(\norm{A}_F^2 + \norm{B}_F^2\right) = \norm{X}_*$,
# attained at the balanced factorisation $B = U_r\Sigma_r^{1/2}$, $A = \Sigma_r^{1/2}V_r^\top$.
# ```
#
# This is why LoRA trained with weight decay $\tfrac\lambda2(\norm{A}_F^2+\norm{B}_F^2)$ solves a
# nuclear-norm-regularised problem restricted to rank $\le r$ — the bridge chapter 2 {cite}`jang2024lora` is built
# on. Every factorisation of $X$ is $(BG, G^{-1}A)$ for an invertible $G$. We draw many random rank-$r$ matrices
# $X$, start from a random unbalanced factorisation of each, and let Adam search over $G$ for a cheaper one,
# recording the relative gap $(\tfrac12(\norm{A}_F^2+\norm{B}_F^2) - \norm{X}_*)/\norm{X}_*$ of every factorisation it
# visits. The lemma says no gap is negative.
#
# Code: {py:func}`lorabook.lora.weight_decay_gap`, {py:func}`lorabook.train.batched_adam`.

# %%
n_mats, m, n, r = scale.pick(quick=8, default=32, paper=128), 12, 10, 4
torch_gen, _ = lb.seed_everything(1)
f64 = dict(dtype=torch.float64, generator=torch_gen)
X = torch.randn(n_mats, m, r, **f64) @ torch.randn(n_mats, r, n, **f64)
U, S, Vh = torch.linalg.svd(X, full_matrices=False)
B0 = U[..., :r] * S[:, None, :r].sqrt()                                  # balanced factors
A0 = S[..., :r, None].sqrt() * Vh[:, :r]
# a random (unbalanced) starting factorisation, then descend over G
Gmix = torch.linalg.matrix_exp(0.5 * torch.randn(n_mats, r, r, **f64))
Bs, As = B0 @ Gmix, torch.linalg.solve(Gmix, A0)
G = torch.eye(r, dtype=torch.float64).repeat(n_mats, 1, 1)


def gap(step):
    """relative gap of the factorisation (Bs G, G^-1 As) of X; one value per matrix"""
    return weight_decay_gap(X, Bs @ G, torch.linalg.solve(G, As))


steps = scale.pick(quick=800, default=2_000, paper=4_000)
trace = batched_adam([G], gap, steps, lr=1e-2, record_every=10)   # (records, n_mats)
visited = torch.cat([trace, gap(0).detach()[None]])                # ... and the last one
gap_balanced = weight_decay_gap(X, B0, A0).abs().max().item()
deficit = (-visited).max().item()            # how far below ||X||_* any factorisation got
gap_end = visited[-1].max().item()

# %% tags=["hide-input"]
fig, ax = plotting.subplots(1, width=5.5)
plotting.band(ax, 10 * np.arange(1, trace.shape[0] + 1), trace.numpy().T + 1e-16, marker="",
              label="min over $G$ by Adam (median, IQR)", color=plotting.COLORS["lora"])
ax.set(yscale="log", xlabel="Adam step", ylabel=r"$(\mathrm{cost} - \|X\|_*)/\|X\|_*$",
       title=f"{n_mats} random rank-{r} matrices: factor weight decay → nuclear norm")
ax.legend()
fig.tight_layout()

# %% [markdown]
# Three checks. The balanced factorisation costs exactly $\norm{X}_*$: an SVD identity, held to $10^{-12}$ (float64
# rounding of a $12\times10$ SVD and of the sums is $\sim 10^{-15}$). The lemma's inequality: the most negative gap
# among all visited factorisations, held to the same $10^{-12}$ — rounding may put a factorisation that attains the
# minimum a hair below it, a genuinely cheaper factorisation would be orders of magnitude below. Its negative
# control feeds the same check a pair that is a factorisation of $\LR_{r-1}(X)$ instead of $X$, which costs
# $\sigma_r(X)$ less, and the check fails. Finally, the descent itself reaches $\norm{X}_*$ (a check of our
# optimiser, not of the lemma): within $10^{-3}$ (within $3\cdot10^{-2}$ at `quick`, which runs fewer steps).

# %% tags=["nbval-check-output"]
lb.claim("the balanced factorisation costs exactly ||X||_*", gap_balanced, "<=", 1e-12,
         kind="sanity")
lb.claim("no factorisation of X costs less than ||X||_*", deficit, "<=", 1e-12,
         kind="theorem", label="Jang et al., Lemma 2.2 (Recht, Fazel & Parrilo, Lemma 5.1)",
         control="test_controls_front.py::test_weight_decay_lemma_fails_one_rank_short",
         factorisations=visited.numel())
lb.claim("descent over all factorisations reaches ||X||_*", gap_end, "<=",
         scale.pick(quick=3e-2, default=1e-3, paper=1e-3), kind="sanity")

# %% [markdown]
# ## A trained LoRA finds the best rank-$r$ update
#
# Fit $\Delta W$ to a target update $\Delta^\star$ of rank 6 by Adam on $\norm{BA - \Delta^\star}_F^2$, for
# $r = 1,\dots,8$ and several seeds in one batched run (ranks are padded to $r_\text{max}$ and masked). By
# Eckart–Young the best achievable error is $\sum_{i>r}\sigma_i^2(\Delta^\star)$ — the linear-algebra fact behind
# chapter 1. The check holds the largest excess over that optimum, relative to $\norm{\Delta^\star}_F^2$, to
# $10^{-5}$: Adam in float64 gets within about $10^{-8}$ here, while a run stuck at a saddle (a direction of
# $\Delta^\star$ not learned) would miss by a whole $\sigma_i^2(\Delta^\star)/\norm{\Delta^\star}_F^2$, at least
# {glue:text}`smallest_share:.0e` on this target.
#
# Code: {py:func}`lorabook.train.batched_adam`.

# %%
torch_gen, _ = lb.seed_everything(2)
d, true_rank, r_max, seeds = 20, 6, 8, scale.pick(quick=2, default=5, paper=20)
f64 = dict(dtype=torch.float64, generator=torch_gen)
target = torch.randn(d, true_rank, **f64) @ torch.randn(true_rank, d, **f64) / d**0.5
sv = torch.linalg.svdvals(target)
best = torch.tensor([sv[r:].square().sum().item() for r in range(1, r_max + 1)])
rank_grid = torch.arange(1, r_max + 1).repeat_interleave(seeds)              # (R·S,)
mask = (torch.arange(r_max)[None] < rank_grid[:, None]).double()             # (R·S, r_max)
A = 0.1 * torch.randn(len(rank_grid), r_max, d, **f64)
Bf = 0.1 * torch.randn(len(rank_grid), d, r_max, **f64)


def fit_loss(step):
    return ((Bf * mask[:, None, :]) @ A - target).square().sum((-1, -2))


batched_adam([A, Bf], fit_loss, scale.pick(quick=1_500, default=3_000, paper=6_000), lr=1e-2)
final = fit_loss(0).detach().reshape(r_max, seeds)
excess = ((final - best[:, None]) / sv.square().sum()).max().item()
smallest_share = (sv[true_rank - 1].square() / sv.square().sum()).item()
glue("smallest_share", smallest_share, display=False)

# %% tags=["hide-input"]
fig, ax = plotting.subplots(1, width=5.5)
rs = np.arange(1, r_max + 1)
plotting.band(ax, rs, final.T.numpy() + 1e-12, label="trained LoRA (median over seeds)",
              color=plotting.COLORS["lora"])
ax.plot(rs, best.numpy() + 1e-12, "k--", label=r"$\sum_{i>r}\sigma_i^2$ (Eckart–Young)")
plotting.mark_threshold(ax, true_rank, label=r"$\mathrm{rank}\,\Delta^\star$")
ax.set(yscale="log", xlabel="LoRA rank $r$", ylabel=r"$\|BA-\Delta^\star\|_F^2$",
       title="LoRA reaches the truncated SVD")
ax.legend()
fig.tight_layout()

# %% tags=["nbval-check-output"]
lb.claim("trained LoRA error matches the Eckart-Young optimum at every rank", excess, "<=",
         1e-5, kind="sanity")

# %% [markdown]
# ## The asymmetric modes train what they say
#
# Chapter 3 {cite}`kratsios2025sharp` freezes a random $B$ and trains $A$; Zhu et al. {cite}`zhu2024asymmetry`
# freeze a random $A$ and train $B$. Two optimiser steps on a random regression must move exactly the trainable
# factors, and every mode starts at $\Delta W = 0$ (the pretrained model).
#
# Code: {py:class}`lorabook.lora.LoRALinear` (argument `train`).

# %%
torch_gen, _ = lb.seed_everything(3)
moved, start_size = {}, {}
for mode in ("both", "A", "B"):
    layer = lb.LoRALinear(nn.Linear(16, 8).double(), 4, train=mode, generator=torch_gen)
    start = {k: getattr(layer, k).detach().clone() for k in "AB"}
    start_size[mode] = layer.delta_weight().abs().max().item()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # two steps: with B = 0, the first step of "both" moves only B
        xb = torch.randn(32, 16, dtype=torch.float64, generator=torch_gen)
        opt.zero_grad()
        layer(xb).square().mean().backward()
        opt.step()
    moved[mode] = "".join(k for k in "AB" if (getattr(layer, k) != start[k]).any())
    print(f"train={mode!r}: {layer.num_trainable():>3} trainable, moved: {moved[mode]}")

# %% tags=["nbval-check-output"]
expected = {"both": "AB", "A": "A", "B": "B"}
lb.claim("every mode starts at the pretrained weight (Delta W = 0)", max(start_size.values()),
         "==", 0, kind="sanity")
lb.claim("each mode moves exactly its trainable factors", sum(moved[k] != v for k, v in
         expected.items()), "==", 0, kind="sanity", moved=moved)

# %% [markdown]
# ## What the chapters do with this object
#
# * **Chapter 1** {cite}`zeng2024expressive` asks how small $r$ may be for $W_0 + \Delta W$ to *represent* a
#   target.
# * **Chapter 2** {cite}`jang2024lora` asks whether gradient descent on $(A, B)$ *finds* the best update, using the
#   nuclear-norm identity above.
# * **Chapter 3** {cite}`kratsios2025sharp` asks how well the trained $A$ (with $B$ frozen random)
#   *generalises*.
