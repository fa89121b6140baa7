"""Tests of lorabook.ntk's real-model protocol (actual LoRA training, the dev-selected λ path, length-sorted
embedding and batching, held-out metrics, the MiniLM head) with values computed independently of the code:
hand-derived gradients of a bilinear model replayed through SGD and Adam in NumPy, by-hand losses and balanced
accuracies, and small fakes of MiniLM (its tokenizer, its lower layers, its encoder layers) whose outputs are
known."""
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lorabook import data, ntk

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ train_actual_lora
M, N_IN, N = 3, 4, 6  # weight matrices (M, N_IN); N examples


class Bilinear(nn.Module):
    """``f(x) = u·(W1 x) + v·(W2 x)``: a scalar logit, linear in both weight matrices, so that the gradient of the
    mean logistic loss with respect to ``W_p`` is ``Σ_i g_i c_p x_iᵀ`` with ``g_i = (σ(f_i) − y_i)/N``."""

    def __init__(self, dtype=F64):
        super().__init__()
        g = gen(5)
        self.w1 = nn.Parameter(torch.randn(M, N_IN, generator=g, dtype=F64).to(dtype))
        self.w2 = nn.Parameter(torch.randn(M, N_IN, generator=g, dtype=F64).to(dtype))
        self.register_buffer("u", torch.tensor([1.0, -0.5, 0.25], dtype=F64).to(dtype))
        self.register_buffer("v", torch.tensor([0.3, 0.8, -1.1], dtype=F64).to(dtype))

    def forward(self, x):
        return (x @ self.w1.T) @ self.u + (x @ self.w2.T) @ self.v


NAMES = ["w1", "w2"]


def lora_data(rank=2, dtype=F64):
    g = gen(6)
    x = torch.randn(N, N_IN, generator=g, dtype=F64).to(dtype)
    y = torch.tensor([1, 0, 0, 1, 1, 0])
    A0 = (0.7 * torch.randn(2, N_IN, rank, generator=g, dtype=F64)).to(dtype)
    return x, y, A0


def replay(module, x, y, A0, steps, lr, lam, adam, record_every=1):
    """Full-batch LoRA training replayed in NumPy with the hand-derived gradients of :class:`Bilinear`:
    ``∂L/∂B_p = D_p A_p``, ``∂L/∂A_p = D_pᵀ B_p`` with ``D_p = Σ_i g_i c_p x_iᵀ``, coupled weight decay
    ``λ·param`` added to each gradient, then plain gradient descent or Adam (β = (0.9, 0.999), ε = 1e-8, bias
    corrected). Returns ``(δ, [objective every record_every steps])``."""
    W = [module.w1.detach().double().numpy(), module.w2.detach().double().numpy()]
    c = [module.u.double().numpy(), module.v.double().numpy()]
    X, Y = x.double().numpy(), y.double().numpy()
    A = A0.double().numpy().copy()
    B = np.zeros((2, M, A.shape[2]))
    mB, vB, mA, vA = (np.zeros_like(B), np.zeros_like(B), np.zeros_like(A), np.zeros_like(A))
    hist = []
    for k in range(steps + 1):
        f = sum(X @ (W[p] + B[p] @ A[p].T).T @ c[p] for p in range(2))
        loss = np.mean(np.logaddexp(0.0, f) - Y * f)
        if k % record_every == 0:
            hist.append(loss + 0.5 * lam * (np.sum(A ** 2) + np.sum(B ** 2)))
        if k == steps:
            break
        g = (1 / (1 + np.exp(-f)) - Y) / len(Y)
        D = [np.outer(c[p], g @ X) for p in range(2)]
        gB = np.stack([D[p] @ A[p] for p in range(2)]) + lam * B
        gA = np.stack([D[p].T @ B[p] for p in range(2)]) + lam * A
        if adam:
            t = k + 1
            mB, mA = 0.9 * mB + 0.1 * gB, 0.9 * mA + 0.1 * gA
            vB, vA = 0.999 * vB + 0.001 * gB ** 2, 0.999 * vA + 0.001 * gA ** 2
            B = B - lr * (mB / (1 - 0.9 ** t)) / (np.sqrt(vB / (1 - 0.999 ** t)) + 1e-8)
            A = A - lr * (mA / (1 - 0.9 ** t)) / (np.sqrt(vA / (1 - 0.999 ** t)) + 1e-8)
        else:
            B, A = B - lr * gB, A - lr * gA
    return np.einsum("pmr,pnr->pmn", B, A), np.array(hist)


