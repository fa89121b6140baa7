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
# on 32 Rotten Tomatoes snippets {cite}`pang2005seeing` (16 fresh, 16 rotten; $K = 1$, logistic loss). The
# pretrained model is made meaningful before any training by a prompt-style head: the logit is
# $(\cos(e, \text{"a great movie"}) - \cos(e, \text{"a terrible movie"}))/0.05$ for the mean-pooled sentence
# embedding $e$. As in the paper, only the **last layer's query and value weights** ($P = 2$ matrices of
# $384\times384$) are adapted, and the model is linearised in them with `torch.func`: the per-example gradients
# $G_i \in \R^{1\times 2\times 384\times 384}$ for the 32 training snippets take 38 MB in float32.
#
# On the linearised loss $\hat L(\delta) + \lambda\sum_p\norm{\delta_p}_*$ (mean loss; $\lambda = 0.05\,\lambda_\text{max}$,
# our choice) we train
#
# * **full fine-tuning** by accelerated proximal gradient with singular-value soft-thresholding (the paper uses the
#   plain proximal gradient; FISTA reaches the same optimum faster), and read off its duality gap;
# * **LoRA** of ranks $r \in \{1, 2, 4, 8, 16\}$ ($B = 0$, $A$ Gaussian, as Hu et al.) with weight decay $\lambda$,
#   all ranks in one batched run. We use Adam (`lorabook.train.batched_adam`) rather than the paper's plain
#   gradient descent, because on two CPU cores the gradient-descent curves need far more steps than we can afford.
#
# The threshold of {prf:ref}`thm-ntk-no-spurious` is `rank_threshold(1, 32)` $= 8$.

# %% tags=["nbval-ignore-output"]
import numpy as np
import torch

import lorabook as lb
from lorabook import data, ntk, plotting
from lorabook.train import batched_adam, cached_sweep

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
N_PER_CLASS, LAYER, DT = 16, 5, torch.float32
n_test = scale.pick(quick=100, default=1_000, paper=5_000)
full_steps = scale.pick(quick=5, default=40, paper=1_000)
cert_steps = scale.pick(quick=5, default=40, paper=500)
lora_steps = scale.pick(quick=30, default=200, paper=3_000)
actual_steps = scale.pick(quick=10, default=60, paper=400)
RANKS, LAM_FRAC, LORA_LR = [1, 2, 4, 8, 16], 0.05, 5e-3
split = data.rotten_tomatoes_split(N_PER_CLASS, n_test, seed=0)


def embed(cfg):
    return data.hidden_before_layer(split[cfg["part"] + "_texts"], LAYER, progress=True)


(h_tr, m_tr), (h_te, m_te) = cached_sweep(
    "ntk_minilm_hidden",
    [
        {"part": p, "n_test": n_test, "seed": 0, "layer": LAYER, "v": 1}
        for p in ("train", "test")
    ],
    embed,
)
y_tr = torch.tensor(split["train_labels"], dtype=DT)
y_te = torch.tensor(split["test_labels"], dtype=DT)
head = ntk.MiniLMHead(LAYER)
f0, G = ntk.per_example_jacobian(head, ntk.QV_NAMES, (h_tr, m_tr), dtype=DT)
base = ntk.LinearisedProblem(G, f0, y_tr, 0.0, "logistic")
prob = ntk.LinearisedProblem(G, f0, y_tr, LAM_FRAC * base.lambda_max(), "logistic")
print(
    f"G: {tuple(G.shape)}, {G.numel() * G.element_size() / 2**20:.0f} MiB; λ = "
    f"{prob.lam:.3g}; "
    f"threshold rank = {ntk.rank_threshold(1, 2 * N_PER_CLASS)}"
)

# %%
full = ntk.proximal_gradient(
    prob,
    full_steps,
    lr=32 / prob.lipschitz(),
    backtrack=True,
    record_every=1,
    progress="full fine-tuning (FISTA)",
)
torch_gen, _ = lb.seed_everything(5)
B, A, rk = ntk.lora_init(
    prob.shape, RANKS, 1, init_std=384**-0.5, zero_B=True, generator=torch_gen, dtype=DT
)
mask = (torch.arange(max(RANKS))[None] < rk[:, None]).to(DT)[:, None, None]
A_start = A.clone()


