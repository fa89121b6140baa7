import dataclasses

import numpy as np
import pytest
import torch

import lorabook as lb
from lorabook import config


def test_unset_scale_is_default(clean_scale_env):
    assert lb.get_scale().name == "default"


@pytest.mark.parametrize("name", ["quick", "default", "paper"])
def test_each_scale_from_env(clean_scale_env, name):
    clean_scale_env.setenv("LORABOOK_SCALE", name)
    s = lb.get_scale()
    assert s.name == name and str(s) == name


def test_scales_grow(clean_scale_env):
    q, d, p = (lb.get_scale(n) for n in ("quick", "default", "paper"))
    assert q.seeds < d.seeds < p.seeds and q.steps < d.steps < p.steps and q.tol >= d.tol >= p.tol


@pytest.mark.parametrize("bad", ["fast", "QUICK", "full", "1"])
def test_bad_scale_env_raises(clean_scale_env, bad):
    clean_scale_env.setenv("LORABOOK_SCALE", bad)
    with pytest.raises(ValueError, match="LORABOOK_SCALE.*quick, default, paper"):
        lb.get_scale()


def test_bad_scale_argument_raises():
    with pytest.raises(ValueError, match="not a scale"):
        lb.get_scale("huge")


def test_scale_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        lb.get_scale("quick").seeds = 100


def test_pick():
    assert lb.get_scale("quick").pick(quick=1, default=2, paper=3) == 1
    assert lb.get_scale("paper").pick(quick=1, default=2, paper=3) == 3


def test_device_is_cpu_or_cuda():
    assert lb.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_seed_everything_is_reproducible():
    g1, r1 = lb.seed_everything(7)
    a = torch.randn(5, generator=g1), r1.normal(size=5)
    g2, r2 = lb.seed_everything(7)
    b = torch.randn(5, generator=g2), r2.normal(size=5)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_seed_everything_rejects_bad_seed(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        lb.seed_everything(bad)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LORABOOK_CACHE", "off")
    assert config.cache_dir() is None
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    assert config.cache_dir() == tmp_path
    monkeypatch.delenv("LORABOOK_CACHE")
    assert config.cache_dir().name == "lorabook"


def test_describe_mentions_scale_and_device(clean_scale_env):
    text = lb.describe()
    assert "scale=default" in text and "device=" in text


def test_few_threads_restores_and_skips_large_or_gpu_programs():
    saved = torch.get_num_threads()
    with config.few_threads(10):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == saved
    torch.set_num_threads(2)
    try:
        with config.few_threads(1 << 30):
            assert torch.get_num_threads() == 2
        with config.few_threads(10, "cuda"):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
