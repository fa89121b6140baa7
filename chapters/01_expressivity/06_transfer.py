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
# (ch1-transfer)=
# # Beyond the paper: low-rank transfer without gradients
#
# The last slides of {cite}`zeng2024expressive` sketch a gradient-free way to adapt a known network to a subgroup.
# A population network with known layers $M_1,\dots,M_L$ and a subgroup whose first layer is shifted by a
# low-rank matrix,
#
# $$ y = M_L\sigma(M_{L-1}\sigma(\cdots M_2\sigma(W_1x))) + \varepsilon, \qquad W_1 = M_1 + Z,\quad \rank Z \le k,
# \qquad x \sim \mathcal N(0, \Sigma). $$
#
# The recipe: (i) estimate the row space of $W_1$ from the second-order Stein moment {cite}`stein1981estimation,janzamin2014score`,
# (ii) recover $Z$ from that row space by a closed-form reduced-rank regression {cite}`izenman1975reduced`.
# No gradient step. We test it on subgroups of $n$ samples, compare it with gradient LoRA {cite}`hu2022lora`
# fitted on the same samples, and find out when it works and when it cannot. Two findings depart from the slides: the
# reduced-rank regression as written identifies only part of $Z$, and we add the missing step (a $k\times k_1$
# least-squares fit); and gradient LoRA uses the same samples much better.
#
# **Setup (our constants).** $d = 16$ inputs, a bottleneck first layer of width $k_1 = 4$, then widths $16$ and
# $m = 3$ outputs ($L = 3$), ReLU, no biases, $\Sigma = I$, noise $\varepsilon \sim \mathcal N(0, 0.1^2 I)$;
# $M_l$ Gaussian with variance $1/\text{fan-in}$, and $Z$ of rank $k = 2$ with $\E\norm{Z}_F^2 = \E\norm{M_1}_F^2$.
# The code is in `lorabook.transfer`.

# %% tags=["nbval-ignore-output"]
import numpy as np

import lorabook as lb
from lorabook import plotting
from lorabook import transfer as tr
from lorabook.train import cached_sweep

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% tags=["nbval-ignore-output"]
ns = scale.pick(quick=[1_000, 4_000, 16_000],
                default=[500, 1_000, 2_000, 4_000, 8_000, 16_000],
                paper=[500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000])
base = dict(version="transfer-v1", scale=scale.name, seed=0,
            seeds=scale.pick(quick=3, default=6, paper=50), d=16,
            widths=[4, 16, 3], rank=2, z_scale=1.0, noise=0.1, activation="relu", ns=ns,
            n_test=scale.n_test, center="linear", refine=True,
            lora_steps=scale.pick(quick=300, default=500, paper=5_000),
            lrs=scale.pick(quick=[1e-2, 3e-2], default=[1e-2, 3e-2],
                           paper=[1e-3, 3e-3, 1e-2, 3e-2]),
            batch_size=scale.pick(quick=128, default=128, paper=256))
configs = {
    "relu": base,                                      # the method, and gradient LoRA
    "relu, no control variate": dict(base, center="none", refine=False, lora_steps=0),
    "tanh (odd)": dict(base, activation="tanh", refine=False, lora_steps=0),
    "k1 = d": dict(base, widths=[16, 16, 3], refine=False),
}
runs = dict(zip(configs, cached_sweep("transfer", configs.values(), tr.run_experiment)))
med = {name: {key: np.median(v, axis=-1) for key, v in run.items() if np.ndim(v) == 2}
       for name, run in runs.items()}


