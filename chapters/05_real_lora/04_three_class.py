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
# (ch5-three-class)=
# # Three classes: fresh, rotten, plot
#
# The Rotten Tomatoes corpus ships three categories: fresh and rotten review snippets, and plot summaries.
# Jang, Lee & Ryu's rank threshold grows with the number of outputs, $r(r+1)/2 > KN$, so the three-class
# task asks more of a low-rank adapter than the binary one at the same $N$. This page runs the real-LoRA
# protocol of {doc}`01_peft_asymmetry` on it: `peft` adapters of rank 4 on the last layer's query and
# value projections (lower layers cached), the three training modes, the zero-shot cosine head with the
# three phrases of `lorabook.data.CLASS_PHRASES` ("a great movie", "a terrible movie", "the plot
# of a movie"), three-class cross-entropy, learning rate chosen on a balanced dev split, several seeds;
# balanced accuracy and cross-entropy on a disjoint test split (with the corpus' class mix) against the
# zero-shot head. Code: {py:func}`lorabook.real.top_run` (any two or three classes).

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import ntk, plotting, real
from lorabook.train import cached_sweep

torch.set_num_threads(1)  # measured faster on a shared 2-core CPU; remove on an idle machine
scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
CLASSES = ["fresh", "rotten", "plot"]
K = len(CLASSES)
MODES = ("both", "B", "A")
n_per_class = scale.pick(quick=16, default=128, paper=512)
seeds = list(range(scale.pick(quick=2, default=3, paper=5)))
common = dict(
    classes=CLASSES, n_train=n_per_class, n_pool=n_per_class,
    n_dev=scale.pick(quick=16, default=48, paper=200),
    n_test=scale.pick(quick=60, default=300, paper=2000),
    split_seed=0, rank=4, targets=["query", "value"],
    steps=scale.pick(quick=8, default=60, paper=400),
    batch_size=scale.pick(quick=8, default=8, paper=16),
    temperature=0.05, max_length=64,
    layers=scale.pick(quick=[5], default=[5], paper=[0, 1, 2, 3, 4, 5]),
    n_train_eval=scale.pick(quick=24, default=96, paper=1024), scale=scale.name,
)
grid = [3e-3, 1e-2]
N = K * n_per_class
sel = cached_sweep("ch5_k3_lr", [dict(common, mode="both", lr=v, seed=0) for v in grid],
                   real.top_run)
lr = max(grid, key=lambda v: (sel[grid.index(v)]["dev"]["bacc"], -v))  # chosen on dev
print("dev balanced accuracy per learning rate (both factors, seed 0):",
      [round(r["dev"]["bacc"], 3) for r in sel], "-> lr =", lr)
todo = [dict(common, mode=m, lr=lr, seed=s) for m in MODES for s in seeds]
rest = iter(cached_sweep("ch5_k3", [c for c in todo if (c["mode"], c["seed"]) != ("both", 0)],
                         real.top_run))
runs = {(c["mode"], c["seed"]): sel[grid.index(lr)] if (c["mode"], c["seed"]) == ("both", 0)
        else next(rest) for c in todo}
zero = real.top_run(dict(common, mode="both", lr=1e-3, seed=0, steps=0))


def stat(m, split, key):
    v = np.array([runs[(m, s)][split][key] for s in seeds])
    return v.mean(), v.std(ddof=1)


print(f"K = {K}, N = {N} ({n_per_class} per class), rank 4, {len(seeds)} seeds; "
      f"zero-shot test bal. acc. {zero['test']['bacc']:.3f}, loss {zero['test']['loss']:.3f}")
for m in MODES:
    a, sa = stat(m, "test", "bacc")
    lo, sl = stat(m, "test", "loss")
    print(f"{m:>4}: test bal. acc. {a:.3f} ± {sa:.3f} ({a - zero['test']['bacc']:+.3f}), "
          f"test loss {lo:.3f} ± {sl:.3f}, dev bal. acc. {stat(m, 'dev', 'bacc')[0]:.3f}")
print(f"rank threshold of Theorem 4.1: r(r+1)/2 > KN = {K * N} from r = "
      f"{ntk.rank_threshold(K, N)} (binary task at the same N: {ntk.rank_threshold(1, N)})")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(2, width=3.6, height=3.2)
colors = {"A": plotting.COLORS["lora_A"], "B": plotting.COLORS["lora_B"],
          "both": plotting.COLORS["lora"]}
for j, (key, title) in enumerate((("bacc", "test balanced accuracy"), ("loss", "test loss"))):
    for i, m in enumerate(MODES):
        mu, sd = stat(m, "test", key)
        ax[j].errorbar([i], [mu], yerr=[sd], fmt="o", color=colors[m])
    ax[j].axhline(zero["test"][key], color="k", linestyle="--", label="zero-shot head")
    ax[j].set_xticks(range(len(MODES)), ["both", "B only", "A only"])
    ax[j].set(title=f"{title}, K = 3")
ax[0].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# What we measured at `default` (128 snippets per class, 60 steps of 8, rank 4 on the last layer, three
# seeds, 300 test snippets with the corpus' class mix; learning rate $3\cdot10^{-3}$ chosen on dev):
#
# * **The zero-shot head is weak on three classes**: test balanced accuracy 0.428 (chance is 1/3) and
#   cross-entropy 1.52. The phrase "the plot of a movie" is a poor prototype of a plot summary; the binary
#   head, by contrast, is a strong start (about 0.70–0.78, {doc}`01_peft_asymmetry`).
# * **Fine-tuning beats it by far**: both factors reach 0.770 ± 0.008 (+0.34) and a test loss of
#   0.603 ± 0.018; $A$ only (frozen random $B$) reaches 0.713 ± 0.013, $B$ only (frozen random $A$)
#   0.553 ± 0.058.
# * **The modes separate here**, and not in the order of Zhu et al.'s finding (training $B$ with a
#   frozen random $A$ nearly as good as training both): with this head, this budget and one layer,
#   $B$ only is clearly the weakest. Zhu et al.'s comparison is over many layers and longer training;
#   we did not reach that regime within our budget, so this is a measurement on this task, not a
#   refutation.
# * Jang, Lee & Ryu's threshold for a landscape without spurious minima is far above rank 4 here
#   ($r(r+1)/2 > KN$ needs $r \ge 48$ at $K = 3$, $N = 384$, against 28 for the binary task at the same
#   $N$), and in the NTK regime only; a rank-4 adapter nonetheless fits well.
#
# At `quick` (16 snippets per class, 8 steps, two seeds) the numbers are a pipeline check.

# %% tags=["nbval-check-output"]
best = max(MODES, key=lambda m: stat(m, "dev", "bacc")[0])  # chosen on the dev split
acc_m, acc_sd = stat(best, "test", "bacc")
gain = acc_m - zero["test"]["bacc"]
se = acc_sd / np.sqrt(len(seeds))
lb.claim("three-class fine-tuning (best mode on dev, mean over seeds) beats the zero-shot "
         "head's test balanced accuracy by more than two standard errors",
         gain - 2 * se, ">", 0.0,
         kind="sanity", best=best, gain=gain, sd=acc_sd, zero_shot=zero["test"]["bacc"])
lb.claim("three-class fine-tuning (best mode on dev) lowers the test cross-entropy below the "
         "zero-shot head's, mean over seeds",
         zero["test"]["loss"] - stat(best, "test", "loss")[0], ">", 0.0,
         kind="sanity", best=best)
