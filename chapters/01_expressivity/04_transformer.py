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
# # Transformer networks: rank $D/2$ per attention pair
#
# In a Transformer network (TFN) the attention of head $h$ uses its weights only through two products:
# the scores $\mathrm{softmax}(Z W_Q^{h\top} W_K^h Z^\top)$ depend on $W_K^{h\top}W_Q^h$ and the values on $W_O^hW_V^h$.
# Each product is a two-matrix chain, so {prf:ref}`lem-ch1-linear` with $L = 2$ applies to it: rank-$R$ adapters on
# both factors can remove $2R$ singular directions of the difference to the target's product.

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
# ## Exact match from $R = \lceil D/2\rceil$
#
# ```{prf:theorem} LoRA on Transformer networks (Zeng & Lee, Transformer networks, attention part)
# :label: thm-ch1-tfn
# If the frozen and target TFN differ in their attention weights, rank-$R$ adapters on $W_Q, W_K, W_V, W_O$ of every
# head make the adapted TFN equal the target as soon as $R \ge \lceil D/2\rceil$ (under the non-singularity assumptions
# of {prf:ref}`lem-ch1-linear` for each pair).
# ```
#
# Our TFN (`tfn_forward`): per layer, $H$ softmax attention heads summed, then $Z \leftarrow \mathrm{ReLU}(A W_1^\top + b_1)W_2^\top + b_2$,
# no residual or normalisation. **Departure:** the feed-forward blocks are shared by target and frozen model (only
# attention differs); the paper also adapts them. Tokens are $\mathcal N(0, I_D)$. `tfn_construction` runs
# `linear_construction` on $[W_Q, W_K^\top]$ and $[W_V, W_O]$ for every head. Gradient LoRA (Adam on all four
# adapters of every head, $B = 0$ at start, fresh token sequences every step, batched over rank × seed × learning
# rate, learning rate selected on a validation set) is trained alongside. (The reference implementation's
# Transformer path crashes; this one is tested in `tests/test_expressivity.py`.)

# %%
D = scale.pick(quick=8, default=8, paper=16)
H, n_layers, n_tokens = 2, 2, 8
seeds = scale.pick(quick=2, default=3, paper=5)
torch_gen, _ = lb.seed_everything(4)
pairs = [ex.random_tfn_instance(D, H, n_layers, torch_gen) for _ in range(seeds)]
targets, frozens = [p[0] for p in pairs], [p[1] for p in pairs]
X_val = torch.randn(seeds, 500, n_tokens, D, generator=torch_gen, dtype=torch.float64)
X_test = torch.randn(seeds, scale.pick(quick=500, default=1000, paper=2000), n_tokens, D, generator=torch_gen, dtype=torch.float64)
Rs = np.arange(1, D + 1)
constr = np.zeros((seeds, D))
zero = np.zeros(seeds)
for s in range(seeds):
    y = ex.tfn_forward(X_test[s], targets[s])
    zero[s] = (ex.tfn_forward(X_test[s], frozens[s]) - y).square().sum(-1).mean().item()
    for R in Rs:
        constr[s, R - 1] = (ex.tfn_forward(X_test[s], ex.tfn_construction(targets[s], frozens[s], int(R))) - y).square().sum(-1).mean().item()

lrs = scale.pick(quick=[1e-2], default=[1e-2, 3e-3], paper=[1e-2, 1e-3, 1e-4])
grad_ranks = scale.pick(quick=[1, 3, 4, 8], default=[1, 2, 3, 4, 6, 8], paper=list(range(1, D + 1)))
configs = [dict(rank=int(R), lr=lr) for R in grad_ranks for lr in lrs]


def run(cfg):
    adapted = ex.train_tfn_lora(targets, frozens, configs, steps=cfg["steps"], batch=cfg["batch"], n_tokens=n_tokens,
                                generator=torch.Generator().manual_seed(5), device=lb.device(), progress="TFN LoRA")
    return {"val": ex.tfn_mse(adapted, targets, X_val).cpu().numpy(), "test": ex.tfn_mse(adapted, targets, X_test).cpu().numpy()}


