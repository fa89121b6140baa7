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
# (ntk-minilm-landscape)=
# # The real model's landscape: the rank of the optimum and LoRA by gradient descent
#
# The paper's training-curve experiments adapt only the **last layer's query and value weights** (its appendix D,
# Table 1: the nuclear-norm proximal step is the bottleneck); so does this page, on the model and data of
# {ref}`ntk-minilm` (all-MiniLM-L6-v2, Rotten Tomatoes, the prompt-style zero-shot head). For the first data seed
# we draw $N = 32$ balanced training snippets and a test set, linearise the last layer ($P = 2$ matrices of
# $384\times384$) and fix the regularisation at $\lambda = 0.3\,\lambda_\text{max}$, as the paper fixes its weight
# decay. At the end of the page a three-class problem whose optimum has rank 3 tests the rank threshold where
# rank 1 cannot succeed.

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
N_DEV, n_test = 16, scale.pick(quick=20, default=150, paper=1_000)
FRACS = scale.pick(
    quick=(0.5, 0.2), default=(0.7, 0.5, 0.3, 0.2), paper=(0.7, 0.5, 0.3, 0.2, 0.1)
)
PATH_STEPS = scale.pick(quick=4, default=10, paper=200)
EVERY = scale.pick(quick=2, default=5, paper=5)
head = ntk.MiniLMHead(LAYER)


def jacobian(x):
    return ntk.per_example_jacobian(head, ntk.QV_NAMES, x, dtype=DT)


sp = data.rotten_tomatoes_splits(CLASSES, n_train_per_class=16, n_dev_per_class=N_DEV,
                                 n_test=n_test, seed=0)
hid = {s: ntk.embed_texts(sp[f"{s}_texts"], LAYER) for s in ("train", "test")}
y = {s: torch.tensor(sp[f"{s}_labels"], dtype=DT) for s in ("train", "test")}
f0, G = ntk.apply_by_length(jacobian, hid["train"])
FRAC = 0.3  # λ / λ_max, fixed as the paper fixes its weight decay

# %% [markdown]
# ## LoRA by plain gradient descent, and the rank threshold
#
# On this $N = 32$ problem we train LoRA of ranks
# $r \in \{1, 2, 4, 8, 16\}$ with weight decay $\lambda$ by the paper's **plain full-batch gradient descent**
# ({py:func}`lorabook.ntk.lora_gd`, step $3/L$ with $L$ the Lipschitz constant of $\nabla\hat L$), $B = 0$ and $A$
# Gaussian with two scales: ours, std $n^{-1/2}$, and the authors', std $1/(\sqrt r\, n)$ ($n = 384$). The optimum
# $F^\star$ of full fine-tuning is certified by FISTA warm-started at the best LoRA point (its duality gap bounds
# the distance to the optimum). The threshold of {prf:ref}`thm-ntk-no-spurious` is `rank_threshold(1, 32)` $= 8$.

# %%
hid32, y32 = hid["train"], y["train"]
lam_max = ntk.LinearisedProblem(G, f0, y32, 0.0, "logistic").lambda_max()
prob = ntk.LinearisedProblem(G, f0, y32, FRAC * lam_max, "logistic")
RANKS = scale.pick(quick=[1, 8], default=[1, 2, 4, 8, 16], paper=[1, 2, 4, 8, 16])
N_IN = prob.shape[2]
GD_STEPS, REC = scale.pick(quick=60, default=600, paper=3_000), 5
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
    prob, scale.pick(quick=40, default=40, paper=300), lr=32 / prob.lipschitz(),
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
# *What to see:* every rank, below and above the threshold, reaches the certified optimum. In our `default` run
# ($\lambda = 0.3\,\lambda_\text{max}$) with the authors' tiny initialisation all ranks first sit on the plateau
# around the saddle $B = A = 0$ and leave it at about the same step: 420, 405, 400, 400 and 425 steps to reach
# $F^\star(1 + 10^{-3})$ for ranks 1, 2, 4, 8, 16 — rank 1 among the slowest, a weak form of the paper's
# observation that lower ranks converge more slowly, but rank 16 is as slow. With our larger initialisation the
# order reverses — 330, 355, 375, 430 and 465 steps — because the initial weight-decay term
# $\tfrac\lambda2\norm{A}_F^2$ grows with $r$ and gradient descent first has to shrink it. Speed against rank
# thus depends on the initialisation scale (steps printed below); the paper's observation is not reproduced
# as a monotone trend here.
#
# **The threshold is not tested by this problem, and why.** The certified optimum has rank 0 for the query and 1
# for the value weight (printed below). The reason is
# structural: the scalar prompt head reads the pooled embedding through one direction (great − terrible), so the
# value-weight gradients of all examples share almost one left singular vector (its share of
# $\sum_i G_{iV}G_{iV}^\top$ is printed), and the nuclear norm pays for nothing else. A rank-1 LoRA can therefore
# reach the optimum, and $r(r+1)/2 > KN$ is a sufficient condition that this problem never needs. The check
# labelled Theorem 4.1 below is the theorem's conclusion for the ranks it covers ($r \ge 8$); a real problem on
# which rank 1 cannot succeed follows at the end of the page.