@pytest.mark.parametrize("adam", [False, True])
def test_train_actual_lora_matches_a_replay_with_hand_derived_gradients(adam):
    """δ and the recorded objectives (data loss + λ/2(‖A‖² + ‖B‖²), at every step) equal the NumPy replay of
    gradient descent / Adam with coupled weight decay; lr and λ differ from both optimisers' defaults."""
    mod, (x, y, A0) = Bilinear(), lora_data()
    lr, lam = 0.3, 0.2
    delta, hist = ntk.train_actual_lora(mod, NAMES, x, y, 2, 3, lr, lam, A0=A0, adam=adam, record_every=1)
    d_ref, h_ref = replay(mod, x, y, A0, 3, lr, lam, adam)
    assert delta.shape == (2, M, N_IN) and np.abs(d_ref).max() > 0.05
    np.testing.assert_allclose(delta.numpy(), d_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hist.numpy(), h_ref, rtol=1e-10)
    assert hist.dtype == F64 and len(set(np.round(h_ref, 6))) == 4  # the objective moves at every step


def test_train_actual_lora_records_every_kth_step_and_defaults_to_adam_without_records():
    """``record_every=2`` over 4 steps records steps 0, 2, 4; by default Adam is used and nothing is recorded."""
    mod, (x, y, A0) = Bilinear(), lora_data()
    _, hist = ntk.train_actual_lora(mod, NAMES, x, y, 2, 4, 0.1, 0.05, A0=A0, adam=False, record_every=2)
    _, h_ref = replay(mod, x, y, A0, 4, 0.1, 0.05, False, record_every=2)
    np.testing.assert_allclose(hist.numpy(), h_ref, rtol=1e-10)
    d_def, h_def = ntk.train_actual_lora(mod, NAMES, x, y, 2, 2, 0.1, 0.05, A0=A0)
    d_adam, _ = replay(mod, x, y, A0, 2, 0.1, 0.05, True)
    assert h_def.shape == (0,)
    np.testing.assert_allclose(d_def.numpy(), d_adam, rtol=1e-9, atol=1e-12)


def test_train_actual_lora_objective_history_is_float64_under_a_float32_default(float32_default):
    mod, (x, y, A0) = Bilinear(), lora_data()
    _, hist = ntk.train_actual_lora(mod, NAMES, x, y, 2, 1, 0.1, 0.05, A0=A0, adam=False, record_every=1)
    _, h_ref = replay(mod, x, y, A0, 1, 0.1, 0.05, False)
    assert hist.dtype == F64
    np.testing.assert_allclose(hist.numpy(), h_ref, rtol=1e-12)


def test_train_actual_lora_works_in_the_modules_dtype():
    """A float32 module trains in float32 (B is created, A0 is cast, in the module's dtype); a float32 A0 on a
    float64 module is cast up; the labels' dtype does not matter (int and float64 labels: identical runs)."""
    mod32, (x, y, A0) = Bilinear(torch.float32), lora_data(dtype=torch.float32)
    d_int, h_int = ntk.train_actual_lora(mod32, NAMES, x, y, 2, 2, 0.1, 0.05, A0=A0, record_every=1)
    d_f64, h_f64 = ntk.train_actual_lora(mod32, NAMES, x, y.to(F64), 2, 2, 0.1, 0.05, A0=A0, record_every=1)
    assert d_int.dtype == torch.float32
    assert torch.equal(d_int, d_f64) and torch.equal(h_int, h_f64)
    mod64 = Bilinear()
    d64, _ = ntk.train_actual_lora(mod64, NAMES, x.double(), y, 2, 2, 0.1, 0.05, A0=A0, adam=False)
    d_ref, _ = replay(mod64, x, y, A0, 2, 0.1, 0.05, False)
    assert d64.dtype == F64
    np.testing.assert_allclose(d64.numpy(), d_ref, rtol=1e-9, atol=1e-12)


