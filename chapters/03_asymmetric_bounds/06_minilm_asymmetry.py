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
# (ch3-minilm)=
# # Asymmetry on a real pretrained model
#
# The paper fine-tunes CLIP with LoRA on few-shot image classification and finds a gap that grows with the
# rank, more slowly than $\sqrt r$. No CLIP or ViT weights are installable offline, so we use the sentence
# encoder all-MiniLM-L6-v2 {cite}`wang2020minilm,reimers2019sentencebert` on Rotten Tomatoes snippets
# {cite}`pang2005seeing` with the zero-shot head of the book (cosine to "a great movie" minus cosine to
# "a terrible movie").
#
# ```{prf:remark} Kratsios et al., Section 3.3 — implications for LoRA end-users
# :label: rem-kratsios-asymmetry
# :nonumber:
# :class: paper
# With a frozen random factor the parameter-to-LoRA map is linear in the trained factor; training both
# factors makes it quadratic, with a larger Lipschitz constant, which "seems to yield" larger covering numbers
# and gaps. This "reinforces the practical guideline that, given a parameter budget, freezing $A$ and doubling
# the rank while fine-tuning only $B$ is preferable". Zhu et al. {cite}`zhu2024asymmetry` report that training
# $B$ with a frozen random $A$ is nearly as good as training both, while training $A$ alone is worse.
# ```
#
# This is a heuristic, not a theorem, so we measure it the way the asymmetry papers compare adapters. We adapt
# only the last feed-forward output layer of MiniLM ($1536 \to 384$); the frozen lower layers run once and are
# cached. Three modes: **A** (train $A$, $B \sim \mathcal N(0, 1/r)$ frozen — the paper's setting), **B**
# (train $B$, $A \sim \mathcal N(0, 1/1536)$ frozen — Zhu et al.), **both** (LoRA's usual initialisation).
# The protocol:
#
# * the box of Setting 1 on every trained factor, on the scale of the update: $|A_{ij}| \le m\sqrt r$ and
#   $|B_{ij}| \le m\sqrt{1536}$ (entry bound × standard deviation of the frozen partner $= m$), $m = 0.05$;
# * a learning rate per mode, chosen on a **dev split** from a grid (rank 4, first seed), then fixed;
# * comparisons at **equal rank** $r \in \{1, 2, 4, 8\}$ and at **equal trainable-parameter budget**:
#   the layer is not square, so "freeze one factor and double the rank" becomes $r(1536 + 384) = 1536\,r_A
#   = 384\,r_B$, i.e. both at $r = 4$, A at $r_A = 5$ and B at $r_B = 20$ (7,680 parameters each);
# * five seeds (frozen factors and initialisation) on one fixed training set; test error on fresh snippets
#   against the **zero-shot** head, and the gap (test − training 0–1 error).
#
# Code: {py:func}`lorabook.bounds.minilm_pool`, {py:func}`lorabook.bounds.minilm_asymmetry_run`,
# {py:func}`lorabook.bounds.minilm_head_logits`, {py:func}`lorabook.train.cached_sweep`.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import bounds as bd, plotting
from lorabook.train import cached_sweep

torch.set_num_threads(
    1
)  # measured faster on a shared 2-core CPU; remove on an idle multi-core machine
scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
pool = dict(
    n_per_class=scale.pick(quick=24, default=256, paper=1024),
    n_dev=scale.pick(quick=60, default=300, paper=1000),
    n_test=scale.pick(quick=80, default=700, paper=3000),
    split_seed=0,
)
common = dict(
    pool=pool,
    steps=scale.pick(quick=15, default=40, paper=200),
    m=0.05,
    scale=scale.name,
    version=2,
)
grid = {"A": [3e-4, 1e-3, 3e-3], "B": [1e-2, 3e-2, 1e-1], "both": [3e-4, 1e-3, 3e-3]}
grid = {m: v[: scale.pick(quick=2, default=3, paper=3)] for m, v in grid.items()}
r_dev = 4
sel = cached_sweep(
    "ch3_minilm_lr",
    [dict(common, seed=0, configs=[[m, r_dev, lr] for m in bd.MODES for lr in grid[m]])],
    bd.minilm_asymmetry_run,
)[0]
dev_err = {
    m: [e for c, e in zip(sel["configs"], sel["dev_err"]) if c[0] == m] for m in bd.MODES
}
lr = {m: grid[m][int(np.argmin(dev_err[m]))] for m in bd.MODES}  # ties: the smaller rate
print("dev error per learning rate:", {m: np.round(v, 3).tolist() for m, v in dev_err.items()})
print("chosen learning rates:", lr)