# %% tags=["nbval-ignore-output"]
print(f"λ = {FRAC} λ_max; certified F* = {F_star:.5f}, relative duality gap "
      f"{cert.cert.rel_gap:.1e}; ranks of the optimum {lin_ranks['δ_Q, δ_V']}")
print(f"share of the top left direction of Σ G_V G_Vᵀ: {left_share:.3f}")
for k in gd:
    print(f"init {k}: steps to reach F*(1 + {REACH:g}) per rank {dict(zip(RANKS, reach[k]))}; "
          f"final relative gaps {[f'{g:.1e}' for g in end_gap[k]]}")

# %% tags=["nbval-check-output"]
# tolerances: the certificate reaches a relative duality gap ~2e-5 at default (warm FISTA,
# float32); GD of GD_STEPS steps reaches <= 2e-4 relative to F* at default; at quick (60
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
REAL_STEPS = scale.pick(quick=6, default=150, paper=600)
T32 = int(hid32[1].sum(1).max())  # trim the padding: exact for the masked layer
real_delta, _ = ntk.train_actual_lora(
    head, ntk.QV_NAMES, (hid32[0][:, :T32], hid32[1][:, :T32]), y32, 8, REAL_STEPS, LR,
    prob.lam,
    A0=A0[j8, :, :, :8], adam=False, progress="LoRA rank 8 (real model)",
)
twin = ntk.lora_gd(prob, B0[j8 : j8 + 1, ..., :8], A0[j8 : j8 + 1, ..., :8],
                   rk[j8 : j8 + 1].clamp(max=8),
                   REAL_STEPS, LR)
hid_te, y_te = hid["test"], y["test"].long()
f0_te, lin_te = ntk.apply_by_length(
    lambda x: ntk.linearised_predict(head, ntk.QV_NAMES, twin.delta[0], x), hid_te
)
real_te = ntk.apply_by_length(
    lambda x: ntk.predict_with_delta(head, ntk.QV_NAMES, real_delta, x), hid_te
)
agree = float(((real_te > 0) == (lin_te > 0)).float().mean())
twin_metrics = {"zero-shot": ntk.heldout_metrics(f0_te, y_te),
                "linearised LoRA r=8": ntk.heldout_metrics(lin_te, y_te),
                "real LoRA r=8": ntk.heldout_metrics(real_te, y_te)}
logit_dev = float((real_te - lin_te).abs().max() / (lin_te - f0_te).abs().max())
# how far fine-tuning moved the held-out logits: the agreement means something only if it did
moved = float((lin_te - f0_te).abs().mean() / f0_te.std())
flipped = float(((lin_te > 0) != (f0_te > 0)).float().mean())

# %% tags=["nbval-ignore-output"]
for k, (b, l) in twin_metrics.items():
    print(f"{k:>20s}: balanced accuracy {b:.3f}, test loss {l:.3f}")
print(f"real vs linearised LoRA r=8 after {REAL_STEPS} GD steps: same label on {agree:.1%} of "
      f"{len(y_te)} test snippets; largest logit difference / largest fine-tuning change "
      f"{logit_dev:.2f}")
print(f"fine-tuning moved the held-out logits by {moved:.2f} zero-shot standard deviations on "
      f"average and flipped {flipped:.1%} of the predicted labels")

