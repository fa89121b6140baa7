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
# (ch1-relu)=
# # One-layer ReLU target: the bias trick
#
# Now the frozen model is an $L$-layer ReLU network $z_l = \mathrm{ReLU}(W_l z_{l-1} + b_l)$ (a ReLU after every
# layer, as in {cite}`zeng2024expressive`) and the target is one layer, $\bar f(x) = \mathrm{ReLU}(\bar W_1 x + \bar b_1)$.
# LoRA adapts the weights by rank-$R$ updates; the biases are trainable. Here $D = 16$, $L = 2$, inputs in the cube
# $[-1,1]^D$, frozen and target weights $\mathcal N(0, 1/D)$, biases $\mathcal N(0, 0.1^2)$ (our choices).

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
# ## Large biases linearise the network
#
# ```{prf:lemma} One-layer ReLU target (Zeng & Lee, Lemma 2)
# :label: lem-ch1-relu
# Under the assumptions of {prf:ref}`lem-ch1-linear` with $E = \bar W_1 - \prod_l W_l$, on a bounded input set
# $\mathcal X$ there are rank-$R$ adapters and biases with
# $\norm{f(x) - \bar f(x)} \le \norm{(\LR_{RL\wedge R_E}(E) - E)x}$ for all $x \in\mathcal X$; in particular
# $f = \bar f$ on $\mathcal X$ once $R \ge \lceil R_E/L\rceil$.
# ```
#
# The proof makes every ReLU of layers $1..L-1$ active on all of $\mathcal X$ by a large bias, so those layers are
# affine; the last bias cancels the accumulated shift and adds $\bar b_1$. Our `fnn_construction` chooses
# $\hat b_l[k] = \norm{(W_l+\Delta W_l)_{k,:}}_2\,\rho_{l-1} + 1$ where $\rho_{l-1}$ bounds $\norm{z_{l-1}}_2$ over the whole
# input ball $\norm{x}_2 \le \rho_0$, so every pre-activation is $\ge 1$ on the ball, not only on a sample. We take the
# ball that contains both the training cube and the shifted cube used later ($\rho_0 = 1.5\sqrt D$).
# (The slides write $f - \bar f = \mathrm{ReLU}((\LR(E) - E)x)$; since $\mathrm{ReLU}(a) - \mathrm{ReLU}(b) \ne \mathrm{ReLU}(a-b)$
# this holds only as the inequality above, which is all the error bound needs.)

# %%
D, L = 16, 2
seeds = scale.seeds
torch_gen, _ = lb.seed_everything(1)
radius = 1.5 * math.sqrt(D)
x_test = ex.uniform_inputs((scale.n_test, D), torch_gen, dtype=torch.float64)
x_shift = ex.uniform_inputs(
    (scale.n_test, D), torch_gen, low=-0.5, high=1.5, dtype=torch.float64
)
Rs = np.arange(1, D + 1)
mse = np.zeros((seeds, D))
zero = np.zeros(seeds)  # the frozen model's test error, the unit of the exact-match criterion
instances = []
for s in range(seeds):
    fw, fb, tw, tb = ex.random_fnn_instance(D, L, 1, torch_gen)
    instances.append((fw, fb, tw, tb))
    zero[s] = (
        (ex.fnn_forward(x_test, fw, fb) - ex.fnn_forward(x_test, tw, tb))
        .square()
        .sum(-1)
        .mean()
        .item()
    )
    for R in Rs:
        deltas, biases = ex.fnn_construction(list(tw), list(tb), list(fw), int(R), radius)
        f = ex.fnn_forward(x_test, [W + d for W, d in zip(fw, deltas)], biases)
        mse[s, R - 1] = (f - ex.fnn_forward(x_test, tw, tb)).square().sum(-1).mean().item()
        if (
            R == D // L and s == 0
        ):  # pre-activations of layer 1, frozen vs adapted (the bias trick)
            pre_frozen = (x_test @ fw[0].T + fb[0]).flatten().numpy()
            pre_adapted = (
                torch.cat(
                    [
                        x_test @ (fw[0] + deltas[0]).T + biases[0],
                        x_shift @ (fw[0] + deltas[0]).T + biases[0],
                    ]
                )
                .flatten()
                .numpy()
            )
thr = D // L
rel = mse / zero[:, None]
max_at_thr = rel[:, thr - 1 :].max()
min_below = rel[:, : thr - 1].min()