ranks = scale.pick(quick=[1, 4], default=[1, 2, 4, 8], paper=[1, 2, 4, 8, 16])
budget = {"both": 4, "A": 5, "B": 20}  # 7,680 trainable parameters each
configs = [[m, r, lr[m]] for m in bd.MODES for r in ranks]
configs += [[m, r, lr[m]] for m, r in budget.items() if r not in ranks]
seeds = list(range(scale.pick(quick=2, default=5, paper=10)))
runs = cached_sweep(
    "ch3_minilm",
    [dict(common, seed=s, configs=configs) for s in seeds],
    bd.minilm_asymmetry_run,
)
keys = [tuple(c[:2]) for c in runs[0]["configs"]]
test = np.stack([r["test_err"] for r in runs])  # (seeds, configs)
gap = test - np.stack([r["train_err"] for r in runs])
zs = runs[0]["zero_shot"]["test"]
mean, sd = test.mean(0), test.std(0, ddof=1)
se = sd / np.sqrt(len(seeds))
col = {k: i for i, k in enumerate(keys)}
print(
    f"zero-shot test error {zs:.3f}; {len(seeds)} seeds; box hit by "
    f"{np.max([r['at_box'] for r in runs]):.1%} of trained entries at most"
)
print("mode rank params | test error (mean ± sd) | minus zero-shot | gap (mean ± sd)")
for k in keys:
    i = col[k]
    print(
        f"{k[0]:>4} {k[1]:4d} {int(runs[0]['params'][i]):6d} | {mean[i]:.3f} ± {sd[i]:.3f} | "
        f"{mean[i] - zs:+.3f} | {gap[:, i].mean():+.3f} ± {gap[:, i].std(ddof=1):.3f}"
    )

# %% tags=["hide-input"]
fig, ax = plotting.subplots(3, width=4.0, height=3.5)
colors = {
    "A": plotting.COLORS["lora_A"],
    "B": plotting.COLORS["lora_B"],
    "both": plotting.COLORS["lora"],
}
names = {"A": "train A (B frozen)", "B": "train B (A frozen)", "both": "train both"}
for m in bd.MODES:
    idx = [col[(m, r)] for r in ranks]
    ax[0].errorbar(ranks, mean[idx], yerr=sd[idx], fmt="o-", color=colors[m], label=names[m])
    ax[1].errorbar(
        ranks,
        gap[:, idx].mean(0),
        yerr=gap[:, idx].std(0, ddof=1),
        fmt="o-",
        color=colors[m],
        label=names[m],
    )
for j, m in enumerate(bd.MODES):
    i = col[(m, budget[m])]
    ax[2].bar(
        j - 0.2, mean[i], 0.4, yerr=sd[i], color=colors[m], label=f"{m}, r = {budget[m]}"
    )
    ax[2].bar(
        j + 0.2, gap[:, i].mean(), 0.4, yerr=gap[:, i].std(ddof=1), color=colors[m], alpha=0.4
    )
ax[0].axhline(zs, color=plotting.COLORS["theory"], linestyle="--", label="zero-shot")
ax[2].axhline(zs, color=plotting.COLORS["theory"], linestyle="--")
ax[0].set(
    xscale="log", xlabel="LoRA rank r", ylabel="test 0–1 error", title="equal rank: test error"
)
ax[1].set(
    xscale="log", xlabel="LoRA rank r", ylabel="gap (test − train)", title="equal rank: gap"
)
ax[2].set(
    xticks=range(3),
    xticklabels=list(bd.MODES),
    ylabel="test error (dark) / gap (light)",
    title="equal budget (7,680 parameters)",
)
for a in ax:
    a.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## Why training B alone does not learn here
#
# With $A$ frozen, the update is $B(Ah)$: $B$ only sees $r$ random projections of the layer's 1536
# activations. To first order in $B$, the best it can do is a linear classifier on the zero-shot logit plus
# those $r$ projections of the mean-pooled activations. We fit that classifier (logistic regression,
# regularisation chosen on the dev split) for random projections of several sizes, and with all 1536
# coordinates — what a *learned* projection (training $A$) can reach.

# %%
probe_ranks = scale.pick(quick=[4, 20], default=[4, 20, 64, 256], paper=[4, 20, 64, 256])
probe = bd.random_feature_probe(bd.minilm_pool(**pool), probe_ranks + [None])
print("test error of the first-order probe:",
      {("all 1536" if k is None else f"r = {k}"): round(v, 3) for k, v in probe.items()},
      f"(zero-shot {zs:.3f})")

# %% tags=["hide-input"]
rng = np.random.default_rng(0)


def gap_trend(m):
    """Slope of the mean gap in log2(r) over all ranks; bootstrap interval over seeds."""
    idx, x, n = [col[(m, r)] for r in ranks], np.log2(ranks), len(seeds)
    fit = lambda g: np.polyfit(x, g[:, idx].mean(0), 1)[0]
    boots = [fit(gap[rng.integers(0, n, n)]) for _ in range(1000)]
    return fit(gap), *np.quantile(boots, [0.025, 0.975])


trend = {m: gap_trend(m) for m in bd.MODES}
for m, (s_, lo_, hi_) in trend.items():
    print(f"gap slope per doubling of r, {m:>4}: {s_:+.3f} (95% CI {lo_:+.3f} .. {hi_:+.3f})")
below = {k: (mean[col[k]] + 2 * se[col[k]]) - zs for k in keys}   # < 0: below zero-shot

