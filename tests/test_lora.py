import pytest
import torch
from torch import nn

from lorabook import LoRALinear, numerical_rank


@pytest.fixture
def base():
    torch.manual_seed(0)
    return nn.Linear(12, 8)


@pytest.mark.parametrize("mode, trained, frozen", [("both", "AB", ""), ("A", "A", "B"), ("B", "B", "A")])
def test_modes_freeze_and_count(base, gen, mode, trained, frozen):
    layer = LoRALinear(base, 3, train=mode, generator=gen)
    assert all(not p.requires_grad for p in layer.base.parameters())
    for k in trained:
        assert getattr(layer, k).requires_grad
    for k in frozen:
        assert not getattr(layer, k).requires_grad
    expected = {"both": 3 * (12 + 8), "A": 3 * 12, "B": 3 * 8}[mode]
    assert layer.num_trainable() == expected
    assert layer.num_adapter() == 3 * (12 + 8)
    assert torch.count_nonzero(layer.delta_weight()) == 0  # starts at the pretrained weight


def test_frozen_factor_has_requested_std(gen):
    layer = LoRALinear(nn.Linear(400, 300), 50, train="A", init_std=0.5, generator=gen)
    assert layer.B.std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.count_nonzero(layer.A) == 0


def test_generator_makes_draws_reproducible(base):
    a = LoRALinear(base, 2, train="B", generator=torch.Generator().manual_seed(3)).A
    b = LoRALinear(base, 2, train="B", generator=torch.Generator().manual_seed(3)).A
    assert torch.equal(a, b)


def test_forward_delta_merge_agree(base, gen):
    layer = LoRALinear(base, 4, alpha=8.0, generator=gen)
    with torch.no_grad():
        layer.B.normal_(generator=gen)
    x = torch.randn(5, 7, 12, generator=gen)
    W = base.weight + layer.delta_weight()
    assert torch.allclose(layer(x), x @ W.T + base.bias)
    assert torch.allclose(layer.merge()(x), layer(x))
    assert layer.scaling == 2.0
    assert numerical_rank(layer.delta_weight()) == 4


def test_merge_without_bias(gen):
    layer = LoRALinear(nn.Linear(6, 6, bias=False), 2, generator=gen)
    assert layer.merge().bias is None


def test_gradients_reach_only_trainable(base, gen):
    layer = LoRALinear(base, 2, train="A", generator=gen)
    layer(torch.randn(4, 12, generator=gen)).sum().backward()
    assert layer.A.grad is not None and layer.B.grad is None and base.weight.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, r"rank=0 is out of range"),
        ({"rank": -2}, r"rank=-2 is out of range"),
        ({"rank": 9}, r"rank=9 is out of range: it must lie in \[1, min\(d_in, d_out\)\] = \[1, 8\]"),
        ({"rank": 2.0}, "rank must be an integer"),
        ({"rank": 2, "train": "C"}, "train='C' is not a mode"),
        ({"rank": 2, "init_std": 0.0}, "init_std must be a positive"),
        ({"rank": 2, "init_std": float("nan")}, "init_std must be a positive"),
        ({"rank": 2, "alpha": -1.0}, "alpha must be a positive"),
    ],
)
def test_bad_arguments(base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(base, **kwargs)


def test_non_linear_base():
    with pytest.raises(ValueError, match="base must be an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(3, 3, 1), 1)


def test_wrong_input_width(base, gen):
    with pytest.raises(ValueError, match="expected d_in=12"):
        LoRALinear(base, 2, generator=gen)(torch.randn(3, 11))
