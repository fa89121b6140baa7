"""Unit tests of the real-model protocol helpers of lorabook.ntk (small synthetic problems; MiniLM only where the
function is about MiniLM)."""
import pytest
import torch

from lorabook import data, ntk


def _problem(N=8, seed=0, lam=0.0):
    gen = torch.Generator().manual_seed(seed)
    return ntk.synthetic_problem(N, 1, 6, 5, lam, generator=gen, loss="logistic", P=2)


def test_dev_selected_path_selects_the_smallest_dev_loss():
    tr, dv = _problem(8, 0), _problem(8, 1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, dv.y, 0.0, "logistic")
    path = ntk.dev_selected_path(tr.G, tr.f0, tr.y, dev, [0.7, 0.3, 0.1], 6, every=2)
    assert path.dev_loss.shape == (3, 3) and path.dev_bacc.shape == (3, 3)
    assert path.steps == [2, 4, 6] and path.ends.shape == (3, 2, 6, 5)
    assert float(dev.data_loss(path.delta)) == pytest.approx(float(path.dev_loss.min()), rel=1e-9)
    assert path.dev_loss[path.best] == path.dev_loss.min()
    assert path.lam_max == pytest.approx(tr.lambda_max())
    assert all(g >= 0 for g in path.rel_gap)


@pytest.mark.parametrize("kw, msg", [
    (dict(fracs=[0.3, 0.7]), "decreasing"), (dict(fracs=[1.5]), "decreasing"), (dict(fracs=[]), "decreasing"),
    (dict(steps=5, every=2), "multiple"), (dict(steps=0), "steps"), (dict(loss="mse"), "dev must"),
])
def test_dev_selected_path_validates(kw, msg):
    tr, dv = _problem(8, 0), _problem(8, 1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, dv.y, 0.0, "logistic")
    args = dict(fracs=[0.5], steps=4, every=2)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        ntk.dev_selected_path(tr.G, tr.f0, tr.y, dev, args.pop("fracs"), args.pop("steps"), **args)


def test_dev_selected_path_rejects_a_dev_set_of_another_shape():
    tr = _problem(8, 0)
    gen = torch.Generator().manual_seed(2)
    other = ntk.synthetic_problem(8, 1, 5, 5, 0.0, generator=gen, loss="logistic", P=2)
    with pytest.raises(ValueError, match="dev must"):
        ntk.dev_selected_path(tr.G, tr.f0, tr.y, other, [0.5], 2, every=1)


def test_steps_to_reach():
    h = torch.tensor([[3.0, 3.0], [2.0, 3.0], [1.0, 2.5]])
    assert ntk.steps_to_reach(h, 2.0, 10) == [10, None]
    assert ntk.steps_to_reach(h, 5.0, 1) == [0, 0]
    with pytest.raises(ValueError, match="history"):
        ntk.steps_to_reach(h[0], 2.0, 1)
    with pytest.raises(ValueError, match="history"):
        ntk.steps_to_reach(h, float("nan"), 1)
    with pytest.raises(ValueError, match="record_every"):
        ntk.steps_to_reach(h, 1.0, 0)