# %% [markdown]
# What to see (`default` scale; the spread is over five draws of the frozen factor and the initialisation
# on one fixed training set of 512 snippets; errors are balanced, i.e. the mean of the two classes' error
# rates, because the training set is balanced and the corpus is not). The dev split chose the smallest
# rate of every grid ($3\cdot10^{-4}$ for A and both, $10^{-2}$ for B); smaller rates were not tried within
# our budget, so a better-tuned B cannot be ruled out by this run alone — the probe above is the stronger
# evidence.
#
# * **Training $A$ with $B$ frozen (the paper's setting) and training both learn**: with the zero-shot
#   head at a balanced test error of 0.297, training $A$ reaches 0.287, 0.275, 0.267, 0.264 at
#   $r = 1, 2, 4, 8$ and training both 0.282, 0.279, 0.268, 0.266 (standard deviations over seeds
#   0.001–0.012); only $A$ at $r = 1$ is not clearly below zero-shot.
# * **Training $B$ with $A$ frozen does not learn** at any rank up to 20: its test error stays at or above
#   the zero-shot level (0.298 at $r = 1$ up to 0.315 at $r = 20$) while its training error falls. The probe above says why, to first order: $r$
#   random projections of the activations carry little of the sentiment signal that the zero-shot head does
#   not already use — a classifier on them stays near the zero-shot error up to $r = 20$ and improves on it
#   only from $r \approx 64$–$256$ — whereas all 1536 coordinates (what a learned $A$ can select from) do. Zhu et al.'s asymmetry (train $B$, freeze
#   a random $A$) relies on $B$ producing many output directions; here the output is read along one fixed
#   direction of the embedding, and the information sits in the *input* features, which only $A$ can select.
# * **At equal budget** (7,680 trainable parameters) training $A$ at $r = 5$ is best (0.262), training
#   both at $r = 4$ close (0.268) and training $B$ at $r = 20$ worst (0.315): the guideline "freeze $A$ and spend the budget on a larger rank for $B$" does not hold on
#   this layer and task. One model and one layer do not refute a heuristic; they show that which factor to
#   freeze depends on where the task's information enters.
# * **The gap grows with the rank in every mode** (slopes per doubling of $r$ printed above, with intervals
#   over seeds), over all ranks — not only between the end points — as the paper's bound and its CLIP
#   experiment suggest. At rank 1–2 the gaps are negative: training hardly moves the model, and the balanced
#   training snippets are harder for the zero-shot head than the test snippets.
#
# The checks below are measurements of our experiment (kind sanity; the paper has no theorem to test here).
# Their tolerance is two standard errors over the five seeds, the sampling uncertainty of a mean over
# seeds (training B may sit up to 0.01 below zero-shot and still count as not learning); the probe's
# margin of 0.02 is about one standard error of a balanced error on 700 test snippets.
# At `quick` (48 training snippets, 15 steps, two seeds — for CI) no adapter learns and everything
# overfits; there the limits are loosened so that the checks only confirm that the pipeline runs, and
# the ledger shows them with the `quick` scale.

# %% tags=["nbval-check-output"]
learners = [(m, r) for m in ("A", "both") for r in ranks if r >= 2]
lb.claim(
    "training A (B frozen) and training both beat the zero-shot head at every rank >= 2 "
    "(mean test error + 2 s.e. below zero-shot)",
    max(below[k] for k in learners),
    "<",
    scale.pick(quick=0.2, default=0.0, paper=0.0),
    kind="sanity",
    worst=max(learners, key=lambda k: below[k]),
)
lb.claim(
    "training B (A frozen) does not beat the zero-shot head at any rank up to 20 "
    "(mean test error - 2 s.e. not clearly below zero-shot)",
    min(mean[col[k]] - 2 * se[col[k]] - zs for k in keys if k[0] == "B"),
    ">",
    scale.pick(quick=-0.1, default=-0.01, paper=-0.01),
    kind="sanity",
)
small = [k for k in probe if k is not None and k <= budget["B"]]
lb.claim(
    "with as many random projections as B's largest rank, a first-order classifier stays near "
    "the zero-shot error",
    min(probe[k] for k in small) - zs,
    ">",
    scale.pick(quick=-0.05, default=-0.02, paper=-0.02),
    kind="sanity",
    probe=str(probe),
)
lb.claim(
    "all 1536 coordinates let the same classifier beat the zero-shot head",
    zs - probe[None],
    ">",
    scale.pick(quick=-0.15, default=0.02, paper=0.02),
    kind="sanity",
)
lb.claim(
    "at equal budget, training B at rank 20 has the highest mean test error of the three "
    "modes",
    mean[col[("B", budget["B"])]] - max(mean[col[(m, budget[m])]] for m in ("A", "both")),
    ">",
    scale.pick(quick=-0.05, default=0.0, paper=0.0),
    kind="sanity",
)
lb.claim(
    "the gap grows with the rank in every mode (lower end of the slope's bootstrap interval "
    "> 0)",
    min(t[1] for t in trend.values()),
    ">",
    scale.pick(quick=-0.05, default=0.0, paper=0.0),
    kind="sanity",
)
