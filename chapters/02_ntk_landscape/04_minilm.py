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
# # A real pretrained transformer
#
# The paper fine-tunes a linearised RoBERTa-base on 32 prompt-based examples {cite}`jang2024lora,malladi2023kernel`.
# We do the same with the model available offline, all-MiniLM-L6-v2 {cite}`wang2020minilm,reimers2019sentencebert`,
# on Rotten Tomatoes snippets {cite}`pang2005seeing` ($K = 1$, logistic loss). The pretrained model is made
# meaningful before any training by a prompt-style head: the logit is
# $(\cos(e, \text{"a great movie"}) - \cos(e, \text{"a terrible movie"}))/0.05$ for the mean-pooled sentence
# embedding $e$ — the **zero-shot** baseline ($\delta = 0$). As in the paper, only the **last layer's query and
# value weights** ($P = 2$ matrices of $384\times384$) are adapted, and the model is linearised in them with
# `torch.func` ({py:func}`lorabook.ntk.per_example_jacobian`).
#
# **Protocol** (the few-shot protocol the paper inherits from LM-BFF and Malladi et al.): for every data seed,
# {py:func}`lorabook.data.rotten_tomatoes_splits` draws a balanced training set ($N/2$ fresh, $N/2$ rotten; the
# $N = 32$ set is a subset of the $N = 128$ one), a balanced dev set of 32 and a disjoint test set drawn from the
# rest (so with the corpus' 58 % fresh: we report **balanced accuracy** and the test loss). On the linearised
# objective $\hat L(\delta) + \lambda\sum_p\norm{\delta_p}_*$, full fine-tuning runs down a path
# $\lambda = 0.7, 0.5, 0.3, 0.2\,\lambda_\text{max}$ (10 steps each at `default`) (FISTA, warm starts), and **$\lambda$ and the step
# budget are selected by the dev loss** ({py:func}`lorabook.ntk.dev_selected_path`); the test set is touched once,
# by the selected model.

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
LAYER, DT, CLASSES = 5, torch.float32, ("rotten", "fresh")  # label 1 = fresh = positive logit
SEEDS = scale.pick(quick=2, default=5, paper=10)
N_LIST = scale.pick(quick=(32,), default=(32, 128), paper=(32, 128))
N_DEV, n_test = 16, scale.pick(quick=30, default=150, paper=1_000)
FRACS = scale.pick(
    quick=(0.5, 0.2), default=(0.7, 0.5, 0.3, 0.2), paper=(0.7, 0.5, 0.3, 0.2, 0.1)
)
PATH_STEPS = scale.pick(quick=4, default=10, paper=200)
EVERY = scale.pick(quick=2, default=5, paper=5)
head = ntk.MiniLMHead(LAYER)


def metrics(logits, labels):
    """Balanced accuracy and mean logistic loss of (n, 1) logits."""
    y = torch.as_tensor(labels, dtype=logits.dtype)[:, None]
    loss = float(ntk.per_example_loss(logits, y, "logistic").mean())
    return data.balanced_accuracy(logits[:, 0], labels), loss


def jacobian(x):
    return ntk.per_example_jacobian(head, ntk.QV_NAMES, x, dtype=DT)