# %% tags=["nbval-check-output"]
lb.claim(
    "fine-tuning moved the model: share of held-out labels the linearised LoRA run flips "
    "against zero-shot",
    flipped, ">=", scale.pick(quick=0.0, default=0.05, paper=0.05), kind="sanity",
)
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
CLASSES3, N3 = ("rotten", "fresh", "plot"), scale.pick(quick=12, default=48, paper=48)
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
    out = {"frac": path.fracs[path.best[0]], "step": path.steps[path.best[1]],
           "ranks": [[lb.numerical_rank(d, rtol=1e-4) for d in e] for e in path.ends],
           "gaps": path.rel_gap, "labels": sp["test_labels"]}
    for k, f in (("zs", f0t), ("ft", ft)):
        out[k] = ntk.heldout_metrics(f, sp["test_labels"])
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
# phrases), and dev-selected linearised fine-tuning improves it on held-out data: in our `default` run balanced
# accuracy 0.43 → 0.50 and cross-entropy 1.51 → 1.10 (one seed; the claims below hold it). The optimum still has
# rank 1 for the value weight and 0 for the query along the whole path, far below the threshold 17: with the last
# layer adapted, the three class directions leave the gradients one dominant left direction. The next section
# changes the layer.

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

# %% [markdown]
# ## A real problem whose optimum has rank 3
#
# The rank of the optimum is set by how many directions the gradients share. Two changes raise it on this model:
# three classes (three read-out directions instead of one) and adapting the **first** layer instead of the last
# (its gradients pass through five more layers, so they differ more from token to token; the fixed
# read-out of the last layer is what ties its gradients to one direction). On the three-class
# problem with $N = 48$ (16 snippets per class, $KN = 144$, threshold `rank_threshold(3, 48)` $= 17$), layer 0's
# query and value weights and $\lambda = 0.1\,\lambda_\text{max}$, the certified optimum has rank 3 in the value
# weight. LoRA of ranks 1, 2, 3 and 17 trained by plain gradient descent (step $3/L$, our initialisation) must
# now differ: ranks 1 and 2 cannot represent $\delta^\star$, the threshold rank is guaranteed to reach it.

# %%
N3R = scale.pick(quick=12, default=48, paper=96)
RANKS3 = scale.pick(quick=[1], default=[1, 2, 3], paper=[1, 2, 3, 4, 8])
RANKS3 = RANKS3 + [ntk.rank_threshold(3, N3R)]  # the threshold rank last
GD3_STEPS = scale.pick(quick=60, default=800, paper=5_000)
head0 = ntk.MiniLMHead(0, classes=CLASSES3)
sp0 = data.rotten_tomatoes_splits(CLASSES3, n_train_per_class=N3R // 3, n_dev_per_class=4,
                                  n_test=30, seed=0)
hid0 = ntk.embed_texts(sp0["train_texts"], 0)
f00, G0 = ntk.apply_by_length(
    lambda x: ntk.per_example_jacobian(head0, ntk.QV_NAMES, x, dtype=DT), hid0
)
y0 = torch.tensor(sp0["train_labels"])
lam_max0 = ntk.LinearisedProblem(G0, f00, y0, 0.0, "ce").lambda_max()
prob0 = ntk.LinearisedProblem(G0, f00, y0, 0.1 * lam_max0, "ce")
gen, _ = lb.seed_everything(7)
B3, A3, rk3 = ntk.lora_init(prob0.shape, RANKS3, 1, init_std=prob0.shape[2] ** -0.5,
                            zero_B=True, generator=gen, dtype=DT)
gd3 = ntk.lora_gd(prob0, B3, A3, rk3, GD3_STEPS, 3 / prob0.lipschitz(), record_every=20,
                  progress="LoRA GD (K = 3, layer 0)")
# the certificate in float64: in float32 the backtracking test of FISTA stalls at a relative
# duality gap near 1e-3 on this problem, in float64 it reaches about 1e-7
prob64 = ntk.LinearisedProblem(G0.double(), f00.double(), y0, prob0.lam, "ce")
cert3 = ntk.proximal_gradient(
    prob64, scale.pick(quick=20, default=150, paper=300), lr=32 / prob64.lipschitz(),
    backtrack=True, delta0=gd3.delta[int(gd3.objective.argmin())].double(),
    progress="certificate (warm FISTA)",
)
F3 = cert3.cert.primal
gap3 = ((gd3.objective.double() - F3) / F3).numpy()
sv3 = ntk.singular_values(cert3.delta[1])
rank3 = [lb.numerical_rank(d, rtol=1e-3) for d in cert3.delta]