def lora_objective(B_, A_):
    """L̂(BAᵀ) + λ/2(‖A‖² + ‖B‖²) per slice; its gradient is Adam's (decay in the loss)."""
    return prob.data_loss(B_ @ A_.transpose(-1, -2)) + 0.5 * prob.lam * (
        A_.square().sum((1, 2, 3)) + B_.square().sum((1, 2, 3))
    )


lora_hist = batched_adam(
    [B, A],
    lambda step: lora_objective(B * mask, A * mask),
    lora_steps,
    LORA_LR,
    record_every=1,
    progress="LoRA ranks (linearised)",
)
with torch.no_grad():
    B, A = B * mask, A * mask
    lora_obj = lora_objective(B, A)
# certify: FISTA warm-started at the best LoRA point; its duality gap bounds the distance to
# the optimum
best = int(lora_obj.argmin())
cert = ntk.proximal_gradient(
    prob,
    cert_steps,
    lr=32 / prob.lipschitz(),
    backtrack=True,
    delta0=(B[best] @ A[best].transpose(-1, -2)),
    progress="certificate (warm FISTA)",
)
F_full = cert.cert.primal
rel_gap_lora = ((lora_obj - F_full) / F_full).numpy()

# %% [markdown]
# The NTK assumption: real (non-linearised) LoRA of rank 8 on the same 32 snippets, same start, optimiser and
# steps, against its linearised twin — test accuracy and agreement of the predicted labels on held-out snippets.

# %%
r_cmp = 8
j = RANKS.index(r_cmp)
actual_delta, _ = ntk.train_actual_lora(
    head,
    ntk.QV_NAMES,
    (h_tr, m_tr),
    y_tr,
    r_cmp,
    actual_steps,
    LORA_LR,
    prob.lam,
    A0=A_start[j, :, :, :r_cmp],
    progress="LoRA rank 8 (real model)",
)
B8 = torch.zeros(1, *prob.shape[:2], r_cmp, dtype=DT)
A8 = A_start[j : j + 1, :, :, :r_cmp].clone()
batched_adam([B8, A8], lambda step: lora_objective(B8, A8), actual_steps, LORA_LR)
lin8_delta = (B8 @ A8.transpose(-1, -2)).detach()[0]

preds = {}
f0_te, preds["linearised full FT"] = ntk.linearised_predict(
    head, ntk.QV_NAMES, cert.delta, (h_te, m_te)
)
preds["zero-shot"] = f0_te
_, preds[f"linearised LoRA r={r_cmp}"] = ntk.linearised_predict(
    head, ntk.QV_NAMES, lin8_delta, (h_te, m_te)
)
preds[f"real LoRA r={r_cmp}"] = ntk.predict_with_delta(
    head, ntk.QV_NAMES, actual_delta, (h_te, m_te)
)
acc = {k: float(((v[:, 0] > 0).to(DT) == y_te).float().mean()) for k, v in preds.items()}
agree = float(
    ((preds[f"real LoRA r={r_cmp}"] > 0) == (preds[f"linearised LoRA r={r_cmp}"] > 0))
    .float()
    .mean()
)

# %%
fig, ax = plotting.subplots(2, width=5.0)
steps_full = np.arange(len(full.history))
ax[0].plot(
    steps_full, full.history.numpy(), color=plotting.COLORS["full"], label="full FT (FISTA)"
)
cmap = plotting.plt.get_cmap("Oranges")
for i, r in enumerate(RANKS):
    ax[0].plot(
        np.arange(lora_hist.shape[0]) + 1,
        lora_hist[:, i].numpy(),
        color=cmap(0.35 + 0.6 * i / len(RANKS)),
        label=f"LoRA r={r}",
    )
ax[0].axhline(
    F_full, color=plotting.COLORS["theory"], linestyle="--", label="certified optimum"
)
ax[0].set(
    xscale="log",
    xlabel="step",
    ylabel=r"objective $\hat L + \lambda\,$reg.",
    title="linearised MiniLM, 32 snippets",
)
ax[0].legend(fontsize=7)
names = list(acc)
ax[1].bar(
    range(len(names)),
    [acc[k] for k in names],
    color=[plotting.COLORS[c] for c in ("full", "theory", "lora", "other")],
)
ax[1].set_xticks(range(len(names)), [k.replace(" ", "\n", 1) for k in names], fontsize=7)
ax[1].axhline(0.5, color="k", linestyle=":", label="chance")
ax[1].set(
    ylim=(0.4, 1.0), ylabel=f"test accuracy ({n_test} snippets)", title="held-out accuracy"
)
ax[1].legend()
fig.tight_layout()

