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
# (ntk-generalisation-thm)=
# # The low-rank solution generalises (Theorem 5.1)
#
# Theorems 3.1 and 4.1 are about the training objective. Theorem 5.1 of Jang, Lee & Ryu {cite}`jang2024lora` is
# about the *population* risk $L(\delta) = \E\,\ell(f(W_0;x) + \langle G(x),\delta\rangle, y)$ of what LoRA
# finds: an approximate second-order stationary point of the perturbed, nuclear-norm-regularised cross-entropy
# objective, with a regularisation $\lambda$ that the theorem prescribes. Its proof (appendix C) chains a uniform
# deviation bound over a nuclear-norm ball (Lemma C.5: Rademacher complexity, vector contraction
# {cite}`maurer2016vector`, McDiarmid) with a localisation argument for regularised estimators that the authors
# take from Bach {cite}`bach2024learning`.
#
# The formulas of the theorem were lost from our copy of the paper, so we restate it along its proof, with our own
# constants, and check that restatement. Two choices keep it exact: we work with the *centred* loss
# $\ell(f_0 + \langle G, \delta\rangle, y) - \ell(f_0, y)$, which the cross-entropy's Lipschitz constant $\sqrt2$
# (in the logits, Euclidean norm) bounds by $\sqrt2\,\norm{G(x)}_F\,\norm{\delta}_*$ without assuming a bounded loss,
# and we keep every constant explicit.
#
# ```{prf:theorem} Jang, Lee & Ryu, Theorem 5.1 (restated with our constants)
# :label: thm-ntk-thm51
# :nonumber:
# :class: paper
# Let $\ell$ be the softmax cross-entropy, $\norm{G(x)}_F \le R$ almost surely, $\delta^{\mathrm{true}}$ a minimiser
# of the population risk, $\eta \in (0, 1)$ and
# $\lambda = 4\tau$, $\tau = \frac{2R}{\sqrt N}\big(2 + \sqrt{\ln(2/\eta)}\big)$. Let $\hat\delta = BA^\top$ for a
# second-order stationary point $(A, B)$ of the perturbed LoRA objective, so that (Theorem 4.1, Corollary 4.2)
# $\hat\delta$ minimises $\hat L + \lambda\norm{\cdot}_*$ up to $\varepsilon$. Then with probability $\ge 1-\eta$
#
# $$ L(\hat\delta) - L(\delta^{\mathrm{true}}) \le 3\lambda\norm{\delta^{\mathrm{true}}}_* + 2\varepsilon
#    = \frac{24 R\,\norm{\delta^{\mathrm{true}}}_*}{\sqrt N}\Big(2 + \sqrt{\ln(2/\eta)}\Big) + 2\varepsilon. $$
# ```
#
# *Derivation (ours, following appendix C).* With probability $\ge 1-\eta$ the centred empirical and population
# risks differ by at most $\tau D$ uniformly on $\{\norm{\delta}_* \le D\}$: the centred loss class has Rademacher
# complexity $\le 2DR/\sqrt N$ (vector contraction with constant $\sqrt2\cdot\sqrt2$, then Lemma C.4), and one sample
# moves the supremum by at most $2\sqrt2RD/N$ (McDiarmid, both tails). Let $D^\star = \norm{\delta^{\mathrm{true}}}_*$
# and $C = \{\delta : L(\delta) + \lambda\norm\delta_* \le L(\delta^{\mathrm{true}}) + \lambda D^\star + t\}$ with
# $t = 2\varepsilon + 2\lambda D^\star$; $C$ is convex and lies in the ball of radius $D = D^\star + t/\lambda$. If
# $\hat\delta \notin C$, the segment from $\delta^{\mathrm{true}}$ to $\hat\delta$ meets the boundary of $C$ at a point
# $\tilde\delta$ where, by convexity of the empirical objective and $\varepsilon$-optimality of $\hat\delta$,
# $t \le \varepsilon + 2\tau D = \varepsilon + 2\tau D^\star + t/2$, i.e. $t \le 2\varepsilon + \lambda D^\star$,
# a contradiction. So $\hat\delta \in C$, which is the claim. The structure — $\lambda \propto R/\sqrt N$ and an
# excess risk $O(\lambda\norm{\delta^{\mathrm{true}}}_*)$ — is the paper's; the factors 4, 3 and 2 are ours
# ({py:func}`lorabook.ntk.theorem51_lambda`, {py:func}`lorabook.ntk.theorem51_bound`).
#
# **What we check.** A synthetic linearised problem whose population risk we can compute: $K = 2$ classes,
# $2\times 2$ updates, gradients drawn with $\norm{G(x)}_F = R = 1$ exactly
# ({py:func}`lorabook.ntk.bounded_gradient_sample`: one dominant shared direction plus isotropic noise), labels from
# a well-specified softmax model with $\delta^{\mathrm{true}} = 2\,e_1e_1^\top$, so that $\delta^{\mathrm{true}}$
# minimises the population risk and the excess risk of any $\delta$ is $\E_x\,\mathrm{KL}(p_{\mathrm{true}}(x)\,\|\,
# p_\delta(x))$, estimated on a fresh sample with the label noise integrated exactly
# ({py:func}`lorabook.ntk.ce_excess_risk`). The dimension is small on purpose: the bound is proportional to
# $R\norm{\delta^{\mathrm{true}}}_*/\sqrt N$ while the excess risk of not fine-tuning at all,
# $E_0 = L(0) - L(\delta^{\mathrm{true}})$, is at most a fraction of $R\norm{\delta^{\mathrm{true}}}_*$ (about 0.2
# here, which a direction-aligned design maximises); with these constants the bound can drop below $E_0$ only for
# $N$ of order $10^5$, and only a small $G$ makes such $N$ affordable. For each $N$ we solve the convex problem with
# the prescribed $\lambda$ to a certified duality gap ($\varepsilon$), and check that the LoRA factorisation of the
# solution, with one zero column appended, is a second-order stationary point (so $\hat\delta$ is what the theorem
# is about). At $N = 10^4$ we also run what the theorem describes — gradient descent on the perturbed LoRA objective
# (rank 2, $\norm{\mathbf P}_F = 10^{-3}$) from random starts — and compare its ends with $\hat\delta$. (At the
# $N$ where the bound is informative, $r(r+1)/2 > KN$ would need $r \approx 800$ on a $2\times2$ update: Theorem 4.1
# cannot supply the hypothesis there, but Lemma 4.4 can, since the stationary points we find are rank-deficient.)