def test_train_actual_lora_accepts_zero_weight_decay():
    mod, (x, y, A0) = Bilinear(), lora_data()
    delta, _ = ntk.train_actual_lora(mod, NAMES, x, y, 2, 2, 0.3, 0.0, A0=A0, adam=False)
    d_ref, _ = replay(mod, x, y, A0, 2, 0.3, 0.0, False)
    np.testing.assert_allclose(delta.numpy(), d_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lr, lam", [(0.0, 0.1), (-0.1, 0.1), (0.1, -0.01), (math.inf, 0.1), (0.1, math.nan)])
def test_train_actual_lora_rejects_a_bad_lr_or_lam(lr, lam):
    mod, (x, y, A0) = Bilinear(), lora_data()
    with pytest.raises(ValueError, match=re.escape(f"need lr > 0 and lam >= 0, got lr={lr}, lam={lam}")):
        ntk.train_actual_lora(mod, NAMES, x, y, 2, 2, lr, lam, A0=A0)


def test_train_actual_lora_names_the_bad_argument():
    mod, (x, y, A0) = Bilinear(), lora_data()
    with pytest.raises(ValueError, match="^rank must be a positive integer, got 0$"):
        ntk.train_actual_lora(mod, NAMES, x, y, 0, 2, 0.1, 0.1, A0=A0)
    with pytest.raises(ValueError, match="^steps must be a positive integer, got 0$"):
        ntk.train_actual_lora(mod, NAMES, x, y, 2, 0, 0.1, 0.1, A0=A0)
    with pytest.raises(ValueError, match=re.escape("A0 must have shape (2, 4, 3), got (2, 4, 2)")):
        ntk.train_actual_lora(mod, NAMES, x, y, 3, 2, 0.1, 0.1, A0=A0)
    with pytest.raises(ValueError, match=re.escape("A0 must have shape (2, 4, 2), got ()")):
        ntk.train_actual_lora(mod, NAMES, x, y, 2, 2, 0.1, 0.1, A0=A0.tolist())
    with pytest.raises(ValueError, match=r"^labels must be N values in \{0, 1\}$"):
        ntk.train_actual_lora(mod, NAMES, x, y[:5], 2, 2, 0.1, 0.1, A0=A0)


# ------------------------------------------------------------------------------------ dev_selected_path
def path_data(K=1, seed=0):
    loss = "logistic" if K == 1 else "ce"
    tr = ntk.synthetic_problem(10, K, 4, 3, 0.0, generator=gen(seed), loss=loss, P=2)
    dv = ntk.synthetic_problem(9, K, 4, 3, 0.0, generator=gen(seed + 10), loss=loss, P=2)
    # synthetic_problem scales ‖G‖²_op/N to 1; 1.3·G makes the Lipschitz constant L = c·1.69 no power of two
    tr = ntk.LinearisedProblem(1.3 * tr.G, tr.f0, tr.y, 0.0, loss)
    y_tr = tr.y if K == 1 else tr.y.argmax(1)
    y_dv = dv.y[:, 0].long() if K == 1 else dv.y.argmax(1)
    return tr, y_tr, dv, y_dv


def by_hand_scores(dv, labels, delta):
    """Dev loss (mean logistic / softmax cross-entropy) and balanced accuracy of the linearised outputs."""
    G = dv.G.reshape(dv.N, dv.K, -1).numpy()
    f = dv.f0.numpy() + G @ delta.reshape(-1).numpy()
    lab = labels.numpy()
    if dv.K == 1:
        z = f[:, 0]
        loss = np.mean(np.logaddexp(0.0, z) - lab * z)
        pred = (z > 0).astype(int)
    else:
        loss = np.mean([np.log(np.exp(r).sum()) - r[c] for r, c in zip(f, lab)])
        pred = f.argmax(1)
    bacc = np.mean([np.mean(pred[lab == k] == k) for k in np.unique(lab)])
    return loss, bacc


@pytest.mark.parametrize("K", [1, 3])
def test_dev_selected_path_scores_each_lambda_end_on_the_dev_set(K):
    """The last dev column of each λ is the dev loss and balanced accuracy of that λ's end point, computed by hand
    (binary labels from the sign of the logit for K = 1, argmax of K = 3 outputs)."""
    tr, y_tr, dv, y_dv = path_data(K)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, dv.loss)
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, (0.6, 0.2), 4, every=2, loss=dv.loss)
    assert path.fracs == [0.6, 0.2] and path.steps == [2, 4]
    for i in range(2):
        loss, bacc = by_hand_scores(dv, y_dv, path.ends[i])
        assert float(path.dev_loss[i, -1]) == pytest.approx(loss, rel=1e-10)
        assert float(path.dev_bacc[i, -1]) == pytest.approx(bacc, abs=1e-12)
    accs = set(path.dev_bacc.flatten().tolist())
    assert len(accs) >= 2 or 0 < min(accs) < 1