def test_apply_by_length_is_exact_for_masked_consumers():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(7, 9, 3, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([9, 2, 5, 1, 9, 3, 4])
    m = (torch.arange(9)[None] < lengths[:, None]).long()

    def fn(x):
        hh, mm = x
        s = (hh * mm[..., None]).sum(1)
        return s, s.square().sum(1)

    full = fn((h, m))
    got = ntk.apply_by_length(fn, (h, m), batch_size=3)
    assert all(torch.equal(a, b) for a, b in zip(full, got))
    single = ntk.apply_by_length(lambda x: fn(x)[1], (h, m), batch_size=2)
    assert torch.equal(single, full[1])
    with pytest.raises(ValueError, match="pair"):
        ntk.apply_by_length(fn, h)
    with pytest.raises(ValueError, match="hidden"):
        ntk.apply_by_length(fn, (h, m[:, :4]))
    with pytest.raises(ValueError, match="batch_size"):
        ntk.apply_by_length(fn, (h, m), batch_size=0)
    # no texts: no batch tells the output's shape, so an empty input is refused instead of returning None
    with pytest.raises(ValueError, match=r"^inputs hold no texts \(n = 0\)"):
        ntk.apply_by_length(fn, (h[:0], m[:0]))


def test_embed_texts_matches_full_padding():
    texts = ["a fine film", "this is a much longer sentence about a movie that drags on and on", "bad"]
    h, m = ntk.embed_texts(texts, 5, max_length=24, batch_size=2)
    h0, m0 = data.hidden_before_layer(texts, 5, max_length=24)
    assert h.shape == h0.shape and torch.equal(m, m0)
    keep = m.bool()
    assert torch.allclose(h[keep], h0[keep], atol=1e-4)
    head = ntk.MiniLMHead(5)
    with torch.no_grad():
        assert torch.allclose(head(h, m), head(h0, m0), atol=1e-4)
    for bad in ([], "text", [1, 2]):
        with pytest.raises(ValueError, match="texts"):
            ntk.embed_texts(bad, 5)
    with pytest.raises(ValueError, match="max_length"):
        ntk.embed_texts(texts, 5, max_length=0)


def test_minilm_head_classes():
    texts = ["a great film", "a terrible film"]
    hid = ntk.embed_texts(texts, 5)
    two = ntk.MiniLMHead(5)
    three = ntk.MiniLMHead(5, classes=("rotten", "fresh", "plot"))
    with torch.no_grad():
        z2, z3 = two(*hid), three(*hid)
    assert z2.shape == (2,) and z3.shape == (2, 3)
    assert torch.allclose(z2, z3[:, 1] - z3[:, 0], atol=1e-4)  # fresh minus rotten
    with pytest.raises(ValueError, match="classes"):
        ntk.MiniLMHead(5, classes=("fresh",))
    with pytest.raises(ValueError, match="classes"):
        ntk.MiniLMHead(5, classes=("fresh", "good"))


def test_minilm_head_runs_the_layers_above():
    texts = ["a great film", "a terrible film that drags"]
    top = ntk.MiniLMHead(5)
    h0, m0 = ntk.embed_texts(texts, 0)
    h5, m5 = ntk.embed_texts(texts, 5)
    full = ntk.MiniLMHead(0)
    with torch.no_grad():  # running layers 0..5 from the embeddings = the last layer on the states entering it
        assert torch.allclose(full(h0, m0), top(h5, m5), atol=1e-4)
    names = full.qv_names()
    assert len(names) == 12 and names[:2] == ntk.QV_NAMES and top.qv_names() == ntk.QV_NAMES
    assert names[-1] == "upper.4.attention.self.value.weight"
    f0, G = ntk.per_example_jacobian(full, names, (h0, m0))
    assert G.shape == (2, 1, 12, 384, 384) and torch.isfinite(G).all()
    # the gradient of the last layer's weights is the same whichever layer the head starts at
    _, G5 = ntk.per_example_jacobian(top, ntk.QV_NAMES, (h5, m5))
    assert torch.allclose(G[:, :, 10:], G5, atol=1e-4 * float(G5.abs().max()))
    with pytest.raises(ValueError, match="layer_index"):
        ntk.MiniLMHead(6)


def test_proximal_gradient_reports_the_step_it_backtracked_to():
    prob = _problem(8, 0, lam=0.05)
    L = prob.lipschitz()
    plain = ntk.proximal_gradient(prob, 3, lr=1 / L)
    assert plain.lr == 1 / L
    bt = ntk.proximal_gradient(prob, 3, lr=1e4 / L, backtrack=True)
    assert bt.lr < 1e4 / L
    # restarting from the reported step needs no further halving: the same step is returned
    again = ntk.proximal_gradient(prob, 1, lr=bt.lr, backtrack=True, delta0=bt.delta)
    assert again.lr <= bt.lr and float(prob.objective(again.delta)) <= float(prob.objective(bt.delta)) + 1e-9


def test_proximal_gradient_can_skip_the_certificate():
    prob = _problem(8, 0, lam=0.05)
    a = ntk.proximal_gradient(prob, 4, certify=False)
    b = ntk.proximal_gradient(prob, 4)
    assert a.cert is None and b.cert is not None
    assert torch.equal(a.delta, b.delta)
    assert b.cert.primal == pytest.approx(float(prob.objective(b.delta)), rel=1e-12)


def test_heldout_metrics_by_hand():
    import math
    # K = 1: logits 2, -1, 0.5 on labels 1, 0, 0 -> classes 1 and 0 recall 1 and 1/2
    f = torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64)
    bacc, loss = ntk.heldout_metrics(f, [1, 0, 0])
    assert bacc == pytest.approx(0.75)
    want = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 3
    assert loss == pytest.approx(want, rel=1e-12)
    # K = 3: the cross-entropy of each row at its label, averaged
    f3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    bacc3, loss3 = ntk.heldout_metrics(f3, torch.tensor([0, 1]))
    want3 = ((math.log(math.e + 2) - 1.0) + (math.log(2 + math.exp(3.0)) - 0.0)) / 2
    assert loss3 == pytest.approx(want3, rel=1e-12) and bacc3 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="labels"):
        ntk.heldout_metrics(f, [1, 0])
    with pytest.raises(ValueError, match="finite"):
        ntk.heldout_metrics(torch.tensor([[float("nan")]]), [1])