def loglog_slope(x, y):
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# %% [markdown]
# ## Step 1: the row space from the second-order Stein moment
#
# ```{prf:proposition} Second-order Stein identity (slides, eq. 10)
# :label: prop-transfer-stein
# Let $x\sim\mathcal N(0,\Sigma)$, $T(x) = \Sigma^{-1}xx^\top\Sigma^{-1} - \Sigma^{-1}$, and $f(x) = g(W_1x)$ with
# $W_1\in\R^{k_1\times d}$ and $\E|f|$, $\E\norm{\nabla^2 f}$ finite. Then
# $\E[f(x)\,T(x)] = \E[\nabla_x^2 f(x)] = W_1^\top\,\E[\nabla_z^2 g(W_1x)]\,W_1$.
# Its range lies in the row space of $W_1$, and equals it when the $k_1\times k_1$ matrix $\E[\nabla_z^2 g]$ is
# non-singular. If $g$ is odd, $\E[\nabla_z^2 g(W_1x)] = 0$ and the moment carries no information.
# ```
#
# The slides write $\E[\nabla_x^2 f(W_1x)]$ between $W_1^\top$ and $W_1$; the Hessian there is in $z = W_1x$.
# For $m$ outputs we get one moment $A_j$ per output. We take the top-$k_1$ eigenvectors of $\sum_j A_j^2$ (ranked
# by magnitude: each $A_j$ is indefinite in general, and summing the $A_j$ could cancel them). The estimator
# $\hat A_j = \frac1n\sum_i y_{ij}T(x_i)$ is noisy: it multiplies $y$ by fourth-order terms in $x$. We subtract
# from $y$ its least-squares fit $a + Bx$ first. Since $\E[T(x)] = 0$ and $\E[x_l T(x)] = 0$ (odd Gaussian moments),
# this changes the expectation only by $O(1/n)$, and it removes the large mean and linear part of a ReLU network.
# We compare this with the plain estimator, and with a $\tanh$ network, which is odd.
#
# *Figure: left, the distance $\norm{\hat V\hat V^\top - VV^\top}_2$ between estimated and true row spaces versus $n$
# (median and interquartile range over seeds; dotted: slope $-1/2$). Right, the size of the combined moment.
# For ReLU it tends to a constant; for tanh it is pure noise, decaying like $n^{-1/2}$.*

# %%
fig, ax = plotting.subplots(2, width=4.6)
styles = {"relu": plotting.COLORS["construction"],
          "relu, no control variate": plotting.COLORS["other"],
          "tanh (odd)": plotting.COLORS["lora_A"]}
names = {"relu": "ReLU, linear control variate",
         "relu, no control variate": "ReLU, no control variate",
         "tanh (odd)": "tanh (odd network)"}
for name, color in styles.items():
    label = names[name]
    plotting.band(ax[0], ns, runs[name]["row_space"].T, label=label, color=color)
    plotting.band(ax[1], ns, runs[name]["moment_norm"].T, label=label, color=color)
ref = med["relu"]["row_space"][-1] * (np.asarray(ns) / ns[-1]) ** -0.5
ax[0].plot(ns, ref, ":", color=plotting.COLORS["theory"], label=r"$\propto n^{-1/2}$")
ax[0].set(xscale="log", yscale="log", xlabel="subgroup size $n$",
          ylabel=r"$\|\hat V\hat V^\top - VV^\top\|_2$",
          title="row space of $W_1$ from the Stein moment")
ax[1].set(xscale="log", yscale="log", xlabel="subgroup size $n$",
          ylabel=r"$\|\sum_j \hat A_j^2\|_2^{1/2}$", title="size of the second-order moment")
for a in ax:
    a.legend()
fig.tight_layout()

# %%
big = np.asarray(ns) >= 4_000
slope_rows = loglog_slope(np.asarray(ns)[big], med["relu"]["row_space"][big])
slope_relu_moment = loglog_slope(ns, med["relu"]["moment_norm"])
slope_tanh_moment = loglog_slope(ns, med["tanh (odd)"]["moment_norm"])

