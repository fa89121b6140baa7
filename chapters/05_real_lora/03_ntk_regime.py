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
# (ch5-ntk-regime)=
# # Is real LoRA fine-tuning in the NTK regime?
#
# Jang, Lee & Ryu {cite}`jang2024lora` prove their results for the **linearised** network: fine-tuning is
# assumed to stay in the neural-tangent-kernel regime {cite}`jacot2018ntk,malladi2023kernel`, so the
# model is replaced by its first-order Taylor expansion around the pretrained weights. Chapter 2 studies
# that linearised problem. This page asks whether the premise holds for real LoRA: from the same
# initialisation, with the same batches and optimiser, we train `peft` LoRA on MiniLM and its
# linearisation, and measure where the second stops describing the first.
#
# ```{prf:theorem} Jang et al., Table 4 — the comparison tested here
# :label: thm-jang-linearised-vs-actual
# :nonumber:
# :class: paper
# In few-shot fine-tuning (the paper: $N = 32$ to $64$ examples, prompt-based heads, LoRA on the last
# layer's query and value weights), the linearised model
# $f(W_0 + \delta; x) \approx f(W_0; x) + \langle \nabla_W f(W_0; x), \delta \rangle$ with the LoRA update
# $\delta = B A$ reaches test accuracies close to those of the actual (non-linearised) LoRA update.
# ```
#
# **Which linearisation.** There are two first-order expansions of a LoRA model, and they differ:
#
# * *in the LoRA parameters* $(A, B)$: at the usual start $B = 0$ the output's gradient in $A$ is zero
#   ($\partial f/\partial A = B^\top(\cdot) = 0$), so this expansion is $f_0 + J_B\,(B - 0)$: $A$ stays at
#   its random draw and the model is linear in $B$ alone — a random-feature model that has lost LoRA's
#   product structure, and whose kernel in $(A, B)$ at the start is $J_B J_B^\top$ only;
# * *in the weight update* $\delta$ (the paper's): $f_\text{lin}(x; A, B) = f(W_0; x) + \langle
#   \nabla_W f(W_0; x), B A\rangle$, linear in $\delta$ but still bilinear in the factors, trained by the
#   same optimiser on $(A, B)$. This is the model Jang et al.'s theorems are about, and the one we use.
#
# Its gradient $G(x) = \nabla_W f(W_0; x) = \sum_t u_t x_t^\top$ is a sum over tokens of outer products
# of the backward signal $u_t$ at the projection's output and the projection's input $x_t$, so
# $\langle G(x), BA\rangle = \sum_t (B^\top u_t)\cdot(A x_t)$ costs one backward pass at $W_0$ and no
# Jacobian ({py:func}`lorabook.real.layer_jacobian_factors`, {py:func}`lorabook.real.linearised_logit`).
# The first check below compares it with forward-mode AD (`torch.func.jvp` through
# `torch.func.functional_call`, {py:func}`lorabook.real.jvp_logit`). The **empirical kernel** is the
# tangent kernel in the adapted weights, $K_{ij} = \langle G(x_i), G(x_j)\rangle_F$
# ({py:func}`lorabook.real.weight_kernel`): the linearised model's is $K_0$ by construction, so the drift
# $\lVert K_T - K_0\rVert_F / \lVert K_0\rVert_F$ of the real run, re-evaluated at $W_0 + BA$, measures
# how far it left the regime.
#
# **Setting**, as close to the paper's as the book's model allows: prompt-based head (the zero-shot
# cosine head, as a binary logit $(\cos(e, d_\text{rotten}) - \cos(e, d_\text{fresh}))/0.05$), logistic
# loss ($K = 1$), `peft` LoRA at rank 16 on the **last layer's** query and value projections — so
# $r(r+1)/2 = 136 > KN$ at every $N$ of the `default` sweep, Theorem 4.1's condition — with layers 0–4
# frozen and run once (their output is cached). Adam, batches of 32 snippets; both models start from the
# same factors ($A$ Gaussian, $B = 0$) and see the same batches. $N = 32$ snippets (16 per class, the
# paper's few-shot size) and a larger $N$; three learning rates; the rate reported as "the" run is chosen
# on the **dev split** by the real run's balanced accuracy; two seeds (factor draw, batch order).
#
# Code: {py:func}`lorabook.real.ntk_pair_run`, {py:func}`lorabook.real.agreement`,
# {py:func}`lorabook.real.kernel_drift`.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch
import tqdm.auto  # noqa: F401  (imported first here: its notebook warning stays out of checks)

import lorabook as lb
from lorabook import data as dt, plotting, real
from lorabook.train import cached_sweep

