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
# (ch1-transformer)=
# # Transformer networks: rank $\lceil D/2\rceil$ when every weight differs
#
# In a Transformer network (TFN) the attention of head $h$ uses its weights only through two products: the
# scores $\mathrm{softmax}(Z W_Q^{h\top} W_K^h Z^\top)$ depend on $W_K^{h\top}W_Q^h$ and the values on
# $W_O^hW_V^h$. Each product is a two-matrix chain, so {prf:ref}`lem-ch1-linear` with $L = 2$ applies to it:
# rank-$R$ adapters on both factors remove $2R$ singular directions of its difference to a wanted product.
# The paper's theorem lets the target and the frozen TFN differ in *every* weight, feed-forward blocks included;
# the feed-forward differences are pushed into the attention products of the same and the next layer.

# %% tags=["nbval-ignore-output"]
import math

import numpy as np
import torch

import lorabook as lb
from lorabook import expressivity as ex
from lorabook import plotting
from lorabook.train import cached_sweep

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# ## Exact match from $R = \lceil D/2\rceil$
#
# ```{prf:theorem} Zeng & Lee, Transformer networks
# :label: thm-ch1-tfn
# :nonumber:
# :class: paper
# Let the target TFN and the frozen TFN have the same architecture ($L$ layers, $H$ heads, width $D$) and
# arbitrary, different weights. Under non-singularity assumptions on the frozen weights (those of
# {prf:ref}`lem-ch1-linear` for each attention pair, and invertible feed-forward weights), LoRA adapters of rank
# $R \ge \lceil D/2\rceil$ on $W_Q, W_K, W_V, W_O$ of every head and layer, together with updated feed-forward
# biases and an update of the output weights, make the adapted TFN equal the target on every input.
# ```
#
# *As we restate and implement it.* Our TFN ({py:func}`lorabook.expressivity.tfn_forward`) has, per layer, $H$
# softmax heads summed, then $Z \leftarrow \mathrm{ReLU}(A W_1^\top + b_1)W_2^\top + b_2$, no residual or
# normalisation; the last layer's $W_2$ plays the output layer. {py:func}`lorabook.expressivity.random_tfn_pair`
# draws the two models independently (every weight differs). {py:func}`lorabook.expressivity.tfn_full_construction`
# carries an invertible map $T_l = W_2^{(l)}\bar W_2^{(l)-1}$ between the adapted and the target hidden states
# ($Z_l = \bar Z_l T_l^\top$) and matches, per head, the score product to
# $T_{l-1}^{-\top}\bar W_K^\top \bar W_Q T_{l-1}^{-1}$ and the value product to
# $W_1^{-1}\bar W_1\bar W_O\bar W_V T_{l-1}^{-1}$ with {py:func}`lorabook.expressivity.linear_construction`;
# then $b_1 \leftarrow \bar b_1$, $b_2 \leftarrow T_l\bar b_2$, and in the last layer
# $W_2 \leftarrow \bar W_2$. The frozen $W_1, W_2$ stay frozen (their differences are absorbed by the attention
# adapters); the adapters have rank $\le R$. The paper's width $D = 16$, $H = 2$ heads, $L = 2$ layers, sequences
# of 8 tokens with $\mathcal N(0, I_D)$ entries, at every scale.

# %%
D, H, n_layers, n_tokens = 16, 2, 2, 8
seeds = scale.pick(quick=2, default=3, paper=5)
thr = math.ceil(D / 2)
torch_gen, _ = lb.seed_everything(4)
pairs = [ex.random_tfn_pair(D, H, n_layers, torch_gen) for _ in range(seeds)]
targets, frozens = [p[0] for p in pairs], [p[1] for p in pairs]
X_val = torch.randn(seeds, 200, n_tokens, D, generator=torch_gen, dtype=torch.float64)
n_test = scale.pick(quick=200, default=500, paper=2000)
X_test = torch.randn(seeds, n_test, n_tokens, D, generator=torch_gen, dtype=torch.float64)
Rs = np.arange(1, D + 1)
constr, zero = np.zeros((seeds, D)), np.zeros(seeds)
for s in range(seeds):
    y = ex.tfn_forward(X_test[s], targets[s])
    zero[s] = (ex.tfn_forward(X_test[s], frozens[s]) - y).square().sum(-1).mean().item()
    for R in Rs:
        adapted = ex.tfn_full_construction(targets[s], frozens[s], int(R))
        err = (ex.tfn_forward(X_test[s], adapted) - y).square().sum(-1).mean()
        constr[s, R - 1] = err.item()