# %% [markdown]
# The slides' Step 1 is a claim that can be tested: with a ReLU bottleneck the top-$k_1$ eigenvectors of the
# Stein moment converge to the row space of $W_1$. At $n = 16\,000$ the median row-space error is about $0.08$;
# we hold it to $0.15$, a factor two above what the estimator reaches (its noise falls like $n^{-1/2}$). The
# negative controls in `tests/test_controls_ch1b.py` run the same check on an odd ($\tanh$) network, where the
# proposition's hypothesis fails ($\E[\nabla^2 g] = 0$), and with $n = 200$ samples; both fail it.

# %% tags=["nbval-check-output"]
ctl = "test_controls_ch1b.py::test_stein_row_space_check_fails_"
lb.claim("ReLU bottleneck: the Stein moment's top eigenvectors give the row space of W_1 "
         "(median row-space error at the largest n)", med["relu"]["row_space"][-1], "<", 0.15,
         kind="theorem", label="Zeng & Lee slides, transfer extension (Stein row space)",
         control=(ctl + "for_an_odd_network", ctl + "with_too_few_samples"))
lb.claim("the row-space error decays (log-log slope over n >= 4000, at most)",
         slope_rows, "<=", -0.3, kind="sanity")
lb.claim("and no faster than n^(-0.85) (slope, at least)", slope_rows, ">=", -0.85,
         kind="sanity")
lb.claim("the linear control variate lowers the row-space error at the largest n "
         "(ratio with / without)",
         med["relu"]["row_space"][-1] / med["relu, no control variate"]["row_space"][-1],
         "<", 1.0, kind="sanity")
lb.claim("odd (tanh) network: the moment is noise, its size decays (log-log slope, at most)",
         slope_tanh_moment, "<=", -0.3, kind="sanity")
lb.claim("ReLU network: the moment's size does not decay (log-log slope, at least)",
         slope_relu_moment, ">", -0.15, kind="sanity")
lb.claim("odd (tanh) network: the row space is not found (row-space error at the largest n)",
         med["tanh (odd)"]["row_space"][-1], ">", 0.8, kind="sanity")

# %% [markdown]
# ## Step 2: what the reduced-rank regression identifies
#
# The slides observe that $W_1 = UV^\top$ with $V^\top V = I$ gives $W_1(VV^\top - I) = 0$, and estimate
# $\hat Z = \arg\min_{\rank Z\le k}\norm{M_1(VV^\top - I) + Z(VV^\top - I)}_F$, a reduced-rank regression with
# $Y = M_1(VV^\top - I)$ and $X = I - VV^\top$.
#
# ```{prf:proposition} The slides' estimate, solved
# :label: prop-transfer-rrr
# Let $P = VV^\top$ and $P_\perp = I - P$. The minimum-norm solution of
# $\min_{\rank Z\le k}\norm{Y - ZX}_F$ is $\LR_k(YX^+X)X^+$. Here this is $\hat Z = \LR_k(-M_1P_\perp)$.
# If $V$ spans the row space of $M_1 + Z$, then $-M_1P_\perp = ZP_\perp$. The minimum is $0$, and $\hat Z = ZP_\perp$.
# Every $Z' = ZP_\perp + DV^\top$ of rank $\le k$ also attains $0$. So the part $ZP$ of $Z$ inside the row space
# is not identified, and the slides' $\hat Z$ has relative error $\norm{ZP}_F/\norm{Z}_F$ even with exact $V$.
# If $\rank(ZP_\perp) = k$, the rank constraint forces the columns of $D$ into those of $ZP_\perp$. The solutions are
# then exactly $\hat Z + \hat U H V^\top$, where $\hat U$ holds the left singular vectors of $\hat Z$ and $H\in\R^{k\times k_1}$.
# ```
#
# *Proof.* $ZX$ ranges over the rank-$\le k$ matrices whose rows lie in the row space of $X$. The closed form follows by
# Eckart–Young, and $Z\mapsto Z+K$ with $KX = 0$ leaves the fit unchanged. For the rest, write
# $Z' = [D \mid -M_1V_\perp]$ in the basis $[V, V_\perp]$. Then $\rank Z' \ge \rank(M_1V_\perp) = k$, with equality iff
# $\operatorname{col}D\subseteq\operatorname{col}(M_1V_\perp)$. $\square$
#
# So the slides' formula is incomplete: it leaves $k\,k_1$ unknowns (here $8$, against $k(d + k_1) = 40$
# for the whole shift). The row space cannot fix them: $W_1$ and $RW_1$ have the same row space for every
# invertible $R$, not only orthogonal ones. **Our completion** fits $H$ to the subgroup data by least squares.
# The prediction depends on $H$ only through the $k_1$ pre-activations, and we solve with Levenberg–Marquardt
# (Gauss–Newton steps in $8$ unknowns, no learning rate, from $H = 0$). This step uses the Jacobian of the known
# layers, so the completed method is gradient-free only in the sense that no adapter is trained iteratively: it
# makes a handful of exact $8\times 8$ linear solves. The baseline is gradient LoRA on the first layer
# ($W_1 = M_1 + BA$, rank $k$, Adam on minibatches of the same $n$ samples, $20\%$ held out to pick the learning rate).
# The gradient runs for all $n$, seeds and learning rates go in one batched program.
#
# *Figure: left, relative error $\norm{\hat Z - Z}_F/\norm{Z}_F$ versus $n$. The slides' estimate stays at
# $\norm{ZP}_F/\norm{Z}_F$ (dashed); the completed estimate converges. Right, relative prediction error
# $\E\norm{f_{\hat Z}(x) - f_Z(x)}^2/\operatorname{Var} f_Z(x)$ on fresh inputs.*

