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
# (ch5-pretrained-vs-random)=
# # Pretrained against random: does a closer frozen model need a smaller rank?
#
# Zeng & Lee {cite}`zeng2024expressive` bound the LoRA rank an adapter needs by how far the frozen model
# is from the target: in the linear case the best rank-$R$ adapters on $L$ layers leave the error
# $\sigma_{RL+1}(E)$ of the discrepancy $E = \bar W - \prod_l W_l$, so a frozen model whose discrepancy has
# a smaller rank (or faster-decaying singular values) needs a smaller $R$; the Transformer result gives
# the same picture per attention pair. Chapter 1 checks the statements where they live. The authors'
# real-model configuration (RoBERTa-base on GLUE, pretrained against randomly initialised frozen
# weights) needs weights no installable package ships; this page runs its analogue on what the book
# has: all-MiniLM-L6-v2 on the fresh/rotten task, against the **same architecture with random
# weights**.
#
# ```{prf:theorem} Zeng & Lee, real-model experiment — the claim tested here
# :label: thm-zeng-lee-closeness-real
# :nonumber:
# :class: paper
# The rank an adapter needs to make a frozen model match a target grows with the discrepancy between the
# frozen model and the target (rank $\lceil R_E/L \rceil$ per layer in the linear case; rank-$D/2$ per
# attention pair for an arbitrary same-size Transformer target). A frozen model closer to the target —
# a pretrained one — needs a smaller rank than a far one — a random one.
# ```
#
# **Protocol.**
#
# * Two frozen models: the shipped pretrained MiniLM, and
#   {py:func}`lorabook.real.minilm_random` — `AutoModel.from_config` on the same config with an explicit
#   seed (BERT's initialisation), no download. The random model's seed is the run's seed, so the spread
#   over seeds includes the draw of the random weights.
# * **Head.** The book's zero-shot cosine head (cosine to "a great movie" and "a terrible movie") is
#   meaningful only for the pretrained model: for the random model the two phrase embeddings are
#   random directions (we print its accuracy below for the record). A head that is fair to both is a
#   **linear probe** on the standardised mean-pooled embedding of each model
#   ({py:func}`lorabook.real.fit_probe`, L-BFGS, weight decay chosen on the dev split): rank 0 below.
#   LoRA then starts from that probe and trains it jointly with the adapters, so every rank is read
#   against the probe of the same model, and the pretrained model also against its zero-shot head.
# * `peft` LoRA on the query and value projections of **all six layers**
#   ({py:func}`lorabook.real.peft_wrap`; $A$ Gaussian, $B = 0$, so training starts at the probe),
#   cross-entropy, Adam, batches of 16 snippets (8 at `quick`) with dynamic padding (at most 32
#   tokens).
# * The learning rate of each model is chosen on the **dev split** (balanced accuracy, ties to the
#   smaller rate) at one rank (1 at `default`, 4 at `paper`) and the first seed, then fixed for every
#   rank; never on the test split.
# * Seeds: factor draw, batch order and (random model) weights; balanced accuracy and cross-entropy on
#   a disjoint test split.
#
# Code: {py:func}`lorabook.real.probe_lora_run`, {py:func}`lorabook.real.closeness_margin`,
# {py:func}`lorabook.train.cached_sweep`.

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

# %%
MODELS = ("pretrained", "random")
ranks = scale.pick(quick=[1], default=[1, 16], paper=[1, 2, 4, 8, 16])
seeds = list(range(scale.pick(quick=2, default=2, paper=5)))
grid = scale.pick(quick=[1e-3], default=[1e-3, 3e-3], paper=[3e-4, 1e-3, 3e-3])
R_SEL = scale.pick(quick=1, default=1, paper=4)  # rank of the learning-rate selection
common = dict(
    classes=["fresh", "rotten"],
    n_train=scale.pick(quick=8, default=32, paper=512),
    n_dev=scale.pick(quick=8, default=32, paper=200),
    n_test=scale.pick(quick=32, default=200, paper=2000),
    split_seed=0,
    targets=["query", "value"],
    steps=scale.pick(quick=2, default=10, paper=300),
    batch_size=scale.pick(quick=8, default=16, paper=16),
    max_length=32,
    scale=scale.name,
)


