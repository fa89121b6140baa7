import pytest
import torch

from lorabook.train import batched_adam, cached_sweep, config_key


def test_batched_adam_equals_independent_runs():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 4, generator=g)
    lrs = torch.tensor([1e-2, 5e-2, 1e-1])
    wds = torch.tensor([0.0, 0.1, 0.0])
    x = torch.zeros(3, 4)
    batched_adam([x], lambda s: (x - targets).square().sum(1), 50, lrs, weight_decay=wds)
    for b in range(3):
        y = torch.zeros(4, requires_grad=True)
        opt = torch.optim.Adam([y], lr=lrs[b].item(), weight_decay=wds[b].item())
        for _ in range(50):
            opt.zero_grad()
            (y - targets[b]).square().sum().backward()
            opt.step()
        assert torch.allclose(x[b], y.detach(), atol=1e-10)


def test_batched_adam_records_and_projects():
    x = torch.zeros(2, 3)
    rec = batched_adam([x], lambda s: (x - 5.0).square().sum(1), 25, 0.5, record_every=10,
                       project=lambda: x.clamp_(-1.0, 1.0))
    assert rec.shape == (3, 2)  # steps 10, 20, 25
    assert x.abs().max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": torch.ones(3)}, "lr must be a scalar or a vector of length B=2"),
        ({"lr": -1.0}, "lr must be finite and non-negative"),
        ({"weight_decay": float("nan")}, "weight_decay must be finite"),
    ],
)
def test_batched_adam_bad_input(kwargs, match):
    x = torch.zeros(2, 3)
    args = {"steps": 5, "lr": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        batched_adam([x], lambda s: x.square().sum(1), **args)


def test_batched_adam_wrong_loss_shape_and_nan():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"loss_fn must return shape \(B,\)"):
        batched_adam([x], lambda s: x.square().sum(), 3, 0.1)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        batched_adam([x], lambda s: x.sum(1) * float("nan"), 3, 0.1)
    with pytest.raises(ValueError, match="leading batch dimension"):
        batched_adam([x, torch.zeros(3, 1)], lambda s: x.sum(1), 3, 0.1)


def test_cached_sweep_resumes(monkeypatch, tmp_path):
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    calls = []

    def run(cfg):
        calls.append(cfg["x"])
        return cfg["x"] ** 2

    assert cached_sweep("squares", [{"x": 1}, {"x": 2}], run, progress=False) == [1, 4]
    assert cached_sweep("squares", [{"x": 1}, {"x": 2}, {"x": 3}], run, progress=False) == [1, 4, 9]
    assert calls == [1, 2, 3]  # the rerun computed only the new config
    monkeypatch.setenv("LORABOOK_CACHE", "off")
    cached_sweep("squares", [{"x": 1}], run, progress=False)
    assert calls == [1, 2, 3, 1]


def test_config_key_is_order_independent():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 2, "b": 1})


def test_cached_sweep_bad_name():
    with pytest.raises(ValueError, match="sweep name"):
        cached_sweep("a/b", [], lambda c: c)