# %% [markdown]
# Left: the construction's test error against $R$ (median and IQR over seeds) collapses at $R = \lceil D/L\rceil = 8$.
# Right: first-layer pre-activations on test and shifted inputs, frozen (many ReLUs off) and adapted (all $\ge 1$).

# %%
fig, ax = plotting.subplots(2, width=4.6)
plotting.band(
    ax[0], Rs, mse + 1e-32, label="construction", color=plotting.COLORS["construction"]
)
plotting.mark_threshold(ax[0], thr, label=r"$\lceil D/L\rceil$")
ax[0].set(
    yscale="log",
    xlabel="LoRA rank $R$",
    ylabel=r"test $\mathbb{E}\|f(x)-\bar f(x)\|^2$",
    title="exact match at R = 8",
)
ax[1].hist(
    pre_frozen, bins=60, alpha=0.6, color=plotting.COLORS["theory"], label="frozen layer 1"
)
ax[1].hist(
    pre_adapted,
    bins=60,
    alpha=0.6,
    color=plotting.COLORS["construction"],
    label="adapted layer 1 (R=8)",
)
ax[1].axvline(0, color="k", linewidth=1)
ax[1].set(xlabel="pre-activation", ylabel="count", title="the bias trick: all ReLUs on")
for a in ax:
    a.legend(fontsize=8)
fig.tight_layout()

# %% tags=["nbval-check-output"]
lb.claim(
    "the adapted first layer keeps every ReLU active on test and shifted inputs (smallest "
    "pre-activation)",
    float(pre_adapted.min()),
    ">=",
    1.0 - 1e-9,
    kind="sanity",
)
lb.claim(
    "exact match from R = ceil(D/L) on (largest test error / frozen error, every seed)",
    max_at_thr,
    "<=",
    ex.EXACT_REL_MSE,
    kind="theorem",
    label="Zeng & Lee, Lemma 2",
    control="test_controls_ch1.py::test_lemma2_exactness_check_fails_one_rank_short",
)
lb.claim(
    "no exact match below it (smallest test error / frozen error)",
    min_below,
    ">",
    ex.EXACT_REL_MSE,
    kind="theorem",
    label="Zeng & Lee, Lemma 2 (threshold)",
    control="test_controls_ch1.py::test_lemma2_below_threshold_check_fails_at_the_threshold",
)

# %% [markdown]
# ## The error bound, and where the stated form fails
#
# ```{prf:proposition} Expected error (Zeng & Lee, Lemma 2, second part)
# :label: prop-ch1-relu-bound
# With $\Sigma = \E[xx^\top]$: $\E\norm{f(x)-\bar f(x)}_2^2 \le \norm{\Sigma}_F\,\sigma^2_{RL\wedge R_E+1}(E)$ as stated;
# the proof's step $\E\norm{Ax}^2 \le \norm{A}_2^2\,\E\norm{x}^2$ gives $\tr(\Sigma)\,\sigma^2_{RL\wedge R_E+1}(E)$, and
# $\tr\Sigma \ge \norm{\Sigma}_F$.
# ```
#
# Which version holds? For $x\sim U[-1,1]^D$, $\Sigma = I/3$: $\tr\Sigma = D/3$ but $\norm{\Sigma}_F = \sqrt D/3$. When
# every ReLU of the target is active (large $\bar b_1$, here $\bar b_1 + 10$), the error is exactly
# $(\LR(E)-E)x$ and its mean square is $\sum_{i>RL}\sigma_i^2(E)/3$, a sum over the whole spectral tail; the stated
# bound keeps only $\sqrt D$ copies of its largest term. We evaluate both bounds for the drawn biases and for the
# all-active target.

# %%
Sigma = torch.eye(D, dtype=torch.float64) / 3
bound_rows = {"drawn biases": [], "all ReLUs active": []}
for fw, fb, tw, tb in instances:
    for name, shift in (("drawn biases", 0.0), ("all ReLUs active", 10.0)):
        tb_ = tb + shift
        E = tw[0] - lb.chain_product(list(fw))
        row = []
        for R in range(1, thr):
            deltas, biases = ex.fnn_construction(list(tw), list(tb_), list(fw), R, radius)
            f = ex.fnn_forward(x_test, [W + d for W, d in zip(fw, deltas)], biases)
            m = (f - ex.fnn_forward(x_test, tw, tb_)).square().sum(-1).mean().item()
            b = ex.relu_bounds(E, R, L, Sigma)
            row.append((m, b["paper"], b["corrected"]))
        bound_rows[name].append(row)
