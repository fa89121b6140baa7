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
# (ch1-paper-settings)=
# # The paper's settings: Gaussian inputs, pretrained and random models
#
# The previous sections use inputs on the cube $[-1,1]^D$ and our own instance distributions. The experiments of
# {cite}`zeng2024expressive` (and of its public code) differ: inputs $x\sim\mathcal N(0, I)$, a shifted test set
# $5\cdot\mathcal N(0, I)$, layers initialised uniformly on $[-1/\sqrt D, 1/\sqrt D]$ (weights and biases, the
# default of a fully connected layer), optionally a target whose error matrices have *uniform singular values*, and a
# frozen model that is either random or "pretrained" toward the target. This page runs the constructions and
# gradient LoRA in that setting, and computes the consequences the paper draws for random and pretrained frozen
# models and for partitions other than the uniform one. The corollaries for random models and the general partition
# are in the paper, not in the reading slides; we restate them in our words.

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
# ## Gaussian inputs and the shifted test set
#
# Lemma 2 ({prf:ref}`lem-ch1-relu`) assumes a bounded input set, and its construction is exact on the whole set,
# whatever distribution the inputs follow there. A Gaussian has unbounded support, so we certify a ball that holds
# the inputs up to a negligible probability: $\rho = s(\sqrt D + 8)$ holds $s\cdot\mathcal N(0, I_D)$ except with
# probability $e^{-32} < 10^{-13}$ (Gaussian concentration of the norm,
# {py:func}`lorabook.expressivity.gaussian_radius`). With $s = 5$ the ball covers the shifted test set too, and the
# construction must be exact on both test sets from $R = \lceil D/L\rceil$; a construction certified only for the
# training distribution ($s = 1$) has no such guarantee on the shifted set. Setting: $D = 16$, $L = 2$, $\bar L = 1$,
# the paper's initialisation, and the uniform-singular-value target ({py:func}`lorabook.expressivity.paper_fnn_instance`).

# %%
D, L = 16, 2
thr = math.ceil(D / L)
inits = ex.PAPER_INITS  # ("default", "uniform_singular_values")
seeds = scale.pick(quick=2, default=4, paper=10)
n_test = scale.pick(quick=1000, default=scale.n_test, paper=scale.n_test)
gen = torch.Generator().manual_seed(11)
inst = {
    init: [ex.paper_fnn_instance(D, L, 1, gen, init=init) for _ in range(seeds)]
    for init in inits
}
x_in = ex.gaussian_inputs((seeds, n_test, D), gen)
x_sh = ex.gaussian_inputs((seeds, n_test, D), gen, std=5.0)
rho_shift, rho_train = ex.gaussian_radius(D, std=5.0), ex.gaussian_radius(D)
Rs = np.arange(1, D + 1)


cons = np.zeros((len(inits), seeds, D, 2))  # (init, seed, rank, [Gaussian, shifted])
train_only = np.zeros((len(inits), seeds))  # shifted error of the s = 1 ball at R = thr
for i, init in enumerate(inits):
    for s, (fw, fb, tw, tb) in enumerate(inst[init]):
        cons[i, s] = ex.construction_curve(tw, tb, fw, fb, Rs, rho_shift, (x_in[s], x_sh[s]))
        train_only[i, s] = ex.construction_curve(tw, tb, fw, fb, [thr], rho_train, (x_sh[s],))
at_thr = cons[:, :, thr - 1 :].max()
below = cons[:, :, : thr - 1].min()

# %% [markdown]
# Gradient LoRA in the paper's protocol: trainable biases, fresh $\mathcal N(0, I)$ batches of 256, Adam with a
# constant learning rate $10^{-2}$ (float32), the same instances; we test the trained adapters on both test sets.

# %%
g_ranks = scale.pick(quick=[1, 8], default=[1, 2, 4, 8, 12], paper=list(range(1, 17)))
g_steps = scale.pick(quick=120, default=1500, paper=5000)
stack = [torch.stack([t[k] for init in inits for t in inst[init]]) for k in range(4)]
fw_all, fb_all, tw_all, tb_all = stack  # (inits * seeds, ...)
W_tr, b_tr = ex.train_lora_gaussian(fw_all, fb_all, tw_all, tb_all, g_ranks, steps=g_steps,
                                    batch=256, lr=1e-2, generator=gen, device=str(lb.device()))
W_tr, b_tr = W_tr.double().cpu(), b_tr.double().cpu()
x_in2, x_sh2 = x_in.repeat(len(inits), 1, 1), x_sh.repeat(len(inits), 1, 1)
g_in = ex.relative_mse(W_tr, b_tr, fw_all, fb_all, tw_all, tb_all, x_in2).numpy()
g_sh = ex.relative_mse(W_tr, b_tr, fw_all, fb_all, tw_all, tb_all, x_sh2).numpy()
degrade = np.median(g_sh, 0) / np.median(g_in, 0)  # per rank
print("trained, median relative error (Gaussian):", np.median(g_in, 0).round(5))
print("trained, median relative error (shifted): ", np.median(g_sh, 0).round(5))