# %% tags=["nbval-ignore-output"]
import math

import numpy as np
import torch

import lorabook as lb
from lorabook import ntk, plotting

scale = lb.get_scale()
plotting.use_style()
print(lb.describe())

# %%
K, SHAPE, R, SIGMA, ETA = 2, (1, 2, 2), 1.0, 0.1, 0.05
N_LIST = scale.pick(
    quick=[1_000, 10_000, 300_000],
    default=[1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000],
    paper=[1_000, 10_000, 100_000, 1_000_000, 3_000_000],
)
M_FRESH = scale.pick(quick=50_000, default=400_000, paper=2_000_000)  # population sample
delta_true = torch.zeros(SHAPE, dtype=torch.float64)
delta_true[0, 0, 0] = 2.0
D_true = float(torch.linalg.svdvals(delta_true[0]).sum())

torch_gen, _ = lb.seed_everything(51)
G_pop = ntk.bounded_gradient_sample(M_FRESH, (K,) + SHAPE, R, generator=torch_gen, sigma=SIGMA)
f0_pop = torch.zeros(M_FRESH, K, dtype=torch.float64)
zero = torch.zeros(SHAPE, dtype=torch.float64)
E0, E0_se = ntk.ce_excess_risk(G_pop, f0_pop, zero, delta_true)


def sample(N):
    """N training examples of the well-specified model: (G, labels)."""
    G = ntk.bounded_gradient_sample(N, (K,) + SHAPE, R, generator=torch_gen, sigma=SIGMA)
    z = torch.einsum("nkpij,pij->nk", G, delta_true)
    return G, torch.multinomial(torch.softmax(z, -1), 1, generator=torch_gen)[:, 0]


N_SOSP, EPS_P, LORA_STEPS = 10_000, 1e-3, 1_000  # where we also run perturbed LoRA GD
rows = []
for N in N_LIST:
    G, y = sample(N)
    lam = ntk.theorem51_lambda(R, N, ETA)
    prob = ntk.LinearisedProblem(G, torch.zeros(N, K, dtype=torch.float64), y, lam, "ce")
    res = ntk.proximal_gradient(prob, 20_000, tol=1e-13)
    exc, exc_se = ntk.ce_excess_risk(G_pop, f0_pop, res.delta, delta_true)
    rows.append(
        dict(
            N=N, lam=lam, lam_max=prob.lambda_max(), eps=res.cert.gap, kkt=res.cert.kkt,
            nuclear=float(prob.nuclear(res.delta)), excess=exc, excess_se=exc_se,
            bound=ntk.theorem51_bound(R, N, D_true, res.cert.gap, ETA),
        )
    )
    if N == N_SOSP:
        prob_s, res_s = prob, res