bounds = {k: np.array(v) for k, v in bound_rows.items()}  # (seeds, R, 3)
corrected_ratio = max(float((v[..., 0] / v[..., 2]).max()) for v in bounds.values())
second_moment = x_test.square().sum(-1).mean().item()  # E||x||^2, Monte Carlo (D/3 exactly)
paper_ratio = bounds["all ReLUs active"][..., 0] / bounds["all ReLUs active"][..., 1]

# %% [markdown]
# Measured error (markers) and the two bounds (lines), medians over seeds, for $R$ below the threshold.

# %%
fig, axes = plotting.subplots(2, width=4.6, sharey=True)
Rb = np.arange(1, thr)
for ax, (name, v) in zip(axes, bounds.items()):
    plotting.band(
        ax,
        Rb,
        v[..., 0],
        label="measured (construction)",
        color=plotting.COLORS["construction"],
    )
    plotting.band(
        ax,
        Rb,
        v[..., 1],
        label=r"stated: $\|\Sigma\|_F\sigma^2_{RL+1}$",
        color=plotting.COLORS["other"],
        marker="",
    )
    plotting.band(
        ax,
        Rb,
        v[..., 2],
        label=r"corrected: $\mathrm{tr}\,\Sigma\,\sigma^2_{RL+1}$",
        color=plotting.COLORS["theory"],
        marker="",
        linestyle="--",
    )
    ax.set(
        yscale="log",
        xlabel="LoRA rank $R$",
        ylabel=r"$\mathbb{E}\|f(x)-\bar f(x)\|^2$",
        title=name,
    )
axes[0].legend(fontsize=8)
fig.tight_layout()

# %% tags=["nbval-check-output"]
lb.claim(
    "the corrected bound tr(Sigma) sigma^2 holds for every seed and rank (largest measured / "
    "bound; "
    "5% for the Monte Carlo error of the test mean)",
    corrected_ratio,
    "<=",
    1.05,
    kind="sanity",
)
lb.claim(
    "the proof's step E||x||^2 = ||Sigma||_F fails for x ~ U[-1,1]^D (E||x||^2 / ||Sigma||_F)",
    second_moment / torch.linalg.matrix_norm(Sigma).item(),
    ">",
    1.5,
    kind="departure",
    label="Zeng & Lee, Lemma 2 (proof, E||x||^2)",
)
lb.claim(
    "the construction's error exceeds the stated bound when all target ReLUs are active "
    "(largest "
    "measured / stated bound)",
    float(paper_ratio.max()),
    ">",
    1.0,
    kind="sanity",
)

# %% [markdown]
# The proof's step $\E\norm{Ax}^2 \le \norm{A}_2^2\,\E\norm{x}^2$ is right, but $\E\norm{x}^2 = \tr\Sigma$ ($= D/3$
# here), not $\norm{\Sigma}_F$ ($=\sqrt D/3$): the proof shows the corrected bound, which holds everywhere. The
# statement itself only asks that *some* adapters reach $\norm{\Sigma}_F\sigma^2$, and a construction is not the
# best adapter, so the excess above does not refute it. With the drawn (small) biases about half of the target's
# ReLUs are off and the error is smaller.
#
# ## A flat spectrum: the stated bound fails against the best adapters found
#
# The two bounds differ most when the spectral tail is flat. Take $D = 32$, $L = 2$, $R = 1$, frozen $W_l$ Gaussian,
# and a target $\bar W_1 = W_2W_1 + Q$ with $Q$ a random orthogonal matrix, so $E = Q$ and every $\sigma_i(E) = 1$;
# the target bias $\bar b_1[k] = \norm{\bar W_1[k,:]}_2\sqrt D + 1$ keeps every target ReLU on over the cube, so the
# target is affine there ({py:func}`lorabook.expressivity.flat_spectrum_instance`). The lemma's hypotheses hold
# (non-singular $W_l$ and products). The stated bound is $\norm{\Sigma}_F = \sqrt{32}/3 \approx 1.9$; any adapters
# that keep the network affine on the cube leave at least $\sum_{i>2}\sigma_i^2/3 = 10$ (Eckart–Young for the
# rank-$\le 2$ change of the product). We look for better adapters by gradient descent, which is free to use the
# ReLUs: rank-1 LoRA with trainable biases, float64, Adam with a cosine-decaying learning rate from three initial
# rates, several instances, keeping for each instance the lowest test error over all runs (a choice that favours
# the paper), and compare the construction too.