rel_constr = constr / zero[:, None]
above = Rs >= thr

# %% [markdown]
# The check uses the book's one exact-match criterion (`EXACT_REL_MSE`, test MSE at most $10^{-6}$ of the
# frozen model's): at and above the threshold the float64 construction sits at round-off, some 20 decades
# below the frozen error; one rank short it keeps the error of the two products that lose a singular direction.
# The negative controls (in `tests/test_controls_ch1b.py`) run the same checks one rank short and at the
# threshold and watch them fail, and give the construction a singular frozen $W_1$, $W_2$ or $W_V$, which it
# refuses.

# %% tags=["nbval-check-output"]
label = "Zeng & Lee, Transformer networks"
ctl = "test_controls_ch1b.py::test_full_tfn_"
lb.claim("every weight differs: the construction is exact from R = ceil(D/2) on "
         "(largest test error / frozen error over seeds and ranks)",
         float(rel_constr[:, above].max()), "<=", ex.EXACT_REL_MSE, kind="theorem",
         label=label, control=(ctl + "exactness_check_fails_one_rank_short",
                               ctl + "refuses_a_singular_frozen_feed_forward_weight"))
lb.claim("and not below it "
         "(smallest test error / frozen error over seeds and ranks R < ceil(D/2))",
         float(rel_constr[:, ~above].min()), ">", ex.EXACT_REL_MSE, kind="theorem",
         label=label, control=ctl + "below_threshold_check_fails_at_the_threshold")

# %% [markdown]
# ## Gradient LoRA on the same instances
#
# The gradient counterpart trains the same parameters the construction changes: rank-$R$ adapters on
# $W_Q, W_K, W_V, W_O$ of every head and layer ($B = 0$ at start), the feed-forward biases of every layer and the
# last $W_2$ in full ({py:func}`lorabook.expressivity.train_tfn_lora` with `train_ffn=True`). Adam in float64,
# fresh token sequences every step, batched over seed × rank × learning rate; the learning rate decays
# geometrically by a factor 100 over the run (piecewise constant, Adam restarted at each of the phases), and the
# test error is recorded at the end of every phase; the learning rate is selected on a validation set.

# %%
lrs = scale.pick(quick=[1e-2], default=[1e-2, 3e-3], paper=[1e-2, 3e-3, 1e-3])
grad_ranks = scale.pick(quick=[4, 8], default=[4, 8, 16], paper=list(range(1, D + 1)))
n_phases = scale.pick(quick=2, default=4, paper=10)
steps = scale.pick(quick=40, default=480, paper=25000)
batch = scale.pick(quick=16, default=16, paper=256)
lr_factors = [10 ** (-2 * k / max(n_phases - 1, 1)) for k in range(n_phases)]
configs = [dict(rank=int(R), lr=lr) for R in grad_ranks for lr in lrs]


def run(cfg):
    adapted, curve = ex.train_tfn_lora(
        targets, frozens, configs, steps=cfg["steps"], batch=cfg["batch"], n_tokens=n_tokens,
        generator=torch.Generator().manual_seed(5), device=lb.device(), dtype=torch.float64,
        train_ffn=True, lr_factors=lr_factors, eval_X=X_test, progress="TFN LoRA")
    val = ex.tfn_mse(adapted, targets, X_val)
    return {"curve": curve.cpu().numpy(), "val": val.cpu().numpy()}


key = dict(version=2, scale=scale.name, D=D, H=H, seeds=seeds, steps=steps, batch=batch,
           lrs=lrs, ranks=grad_ranks, phases=n_phases)
[res] = cached_sweep("ch1-tfn-full", [key], run, progress=False)
shape = (seeds, len(grad_ranks), len(lrs))
curve = res["curve"].reshape((n_phases,) + shape)               # test MSE after each phase
best_lr = res["val"].reshape(shape).argmin(-1)                  # selected on validation
grad_curve = np.take_along_axis(curve, best_lr[None, ..., None], -1)[..., 0]
grad_curve = grad_curve / zero[None, :, None]
phase_steps = steps // n_phases * np.arange(1, n_phases + 1)
grad_above = np.array(grad_ranks) >= thr
rel_grad = grad_curve[-1]                                                      # (seeds, ranks)