from lorabook.train import cached_sweep  # noqa: E402

steps, batch = scale.pick(quick=150, default=600, paper=5000), scale.pick(quick=32, default=64, paper=256)
[res] = cached_sweep("ch1-tfn", [dict(version=1, scale=scale.name, D=D, H=H, seeds=seeds, steps=steps, batch=batch, lrs=lrs, ranks=grad_ranks)], run, progress=False)
val, test = (res[k].reshape(seeds, len(grad_ranks), len(lrs)) for k in ("val", "test"))
grad = np.take_along_axis(test, val.argmin(-1)[..., None], -1)[..., 0]          # (seeds, ranks), lr selected on validation
thr = math.ceil(D / 2)
above = Rs >= thr
grad_above = np.array(grad_ranks) >= thr

# %% [markdown]
# Test MSE per token against the rank (median and IQR over seeds): the construction collapses at $R = D/2$; Adam
# improves on the frozen model but, within this budget, gains little from extra rank.

# %%
fig, ax = plotting.subplots(1, width=6.4)
plotting.band(ax, Rs, constr + 1e-30, label="construction", color=plotting.COLORS["construction"], marker="s")
plotting.band(ax, grad_ranks, grad, label="gradient LoRA (lr by validation)", color=plotting.COLORS["lora"])
ax.axhline(np.median(zero), color=plotting.COLORS["theory"], linestyle=":", label="frozen model")
plotting.mark_threshold(ax, thr, label=r"$\lceil D/2\rceil$")
ax.set(yscale="log", xlabel="LoRA rank $R$", ylabel=r"test $\mathbb{E}\|f(Z)-\bar f(Z)\|^2$ per token",
       title=f"TFN, D={D}, H={H}, {n_layers} layers")
ax.legend(fontsize=8)

# %% tags=["nbval-check-output"]
rel_constr, rel_grad = constr / zero[:, None], grad / zero[:, None]
lb.claim("the TFN construction is exact from R = ceil(D/2) on (largest test error / frozen error)",
         float(rel_constr[:, above].max()), "<=", ex.EXACT_REL_MSE, kind="theorem",
         label="Zeng & Lee, Transformer networks (shared feed-forward blocks)",
         control="test_controls_ch1.py::test_tfn_exactness_check_fails_one_rank_short")
lb.claim("and not below it (smallest test error / frozen error)", float(rel_constr[:, ~above].min()), ">",
         ex.EXACT_REL_MSE, kind="theorem", label="Zeng & Lee, Transformer networks (shared feed-forward blocks)",
         control="test_controls_ch1.py::test_tfn_below_threshold_check_fails_at_the_threshold")
lb.claim("gradient LoRA improves on the frozen model at every rank (largest test error / frozen error)",
         float(rel_grad.max()), "<", 1.0, kind="sanity")
lb.claim("from R = ceil(D/2) on, within this budget no selected gradient run meets the exact-match criterion "
         "(smallest test error / frozen error)", float(rel_grad[:, grad_above].min()), ">", ex.EXACT_REL_MSE,
         kind="sanity")

# %% [markdown]
# The construction certifies which rank suffices. Adam, within the steps we give it (150 at `quick`, 600 at
# `default`, the paper's 5,000 at `paper`), improves on the frozen model at every rank but stays far from an exact
# match, and its error depends little on the rank beyond the first few. That is what this budget reaches, not a
# property of LoRA: we have not measured how the gap closes with more steps, a learning-rate schedule or float64
# training. This section also departs from the paper's theorem, which lets the target and frozen Transformers
# differ in every weight (feed-forward blocks included) and adapts those too, at $D = 16$; here only attention
# differs, which reduces the result to {prf:ref}`lem-ch1-linear` with $L = 2$ on each pair, and `default` uses $D = 8$.
