"""The book's LoRALinear and peft's LoRA layer compute the same function on the same factors."""
import copy

import pytest
import torch
from torch import nn

from lorabook.lora import MODES, LoRALinear
from lorabook.real import init_factors, load_lora_into_peft, set_mode

peft = pytest.importorskip("peft")


class Tiny(nn.Module):
    def __init__(self, d_in=7, d_out=5):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def pair(mode, rank=3, seed=0):
    """A book LoRALinear and a peft-wrapped copy of the same base layer, factors copied across."""
    torch.manual_seed(seed)
    base = nn.Linear(7, 5).double()
    g = torch.Generator().manual_seed(seed)
    book = LoRALinear(copy.deepcopy(base), rank, train=mode, generator=g)
    with torch.no_grad():  # non-zero factors in every mode, so both products matter
        book.A.add_(0.3 * torch.randn(book.A.shape, generator=g, dtype=book.A.dtype))
        book.B.add_(0.3 * torch.randn(book.B.shape, generator=g, dtype=book.B.dtype))
    tiny = Tiny().double()
    tiny.proj = copy.deepcopy(base)
    cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"], lora_dropout=0.0)
    model = peft.get_peft_model(tiny, cfg)
    layer = model.base_model.model.proj
    set_mode(model, mode)
    load_lora_into_peft(book, layer)
    return book, model, layer