# %% [markdown]
# Left: test MSE relative to the frozen model against the rank (median and range over seeds), the construction
# and gradient LoRA at the end of its budget. Right: gradient LoRA's relative error after each phase of the
# schedule, one line per rank (median over seeds).

# %%
fig, ax = plotting.subplots(2, width=10)
plotting.band(ax[0], Rs, rel_constr + 1e-30, label="construction",
              color=plotting.COLORS["construction"], marker="s")
plotting.band(ax[0], grad_ranks, rel_grad, label="gradient LoRA (lr by validation)",
              color=plotting.COLORS["lora"])
ax[0].axhline(ex.EXACT_REL_MSE, color=plotting.COLORS["theory"], linestyle=":",
              label="exact-match criterion")
plotting.mark_threshold(ax[0], thr, label=r"$\lceil D/2\rceil$")
ax[0].set(yscale="log", xlabel="LoRA rank $R$", ylabel="test MSE / frozen test MSE",
          title=f"TFN, D={D}, H={H}, {n_layers} layers, every weight differs")
ax[0].legend(fontsize=8)
for j, R in enumerate(grad_ranks):
    ax[1].plot(phase_steps, np.median(grad_curve[:, :, j], 1), marker="o", label=f"R = {R}")
ax[1].axhline(ex.EXACT_REL_MSE, color=plotting.COLORS["theory"], linestyle=":")
ax[1].set(xscale="log", yscale="log", xlabel="Adam steps", ylabel="test MSE / frozen test MSE",
          title="gradient LoRA against the training budget")
ax[1].legend(fontsize=8)

# %% [markdown]
# What the gradient runs show is a statement about their budget (40 Adam steps of batch 16 at `quick`, 480 at
# `default`, 25,000 of batch 256 at `paper`), held to the same criterion as the construction: the fraction of runs
# at $R \ge \lceil D/2\rceil$ below `EXACT_REL_MSE`, and whether the error was still falling in the last phase.

# %% tags=["nbval-check-output"]
frac_exact = float((rel_grad[:, grad_above] <= ex.EXACT_REL_MSE).mean())
last_gain = float(np.median(grad_curve[-1, :, grad_above] / grad_curve[-2, :, grad_above]))
lb.claim("gradient LoRA improves on the frozen model at every rank "
         "(largest test error / frozen error)", float(rel_grad.max()), "<", 1.0, kind="sanity")
lb.claim("from R = ceil(D/2) on, the fraction of gradient runs meeting the exact-match "
         "criterion within this budget", frac_exact, "<=", 0.0, kind="sanity",
         best_rel_mse=float(rel_grad[:, grad_above].min()))
lb.claim("the error was still falling in the last phase of the schedule "
         "(median ratio last / previous phase, R >= ceil(D/2))", last_gain, "<", 1.0,
         kind="sanity")

# %% [markdown]
# The construction certifies that rank $\lceil D/2\rceil$ suffices when every weight differs, and that one rank
# less does not. Gradient LoRA, on the same parameters and instances, improves on the frozen model at every rank,
# but within the budget we give it no run reaches the exact-match criterion, and its error was still falling
# when the budget ran out. That an exact match is *not reached within our budget* is all these runs show, not a
# property of LoRA: a decaying schedule and float64 did not close the gap at this budget, and how far it
# closes with a larger one (the paper's 5,000 steps, or more) is left to the `paper` scale (25,000 steps of batch
# 256 in ten phases, a GPU run); its claims say what that budget reaches.


