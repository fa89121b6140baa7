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
# (ch3-rates)=
# # The uniform gap G and the trained run's gap
#
# {prf:ref}`thm-kratsios-upper` bounds $\mathbf G = \sup_{f\in\mathcal F}|\mathcal R(f)-\mathcal R^N(f)|$,
# the worst gap over the *whole* adapter class $\{|A_{ij}| \le M\}$, not the gap of the model that training
# returns. Its headline is the rate:
#
# ```{prf:theorem} Kratsios et al., Theorem 1 — the rate
# :label: thm-kratsios-rate
# :nonumber:
# :class: paper
# With high probability $\mathbf G = \tilde O\big(\sqrt r/\sqrt N\big)$: the sample complexity of rank-$r$
# LoRA with a frozen random factor is $\tilde O(\sqrt r/\sqrt N)$ (abstract and Theorem 1, whose bound
# decays exactly like $N^{-1/2}$ once the $\min\{1,\cdot\}$ no longer saturates).
# ```
#
# $\mathbf G$ cannot be computed, but it can be estimated from below, and every lower estimate that grows
# faster than $N^{-1/2}$ would refute the rate. We use two:
#
# * **the $A = 0$ member**: the pretrained network is in the class, so $\mathbf G \ge |\mathcal R(f_0) -
#   \mathcal R^N(f_0)|$, the deviation of a fixed function's empirical risk, of order $N^{-1/2}$ by the central
#   limit theorem (its risk is estimated on 200,000 fresh samples);
# * **gradient ascent over the box**: projected Adam maximises $\pm(\hat{\mathcal R}_a(f_A) - \mathcal R^N(f_A))$
#   from the trained $A$ and from $A = 0$, with the risk $\hat{\mathcal R}_a$ on a fresh *ascent* sample; the
#   result is scored on an independent *evaluation* sample, so the estimate is not biased upwards by the
#   choice of $A$ (it is a lower bound on $\mathbf G$ up to the evaluation sample's Monte-Carlo error).
#
# Beside them, the **trained run's gap** $g = \hat{\mathcal R}_\text{test}(\hat f) - \mathcal R^N(\hat f)$,
# averaged over draws. All on the task of {ref}`ch3-theorem1` at rank $r = 4$ over $N$, and at $N = 128$
# over $r$. The curves are not power laws, so we report **local slopes** (between consecutive $N$) rather
# than one fitted exponent.
#
# Code: {py:func}`lorabook.bounds.teacher_student_gaps`, {py:func}`lorabook.bounds.uniform_gap_lower`,
# {py:func}`lorabook.bounds.local_slopes`, {py:func}`lorabook.bounds.rate_growth`,
# {py:func}`lorabook.bounds.gap_sweep`.

# %% tags=["nbval-ignore-output"]
import numpy as np
from matplotlib.ticker import NullFormatter
import torch

import lorabook as lb
from lorabook import bounds as bd, plotting

torch.set_num_threads(
    1
)  # tiny batched programs: one thread avoids oversubscribing a shared CPU
scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
base = bd.chapter_setting(scale)
r0, N0 = 4, 128
Ns = scale.pick(
    quick=[16, 64, 256],
    default=[16, 32, 64, 128, 256, 512, 1024],
    paper=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
)
ranks = scale.pick(quick=[1, 4, 12], default=[1, 2, 4, 8, 12], paper=[1, 2, 4, 8, 12, 15])
res = bd.gap_sweep(base, [(r0, N) for N in Ns] + [(r, N0) for r in ranks])
ascent = dict(
    base,
    draws=scale.pick(quick=8, default=16, paper=64),
    ascent_steps=scale.pick(quick=40, default=100, paper=300),
    n_ascent=scale.pick(quick=300, default=1000, paper=4000),
    n_eval=scale.pick(quick=1000, default=4000, paper=20000),
)
res_G = bd.gap_sweep(ascent, [(r0, N) for N in Ns])
gap = np.stack([res[(r0, N)]["gap"] for N in Ns], 1)  # (draws, len(Ns))
gap_zero = np.abs(np.stack([res[(r0, N)]["gap_zero"] for N in Ns], 1))
G_low = np.stack([res_G[(r0, N)]["G_lower"] for N in Ns], 1)  # (fewer draws, len(Ns))
train_risk = np.array([res[(r0, N)]["train"].mean() for N in Ns])
by_r = np.stack([res[(r, N0)]["gap"] for r in ranks], 1)
_, np_gen = lb.seed_everything(1)
slopes = {
    name: bd.local_slopes(Ns, y, generator=np_gen)
    for name, y in (
        ("G lower estimate", G_low),
        ("A = 0 member", gap_zero),
        ("trained run", gap),
        ("trained run, |gap|", np.abs(gap)),
    )
}
for name, (s, lo, hi) in slopes.items():
    print(f"local slopes in N, {name:18s}:", " ".join(f"{v:+.2f}" for v in s))