# %% [markdown]
# Test MSE relative to the frozen model's (median and IQR over seeds and both initialisations): the construction on
# the Gaussian and on the shifted test set, gradient LoRA on both.

# %%
fig, ax = plotting.subplots(1, width=6.4)
c_flat = cons.reshape(-1, D, 2)
plotting.band(ax, Rs, c_flat[..., 0] + 1e-30, label="construction, N(0, I)",
              color=plotting.COLORS["construction"], marker="s")
plotting.band(ax, Rs, c_flat[..., 1] + 1e-30, label="construction, 5 N(0, I)",
              color=plotting.COLORS["construction"], marker="", linestyle=":")
plotting.band(ax, g_ranks, g_in, label="gradient LoRA, N(0, I)", color=plotting.COLORS["lora"])
plotting.band(ax, g_ranks, g_sh, label="gradient LoRA, 5 N(0, I)",
              color=plotting.COLORS["lora"], marker="", linestyle=":")
plotting.mark_threshold(ax, thr, label=r"$\lceil D/L\rceil$")
ax.set(yscale="log", xlabel="LoRA rank $R$", ylabel="test MSE / frozen MSE",
       title="Gaussian inputs and the shifted test set", ylim=(1e-5, 3))
ax.annotate("construction exact from R = 8\non both test sets (< 1e-20)", xy=(thr, 1e-5),
            xytext=(thr + 0.5, 1e-4), fontsize=8,
            arrowprops=dict(arrowstyle="->", color=plotting.COLORS["construction"]))
ax.legend(fontsize=8)

# %% [markdown]
# The construction is exact from the threshold on both test sets and not below; gradient-trained adapters,
# trained on $\mathcal N(0, I)$, lose much more of their accuracy on the shifted set. The construction certified only
# for the training ball ($s = 1$) is not exact on the shifted set either: its biases switch every first-layer ReLU on
# only where the inputs were promised to lie.

# %% tags=["nbval-check-output"]
lb.claim(
    "Gaussian inputs: the construction is exact from R = ceil(D/L) on the N(0, I) and the "
    "5 N(0, I) test sets (largest test error / frozen error, both initialisations, every "
    "seed)",
    float(at_thr), "<=", ex.EXACT_REL_MSE, kind="theorem",
    label="Zeng & Lee, Lemma 2 (Gaussian inputs, shifted test set)",
    control=("test_controls_ch1c.py::test_shift_exactness_check_fails_one_rank_short",
             "test_controls_ch1c.py::"
             "test_shift_exactness_check_fails_when_the_ball_misses_inputs"),
)
lb.claim(
    "Gaussian inputs: no exact match below the threshold on either test set (smallest error / "
    "frozen error)",
    float(below), ">", ex.EXACT_REL_MSE, kind="theorem",
    label="Zeng & Lee, Lemma 2 (Gaussian inputs, threshold)",
    control="test_controls_ch1c.py::test_shift_below_threshold_check_fails_at_the_threshold",
)
lb.claim(
    "a construction certified only for the training ball is not exact on the shifted set "
    "(smallest shifted error / frozen error at the threshold)",
    float(train_only.min()), ">", ex.EXACT_REL_MSE, kind="sanity",
)
lb.claim(
    "trained adapters degrade on the shifted set at every rank (smallest ratio of medians, "
    "shifted / Gaussian relative error)",
    float(degrade.min()), ">", 1.0, kind="sanity",
    ranks=g_ranks, degradation=[float(v) for v in degrade],
)

# %% [markdown]
# ## The uniform-singular-value target is a flat spectrum
#
# The paper's second initialisation sets $\bar W_1 = W_2W_1 + cI$ with $c$ the mean singular value of the original
# error matrix, so $E = cI$: every singular value equals $c$, the flat spectrum on which the stated expected-error
# bound of Lemma 2 fails ({prf:ref}`prop-ch1-relu-bound`). For Gaussian inputs $\Sigma = I$: the stated bound is
# $\norm{\Sigma}_F c^2 = \sqrt D c^2 = 4c^2$ at every $R < 8$, the corrected one $\tr(\Sigma) c^2 = 16c^2$. (The
# lemma asks for bounded inputs; the ball of radius $\sqrt D + 8$ holds $\mathcal N(0, I)$ up to $10^{-13}$, so
# $\Sigma = I$ to that precision.) The proof bounds the error of its own construction by the stated bound, so we
# check the construction at $R = 1$ against it. The statement asks only that *some* rank-1 adapters reach the bound,
# so we also report the best adapters we can find: the construction, the run of the grid above, and a search in
# float64 with trainable biases from three learning rates ($3\cdot10^{-2}, 10^{-2}, 3\cdot10^{-3}$), each decayed in
# four phases to 3 % of its start, keeping the lowest test error per instance (a choice that favours the paper).