# %% [markdown]
# (ch1-tfn-close)=
# ## A frozen Transformer close to the target
#
# The paper's message for FNNs, that a frozen model closer to the target needs a lower rank, is tested for
# FNNs on {ref}`ch1-paper-settings`; here is its Transformer counterpart. The construction sees the two models
# only through the differences of its attention pairs: per layer and head,
# $E_s = T^{-\top}\bar W_K^\top\bar W_Q T^{-1} - W_K^\top W_Q$ and
# $E_v = W_1^{-1}\bar W_1\bar W_O\bar W_V T^{-1} - W_O W_V$
# ({py:func}`lorabook.expressivity.tfn_pair_differences`). Each is a two-factor chain, so rank-$R$ adapters
# remove $2R$ of its singular directions (Lemma 1 with $L = 2$), and the whole network is exact iff every pair is:
#
# $$R_{\text{exact}} = \max_{l,\,h,\,\text{pair}} \big\lceil \operatorname{rank} E/2 \big\rceil
# \qquad ({py:func}`lorabook.expressivity.tfn_construction_threshold`).$$
#
# Two notions of "close" follow. A frozen model *near* the target,
# $\theta = \bar\theta + t(\theta_{\text{random}} - \bar\theta)$ in every weight and bias
# ({py:func}`lorabook.expressivity.tfn_between`; $t = 1$ is the random frozen model, a perturbation of
# controlled size rather than the paper's gradient pretraining), makes every $E$ small but leaves it full-rank: the
# error at a given rank falls with $t$, the exact threshold stays $\lceil D/2\rceil$. A frozen model that differs
# from the target by rank-$k$ changes of its attention weights
# ({py:func}`lorabook.expressivity.tfn_low_rank_frozen`, feed-forward blocks equal) lowers the threshold itself:
# a rank-$k$ change of *one* factor per pair ($W_Q$ and $W_V$) gives $\operatorname{rank}E = k$ and exactness from
# $\lceil k/2\rceil$; a rank-$k$ change of *both* factors ($W_Q$, $W_K$, $W_V$, $W_O$) gives
# $\operatorname{rank}E = \min(2k, D)$ and exactness only from $\min(k, \lceil D/2\rceil)$. The errors below are
# test MSE relative to the random frozen model's (construction curves by
# {py:func}`lorabook.expressivity.tfn_construction_curve`).

# %%
ts = scale.pick(quick=[1.0, 0.1], default=[1.0, 0.3, 0.1, 0.03], paper=[1.0, 0.3, 0.1, 0.03])
n_c = scale.pick(quick=60, default=100, paper=500)
c_tol = 1e-2  # "a given error": 1% of the random frozen model's test MSE
c_cons = np.zeros((len(ts), seeds, D))       # construction error / random frozen error
c_zero = np.zeros((len(ts), seeds))          # frozen error / random frozen error
c_pred = np.zeros((len(ts), seeds), dtype=int)
near = {}
for j, t in enumerate(ts):
    for s in range(seeds):
        near[t, s] = ex.tfn_between(targets[s], frozens[s], t)
        Xc = X_test[s, :n_c]
        z_rand = (ex.tfn_forward(Xc, frozens[s]) - ex.tfn_forward(Xc, targets[s])).square()
        z_rand = z_rand.sum(-1).mean().item()
        z_t = (ex.tfn_forward(Xc, near[t, s]) - ex.tfn_forward(Xc, targets[s])).square()
        c_zero[j, s] = z_t.sum(-1).mean().item() / z_rand
        c_cons[j, s] = ex.tfn_construction_curve(targets[s], near[t, s], Rs, Xc,
                                                 reference=z_rand).numpy()
        c_pred[j, s] = ex.tfn_construction_threshold(targets[s], near[t, s])
c_exact = np.array([[ex.rank_needed(c_cons[j, s] / c_zero[j, s], Rs, ex.EXACT_REL_MSE)
                     for s in range(seeds)] for j in range(len(ts))])
c_need = np.array([[ex.rank_needed(c_cons[j, s], Rs, c_tol) for s in range(seeds)]
                   for j in range(len(ts))])
print("t:", ts, " frozen error / random frozen error:", c_zero.mean(1).round(3))
print("rank needed for 1% (construction):", c_need.tolist(), " exact:", c_exact.tolist())

# %% [markdown]
# The paper's own notion of closeness is a frozen model "pretrained" toward the target. As on
# {ref}`ch1-paper-settings`, every weight and bias of the random frozen model is trained by Adam on fresh token
# sequences until its batch loss falls below the initial loss divided by the level (3 is the paper's recipe)
# ({py:func}`lorabook.expressivity.pretrain_tfn`); the construction is then applied to it as above.

# %%
p_levels = scale.pick(quick=[3], default=[3, 10], paper=[3, 10])
p_models, p_used = ex.pretrain_tfn(targets, frozens, levels=p_levels,
                                   max_steps=scale.pick(quick=100, default=400, paper=2000),
                                   batch=32, n_tokens=n_tokens, lr=1e-2,
                                   generator=torch.Generator().manual_seed(16))