def test_dev_selected_path_is_warm_started_fista_with_backtracking_from_32_over_L():
    """With one check per λ, λ_i = frac_i·λ_max's end point is FISTA with backtracking run ``every`` steps from the
    previous end (from 0 for the first λ), the first starting at step 32/L and the next at the step the previous
    run backtracked to; the reported gaps are the certificates at λ_i."""
    tr, y_tr, dv, y_dv = path_data(1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, "logistic")
    fracs = [0.6, 0.25]
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, fracs, 3, every=3)
    lam_max = tr.lambda_max()
    assert path.lam_max == pytest.approx(lam_max, rel=1e-12) and abs(lam_max - 1) > 0.1
    delta, lr = None, 32 / tr.lipschitz()
    for i, frac in enumerate(fracs):
        prob = ntk.LinearisedProblem(tr.G, tr.f0, y_tr, frac * lam_max, "logistic")
        res = ntk.proximal_gradient(prob, 3, lr=lr, backtrack=True, delta0=delta)
        delta, lr = res.delta, res.lr
        assert torch.allclose(path.ends[i], delta, rtol=0, atol=1e-12)
        assert path.rel_gap[i] == pytest.approx(res.cert.rel_gap, rel=1e-9)
    assert lr < 32 / tr.lipschitz()  # backtracking happened, so the carried step matters
    assert math.log2(tr.lipschitz()) % 1 > 0.1  # so that 32·L, 32/L would not backtrack to the same step
    assert float(path.ends[1].abs().max()) > 1e-3


def test_dev_selected_path_checks_every_step_when_every_is_1_and_defaults_to_5():
    tr, y_tr, dv, y_dv = path_data(1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, "logistic")
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 3, every=1)
    assert path.steps == [1, 2, 3] and path.dev_loss.shape == (1, 3) and path.dev_bacc.shape == (1, 3)
    default = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 5)
    explicit = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 5, every=5)
    assert default.steps == [5] and torch.equal(default.delta, explicit.delta)


def test_dev_selected_path_keeps_the_first_candidate_on_a_tie():
    """A dev set with zero gradients scores every point the same: the first check of the first λ is kept."""
    tr, y_tr, dv, y_dv = path_data(1)
    flat = ntk.LinearisedProblem(torch.zeros_like(dv.G), dv.f0 + 0.3, y_dv, 0.0, "logistic")
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, flat, [0.6, 0.3], 4, every=2)
    assert (path.dev_loss == path.dev_loss[0, 0]).all()
    assert path.best == (0, 0)
    first = ntk.dev_selected_path(tr.G, tr.f0, y_tr, flat, [0.6], 2, every=2)
    assert torch.equal(path.delta, first.ends[0])


def test_dev_selected_path_curves_are_float64_under_a_float32_default(float32_default):
    tr, y_tr, dv, y_dv = path_data(1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, "logistic")
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 2, every=2)
    assert path.dev_loss.dtype == F64 and path.dev_bacc.dtype == F64
    loss, _ = by_hand_scores(dv, y_dv, path.ends[0])
    assert float(path.dev_loss[0, 0]) == pytest.approx(loss, rel=1e-12)