def cfg(model, rank, lr, seed):
    return dict(common, model=model, model_seed=seed, rank=rank, lr=lr, seed=seed)


sel = cached_sweep("ch5_closeness_lr", [cfg(m, R_SEL, lr, 0) for m in MODELS for lr in grid],
                   real.probe_lora_run)
dev_acc = {m: [r["dev"]["bacc"] for r in sel[i * len(grid):(i + 1) * len(grid)]]
           for i, m in enumerate(MODELS)}
lr = {m: grid[int(np.argmax(dev_acc[m]))] for m in MODELS}  # ties: the smaller rate
print("dev balanced accuracy per learning rate:",
      {m: np.round(v, 3).tolist() for m, v in dev_acc.items()})
print("chosen learning rates:", lr)

# %%
todo = [cfg(m, r, lr[m], s) for m in MODELS for r in [0] + ranks for s in seeds]
reuse = {(m, R_SEL, 0): sel[i * len(grid) + grid.index(lr[m])] for i, m in enumerate(MODELS)}
key = lambda c: (c["model"], c["rank"], c["seed"])  # noqa: E731
rest = cached_sweep("ch5_closeness", [c for c in todo if key(c) not in reuse],
                    real.probe_lora_run)
it = iter(rest)
runs = {key(c): reuse.get(key(c)) or next(it) for c in todo}


def stat(m, r, split="test", k="bacc"):
    v = np.array([runs[(m, r, s)][split][k] for s in seeds])
    return v.mean(), v.std(ddof=1)


# the zero-shot cosine head of each frozen model (class phrases embedded by that model)
split = dt.rotten_tomatoes_splits(
    tuple(common["classes"]), n_train_per_class=common["n_train"],
    n_dev_per_class=common["n_dev"], n_test=common["n_test"], seed=common["split_seed"])
y_test = torch.as_tensor(split["test_labels"])
zero = {}
for m in MODELS:  # the random model of the first seed
    base = real._base_model(m, 0)
    d = real.embed_on(base, [dt.CLASS_PHRASES[c] for c in common["classes"]])
    e = real._base_features(m, 0, tuple(common["classes"]), common["n_train"], common["n_dev"],
                            common["n_test"], common["split_seed"],
                            common["max_length"])[1]["test"]
    z = dt.zero_shot_logits(e, d / d.norm(dim=1, keepdim=True)).cpu()
    zero[m] = dict(bacc=dt.balanced_accuracy(z, y_test),
                   loss=float(torch.nn.functional.cross_entropy(z, y_test)))
print("zero-shot head:", {m: {k: round(v, 3) for k, v in zero[m].items()} for m in MODELS})
print(f"{len(seeds)} seeds; {common['steps']} steps; rank 0 = the linear probe alone")
print("model      rank | test bal. acc. (mean ± sd) | test loss (mean ± sd) | trainable")
for m in MODELS:
    for r in [0] + ranks:
        a, sa = stat(m, r)
        lo, sl = stat(m, r, k="loss")
        print(f"{m:>10} {r:4d} | {a:.3f} ± {sa:.3f} | {lo:.3f} ± {sl:.3f} | "
              f"{runs[(m, r, 0)]['params']}")
sec = np.mean([r["seconds"] for r in runs.values()])
print(f"mean wall time per run: {sec:.1f} s")

# %% tags=["hide-input"]
fig, ax = plotting.subplots(2, width=4.0, height=3.3)
colors = {"pretrained": plotting.COLORS["lora"], "random": plotting.COLORS["lora_A"]}
xs = [0] + ranks
for j, (k, title) in enumerate((("bacc", "test balanced accuracy"), ("loss", "test loss"))):
    for m in MODELS:
        ms = np.array([stat(m, r, k=k) for r in xs])
        ax[j].errorbar(np.arange(len(xs)), ms[:, 0], yerr=ms[:, 1], fmt="o-", color=colors[m],
                       label=f"{m} frozen model")
    ax[j].axhline(zero["pretrained"][k], color="k", ls="--",
                  label="zero-shot head (pretrained)")
    ax[j].set(xticks=np.arange(len(xs)), xticklabels=["probe"] + [str(r) for r in ranks],
              xlabel="LoRA rank (query, value; 6 layers)", title=title)