p_cons = np.zeros((len(p_levels), seeds, D))
p_zero = np.zeros((len(p_levels), seeds))
for j in range(len(p_levels)):
    for s in range(seeds):
        Xc, fp = X_test[s, :n_c], p_models[j][s]
        y_c = ex.tfn_forward(Xc, targets[s])
        z_rand = (ex.tfn_forward(Xc, frozens[s]) - y_c).square().sum(-1).mean().item()
        p_zero[j, s] = (ex.tfn_forward(Xc, fp) - y_c).square().sum(-1).mean().item() / z_rand
        p_cons[j, s] = ex.tfn_construction_curve(targets[s], fp, Rs, Xc,
                                                 reference=z_rand).numpy()
p_exact = np.array([[ex.rank_needed(p_cons[j, s] / p_zero[j, s], Rs, ex.EXACT_REL_MSE)
                     for s in range(seeds)] for j in range(len(p_levels))])
p_need = np.array([[ex.rank_needed(p_cons[j, s], Rs, c_tol) for s in range(seeds)]
                   for j in range(len(p_levels))])
print("pretrained, levels", p_levels, "steps used", p_used.tolist(),
      " frozen error / random frozen error:", p_zero.mean(1).round(3))
print("rank needed for 1% (construction):", p_need.tolist(), " exact:", p_exact.tolist())

# %% [markdown]
# Frozen models with rank-$k$ changes of one factor per pair and of both factors, same targets (ranks
# $1..\lceil D/2\rceil + 1$: from $\lceil D/2\rceil$ on every pair is matched exactly whatever $k$).

# %%
ks = scale.pick(quick=[2, 5, 16], default=[1, 2, 5, 9, 12], paper=[1, 2, 3, 5, 8, 12, 16])
k_seeds = scale.pick(quick=1, default=2, paper=seeds)
k_gen = torch.Generator().manual_seed(14)
k_sets = {"one factor": ("Q", "V"), "both factors": ("Q", "K", "V", "O")}
Rs_k = list(range(1, thr + 2))   # above ceil(D/2) + 1 every pair is already matched exactly
k_need = {name: np.zeros((len(ks), k_seeds), dtype=int) for name in k_sets}
k_pred = {name: np.zeros((len(ks), k_seeds), dtype=int) for name in k_sets}
for name, factors in k_sets.items():
    for j, k in enumerate(ks):
        for s in range(k_seeds):
            fk = ex.tfn_low_rank_frozen(targets[s], k, k_gen, factors=factors)
            rel = ex.tfn_construction_curve(targets[s], fk, Rs_k, X_test[s, :n_c]).numpy()
            k_need[name][j, s] = ex.rank_needed(rel, Rs_k, ex.EXACT_REL_MSE)
            k_pred[name][j, s] = ex.tfn_construction_threshold(targets[s], fk)
k_half = np.array([math.ceil(k / 2) for k in ks])
k_both = np.array([min(k, thr) for k in ks])
for name in k_sets:
    print(f"{name}: k = {ks} -> measured thresholds {k_need[name].tolist()}")
print("ceil(k/2):", k_half.tolist(), " min(k, ceil(D/2)):", k_both.tolist())

# %% [markdown]
# Gradient LoRA on the random frozen model, on a near one and on a pretrained one (same protocol as above: the same parameters,
# float64 Adam, fresh token sequences; one learning rate, a shorter budget).

# %%
c_ranks = scale.pick(quick=[2, 8], default=[2, 4, 8], paper=[2, 4, 8, 12])
c_t = ts[2] if len(ts) > 2 else ts[-1]        # t = 0.1
c_steps = scale.pick(quick=30, default=100, paper=5000)
c_seeds = min(seeds, 2)
near_list = [near[c_t, s] for s in range(c_seeds)]
pre_list = [p_models[-1][s] for s in range(c_seeds)]          # pretrained, last level
_, c_curve = ex.train_tfn_lora(
    targets[:c_seeds] * 3, frozens[:c_seeds] + near_list + pre_list,
    [dict(rank=int(R), lr=1e-2) for R in c_ranks], steps=c_steps, batch=16, n_tokens=n_tokens,
    generator=torch.Generator().manual_seed(15), dtype=torch.float64, train_ffn=True,
    eval_X=X_test[:c_seeds, :n_c].repeat(3, 1, 1, 1), device=lb.device())