print("training risk by N:", np.round(train_risk, 3), "(noise floor E min(1,|eps|) ~ 0.40)")
slope_zero, zlo, zhi = bd.loglog_slope(Ns, gap_zero, generator=np_gen)
r_slopes = bd.local_slopes(ranks, by_r, generator=np_gen)
print("A = 0 member, fitted exponent:", f"{slope_zero:+.2f} [{zlo:+.2f}, {zhi:+.2f}]")
print(f"local slopes in r (N = {N0}):", " ".join(f"{v:+.2f}" for v in r_slopes[0]))
growth = bd.rate_growth(Ns, G_low)
print(f"max over N of G_lower(N) sqrt(N) / (G_lower(N_min) sqrt(N_min)) = {growth:.2f}")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(2, width=4.8, height=3.8)
series = (
    ("G lower estimate", G_low, "lora"),
    ("A = 0 member", gap_zero, "construction"),
    ("trained run", gap, "lora_A"),
)
for name, y, col in series:
    plotting.band(ax[0], Ns, y, label=name, color=plotting.COLORS[col])
ref = G_low.mean(0)[0] * (np.array(Ns) / Ns[0]) ** -0.5
ax[0].plot(Ns, ref, "k:", label=r"$\propto N^{-1/2}$")
ax[0].set(
    xscale="log",
    yscale="log",
    xlabel="training samples N",
    ylabel="gap (median, IQR)",
    title=f"G and the trained gap (r = {r0})",
)
plotting.band(ax[1], ranks, by_r, label="trained run", color=plotting.COLORS["lora_A"])
ref = by_r.mean(0)[0] * (np.array(ranks) / ranks[0]) ** 0.5
ax[1].plot(ranks, ref, "k:", label=r"$\propto \sqrt{r}$")
ax[1].set(
    xscale="log",
    yscale="log",
    xlabel="LoRA rank r",
    ylabel="gap (median, IQR)",
    title=f"trained gap vs r (N = {N0})",
)
for x, ticks in zip(ax, (Ns, ranks)):
    x.set_xticks(ticks, labels=[str(t) for t in ticks])
    x.xaxis.set_minor_formatter(NullFormatter())
    x.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# What to see (left; `default` scale). The lower estimate of $\mathbf G$ decays like $N^{-1/2}$ (local
# slopes between $-0.38$ and $-0.70$ from $N = 16$ to $1024$), and so does the gap of the $A = 0$ member
# alone (fitted exponent $-0.51$, interval $[-0.56, -0.46]$): in this very task the rate $N^{-1/2}$ is
# *attained*, by the class and even by one fixed function of it. The trained run's mean gap falls faster,
# with local slopes from $-0.43$ at few-shot $N$ to about $-1$ for $N \ge 128$. The two are different
# quantities. The trained gap's mean is the *optimism* of fitting the noise of $N$ samples, of order $q/N$
# for a parametric model; its fluctuating part — the $N^{-1/2}$ deviation that a fixed function has — has
# mean zero and, at these $N$, stays smaller than the optimism (the mean *absolute* gap, printed above,
# decays at the same rate). $\mathbf G$ is a supremum over the class, and the supremum of such
# fluctuations is of order $N^{-1/2}$. The training risk rises towards the noise floor
# $\mathbb E\min(1,|\varepsilon|) \approx 0.40$ as $N$ grows (from 0.03 at $N = 16$ to 0.39 at
# $N = 1024$); it does not approach 0.
#
# (Right) The trained gap grows with $r$ at $N = 128$, with local slopes that change along the curve
# ($+0.54$, $+1.01$, $+0.68$, $+0.06$ between $r = 1, 2, 4, 8, 12$) rather than one exponent; Theorem 1's $\sqrt r$ is a worst case and says nothing about a
# typical curve.
#
# The theorem check: if $\mathbf G \le C/\sqrt N$, every lower estimate satisfies
# $\hat{\mathbf G}(N)\sqrt N \le C$; we check that $\hat{\mathbf G}(N)\sqrt N$ does not grow by more than a
# factor 2 over the range of $N$ (the factor allows for the $16$–$64$ draws' sampling error, about 10%, and
# for curvature at few-shot $N$). Its negative control feeds the same check a class that violates the
# theorem's hypothesis (an unbounded loss with heavy-tailed targets), whose gap decays like $N^{-1/6}$. The
# sanity check on the $A = 0$ member tests our estimator against the central limit theorem: a fitted
# exponent within $\pm 0.1$ of $-1/2$ (the bootstrap interval printed above is about that wide at
# `default`; $\pm 0.2$ at `quick`).

# %% tags=["nbval-check-output"]
lb.claim(
    "the lower estimate of G times sqrt(N) grows by less than a factor 2 over N: the rate "
    "N^(-1/2)",
    growth,
    "<",
    2.0,
    kind="theorem",
    label="Kratsios et al., Theorem 1 (rate)",
    control="test_controls_ch3.py::test_rate_check_fails_for_unbounded_loss",
    G=list(G_low.mean(0)),
)
lb.claim(
    "the A = 0 member's gap decays like N^(-1/2) (fitted exponent within the CLT tolerance)",
    abs(slope_zero + 0.5),
    "<=",
    scale.pick(quick=0.2, default=0.1, paper=0.1),
    kind="sanity",
    slope=slope_zero,
)
lb.claim(
    "the trained run's mean gap decays faster than N^(-1/2) at the largest N (last local "
    "slope's "
    "upper confidence end)",
    slopes["trained run"][2][-1],
    "<",
    -0.5,
    kind="sanity",
    slopes=list(slopes["trained run"][0]),
)