def run_seed(cfg):
    sp = data.rotten_tomatoes_splits(
        CLASSES, n_train_per_class=max(cfg["N"]) // 2, n_dev_per_class=cfg["n_dev"],
        n_test=cfg["n_test"], seed=cfg["seed"],
    )
    hid = {s: ntk.embed_texts(sp[f"{s}_texts"], LAYER) for s in ("train", "dev", "test")}
    y = {s: torch.tensor(sp[f"{s}_labels"], dtype=DT) for s in ("train", "dev", "test")}
    f0, G = ntk.apply_by_length(jacobian, hid["train"])
    f0d, Gd = ntk.apply_by_length(jacobian, hid["dev"])
    dev = ntk.LinearisedProblem(Gd, f0d, y["dev"], 0.0, "logistic")
    half, out = max(cfg["N"]) // 2, {"seed": cfg["seed"]}
    for N in cfg["N"]:
        # N/2 of each class
        idx = torch.cat([torch.arange(N // 2), half + torch.arange(N // 2)])
        path = ntk.dev_selected_path(G[idx], f0[idx], y["train"][idx], dev, cfg["fracs"],
                                     cfg["steps"], every=cfg["every"])
        f0t, ft = ntk.apply_by_length(
            lambda x: ntk.linearised_predict(head, ntk.QV_NAMES, path.delta, x), hid["test"]
        )
        out[N] = {
            "zs": metrics(f0t, sp["test_labels"]), "ft": metrics(ft, sp["test_labels"]),
            "dev_zs": metrics(f0d, sp["dev_labels"]),
            "frac": path.fracs[path.best[0]], "step": path.steps[path.best[1]],
            "ranks": [[lb.numerical_rank(d, rtol=1e-4) for d in e] for e in path.ends],
            "gaps": path.rel_gap, "delta": path.delta if cfg["seed"] == 0 else None,
        }
    if cfg["seed"] == 0:  # kept for the next sections
        out["hid"], out["y"] = hid, y
    return out


runs = cached_sweep(
    "ntk_minilm_protocol",
    [
        {"seed": s, "N": N_LIST, "n_dev": N_DEV, "n_test": n_test, "fracs": FRACS,
         "steps": PATH_STEPS, "every": EVERY, "v": 1}
        for s in range(SEEDS)
    ],
    run_seed,
)
res = {N: {k: np.array([r[N][k] for r in runs]) for k in ("zs", "ft")} for N in N_LIST}

# %%
fig, ax = plotting.subplots(2, width=5.0)
for N, mk in zip(N_LIST, "os"):
    for j, (name, a) in enumerate((("balanced accuracy", ax[0]), ("test loss", ax[1]))):
        a.scatter(res[N]["zs"][:, j], res[N]["ft"][:, j], marker=mk, label=f"N = {N}",
                  color=plotting.COLORS["lora" if N == 32 else "full"])
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
        print(f"N = {N:3d} {name:>17s}: zero-shot {zs.mean():.3f} ± {zs.std(ddof=1):.3f}, "
              f"fine-tuned {ft.mean():.3f} ± {ft.std(ddof=1):.3f}, paired difference "
              f"{(ft - zs).mean():+.3f} ± {(ft - zs).std(ddof=1):.3f} "
              f"(mean ± sd, {SEEDS} seeds)")
    print(f"         selected λ/λ_max {[r[N]['frac'] for r in runs]}, "
          f"steps {[r[N]['step'] for r in runs]}")

# %% [markdown]
# **What this measures.** For the binary task the target — fine-tuning beats the zero-shot head on held-out
# data — is **not reached within our budget**. In our `default` run (5 seeds, 150 test snippets each) the paired
# difference fine-tuned − zero-shot is $-0.014 \pm 0.023$ in balanced accuracy and $+0.016 \pm 0.019$ in test
# loss at $N = 32$, and $-0.002 \pm 0.024$ and $-0.005 \pm 0.005$ at $N = 128$ (mean ± sd over seeds): no
# change beyond the spread over seeds, with a small test-loss gain at $N = 128$. What we measured as the
# reason: (i) one rank-1 update of the value weight separates the training snippets — the training loss falls far
# below the dev loss already at $\lambda = 0.7\,\lambda_\text{max}$ — and the dev set then often selects the
# largest $\lambda$ and the first steps, the model closest to zero-shot; (ii) that update lies along the one
# direction the scalar head reads (next section), so fine-tuning re-weights the tokens of the training snippets
# along "great − terrible" rather than learning new features. In exploratory runs (not part of this page) we also
# tried $\lambda$ down to $0.02\,\lambda_\text{max}$, early-stopped gradient descent on the unregularised
# loss, and $N = 128$ with 32 dev snippets: the held-out picture was the same. Not tried: more adapted layers or
# matrices, another temperature or head. The three-class task at the end of the page is where fine-tuning
# does its job.

# %% tags=["nbval-check-output"]
# the target (fine-tuning beats zero-shot on held-out data) is not reached for K = 1: what
# holds is that the dev-selected model stays close to zero-shot; the limit is the size of a
# change a reader would call a gain
MOVE = 0.05
for N in N_LIST:
    d_acc = res[N]["ft"][:, 0] - res[N]["zs"][:, 0]
    lb.claim(
        f"K = 1, N = {N}: dev-selected linearised fine-tuning moves held-out balanced "
        "accuracy by less than the limit (|mean paired difference over seeds|)",
        abs(float(d_acc.mean())), "<", MOVE, kind="sanity",
        mean_difference=float(d_acc.mean()), sd=float(d_acc.std(ddof=1)), seeds=SEEDS,
    )

# %% [markdown]
# ## LoRA by plain gradient descent, and the rank threshold
#
# On the first seed's $N = 32$ problem, at its dev-selected $\lambda$, we now train LoRA of ranks
# $r \in \{1, 2, 4, 8, 16\}$ with weight decay $\lambda$ by the paper's **plain full-batch gradient descent**
# ({py:func}`lorabook.ntk.lora_gd`, step $3/L$ with $L$ the Lipschitz constant of $\nabla\hat L$), $B = 0$ and $A$
# Gaussian with two scales: ours, std $n^{-1/2}$, and the authors', std $1/(\sqrt r\, n)$ ($n = 384$). The optimum
# $F^\star$ of full fine-tuning is certified by FISTA warm-started at the best LoRA point (its duality gap bounds
# the distance to the optimum). The threshold of {prf:ref}`thm-ntk-no-spurious` is `rank_threshold(1, 32)` $= 8$.

# %%
r0, half = runs[0], max(N_LIST) // 2
idx32 = torch.cat([torch.arange(16), half + torch.arange(16)])
hid32 = tuple(t[idx32] for t in r0["hid"]["train"])
y32 = r0["y"]["train"][idx32]
f0, G = ntk.apply_by_length(jacobian, hid32)
base = ntk.LinearisedProblem(G, f0, y32, 0.0, "logistic")
prob = ntk.LinearisedProblem(G, f0, y32, r0[32]["frac"] * base.lambda_max(), "logistic")
RANKS = scale.pick(quick=[1, 8], default=[1, 2, 4, 8, 16], paper=[1, 2, 4, 8, 16])
N_IN = prob.shape[2]
GD_STEPS, REC = scale.pick(quick=150, default=600, paper=3_000), 5
LR = 3 / prob.lipschitz()
gen, _ = lb.seed_everything(5)
inits = {}
B0, A0, rk = ntk.lora_init(
    prob.shape, RANKS, 1, init_std=N_IN**-0.5, zero_B=True, generator=gen, dtype=DT
)
inits["ours, std n^-1/2"] = (B0, A0)
B1, A1, _ = ntk.lora_init(
    prob.shape, RANKS, 1, init_std=1.0, zero_B=True, generator=gen, dtype=DT
)
inits["authors', std 1/(√r n)"] = (B1, A1 / (rk.to(DT).sqrt() * N_IN)[:, None, None, None])
gd = {
    k: ntk.lora_gd(
        prob, B, A, rk, GD_STEPS, LR, record_every=REC, progress=f"LoRA GD ({k[:7]})"
    )
    for k, (B, A) in inits.items()
}
best = min(
    ((k, i) for k in gd for i in range(len(RANKS))), key=lambda t: gd[t[0]].objective[t[1]]
)
cert = ntk.proximal_gradient(
    prob, scale.pick(quick=20, default=40, paper=300), lr=32 / prob.lipschitz(),
    backtrack=True,
    delta0=gd[best[0]].delta[best[1]], progress="certificate (warm FISTA)",
)
F_star = cert.cert.primal
rel = {k: ((v.history - F_star) / F_star) for k, v in gd.items()}
REACH = scale.pick(quick=0.05, default=1e-3, paper=1e-4)
reach = {k: ntk.steps_to_reach(v.history, F_star * (1 + REACH), REC) for k, v in gd.items()}
end_gap = {k: ((v.objective - F_star) / F_star).numpy() for k, v in gd.items()}
lin_ranks = {k: [lb.numerical_rank(d, rtol=1e-4) for d in cert.delta] for k in ("δ_Q, δ_V",)}
Gv = G[:, 0, 1].reshape(len(G), N_IN, N_IN)
ev = torch.linalg.eigvalsh(torch.einsum("iab,icb->ac", Gv, Gv)).flip(0)
left_share = float(ev[0] / ev.sum())

# %%
fig, ax = plotting.subplots(2, width=5.0)
cmap = plotting.plt.get_cmap("Oranges")
steps = np.arange(rel["ours, std n^-1/2"].shape[0]) * REC
for a, (k, v) in zip(ax, rel.items()):
    for i, r in enumerate(RANKS):
        a.plot(steps[1:], v[1:, i].clamp_min(1e-7).numpy(),
               color=cmap(0.35 + 0.6 * i / len(RANKS)),
               label=f"r = {r}")
    a.axhline(REACH, color=plotting.COLORS["theory"], linestyle="--", label="reached")
    a.set(xscale="log", yscale="log", xlabel="GD step", ylabel=r"$(F - F^\star)/F^\star$",
          title=f"init {k}")
    a.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* every rank, below and above the threshold, reaches the certified optimum. With the authors' tiny
# initialisation all ranks first sit on the plateau around the saddle $B = A = 0$ and leave it at about the same
# step; in our `default` run rank 1 is the slowest to reach $F^\star(1 + 10^{-3})$ (345 steps, against 295–315 for
# ranks 2–16): a weak form of the paper's observation that lower ranks converge more slowly. With our larger
# initialisation the order reverses — 360, 365, 405, 445 and 490 steps for ranks 1, 2, 4, 8, 16 — because
# the initial weight-decay term $\tfrac\lambda2\norm{A}_F^2$ grows with $r$ and gradient descent first has to
# shrink it. Speed against rank thus depends on the initialisation scale (steps printed below).
#
# **The threshold is not tested here, and why.** On this model the certified optimum has rank 0 for the query and
# 1 for the value weight — at every $\lambda$ of every seed's path, $N = 32$ and $128$ (printed below). The reason
# is structural: the scalar prompt head reads the pooled embedding through one direction (great − terrible), so
# the value-weight gradients of all examples share almost one left singular vector (its share of
# $\sum_i G_{iV}G_{iV}^\top$ is printed), and the nuclear norm pays for nothing else. A rank-1 LoRA can therefore
# reach the optimum, and $r(r+1)/2 > KN$ is a sufficient condition that this real problem never needs. The
# check labelled Theorem 4.1 below is the theorem's conclusion for the ranks it covers ($r \ge 8$); that ranks
# below the threshold may be trapped is shown on synthetic problems in {ref}`ntk-no-spurious`, not here.

# %% tags=["nbval-ignore-output"]
print(f"λ = {r0[32]['frac']} λ_max; certified F* = {F_star:.5f}, relative duality gap "
      f"{cert.cert.rel_gap:.1e}; ranks of the optimum {lin_ranks['δ_Q, δ_V']}")
print(f"share of the top left direction of Σ G_V G_Vᵀ: {left_share:.3f}")
for k in gd:
    print(f"init {k}: steps to reach F*(1 + {REACH:g}) per rank {dict(zip(RANKS, reach[k]))}; "
          f"final relative gaps {[f'{g:.1e}' for g in end_gap[k]]}")

# %% tags=["nbval-check-output"]
# tolerances: the certificate reaches a relative duality gap ~2e-5 at default (warm FISTA,
# float32); GD of GD_STEPS steps reaches <= 2e-4 relative to F* at default; at quick (150
# steps, ranks 1 and 8) GD is still on its way (gaps 0.4-0.9), so the quick limit only
# guards against divergence: the test is the default one
END_TOL = scale.pick(quick=2.0, default=5e-4, paper=1e-4)
above = [i for i, r in enumerate(RANKS) if r >= ntk.rank_threshold(1, 32)]
lb.claim(
    "the full fine-tuning optimum is certified (relative duality gap)",
    cert.cert.rel_gap, "<=", scale.pick(quick=0.1, default=1e-4, paper=1e-6), kind="sanity",
)
lb.claim(
    "no LoRA objective is below the certified dual bound (smallest (F - dual)/|dual|)",
    min(float(((v.objective - cert.cert.dual) / abs(cert.cert.dual)).min())
        for v in gd.values()),
    ">=", -1e-5, kind="sanity",
)
lb.claim(
    "LoRA ranks at or above the threshold (r(r+1)/2 > KN) reach the certified optimum by "
    "gradient descent, both initialisations (largest final relative gap)",
    max(float(end_gap[k][above].max()) for k in gd), "<=", END_TOL,
    kind="theorem", label="Jang et al., Theorem 4.1 (real model)",
    control=("test_controls_ch2b.py::test_theorem41_real_model_check_fails_below_threshold",
             "test_controls_ch2b.py::test_theorem41_real_model_check_passes_above_threshold"),
)
lb.claim(
    "rank 1, below the threshold, reaches the certified optimum too on this model "
    "(largest final relative gap): the threshold is not tested here",
    max(float(end_gap[k][0]) for k in gd), "<=", END_TOL, kind="sanity",
)
lb.claim(
    "the value-weight gradients share one left direction (its share of the sum of G_V G_V^T)",
    left_share, ">=", 0.5, kind="sanity",
)

# %% [markdown]
# **The NTK assumption.** Real (non-linearised) LoRA of rank 8, trained exactly like its linearised twin (same
# start, same gradient descent, step and weight decay, the same number of steps), predicts the labels of the
# held-out snippets; we compare the two.

# %%
j8 = RANKS.index(8)
REAL_STEPS = scale.pick(quick=6, default=40, paper=400)
T32 = int(hid32[1].sum(1).max())  # trim the padding: exact for the masked layer
real_delta, _ = ntk.train_actual_lora(
    head, ntk.QV_NAMES, (hid32[0][:, :T32], hid32[1][:, :T32]), y32, 8, REAL_STEPS, LR,
    prob.lam,
    A0=A0[j8, :, :, :8], adam=False, progress="LoRA rank 8 (real model)",
)
twin = ntk.lora_gd(prob, B0[j8 : j8 + 1, ..., :8], A0[j8 : j8 + 1, ..., :8],
                   rk[j8 : j8 + 1].clamp(max=8),
                   REAL_STEPS, LR)
hid_te, y_te = r0["hid"]["test"], r0["y"]["test"].long()
f0_te, lin_te = ntk.apply_by_length(
    lambda x: ntk.linearised_predict(head, ntk.QV_NAMES, twin.delta[0], x), hid_te
)
real_te = ntk.apply_by_length(
    lambda x: ntk.predict_with_delta(head, ntk.QV_NAMES, real_delta, x), hid_te
)
agree = float(((real_te > 0) == (lin_te > 0)).float().mean())
twin_metrics = {"zero-shot": metrics(f0_te, y_te),
                "linearised LoRA r=8": metrics(lin_te, y_te),
                "real LoRA r=8": metrics(real_te, y_te)}
logit_dev = float((real_te - lin_te).abs().max() / (lin_te - f0_te).abs().max())

# %% tags=["nbval-ignore-output"]
for k, (b, l) in twin_metrics.items():
    print(f"{k:>20s}: balanced accuracy {b:.3f}, test loss {l:.3f}")
print(f"real vs linearised LoRA r=8 after {REAL_STEPS} GD steps: same label on {agree:.1%} of "
      f"{len(y_te)} test snippets; largest logit difference / largest fine-tuning change "
      f"{logit_dev:.2f}")

# %% tags=["nbval-check-output"]
lb.claim(
    "real and linearised LoRA (rank 8, same training) predict the same held-out labels "
    "(fraction)",
    agree, ">=", 0.95, kind="sanity",
)
lb.claim(
    "real minus linearised logits, relative to the fine-tuning change of the logits "
    "(largest ratio)",
    logit_dev, "<=", 0.1, kind="sanity",
)

# %% [markdown]
# ## Three classes: fresh, rotten and plot
#
# The corpus has a third category, plot summaries. With the three-phrase head
# ($\cos(e, d_k)/0.05$ for "a great movie", "a terrible movie", "the plot of a movie"; $K = 3$, softmax
# cross-entropy) and 16 snippets per class at `default` ($N = 48$, $KN = 144$, threshold `rank_threshold(3, 48)`
# $= 17$) we run the same dev-selected protocol on the first seed, and read off the rank of the optimum.

# %%
CLASSES3, N3 = ("rotten", "fresh", "plot"), scale.pick(quick=24, default=48, paper=48)
head3 = ntk.MiniLMHead(LAYER, classes=CLASSES3)


def run_three(cfg):
    sp = data.rotten_tomatoes_splits(CLASSES3, n_train_per_class=cfg["n"],
                                     n_dev_per_class=cfg["n_dev"],
                                     n_test=cfg["n_test"], seed=cfg["seed"])
    hid = {s: ntk.embed_texts(sp[f"{s}_texts"], LAYER) for s in ("train", "dev", "test")}

    def jac3(x):
        return ntk.per_example_jacobian(head3, ntk.QV_NAMES, x, dtype=DT)

    f0_, G_ = ntk.apply_by_length(jac3, hid["train"])
    f0d, Gd = ntk.apply_by_length(jac3, hid["dev"])
    dev = ntk.LinearisedProblem(Gd, f0d, torch.tensor(sp["dev_labels"]), 0.0, "ce")
    path = ntk.dev_selected_path(G_, f0_, torch.tensor(sp["train_labels"]), dev, cfg["fracs"],
                                 cfg["steps"], every=cfg["every"], loss="ce")
    f0t, ft = ntk.apply_by_length(
        lambda x: ntk.linearised_predict(head3, ntk.QV_NAMES, path.delta, x), hid["test"]
    )
    yt = ntk.class_targets(torch.tensor(sp["test_labels"]), 3, dtype=DT)
    out = {"frac": path.fracs[path.best[0]], "step": path.steps[path.best[1]],
           "ranks": [[lb.numerical_rank(d, rtol=1e-4) for d in e] for e in path.ends],
           "gaps": path.rel_gap, "labels": sp["test_labels"]}
    for k, f in (("zs", f0t), ("ft", ft)):
        out[k] = (data.balanced_accuracy(f, sp["test_labels"]),
                  float(ntk.per_example_loss(f, yt, "ce").mean()))
    return out


(three,) = cached_sweep(
    "ntk_minilm_three",
    [{"seed": 0, "n_test": n_test, "n": N3 // 3,
      "n_dev": scale.pick(quick=4, default=16, paper=16),
      "fracs": FRACS,
      "steps": PATH_STEPS, "every": EVERY, "v": 1}],
    run_three,
)
rank3 = max(max(rr) for rr in three["ranks"])

# %% tags=["nbval-ignore-output"]
print(f"K = 3, N = {N3}: selected λ = {three['frac']} λ_max after {three['step']} steps; "
      f"optimum ranks (δ_Q, δ_V) along the path {three['ranks']}, relative gaps "
      f"{np.array2string(np.array(three['gaps']), precision=1)}")
for k, name in (("zs", "zero-shot"), ("ft", "fine-tuned")):
    print(f"{name:>10s}: balanced accuracy {three[k][0]:.3f}, "
          f"test cross-entropy {three[k][1]:.3f}")

# %% [markdown]
# *What to see:* with three classes the zero-shot head is poor (the plot phrase competes with both review
# phrases), and dev-selected linearised fine-tuning improves it markedly on held-out data: in our `default` run
# balanced accuracy 0.43 → 0.56 and cross-entropy 1.51 → 1.01 (one seed; the claims below hold it). The optimum
# still has rank 1 for the value weight and 0 for the query along the whole path, far below the threshold 17: the
# three class directions again leave the gradients one dominant left direction, so $r(r+1)/2 > KN$ is not
# tested by this run either.

# %% tags=["nbval-check-output"]
lb.claim(
    "K = 3: dev-selected linearised fine-tuning raises held-out balanced accuracy above the "
    "zero-shot head (difference, first seed)",
    three["ft"][0] - three["zs"][0], ">", 0.05, kind="sanity",
)
lb.claim(
    "K = 3: dev-selected linearised fine-tuning lowers the held-out cross-entropy "
    "(difference, first seed)",
    three["ft"][1] - three["zs"][1], "<", 0, kind="sanity",
)
