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


def test_splits_three_classes_disjoint_balanced_reproducible():
    a = data.rotten_tomatoes_splits(("fresh", "rotten", "plot"), n_train_per_class=8, n_dev_per_class=4,
                                    n_test=60, seed=3)
    b = data.rotten_tomatoes_splits(("fresh", "rotten", "plot"), n_train_per_class=8, n_dev_per_class=4,
                                    n_test=60, seed=3)
    assert a["train_texts"] == b["train_texts"] and a["test_texts"] == b["test_texts"]
    assert np.bincount(a["train_labels"]).tolist() == [8, 8, 8]
    assert np.bincount(a["dev_labels"]).tolist() == [4, 4, 4]
    assert len(a["test_labels"]) == 60 and set(a["test_labels"]) <= {0, 1, 2}
    tr, dv, te = set(a["train_texts"]), set(a["dev_texts"]), set(a["test_texts"])
    assert not (tr & dv) and not (tr & te) and not (dv & te)
    # the label names the category: plot summaries are long, snippets short
    texts = np.array(a["train_texts"], dtype=object)
    assert min(len(t) for t in texts[a["train_labels"] == 2]) > np.median([len(t) for t in texts[a["train_labels"] < 2]])


@pytest.mark.parametrize("kw, match", [
    (dict(classes=("fresh",)), "classes"),
    (dict(classes=("fresh", "fresh")), "classes"),
    (dict(classes=("fresh", "meh")), "classes"),
    (dict(classes=("fresh", "plot"), n_train_per_class=1000, n_dev_per_class=98), "plot"),
    (dict(n_test=10**6), "n_test"),
    (dict(n_dev_per_class=0), "n_dev_per_class"),
])
def test_splits_reject_bad_input(kw, match):
    args = dict(n_train_per_class=4, n_dev_per_class=4, n_test=10, seed=0) | kw
    with pytest.raises(ValueError, match=match):
        data.rotten_tomatoes_splits(**args)


def test_balanced_accuracy_by_hand():
    y = torch.tensor([0, 0, 0, 1, 2])
    logits = torch.tensor([[1., 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert data.balanced_accuracy(logits, y) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert data.balanced_accuracy(torch.tensor([1., -1, -1, 2]), np.array([1, 0, 1, 1])) == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="labels"):
        data.balanced_accuracy(logits, torch.tensor([0, 0, 0, 1, 3]))
    with pytest.raises(ValueError, match="NaN"):
        data.balanced_accuracy(torch.tensor([float("nan"), 1.0]), torch.tensor([0, 1]))


def test_zero_shot_logits_difference_is_the_binary_head():
    e = torch.randn(5, 384, generator=torch.Generator().manual_seed(0))
    d = data.class_directions(("fresh", "rotten"))
    two = data.zero_shot_logits(e, d)
    assert torch.allclose(two[:, 0] - two[:, 1], data.zero_shot_logit(e.float(), d).to(two.dtype), atol=1e-4)
    with pytest.raises(ValueError, match="directions"):
        data.zero_shot_logits(e, torch.ones(2, 10))