# %%
fig, ax = plotting.subplots(1, width=5.0)
steps3 = np.arange(gd3.history.shape[0]) * 20
for i, r in enumerate(RANKS3):
    ax.plot(steps3[1:], ((gd3.history[1:, i] - F3) / F3).clamp_min(1e-7).numpy(),
            color=cmap(0.35 + 0.6 * i / len(RANKS3)), label=f"r = {r}")
ax.set(xscale="log", yscale="log", xlabel="GD step", ylabel=r"$(F - F^\star)/F^\star$",
       title=f"K = 3, N = {N3R}, layer 0: optimum rank {max(rank3)}")
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* rank 1 stops on a plateau well above $F^\star$ — its best point is the best rank-1 update, not
# the optimum; the others keep descending towards $F^\star$. In our `default` run the certified optimum
# ($\lambda = 0.1\,\lambda_\text{max}$, relative duality gap $3\cdot10^{-7}$) has rank 0 in the query and 3 in
# the value weight, with singular values in the ratios $1 : 0.26 : 0.16$. After 800 steps rank 1 is
# $2\cdot10^{-2}$ above $F^\star$ on its plateau; the threshold rank 17 is within $5\cdot10^{-4}$ (certified by
# the dual bound); ranks 2 and 3 are at $2\cdot10^{-3}$ and $3\cdot10^{-3}$ and still descending (printed
# below) — rank 2 can only approach the best rank-2 point, which the small third singular value puts close to
# $F^\star$, so this budget does not separate it from rank 3. This is the theorem tested where it has content:
# an optimum of rank above 1, a rank below it that fails, the threshold rank that succeeds. Whether every rank
# from 3 to 16 also succeeds — which the theorem does not promise — is not settled within our budget.

# %% tags=["nbval-ignore-output"]
cert_gap3 = (gd3.objective.double() - cert3.cert.dual) / abs(cert3.cert.dual)
print(f"λ = 0.1 λ_max; certified F* = {F3:.5f}, relative duality gap "
      f"{cert3.cert.rel_gap:.1e}; "
      f"ranks of the optimum (δ_Q, δ_V) {rank3}; top singular values of δ_V / the largest "
      f"{np.round((sv3[:5] / sv3[0]).numpy(), 3)}")
print(f"relative gaps after {GD3_STEPS} GD steps per rank, against F_FISTA "
      f"{dict(zip(RANKS3, [f'{g:.1e}' for g in gap3]))}; against the dual bound "
      f"{dict(zip(RANKS3, [f'{float(g):.1e}' for g in cert_gap3]))}")
back = min(5, gd3.history.shape[0] - 1)  # records over the last 100 steps (20 steps apart)
drop = (gd3.history[-1 - back] - gd3.history[-1]) / gd3.history[-1 - back]
print(f"relative decrease of the objective over the last {20 * back} steps per rank "
      f"{dict(zip(RANKS3, [f'{float(d):.1e}' for d in drop]))}")

# %% tags=["nbval-check-output"]
# "reaches" is certified against the dual bound D (F - D bounds F - F* from above; the float64
# certificate's relative duality gap is about 1e-7 at default); the tolerance 1e-3 is what the
# threshold rank's GD steps reach (a few 1e-4 in our run). "Ends above" is certified against
# the FISTA primal (F* is below it). At quick (60 GD steps) the runs are still on their way:
# the limits only guard the pipeline
TOL3 = scale.pick(quick=2.0, default=1e-3, paper=1e-4)
lb.claim(
    "K = 3, layer 0: the certified optimum's value weight has rank above 1 (numerical rank)",
    max(rank3), ">=", scale.pick(quick=1, default=3, paper=3), kind="sanity",
)
lb.claim(
    "K = 3, layer 0: LoRA at the threshold rank (r(r+1)/2 > KN) reaches the certified "
    "optimum by gradient descent ((F - dual bound)/|dual bound|)",
    float(cert_gap3[-1]), "<=", TOL3, kind="theorem",
    label="Jang et al., Theorem 4.1 (real model, K = 3)",
    control=("test_controls_ch2b.py::test_theorem41_k3_check_fails_below_threshold",
             "test_controls_ch2b.py::test_theorem41_k3_check_passes_above_threshold"),
    duality_gap=cert3.cert.rel_gap,
)
lb.claim(
    "K = 3, layer 0: rank 1, below the rank of the optimum, ends above it by more than the "
    "tolerance ((F - F_FISTA)/F_FISTA, a lower bound on its gap)",
    float(gap3[0]), ">", scale.pick(quick=0.0, default=TOL3, paper=TOL3), kind="sanity",
)