# %%
fig, ax = plotting.subplots(2, width=4.6)
run = runs["relu"]
curves = {
    "slides' estimate (Step 2 only)": ("slides", plotting.COLORS["other"]),
    "completed (ours: + $k k_1$ least squares)": ("completed",
                                                  plotting.COLORS["construction"]),
    "gradient LoRA, same samples": ("lora", plotting.COLORS["lora"]),
}
for label, (key, color) in curves.items():
    plotting.band(ax[0], ns, run[key].T, label=label, color=color)
    plotting.band(ax[1], ns, run["pred_" + key].T, label=label, color=color)
ax[0].axhline(np.median(run["plateau"]), linestyle="--", color=plotting.COLORS["theory"],
              label=r"$\|ZP\|_F/\|Z\|_F$ (median)")
ax[0].set(xscale="log", yscale="log", xlabel="subgroup size $n$",
          ylabel=r"$\|\hat Z - Z\|_F / \|Z\|_F$", title="error of the shift $Z$")
ax[1].set(xscale="log", yscale="log", xlabel="subgroup size $n$",
          ylabel="relative prediction error", title="error of the subgroup model")
for a in ax:
    a.legend()
fig.tight_layout()

# %%
plateau = float(np.median(run["plateau"]))
slides_end, completed_end = med["relu"]["slides"][-1], med["relu"]["completed"][-1]

# %% tags=["nbval-check-output"]
lb.claim("with the exact row space, the slides' regression returns Z(I - VV^T) to rounding "
         "error (relative deviation)", run["oracle_slides_gap"], "<=", 1e-10, kind="sanity")
lb.claim("the slides' estimate does not converge to Z (its relative error at the largest n)",
         slides_end, ">", 0.5, kind="departure",
         label="Zeng & Lee slides, transfer extension (reduced-rank regression)")
lb.claim("it stays at ||ZP||/||Z||, the part the regression cannot see "
         "(relative distance to it)", abs(slides_end - plateau) / plateau, "<=", 0.01,
         kind="sanity")
lb.claim("the completed estimate recovers Z (relative error at the largest n)",
         completed_end, "<", 0.2, kind="sanity")
lb.claim("and, with the exact row space, to within the noise (median relative error)",
         float(np.median(run["oracle"])), "<", 0.05, kind="sanity")
