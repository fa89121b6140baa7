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
# All three papers of this book study one object: a frozen pretrained weight $W_0 \in \R^{d_\text{out}\times d_\text{in}}$
# plus a trainable low-rank update {cite}`hu2022lora`,
#
# $$ W = W_0 + \Delta W, \qquad \Delta W = s\, B A, \qquad B \in \R^{d_\text{out}\times r},\ A \in \R^{r\times d_\text{in}}, $$
#
# with a rank $r \ll \min(d_\text{in}, d_\text{out})$ and a scaling $s$ ($s = \alpha/r$ in Hu et al.; $s=1$ here unless
# stated). This page fixes the notation, and checks four facts the later chapters lean on. Each section is
# *claim → code → figure → check*: the last cell of a section asserts the claim and fails the build if it is false.
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
# In code, `lorabook.LoRALinear` is this object; `lorabook.get_scale()` sets the sizes of every experiment.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch
from torch import nn

import lorabook as lb
from lorabook import plotting
from lorabook.train import batched_adam

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# ## The update is low-rank and cheap
#
# ```{prf:proposition} Parameter count
# :label: prop-lora-count
# $\rank(BA) \le r$, and the adapter has $r(d_\text{in} + d_\text{out})$ entries instead of the $d_\text{in}d_\text{out}$
# of a full update.
# ```
#
# We give a $512 \times 256$ layer adapters of every rank with random (non-zero) factors and measure the
# numerical rank of $\Delta W$ and the parameter counts.

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

fig, ax = plotting.subplots(2, width=4.0)
ax[0].plot(ranks, measured_rank, "o-", color=plotting.COLORS["lora"], label=r"numerical rank of $BA$")
ax[0].plot(ranks, ranks, "k:", label="$r$")
ax[0].set(xscale="log", yscale="log", xlabel="LoRA rank $r$", ylabel="rank", title="rank of the update")
ax[1].plot(ranks, counts, "o-", color=plotting.COLORS["lora"], label="LoRA")
ax[1].axhline(d_in * d_out, color=plotting.COLORS["full"], label="full update")
ax[1].set(xscale="log", yscale="log", xlabel="LoRA rank $r$", ylabel="trainable parameters", title="cost")
for a in ax:
    a.legend()
fig.suptitle(f"A {d_out}×{d_in} layer: LoRA's update has rank r and r(d_in+d_out) parameters")
fig.tight_layout()

# %% tags=["nbval-check-output"]
lb.claim("rank(BA) equals r for generic factors", measured_rank == ranks, measured=measured_rank)
lb.claim("LoRA trains r(d_in + d_out) parameters", counts == [r * (d_in + d_out) for r in ranks], counts=counts)

# %% [markdown]
# ## Merging is exact
#
# After training, $\Delta W$ is added into $W_0$ and the adapter disappears: inference costs nothing extra. In
# float64 the merged layer and the adapted layer agree to rounding error.

# %%
layer = lb.LoRALinear(base, 8, generator=torch_gen)
with torch.no_grad():
    layer.B.normal_(generator=torch_gen)
x = torch.randn(1_000, d_in, dtype=torch.float64, generator=torch_gen)
merged = layer.merge()
merge_err = (merged(x) - layer(x)).abs().max().item() / layer(x).abs().max().item()

# %% tags=["nbval-check-output"]
lb.claim("merged layer equals adapter layer (relative error < 1e-12)", merge_err < 1e-12, merge_err=merge_err)

# %% [markdown]
# ## Weight decay on the factors is the nuclear norm
#
# ```{prf:lemma} Factorised nuclear norm
# :label: lem-nuclear
# (Recht, Fazel & Parrilo {cite}`recht2010guaranteed`, Lemma 5.1.) For any $X$ of rank $\le r$, $\displaystyle \min_{BA = X} \tfrac12\left(\norm{A}_F^2 + \norm{B}_F^2\right) = \norm{X}_*$,
# attained at the balanced factorisation $B = U_r\Sigma_r^{1/2}$, $A = \Sigma_r^{1/2}V_r^\top$.
# ```
#
# This is why LoRA trained with weight decay $\tfrac\lambda2(\norm{A}_F^2+\norm{B}_F^2)$ solves a nuclear-norm-regularised
# problem restricted to rank $\le r$ — the bridge chapter 2 {cite}`jang2024lora` is built on. Every factorisation of
# $X$ is $(BG, G^{-1}A)$ for an invertible $G$; we minimise the cost over $G$ by gradient descent from random
# starts, batched over many random $X$, and compare the minimum with $\norm{X}_*$ and with the balanced
# factorisation.