# %% [markdown]
# *What to see:* left, every LoRA rank converges to the certified optimum of full fine-tuning (dashed), as in the
# paper's Figure 2; right, test accuracy of the zero-shot head and of the fine-tuned models (all predictions include
# $f(W_0; x)$).
#
# Where we depart from the paper, in our default run: (i) the certified optimum is very low-rank (rank 0 for the
# query, 1 for the value weight at our $\lambda$), so *every* LoRA rank, even below the threshold 8, can and does
# reach it; (ii) with Adam the lower ranks are not slower — the paper's "lower ranks converge more slowly" refers to
# plain gradient descent, which we could not afford here; (iii) full fine-tuning by proximal gradient from zero is
# the slowest curve (its step is limited by a worst-case Lipschitz bound, even with backtracking), so we certify the
# optimum by FISTA warm-started at the best LoRA point and report its duality gap; (iv) fine-tuning on 32 snippets
# does **not** raise test accuracy above the zero-shot head here (the training loss falls far below the test loss:
# see the next section). Linearised and real LoRA predict the same label on most held-out snippets, so the NTK
# approximation is reasonable for this last-layer adaptation.

# %% tags=["nbval-ignore-output"]
print(
    f"full FT from zero after {full_steps} steps: objective {full.cert.primal:.4f} (gap "
    f"{full.cert.rel_gap:.1e})"
)
print(
    f"certified optimum: objective {F_full:.4f}, relative duality gap "
    f"{cert.cert.rel_gap:.1e}, "
    f"ranks of (δ_Q, δ_V) = {[lb.numerical_rank(d, rtol=1e-5) for d in cert.delta]}"
)
for r, g in zip(RANKS, rel_gap_lora):
    print(f"LoRA r={r:2d}: objective {(1 + g) * F_full:.4f} (relative to full FT {g:+.1e})")
for k, v in acc.items():
    print(f"{k:>22s}: test accuracy {v:.3f}")
print(f"real vs linearised LoRA r={r_cmp}: same label on {agree:.1%} of test snippets")

# %% tags=["nbval-check-output"]
# Honest kinds: the optimum of this problem has rank at most 1 (printed above), so every LoRA
# rank can reach it and
# the threshold r(r+1)/2 > KN is not what is tested here: these are checks of our solver, not
# of Theorem 4.1.
TOL_OBJ = scale.pick(quick=0.5, default=0.1, paper=0.02)
lb.claim(
    "the full fine-tuning optimum is certified (relative duality gap)",
    cert.cert.rel_gap,
    "<=",
    scale.pick(quick=0.5, default=0.01, paper=1e-4),
    kind="sanity",
)
lb.claim(
    "LoRA at rank >= 8 reaches the full fine-tuning objective (largest |relative gap|)",
    float(np.abs(rel_gap_lora[[i for i, r in enumerate(RANKS) if r >= 8]]).max()),
    "<=",
    TOL_OBJ,
    kind="sanity",
)
lb.claim(
    "no LoRA objective is below the certified dual bound (smallest (F - dual)/|dual|)",
    float(((lora_obj.numpy() - cert.cert.dual) / abs(cert.cert.dual)).min()),
    ">=",
    -1e-4,
    kind="sanity",
)
lb.claim(
    "linearised and real LoRA agree on most test labels (fraction)",
    agree,
    ">=",
    scale.pick(quick=0.7, default=0.85, paper=0.9),
    kind="sanity",
)