# %%
Df, Lf = 32, 2
flat_seeds = scale.pick(quick=2, default=3, paper=5)
flat_gen = torch.Generator().manual_seed(7)
flat = [ex.flat_spectrum_instance(Df, Lf, flat_gen) for _ in range(flat_seeds)]
ffw, ffb, ftw, ftb = (torch.stack([t[i] for t in flat]) for i in range(4))
x_flat = ex.uniform_inputs((flat_seeds, scale.n_test, Df), flat_gen, dtype=torch.float64)
Sigma_f = torch.eye(Df, dtype=torch.float64) / 3
flat_constr, flat_stated, flat_corr = [], [], []
for s in range(flat_seeds):
    deltas, biases = ex.fnn_construction(
        list(ftw[s]), list(ftb[s]), list(ffw[s]), 1, math.sqrt(Df)
    )
    Wc = torch.stack([W + d for W, d in zip(ffw[s], deltas)])
    flat_constr.append(
        ex.adapter_mse(
            Wc[None, None],
            torch.stack(biases)[None, None],
            ftw[s : s + 1],
            ftb[s : s + 1],
            x_flat[s : s + 1],
        ).item()
    )
    b = ex.relu_bounds(ftw[s, 0] - ffw[s, 1] @ ffw[s, 0], 1, Lf, Sigma_f)
    flat_stated.append(b["paper"])
    flat_corr.append(b["corrected"])
flat_steps = scale.pick(quick=300, default=2000, paper=10000)
_, flat_rec, _, _ = ex.fnn_training_curve(
    ffw,
    ffb,
    ftw,
    ftb,
    ex.grid_configs([1], [3e-2, 1e-2, 3e-3], bias="all"),
    steps=flat_steps,
    batch=256,
    generator=flat_gen,
    x_test=x_flat,
    n_records=1,
)
flat_trained = flat_rec[-1].min(-1).values.numpy()  # best run per instance
flat_best = np.minimum(flat_trained, np.array(flat_constr))
flat_ratio = flat_best / np.array(flat_stated)
print(f"stated bound {np.mean(flat_stated):.3f}, corrected {np.mean(flat_corr):.3f}")
print("construction", np.round(flat_constr, 3), "best trained", np.round(flat_trained, 3))

# %% [markdown]
# The departure is measured against the best adapters found (construction or trained, per instance); it fails only
# if some adapters come below the stated bound, as the construction already does on the section's drawn instances
# (a decaying spectrum; the control in `tests/test_controls_ch1.py`). The corrected bound $\tr(\Sigma)\sigma^2 = 32/3$ holds for the
# construction; we check it with 2 % for the Monte Carlo error of the test mean over 5,000 (or more) inputs.

# %% tags=["nbval-check-output"]
lb.claim(
    "flat spectrum (D=32, R=1, E orthogonal): the best adapters found stay above the stated "
    "bound "
    "||Sigma||_F sigma^2 on every instance (smallest best error / stated bound)",
    float(flat_ratio.min()),
    ">",
    1.0,
    kind="departure",
    label="Zeng & Lee, Lemma 2 (statement, flat spectrum)",
    control="test_controls_ch1.py::"
    "test_lemma2_flat_spectrum_departure_check_fails_on_a_decaying_spectrum",
    stated_bound=float(np.mean(flat_stated)),
    best=[float(v) for v in flat_best],
)
lb.claim(
    "flat spectrum: the construction satisfies the corrected bound tr(Sigma) sigma^2 (largest "
    "measured / "
    "bound)",
    float(max(c / b for c, b in zip(flat_constr, flat_corr))),
    "<=",
    1.02,
    kind="sanity",
)