c_rand_err = np.array([
    (ex.tfn_forward(X_test[s, :n_c], frozens[s]) - ex.tfn_forward(X_test[s, :n_c], targets[s]))
    .square().sum(-1).mean().item() for s in range(c_seeds)])
c_grad = c_curve[-1].cpu().numpy().reshape(3, c_seeds, -1) / c_rand_err[None, :, None]
c_gain = np.median(c_grad[1], 0) / np.median(c_grad[0], 0)       # near / random, per rank
p_gain = np.median(c_grad[2], 0) / np.median(c_grad[0], 0)       # pretrained / random
print(f"gradient ({c_steps} steps), median error / random frozen error: random",
      np.median(c_grad[0], 0).round(4), f" t = {c_t}", np.median(c_grad[1], 0).round(4),
      f" pretrained (level {p_levels[-1]})", np.median(c_grad[2], 0).round(4))

# %% [markdown]
# Left: the construction's error against rank, one line per distance $t$ (median and range over seeds).
# Middle: the exact threshold against the rank $k$ of the change, measured, with the two derived lines. Right:
# the rank needed against closeness (the frozen model's error relative to the random one's).

# %%
fig, axes = plotting.subplots(3, width=3.6)
palette = ["#444444", "#d95f02", "#1b9e77", "#7570b3"]
for j, t in enumerate(ts):
    plotting.band(axes[0], Rs, c_cons[j] + 1e-30, label=f"t = {t}", color=palette[j])
axes[0].axhline(c_tol, color="k", linewidth=1, linestyle=":")
plotting.mark_threshold(axes[0], thr, label=r"$\lceil D/2\rceil$")
axes[0].set(yscale="log", ylim=(1e-5, 2), xlabel="LoRA rank $R$",
            ylabel="test MSE / random frozen MSE", title="construction, near frozen models")
axes[0].legend(fontsize=7)
axes[1].plot(ks, k_half, "-", color=plotting.COLORS["theory"], label=r"$\lceil k/2\rceil$")
axes[1].plot(ks, k_both, "--", color=plotting.COLORS["theory"],
             label=r"$\min(k, \lceil D/2\rceil)$")
for (name, m), color in zip(k_need.items(), (plotting.COLORS["construction"], "#7570b3")):
    axes[1].plot(ks, np.median(m, 1), "o", color=color, label=f"measured, {name}")
axes[1].set(xlabel="rank $k$ of each change", ylabel="exact from rank",
            title="rank-$k$ frozen models")
axes[1].legend(fontsize=7)
cl = c_zero.mean(1)
axes[2].plot(cl, np.median(c_exact, 1), "s-", color=plotting.COLORS["theory"], label="exact")
axes[2].plot(cl, np.median(c_need, 1), "o-", color=plotting.COLORS["construction"],
             label="1% of random frozen error")
axes[2].plot(p_zero.mean(1), np.median(p_need, 1), "^", color=plotting.COLORS["lora"],
             label="1%, pretrained frozen model")
axes[2].plot(p_zero.mean(1), np.median(p_exact, 1), "^", color=plotting.COLORS["theory"],
             label="exact, pretrained")
axes[2].set(xscale="log", xlabel="frozen MSE / random frozen MSE", ylabel="rank needed",
            title="construction: rank needed vs closeness")
axes[2].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# The checks. Exactness uses the book's criterion (`EXACT_REL_MSE`, relative to the frozen model's own error).
# The controls (in `tests/test_controls_ch1d.py`) run the same checks where the hypothesis fails: the
# "threshold stays at $\lceil D/2\rceil$" check on a frozen model whose difference has low rank, and the
# $\lceil k/2\rceil$ check on changes of both factors of a pair (the difference then has rank $2k$).

