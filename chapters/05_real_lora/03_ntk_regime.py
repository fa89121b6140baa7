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

import lorabook as lb
from lorabook import data as dt, plotting, real
from lorabook.train import cached_sweep

torch.set_num_threads(1)  # measured faster on a shared 2-core CPU; remove on an idle machine
scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %% [markdown]
# First, our linearisation against `torch.func.jvp` on MiniLM's last layer, at a random non-zero update
# $\delta = BA$ of each projection (rank 16, entries of size about $10^{-2}$), on 32 snippets. Both are
# float32 computations of the same derivative; logits are of size up to $1/0.05 \cdot 2 = 40$, so a
# tolerance of $10^{-4}$ on the derivative is float32 rounding, and a missing token, a missing
# projection or a wrong transpose would move it by orders of magnitude more.

# %% tags=["nbval-check-output"]
classes = ("fresh", "rotten")
directions = dt.class_directions(classes)
texts = dt.rotten_tomatoes_splits(classes, n_train_per_class=16, n_dev_per_class=1, n_test=1,
                                  seed=0)["train_texts"]
h, m = dt.hidden_before_layer(texts, 5, max_length=32)
layer5 = dt.load_minilm()[1].encoder.layer[5]
fac = real.layer_jacobian_factors(layer5, h, m, directions)
g = torch.Generator().manual_seed(0)
factors = {n: (torch.randn(16, 384, generator=g) / 384 ** 0.5, torch.randn(384, 16, generator=g) / 40)
           for n in ("query", "value")}
ours = real.linearised_logit(fac, factors) - fac["f0"]
ref = real.jvp_logit(layer5, h, m, directions, {n: B @ A for n, (A, B) in factors.items()})
lb.claim(
    "the token-sum linearisation equals torch.func.jvp of the layer (max |difference| of the "
    "directional derivative)",
    float((ours - ref).abs().max()), "<=", 1e-4, kind="sanity", scale_of_derivative=float(ref.abs().max()),
)

# %%
Ns = scale.pick(quick=[8], default=[16, 64], paper=[16, 64, 256, 1024])
lrs = scale.pick(quick=[1e-3, 3e-2], default=[1e-3, 3e-3, 1e-2], paper=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
seeds = list(range(scale.pick(quick=2, default=2, paper=5)))
steps = scale.pick(quick=4, default=20, paper=200)
common = dict(
    classes=list(classes),
    n_dev=scale.pick(quick=8, default=32, paper=200),
    n_test=scale.pick(quick=64, default=200, paper=2000),
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


# learning rate of "the" run per N: the real run's dev balanced accuracy (seed 0; ties: smaller)
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
print("(* chosen on dev)  test loss, real vs linearised, at the chosen rate:",
      {N: [round(ms(N, chosen[N], lambda r: final(r, w, k="loss"))[0], 3) for w in ("real", "lin")]
       for N in Ns})
print(f"mean wall time per run (both models): {np.mean([r['seconds'] for r in out]):.1f} s")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(3, width=3.4, height=3.0)
for N, c in zip(Ns, (plotting.COLORS["lora"], plotting.COLORS["lora_A"], plotting.COLORS["full"],
                     plotting.COLORS["other"])):
    for j, fn in enumerate((lambda r: r["checkpoints"][-1]["agree"]["rel"], lambda r: r["drift"])):
        v = np.array([ms(N, lr, fn) for lr in lrs])
        ax[j].errorbar(lrs, v[:, 0], yerr=v[:, 1], fmt="o-", color=c, label=f"N = {N}/class")
    for lr, style in zip(lrs, ("-", "--", ":", "-.", (0, (1, 3)))):
        v = np.array([[r["checkpoints"][i]["agree"]["rel"] for i in range(len(common["checkpoints"]))]
                      for r in (runs[(N, lr, s)] for s in seeds)]).mean(0)
        ax[2].plot(common["checkpoints"], v, ls=style, color=c, label=f"N={N}, lr={lr:g}")
ax[0].set(xscale="log", yscale="log", xlabel="learning rate",
          title="‖f_real − f_lin‖ / ‖f_real − f_0‖ (test)")
ax[1].set(xscale="log", yscale="log", xlabel="learning rate", title="kernel drift ‖K_T − K_0‖/‖K_0‖")
ax[2].set(yscale="log", xlabel="step", title="relative miss during training")
ax[0].legend(fontsize=7)
ax[2].legend(fontsize=5)
fig.tight_layout()

# %% [markdown]
# **Reading the sweep.** "rel. miss" is $\lVert f_\text{real} - f_\text{lin}\rVert / \lVert
# f_\text{real} - f_0 \rVert$ on the test snippets: the part of the change of the logits that the
# linearisation does not account for (0 is perfect, 1 means it explains nothing). The table and the
# figure show the regime by numbers: at the smallest rate the update stays a few percent of
# $\lVert W_0\rVert$, the kernel barely moves and the linearisation tracks the real run; the miss and
# the drift grow with the learning rate and with the number of steps, and at the largest rate the kernel
# has changed by a quantity of the order of itself. The claims below make that boundary checkable.
#
# * **Inside the regime** (the paper's comparison): at the smallest learning rate and $N = 16$ per
#   class, the linearisation must account for the change of the logits up to 20% (relative miss
#   $\le 0.2$, for every seed). Its controls run the same check on a tiny problem at a learning rate far
#   outside the regime (it fails) and at a small one (it passes).
# * **The boundary**: at the largest rate the miss is at least five times the miss at the smallest rate,
#   and the kernel drift exceeds 0.3, for every $N$ (sanity: a measured property of our runs).

# %% tags=["nbval-check-output"]
N0, lo, hi = Ns[0], lrs[0], lrs[-1]
miss = [runs[(N0, lo, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds]
if scale.name == "quick":
    lb.claim(
        "at quick scale, the linearisation tracks the real run at the smallest rate (relative miss, "
        "worst seed; pipeline check)",
        max(miss), "<=", 0.5, kind="sanity",
    )
else:
    lb.claim(
        "at the smallest learning rate and the few-shot N, the linearised model accounts for the "
        "real run's change of the test logits up to 20% (relative miss, worst seed)",
        max(miss), "<=", 0.2, kind="theorem",
        label="Jang et al., Table 4 (text stand-in: MiniLM last layer, Rotten Tomatoes)",
        control=("test_controls_ch5b.py::test_linearisation_check_fails_far_outside_the_regime",
                 "test_controls_ch5b.py::test_linearisation_check_passes_at_a_small_rate"),
        bacc_real=float(np.mean([final(runs[(N0, lo, s)], "real") for s in seeds])),
        bacc_lin=float(np.mean([final(runs[(N0, lo, s)], "lin") for s in seeds])),
        drift=float(np.mean([runs[(N0, lo, s)]["drift"] for s in seeds])),
    )
ratio = min(np.mean([runs[(N, hi, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds])
            / np.mean([runs[(N, lo, s)]["checkpoints"][-1]["agree"]["rel"] for s in seeds])
            for N in Ns)
lb.claim(
    "the relative miss of the linearisation grows with the learning rate: at the largest rate it is "
    "at least five times that at the smallest, at every N (means over seeds)",
    ratio, ">=", 5.0, kind="sanity",
)
drift_hi = min(np.mean([runs[(N, hi, s)]["drift"] for s in seeds]) for N in Ns)
lb.claim(
    "at the largest learning rate the real run's kernel drift exceeds 0.3 at every N (mean over seeds)",
    drift_hi, ">", 0.3, kind="sanity",
)