# %% [markdown]
# Every adapter we found, by construction or by gradient descent, leaves about 10 where the statement promises
# about 1.9: the **statement** of the expected-error part fails on this instance (as far as the best adapters found
# can show; the book does not prove a lower bound for piecewise-linear adapters that switch ReLUs off, but Adam,
# which may, finds nothing better than the affine optimum). The cause is the proof step above; the exact-match part
# of the lemma (the threshold $\lceil R_E/L\rceil$) is unaffected, and the corrected bound $\tr(\Sigma)\sigma^2$
# holds.
#
# ## Gradient LoRA within a fixed training budget
#
# The same grid as for linear models (rank × seed × learning rate × weight decay, one batched program, fresh inputs
# at every step, selection on a validation set, test on fresh and shifted inputs), with trainable biases and with
# the biases fixed at the frozen model's.

# %%
ranks = scale.pick(
    quick=[1, 4, 8, 12], default=[1, 2, 4, 6, 8, 10, 12, 16], paper=list(range(1, 17))
)
lrs = scale.pick(quick=[1e-2], default=[1e-2, 3e-3], paper=[1e-2, 1e-3, 1e-4])
wds = scale.pick(quick=[0.0], default=[0.0], paper=[0.0, 1e-4, 1e-3, 1e-2])
out = ex.cached_grid(
    "ch1-relu-grid",
    scale.name,
    D=D,
    n_layers=L,
    n_target=1,
    seeds=scale.pick(quick=2, default=3, paper=5),
    configs=ex.grid_configs(ranks, lrs, wds, bias="all")
    + ex.grid_configs(ranks, lrs, wds, bias="none"),
    steps=scale.pick(quick=400, default=1200, paper=5000),
    batch=256,
    n_test=scale.n_test,
    construction_ranks=ranks,
    seed=2,
    device=str(lb.device()),
)
nR = len(ranks)
grad_bias, grad_fixed = out["test"][:, :nR], out["test"][:, nR:]
constr = out["construction_test"]
above = np.array(ranks) >= thr
rel_plateau = (grad_bias[:, above] / out["zero_test"][:, None]).min()
below_thr = ~above
bias_gain = np.median(grad_fixed[:, below_thr], 0) / np.median(grad_bias[:, below_thr], 0)
beats_at_1 = np.median(grad_bias[:, 0]) < np.median(constr[:, 0])

# %% [markdown]
# Test MSE against rank: the construction (exact from $R = 8$, below the axis), Adam with trainable biases, and Adam
# with fixed biases (median, IQR over seeds; dotted: shifted inputs).

# %%
fig, ax = plotting.subplots(1, width=6.4)
plotting.band(
    ax,
    ranks,
    constr + 1e-30,
    label="construction",
    color=plotting.COLORS["construction"],
    marker="s",
)
plotting.band(
    ax,
    ranks,
    grad_bias,
    label="gradient LoRA, trainable biases",
    color=plotting.COLORS["lora"],
)
plotting.band(
    ax,
    ranks,
    out["shift"][:, :nR],
    label="same, shifted inputs",
    color=plotting.COLORS["lora"],
    marker="",
    linestyle=":",
)
plotting.band(
    ax,
    ranks,
    grad_fixed,
    label="gradient LoRA, fixed biases",
    color=plotting.COLORS["lora_A"],
    marker="^",
)
plotting.mark_threshold(ax, thr, label=r"$\lceil D/L\rceil$")
ax.set(
    yscale="log",
    xlabel="LoRA rank $R$",
    ylabel=r"test $\mathbb{E}\|f(x)-\bar f(x)\|^2$",
    title="One-layer ReLU target, D=16, L=2",
    ylim=(1e-4, None),
)
ax.annotate(
    "construction exact from R = 8\n(error < 1e-20, off the axis)",
    xy=(thr, 1e-4),
    xytext=(thr + 0.5, 3e-3),
    fontsize=8,
    arrowprops=dict(arrowstyle="->", color=plotting.COLORS["construction"]),
)
ax.legend(fontsize=8)

# %% tags=["nbval-check-output"]
lb.claim(
    "at and above the threshold, within this budget, no selected gradient run meets the "
    "exact-match "
    "criterion (smallest test error / frozen error)",
    rel_plateau,
    ">",
    ex.EXACT_REL_MSE,
    kind="sanity",
)
lb.claim(
    "the construction is exact at the same ranks (largest test error there)",
    float(constr[:, above].max()),
    "<=",
    1e-12,
    kind="sanity",
)
lb.claim(
    "below the threshold trainable biases lower gradient LoRA's error (smallest ratio of "
    "medians, fixed / "
    "trainable)",
    float(bias_gain.min()),
    ">",
    1.0,
    kind="sanity",
)
lb.claim(
    "at the smallest rank gradient LoRA beats the construction (ratio of medians, gradient / "
    "construction)",
    float(np.median(grad_bias[:, 0]) / np.median(constr[:, 0])),
    "<",
    1.0,
    kind="sanity",
)

