"""Negative controls of the theorem claims of chapter 2's real-model page (MiniLM): the same check as in the
notebook, on an input where the theorem's hypothesis is violated, must fail; on one where it holds, pass."""
import torch

from lorabook import ntk
from lorabook.checks import evaluate

END_TOL = 5e-4   # the notebook's default tolerance on the final relative gap (F - F*)/F* of LoRA GD


def _end_gap(rank, n_init=6, seed=0):
    """The notebook's checked quantity, max over GD runs of (F_end - F*)/F*, on a problem with K = 2, N = 6
    (8x8, lambda = 0.1 lambda_max; threshold rank 5), from random starts (B and A Gaussian)."""
    gen = torch.Generator().manual_seed(seed)
    base = ntk.synthetic_problem(6, 2, 8, 8, 0.0, generator=gen)
    prob = ntk.LinearisedProblem(base.G, base.f0, base.y, 0.1 * base.lambda_max())
    F_star = ntk.proximal_gradient(prob, 100_000, tol=1e-10).cert.primal
    B0, A0, rk = ntk.lora_init(prob.shape, [rank], n_init, init_std=0.3, zero_B=False, generator=gen)
    run = ntk.lora_gd(prob, B0, A0, rk, 3_000, 0.5)
    return float(((run.objective - F_star) / F_star).max())


def test_theorem41_real_model_check_passes_above_threshold():
    assert ntk.rank_threshold(2, 6) == 5
    assert evaluate(_end_gap(5), "<=", END_TOL).passed


def test_theorem41_real_model_check_fails_below_threshold():
    # r = 1, r(r+1)/2 = 1 <= KN = 12: some GD runs end at spurious minima above F*, and the check catches it
    assert not evaluate(_end_gap(1), "<=", END_TOL).passed
