"""Input samplers, the Gaussian-input LoRA training, the pretraining of frozen models and the training curve of the
expressivity module: input checks and their messages, documented defaults, dtypes, the law of the samplers, and
the training runs replayed step by step by a plain autograd loop with Adam written out."""
import math
import re

import pytest
import torch
from test_expressivity_mutants_e import relu_net  # the reference loop z_l = ReLU(W_l z_{l-1} + b_l)

from lorabook import expressivity as ex

F64, F32 = torch.float64, torch.float32
D = 3


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Adam:
    """Textbook Adam (β = (0.9, 0.999), ε = 1e-8, bias-corrected moments) on a list of tensors."""

    def __init__(self, params, lr):
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads):
        self.t += 1
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                m.mul_(0.9).add_(0.1 * g)
                v.mul_(0.999).add_(0.001 * g * g)
                m_hat = m / (1 - 0.9 ** self.t)
                v_hat = v / (1 - 0.999 ** self.t)
                p.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))


def pair(S=2, L=2, Lbar=2, seed=0):
    """S frozen/target ReLU pairs (D = 3); the last one's target is the frozen model with every bias raised by
    1e-7, so its gradients are of the size of Adam's ε and the scale of the loss shows in the iterates."""
    g = gen(seed)
    fw = torch.randn(S, L, D, D, generator=g, dtype=F64) / math.sqrt(D)
    fb = 0.3 * torch.randn(S, L, D, generator=g, dtype=F64) + 0.2
    tw = torch.randn(S, Lbar, D, D, generator=g, dtype=F64) / math.sqrt(D)
    tb = 0.3 * torch.randn(S, Lbar, D, generator=g, dtype=F64) + 0.2
    if Lbar == L:
        tw[-1], tb[-1] = fw[-1], fb[-1] + 1e-7
    return fw, fb, tw, tb


# ---------------------------------------------------------------------------------------------- samplers
def test_gaussian_inputs_are_std_times_the_generators_standard_normal_draws():
    """``std · N(0, I)`` drawn from the given generator: the very numbers of ``torch.randn`` on a generator seeded
    alike (in float64), scaled by std; the generator is advanced by the draw."""
    g = gen(5)
    x = ex.gaussian_inputs((4, 3), g, std=2.5)
    ref_g = gen(5)
    ref = 2.5 * torch.randn((4, 3), generator=ref_g, dtype=F64)
    assert x.dtype == F64 and torch.equal(x, ref)
    assert torch.equal(g.get_state(), ref_g.get_state())
    assert not torch.equal(ex.gaussian_inputs((4, 3), g, std=2.5), x)        # the next draw is a new one


def test_gaussian_inputs_dtype_and_independence_of_the_default_dtype(default_dtype):
    """``dtype`` is the output's; the draws (made in float64) do not depend on torch's default dtype."""
    x64 = ex.gaussian_inputs((40, 3), gen(1))
    x32 = ex.gaussian_inputs((40, 3), gen(1), dtype=F32)
    assert x32.dtype == F32 and torch.equal(x32, x64.float())
    with default_dtype(F32):
        y64 = ex.gaussian_inputs((40, 3), gen(1), dtype=F64)
    assert y64.dtype == F64 and torch.equal(y64, x64)


def test_gaussian_inputs_names_a_bad_std_or_shape():
    """std must be positive; shape a non-empty tuple of positive integers (no bool, no float entry)."""
    with pytest.raises(ValueError, match=r"^std must be a positive finite number, got 0\.0$"):
        ex.gaussian_inputs((10, 3), gen(), std=0.0)
    for shape in ((10, 0), (3, 2.5), (True, 3), ()):
        with pytest.raises(ValueError, match=r"^shape must be a non-empty tuple of positive integers, got "
                                             + re.escape(repr(tuple(shape))) + "$"):
            ex.gaussian_inputs(shape, gen())