@pytest.mark.parametrize("mode", MODES)
def test_same_outputs_and_gradients_only_to_trained_factor(mode):
    book, model, layer = pair(mode)
    x = torch.randn(4, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_book, y_peft = book(x), model(x)
    assert torch.allclose(y_book, y_peft, rtol=0, atol=1e-12)
    # and the update is not zero, so the comparison tests the LoRA path
    assert (y_book - book.base(x)).abs().max() > 1e-3
    w = torch.randn(y_book.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (y_book * w).sum().backward()
    (y_peft * w).sum().backward()
    pA, pB = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    trained = {"both": ("A", "B"), "A": ("A",), "B": ("B",)}[mode]
    for name, bp, pp in (("A", book.A, pA), ("B", book.B, pB)):
        if name in trained:
            assert pp.requires_grad and pp.grad is not None and bp.grad is not None
            assert torch.allclose(bp.grad, pp.grad, rtol=0, atol=1e-12)
        else:
            assert not pp.requires_grad and pp.grad is None and bp.grad is None
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(trained)


def test_float32_agreement_with_scaling():
    torch.manual_seed(0)
    base = nn.Linear(7, 5).float()
    book = LoRALinear(copy.deepcopy(base), 2, train="B", alpha=4.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        book.B.normal_()
    tiny = Tiny().float()
    tiny.proj = copy.deepcopy(base)
    model = peft.get_peft_model(tiny, peft.LoraConfig(r=2, lora_alpha=2, target_modules=["proj"]))
    layer = load_lora_into_peft(book, model.base_model.model.proj)
    assert layer.scaling["default"] == book.scaling == 2.0
    x = torch.randn(10, 7, dtype=torch.float32)
    assert torch.allclose(book(x), model(x), rtol=0, atol=1e-6)


def test_init_factors_start_at_the_pretrained_layer():
    for mode in MODES:
        tiny = Tiny().float()
        model = peft.get_peft_model(tiny, peft.LoraConfig(r=2, lora_alpha=2, target_modules=["proj"]))
        init_factors(model, mode, torch.Generator().manual_seed(0))
        layer = model.base_model.model.proj
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.count_nonzero(B @ A) == 0
        random = B if mode == "A" else A
        assert torch.count_nonzero(random) == random.numel()
        x = torch.randn(3, 7, dtype=torch.float32)
        assert torch.equal(model(x), layer.base_layer(x))


def test_minilm_attention_layer_matches():
    """One attention projection of the real MiniLM: peft on MiniLM's query weights equals LoRALinear."""
    from lorabook.real import peft_minilm

    model = peft_minilm(2, ("query",), "B", seed=0)
    layer = model.base_model.model.encoder.layer[0].attention.self.query
    book = LoRALinear(copy.deepcopy(layer.base_layer), 2, train="B", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        book.B.normal_(0, 0.01)
    load_lora_into_peft(book, layer)
    x = torch.randn(2, 9, 384, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    assert torch.allclose(book(x), layer(x), rtol=0, atol=1e-5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 6 and all("lora_B" in n for n in trainable)


def test_validation():
    from lorabook.real import embed, peft_minilm, peft_run

    book, model, layer = pair("both")
    with pytest.raises(ValueError, match="LoRALinear"):
        load_lora_into_peft(nn.Linear(7, 5), layer)
    with pytest.raises(ValueError, match="peft LoRA layer"):
        load_lora_into_peft(book, nn.Linear(7, 5))
    with pytest.raises(ValueError, match="adapter"):
        load_lora_into_peft(book, layer, adapter="other")
    other = LoRALinear(nn.Linear(7, 5).double(), 3)
    with pytest.raises(ValueError, match="base weight"):
        load_lora_into_peft(other, layer)
    wrong_rank = LoRALinear(copy.deepcopy(layer.base_layer), 2)
    with pytest.raises(ValueError, match="rank differs"):
        load_lora_into_peft(wrong_rank, layer)
    with pytest.raises(ValueError, match="mode"):
        set_mode(model, "C")
    with pytest.raises(ValueError, match="no peft LoRA layer"):
        set_mode(Tiny(), "A")
    with pytest.raises(ValueError, match="generator"):
        init_factors(model, "A", 0)
    with pytest.raises(ValueError, match="rank"):
        peft_minilm(0)
    with pytest.raises(ValueError, match="rank"):
        peft_minilm(2.0)
    with pytest.raises(ValueError, match="mode"):
        peft_minilm(2, mode="AB")
    with pytest.raises(ValueError, match="targets"):
        peft_minilm(2, targets=("query", "nope"))
    with pytest.raises(ValueError, match="seed"):
        peft_minilm(2, seed=None)
    with pytest.raises(ValueError, match="texts"):
        embed(Tiny(), [])
    with pytest.raises(ValueError, match="max_length"):
        embed(Tiny(), ["a"], max_length=1)
    with pytest.raises(ValueError, match="lacks"):
        peft_run({"mode": "A"})


def test_length_grouped_batches_cover_an_epoch():
    import numpy as np

    from lorabook.real import length_grouped_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=100)
    batches = length_grouped_batches(lengths, 8, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert all(len(b) == 8 for b in batches) and len(set(flat.tolist())) == len(flat) == 96
    # grouping lowers the padding against random batches of the same size
    pad = lambda bs: sum(lengths[b].max() * len(b) - lengths[b].sum() for b in bs)  # noqa: E731
    perm = np.random.default_rng(1).permutation(100)
    assert pad(batches) < 0.5 * pad([perm[i:i + 8] for i in range(0, 96, 8)])
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches(lengths, 0, rng)
    with pytest.raises(ValueError, match="lengths"):
        length_grouped_batches([], 1, rng)


def test_train_subset_nested():
    import numpy as np

    from lorabook.real import train_subset

    labels = np.repeat([0, 1, 2], 4)
    assert train_subset(labels, 4, 2).tolist() == [0, 1, 4, 5, 8, 9]
    with pytest.raises(ValueError, match="n_train"):
        train_subset(labels, 4, 5)


def test_cached_top_layer_matches_the_whole_model():
    """States cached below layer 5 + the untrained top-layer peft model = MiniLM's zero-shot embedding,
    and top_peft draws the same factors as peft_minilm on the same layers."""
    from lorabook import data as dt
    from lorabook.real import peft_minilm, pooled_from_states, states_before, top_peft

    texts = ["a wonderful, moving film .", "dull", "the plot follows two brothers who inherit a farm ."]
    with torch.no_grad():
        ref = dt.mean_pool(*dt.hidden_before_layer(texts, 6))
        h, m = states_before(texts, 5)
        top = top_peft(3, ("query", "value"), "B", 7, 5)
        emb = pooled_from_states(top, h, m, 5)
    assert h.shape[:2] == m.shape and m.shape[1] < 64
    cos = torch.nn.functional.cosine_similarity(ref, emb)
    assert (cos - 1).abs().max() < 1e-6
    full = peft_minilm(3, ("query", "value"), "B", 7, layers=[5])
    a = dict((n.split("encoder.")[1], p) for n, p in full.named_parameters() if "lora_" in n)
    b = dict((n.split("encoder.")[1], p) for n, p in top.named_parameters() if "lora_" in n)
    assert a.keys() == b.keys() and len(a) == 4
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="layer"):
        states_before(texts, 7)
    with pytest.raises(ValueError, match="start"):
        top_peft(3, ("query",), "B", 0, 6)
    with pytest.raises(ValueError, match="layers"):
        peft_minilm(2, layers=[6])


def test_top_run_validation():
    from lorabook.real import top_run

    with pytest.raises(ValueError, match="lacks"):
        top_run({"mode": "A"})


def test_top_run_checkpoints_match_shorter_runs():
    """A checkpoint after k steps scores the same model as a run of k steps; eval_at is validated."""
    from lorabook.real import top_run

    cfg = dict(classes=["fresh", "rotten"], n_train=4, n_pool=4, n_dev=4, n_test=8, split_seed=0, rank=2,
               targets=["value"], mode="A", lr=1e-2, steps=3, batch_size=4, seed=1, temperature=0.05,
               max_length=16, layers=[5], n_train_eval=4)
    long = top_run(dict(cfg, steps=5, eval_at=[3, 5]))
    short = top_run(cfg)
    assert set(long["checkpoints"]) == {3, 5}
    for s in ("dev", "test"):
        assert long["checkpoints"][3][s] == pytest.approx(short[s], abs=1e-6)
        assert long["checkpoints"][5][s] == long[s]
    assert "checkpoints" not in short
    assert "dev" not in top_run(dict(cfg, steps=1, eval_dev=False))
    for bad in ([4], [-1], "3", [True]):
        with pytest.raises(ValueError, match="eval_at"):
            top_run(dict(cfg, eval_at=bad))