# %%
usv = inits.index("uniform_singular_values")
eye = torch.eye(D, dtype=torch.float64)
flat_spread, stated, corrected, c_abs, g_abs = [], [], [], [], []
for s, (fw, fb, tw, tb) in enumerate(inst["uniform_singular_values"]):
    E = tw[0] - lb.chain_product(list(fw))
    sv = torch.linalg.svdvals(E)
    flat_spread.append((sv.max() / sv.min()).item() - 1.0)
    bnd = ex.relu_bounds(E, 1, L, eye)
    stated.append(bnd["paper"])
    corrected.append(bnd["corrected"])
    deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), 1, rho_shift)
    Wc = torch.stack([w + d for w, d in zip(fw, deltas)])[None, None]
    c_abs.append(ex.adapter_mse(Wc, torch.stack(biases)[None, None], tw[None], tb[None],
                                x_in[s : s + 1]).item())
    j = usv * seeds + s  # this instance in the trained grid; its first rank is R = 1
    g_abs.append(ex.adapter_mse(W_tr[j][None, :1], b_tr[j][None, :1], tw[None], tb[None],
                                x_in[s : s + 1]).item())
stated, corrected = np.array(stated), np.array(corrected)
u_fw, u_fb, u_tw, u_tb = (T[usv * seeds : (usv + 1) * seeds] for T in stack)
usv_steps = scale.pick(quick=200, default=1200, paper=4000)
W_u, b_u = ex.train_lora_gaussian(u_fw, u_fb, u_tw, u_tb, [1, 1, 1], lr=[3e-2, 1e-2, 3e-3],
                                  steps=usv_steps, batch=256, generator=gen,
                                  dtype=torch.float64, lr_factors=[1.0, 0.3, 0.1, 0.03],
                                  device=str(lb.device()))
s_abs = ex.adapter_mse(W_u.cpu(), b_u.cpu(), u_tw, u_tb, x_in).min(1).values.numpy()
best = np.minimum(np.minimum(c_abs, g_abs), s_abs)
print("stated bound", stated.round(3), "corrected", corrected.round(3))
print("construction", np.round(c_abs, 3), "grid run", np.round(g_abs, 3),
      "search", s_abs.round(3))

# %% tags=["nbval-check-output"]
lb.claim(
    "uniform-singular-value target: E has a flat spectrum (largest sigma_max / sigma_min - 1)",
    float(max(flat_spread)), "<=", 1e-12, kind="sanity",
)
c_over_stated = np.array(c_abs) / stated
lb.claim(
    "uniform singular values, R = 1: the proof's construction stays above the stated bound "
    "||Sigma||_F sigma^2 on every instance (smallest construction error / stated bound)",
    float(c_over_stated.min()), ">", 1.0, kind="departure",
    label="Zeng & Lee, Lemma 2 (proof, uniform singular values)",
    control="test_controls_ch1c.py::"
    "test_usv_construction_check_fails_on_the_default_initialisation",
    construction_over_stated=[float(v) for v in c_over_stated],
    best_over_stated=[float(v) for v in best / stated],
)
lb.claim(
    "the corrected bound tr(Sigma) sigma^2 holds for the construction at R = 1 (largest "
    "error / "
    "bound; 5% for the Monte Carlo error of the test mean)",
    float(max(c / b for c, b in zip(c_abs, corrected))), "<=", 1.05, kind="sanity",
)

# %% [markdown]
# In the paper's own setting the proof's construction misses the stated bound on every instance: it leaves about
# 1.4–1.6 times the bound at `default` (1.3–1.6 at `paper`; per-instance ratios recorded with the claim), while the
# corrected bound holds. The *statement* is not shown to fail here. At `default` the best adapters found stay about
# 1.1–1.2 times above the bound, but at `paper` (ten instances, the grid's 5,000 steps and a 4,000-step search, run
# on a GPU) the grid's adapter reached 0.97 of the bound on one instance (and the search 0.98). About half of the
# target's output ReLUs are off here, which cuts the error of an adapter; at this margin the verdict on the
# statement depends on the search budget. Its failure rests on the flat spectrum of {ref}`ch1-relu` ($D = 32$,
# every target ReLU active), where the best adapters found stay five times above the bound.
#
# ## A frozen model close to the target needs a lower rank
#
# The paper compares a random frozen model with one "pretrained" toward the target: all its weights and biases are
# trained by Adam on $\mathcal N(0, I)$ inputs until the training loss falls below a third of its initial value
# ({py:func}`lorabook.expressivity.pretrain_frozen`). We vary that factor (the *closeness level*: 1 = random) and
# measure, by construction and by gradient LoRA, the rank needed. Two notions of "close" must be kept apart.
# Pretraining makes $E$ small, not low-rank: $\operatorname{rank}E$ stays $D$, so Lemma 2's exact threshold
# $\lceil R_E/L\rceil$ stays at 8, while the rank needed to reach a given error falls. A frozen model whose error is
# low-rank, $\operatorname{rank}E = k$ ({py:func}`lorabook.expressivity.close_in_rank`), lowers the exact threshold
# itself, to $\lceil k/L\rceil$.