# %% [markdown]
# (ntk-generalisation)=
# ## The low-rank solution generalises
#
# ```{prf:lemma} Jang, Lee & Ryu, Lemma C.5 (with Lemma C.4)
# :label: thm-ntk-generalisation
# For linearised predictors $x \mapsto f(W_0;x) + \langle G(x), \delta\rangle$ with $\sum_p\norm{\delta_p}_* \le M$, the
# Rademacher complexity is at most $M\sqrt{\sum_i \norm{G(x_i)}_F^2}/N = O(1/\sqrt N)$, so for a Lipschitz loss the
# train–test gap of the (low-rank) solution is $O(1/\sqrt N)$ with high probability.
# ```
#
# We evaluate the bound for the certified solution above: $M = \sum_p\norm{\delta^\star_p}_*$, the loss is
# 1-Lipschitz in the logit, and on the ball the logit, hence the loss, is bounded by
# $b = \log(1 + e^{|f_0|_\text{max} + M \max_i\norm{G_i}_F})$. The textbook bound
# {cite}`shalev2014understanding` — with the *empirical* Rademacher complexity, gap
# $\le 2\,\hat{\mathfrak R}_S + 4b\sqrt{2\ln(4/\eta)/N}$ with probability $1-\eta$, $\eta = 0.05$ — uses our constants, not the paper's (whose constants were lost from our copy), and
# ignores that $M$ was chosen after seeing the data. We compute $\mathfrak R$ twice: Lemma C.4's closed form, and a
# Monte-Carlo estimate of the empirical Rademacher complexity $M\,\E_\sigma\max_p\norm{\sum_i\sigma_iG_{ip}}_2/N$.

# %%
radius = float(prob.nuclear(cert.delta))
rad = ntk.rademacher_bound(
    G, radius, n_draws=scale.pick(quick=4, default=20, paper=200), generator=torch_gen
)
g_max = float(G.flatten(3).norm(dim=-1).max())
loss_range = float(np.log1p(np.exp(float(f0.abs().max()) + radius * g_max)))
bounds = {
    k: ntk.generalisation_bound(v, 1.0, loss_range, 2 * N_PER_CLASS, 0.05)
    for k, v in rad.items()
}
train_loss = float(prob.data_loss(cert.delta))
test_loss = float(
    ntk.per_example_loss(preds["linearised full FT"], y_te[:, None], "logistic").mean()
)
gen_gap = test_loss - train_loss

fig, ax = plotting.subplots(1, width=5.5)
labels = [
    "measured\ntest − train loss",
    "bound\n(Monte-Carlo $\\mathfrak{R}$)",
    "bound\n(Lemma C.4)",
]
vals = [max(gen_gap, 1e-3), bounds["empirical"], bounds["lemma"]]
ax.bar(
    range(3),
    vals,
    color=[plotting.COLORS["lora"], plotting.COLORS["theory"], plotting.COLORS["full"]],
    label="value (log scale)",
)
ax.set_xticks(range(3), labels)
ax.set(
    yscale="log",
    ylabel="logistic loss gap",
    title=f"Lemma C.5 for the certified solution (N = {2 * N_PER_CLASS})",
)
ax.legend()

# %% [markdown]
# *What to see:* at $N = 32$ both bounds exceed the loss range $b$ itself, so they are vacuous: they say nothing
# that the boundedness of the loss does not already say. They hold for the worst predictor in the nuclear-norm
# ball and decay like $1/\sqrt N$; the paper's Theorem 5.1 (excess risk of an approximate second-order stationary
# point of the perturbed, regularised loss) is not checked here.

# %% tags=["nbval-ignore-output"]
print(
    f"M = {radius:.3g}, Rademacher: Monte-Carlo {rad['empirical']:.3g}, Lemma C.4 "
    f"{rad['lemma']:.3g}; "
    f"loss range b = {loss_range:.3g}"
)
print(
    f"train loss {train_loss:.3f}, test loss {test_loss:.3f}, gap {gen_gap:.3f}; "
    f"bounds {bounds['empirical']:.3g} (Monte-Carlo), {bounds['lemma']:.3g} (Lemma C.4)"
)

# %% tags=["nbval-check-output"]
lb.claim(
    "the Monte-Carlo Rademacher estimate is below Lemma C.4's closed form (ratio)",
    rad["empirical"] / rad["lemma"],
    "<=",
    1 + 1e-9,
    kind="sanity",
)
# the bound is vacuous at this N: it exceeds the loss range b, the largest gap any predictor of
# the ball can have
lb.claim(
    "the Rademacher bound is vacuous at this N (bound / loss range b)",
    bounds["empirical"] / loss_range,
    ">=",
    1,
    kind="sanity",
)