ax[0].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **Reading the result.** What we measured at `default` (32 snippets per class, 10 steps of 16, two
# seeds; learning rates chosen on dev: $3\cdot10^{-3}$ pretrained, $10^{-3}$ random; test balanced
# accuracy and test loss, mean ± sd over seeds):
#
# | frozen model | probe (rank 0) | rank 1 | rank 16 | zero-shot head |
# |---|---|---|---|---|
# | pretrained | 0.631 ± 0.000 (loss 0.61) | 0.643 ± 0.001 (0.72) | 0.651 ± 0.012 (0.92) | 0.735 (0.59) |
# | random | 0.557 ± 0.011 (1.12) | 0.556 ± 0.005 (1.16) | 0.549 ± 0.020 (1.13) | 0.562 (0.70), meaningless: random phrase directions |
#
# * **The frozen model decides, not the rank.** The pretrained model at rank 1 is 0.09 above the
#   random model at rank 16, many seed deviations; the random model does not move with the rank
#   (0.549–0.557), while the pretrained one gains a little balanced accuracy with the rank (0.631 →
#   0.651) as its test loss rises (the adapters sharpen the probe on 64 snippets and overfit it). This is
#   the paper's comparison in its sharpest form — smallest rank of the close model against largest
#   rank of the far one — and the check below tests it.
# * **What is not reached at this scale** is the rank at which each curve saturates: 10 steps of 16
#   snippets move the probe little at any rank. The rank dependence is the `paper`-scale run (512
#   snippets per class, 300 steps, ranks 1, 2, 4, 8, 16, 5 seeds, three learning rates: 76 runs; an
#   estimated 10–20 minutes on one GPU, not measured here).
# * **Against the zero-shot head**: no fine-tuned number beats the pretrained model's zero-shot head
#   (0.735) at `default`. A 384-dimensional linear probe fitted on 64 snippets is a weaker classifier
#   than the prompt head (0.631), and 10 LoRA steps recover only 0.017 of the gap. The head is the price
#   of fairness to the random model, which has no meaningful prompt head; chapter 5's first section
#   reads the pretrained model against its zero-shot head with no probe at all.
#
# The measure is {py:func}`lorabook.real.closeness_margin`: the difference of the mean test balanced
# accuracies in units of the pooled standard deviation over seeds (floored at $10^{-3}$), and the claim
# asks for more than 2. Its controls (`tests/test_controls_ch5b.py`) run the same check on two sets of
# random models, where neither is closer (it fails), and on pretrained against random probes (it passes).

# %% tags=["nbval-check-output"]
near = [runs[("pretrained", ranks[0], s)]["test"]["bacc"] for s in seeds]
far = [runs[("random", ranks[-1], s)]["test"]["bacc"] for s in seeds]
if scale.name == "quick":
    lb.claim(
        "at quick scale, the pretrained model at the smallest rank is at least as accurate "
        "as the random model at the largest rank (pipeline check)",
        float(np.mean(near) - np.mean(far)), ">=", 0.0, kind="sanity",
    )
else:
    lb.claim(
        "the pretrained frozen model at the smallest rank beats the random frozen model at "
        "the largest rank on test balanced accuracy, by more than two pooled seed deviations",
        real.closeness_margin(near, far), ">", 2.0, kind="theorem",
        label=("Zeng & Lee, real-model experiment "
               "(MiniLM stand-in: pretrained vs random frozen model)"),
        control=("test_controls_ch5b.py::test_closeness_fails_between_two_random_models",
                 "test_controls_ch5b.py::test_closeness_passes_pretrained_vs_random_probe"),
        near=float(np.mean(near)), far=float(np.mean(far)),
    )
lb.claim(
    "the pretrained model's linear probe beats the random model's on test balanced accuracy "
    "(mean over seeds)",
    stat("pretrained", 0)[0] - stat("random", 0)[0], ">", 0.0, kind="sanity",
)