# %% [markdown]
# Below the threshold the construction is only an upper bound: it spends the ReLUs of the first layers on being
# linear, and Adam, which can use them, does better at the smallest ranks (not at all ranks). At and above the
# threshold the construction is exact, while the selected Adam runs stop short of the exact-match criterion
# within this budget (400 steps at `quick`, 1,200 at `default`, the paper's 5,000 at `paper`) — the flattening of
# the paper's figure. Is that a property of LoRA or of the budget?
#
# ## Error against the training budget
#
# At the threshold and above ($R \in \{8, 12\}$), with trainable and with fixed biases, on the same instances as the
# grid, we train (i) with the paper's protocol, a constant learning rate $10^{-3}$ in float32, recording the test
# error along the run up to the paper's 5,000 steps, and (ii) in float64 with a cosine-decaying learning rate from
# $10^{-2}$, for several budgets $T$ (each a separate run, since the schedule depends on $T$). We report the
# fraction of runs that meet the exact-match criterion (test MSE $\le 10^{-6}$ of the frozen model's) and, for the
# others, the share of the remaining error carried by output ReLUs that are off on every test input
# ({py:func}`lorabook.expressivity.dead_output_share`): such a unit gets no gradient, so no budget revives it.

# %%
bud_ranks = [8, 12]
bud_seeds = scale.pick(quick=2, default=3, paper=5)
bud_gen = torch.Generator().manual_seed(2)
bud = [ex.random_fnn_instance(D, L, 1, bud_gen) for _ in range(bud_seeds)]
bfw, bfb, btw, btb = (torch.stack([t[i] for t in bud]) for i in range(4))
x_bud = ex.uniform_inputs((bud_seeds, scale.n_test, D), bud_gen, dtype=torch.float64)
bud_zero = ex.adapter_mse(bfw[:, None], bfb[:, None], btw, btb, x_bud)[:, 0].numpy()
bud_cfg = lambda lr: (
    ex.grid_configs(bud_ranks, [lr], bias="all")  # noqa: E731
    + ex.grid_configs(bud_ranks, [lr], bias="none")
)
paper_steps = scale.pick(quick=500, default=5000, paper=5000)
const_at, const_rec, _, _ = ex.fnn_training_curve(
    bfw,
    bfb,
    btw,
    btb,
    bud_cfg(1e-3),
    steps=paper_steps,
    batch=256,
    generator=bud_gen,
    x_test=x_bud,
    n_records=6,
    schedule="constant",
    dtype=torch.float32,
)
const_rel = const_rec.double().numpy() / bud_zero[None, :, None]  # (records, S, C)
budgets = scale.pick(quick=[150, 500], default=[1000, 4000], paper=[5000, 25000])
cos_rel, cos_dead = [], []
for T in budgets:
    _, rec, Wt, bt = ex.fnn_training_curve(
        bfw,
        bfb,
        btw,
        btb,
        bud_cfg(1e-2),
        steps=T,
        batch=256,
        generator=bud_gen,
        x_test=x_bud,
        n_records=1,
    )
    cos_rel.append(rec[-1].numpy() / bud_zero[:, None])
    cos_dead.append(ex.dead_output_share(Wt, bt, btw, btb, x_bud).numpy())
cos_rel, cos_dead = np.array(cos_rel), np.array(cos_dead)  # (budgets, S, C)
exact_by_budget = (cos_rel <= ex.EXACT_REL_MSE).mean((1, 2))
nb = len(bud_ranks)  # configs: trainable biases first, then fixed biases
median_by_bias = {"trainable": np.median(cos_rel[:, :, :nb], (1, 2)),
                  "fixed": np.median(cos_rel[:, :, nb:], (1, 2))}
print("median error / frozen per budget:", {k: v.round(5).tolist() for k, v in
                                             median_by_bias.items()})
