"""Negative controls of the theorem claims of chapter 2's real-model page (MiniLM): the same check as in the
notebook, on an input where the theorem's hypothesis is violated, must fail; on one where it holds, pass."""
from functools import lru_cache

from test_controls_ch2 import _spurious_setting

from lorabook import ntk
from lorabook.checks import evaluate

END_TOL = 5e-4   # the notebook's default tolerance on the final relative gap (F - F*)/F* of LoRA GD


@lru_cache(maxsize=None)  # two tolerances are checked on the same two runs
def _end_gap(rank):
    """The notebook's checked quantity, max over GD runs of (F_end - F*)/F*, on the synthetic problem of the
    chapter-2 controls (K = 2, N = 6, 8x8, lambda = 0.1 lambda_max; threshold rank 5)."""
    return _spurious_setting(rank)


def test_theorem41_real_model_check_passes_above_threshold():
    assert ntk.rank_threshold(2, 6) == 5
    assert evaluate(_end_gap(5), "<=", END_TOL).passed


def test_theorem41_real_model_check_fails_below_threshold():
    # r = 1, r(r+1)/2 = 1 <= KN = 12: some GD runs end at spurious minima above F*, and the check catches it
    assert not evaluate(_end_gap(1), "<=", END_TOL).passed


TOL3 = 1e-3  # the default tolerance of the three-class, layer-0 claim


def test_theorem41_k3_check_passes_above_threshold():
    assert evaluate(_end_gap(5), "<=", TOL3).passed


def test_theorem41_k3_check_fails_below_threshold():
    # rank 1 on an instance with spurious minima (r(r+1)/2 = 1 <= KN = 12): the same check fails
    assert not evaluate(_end_gap(1), "<=", TOL3).passed