# %%
n_mats, m, n, r = scale.pick(quick=8, default=32, paper=128), 12, 10, 4
torch_gen, _ = lb.seed_everything(1)
X = torch.randn(n_mats, m, r, dtype=torch.float64, generator=torch_gen) @ torch.randn(n_mats, r, n, dtype=torch.float64, generator=torch_gen)
U, S, Vh = torch.linalg.svd(X, full_matrices=False)
nuc = S.sum(-1)                                                          # ‖X‖_*
B0 = U[..., :r] * S[:, None, :r].sqrt()                                  # balanced factors
A0 = S[..., :r, None].sqrt() * Vh[:, :r]
balanced_cost = 0.5 * (A0.square().sum((-1, -2)) + B0.square().sum((-1, -2)))

# a random (unbalanced) starting factorisation, then descend over G
Gmix = torch.linalg.matrix_exp(0.5 * torch.randn(n_mats, r, r, dtype=torch.float64, generator=torch_gen))
Bs, As = B0 @ Gmix, torch.linalg.solve(Gmix, A0)
G = torch.eye(r, dtype=torch.float64).repeat(n_mats, 1, 1)


def factor_cost(step):
    return 0.5 * ((Bs @ G).square().sum((-1, -2)) + torch.linalg.solve(G, As).square().sum((-1, -2)))


start_cost = factor_cost(0).detach()
trace = batched_adam([G], factor_cost, scale.pick(quick=800, default=2_000, paper=4_000), lr=1e-2, record_every=10)
end_cost = factor_cost(0).detach()
gap_end = ((end_cost - nuc) / nuc)
gap_balanced = ((balanced_cost - nuc) / nuc).abs().max().item()
gap_start_min = ((start_cost - nuc) / nuc).min().item()

# %%
fig, ax = plotting.subplots(1, width=5.5)
steps = 10 * np.arange(1, trace.shape[0] + 1)
plotting.band(ax, steps, ((trace - nuc) / nuc).numpy().T + 1e-16, label="min over $G$ by Adam (median, IQR)",
              color=plotting.COLORS["lora"], marker="")
ax.set(yscale="log", xlabel="Adam step", ylabel=r"$(\mathrm{cost} - \|X\|_*)/\|X\|_*$",
       title=f"{n_mats} random rank-{r} matrices: factor weight decay → nuclear norm")
ax.legend()

# %% tags=["nbval-check-output"]
lb.claim("balanced factorisation costs exactly ||X||_*", gap_balanced < 1e-12, gap=gap_balanced)
lb.claim("no factorisation costs less than ||X||_*", bool((gap_end > -1e-10).all()) and gap_start_min > -1e-10,
         min_gap=gap_end.min().item())
lb.claim("descent over all factorisations reaches ||X||_*", gap_end.max().item() < scale.tol, max_gap=gap_end.max().item())

# %% [markdown]
# ## A trained LoRA finds the best rank-$r$ update
#
# Fit $\Delta W$ to a target update $\Delta^\star$ of rank 6 by Adam on $\norm{BA - \Delta^\star}_F^2$, for $r = 1,\dots,8$
# and several seeds in one batched run (ranks are padded to $r_\text{max}$ and masked). By Eckart–Young the best
# achievable error is $\sum_{i>r}\sigma_i^2(\Delta^\star)$ — the linear-algebra fact behind chapter 1.