torch.set_num_threads(1)  # measured faster on a shared 2-core CPU; remove on an idle machine
scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# First, our linearisation against `torch.func.jvp` on MiniLM's last layer, at a random non-zero update
# $\delta = BA$ of each projection (rank 16, entries of size about $10^{-2}$), on 32 snippets (8 at `quick`). Both are
# float32 computations of the same derivative; logits are of size up to $1/0.05 \cdot 2 = 40$, so a
# tolerance of $10^{-4}$ on the derivative is float32 rounding, and a missing token, a missing
# projection or a wrong transpose would move it by orders of magnitude more.

# %% tags=["nbval-check-output"]
classes = ("fresh", "rotten")
directions = dt.class_directions(classes)
n_check = scale.pick(quick=4, default=16, paper=16)  # snippets per class
texts = dt.rotten_tomatoes_splits(classes, n_train_per_class=n_check, n_dev_per_class=1,
                                  n_test=1, seed=0)["train_texts"]
h, m = dt.hidden_before_layer(texts, 5, max_length=32)
layer5 = dt.load_minilm()[1].encoder.layer[5]
fac = real.layer_jacobian_factors(layer5, h, m, directions)
g = torch.Generator().manual_seed(0)
factors = {n: (torch.randn(16, 384, generator=g) / 384 ** 0.5,
               torch.randn(384, 16, generator=g) / 40) for n in ("query", "value")}
ours = real.linearised_logit(fac, factors) - fac["f0"]
ref = real.jvp_logit(layer5, h, m, directions, {n: B @ A for n, (A, B) in factors.items()})
lb.claim(
    "the token-sum linearisation equals torch.func.jvp of the layer (max |difference| of the "
    "directional derivative)",
    float((ours - ref).abs().max()), "<=", 1e-4, kind="sanity",
    scale_of_derivative=float(ref.abs().max()),
)

