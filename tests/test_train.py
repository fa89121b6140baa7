import pytest
import torch

from lorabook.train import batched_adam, cached_sweep, config_key


@pytest.mark.parametrize("eps, scale", [(1e-8, 1.0), (0.3, 1.0), (1e-8, 1e-9)])
def test_batched_adam_equals_independent_runs(eps, scale):
    """Per-slice learning rates and weight decays, all distinct (a mis-indexed slice changes the result), checked
    against ``torch.optim.Adam`` run once per slice; eps large or gradients tiny so that eps is active."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 4, generator=g, dtype=torch.float64)
    lrs = torch.tensor([1e-2, 5e-2, 1e-1], dtype=torch.float64)
    wds = torch.tensor([0.0, 0.3, 0.05], dtype=torch.float64)
    x = torch.zeros(3, 4, dtype=torch.float64)
    batched_adam([x], lambda s: scale * (x - targets).square().sum(1), 200, lrs, weight_decay=wds, eps=eps)
    for b in range(3):
        y = torch.zeros(4, requires_grad=True, dtype=torch.float64)
        opt = torch.optim.Adam([y], lr=lrs[b].item(), weight_decay=wds[b].item(), eps=eps)
        for _ in range(200):
            opt.zero_grad()
            (scale * (y - targets[b]).square().sum()).backward()
            opt.step()
        assert torch.allclose(x[b], y.detach(), rtol=0, atol=1e-12), b


def test_batched_adam_one_step_by_hand():
    """First Adam step from x0 = 1 on L = x²: g = 2 + wd, m̂ = g, v̂ = g², step = lr·g/(|g| + eps)."""
    x = torch.ones(2, 1, dtype=torch.float64)
    batched_adam([x], lambda s: x.square().sum(1), 1, torch.tensor([0.1, 0.2], dtype=torch.float64),
                 weight_decay=torch.tensor([0.0, 2.0], dtype=torch.float64), eps=1.0)
    expected = torch.tensor([[1 - 0.1 * 2 / 3], [1 - 0.2 * 4 / 5]], dtype=torch.float64)
    assert torch.allclose(x.detach(), expected, rtol=0, atol=1e-15)


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


def test_cached_sweep_recomputes_a_corrupted_or_truncated_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    calls = []

    def run(cfg):
        calls.append(cfg["x"])
        return {"value": cfg["x"] * 10, "pad": list(range(100))}

    assert cached_sweep("corrupt", [{"x": 1}, {"x": 2}], run, progress=False)[1]["value"] == 20
    files = sorted((tmp_path / "corrupt").rglob("*.joblib"))
    assert len(files) == 2
    files[0].write_bytes(files[0].read_bytes()[:20])    # truncated
    files[1].write_bytes(b"not a pickle at all")          # corrupted
    with pytest.warns(RuntimeWarning, match="is unreadable.*recomputing"):
        out = cached_sweep("corrupt", [{"x": 1}, {"x": 2}], run, progress=False)
    assert [o["value"] for o in out] == [10, 20] and calls == [1, 2, 1, 2]
    assert cached_sweep("corrupt", [{"x": 1}, {"x": 2}], run, progress=False)[0]["value"] == 10
    assert calls == [1, 2, 1, 2]  # rewritten files are served again


def test_cached_sweep_keys_hold_the_code_version(monkeypatch, tmp_path):
    """A change of the package source or of the run function recomputes; older versions are deleted."""
    from lorabook import train

    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    calls = []

    def run(cfg):
        calls.append(1)
        return cfg["x"]

    cached_sweep("versions", [{"x": 1}], run, progress=False)
    cached_sweep("versions", [{"x": 1}], run, progress=False)
    assert len(calls) == 1
    monkeypatch.setattr(train, "source_hash", lambda: "edited-package")
    cached_sweep("versions", [{"x": 1}], run, progress=False)
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "versions").iterdir()] == ["edited-package"]

    def run_changed(cfg):
        calls.append(1)
        return cfg["x"] + 1

    assert cached_sweep("versions", [{"x": 1}], run_changed, progress=False) == [2] and len(calls) == 3


def test_code_fingerprint():
    import functools

    from lorabook.train import code_fingerprint

    def f(c):
        return c + 1

    def g(c):
        return c + 2

    def f_again(c):
        return c + 1

    assert code_fingerprint(f) == code_fingerprint(f_again) != code_fingerprint(g)
    assert code_fingerprint(lambda c: f(c)) != code_fingerprint(lambda c: g(c))
    assert code_fingerprint(functools.partial(f, 1)) != code_fingerprint(functools.partial(f, 2))


def test_config_key_is_order_independent():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 2, "b": 1})


def test_cached_sweep_bad_name():
    with pytest.raises(ValueError, match="sweep name"):
        cached_sweep("a/b", [], lambda c: c)