# %%
levels = scale.pick(quick=[1, 3], default=[1, 3, 10, 30], paper=[1, 3, 10, 30])
p_seeds = scale.pick(quick=2, default=3, paper=5)
p_gen = torch.Generator().manual_seed(12)
base = [ex.paper_fnn_instance(D, L, 1, p_gen) for _ in range(p_seeds)]
bw, bb, btw, btb = (torch.stack([t[k] for t in base]) for k in range(4))
x_p = ex.gaussian_inputs((p_seeds, n_test, D), p_gen)
zero_random = ex.adapter_mse(bw[:, None], bb[:, None], btw, btb, x_p)[:, 0]
pw_lev, pb_lev, used = ex.pretrain_frozen(bw, bb, btw, btb, levels=levels, max_steps=3000,
                                          batch=256, lr=1e-3, generator=p_gen)
pre = {lev: (pw_lev[j], pb_lev[j]) for j, lev in enumerate(levels)}
tol = 1e-2  # "reach a given error": 1% of the random frozen model's test MSE
p_cons = np.zeros((len(levels), p_seeds, D))  # construction error / random frozen error
for j, lev in enumerate(levels):
    pw, pb = pre[lev]
    for s in range(p_seeds):
        rel = ex.construction_curve(btw[s], btb[s], pw[s], pb[s], Rs, rho_shift, (x_p[s],))
        zero_s = ex.adapter_mse(pw[s][None, None], pb[s][None, None], btw[s : s + 1],
                                btb[s : s + 1], x_p[s : s + 1])
        p_cons[j, s] = (rel[:, 0] * zero_s / zero_random[s]).numpy()
closeness = np.array([
    (ex.adapter_mse(pre[lev][0][:, None], pre[lev][1][:, None], btw, btb, x_p)[:, 0]
     / zero_random).numpy() for lev in levels
])  # (levels, seeds): frozen error / random frozen error
need_exact = np.array([[ex.rank_needed(c, Rs, ex.EXACT_REL_MSE) for c in row]
                       for row in p_cons])
need_tol = np.array([[ex.rank_needed(c, Rs, tol) for c in row] for row in p_cons])
print("closeness (frozen MSE / random frozen MSE):", closeness.mean(1).round(3))
print("rank needed for 1% (construction):", need_tol.tolist(), " exact:", need_exact.tolist())

# %% [markdown]
# Closeness in rank: frozen models with $\operatorname{rank}E = k$ for several $k$, same targets.

# %%
ks = scale.pick(quick=[2, 6, 16], default=[2, 4, 6, 10, 16], paper=[2, 4, 6, 10, 16])
k_seeds = scale.pick(quick=1, default=p_seeds, paper=p_seeds)
need_k = np.zeros((len(ks), k_seeds), dtype=int)
for j, k in enumerate(ks):
    for s in range(k_seeds):
        fw_k = ex.close_in_rank(btw[s], bw[s], [[0, 1]], [k], p_gen)
        rel = ex.construction_curve(btw[s], btb[s], fw_k, bb[s], Rs, rho_shift, (x_p[s],))
        need_k[j, s] = ex.rank_needed(rel[:, 0], Rs, ex.EXACT_REL_MSE)
stated_k = np.array([math.ceil(k / L) for k in ks])
print("rank(E) =", ks, "-> measured thresholds", need_k.tolist(), "stated", stated_k.tolist())

# %% [markdown]
# Gradient LoRA on the random and the pretrained frozen models (same protocol as above).

# %%
pg_ranks = scale.pick(quick=[2, 8], default=[1, 2, 4, 8], paper=[1, 2, 4, 8, 12])
pg_levels = levels[:2] if scale.name == "quick" else levels
pw_all = torch.cat([pre[lev][0] for lev in pg_levels])
pb_all = torch.cat([pre[lev][1] for lev in pg_levels])
rep = len(pg_levels)
W_p, b_p = ex.train_lora_gaussian(pw_all, pb_all, btw.repeat(rep, 1, 1, 1),
                                  btb.repeat(rep, 1, 1), pg_ranks, steps=g_steps, batch=256,
                                  lr=1e-2, generator=p_gen, device=str(lb.device()))