# %%
Ns = scale.pick(quick=[8], default=[16, 64], paper=[16, 64, 256, 1024])
lrs = scale.pick(quick=[1e-3, 3e-2], default=[1e-3, 3e-3, 1e-2],
                 paper=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
seeds = list(range(scale.pick(quick=2, default=2, paper=5)))
steps = scale.pick(quick=4, default=20, paper=200)
common = dict(
    classes=list(classes),
    n_dev=scale.pick(quick=8, default=32, paper=200),
    n_test=scale.pick(quick=32, default=200, paper=2000),
    split_seed=0,
    rank=16,
    steps=steps,
    checkpoints=scale.pick(quick=[2, 4], default=[5, 10, 20], paper=[10, 25, 50, 100, 200]),
    batch_size=32,
    temperature=0.05,
    max_length=32,
    n_probe=32,
    scale=scale.name,
)
todo = [dict(common, n_train=N, lr=lr, seed=s) for N in Ns for lr in lrs for s in seeds]
out = cached_sweep("ch5_ntk", todo, real.ntk_pair_run)
runs = {(c["n_train"], c["lr"], c["seed"]): r for c, r in zip(todo, out)}


def final(r, who, split="test", k="bacc"):
    return r["checkpoints"][-1][who][split][k]


def ms(N, lr, fn):
    v = np.array([fn(runs[(N, lr, s)]) for s in seeds])
    return v.mean(), v.std(ddof=1)


# the rate of "the" run per N: the real run's dev balanced accuracy (seed 0; ties: smaller)
chosen = {N: lrs[int(np.argmax([final(runs[(N, lr, 0)], "real", "dev") for lr in lrs]))]
          for N in Ns}
print("learning rate chosen on dev:", chosen)
print(f"{len(seeds)} seeds, {steps} steps; N = snippets per class; mean ± sd over seeds")
print("  N     lr | bal. acc. real | bal. acc. lin | zero-shot | sign agree | rel. miss "
      "| kernel drift | ‖BA‖/‖W0‖")
for N in Ns:
    for lr in lrs:
        cols = [ms(N, lr, lambda r: final(r, "real")), ms(N, lr, lambda r: final(r, "lin")),
                ms(N, lr, lambda r: r["zero"]["test"]["bacc"]),
                ms(N, lr, lambda r: r["checkpoints"][-1]["agree"]["sign"]),
                ms(N, lr, lambda r: r["checkpoints"][-1]["agree"]["rel"]),
                ms(N, lr, lambda r: r["drift"]), ms(N, lr, lambda r: r["update"]["value"])]
        star = "*" if chosen[N] == lr else " "
        print(f"{N:4d} {lr:.0e}{star}| " + " | ".join(f"{a:.3f} ± {s:.3f}" for a, s in cols))
print("(* chosen on dev)  test loss at the chosen rate, real / linearised / zero-shot:",
      {N: [round(float(ms(N, chosen[N], lambda r: final(r, w, k="loss"))[0]), 3)
           for w in ("real", "lin")]
          + [round(runs[(N, chosen[N], 0)]["zero"]["test"]["loss"], 3)] for N in Ns})
print(f"mean wall time per run (both models): {np.mean([r['seconds'] for r in out]):.1f} s")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(3, width=3.4, height=3.0)
palette = [plotting.COLORS[k] for k in ("lora", "lora_A", "full", "other")]
for N, c in zip(Ns, palette):
    for j, fn in enumerate((lambda r: r["checkpoints"][-1]["agree"]["rel"],
                            lambda r: r["drift"])):
        v = np.array([ms(N, lr, fn) for lr in lrs])
        ax[j].errorbar(lrs, v[:, 0], yerr=v[:, 1], fmt="o-", color=c, label=f"N = {N}/class")
    for lr, style in zip(lrs, ("-", "--", ":", "-.", (0, (1, 3)))):
        v = np.array([[c_["agree"]["rel"] for c_ in runs[(N, lr, s)]["checkpoints"]]
                      for s in seeds]).mean(0)
        ax[2].plot(common["checkpoints"], v, ls=style, color=c, label=f"N={N}, lr={lr:g}")
ax[0].set(xscale="log", yscale="log", xlabel="learning rate",
          title="‖f_real − f_lin‖ / ‖f_real − f_0‖ (test)")
ax[1].set(xscale="log", yscale="log", xlabel="learning rate",
          title="kernel drift ‖K_T − K_0‖/‖K_0‖")
ax[2].set(yscale="log", xlabel="step", title="relative miss during training")
ax[0].legend(fontsize=7)
ax[2].legend(fontsize=5)
fig.tight_layout()

# %% [markdown]
# **Reading the sweep.** "rel. miss" is $\lVert f_\text{real} - f_\text{lin}\rVert / \lVert
# f_\text{real} - f_0 \rVert$ on the test snippets: the part of the change of the logits that the
# linearisation does not account for (0 is perfect, 1 means it explains nothing). What we measured at
# `default` (2 seeds, 20 steps of 32 snippets, rank 16; means):
#
# | $N$/class | lr | rel. miss | kernel drift | $\lVert BA\rVert/\lVert W_0\rVert$ (value) | bal. acc. real / lin / zero-shot |
# |---|---|---|---|---|---|
# | 16 | $10^{-3}$ | 0.14 | 0.16 | 0.08 | 0.705 / 0.707 / 0.698 |
# | 16 | $3\cdot10^{-3}$ (dev) | 0.44 | 0.70 | 0.36 | 0.656 / 0.641 / 0.698 |
# | 16 | $10^{-2}$ | 1.34 | 0.93 | 0.71 | 0.616 / 0.632 / 0.698 |
# | 64 | $10^{-3}$ | 0.06 | 0.04 | 0.03 | 0.728 / 0.724 / 0.719 |
# | 64 | $3\cdot10^{-3}$ (dev) | 0.32 | 0.20 | 0.11 | 0.732 / 0.730 / 0.719 |
# | 64 | $10^{-2}$ | 0.61 | 0.53 | 0.22 | 0.701 / 0.696 / 0.719 |
#
# * **Inside the regime** at the smallest rate: the update stays a few percent of $\lVert W_0\rVert$,
#   the kernel moves by 4–16%, the linearisation accounts for 86–94% of the change of the logits, and
#   the two test accuracies agree to within 0.004 — the paper's comparison holds here.
# * **The boundary** is crossed by the learning rate and by the steps per example: the miss grows about
#   tenfold from $10^{-3}$ to $10^{-2}$ at both $N$ and grows with the step (the right panel). In our
#   runs, at equal steps the few-shot run ($N = 16$ per class: every step is the full training set)
#   moved further than the $N = 64$ run (update 0.36 against 0.11 of $\lVert W_0\rVert$ at
#   $3\cdot10^{-3}$), so few-shot is *not* automatically the safer side: what matters is how far the
#   weights travel, $\lVert BA\rVert/\lVert W_0\rVert$.
# * **At the rate chosen on the dev split** ($3\cdot10^{-3}$ at both $N$) the real run is outside the
#   regime at the few-shot size — the kernel changes by 70% of itself and the linearisation misses 44%
#   of the change — yet the two test accuracies still agree to within 0.02: balanced accuracy is a
#   coarse summary that can agree while the functions do not. The NTK premise of the paper's theorems
#   is therefore a property of the run (rate × steps), not of few-shot fine-tuning as such.
# * **Against the zero-shot head**, fine-tuning does not beat it at $N = 16$ per class (0.656 at the
#   dev-chosen rate against 0.698, test loss 1.14 against the head's 0.58): 20 full-batch steps over
#   32 snippets overfit them, and the dev split of 64 snippets is too coarse to prefer the smaller rate.
#   At $N = 64$ it gains 0.013 in balanced accuracy, within one seed deviation (0.04).
#
# At `paper` the sweep is $N \in \{16, 64, 256, 1024\}$ per class, five learning rates from
# $3\cdot10^{-4}$ to $3\cdot10^{-2}$, five seeds, 200 steps and 2,000 test snippets: 100 runs, an
# estimated 10–20 minutes on one GPU (not measured here). Rank 16 then satisfies Theorem 4.1's
# condition $r(r+1)/2 > KN$ only up to $N = 64$ per class.
#
# The claims below make the boundary checkable. The first is the paper's comparison at the smallest
# rate and the few-shot $N$ (relative miss $\le 0.2$ for every seed; we measured 0.16 at the worst
# seed); its controls run the same check on a tiny problem at a rate far outside the regime (it fails)
# and at a small one (it passes). The others are measured properties of our sweep (sanity): the miss at
# the largest rate is at least five times that at the smallest, the kernel drift at the largest rate
# exceeds 0.3 at every $N$, at the dev-chosen rate the miss grows from the first checkpoint to the
# last at every $N$, and at the dev-chosen rate and the few-shot $N$ the kernel drift exceeds 0.3
# while the accuracies agree to within 0.05.

# %% tags=["nbval-check-output"]
N0, lo, hi = Ns[0], lrs[0], lrs[-1]
miss = [runs[(N0, lo, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds]
if scale.name == "quick":
    lb.claim(
        "at quick scale, the linearisation tracks the real run at the smallest rate "
        "(relative miss, worst seed; pipeline check)",
        max(miss), "<=", 0.5, kind="sanity",
    )
else:
    lb.claim(
        "at the smallest learning rate and the few-shot N, the linearised model accounts for "
        "the real run's change of the test logits up to 20% (relative miss, worst seed)",
        max(miss), "<=", 0.2, kind="theorem",
        label="Jang et al., Table 4 (text stand-in: MiniLM last layer, Rotten Tomatoes)",
        control=(
            "test_controls_ch5b.py::test_linearisation_check_fails_far_outside_the_regime",
            "test_controls_ch5b.py::test_linearisation_check_passes_at_a_small_rate"),
        bacc_real=float(np.mean([final(runs[(N0, lo, s)], "real") for s in seeds])),
        bacc_lin=float(np.mean([final(runs[(N0, lo, s)], "lin") for s in seeds])),
        drift=float(np.mean([runs[(N0, lo, s)]["drift"] for s in seeds])),
    )
ratio = min(np.mean([runs[(N, hi, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds])
            / np.mean([runs[(N, lo, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds])
            for N in Ns)
lb.claim(
    "the relative miss of the linearisation grows with the learning rate: at the largest rate "
    "it is at least five times that at the smallest, at every N (means over seeds)",
    ratio, ">=", 5.0, kind="sanity",
)
drift_hi = min(np.mean([runs[(N, hi, s)]["drift"] for s in seeds]) for N in Ns)
lb.claim(
    "at the largest learning rate the real run's kernel drift exceeds 0.3 at every N "
    "(mean over seeds)",
    drift_hi, ">", 0.3, kind="sanity",
)
first_last = min(
    np.mean([runs[(N, chosen[N], s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds])
    / np.mean([runs[(N, chosen[N], s)]["checkpoints"][0]["agree"]["rel"] for s in seeds])
    for N in Ns)
lb.claim(
    "at the dev-chosen rate the relative miss grows with the steps: at the last checkpoint it "
    "exceeds that at the first, at every N (means over seeds)",
    first_last, ">", 1.0, kind="sanity",
)
if scale.name != "quick":
    at = [runs[(N0, chosen[N0], s)] for s in seeds]
    lb.claim(
        "at the dev-chosen rate and the few-shot N the real run leaves the NTK regime: "
        "kernel drift above 0.3 (mean over seeds)",
        float(np.mean([r["drift"] for r in at])), ">", 0.3, kind="sanity", lr=chosen[N0],
    )
    lb.claim(
        "... while the test balanced accuracies of the real and linearised runs still agree "
        "to within 0.05 (mean over seeds)",
        abs(float(np.mean([final(r, "real") - final(r, "lin") for r in at]))), "<=", 0.05,
        kind="sanity", lr=chosen[N0],
    )