def test_dev_selected_path_fracs_bounds():
    """fracs must lie in (0, 1]: 1 is accepted, 0 is not, and equal neighbours are not strictly decreasing."""
    tr, y_tr, dv, y_dv = path_data(1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, "logistic")
    path = ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [1.0], 1, every=1)
    assert path.fracs == [1.0]
    for bad in ([0.0], [0.5, 0.0], [0.5, 0.5]):
        msg = re.escape(f"fracs must be a non-empty strictly decreasing sequence in (0, 1], got {bad}")
        with pytest.raises(ValueError, match="^" + msg + "$"):
            ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, bad, 2, every=1)


def test_dev_selected_path_names_the_bad_argument():
    tr, y_tr, dv, y_dv = path_data(1)
    dev = ntk.LinearisedProblem(dv.G, dv.f0, y_dv, 0.0, "logistic")
    with pytest.raises(ValueError, match="^steps must be a positive integer, got 0$"):
        ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 0, every=1)
    with pytest.raises(ValueError, match="^every must be a positive integer, got 0$"):
        ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 2, every=0)
    with pytest.raises(ValueError, match="^dev must be a LinearisedProblem with the same delta shape and loss as "
                                         "the training data$"):
        ntk.dev_selected_path(tr.G, tr.f0, y_tr, dev, [0.5], 2, every=1, loss="mse")


# ------------------------------------------------------------------------------------ apply_by_length
def padded(lengths, T, H=2, seed=0):
    lengths = torch.tensor(lengths)
    h = torch.randn(len(lengths), T, H, generator=gen(seed), dtype=F64)
    return h, (torch.arange(T)[None] < lengths[:, None]).long()


class Recorder:
    """A per-example masked consumer (masked token sum) that records each batch's size and width."""

    def __init__(self):
        self.calls = []

    def __call__(self, x):
        h, m = x
        self.calls.append((h.shape[0], h.shape[1]))
        return (h * m[..., None]).sum(1)


def test_apply_by_length_default_batches_of_64():
    h, m = padded([3] * 70, 4)
    fn = Recorder()
    out = ntk.apply_by_length(fn, (h, m))
    assert fn.calls == [(64, 3), (6, 3)]
    assert torch.allclose(out, h[:, :3].sum(1), rtol=0, atol=1e-12)


def test_apply_by_length_trims_each_sorted_batch_to_its_longest_text():
    """Sorted lengths (0, 1, 1 | 2, 4, 5 | 6): widths max(longest, 1) = 1, 5, 6; results in the input order."""
    lengths = [6, 1, 4, 0, 2, 5, 1]
    h, m = padded(lengths, 7)
    fn = Recorder()
    out = ntk.apply_by_length(fn, (h, m), batch_size=3)
    assert fn.calls == [(3, 1), (3, 5), (1, 6)]
    want = torch.stack([h[i, :n].sum(0) for i, n in enumerate(lengths)])
    assert torch.allclose(out, want, rtol=0, atol=1e-12)


def test_apply_by_length_error_messages():
    h, m = padded([2, 3], 3)
    with pytest.raises(ValueError, match=r"^inputs must be a pair \(hidden \(n, T, H\), mask \(n, T\)\)$"):
        ntk.apply_by_length(Recorder(), (h, m, m))
    with pytest.raises(ValueError, match="^batch_size must be a positive integer, got 0$"):
        ntk.apply_by_length(Recorder(), (h, m), batch_size=0)


# ------------------------------------------------------------------------------------ embed_texts
class FakeTokenizer:
    """Word tokens between [CLS] and [SEP]; truncation as Hugging Face's: to ``max_length`` when given (also when
    ``truncation`` is left unset), to ``model_max_length`` when only ``truncation=True``, not at all when
    ``truncation=False``."""

    model_max_length = 512

    def __call__(self, texts, truncation=None, max_length=None, **kw):
        ids = [[101] + [7 + len(w) for w in t.split()] + [102] for t in texts]
        if truncation is False or (truncation is None and max_length is None):
            return {"input_ids": ids}
        cut = max_length if max_length is not None else self.model_max_length
        return {"input_ids": [i[:cut] for i in ids]}


H_FAKE = 3