# %% tags=["nbval-check-output"]
label_c = "Zeng & Lee, Transformer networks"
ctl_c = "test_controls_ch1d.py::"
lb.claim("a frozen Transformer near the target (every weight moved by t, or pretrained "
         "toward it) keeps full-rank pair differences: exact from ceil(D/2) at every t, level "
         "and seed (largest |measured - ceil(D/2)|)",
         int(max(np.abs(c_exact - thr).max(), np.abs(p_exact - thr).max())), "==", 0,
         kind="theorem",
         label=label_c + " (frozen model near the target)",
         control=ctl_c + "test_near_threshold_check_fails_for_a_low_rank_difference",
         ts=ts, closeness=[float(v) for v in c_zero.mean(1)], levels=p_levels,
         closeness_pretrained=[float(v) for v in p_zero.mean(1)])
lb.claim("a rank-k change of one factor per attention pair is matched exactly from "
         "R = ceil(k/2) (largest |measured - ceil(k/2)| over k and seeds)",
         int(np.abs(k_need["one factor"] - k_half[:, None]).max()), "==", 0, kind="theorem",
         label=label_c + " (rank of the difference)",
         control=ctl_c + "test_half_k_check_fails_when_both_factors_change", ks=ks)
lb.claim("rank-k changes of both factors are matched exactly from min(k, ceil(D/2)), not "
         "ceil(k/2) (largest |measured - min(k, ceil(D/2))|)",
         int(np.abs(k_need["both factors"] - k_both[:, None]).max()), "==", 0, kind="sanity")
lb.claim("every measured threshold equals the one derived from the ranks of the pair "
         "differences (largest |measured - derived| over all frozen models)",
         int(max(np.abs(c_exact - c_pred).max(),
                 *(np.abs(k_need[n] - k_pred[n]).max() for n in k_sets))), "==", 0,
         kind="sanity")
lb.claim("the rank the construction needs for 1% of the random frozen error falls with "
         "closeness (median at the nearest t / median at t = 1)",
         float(np.median(c_need[-1]) / np.median(c_need[0])), "<", 1.0, kind="sanity",
         need_by_t=[float(np.median(v)) for v in c_need])
lb.claim("pretraining does not lower the rank the construction needs for 1% of the random "
         "frozen error (median at the last level / median for the random model)",
         float(np.median(p_need[-1]) / np.median(c_need[0])), ">=", 1.0, kind="sanity",
         need_by_level=[float(np.median(v)) for v in p_need],
         closeness=[float(v) for v in p_zero.mean(1)])
lb.claim(f"gradient LoRA: the near frozen model (t = {c_t}) has a lower error than the random "
         "one at every rank (largest ratio of medians)", float(c_gain.max()), "<", 1.0,
         kind="sanity", ranks=c_ranks)
lb.claim(f"gradient LoRA: the pretrained frozen model (level {p_levels[-1]}) has a lower "
         "error than the random one at every rank (largest ratio of medians)",
         float(p_gain.max()), "<", 1.0, kind="sanity", ranks=c_ranks, steps=c_steps)

# %% [markdown]
# As for FNNs, a frozen Transformer that is near the target in its *weights* (smaller differences in every
# weight) needs a lower rank for a given error, by construction and, within our short budget, for gradient LoRA
# at every rank trained; it does not lower the rank of an exact match, which stays $\lceil D/2\rceil$ because
# every pair difference keeps full rank. A frozen model pretrained toward the target's *function* behaves
# differently from the FNN case: at the paper's level (a third of the initial error) and at a tenth, its error is
# as low as that of the weight-near models, yet the construction needs the same rank for 1 % of the random frozen
# error as on the random model. The construction matches weight products through the maps $W_1^{-1}\bar W_1$ and
# $T_l$, and gradient pretraining reduces the output error without shrinking the tail singular values of those
# pair differences (our reading of the measurement; we did not test it separately). So for Transformers the
# rank the *construction* needs depends on closeness of the weights, not of the outputs. Gradient LoRA, within
# our short budget (100 steps at `default`), does reach a lower error from the pretrained frozen model than from
# the random one at every rank trained, but by much less than from the weight-near model (at `default` about
# 0.15 against 0.18 and 0.04 of the random frozen error), and barely below the pretrained model's own error;
# whether a longer budget lowers the rank it needs is left open.
#
# What lowers the exact threshold is the rank of the pair differences: a rank-$k$ change
# of one factor per pair is matched exactly from $\lceil k/2\rceil$ and not below, while rank-$k$ changes of both
# factors of a pair need $\min(k, \lceil D/2\rceil)$, so "the attention weights differ by rank $k$" alone does not
# give $\lceil k/2\rceil$.
