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
# (ntk-minilm)=
# # A real pretrained transformer: fine-tuning against zero-shot
#
# The paper fine-tunes a linearised RoBERTa-base on 32 prompt-based examples {cite}`jang2024lora,malladi2023kernel`.
# We do the same with the model available offline, all-MiniLM-L6-v2 {cite}`wang2020minilm,reimers2019sentencebert`,
# on Rotten Tomatoes snippets {cite}`pang2005seeing` ($K = 1$, logistic loss). The pretrained model is made
# meaningful before any training by a prompt-style head: the logit is
# $(\cos(e, \text{"a great movie"}) - \cos(e, \text{"a terrible movie"}))/0.05$ for the mean-pooled sentence
# embedding $e$ — the **zero-shot** baseline ($\delta = 0$). The paper's held-out accuracy runs (its appendix D,
# Table 3) adapt the **query and value weights of all layers**; so does this page: $P = 12$ matrices of
# $384\times384$, the model linearised in them with `torch.func`
# ({py:func}`lorabook.ntk.per_example_jacobian`, {py:meth}`lorabook.ntk.MiniLMHead.qv_names`). The landscape
# experiments, which in the paper adapt only the last layer, are on {ref}`ntk-minilm-landscape`.
#
# **Protocol** (the few-shot protocol the paper inherits from LM-BFF and Malladi et al.): for every data seed,
# {py:func}`lorabook.data.rotten_tomatoes_splits` draws a balanced training set ($N/2$ fresh, $N/2$ rotten; the
# $N = 32$ set is a subset of the $N = 128$ one), a balanced dev set of 64 and a disjoint test set drawn from the
# rest (so with the corpus' 58 % fresh: we report **balanced accuracy** and the test loss). On the linearised
# objective $\hat L(\delta) + \lambda\sum_p\norm{\delta_p}_*$, full fine-tuning runs down a path
# $\lambda = 0.2, 0.1\,\lambda_\text{max}$ (10 steps each at `default`; FISTA, warm starts), and **$\lambda$ and the
# step budget are selected by the dev loss** ({py:func}`lorabook.ntk.dev_selected_path`); the test set is touched
# once, by the selected model.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import data, ntk, plotting
from lorabook.train import cached_sweep

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
DT, CLASSES = torch.float32, ("rotten", "fresh")  # label 1 = fresh = positive logit
SEEDS = scale.pick(quick=2, default=5, paper=10)
N_LIST = scale.pick(quick=(8, 16), default=(32, 128), paper=(32, 128, 512))
N_DEV = scale.pick(quick=8, default=32, paper=128)  # dev snippets per class
n_test = scale.pick(quick=20, default=150, paper=1_000)
FRACS = scale.pick(quick=(0.2, 0.1), default=(0.2, 0.1), paper=(0.5, 0.3, 0.2, 0.1, 0.05))
PATH_STEPS = scale.pick(quick=4, default=10, paper=100)
EVERY = scale.pick(quick=2, default=5, paper=5)
# quick adapts the last layer only (a pipeline guard)
FIRST = scale.pick(quick=5, default=0, paper=0)
head = ntk.MiniLMHead(FIRST)  # layers FIRST..5, from the states entering layer FIRST
NAMES = head.qv_names()       # their query and value weights: all six layers at default


def jacobian(x):
    return ntk.per_example_jacobian(head, NAMES, x, dtype=DT)