lb.claim("gradient LoRA on the same samples is more accurate than the Stein transfer at every "
         "n (largest ratio of median errors, LoRA / Stein)",
         float((med["relu"]["lora"] / med["relu"]["completed"]).max()), "<", 1.0,
         kind="sanity")

# %% [markdown]
# The Stein step is the bottleneck. With the exact row space, the completion is as accurate as the noise allows
# (the claim above). With $\hat V$, the error of $\hat Z$ follows the row-space error of Step 1, which falls only like
# $n^{-1/2}$ with a large constant (fourth moments of $x$ times $y$). Gradient LoRA fits the same $k(d + k_1)$
# parameters directly by least squares and needs far fewer samples (its curve flattens near $0.03$ only because
# of our short Adam budget). The slides suggest the method for $n\ll N$; there,
# gradient LoRA is the better tool. What the gradient-free route does offer is a closed-form, training-free estimate,
# plus a diagnostic (the spectrum of $\sum_j\hat A_j^2$) that says whether the shift is visible at all.
#
# ## When the method cannot work
#
# ```{prf:proposition} Identifiability conditions
# :label: prop-transfer-ident
# The Stein route identifies $ZP_\perp$ only if (a) the row space of $W_1$ is a proper subspace, $k_1 < d$, and
# (b) $\E[\nabla_z^2 g(W_1x)]$ is non-singular. If $k_1 = d$, then $P_\perp = 0$: every $Z$ attains the minimum $0$
# and the minimum-norm estimate is $\hat Z = 0$, whatever the data. If $g$ is odd (e.g. $\tanh$ layers without biases,
# or a linear network), the moment vanishes and $\hat V$ is a random subspace (Step 1).
# ```
#
# Both failures belong to the moment method, not to the subgroup problem: $Z$ can still be identifiable from the
# data. For $k_1 = d = 16$ (no bottleneck) gradient LoRA still recovers it.
#
# *Figure: relative error of $\hat Z$ versus $n$ without a bottleneck ($k_1 = d$). The slides' estimate is $0$
# (error $1$), while gradient LoRA on the same samples converges.*

# %%
fig, ax = plotting.subplots(1, width=5.5)
full = runs["k1 = d"]
n_full = configs["k1 = d"]["ns"]
plotting.band(ax, n_full, full["slides"].T, label=r"Stein transfer ($\hat Z = 0$)",
              color=plotting.COLORS["other"])
plotting.band(ax, n_full, full["lora"].T, label="gradient LoRA, same samples",
              color=plotting.COLORS["lora"])
ax.set(xscale="log", yscale="log", xlabel="subgroup size $n$",
       ylabel=r"$\|\hat Z - Z\|_F / \|Z\|_F$",
       title="no bottleneck ($k_1 = d = 16$): the row space is everything")
ax.legend(loc="center right")

# %% tags=["nbval-check-output"]
lb.claim("k1 = d: the Stein transfer returns Z = 0 at every n "
         "(an identity, P_perp = 0: largest |error - 1|)",
         float(np.abs(full["slides"] - 1).max()), "<=", 1e-10, kind="sanity")
lb.claim("k1 = d: gradient LoRA still recovers Z from the same samples "
         "(median relative error at the largest n)",
         float(np.median(full["lora"][-1])), "<", 0.2, kind="sanity")

# %% [markdown]
# **Scale notes.** `quick` uses 3 seeds and $n\in\{10^3, 4\cdot10^3, 1.6\cdot10^4\}$. `default` uses 6 seeds and six
# sizes from $500$ to $16\,000$. `paper` uses 50 seeds, sizes up to $64\,000$, four learning rates and 5,000 Adam steps
# for the baseline. The claims' thresholds (row-space error $< 0.15$, completed error $< 0.2$, slopes within
# $[-0.85, -0.3]$, the slides' estimate within 1 % of $\|ZP\|_F/\|Z\|_F$) are ours, set a factor two to ten
# above what `quick` and `default` reach.