# the theorem's hypothesis at the largest N: the LoRA factorisation of delta-hat (balanced, one
# zero column appended) is a second-order stationary point of the LoRA objective
U, S, Vh = torch.linalg.svd(res.delta[0])
keep = int((S > 1e-9 * S[0]).sum())
B_hat = (U[:, :keep] * S[:keep].sqrt())[None]
A_hat = (Vh[:keep].T * S[:keep].sqrt())[None]
so = ntk.second_order(prob, *ntk.pad_zero_column(B_hat, A_hat))

# what LoRA itself finds at N_SOSP: gradient descent on the perturbed LoRA objective (rank 2,
# random PSD perturbation of Frobenius norm EPS_P per run), from random starts
B0, A0, rk = ntk.lora_init(
    prob_s.shape, [2], 4, init_std=0.3, zero_B=False, generator=torch_gen
)
P_pert = ntk.random_psd(sum(SHAPE[1:]), EPS_P, 4, generator=torch_gen)
lora = ntk.lora_gd(prob_s, B0, A0, rk, LORA_STEPS, 1.0, perturbation=P_pert)
lora_so = [
    ntk.second_order(prob_s, lora.B[s], lora.A[s], P_pert[s]) for s in range(len(rk))
]
lora_excess = [ntk.ce_excess_risk(G_pop, f0_pop, d, delta_true)[0] for d in lora.delta]
cor42 = EPS_P * float(prob_s.nuclear(res_s.delta))  # Corollary 4.2 (our scaling, chapter §3)
lora_subopt = (lora.objective - res_s.cert.primal).numpy()

import pandas as pd  # noqa: E402

tab = pd.DataFrame(rows)
tab["vacuous"] = tab.bound >= E0
# the bound is proportional to 1/sqrt(N) (eps is at solver precision): where it meets E0
N_nonvacuous = float((tab.N * (tab.bound / E0) ** 2).iloc[-1])
N_lam = float((tab.N * (tab.lam / tab.lam_max) ** 2).iloc[-1])  # where lambda = lambda_max
moved = tab[tab.nuclear > 0]
slope = float(np.polyfit(np.log(moved.N), np.log(moved.excess), 1)[0])

# %%
fig, ax = plotting.subplots(2, width=4.8)
ax[0].plot(
    tab.N, tab.bound, "k--", label=r"bound $3\lambda\|\delta^{true}\|_* + 2\varepsilon$"
)
ax[0].errorbar(
    tab.N, tab.excess, yerr=2 * tab.excess_se, fmt="o-", color=plotting.COLORS["lora"],
    label=r"measured $L(\hat\delta) - L(\delta^{true})$",
)
ax[0].axhline(E0, color=plotting.COLORS["full"], linestyle=":", label=r"$E_0$: no fine-tuning")
ax[0].set(
    xscale="log", yscale="log", xlabel="training samples $N$", ylabel="excess population risk",
    title="Theorem 5.1 with the prescribed λ",
)
ax[0].legend(fontsize=7)
ax[1].plot(tab.N, tab.lam, "k--", label=r"prescribed $\lambda$")
ax[1].plot(tab.N, tab.lam_max, "o-", color=plotting.COLORS["other"],
           label=r"$\lambda_{\max}$ (above it $\hat\delta = 0$)")
ax[1].set(xscale="log", yscale="log", xlabel="training samples $N$", ylabel=r"$\lambda$",
          title="when the estimator moves at all")