def run_seed(cfg):
    sp = data.rotten_tomatoes_splits(
        CLASSES, n_train_per_class=max(cfg["N"]) // 2, n_dev_per_class=cfg["n_dev"],
        n_test=cfg["n_test"], seed=cfg["seed"],
    )
    hid = {s: ntk.embed_texts(sp[f"{s}_texts"], FIRST) for s in ("train", "dev", "test")}
    y = {s: torch.tensor(sp[f"{s}_labels"], dtype=DT) for s in ("train", "dev", "test")}
    # batches of 16 texts: less padding and smaller temporaries than one batch of all
    f0, G = ntk.apply_by_length(jacobian, hid["train"], batch_size=16)
    f0d, Gd = ntk.apply_by_length(jacobian, hid["dev"], batch_size=16)
    dev = ntk.LinearisedProblem(Gd, f0d, y["dev"], 0.0, "logistic")
    half, out = max(cfg["N"]) // 2, {"seed": cfg["seed"]}
    for N in cfg["N"]:
        # N/2 of each class
        idx = torch.cat([torch.arange(N // 2), half + torch.arange(N // 2)])
        GN = G if N == 2 * half else G[idx]  # no copy of the largest G
        path = ntk.dev_selected_path(GN, f0[idx], y["train"][idx], dev, cfg["fracs"],
                                     cfg["steps"], every=cfg["every"])
        f0t, ft = ntk.apply_by_length(
            lambda x: ntk.linearised_predict(head, NAMES, path.delta, x), hid["test"],
            batch_size=16,
        )
        out[N] = {
            "zs": ntk.heldout_metrics(f0t, sp["test_labels"]),
            "ft": ntk.heldout_metrics(ft, sp["test_labels"]),
            "train": ntk.heldout_metrics(
                f0[idx] + torch.einsum("nkpab,pab->nk", GN, path.delta),
                sp["train_labels"][idx.numpy()],
            ),
            "dev_zs": ntk.heldout_metrics(f0d, sp["dev_labels"]),
            "frac": path.fracs[path.best[0]], "step": path.steps[path.best[1]],
        }
    return out


runs = cached_sweep(
    "ntk_minilm_protocol",
    [
        {"seed": s, "N": N_LIST, "n_dev": N_DEV, "n_test": n_test, "fracs": FRACS,
         "steps": PATH_STEPS, "every": EVERY, "first_layer": FIRST, "v": 2}
        for s in range(SEEDS)
    ],
    run_seed,
)
res = {N: {k: np.array([r[N][k] for r in runs]) for k in ("zs", "ft", "train")}
       for N in N_LIST}

# %%
fig, ax = plotting.subplots(2, width=5.0)
for N, mk in zip(N_LIST, "os^"):
    for j, (name, a) in enumerate((("balanced accuracy", ax[0]), ("test loss", ax[1]))):
        a.scatter(res[N]["zs"][:, j], res[N]["ft"][:, j], marker=mk, label=f"N = {N}",
                  color=plotting.COLORS["lora" if N == N_LIST[0] else "full"])
for j, (a, name) in enumerate(zip(ax, ("balanced accuracy", "test loss (logistic)"))):
    lo = min(min(res[N][k][:, j].min() for k in ("zs", "ft")) for N in N_LIST)
    hi = max(max(res[N][k][:, j].max() for k in ("zs", "ft")) for N in N_LIST)
    a.plot([lo, hi], [lo, hi], color="k", linestyle=":", label="no change")
    a.set(xlabel=f"zero-shot {name}", ylabel=f"fine-tuned {name}",
          title=f"test {name}, per seed")
    a.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* each point is one data seed; above the diagonal on the left (below it on the right) means the
# dev-selected linearised fine-tuning beats the zero-shot head on held-out data.

# %% tags=["nbval-ignore-output"]
for N in N_LIST:
    for j, name in enumerate(("balanced accuracy", "test loss")):
        zs, ft = res[N]["zs"][:, j], res[N]["ft"][:, j]
        d = ft - zs
        print(f"N = {N:3d} {name:>17s}: zero-shot {zs.mean():.3f} ± {zs.std(ddof=1):.3f}, "
              f"fine-tuned {ft.mean():.3f} ± {ft.std(ddof=1):.3f}, paired difference "
              f"{d.mean():+.3f} (s.e. {d.std(ddof=1) / np.sqrt(SEEDS):.3f}; {SEEDS} seeds; "
              f"fine-tuned better on {int(((d > 0) if j == 0 else (d < 0)).sum())})")
    print(f"         training accuracy of the selected model "
          f"{res[N]['train'][:, 0].round(2)}; selected λ/λ_max "
          f"{[r[N]['frac'] for r in runs]}, steps {[r[N]['step'] for r in runs]}")

# %% [markdown]
# **What this measures.** In our `default` run (5 seeds, 150 test snippets each; paired differences fine-tuned −
# zero-shot, mean and standard error over seeds):
#
# | $N$ | balanced accuracy | test loss | selected $\lambda/\lambda_\text{max}$ |
# |---|---|---|---|
# | 32 | $-0.006$ (s.e. 0.009) | $+0.020$ (s.e. 0.014) | 0.2 or 0.1 |
# | 128 | $+0.008$ (s.e. 0.008) | $-0.010$ (s.e. 0.005) | 0.1 on every seed |
#
# At $N = 128$ dev-selected linearised fine-tuning of all layers **beats the zero-shot head in test loss**
# (lower on 4 of 5 seeds, mean gain two standard errors) and gains a little balanced accuracy (3 of 5 seeds),
# within one standard error. At the paper's $N = 32$ the target is **not reached**: the selected model is worse in test loss
# and no better in accuracy. What we measured as the reason: with 32 snippets the linearised model separates
# (or nearly separates) its training set after a few steps at $\lambda = 0.2\,\lambda_\text{max}$ (training
# balanced accuracy 0.72–1.0, printed above), so the few-shot fit is a re-weighting of 32 examples that does not
# carry over to held-out snippets, while the zero-shot head is already a fair classifier (0.69 balanced
# accuracy). Adapting only the last layer's query and value weights — the setting of the next pages, and of an
# earlier version of this page with 16 dev snippets per class — gave no gain at either $N$ in our runs
# (paired accuracy differences $-0.014$ at $N = 32$ and $-0.002$ at $N = 128$). Not tried: other heads or
# temperatures, and $N$ above 128 at `default` (`paper` adds $N = 512$). At $N = 128$ the dev set chose the
# smaller $\lambda$ of the path on every seed, so a longer path might gain more; `paper` runs it down to
# $0.05\,\lambda_\text{max}$ (not measured here).

# %% tags=["nbval-check-output"]
# the quick run (last layer, N = 8 and 16, two seeds, 20 test snippets) only guards the
# pipeline; the findings are
# the default ones (five seeds, 150 test snippets each)
N_BIG, N_SMALL = N_LIST[-1], N_LIST[0]
d_loss = {N: res[N]["ft"][:, 1] - res[N]["zs"][:, 1] for N in N_LIST}
lb.claim(
    "largest N: dev-selected linearised fine-tuning lowers the held-out test loss "
    "below the zero-shot head's (mean paired difference over seeds)",
    float(d_loss[N_BIG].mean()), "<", scale.pick(quick=0.1, default=0.0, paper=0.0),
    kind="sanity", N=N_BIG, sd=float(d_loss[N_BIG].std(ddof=1)), seeds=SEEDS,
)
lb.claim(
    "the held-out test-loss change grows with N: paired difference at the largest N minus "
    "the one at the smallest N (means over seeds)",
    float(d_loss[N_BIG].mean() - d_loss[N_SMALL].mean()), "<",
    scale.pick(quick=0.2, default=0.0, paper=0.0), kind="sanity",
    small=float(d_loss[N_SMALL].mean()), big=float(d_loss[N_BIG].mean()),
)
