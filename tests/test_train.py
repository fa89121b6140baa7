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


def test_batched_adam_defaults_steps_and_messages():
    x = torch.zeros(2, dtype=torch.float64)  # one scalar parameter per slice: shape (B,)
    seen = []

    def loss(step):
        seen.append(step)
        return (x - 1.0).square()

    rec = batched_adam([x], loss, 3, 0.1)
    assert seen == [0, 1, 2]                                   # loss_fn gets the 0-based step
    assert rec.shape == (0, 2) and rec.dtype == torch.float64 and rec.device == x.device  # no records by default
    with pytest.raises(ValueError, match="^params must be a non-empty sequence of tensors with a leading batch"):
        batched_adam([], loss, 3, 0.1)
    y = torch.zeros(3, 2)
    with pytest.raises(FloatingPointError, match=r"^non-finite loss at step 2 in slices \[1\]$"):
        batched_adam([y], lambda s: y.sum(1) + torch.tensor([0.0, float("inf") if s == 2 else 0.0, 0.0]), 5, 0.1)


def test_cached_sweep_validates_its_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    for bad in ("", 5, "a/b"):
        with pytest.raises(ValueError, match="sweep name must be a non-empty string without '/'"):
            cached_sweep(bad, [{"x": 1}], lambda c: c, progress=False)
    with pytest.raises(ValueError, match="^run must be callable, got int$"):
        cached_sweep("ok", [{"x": 1}], 3, progress=False)


def test_cached_sweep_removes_stale_files_and_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("LORABOOK_CACHE", str(tmp_path))
    (tmp_path / "s" / "old-version").mkdir(parents=True)
    (tmp_path / "s" / "stray.joblib").write_text("x")
    cached_sweep("s", [{"x": 1}], lambda c: c["x"], progress=False)
    assert len(list((tmp_path / "s").iterdir())) == 1


def test_code_fingerprint_sees_closures_methods_objects_and_names():
    from lorabook.train import code_fingerprint

    def make(inner):
        return lambda c: inner(c)

    def one(c):
        return 1

    def two(c):
        return 2

    assert code_fingerprint(make(one)) != code_fingerprint(make(two))           # captured function

    class Runner:
        def __init__(self, k):
            self.k = k

        def __call__(self, c):
            return c * self.k

        def method(self, c):
            return c + 1

    class Other(Runner):
        def __call__(self, c):
            return c - self.k

    assert code_fingerprint(Runner(1)) == code_fingerprint(Runner(2)) != code_fingerprint(Other(1))
    assert code_fingerprint(Runner(1).method) != code_fingerprint(Runner(1))
    assert code_fingerprint(lambda c: abs(c)) != code_fingerprint(lambda c: round(c))   # global names
    assert code_fingerprint(lambda c: c in {"a", "b"}) == code_fingerprint(lambda c: c in {"b", "a"})

    def rec(c):  # a recursive closure terminates
        return rec(c - 1) if c else 0

    assert len(code_fingerprint(rec)) == 16
    with pytest.raises(ValueError, match="needs a callable"):
        code_fingerprint(3)


def test_batched_adam_default_records_keep_dtype_and_message_lists_five_slices():
    x = torch.zeros(2, dtype=torch.float32)       # not the tests' default dtype (float64)
    assert batched_adam([x], lambda s: x.square(), 1, 0.1).dtype == torch.float32
    y = torch.zeros(8)
    with pytest.raises(FloatingPointError, match=r"in slices \[0, 1, 2, 3, 4\]$"):
        batched_adam([y], lambda s: y + float("nan"), 1, 0.1)


def test_config_key_shape_and_unserialisable_configs():
    key = config_key({"device": torch.device("cpu"), "a": 1})   # objects are written with str()
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    with pytest.raises(ValueError, match="^config is not serialisable: "):
        config_key({(1, 2): 3})


def test_code_fingerprint_nested_code_partials_and_methods():
    import functools

    from lorabook.train import code_fingerprint

    def outer_a(c):
        return list(map(lambda v: v + 1, c))

    def outer_a_again(c):
        return list(map(lambda v: v + 1, c))

    def outer_b(c):
        return list(map(lambda v: v + 2, c))

    assert code_fingerprint(outer_a) == code_fingerprint(outer_a_again) != code_fingerprint(outer_b)

    def f(a, c):
        return a + c

    def g(a, c):
        return a * c

    assert code_fingerprint(functools.partial(f, 1)) != code_fingerprint(functools.partial(g, 1))

    class Two:
        def plus(self, c):
            return c + 1

        def minus(self, c):
            return c - 1

    t = Two()
    assert code_fingerprint(t.plus) != code_fingerprint(t.minus)

    def adder(k):
        return lambda c: c + k

    assert code_fingerprint(adder(1)) == code_fingerprint(adder(2))   # captured values are not hashed
    with pytest.raises(ValueError, match="^code_fingerprint needs a callable, got int$"):
        code_fingerprint(3)


def test_code_fingerprint_of_set_constants_is_independent_of_the_hash_seed():
    import subprocess
    import sys

    from lorabook.train import code_fingerprint

    assert code_fingerprint(lambda c: c in {"a", "b"}) != code_fingerprint(lambda c: c in {"a", "c"})
    prog = ("from lorabook.train import code_fingerprint as f; "
            "print(f(lambda c: c in {'x', 'y', 'z', 'w'})); print(list({'x', 'y', 'z', 'w'}))")
    outs = [subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout.split("\n")
            for seed in (1, 2)]
    assert outs[0][1] != outs[1][1], outs  # the two hash seeds iterate the set in different orders ...
    assert outs[0][0] == outs[1][0], outs  # ... and the fingerprint is the same