def test_uniform_inputs_need_high_strictly_above_low():
    """An empty interval (high == low) is rejected with the interval in the message; a tiny one is accepted."""
    with pytest.raises(ValueError, match=r"^need high > low, got \[0\.5, 0\.5\]$"):
        ex.uniform_inputs((2, 2), gen(), low=0.5, high=0.5)
    x = ex.uniform_inputs((2, 2), gen(), low=0.5, high=0.5 + 1e-9, dtype=F64)
    assert ((x >= 0.5) & (x <= 0.5 + 1e-9)).all()


def test_uniform_inputs_do_not_depend_on_the_default_dtype(default_dtype):
    """The uniform draws are the generator's float64 numbers mapped to [low, high], whatever torch's default
    dtype."""
    x = ex.uniform_inputs((30, 4), gen(2), low=-2.0, high=3.0, dtype=F64)
    u = torch.rand((30, 4), generator=gen(2), dtype=F64)
    assert torch.allclose(x, -2.0 + 5.0 * u, rtol=0, atol=1e-15)
    with default_dtype(F32):
        y = ex.uniform_inputs((30, 4), gen(2), low=-2.0, high=3.0, dtype=F64)
    assert torch.equal(y, x)


# ---------------------------------------------------------------------------------------------- train_lora_gaussian
def replay_lora(fw, fb, tw, tb, ranks, lrs, factors, steps, batch, g):
    """train_lora_gaussian's documented recipe, one (seed, rank) run at a time: ``A`` (S·C, L, R_max, D) Gaussian
    with std 1/√D drawn first from the generator (run j uses its first R rows), ``B = 0``, bias shifts 0; at every
    step a fresh batch ``x ~ N(0, I)`` (S, batch, D) shared by a seed's runs; the loss is the batch mean of the
    squared error summed over outputs; Adam restarted for each phase at ``lr · factor``."""
    S, L = fw.shape[:2]
    C, R = len(ranks), max(ranks)
    A0 = torch.randn(S * C, L, R, D, generator=g, dtype=F64) / math.sqrt(D)
    runs = []
    for s in range(S):
        for c, r in enumerate(ranks):
            runs.append(dict(s=s, c=c, P=[A0[s * C + c, :, :r].clone(), torch.zeros(L, D, r, dtype=F64),
                                          torch.zeros(L, D, dtype=F64)]))
    for a in factors:
        for run in runs:
            run["opt"] = Adam(run["P"], lrs[run["c"]] * a)
        for _ in range(steps // len(factors)):
            x = torch.randn(S, batch, D, generator=g, dtype=F64)
            for run in runs:
                s = run["s"]
                A, B, db = (p.requires_grad_(True) for p in run["P"])
                out = relu_net(x[s], fw[s] + B @ A, fb[s] + db)
                loss = (out - relu_net(x[s], tw[s], tb[s])).square().sum(-1).mean()
                run["opt"].step(torch.autograd.grad(loss, run["P"]))
    W = torch.stack([fw[r["s"]] + (r["P"][1] @ r["P"][0]).detach() for r in runs]).view(S, C, L, D, D)
    b = torch.stack([fb[r["s"]] + r["P"][2].detach() for r in runs]).view(S, C, L, D)
    return W, b


def test_train_lora_gaussian_equals_a_step_by_step_replay():
    """Two seeds (one whose target is within 1e-7 of its frozen model), ranks 1 and 2 at their own learning rates,
    two phases of lr factors 1 and 1/4: the adapted weights and biases are those of the replayed recipe, and the
    generator ends in the same state."""
    fw, fb, tw, tb = pair()
    g, g_ref = gen(3), gen(3)
    W, b = ex.train_lora_gaussian(fw, fb, tw, tb, [1, 2], steps=6, batch=5, lr=[2e-2, 5e-3], generator=g,
                                  dtype=F64, lr_factors=[1.0, 0.25])
    W_ref, b_ref = replay_lora(fw, fb, tw, tb, [1, 2], [2e-2, 5e-3], [1.0, 0.25], 6, 5, g_ref)
    assert W.shape == (2, 2, 2, D, D) and b.shape == (2, 2, 2, D)
    assert (W - fw[:, None]).abs().amin((-1, -2)).amax() > 0 and (b - fb[:, None]).abs().min() > 1e-4
    assert torch.allclose(W, W_ref, rtol=0, atol=1e-11) and torch.allclose(b, b_ref, rtol=0, atol=1e-11)
    assert torch.equal(g.get_state(), g_ref.get_state())


def test_train_lora_gaussian_default_dtype_is_float32_and_independent_of_torchs_default(default_dtype):
    """Without ``dtype`` the adapted models are float32 (float64 inputs converted), close to the float64 run; a
    float64 run gives the same numbers whatever torch's default dtype."""
    fw, fb, tw, tb = pair(Lbar=1)
    kw = dict(steps=4, batch=5, lr=[1e-2, 3e-3], lr_factors=[1.0, 0.3])
    W32, b32 = ex.train_lora_gaussian(fw, fb, tw, tb, [1, 3], generator=gen(4), **kw)
    W64, b64 = ex.train_lora_gaussian(fw, fb, tw, tb, [1, 3], generator=gen(4), dtype=F64, **kw)
    assert W32.dtype == b32.dtype == F32 and W64.dtype == b64.dtype == F64
    assert torch.allclose(W32.double(), W64, atol=1e-5) and torch.allclose(b32.double(), b64, atol=1e-5)
    with default_dtype(F32):
        W, b = ex.train_lora_gaussian(fw, fb, tw, tb, [1, 3], generator=gen(4), dtype=F64, **kw)
    assert torch.equal(W, W64) and torch.equal(b, b64)


def test_train_lora_gaussian_progress_bar_only_when_asked(capsys):
    """By default nothing is written; ``progress="label"`` shows Adam's bar under that label."""
    fw, fb, tw, tb = pair()
    ex.train_lora_gaussian(fw, fb, tw, tb, [1], steps=2, batch=4, lr=1e-2, generator=gen(), dtype=F64)
    assert capsys.readouterr().err == ""
    ex.train_lora_gaussian(fw, fb, tw, tb, [1], steps=2, batch=4, lr=1e-2, generator=gen(), dtype=F64,
                           progress="lora")
    assert re.search(r"(?:^|\r)lora: ", capsys.readouterr().err)


@pytest.mark.parametrize("bad, message", [
    (dict(ranks=[]), r"^ranks must be a non-empty list$"),
    (dict(ranks=[0]), r"^rank=0 is out of range: it must lie in \[1, 3\]$"),
    (dict(ranks=[2, D + 1]), r"^rank=4 is out of range: it must lie in \[1, 3\]$"),
    (dict(steps=0), r"^steps=0 is out of range: it must lie in \[1, 1000000000\]$"),
    (dict(steps=10**9 + 1), r"^steps=1000000001 is out of range: it must lie in \[1, 1000000000\]$"),
    (dict(steps=10**9, lr=0), r"^lr must be a positive finite number, got 0$"),   # the largest step count passes
    (dict(batch=0), r"^batch=0 is out of range: it must lie in \[1, 100000000\]$"),
    (dict(batch=10**8 + 1), r"^batch=100000001 is out of range: it must lie in \[1, 100000000\]$"),
    (dict(batch=10**8, lr=0), r"^lr must be a positive finite number, got 0$"),    # the largest batch passes
    (dict(lr=[1e-2, -1.0], ranks=[1, 2]), r"^lr must be a positive finite number, got -1\.0$"),
    (dict(lr=[1e-2, 1e-2, 1e-2], ranks=[1, 2]), r"^lr must be one number or one per rank entry \(2\), got 3$"),
    (dict(lr_factors="ab"), r"^lr_factors must be a non-empty sequence of positive numbers$"),
    (dict(lr_factors=()), r"^lr_factors must be a non-empty sequence of positive numbers$"),
    (dict(lr_factors=[1.0, 0.0]), r"^lr_factors entry must be a positive finite number, got 0\.0$"),
    (dict(steps=41, lr_factors=[1.0, 0.1]), r"^steps=41 is not divisible by the 2 phases of lr_factors$"),
])
def test_train_lora_gaussian_names_each_bad_argument(bad, message):
    """Each bad argument is rejected before any training, with a message naming it (and the range it must lie
    in); arguments at the edge of their range pass on to the next check."""
    fw, fb, tw, tb = pair()
    kw = dict(ranks=[2], steps=40, batch=8, lr=1e-2) | bad
    with pytest.raises(ValueError, match=message):
        ex.train_lora_gaussian(fw, fb, tw, tb, kw.pop("ranks"), generator=gen(), **kw)


# ---------------------------------------------------------------------------------------------- pretrain_frozen
def replay_pretrain(fw, fb, tw, tb, levels, max_steps, batch, lr, g):
    """pretrain_frozen's documented recipe: Adam on all weights and biases of every frozen model, a fresh batch
    ``N(0, I)`` (S, batch, D) per step, loss = batch mean of the squared error summed over outputs; level ``c`` keeps
    the model (and the step t) at the first step t ≥ 1 whose batch loss, before that step's update, is below the
    initial loss / c; c = 1 is the initial model; a level never reached keeps the final model and max_steps."""
    S, K = fw.shape[0], len(levels)
    W, b = fw.clone(), fb.clone()
    opt = Adam([W, b], lr)
    keep = {(k, s): (fw[s], fb[s], 0) for k in range(K) for s in range(S) if levels[k] == 1}
    init = None
    for t in range(max_steps):
        if len(keep) == K * S:
            break
        x = torch.randn(S, batch, D, generator=g, dtype=F64)
        W.requires_grad_(True)
        b.requires_grad_(True)
        losses = [(relu_net(x[s], W[s], b[s]) - relu_net(x[s], tw[s], tb[s])).square().sum(-1).mean()
                  for s in range(S)]
        if init is None:
            init = [loss.item() for loss in losses]
        else:
            for k in range(K):
                for s in range(S):
                    if (k, s) not in keep and losses[s].item() < init[s] / levels[k]:
                        keep[(k, s)] = (W[s].detach().clone(), b[s].detach().clone(), t)
        opt.step(torch.autograd.grad(sum(losses), [W, b]))
    for k in range(K):
        for s in range(S):
            keep.setdefault((k, s), (W[s].detach().clone(), b[s].detach().clone(), max_steps))
    outW = torch.stack([torch.stack([keep[k, s][0] for s in range(S)]) for k in range(K)])
    outb = torch.stack([torch.stack([keep[k, s][1] for s in range(S)]) for k in range(K)])
    used = torch.tensor([[keep[k, s][2] for s in range(S)] for k in range(K)])
    return outW, outb, used


def test_pretrain_frozen_equals_a_step_by_step_replay():
    """Levels 1 (the random model), 1.3 and one never reached: each seed keeps its own model and step (the seeds
    reach 1.3 at different steps), the unreached level keeps the final model with ``max_steps``; the step counts
    are integers."""
    fw, fb, tw, tb = pair(S=3, seed=2)
    levels = [1, 1.3, 1e9]
    g, g_ref = gen(6), gen(6)
    W, b, used = ex.pretrain_frozen(fw, fb, tw, tb, levels=levels, max_steps=8, batch=6, lr=0.05, generator=g)
    W_ref, b_ref, used_ref = replay_pretrain(fw, fb, tw, tb, levels, 8, 6, 0.05, g_ref)
    assert used.dtype == torch.int64 and used.tolist() == used_ref.tolist()
    assert used[0].tolist() == [0, 0, 0] and used[2].tolist() == [8, 8, 8]
    assert len(set(used[1].tolist())) > 1                                     # the seeds differ
    assert torch.allclose(W, W_ref, rtol=0, atol=1e-11) and torch.allclose(b, b_ref, rtol=0, atol=1e-11)
    assert torch.equal(W[0], fw) and (W[2] - fw).abs().max() > 1e-2
    assert torch.equal(g.get_state(), g_ref.get_state())


def test_pretrain_frozen_levels_do_not_depend_on_the_default_dtype(default_dtype):
    """The levels are compared in float64: a level 1 + 1e-9 is not the random model (it is kept at a later step),
    whether torch's default dtype is float32 or float64."""
    fw, fb, tw, tb = pair(S=1, Lbar=1, seed=4)
    kw = dict(levels=[1 + 1e-9, 2.0], max_steps=4, batch=6, lr=0.05)
    W, b, used = ex.pretrain_frozen(fw, fb, tw, tb, generator=gen(7), **kw)
    assert used.dtype == torch.int64 and used[0, 0] >= 1
    with default_dtype(F32):
        W32, b32, used32 = ex.pretrain_frozen(fw, fb, tw, tb, generator=gen(7), **kw)
    assert used32.dtype == torch.int64 and torch.equal(used32, used)
    assert torch.equal(W32, W) and torch.equal(b32, b)


def test_pretrain_frozen_names_a_bad_learning_rate():
    fw, fb, tw, tb = pair(S=1, Lbar=1)
    with pytest.raises(ValueError, match=r"^lr must be a positive finite number, got 0$"):
        ex.pretrain_frozen(fw, fb, tw, tb, levels=[2], max_steps=3, batch=4, lr=0, generator=gen())


def test_pretrain_frozen_rejects_each_shape_mismatch_alone():
    """A wrong frozen bias, target bias, target width or seed count, each on its own, is rejected with the
    expected shapes in the message."""
    fw, fb, tw, tb = pair(S=2, Lbar=1)
    message = (r"^need frozen_w \(S, L, D, D\), frozen_b \(S, L, D\), target_w \(S, L̄, D, D\), "
               r"target_b \(S, L̄, D\)$")
    wide_w, wide_b = torch.zeros(2, 1, D + 1, D + 1, dtype=F64), torch.zeros(2, 1, D + 1, dtype=F64)
    for args in ((fw, fb[:, :1], tw, tb), (fw, fb, tw, tb[..., :1]), (fw, fb, wide_w, wide_b),
                 (fw, fb, tw[:1], tb[:1])):
        with pytest.raises(ValueError, match=message):
            ex.pretrain_frozen(*args, levels=[2], max_steps=3, batch=4, lr=1e-2, generator=gen())


# ---------------------------------------------------------------------------------------------- fnn_training_curve
def curve_pair():
    g = gen(11)
    inst = [ex.random_fnn_instance(D, 2, 1, g) for _ in range(2)]
    fw, fb, tw, tb = (torch.stack([t[i] for t in inst]) for i in range(4))
    x = ex.uniform_inputs((2, 40, D), g, dtype=F64)
    return fw, fb, tw, tb, x


CFG = [dict(rank=1, lr=3e-2), dict(rank=2, lr=1e-2, bias="none")]


def test_fnn_training_curve_defaults_are_eight_records_cosine_relu_and_silent(capsys):
    """Without n_records, schedule, relu and progress the curve is the one of n_records=8, the cosine schedule
    and ReLU networks, and nothing is printed. With 8 steps the record steps are round(8^(i/7)), i = 0..7, without
    repeats: 1, 1, 2, 2, 3, 4, 6, 8."""
    fw, fb, tw, tb, x = curve_pair()
    at, rec, W, b = ex.fnn_training_curve(fw, fb, tw, tb, CFG, steps=8, batch=6, generator=gen(1), x_test=x)
    assert capsys.readouterr().err == ""
    assert at.tolist() == [1, 2, 3, 4, 6, 8]
    at2, rec2, W2, b2 = ex.fnn_training_curve(fw, fb, tw, tb, CFG, steps=8, batch=6, generator=gen(1), x_test=x,
                                              n_records=8, schedule="cosine", relu=True)
    assert torch.equal(at, at2) and torch.equal(rec, rec2) and torch.equal(W, W2) and torch.equal(b, b2)
    lin = ex.fnn_training_curve(fw, fb, tw, tb, CFG, steps=8, batch=6, generator=gen(1), x_test=x, relu=False)
    assert not torch.equal(lin[1], rec)


def test_fnn_training_curve_two_records_of_two_steps():
    """n_records = steps = 2: both steps are recorded."""
    fw, fb, tw, tb, x = curve_pair()
    at, rec, W, b = ex.fnn_training_curve(fw, fb, tw, tb, CFG, steps=2, batch=4, generator=gen(), x_test=x,
                                          n_records=2)
    assert at.tolist() == [1, 2] and rec.shape == (2, 2, 2)


def test_fnn_training_curve_computes_in_the_requested_dtype():
    """float64 models and test inputs with dtype=float32: the records and the models are float32, close to the
    float64 run."""
    fw, fb, tw, tb, x = curve_pair()
    kw = dict(steps=5, batch=6, x_test=x, n_records=3)
    at, rec, W, b = ex.fnn_training_curve(fw, fb, tw, tb, CFG, generator=gen(2), dtype=F32, **kw)
    at64, rec64, W64, b64 = ex.fnn_training_curve(fw, fb, tw, tb, CFG, generator=gen(2), **kw)
    assert rec.dtype == W.dtype == b.dtype == F32 and rec64.dtype == W64.dtype == F64
    assert torch.equal(at, at64) and torch.allclose(rec.double(), rec64, rtol=1e-4, atol=1e-6)
    assert torch.allclose(W.double(), W64, atol=1e-5)


def test_fnn_training_curve_progress_bar_label(capsys):
    """progress=True labels the bar "curve"; a string is used as the label itself."""
    fw, fb, tw, tb, x = curve_pair()
    kw = dict(steps=2, batch=4, x_test=x, n_records=1)
    ex.fnn_training_curve(fw, fb, tw, tb, CFG, generator=gen(), progress=True, **kw)
    assert re.search(r"(?:^|\r)curve: ", capsys.readouterr().err)
    ex.fnn_training_curve(fw, fb, tw, tb, CFG, generator=gen(), progress="mine", **kw)
    err = capsys.readouterr().err
    assert re.search(r"(?:^|\r)mine: ", err) and "curve" not in err


X_MSG = r"^x_test must be \(S, n, D\) with S and D those of frozen_w$"


@pytest.mark.parametrize("bad, message", [
    (dict(steps=0), r"^steps=0 is out of range: it must lie in \[1, 1000000000\]$"),
    (dict(steps=10**9 + 1, x_test=None), r"^steps=1000000001 is out of range: it must lie in \[1, 1000000000\]$"),
    (dict(steps=10**9, x_test=None), X_MSG),                                  # the largest step count passes
    (dict(n_records=0), r"^n_records=0 is out of range: it must lie in \[1, 10\]$"),
    (dict(n_records=11), r"^n_records=11 is out of range: it must lie in \[1, 10\]$"),
    (dict(schedule="linear"), r"^schedule must be 'constant', 'cosine' or 'exp', got 'linear'$"),
    (dict(x_test=[[[0.0] * D]] * 2), X_MSG),                                  # not a tensor
    (dict(x_test=torch.zeros(2, 5, D + 1)), X_MSG),                           # wrong D only
    (dict(x_test=torch.zeros(3, 5, D)), X_MSG),                               # wrong S only
    (dict(x_test=torch.zeros(2, D)), X_MSG),                                  # (S, D): no batch dimension
    (dict(x_test=torch.zeros(2, 5, D, 1)), X_MSG),                            # four dimensions
])
def test_fnn_training_curve_names_each_bad_argument(bad, message):
    fw, fb, tw, tb, x = curve_pair()
    kw = dict(steps=10, batch=4, generator=gen(), x_test=x) | bad
    with pytest.raises(ValueError, match=message):
        ex.fnn_training_curve(fw, fb, tw, tb, CFG, **kw)


def test_training_functions_refuse_non_square_frozen_layers():
    """Every layer maps R^D to R^D: frozen and target weights of shape (S, L, 3, 4) are refused by name, before any
    training."""
    fw, fb = torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3)
    tw, tb = torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"^shapes must be frozen_w \(S, L, D, D\)"):
        ex.train_lora_gaussian(fw, fb, tw, tb, [1], lr=1e-2, steps=1, batch=2, generator=g)
    with pytest.raises(ValueError, match=r"^need frozen_w \(S, L, D, D\)"):
        ex.pretrain_frozen(fw, fb, tw, tb, levels=[1], max_steps=1, batch=2, lr=1e-2, generator=g)