# %%
torch_gen, _ = lb.seed_everything(2)
d, true_rank, r_max, seeds = 20, 6, 8, scale.pick(quick=2, default=5, paper=20)
target = torch.randn(d, true_rank, dtype=torch.float64, generator=torch_gen) @ torch.randn(true_rank, d, dtype=torch.float64, generator=torch_gen) / d**0.5
sv = torch.linalg.svdvals(target)
best = torch.tensor([sv[r:].square().sum().item() for r in range(1, r_max + 1)])
rank_grid = torch.arange(1, r_max + 1).repeat_interleave(seeds)              # (R·S,)
mask = (torch.arange(r_max)[None] < rank_grid[:, None]).double()             # (R·S, r_max)
A = 0.1 * torch.randn(len(rank_grid), r_max, d, dtype=torch.float64, generator=torch_gen)
Bf = 0.1 * torch.randn(len(rank_grid), d, r_max, dtype=torch.float64, generator=torch_gen)


def fit_loss(step):
    return ((Bf * mask[:, None, :]) @ A - target).square().sum((-1, -2))


batched_adam([A, Bf], fit_loss, scale.pick(quick=1_500, default=3_000, paper=6_000), lr=1e-2)
final = fit_loss(0).detach().reshape(r_max, seeds)
excess = ((final - best[:, None]) / sv.square().sum()).max().item()

# %%
fig, ax = plotting.subplots(1, width=5.5)
rs = np.arange(1, r_max + 1)
plotting.band(ax, rs, final.T.numpy() + 1e-12, label="trained LoRA (median over seeds)", color=plotting.COLORS["lora"])
ax.plot(rs, best.numpy() + 1e-12, "k--", label=r"$\sum_{i>r}\sigma_i^2$ (Eckart–Young)")
plotting.mark_threshold(ax, true_rank, label=r"$\mathrm{rank}\,\Delta^\star$")
ax.set(yscale="log", xlabel="LoRA rank $r$", ylabel=r"$\|BA-\Delta^\star\|_F^2$", title="LoRA reaches the truncated SVD")
ax.legend()

# %% tags=["nbval-check-output"]
lb.claim("trained LoRA error matches the Eckart-Young bound at every rank", excess < scale.tol, excess=excess)

# %% [markdown]
# ## The asymmetric modes train what they say
#
# Chapter 3 {cite}`kratsios2025sharp` freezes a random $B$ and trains $A$; Zhu et al. {cite}`zhu2024asymmetry`
# freeze a random $A$ and train $B$. One optimiser step on a random regression must move exactly the trainable
# factor, and every mode starts at $\Delta W = 0$ (the pretrained model).

# %%
torch_gen, _ = lb.seed_everything(3)
moved = {}
for mode in ("both", "A", "B"):
    layer = lb.LoRALinear(nn.Linear(16, 8).double(), 4, train=mode, generator=torch_gen)
    start = {k: v.detach().clone() for k, v in (("A", layer.A), ("B", layer.B))}
    zero_at_init = layer.delta_weight().abs().max().item() == 0
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # two steps: with B = 0, the first step of "both" moves only B
        xb = torch.randn(32, 16, dtype=torch.float64, generator=torch_gen)
        opt.zero_grad()
        layer(xb).square().mean().backward()
        opt.step()
    moved[mode] = {k: bool((getattr(layer, k) != v).any()) for k, v in start.items()} | {"zero_at_init": zero_at_init}
    print(f"train={mode!r}: trainable parameters {layer.num_trainable():>3}, moved: "
          + ", ".join(k for k in "AB" if moved[mode][k]))

# %% tags=["nbval-check-output"]
lb.claim("every mode starts at the pretrained weight", all(v["zero_at_init"] for v in moved.values()))
lb.claim("train='both' moves A and B", moved["both"]["A"] and moved["both"]["B"])
lb.claim("train='A' moves only A (B frozen random)", moved["A"]["A"] and not moved["A"]["B"])
lb.claim("train='B' moves only B (A frozen random)", moved["B"]["B"] and not moved["B"]["A"])

# %% [markdown]
# ## What the chapters do with this object
#
# * **Chapter 1** {cite}`zeng2024expressive` asks how small $r$ may be for $W_0 + \Delta W$ to *represent* a target.
# * **Chapter 2** {cite}`jang2024lora` asks whether gradient descent on $(A, B)$ *finds* the best update, using the
#   nuclear-norm identity above.
# * **Chapter 3** {cite}`kratsios2025sharp` asks how well the trained $A$ (with $B$ frozen random) *generalises*.