stalled = cos_rel[-1] > ex.EXACT_REL_MSE
flatten = np.median(const_rel[-1] / const_rel[len(const_at) // 2])
print(
    "constant lr, records at",
    const_at.tolist(),
    "median error / frozen:",
    np.median(const_rel, (1, 2)).round(5),
)
print(
    "cosine budgets",
    budgets,
    "median:",
    np.median(cos_rel, (1, 2)),
    "fraction exact:",
    exact_by_budget,
)
print(
    "share of the remaining error in dead output units (runs not exact):",
    cos_dead[-1][stalled].round(3),
)

# %% [markdown]
# Left: test error / frozen error along the constant-learning-rate runs (median and IQR over seeds and the four
# configurations). Right: the final error of the cosine-schedule runs against the budget, each run a point.

# %%
fig, axes = plotting.subplots(2, width=4.6, sharey=True)
plotting.band(
    axes[0],
    const_at.numpy(),
    const_rel.transpose(1, 2, 0).reshape(-1, len(const_at)),
    label="constant lr 1e-3, float32",
    color=plotting.COLORS["lora"],
)
axes[0].set(
    xscale="log",
    yscale="log",
    xlabel="Adam steps",
    ylabel="test MSE / frozen MSE",
    title="the paper's protocol",
)
names = [f"R={r}, {b} biases" for b in ("trainable", "fixed") for r in bud_ranks]
markers = ["o", "s", "^", "v"]
for c, (name, mk) in enumerate(zip(names, markers)):
    for j, T in enumerate(budgets):
        axes[1].scatter(
            np.full(bud_seeds, T) * (1 + 0.06 * (c - 1.5)),
            cos_rel[j, :, c] + 1e-30,
            marker=mk,
            color=plotting.COLORS["lora"] if c < 2 else plotting.COLORS["lora_A"],
            label=name if j == 0 else None,
            s=18,
        )
for a in axes:
    a.axhline(
        ex.EXACT_REL_MSE, color="k", linewidth=1, linestyle=":", label="exact-match criterion"
    )
axes[1].set(
    xscale="log", yscale="log", xlabel="budget T (steps)", title="cosine schedule, float64"
)
axes[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# Claims about our own training runs, so sanity checks: within the paper's protocol and budget no run meets the
# exact-match criterion; with the decaying schedule the median error falls as the budget grows; the fraction of
# runs below the criterion and the dead-unit shares are recorded with the claims.

# %% tags=["nbval-check-output"]
lb.claim(
    "the paper's protocol (constant lr, float32) does not reach the exact-match criterion "
    "within its budget "
    "(smallest final error / frozen error)",
    float(const_rel[-1].min()),
    ">",
    ex.EXACT_REL_MSE,
    kind="sanity",
    flattening=float(flatten),
)
lb.claim(
    "cosine schedule, float64: the median error falls with the budget (median at the longest "
    "budget / "
    "median at the shortest)",
    float(np.median(cos_rel[-1]) / np.median(cos_rel[0])),
    "<",
    1.0,
    kind="sanity",
    fraction_exact=[float(v) for v in exact_by_budget],
    budgets=budgets,
    dead_share_of_stalled=[float(v) for v in cos_dead[-1][stalled]],
    median_trainable_biases=[float(v) for v in median_by_bias["trainable"]],
    median_fixed_biases=[float(v) for v in median_by_bias["fixed"]],
)

# %% [markdown]
# The flattening of the paper's figure is real at its budget: at `default` the constant-rate runs sit at a median
# of about 5 % of the frozen model's error after 5,000 steps, and the last fifth of the run halves it at most.
# With a decaying learning rate in float64 the median error keeps falling with the budget, but at `default` no
# run met the exact-match criterion within 4,000 steps (the fractions are recorded with the claim). In most of the
# runs that stay above it, nearly all of the remaining error sits in output ReLUs that are off on every test input
# (the shares printed above): such a unit receives no gradient, for its weights or its bias, so a longer budget
# does not revive it; in one instance the unit is already off in the frozen model, where LoRA starts ($B = 0$).
# The other runs were still improving when the budget ended. Trainable biases help here too: at `default` the
# median remaining error is about 3 % of the frozen error with trainable biases against 5 % with fixed ones. So the gap between gradient LoRA and the exact
# construction is, at these budgets, a property of training (budget and dead output units at the start), not
# evidence against Lemma 2: exact match by gradient training is *not reached within our budget*, and we do not
# claim it cannot be.