g_p = ex.adapter_mse(W_p.double().cpu(), b_p.double().cpu(), btw.repeat(rep, 1, 1, 1),
                     btb.repeat(rep, 1, 1), x_p.repeat(rep, 1, 1)).numpy()
g_p = g_p.reshape(rep, p_seeds, -1) / zero_random.numpy()[None, :, None]
pre_gain = np.median(g_p[1], 0) / np.median(g_p[0], 0)  # pretrained (level 3) / random
need_tol_grad = [ex.rank_needed(np.median(g_p[j], 0), pg_ranks, tol) for j in range(rep)]
print("gradient, median error / random frozen error:", np.median(g_p, 1).round(4))

# %% [markdown]
# Left: the construction's error (relative to the random frozen model's) against rank, one line per closeness
# level. Middle: gradient LoRA, same axes. Right: the rank needed against closeness (the frozen model's error
# relative to the random one's): exact match, and 1 % of the random frozen error by construction and by gradient
# (median run; a rank above the largest one trained means not reached).

# %%
fig, axes = plotting.subplots(3, width=3.6)
palette = ["#444444", "#d95f02", "#1b9e77", "#7570b3"]
for j, lev in enumerate(levels):
    plotting.band(axes[0], Rs, p_cons[j] + 1e-30, label=f"level {lev}", color=palette[j])
for j, lev in enumerate(pg_levels):
    plotting.band(axes[1], pg_ranks, g_p[j], label=f"level {lev}", color=palette[j])
for a, title in zip(axes, ("construction", "gradient LoRA")):
    a.axhline(tol, color="k", linewidth=1, linestyle=":")
    plotting.mark_threshold(a, thr, label=r"$\lceil D/L\rceil$")
    a.set(yscale="log", xlabel="LoRA rank $R$", title=title, ylim=(1e-5, 2))
axes[0].set(ylabel="test MSE / random frozen MSE")
axes[0].legend(fontsize=7, title="closeness level", title_fontsize=7)
cl = closeness.mean(1)
axes[2].plot(cl, np.median(need_exact, 1), "s-", color=plotting.COLORS["theory"],
             label="exact (construction)")
axes[2].plot(cl, np.median(need_tol, 1), "o-", color=plotting.COLORS["construction"],
             label="1% (construction)")
axes[2].plot(cl[: len(pg_levels)], need_tol_grad, "^-", color=plotting.COLORS["lora"],
             label="1% (gradient, median)")
axes[2].set(xscale="log", xlabel="frozen MSE / random frozen MSE", ylabel="rank needed",
            title="rank needed vs closeness")
axes[2].legend(fontsize=7)
fig.tight_layout()

# %% tags=["nbval-check-output"]
lb.claim(
    "pretraining leaves rank(E) = D: the exact threshold stays at ceil(D/L) for every "
    "closeness "
    "level and seed (largest |measured - ceil(D/L)|)",
    int(np.abs(need_exact - thr).max()), "==", 0, kind="theorem",
    label="Zeng & Lee, Lemma 2 (pretrained frozen model)",
    control="test_controls_ch1c.py::"
    "test_pretrained_threshold_check_fails_for_a_low_rank_error",
    levels=levels, closeness=[float(v) for v in closeness.mean(1)],
)
lb.claim(
    "a frozen model with rank(E) = k is matched exactly from R = ceil(k/L) (largest "
    "|measured - "
    "ceil(k/L)| over k and seeds)",
    int(np.abs(need_k - stated_k[:, None]).max()), "==", 0, kind="theorem",
    label="Zeng & Lee, Lemma 2 (rank of E)",
    control="test_controls_ch1c.py::test_rank_k_threshold_check_fails_with_full_rank_noise",
    ks=ks,
)
lb.claim(
    "the rank needed to reach 1% of the random frozen error falls with closeness (median at "
    "the "
    "closest level / median for the random model)",
    float(np.median(need_tol[-1]) / np.median(need_tol[0])), "<", 1.0, kind="sanity",
    need_by_level=[float(np.median(v)) for v in need_tol], need_gradient=need_tol_grad,
)
lb.claim(
    "gradient LoRA: the pretrained frozen model (level 3) has a lower error than the random "
    "one "
    "at every rank (largest ratio of medians)",
    float(pre_gain.max()), "<", 1.0, kind="sanity",
    ranks=pg_ranks,
)