ax[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# *What to see:* the bound falls like $1/\sqrt N$ and the measured excess risk falls faster (the printed slope);
# the bound stays above the measured value everywhere, by one to two orders of magnitude. For small $N$ the
# prescribed $\lambda$ exceeds $\lambda_{\max}$, so $\hat\delta = 0$: the theorem's estimator *is* the pretrained
# model, and its bound exceeds $E_0$, the excess risk of not fine-tuning at all — there the bound is **vacuous**, it
# does not even say that fine-tuning helps. It becomes informative only from the printed $N$ on (about $2\times 10^5$
# in this favourable design; a generic design with $\norm{G(x)}_F$ spread over many directions needs far more).
# Gradient descent on the perturbed LoRA objective at $N = 10^4$ ends, from every start, at rank-deficient
# second-order stationary points within Corollary 4.2's allowance of $\hat\delta$, with practically the same
# excess risk (printed below): the convex solution stands in for what LoRA finds.

# %% tags=["nbval-ignore-output"]
print(f"E0 = {E0:.4f} ± {E0_se:.1e}, ||delta_true||_* = {D_true}, R = {R}, eta = {ETA}")
print(tab.to_string(float_format=lambda v: f"{v:.3g}"))
print(
    f"bound below E0 from N ≈ {N_nonvacuous:.3g}; prescribed λ below λ_max from "
    f"N ≈ {N_lam:.3g}; excess-risk slope in N: {slope:.2f} (the bound: -0.5)"
)
print(
    f"LoRA factorisation at N = {N_LIST[-1]}: |grad| = {so.grad_norm:.1e}, smallest Hessian "
    f"eigenvalue / λ = {so.hess_min / prob.lam:.1e}, "
    f"‖∇L̂‖₂/λ = {so.grad_op_over_lam:.6f}"
)

# %% tags=["nbval-ignore-output"]
exc_s = float(tab.excess[tab.N == N_SOSP].iloc[0])
print(
    f"perturbed LoRA GD at N = {N_SOSP}: suboptimality {lora_subopt.max():.1e} "
    f"(Corollary 4.2 allows {cor42:.1e}), |grad| ≤ {max(x.grad_norm for x in lora_so):.0e}, "
    f"smallest Hessian eigenvalue / λ ≥ "
    f"{min(x.hess_min for x in lora_so) / prob_s.lam:.1e}, "
    f"σ_min(Z)/σ_max(Z) ≤ {max(x.z_sigma_min for x in lora_so):.0e}; excess risk "
    f"{min(lora_excess):.5f}–{max(lora_excess):.5f} against {exc_s:.5f} for the convex "
    "solution"
)

# %% tags=["nbval-check-output"]
# Tolerances: eps is the certified duality gap (≤ 1e-13 relative); the excess risk is a Monte
# Carlo mean whose standard error (printed) is below 1e-3 of the bound, so we compare the mean
# plus two standard errors. The SOSP test of the padded factorisation allows -1e-8 λ: the
# solver's KKT residual (≈1e-12 at N = 3e5, ≈1e-7 at N = 1e6) bounds the negative curvature of
# the padded column. The perturbed LoRA ends reach rounding (gradient ≈1e-16, smallest Hessian
# eigenvalue ≈1e-16 λ, σ_min(Z) ≈1e-16 σ_max(Z)) and are held to 1e-9.
informative = tab[~tab.vacuous]
lb.claim(
    "the ratio of excess population risk to the Theorem 5.1 bound at the smallest N",
    float((tab.excess + 2 * tab.excess_se).iloc[0] / tab.bound.iloc[0]),
    "<=",
    1,
    kind="sanity",
)
lb.claim(
    "the Theorem 5.1 bound is vacuous at the smallest N (bound / E0, the excess risk of no "
    "fine-tuning)",
    float(tab.bound.iloc[0] / E0),
    ">=",
    1,
    kind="sanity",
)
lb.claim(
    "at the smallest N the prescribed lambda exceeds lambda_max, so delta-hat = 0 (nuclear "
    "norm of delta-hat)",
    float(tab.nuclear.iloc[0]),
    "==",
    0.0,
    kind="sanity",
)
lb.claim(
    "the LoRA factorisation of delta-hat is second-order stationary (smallest Hessian "
    "eigenvalue / lambda)",
    so.hess_min / prob.lam,
    ">=",
    -1e-8,
    kind="sanity",
)
if len(informative):
    lb.claim(
        "where the bound is below E0, the excess population risk of the prescribed-lambda "
        "solution is below it (largest (excess + 2 s.e.) / bound)",
        float(((informative.excess + 2 * informative.excess_se) / informative.bound).max()),
        "<=",
        1,
        kind="theorem",
        label="Jang et al., Theorem 5.1 (our constants)",
        control=(
            "test_controls_ch2.py::test_theorem51_fails_at_a_saddle",
            "test_controls_ch2.py::test_theorem51_solution_passes",
        ),
    )
lb.claim(
    "perturbed LoRA GD ends are second-order stationary (smallest Hessian eigenvalue / "
    "lambda)",
    min(x.hess_min for x in lora_so) / prob_s.lam,
    ">=",
    -1e-9,
    kind="sanity",
)
lb.claim(
    "their Z = [B; A] is rank-deficient, as Lemma 4.4 needs (largest sigma_min / sigma_max)",
    max(x.z_sigma_min for x in lora_so),
    "<=",
    1e-9,
    kind="sanity",
)
lb.claim(
    "they are within Corollary 4.2 of the convex optimum (largest suboptimality / "
    "(eps ||delta-hat||_*))",
    float(lora_subopt.max() / cor42),
    "<=",
    1,
    kind="sanity",
)
lb.claim(
    "the excess risk falls at least like 1/sqrt(N) once delta-hat moves (log-log slope)",
    slope,
    "<=",
    -0.5,
    kind="sanity",
)