@pytest.fixture
def fake_minilm(monkeypatch):
    """Patches lorabook.data's MiniLM with the fake tokenizer and a fake ``hidden_before_layer`` whose state at
    position t of a text is ``(layer, t, number of words)`` (−1 at padding), recording each call."""
    tok = FakeTokenizer()
    calls = []

    def hidden_before_layer(texts, layer, *, max_length=64, batch_size=128, progress=False):
        calls.append(dict(n_words=[len(t.split()) for t in texts], max_length=max_length))
        ids = tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
        h = -torch.ones(len(texts), max_length, H_FAKE, dtype=torch.float32)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, (t, row) in enumerate(zip(texts, ids)):
            for pos in range(len(row)):
                h[i, pos] = torch.tensor([layer, pos, len(t.split())], dtype=torch.float32)
            mask[i, :len(row)] = 1
        return h, mask

    monkeypatch.setattr(data, "load_minilm", lambda: (tok, None))
    monkeypatch.setattr(data, "hidden_before_layer", hidden_before_layer)
    return SimpleNamespace(calls=calls, hidden=hidden_before_layer)


def test_embed_texts_runs_length_sorted_batches_and_restores_the_order(fake_minilm):
    """Word counts (4, 0, 2, 1, 3) in batches of 2: the batches hold the texts of 0 and 1, 2 and 3, 4 words, each
    padded to its longest text (+2 special tokens); the result is in the input order and equals full padding on
    the mask."""
    texts = ["a b c d", "", "a b", "a", "a b c"]
    h, m = ntk.embed_texts(texts, 4, max_length=9, batch_size=2)
    assert [c["n_words"] for c in fake_minilm.calls] == [[0, 1], [2, 3], [4]]
    assert [c["max_length"] for c in fake_minilm.calls] == [3, 5, 6]
    fake_minilm.calls.clear()
    h0, m0 = fake_minilm.hidden(texts, 4, max_length=9)
    assert h.shape == (5, 9, H_FAKE) and torch.equal(m, m0)
    assert torch.equal(h[m.bool()], h0[m0.bool()])


def test_embed_texts_defaults_to_64_tokens_and_batches_of_64(fake_minilm):
    texts = [" ".join(["w"] * (i % 5)) for i in range(70)]
    h, m = ntk.embed_texts(texts, 2)
    assert h.shape == (70, 64, H_FAKE) and m.shape == (70, 64)
    assert [len(c["n_words"]) for c in fake_minilm.calls] == [64, 6]


def test_embed_texts_truncates_long_texts_to_max_length(fake_minilm):
    texts = ["w " * 30, "short one"]
    h, m = ntk.embed_texts(texts, 1, max_length=8)
    assert m.tolist() == [[1] * 8, [1] * 4 + [0] * 4]
    assert h[0, :, 1].tolist() == list(range(8))


def test_embed_texts_error_messages(fake_minilm):
    for bad in ([], "text", ["a", 2]):
        with pytest.raises(ValueError, match="^texts must be a non-empty sequence of strings$"):
            ntk.embed_texts(bad, 5)
    with pytest.raises(ValueError, match="^max_length must be a positive integer, got 0$"):
        ntk.embed_texts(["a"], 5, max_length=0)
    with pytest.raises(ValueError, match="^batch_size must be a positive integer, got 0$"):
        ntk.embed_texts(["a"], 5, batch_size=0)


# ------------------------------------------------------------------------------------ MiniLMHead.forward
HID = 4


class TupleLayer(nn.Module):
    """A small encoder layer with the old transformers calling convention: ``layer(hidden, attention_mask=bias)``
    returns ``(new hidden, attention weights)``. One attention head ``softmax(h hᵀ + bias) h``, then ``tanh(· Wᵀ)``."""

    def __init__(self, seed):
        super().__init__()
        self.W = nn.Parameter(torch.randn(HID, HID, generator=gen(seed), dtype=F64) / 2)

    def forward(self, hidden, attention_mask=None):
        att = torch.softmax(hidden @ hidden.transpose(-1, -2) + attention_mask[:, 0], -1)
        return torch.tanh(att @ hidden @ self.W.T), att


DIRS = torch.nn.functional.normalize(torch.randn(3, HID, generator=gen(9), dtype=F64), dim=1)


