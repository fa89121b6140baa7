"""The pretrained-vs-random and NTK-regime helpers of lorabook.real: our linearisation against torch.func.jvp
and against peft's real LoRA, the weight kernel against explicit gradients, and input validation."""
import math

import numpy as np
import pytest
import torch

from lorabook import real

pytest.importorskip("peft")


def tiny_layer(seed=0, d=16):
    """A random BERT layer of width d (2 heads), float64, frozen, eval mode."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=d, num_attention_heads=2, intermediate_size=2 * d, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    layer = BertLayer(cfg).double().eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


def tiny_inputs(n=5, T=6, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, T, d, generator=g, dtype=torch.float64)
    lengths = torch.tensor([T, T - 1, 3, T - 2, 2][:n])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    dirs = torch.randn(2, d, generator=g, dtype=torch.float64)
    return h, mask, dirs / dirs.norm(dim=1, keepdim=True)


def random_factors(r=3, d=16, seed=2, size=0.1):
    g = torch.Generator().manual_seed(seed)
    return {n: (size * torch.randn(r, d, generator=g, dtype=torch.float64),
                size * torch.randn(d, r, generator=g, dtype=torch.float64)) for n in ("query", "value")}


def test_linearisation_matches_forward_mode_ad():
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    fac = real.layer_jacobian_factors(layer, h, m, dirs)
    assert torch.allclose(fac["f0"], real.layer_logit(layer, h, m, dirs), rtol=0, atol=1e-12)
    factors = random_factors()
    ours = real.linearised_logit(fac, factors) - fac["f0"]
    ref = real.jvp_logit(layer, h, m, dirs, {n: B @ A for n, (A, B) in factors.items()})
    assert ref.abs().max() > 1e-3  # the derivative is not trivially zero
    assert torch.allclose(ours, ref, rtol=0, atol=1e-10)


def test_padding_tokens_carry_no_gradient():
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    fac = real.layer_jacobian_factors(layer, h, m, dirs)
    for U in fac["U"].values():
        assert U[m == 0].abs().max() < 1e-14


def test_linearisation_is_the_first_order_term_of_peft_lora():
    # peft's real LoRA layer at factors t·(A, B): f(t) - f0 = t^2 <G, BA> + O(t^4) (the update is t^2 B A)
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    fac = real.layer_jacobian_factors(layer, h, m, dirs)
    factors = random_factors(r=2)
    model = real.peft_wrap(layer, 2, ("query", "value"), seed=0)
    lin = real.linearised_logit(fac, factors) - fac["f0"]
    errs = []
    for t in (0.2, 0.1):
        with torch.no_grad():
            for n, (A, B) in factors.items():
                mod = model.get_submodule(f"base_model.model.attention.self.{n}")
                mod.lora_A["default"].weight.copy_(t * A)
                mod.lora_B["default"].weight.copy_(t * B)
            f = real.layer_logit(model, h, m, dirs)
        errs.append(float(((f - fac["f0"]) / t ** 2 - lin).abs().max()))
    assert errs[1] < 0.3 * errs[0]  # second-order remainder: the error shrinks like t^2
    assert errs[1] < 1e-2 * float(lin.abs().max())


def test_peft_layer_at_init_is_the_frozen_layer_and_merging_keeps_the_function():
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    model = real.peft_wrap(layer, 3, ("query", "value"), seed=4)
    assert torch.allclose(real.layer_logit(model, h, m, dirs), real.layer_logit(layer, h, m, dirs), atol=1e-12)
    with torch.no_grad():
        for n in ("query", "value"):
            model.get_submodule(f"base_model.model.attention.self.{n}").lora_B["default"].weight.normal_()
    f_peft = real.layer_logit(model, h, m, dirs)
    fac = real.layer_jacobian_factors(model, h, m, dirs)  # merged copy
    assert torch.allclose(fac["f0"], f_peft, atol=1e-10)
    assert not torch.allclose(f_peft, real.layer_logit(layer, h, m, dirs), atol=1e-6)


def test_weight_kernel_matches_explicit_gradients():
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    fac = real.layer_jacobian_factors(layer, h, m, dirs)
    Ws = [layer.attention.self.query.weight, layer.attention.self.value.weight]
    grads = []
    for i in range(h.shape[0]):
        for W in Ws:
            W.requires_grad_(True)
        f = real.layer_logit(layer, h[i:i + 1], m[i:i + 1], dirs)
        gs = torch.autograd.grad(f.sum(), Ws)
        grads.append(torch.cat([g.flatten() for g in gs]))
        for W in Ws:
            W.requires_grad_(False)
    G = torch.stack(grads)
    assert torch.allclose(real.weight_kernel(fac), G @ G.T, rtol=1e-10, atol=1e-12)


def test_kernel_drift_and_agreement():
    K0 = torch.eye(3, dtype=torch.float64)
    assert real.kernel_drift(K0, K0) == 0.0
    assert math.isclose(real.kernel_drift(K0, 2 * K0), 1.0)
    with pytest.raises(ValueError, match="zero"):
        real.kernel_drift(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="square"):
        real.kernel_drift(torch.eye(2), torch.eye(3))
    f0 = torch.tensor([0.5, -0.5, 1.0])
    a = real.agreement(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0]), f0)
    assert a == {"sign": 1.0, "rel": 0.0}
    b = real.agreement(torch.tensor([1.0, -1.0, 2.0]), f0, f0)
    assert b["rel"] == pytest.approx(1.0)
    assert real.agreement(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 1.0]), torch.zeros(2))["sign"] == 0.5
    with pytest.raises(ValueError, match=r"\(n,\)"):
        real.agreement(torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_validation_of_layer_inputs_and_factors():
    layer = tiny_layer()
    h, m, dirs = tiny_inputs()
    with pytest.raises(ValueError, match="mask"):
        real.layer_logit(layer, h, m[:, :-1], dirs)
    with pytest.raises(ValueError, match="directions"):
        real.layer_logit(layer, h, m, dirs[:1])
    bad = h.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        real.layer_logit(layer, bad, m, dirs)
    fac = real.layer_jacobian_factors(layer, h, m, dirs)
    A, B = random_factors()["query"]
    with pytest.raises(ValueError, match="factors of 'query'"):
        real.linearised_logit(fac, {"query": (A, B[:, :2])})
    with pytest.raises(ValueError, match="delta of 'key'"):
        real.jvp_logit(layer, h, m, dirs, {"key": torch.zeros(3, 3, dtype=torch.float64)})


def test_closeness_margin():
    assert real.closeness_margin([0.8, 0.82], [0.6, 0.62]) == pytest.approx(0.2 / math.sqrt(2e-4))
    assert real.closeness_margin([0.7, 0.7], [0.7, 0.7]) == 0.0  # floor of the deviation: no division by 0
    assert real.closeness_margin([0.71, 0.71], [0.7, 0.7]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="at least 2"):
        real.closeness_margin([0.7], [0.6, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        real.closeness_margin([0.7, float("nan")], [0.6, 0.5])


def test_fit_probe_and_standardise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = (x[:, 0] > 0).long()
    head = real.fit_probe(x, y, weight_decay=1e-3)
    assert ((head(x).argmax(1) == y).double().mean()) > 0.95
    std = real.Standardise(3 + 2 * x)
    z = std(3 + 2 * x)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-5) and torch.allclose(z.std(0), torch.ones(5))
    with pytest.raises(ValueError, match="two classes"):
        real.fit_probe(x, torch.zeros(40, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        real.fit_probe(x[:, 0], y)
    with pytest.raises(ValueError, match="n >= 2"):
        real.Standardise(x[:1])


def test_minilm_random_is_seeded_and_leaves_the_global_generator():
    state = torch.random.get_rng_state()
    a, b, c = real.minilm_random(3), real.minilm_random(3), real.minilm_random(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa = a.encoder.layer[0].attention.self.query.weight
    assert torch.equal(wa, b.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(wa, c.encoder.layer[0].attention.self.query.weight)
    assert abs(float(wa.std()) - 0.02) < 0.002  # BERT's initializer_range
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(ValueError, match="seed"):
        real.minilm_random(-1)


def test_peft_wrap_starts_at_the_frozen_model_and_validates():
    layer = tiny_layer()
    model = real.peft_wrap(layer, 2, ("query",), seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 and all("lora_" in n for n in trainable)
    B = model.get_submodule("base_model.model.attention.self.query").lora_B["default"].weight
    assert torch.count_nonzero(B) == 0
    assert layer.attention.self.query.__class__.__name__ == "Linear"  # the base is untouched
    with pytest.raises(ValueError, match="rank"):
        real.peft_wrap(layer, 0)
    with pytest.raises(ValueError, match="targets"):
        real.peft_wrap(layer, 2, ("nope",))


def test_run_configs_are_validated():
    with pytest.raises(ValueError, match="lacks"):
        real.probe_lora_run({"model": "pretrained"})
    base = dict(model="pretrained", model_seed=0, classes=["fresh", "rotten"], n_train=2, n_dev=2, n_test=4,
                split_seed=0, rank=1, targets=["query"], lr=1e-3, steps=1, batch_size=2, seed=0, max_length=8)
    with pytest.raises(ValueError, match="model must be"):
        real.probe_lora_run(dict(base, model="other"))
    with pytest.raises(ValueError, match="lr"):
        real.probe_lora_run(dict(base, lr=float("nan")))
    with pytest.raises(ValueError, match="rank"):
        real.probe_lora_run(dict(base, rank=-1))
    ntk = dict(classes=["fresh", "rotten"], n_train=2, n_dev=2, n_test=4, split_seed=0, rank=2, lr=1e-3,
               steps=2, checkpoints=[1], batch_size=4, seed=0, temperature=0.05, max_length=8, n_probe=4)
    with pytest.raises(ValueError, match="checkpoints"):
        real.ntk_pair_run(ntk)
    with pytest.raises(ValueError, match="lacks"):
        real.ntk_pair_run({"lr": 1.0})


def test_probe_run_on_a_tiny_split():
    cfg = dict(model="random", model_seed=0, classes=["fresh", "rotten"], n_train=4, n_dev=4, n_test=8,
               split_seed=0, rank=1, targets=["query", "value"], lr=1e-3, steps=1, batch_size=4, seed=0,
               max_length=8)
    out = real.probe_lora_run(cfg)
    assert set(out) >= {"dev", "test", "probe", "params", "seconds", "probe_decay"}
    assert out["params"] == 6 * 2 * (384 + 384)
    assert 0 <= out["test"]["bacc"] <= 1 and np.isfinite(out["test"]["loss"])


def test_embed_on_and_base_model_validate():
    model = real._base_model("pretrained", 0)
    e = real.embed_on(model, ["a fine film", "dull"], max_length=8)
    assert e.shape == (2, 384)
    # the same embedding as the book's embed (dynamic padding both ways)
    assert torch.allclose(e, real.embed(model, ["a fine film", "dull"], max_length=8), atol=1e-6)
    with pytest.raises(ValueError, match="texts"):
        real.embed_on(model, "a string")
    with pytest.raises(ValueError, match="max_length"):
        real.embed_on(model, ["x"], max_length=1)
    with pytest.raises(ValueError, match="model must be"):
        real._base_model("other", 0)


def test_hidden_before_matches_the_full_forward():
    from lorabook import data as dt

    texts = ["a fine film", "dull, long and loud", "the plot of a movie about a dog and its boy", "ok"]
    h1, m1 = dt.hidden_before_layer(texts, 3, max_length=16)
    h2, m2 = real.hidden_before(texts, 3, max_length=16)
    T = h2.shape[1]
    assert T == int(m1.sum(1).max()) and torch.equal(m1[:, :T], m2)
    assert ((h1[:, :T] - h2) * m2[..., None]).abs().max() < 1e-4
    assert (h2[m2 == 0] == 0).all()
    with pytest.raises(ValueError, match="layer"):
        real.hidden_before(texts, 6)
    with pytest.raises(ValueError, match="texts"):
        real.hidden_before([], 2)