# %% [markdown]
# Pretraining to the paper's level (a third of the initial loss) lowers the error at every rank, by construction and
# by gradient, and lowers the rank at which a fixed tolerance is met; it does not lower the rank of an *exact*
# match, because gradient pretraining shrinks every singular value of $E$ without zeroing any. The paper's message
# "a frozen model closer to the target needs a lower rank" is right for approximate matches; for exact ones the
# relevant closeness is the rank of $E$, and there the threshold $\lceil\operatorname{rank}E/L\rceil$ is met
# exactly.
#
# ## Random models: the threshold holds with probability one
#
# ```{prf:corollary} Random models (Zeng & Lee, corollaries of Lemma 1 and Theorem 5; our wording)
# :label: cor-ch1-random
# :nonumber:
# :class: paper
# If the entries of the frozen and target weights are drawn independently from distributions with a density, then
# with probability one all products are non-singular and every error matrix has rank $D$; hence rank
# $\lceil D/L\rceil$ is necessary and sufficient for a linear frozen model to match a linear target exactly, and
# rank $\lceil D/M\rceil$ suffices for the partition construction of an $\bar L$-layer ReLU target.
# ```
#
# "With probability one" is a statement about every draw, so we measure it over many: the fraction of draws whose
# needed rank ({py:func}`lorabook.expressivity.linear_rank_needed`: the smallest rank whose construction is exact,
# spectral error $\le 10^{-6}\norm{E}_2$; below it no adapters are exact, since $\prod(W_l+\Delta W_l)-\prod W_l$
# has rank at most $RL$) equals $\lceil D/L\rceil$, for Gaussian and uniform entries and several $(D, L)$. We keep
# $L \le 3$: deeper products of random matrices are occasionally so ill-conditioned in float64 that the construction
# refuses them, a numerical limit, not a property of the draw. For ReLU targets, the fraction of draws (the paper's
# initialisation, $\bar L = 2$, $L = 4$) whose construction is exact at $\lceil D/M\rceil$ and not one rank below.

# %%
draws = scale.pick(quick=8, default=60, paper=500)
r_gen = torch.Generator().manual_seed(13)
lin_cases = scale.pick(quick=[(16, 2), (15, 3)], default=[(16, 2), (16, 3), (15, 2), (15, 3)],
                       paper=[(16, 2), (16, 3), (15, 2), (15, 3)])
lin_hits, lin_total = 0, 0
for dist in ("gaussian", "uniform"):
    for Dd, Ld in lin_cases:
        for _ in range(draws):
            t, f = ex.random_linear_pair(Dd, Ld, r_gen, dist=dist)
            lin_hits += ex.linear_rank_needed(t, f) == math.ceil(Dd / Ld)
            lin_total += 1