@pytest.fixture
def fake_encoder(monkeypatch):
    model = SimpleNamespace(encoder=SimpleNamespace(layer=nn.ModuleList([TupleLayer(s) for s in range(6)])))
    monkeypatch.setattr(data, "load_minilm", lambda: (None, model))
    monkeypatch.setattr(data, "label_directions", lambda: DIRS[:2].clone())
    monkeypatch.setattr(data, "class_directions", lambda classes: DIRS[:len(classes)].clone())
    return model


def by_hand_embeddings(model, hidden, mask, start):
    """Mean over the real tokens of layers start..5 run on each text alone (no padding, so no mask), in NumPy."""
    Ws = [lay.W.detach().numpy() for lay in model.encoder.layer[start:]]
    out = []
    for h, m in zip(hidden.numpy(), mask.numpy()):
        x = h[m.astype(bool)]
        for W in Ws:
            s = x @ x.T
            a = np.exp(s - s.max(1, keepdims=True))
            x = np.tanh((a / a.sum(1, keepdims=True)) @ x @ W.T)
        out.append(x.mean(0))
    e = np.array(out)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_minilm_head_forward_by_hand(fake_encoder):
    """The binary head is ``(cos(e, d_0) − cos(e, d_1)) / T`` and the 3-class head ``cos(e, d_k) / T`` of the mean
    pooled output of the layers it runs, with the head's own temperature and directions (set after
    construction here)."""
    hidden, mask = padded([3, 1, 4], 4, H=HID, seed=3)
    two = ntk.MiniLMHead(4, temperature=0.3)
    three = ntk.MiniLMHead(4, temperature=0.7, classes=("fresh", "rotten", "plot"))
    d2 = torch.nn.functional.normalize(torch.randn(2, HID, generator=gen(11), dtype=F64), dim=1)
    two.directions = d2
    e = by_hand_embeddings(fake_encoder, hidden, mask, 4)
    with torch.no_grad():
        z2, z3 = two(hidden, mask), three(hidden, mask)
    np.testing.assert_allclose(z2.numpy(), (e @ d2[0].numpy() - e @ d2[1].numpy()) / 0.3, rtol=1e-10)
    np.testing.assert_allclose(z3.numpy(), e @ DIRS.numpy().T / 0.7, rtol=1e-10)


# ------------------------------------------------------------------------------------ heldout_metrics
def test_heldout_metrics_error_messages():
    with pytest.raises(ValueError, match=r"^f must be a finite \(n, K\) tensor, got \(3,\)$"):
        ntk.heldout_metrics(torch.tensor([0.5, -1.0, 2.0]), [1, 0, 1])
    with pytest.raises(ValueError, match=r"^f must be a finite \(n, K\) tensor, got \(\)$"):
        ntk.heldout_metrics([[0.5], [1.0]], [1, 0])
    with pytest.raises(ValueError, match=r"^labels must have shape \(3,\), got \(2,\)$"):
        ntk.heldout_metrics(torch.zeros(3, 2), [1, 0])


def test_heldout_metrics_loss_is_in_the_outputs_dtype():
    """For float32 outputs the mean loss is the float32 mean of the per-example losses (logistic with float32
    0/1 targets, cross-entropy with class indices), whatever the labels' dtype."""
    g = gen(4)
    f1 = (3 * torch.randn(7, 1, generator=g)).float()
    y1 = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    want1 = float(ntk.per_example_loss(f1, y1.float()[:, None], "logistic").mean())
    assert ntk.heldout_metrics(f1, y1)[1] == want1
    assert ntk.heldout_metrics(f1, y1.to(F64))[1] == want1
    f3 = (3 * torch.randn(7, 3, generator=g)).float()
    y3 = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    assert ntk.heldout_metrics(f3, y3)[1] == float(ntk.per_example_loss(f3, y3, "ce").mean())


# ------------------------------------------------------------------------------------ steps_to_reach
def test_steps_to_reach_error_messages():
    h = torch.tensor([[3.0, 2.0], [1.0, 2.5]])
    with pytest.raises(ValueError, match="^record_every must be a positive integer, got 0$"):
        ntk.steps_to_reach(h, 1.0, 0)
    with pytest.raises(ValueError, match=r"^history must be a \(n_records, S\) tensor and target a finite number$"):
        ntk.steps_to_reach(h[0], 1.0, 1)
