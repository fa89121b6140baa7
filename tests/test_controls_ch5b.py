"""Negative controls of the theorem claims of chapter 5's pretrained-vs-random and NTK-regime sections: the same
check as in the notebook, on an input where the hypothesis is violated, must fail; the genuine input passes."""
from functools import lru_cache

import pytest

from lorabook import real
from lorabook.checks import evaluate

pytest.importorskip("peft")

SPLIT = dict(classes=["fresh", "rotten"], n_train=16, n_dev=8, n_test=64, split_seed=0, rank=0,
             targets=["query", "value"], lr=1e-3, steps=1, batch_size=16, max_length=32)


def _probe(model, seed):
    return real.probe_lora_run(dict(SPLIT, model=model, model_seed=seed, seed=seed))["test"]["bacc"]


def test_closeness_fails_between_two_random_models():
    # hypothesis violated: neither frozen model is closer to the task (both random, different draws)
    near = [_probe("random", s) for s in (0, 1)]
    far = [_probe("random", s) for s in (2, 3)]
    assert not evaluate(real.closeness_margin(near, far), ">", 2.0).passed


def test_closeness_passes_pretrained_vs_random_probe():
    near = [_probe("pretrained", s) for s in (0, 1)]
    far = [_probe("random", s) for s in (0, 1)]
    assert evaluate(real.closeness_margin(near, far), ">", 2.0).passed


NTK = dict(classes=["fresh", "rotten"], n_train=4, n_dev=2, n_test=16, split_seed=0, rank=16, steps=3,
           checkpoints=[3], batch_size=8, temperature=0.05, max_length=32, n_probe=8)


@lru_cache(maxsize=4)
def _worst_miss(lr):
    runs = [real.ntk_pair_run(dict(NTK, lr=lr, seed=s)) for s in (0, 1)]
    return max(r["checkpoints"][-1]["agree"]["rel"] for r in runs)


def test_linearisation_check_fails_far_outside_the_regime():
    # hypothesis violated: a learning rate of 0.3 moves the weights by more than their own size in 3 steps
    assert not evaluate(_worst_miss(0.3), "<=", 0.2).passed


def test_linearisation_check_passes_at_a_small_rate():
    assert evaluate(_worst_miss(1e-4), "<=", 0.2).passed