fnn_draws = scale.pick(quick=2, default=8, paper=50)
Lf, Lbar_f = 4, 2
thr_f = math.ceil(D / (Lf // Lbar_f))
fnn_hits = 0
for _ in range(fnn_draws):
    fw, fb, tw, tb = ex.paper_fnn_instance(D, Lf, Lbar_f, r_gen)
    xr = ex.gaussian_inputs((1000, D), r_gen)
    rel = ex.construction_curve(tw, tb, fw, fb, [thr_f - 1, thr_f], ex.gaussian_radius(D),
                                (xr,))
    fnn_hits += bool(rel[1, 0] <= ex.EXACT_REL_MSE < rel[0, 0])
print(f"linear: {lin_hits}/{lin_total} draws at ceil(D/L); "
      f"ReLU: {fnn_hits}/{fnn_draws} at ceil(D/M)")

# %% tags=["nbval-check-output"]
lb.claim(
    "random linear models (Gaussian and uniform entries): the rank needed equals ceil(D/L) in "
    "every draw (fraction of draws)",
    lin_hits / lin_total, ">=", 1.0, kind="theorem",
    label="Zeng & Lee, Lemma 1 (random models)",
    control="test_controls_ch1c.py::test_random_model_check_fails_for_discrete_entries",
    draws=lin_total,
)
lb.claim(
    "random ReLU models (L = 4, two-layer target): the construction is exact at ceil(D/M) "
    "and not "
    "one rank below in every draw (fraction of draws)",
    fnn_hits / fnn_draws, ">=", 1.0, kind="theorem",
    label="Zeng & Lee, Theorem 5 (random models)",
    control="test_controls_ch1c.py::test_random_fnn_check_fails_when_the_errors_are_low_rank",
    draws=fnn_draws,
)

# %% [markdown]
# ## A general partition
#
# ```{prf:theorem} General partition (Zeng & Lee; our wording)
# :label: thm-ch1-general-partition
# :nonumber:
# :class: paper
# For any ordered partition $\mathcal P = \{P_1, \dots, P_{\bar L}\}$ of the frozen layers into consecutive groups
# (under the non-singularity assumptions for each group), rank-$R$ adapters match the target exactly once
# $R \ge \max_i \lceil\operatorname{rank}(\bar W_i - \prod_{l\in P_i}W_l)/|P_i|\rceil$.
# ```
#
# The uniform partition is not always the best. Take $L = 4$, $\bar L = 2$, and a frozen model whose first layer is
# already close to the target's first layer, $\bar W_1 - W_1$ of rank 2 (as after a low-rank update of that layer).
# Here the other frozen layers are $I + G/(2\sqrt D)$, well conditioned (our choice): with the paper's
# initialisation the worst-case bias bound of a three-layer group compounds beyond what float64 can cancel at some
# ranks, and {py:func}`lorabook.expressivity.fnn_construction` refuses such instances rather than return a wrong
# result.
# The uniform partition $\{1,2\},\{3,4\}$ needs $\max(\lceil 16/2\rceil, \lceil 16/2\rceil) = 8$; the partition
# $\{1\},\{2,3,4\}$ needs only $\max(\lceil 2/1\rceil, \lceil 16/3\rceil) = 6$
# ({py:func}`lorabook.expressivity.partition_construction`, {py:func}`lorabook.expressivity.partition_threshold`).
# We measure both thresholds by construction on Gaussian inputs.

# %%
parts = {"uniform {1,2},{3,4}": [[0, 1], [2, 3]], "general {1},{2,3,4}": [[0], [1, 2, 3]]}
gp_seeds = scale.pick(quick=1, default=3, paper=5)
gp_gen = torch.Generator().manual_seed(14)
gp_rel = np.zeros((gp_seeds, len(parts), D))
gp_pred = np.zeros((gp_seeds, len(parts)), dtype=int)
for s in range(gp_seeds):
    _, fb, tw, tb = ex.paper_fnn_instance(D, Lf, Lbar_f, gp_gen)
    G = torch.randn(Lf, D, D, generator=gp_gen, dtype=torch.float64)
    fw = torch.eye(D, dtype=torch.float64) + G / (2 * math.sqrt(D))
    fw = ex.close_in_rank(tw, fw, [[0], [1, 2, 3]], [2, None], gp_gen)
    xg = ex.gaussian_inputs((1000, D), gp_gen)
    for j, part in enumerate(parts.values()):
        gp_pred[s, j] = ex.partition_threshold(list(tw), list(fw), part)
        gp_rel[s, j] = ex.construction_curve(tw, tb, fw, fb, Rs, ex.gaussian_radius(D), (xg,),
                                             partition=part)[:, 0]
gp_need = np.array([[ex.rank_needed(gp_rel[s, j], Rs, ex.EXACT_REL_MSE)
                     for j in range(len(parts))] for s in range(gp_seeds)])
print("predicted", gp_pred.tolist(), "measured", gp_need.tolist())

# %%
fig, ax = plotting.subplots(1, width=5.2)
for j, (name, color) in enumerate(zip(parts, (plotting.COLORS["theory"],
                                              plotting.COLORS["construction"]))):
    plotting.band(ax, Rs, gp_rel[:, j] + 1e-30, label=name, color=color)
    ax.axvline(gp_pred[0, j], color=color, linestyle=":", linewidth=1)
ax.set(yscale="log", xlabel="LoRA rank $R$", ylabel="test MSE / frozen MSE",
       title=r"$L = 4$, $\bar L = 2$, first layer close in rank")
ax.legend(fontsize=8)

# %% tags=["nbval-check-output"]
lb.claim(
    "general partition: the measured exact threshold equals max_i ceil(rank(E_i)/|P_i|) for "
    "both partitions and every seed (largest |measured - predicted|)",
    int(np.abs(gp_need - gp_pred).max()), "==", 0, kind="theorem",
    label="Zeng & Lee, Theorem 5 (general partition)",
    control="test_controls_ch1c.py::"
    "test_general_partition_check_fails_for_the_other_partition",
    predicted=gp_pred[0].tolist(),
)
lb.claim(
    "the general partition needs a lower rank than the uniform one here (largest measured "
    "general - uniform)",
    int((gp_need[:, 1] - gp_need[:, 0]).max()), "<", 0, kind="sanity",
)

# %% [markdown]
# Both thresholds are met exactly where the general statement puts them, and the partition that gives one frozen
# layer to the already-close target layer and three to the other needs rank 6 instead of 8: the rank needed depends
# on how the frozen layers are assigned, not only on their number.

# %% [markdown]
# ## Gradient LoRA on a deeper target
#
# The paper's second FNN figure uses a two-layer target and four frozen layers ($\bar L = 2$, $L = 4$, $M = 2$),
# random and pretrained frozen models. Same protocol as above (Gaussian inputs, trainable biases, Adam at
# $10^{-2}$, the paper's initialisation, pretraining to a third of the initial loss), against the construction on
# the same instances.

# %%
d_seeds = scale.pick(quick=2, default=3, paper=5)
d_ranks = scale.pick(quick=[2, 8], default=[2, 4, 6, 8, 12], paper=list(range(1, 17)))
d_steps = scale.pick(quick=100, default=1500, paper=5000)
d_gen = torch.Generator().manual_seed(15)
deep = [ex.paper_fnn_instance(D, Lf, Lbar_f, d_gen) for _ in range(d_seeds)]
dw, db, dtw, dtb = (torch.stack([t[k] for t in deep]) for k in range(4))
x_d = ex.gaussian_inputs((d_seeds, n_test, D), d_gen)
dpw, dpb, _ = ex.pretrain_frozen(dw, db, dtw, dtb, levels=[1, 3], max_steps=3000, batch=256,
                                 lr=1e-3, generator=d_gen)
W_d, b_d = ex.train_lora_gaussian(dpw.flatten(0, 1), dpb.flatten(0, 1), dtw.repeat(2, 1, 1, 1),
                                  dtb.repeat(2, 1, 1), d_ranks, steps=d_steps, batch=256,
                                  lr=1e-2, generator=d_gen, device=str(lb.device()))
d_zero = ex.adapter_mse(dw[:, None], db[:, None], dtw, dtb, x_d)[:, 0]  # random frozen error
g_d = ex.adapter_mse(W_d.double().cpu(), b_d.double().cpu(), dtw.repeat(2, 1, 1, 1),
                     dtb.repeat(2, 1, 1), x_d.repeat(2, 1, 1)).reshape(2, d_seeds, -1)
g_d = (g_d / d_zero[None, :, None]).numpy()  # (random/pretrained, seed, rank) / random frozen
d_cons = np.zeros((2, d_seeds, len(d_ranks)))
for k in range(2):
    for s in range(d_seeds):
        rel = ex.construction_curve(dtw[s], dtb[s], dpw[k, s], dpb[k, s], d_ranks,
                                    ex.gaussian_radius(D), (x_d[s],))[:, 0]
        zero_k = ex.adapter_mse(dpw[k, s][None, None], dpb[k, s][None, None], dtw[s : s + 1],
                                dtb[s : s + 1], x_d[s : s + 1]).item()
        d_cons[k, s] = rel.numpy() * zero_k / d_zero[s].item()
d_above = np.array(d_ranks) >= thr_f
print("gradient, median error / random frozen error (random, pretrained):")
print(np.median(g_d, 1).round(5))

# %%
fig, ax = plotting.subplots(1, width=6.4)
for k, (name, color) in enumerate(zip(("random", "pretrained"),
                                      (plotting.COLORS["lora"], plotting.COLORS["full"]))):
    plotting.band(ax, d_ranks, g_d[k], label=f"gradient LoRA, {name} frozen model",
                  color=color)
    plotting.band(ax, d_ranks, d_cons[k] + 1e-30, label=f"construction, {name}", color=color,
                  marker="s", linestyle=":")
plotting.mark_threshold(ax, thr_f, label=r"$\lceil D/M\rceil$")
ax.set(yscale="log", xlabel="LoRA rank $R$", ylabel="test MSE / random frozen MSE",
       title=r"two-layer target, $L = 4$, Gaussian inputs", ylim=(1e-6, 2))
ax.legend(fontsize=7)

# %% tags=["nbval-check-output"]
lb.claim(
    "deeper target: the construction is exact from ceil(D/M) for the random and the "
    "pretrained frozen model (largest error / random frozen error there)",
    float(d_cons[:, :, d_above].max()), "<=", ex.EXACT_REL_MSE, kind="sanity",
)
lb.claim(
    "deeper target, within this budget: no gradient run meets the exact-match criterion at or "
    "above ceil(D/M) (smallest error / random frozen error there)",
    float(g_d[:, :, d_above].min()), ">", ex.EXACT_REL_MSE, kind="sanity",
    steps=d_steps,
)
lb.claim(
    "deeper target: gradient LoRA on the pretrained frozen model has a lower error than on "
    "the random one below ceil(D/M) (largest ratio of medians)",
    float((np.median(g_d[1], 0) / np.median(g_d[0], 0))[~d_above].max()), "<", 1.0,
    kind="sanity", ratios=[float(v) for v in np.median(g_d[1], 0) / np.median(g_d[0], 0)],
)

# %% [markdown]
# With the deeper target the construction is exact from $\lceil D/M\rceil = 8$ for both frozen models, while gradient
# LoRA stays far from it within this budget: at `default` (1,500 steps) the median error at $R = 8$ and $12$ is still
# a few percent of the frozen model's, much further from exact than for the one-layer target (we did not run the
# budget study of {ref}`ch1-relu` here, so this is *not reached within our budget*, not a limit of LoRA). Pretraining
# to the paper's level lowers the gradient error below the threshold, but only a little here (ratios recorded with
# the claim are close to 1), less than for the one-layer target.
