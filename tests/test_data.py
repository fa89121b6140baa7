import numpy as np
import pytest
import torch

from lorabook import data


def test_rotten_tomatoes_counts():
    texts, labels = data.load_rotten_tomatoes()
    assert len(texts) == len(labels) == 7_403 + 5_405
    assert labels.sum() == 7_403


def test_split_is_balanced_disjoint_reproducible():
    a = data.rotten_tomatoes_split(16, 200, seed=1)
    b = data.rotten_tomatoes_split(16, 200, seed=1)
    assert a["train_texts"] == b["train_texts"] and a["test_texts"] == b["test_texts"]
    assert a["train_labels"].sum() == 16 and len(a["train_labels"]) == 32
    # disjoint by index; the corpus repeats a few snippets verbatim, so allow a rare identical text
    assert len(set(a["train_texts"]) & set(a["test_texts"])) <= 2


@pytest.mark.parametrize("kw, match", [
    ({"n_train_per_class": 0, "n_test": 5}, "n_train_per_class must be a positive integer"),
    ({"n_train_per_class": 6_000, "n_test": 5}, "exceeds the smaller class"),
    ({"n_train_per_class": 5, "n_test": 20_000}, "n_test=20000 too large"),
    ({"n_train_per_class": 5, "n_test": 2.5}, "n_test must be a positive integer"),
])
def test_split_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        data.rotten_tomatoes_split(seed=0, **kw)


def test_minilm_layers_compose():
    h0, m = data.hidden_before_layer(["a fine film", "dull and long"], 0, max_length=16)
    h5, _ = data.hidden_before_layer(["a fine film", "dull and long"], 5, max_length=16)
    h6, _ = data.hidden_before_layer(["a fine film", "dull and long"], 6, max_length=16)
    model = data.load_minilm()[1]
    with torch.no_grad():
        e_from0 = data.run_layers(h0.float(), m, 0, model)
        e_from5 = data.run_layers(h5.float(), m, 5, model)
    e = data.mean_pool(h6.float(), m)
    assert torch.allclose(e_from0, e, atol=1e-4) and torch.allclose(e_from5, e, atol=1e-5)
    logits = data.zero_shot_logit(e)
    assert logits.shape == (2,) and logits[0] > logits[1]


def test_data_bad_input():
    with pytest.raises(ValueError, match="layer must be an integer in"):
        data.hidden_before_layer(["x"], 7)
    with pytest.raises(ValueError, match="texts must be a non-empty"):
        data.hidden_before_layer([], 3)
    with pytest.raises(ValueError, match="mask must have shape"):
        data.attention_bias(torch.ones(3))
    with pytest.raises(ValueError, match="need hidden"):
        data.mean_pool(torch.ones(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="temperature must be positive"):
        data.zero_shot_logit(torch.ones(2, 384), torch.ones(2, 384), temperature=0)
