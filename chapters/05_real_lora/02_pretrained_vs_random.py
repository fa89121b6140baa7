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
# the same picture per attention pair. Chapter 1 checks the statements where they live. Their experiment on
# a real model (RoBERTa-base on GLUE, pretrained against randomly initialised frozen weights) is not
# installable offline; this page runs its analogue on what the book has: all-MiniLM-L6-v2 on the
# fresh/rotten task, against the **same architecture with random weights**.
#
# ```{prf:theorem} Zeng & Lee, Transformer networks — the part tested here
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
#   cross-entropy, Adam, batches of 16 snippets with dynamic padding (at most 32 tokens).
# * The learning rate of each model is chosen on the **dev split** (balanced accuracy, ties to the
#   smaller rate) at rank 4 and the first seed, then fixed for every rank; never on the test split.
# * Seeds: factor draw, batch order and (random model) weights; balanced accuracy and cross-entropy on
#   a disjoint test split.
#
# Code: {py:func}`lorabook.real.probe_lora_run`, {py:func}`lorabook.real.closeness_margin`,
# {py:func}`lorabook.train.cached_sweep`.

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

# %%
MODELS = ("pretrained", "random")
ranks = scale.pick(quick=[1], default=[1, 4, 16], paper=[1, 2, 4, 8, 16])
seeds = list(range(scale.pick(quick=2, default=2, paper=5)))
grid = scale.pick(quick=[1e-3], default=[1e-3, 3e-3], paper=[3e-4, 1e-3, 3e-3])
R_SEL = scale.pick(quick=1, default=4, paper=4)  # rank of the learning-rate selection
common = dict(
    classes=["fresh", "rotten"],
    n_train=scale.pick(quick=8, default=32, paper=512),
    n_dev=scale.pick(quick=8, default=32, paper=200),
    n_test=scale.pick(quick=32, default=200, paper=2000),
    split_seed=0,
    targets=["query", "value"],
    steps=scale.pick(quick=2, default=10, paper=300),
    batch_size=16,
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
split = dt.rotten_tomatoes_splits(tuple(common["classes"]), n_train_per_class=common["n_train"],
                                  n_dev_per_class=common["n_dev"], n_test=common["n_test"],
                                  seed=common["split_seed"])
y_test = torch.as_tensor(split["test_labels"])
zero = {}
for m in MODELS:
    base = real._base_model(m, 0)
    d = real.embed_on(base, [dt.CLASS_PHRASES[c] for c in common["classes"]])
    e = real.embed_on(base, split["test_texts"], max_length=common["max_length"])
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
    ax[j].axhline(zero["pretrained"][k], color="k", ls="--", label="zero-shot head (pretrained)")
    ax[j].set(xticks=np.arange(len(xs)), xticklabels=["probe"] + [str(r) for r in ranks],
              xlabel="LoRA rank (query, value; 6 layers)", title=title)
ax[0].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **Reading the result.** The check below is the paper's comparison in its sharpest form: the pretrained
# model with the *smallest* rank against the random model with the *largest* rank. If closeness did not
# matter — if rank could buy back what pretraining gives — the random model at rank 16 would catch up. The
# measure is {py:func}`lorabook.real.closeness_margin`: the difference of the mean test balanced
# accuracies in units of the pooled standard deviation over seeds (floored at $10^{-3}$), and the claim
# asks for more than 2. Its controls (`tests/test_controls_ch5b.py`) run the same check on two sets of
# random models, where neither is closer (it fails), and on pretrained against random probes (it passes).
#
# What the check does *not* show at `default` is the rank at which each curve saturates: with 10 steps
# of 16 snippets the adapters move the probe little at any rank (the table), so the curves are flat in
# the rank and the comparison is carried by the frozen models. The rank dependence is a `paper`-scale
# question (512 snippets per class, 300 steps, ranks 1–16, 5 seeds, three learning rates: 2 × 6 × 5
# runs, about 20–30 minutes on one GPU); at this scale it is not reached within our budget.

# %% tags=["nbval-check-output"]
near = [runs[("pretrained", ranks[0], s)]["test"]["bacc"] for s in seeds]
far = [runs[("random", ranks[-1], s)]["test"]["bacc"] for s in seeds]
if scale.name == "quick":
    lb.claim(
        "at quick scale, the pretrained model at the smallest rank is at least as accurate as the "
        "random model at the largest rank (pipeline check)",
        float(np.mean(near) - np.mean(far)), ">=", 0.0, kind="sanity",
    )
else:
    lb.claim(
        "the pretrained frozen model at the smallest rank beats the random frozen model at the "
        "largest rank on test balanced accuracy, by more than two pooled seed deviations",
        real.closeness_margin(near, far), ">", 2.0, kind="theorem",
        label="Zeng & Lee, Transformer networks (real model: pretrained vs random frozen model)",
        control=("test_controls_ch5b.py::test_closeness_fails_between_two_random_models",
                 "test_controls_ch5b.py::test_closeness_passes_pretrained_vs_random_probe"),
        near=float(np.mean(near)), far=float(np.mean(far)),
    )
lb.claim(
    "the pretrained model's linear probe beats the random model's on test balanced accuracy "
    "(mean over seeds)",
    stat("pretrained", 0)[0] - stat("random", 0)[0], ">", 0.0, kind="sanity",
)
