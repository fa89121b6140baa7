"""Real LoRA with ``peft``: MiniLM adapted by the library LoRA users actually use.

:func:`peft_minilm` wraps a copy of all-MiniLM-L6-v2 with ``peft``'s ``LoraConfig`` on the attention projections
of every layer, in the three training modes of :mod:`lorabook.lora` (both factors, A only, B only), initialised as
the book's :class:`lorabook.lora.LoRALinear` is. :func:`load_lora_into_peft` copies the factors of a ``LoRALinear``
onto a ``peft`` layer, so the two implementations can be compared on the same weights and factors.
:func:`embed` and :func:`head_logits` put the zero-shot cosine head of :mod:`lorabook.data` on top, and
:func:`peft_run` is one training run of the chapter "Real LoRA with peft" (cached by
:func:`lorabook.train.cached_sweep`).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .lora import MODES, LoRALinear

#: Linear layers of a MiniLM (BERT) layer that can carry an adapter.
TARGETS = ("query", "key", "value", "dense")


def _check_rank(rank: Any, upper: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be an integer, got {type(rank).__name__}")
    if not 1 <= rank <= upper:
        raise ValueError(f"rank={rank} is out of range: it must lie in [1, {upper}]")
    return int(rank)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a training mode; allowed: {', '.join(MODES)}")
    return mode


def _lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``peft`` LoRA layers of ``model`` (modules with ``lora_A``/``lora_B`` dicts and a ``base_layer``)."""
    return [(n, m) for n, m in model.named_modules()
            if hasattr(m, "lora_A") and hasattr(m, "lora_B") and hasattr(m, "base_layer")]


def set_mode(model: nn.Module, mode: str, adapter: str = "default") -> None:
    """Make only the factor(s) of ``mode`` trainable in every ``peft`` LoRA layer of ``model``.

    ``"both"``: ``lora_A`` and ``lora_B``; ``"A"``: ``lora_A`` only (``lora_B`` frozen); ``"B"``: ``lora_B`` only
    (``lora_A`` frozen). Every other parameter is frozen.
    """
    _check_mode(mode)
    layers = _lora_modules(model)
    if not layers:
        raise ValueError("model has no peft LoRA layer")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, m in layers:
        m.lora_A[adapter].weight.requires_grad_(mode in ("both", "A"))
        m.lora_B[adapter].weight.requires_grad_(mode in ("both", "B"))


@torch.no_grad()
def init_factors(model: nn.Module, mode: str, generator: torch.Generator, adapter: str = "default") -> None:
    """Initialise every ``peft`` LoRA layer of ``model`` as :class:`lorabook.lora.LoRALinear` does.

    For a layer ``d_in → d_out`` at rank ``r``: modes ``"both"`` and ``"B"`` draw ``A ~ N(0, 1/d_in)``
    (``(r, d_in)``) and set ``B = 0`` (``(d_out, r)``); mode ``"A"`` sets ``A = 0`` and draws ``B ~ N(0, 1/r)``.
    So ``ΔW = 0`` and the adapted model starts as the pretrained one. Draws use ``generator`` (CPU), layer by
    layer in module order.
    """
    _check_mode(mode)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    layers = _lora_modules(model)
    if not layers:
        raise ValueError("model has no peft LoRA layer")
    for _, m in layers:
        A, B = m.lora_A[adapter].weight, m.lora_B[adapter].weight
        r, d_in = A.shape
        if mode == "A":
            A.zero_()
            B.copy_(torch.randn(B.shape, generator=generator, dtype=B.dtype) / math.sqrt(r))
        else:
            A.copy_(torch.randn(A.shape, generator=generator, dtype=A.dtype) / math.sqrt(d_in))
            B.zero_()


def peft_minilm(rank: int, targets: Sequence[str] = ("query", "value"), mode: str = "both", seed: int = 0,
                layers: Sequence[int] | None = None):
    """A ``peft``-wrapped copy of MiniLM with rank-``rank`` LoRA on ``targets`` of every layer.

    Parameters
    ----------
    rank : LoRA rank ``r``, an integer in ``[1, 384]``.
    targets : names of the linear layers to adapt in each of the 6 layers, among :data:`TARGETS`
        (``"dense"`` matches the attention output and the feed-forward output layers).
    mode : ``"both"`` (train A and B), ``"A"`` (B frozen random, A trained from 0) or ``"B"`` (A frozen random,
        B trained from 0); see :func:`init_factors` and :func:`set_mode`.
    seed : seed of the random factor.
    layers : indices (0..5) of the encoder layers that carry adapters; ``None`` (default) means all six.

    Returns
    -------
    ``peft.PeftModel`` around a deep copy of the shared MiniLM (the shared model is untouched), scaling
    ``alpha / r = 1``, no dropout, float32, in eval mode. Call it as the ``transformers`` model:
    ``model(input_ids=(B, T), attention_mask=(B, T)).last_hidden_state`` is ``(B, T, 384)``.
    """
    from peft import LoraConfig, get_peft_model

    from .data import load_minilm

    rank = _check_rank(rank, 384)
    _check_mode(mode)
    targets = tuple(targets) if not isinstance(targets, str) else (targets,)
    if not targets or not set(targets) <= set(TARGETS) or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct names among {TARGETS}, got {targets!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    extra = {}
    if layers is not None:
        layers = sorted(set(int(i) for i in layers)) if not isinstance(layers, (int, str)) else None
        if not layers or not all(0 <= i < 6 for i in layers):
            raise ValueError("layers must be a non-empty collection of layer indices in [0, 5]")
        extra = dict(layers_to_transform=layers, layers_pattern="layer")
    base = copy.deepcopy(load_minilm()[1])
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), lora_dropout=0.0, bias="none",
                        **extra)
    with warnings.catch_warnings():  # transformers' deprecation notices raised inside peft, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, config)
    init_factors(model, mode, torch.Generator().manual_seed(int(seed)))
    set_mode(model, mode)
    return model.eval()


@torch.no_grad()
def load_lora_into_peft(lora: LoRALinear, layer: nn.Module, adapter: str = "default") -> nn.Module:
    """Copy the factors, scaling and training mode of a book :class:`~lorabook.lora.LoRALinear` onto a ``peft``
    LoRA layer, so that both compute the same function ``x ↦ W0 x + b + s·B A x``.

    Parameters
    ----------
    lora : the book's layer, ``A`` ``(r, d_in)``, ``B`` ``(d_out, r)``, scaling ``s``.
    layer : a ``peft`` ``lora.Linear`` at the same rank whose ``base_layer`` has the same weight
        ``(d_out, d_in)`` and bias as ``lora.base`` (checked exactly).
    adapter : the ``peft`` adapter name.

    Returns
    -------
    ``layer``, with ``lora_A[adapter].weight = A``, ``lora_B[adapter].weight = B``, ``scaling[adapter] = s`` and
    ``requires_grad`` of the two factors as in ``lora`` (A trained in modes both/A, B in both/B).
    """
    if not isinstance(lora, LoRALinear):
        raise ValueError(f"lora must be a LoRALinear, got {type(lora).__name__}")
    if not all(hasattr(layer, a) for a in ("lora_A", "lora_B", "base_layer", "scaling")):
        raise ValueError(f"layer must be a peft LoRA layer, got {type(layer).__name__}")
    if adapter not in layer.lora_A:
        raise ValueError(f"layer has no adapter {adapter!r}; it has {sorted(layer.lora_A.keys())}")
    base, pA, pB = layer.base_layer, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if base.weight.shape != lora.base.weight.shape or not torch.equal(base.weight, lora.base.weight):
        raise ValueError("the peft layer's base weight differs from the LoRALinear's frozen weight")
    if (base.bias is None) != (lora.base.bias is None) or (
            base.bias is not None and not torch.equal(base.bias, lora.base.bias)):
        raise ValueError("the peft layer's base bias differs from the LoRALinear's bias")
    if pA.shape != lora.A.shape or pB.shape != lora.B.shape:
        raise ValueError(f"rank differs: peft factors A {tuple(pA.shape)}, B {tuple(pB.shape)}; LoRALinear "
                         f"A {tuple(lora.A.shape)}, B {tuple(lora.B.shape)}")
    pA.copy_(lora.A)
    pB.copy_(lora.B)
    layer.scaling[adapter] = lora.scaling
    pA.requires_grad_(lora.A.requires_grad)
    pB.requires_grad_(lora.B.requires_grad)
    return layer


def embed(model: nn.Module, texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64,
          grad: bool = False) -> torch.Tensor:
    """Mean-pooled MiniLM embeddings of ``texts``, padded per batch (dynamic padding): ``n texts -> (n, 384)``,
    on the device of ``model``'s parameters (the batches are moved there).

    ``model`` is MiniLM or a ``peft`` wrapper of it. With ``grad=False`` (default) no graph is kept.
    """
    from .data import load_minilm, mean_pool

    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = next(model.parameters()).device
    tok = load_minilm()[0]
    texts = list(texts)
    # without gradients, batch texts of similar length together (less padding), then restore the order
    order = np.argsort([len(t) for t in texts], kind="stable") if not grad else np.arange(len(texts))
    out = []
    with torch.set_grad_enabled(grad):
        for i in range(0, len(texts), batch_size):
            b = tok([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt").to(dev)
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            out.append(mean_pool(h, b["attention_mask"]))
    return torch.cat(out)[torch.as_tensor(np.argsort(order), device=dev)]


def head_logits(model: nn.Module, texts: Sequence[str], directions: torch.Tensor, temperature: float = 0.05,
                **kw: Any) -> torch.Tensor:
    """Zero-shot cosine head on the model's embeddings: ``n texts, (K, 384) -> (n, K)`` logits
    ``cos(e, d_k) / temperature`` (:func:`lorabook.data.zero_shot_logits`). ``kw`` goes to :func:`embed`."""
    from .data import zero_shot_logits

    return zero_shot_logits(embed(model, texts, **kw), directions, temperature)


def _evaluate(model: nn.Module, texts: Sequence[str], labels: np.ndarray, dirs: torch.Tensor,
              temperature: float) -> dict:
    from .data import balanced_accuracy

    logits = head_logits(model, texts, dirs, temperature)
    y = torch.as_tensor(labels)
    return {"bacc": balanced_accuracy(logits, y),
            "loss": float(nn.functional.cross_entropy(logits, y)),
            "logits": logits.numpy()}


def peft_run(config: dict) -> dict:
    """One real-LoRA training run: ``peft`` MiniLM + zero-shot cosine head, cross-entropy, Adam.

    ``config`` keys: ``classes`` (tuple of class names), ``n_train`` (snippets per class), ``n_dev`` (per class),
    ``n_test``, ``split_seed``, ``rank``, ``targets``, ``mode``, ``lr``, ``steps``, ``batch_size``, ``seed``
    (factor draw and batch order), ``temperature``, ``max_length``.

    Returns
    -------
    dict with ``dev`` and ``test``: ``bacc`` (balanced accuracy) and ``loss`` (cross-entropy) after training,
    ``params`` (trainable parameters) and ``seconds`` (wall time of the run). The untrained model is the
    zero-shot head (``ΔW = 0``), so its numbers are computed once, outside the runs.
    """
    from tqdm import tqdm

    from .data import class_directions, rotten_tomatoes_splits, zero_shot_logits

    required = ("classes", "n_train", "n_dev", "n_test", "split_seed", "rank", "targets", "mode", "lr", "steps",
                "batch_size", "seed", "temperature", "max_length")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}")
    if not (isinstance(config["lr"], (int, float)) and math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    t0 = time.perf_counter()
    data = rotten_tomatoes_splits(tuple(config["classes"]), n_train_per_class=config["n_train"],
                                  n_dev_per_class=config["n_dev"], n_test=config["n_test"],
                                  seed=config["split_seed"])
    dirs = class_directions(tuple(config["classes"]))
    T = config["temperature"]
    model = peft_minilm(config["rank"], tuple(config["targets"]), config["mode"], config["seed"])
    ev = lambda split: _evaluate(model, data[f"{split}_texts"], data[f"{split}_labels"], dirs, T)  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config["lr"])
    rng = np.random.default_rng(config["seed"])
    texts, labels = data["train_texts"], torch.as_tensor(data["train_labels"])
    n, bs = len(texts), min(config["batch_size"], len(texts))
    order = rng.permutation(n)
    pos = 0
    model.eval()  # MiniLM's dropout off: the run is deterministic given the seed
    for _ in tqdm(range(config["steps"]), desc=f"{config['mode']} N={config['n_train']}", leave=False):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + bs]
        pos += bs
        emb = embed(model, [texts[i] for i in idx], max_length=config["max_length"], batch_size=bs, grad=True)
        loss = nn.functional.cross_entropy(zero_shot_logits(emb, dirs, T), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {s: ev(s) for s in ("dev", "test")}
    return {
        "dev": {k: out["dev"][k] for k in ("bacc", "loss")},
        "test": {k: out["test"][k] for k in ("bacc", "loss")},
        "params": int(sum(p.numel() for p in params)),
        "seconds": time.perf_counter() - t0,
    }


# --- adapters on the top layers, trained from cached lower-layer states; K classes ---

def _bert(model: nn.Module) -> nn.Module:
    """The ``transformers`` BERT model inside a ``peft`` wrapper (or ``model`` itself)."""
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if inner is not None and hasattr(inner, "encoder") else model


@torch.no_grad()
def states_before(texts: Sequence[str], layer: int, *, max_length: int = 64, batch_size: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states entering the frozen MiniLM's encoder layer ``layer`` (0..6), with dynamic padding.

    Texts are batched by length (little padding), run through the embeddings and layers ``0..layer-1`` only,
    and returned in their original order, padded to the longest text: ``n texts -> hidden (n, T, 384)``,
    ``mask (n, T)`` (0/1), ``T ≤ max_length``. Adapters on layers ``≥ layer`` can then be trained and evaluated
    from these states (:func:`pooled_from_states`) without rerunning the frozen lower layers.
    """
    from .data import attention_bias, load_minilm

    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= 6:
        raise ValueError(f"layer must be an integer in [0, 6], got {layer!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    tok, model = load_minilm()
    texts = list(texts)
    order = np.argsort([len(t) for t in texts], kind="stable")
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    T = max(len(e) for e in enc)
    dtype = model.embeddings.word_embeddings.weight.dtype
    hidden = torch.zeros(len(texts), T, model.config.hidden_size, dtype=dtype)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for i in range(0, len(texts), batch_size):
        idx = order[i:i + batch_size]
        b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
        h = model.embeddings(input_ids=b["input_ids"], token_type_ids=b.get("token_type_ids"))
        bias = attention_bias(b["attention_mask"], h.dtype)
        for blk in model.encoder.layer[:layer]:
            out = blk(h, attention_mask=bias)
            h = out[0] if isinstance(out, tuple) else out
        t = h.shape[1]
        hidden[torch.as_tensor(idx), :t] = h
        mask[torch.as_tensor(idx), :t] = b["attention_mask"]
    return hidden, mask


def pooled_from_states(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Run encoder layers ``start..5`` of ``model`` (MiniLM or a ``peft`` wrapper) on cached states and
    mean-pool: ``(B, T, 384), (B, T) -> (B, 384)``. The batch is trimmed to its longest text first.
    Gradients flow (no ``no_grad`` here)."""
    from .data import run_layers

    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"need hidden (B, T, H) and mask (B, T); got {tuple(hidden.shape)} and "
                         f"{tuple(mask.shape)}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= 6:
        raise ValueError(f"start must be an integer in [0, 6], got {start!r}")
    t = max(int(mask.sum(1).max()), 1)
    return run_layers(hidden[:, :t], mask[:, :t], start, _bert(model))


@lru_cache(maxsize=2)
def cached_split(classes: tuple[str, ...], n_pool: int, n_dev: int, n_test: int, split_seed: int, start: int,
                 max_length: int = 64) -> tuple[dict, dict]:
    """A data split (:func:`lorabook.data.rotten_tomatoes_splits` with ``n_pool`` training snippets per class)
    and the states entering layer ``start`` of its train, dev and test texts (:func:`states_before`),
    computed once per process: ``(data, {"train"|"dev"|"test": (hidden, mask)})``."""
    from .data import rotten_tomatoes_splits

    data = rotten_tomatoes_splits(tuple(classes), n_train_per_class=n_pool, n_dev_per_class=n_dev,
                                  n_test=n_test, seed=split_seed)
    # batches of 16 measured fastest on one CPU thread
    states = {s: states_before(data[f"{s}_texts"], start, max_length=max_length, batch_size=16)
              for s in ("train", "dev", "test")}
    return data, states


def train_subset(labels: np.ndarray, n_pool: int, n_train: int) -> np.ndarray:
    """Indices of the first ``n_train`` training snippets of each class in a split drawn with ``n_pool`` per
    class (classes are stored in blocks of ``n_pool``): ``(K·n_train,)``. Smaller training sets are nested in
    larger ones."""
    K = len(labels) // n_pool
    if n_pool * K != len(labels) or not 1 <= n_train <= n_pool:
        raise ValueError(f"n_train={n_train} must lie in [1, n_pool={n_pool}] with len(labels) = K·n_pool")
    return np.concatenate([k * n_pool + np.arange(n_train) for k in range(K)])


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group: int = 8) -> list[np.ndarray]:
    """One epoch of mini-batches whose texts have similar lengths (less padding), in random order.

    The epoch is a random permutation of ``range(n)`` (``n = len(lengths)``); each run of ``group·batch_size``
    consecutive indices is sorted by length and cut into batches of ``batch_size`` (a last shorter remainder is
    dropped when ``n ≥ batch_size``); the batches are then shuffled. Every batch is still a random draw of texts,
    grouped by length as ``transformers``' ``group_by_length`` does. Returns a list of index arrays.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if lengths.ndim != 1 or n == 0:
        raise ValueError("lengths must be a non-empty vector")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}], got {batch_size!r}")
    perm = rng.permutation(n)
    batches = []
    chunk = group * batch_size
    for i in range(0, n, chunk):
        part = perm[i:i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def _top_scores(model, hidden, mask, labels, dirs, T, start, batch_size=16) -> dict:
    from .data import zero_shot_logits

    # batches of similar length: little padding; small batches measured fastest on one CPU thread
    order = torch.argsort(mask.sum(1), stable=True)
    logits = torch.cat([zero_shot_logits(pooled_from_states(model, hidden[idx], mask[idx], start), dirs, T)
                        for idx in order.split(batch_size)])
    y = torch.as_tensor(labels)[order]
    return {**_scores(logits, y), "err": float((logits.argmax(1) != y).double().mean())}


@lru_cache(maxsize=4)
def _directions(classes: tuple[str, ...]) -> torch.Tensor:
    from .data import class_directions

    return class_directions(classes)


def top_peft(rank: int, targets: Sequence[str], mode: str, seed: int, start: int) -> nn.Module:
    """A ``peft`` LoRA model of MiniLM's encoder layers ``start..5`` only, for :func:`pooled_from_states`.

    The same adapters, initialisation and random draws as ``peft_minilm(rank, targets, mode, seed,
    layers=range(start, 6))``, but only the adapted layers are copied (the embeddings and the frozen lower
    layers, whose outputs are cached, are left out), so building it is cheap. ``model.base_model.model``
    has ``encoder.layer`` with placeholders below ``start``.
    """
    from peft import LoraConfig, get_peft_model

    from .data import load_minilm

    rank = _check_rank(rank, 384)
    _check_mode(mode)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= 5:
        raise ValueError(f"start must be an integer in [0, 5], got {start!r}")
    targets = tuple(targets) if not isinstance(targets, str) else (targets,)
    if not targets or not set(targets) <= set(TARGETS) or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct names among {TARGETS}, got {targets!r}")
    full = load_minilm()[1]
    shell = nn.Module()
    shell.encoder = nn.Module()
    shell.encoder.layer = nn.ModuleList([nn.Identity() if i < start else copy.deepcopy(blk)
                                         for i, blk in enumerate(full.encoder.layer)])
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), lora_dropout=0.0, bias="none",
                        layers_to_transform=list(range(start, 6)), layers_pattern="layer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(shell, config)
    init_factors(model, mode, torch.Generator().manual_seed(int(seed)))
    set_mode(model, mode)
    return model.eval()


def top_run(config: dict) -> dict:
    """One real-LoRA run with adapters on the top encoder layers only, trained from cached states.

    ``config`` keys: those of :func:`peft_run` (``classes`` may name two or three classes: K-class cross-entropy
    on the zero-shot head of :func:`lorabook.data.zero_shot_logits`), plus ``layers`` (the adapted layers, e.g.
    ``[5]``; the layers below ``min(layers)`` are frozen and run once per process by :func:`cached_split`),
    ``n_pool`` (training snippets per class of the split; the run trains on the first ``n_train`` per class,
    :func:`train_subset`) and ``n_train_eval`` (how many training snippets, drawn with ``seed``, estimate the
    training loss). ``steps = 0`` evaluates the untrained model, which is the zero-shot head. Optional
    ``eval_at``: step counts in ``[0, steps]`` after which the dev and test splits are also scored, so that one
    run gives the dev curve of several step budgets (checkpoints do not change the training: the same batches
    and updates as without them). Optional ``eval_dev`` (default ``True``): ``False`` skips scoring the dev
    split (the result then has no ``dev``).

    Returns
    -------
    dict with ``train``, ``dev``, ``test``: ``bacc``, ``loss`` (cross-entropy) and ``err`` (0–1 error) after
    training; ``checkpoints`` (only with ``eval_at``: ``{step: {"dev"|"test": scores}}``); ``params``
    (trainable parameters) and ``seconds`` (wall time of the run, states excluded).
    """
    from tqdm import tqdm

    from .data import zero_shot_logits

    required = ("classes", "n_train", "n_pool", "n_dev", "n_test", "split_seed", "rank", "targets", "mode", "lr",
                "steps", "batch_size", "seed", "temperature", "max_length", "layers", "n_train_eval")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}")
    if not (isinstance(config["lr"], (int, float)) and math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    eval_at = config.get("eval_at", ())
    if isinstance(eval_at, (str, bytes)) or not all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k <= config["steps"]
            for k in eval_at):
        raise ValueError(f"eval_at must list step counts in [0, steps={config['steps']}], got {eval_at!r}")
    eval_at = {int(k) for k in eval_at}
    splits = ("dev", "test") if config.get("eval_dev", True) else ("test",)
    layers = sorted(int(i) for i in config["layers"])
    start = layers[0]
    if layers != list(range(start, 6)):
        raise ValueError(f"layers must be the top layers start..5, got {config['layers']!r}")
    data, states = cached_split(tuple(config["classes"]), config["n_pool"], config["n_dev"], config["n_test"],
                                config["split_seed"], start, config["max_length"])
    t0 = time.perf_counter()
    dirs = _directions(tuple(config["classes"]))
    T = config["temperature"]
    model = top_peft(config["rank"], tuple(config["targets"]), config["mode"], config["seed"], start)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config["lr"])
    head = config.get("head", "fixed")
    if head not in ("fixed", "trained"):
        raise ValueError(f"head must be 'fixed' or 'trained', got {head!r}")
    if head == "trained":  # the class directions become parameters, initialised at the zero-shot ones
        dirs = dirs.clone().requires_grad_(True)
        opt.add_param_group({"params": [dirs], "lr": config.get("head_lr", config["lr"])})
    rng = np.random.default_rng(config["seed"])
    sub = train_subset(data["train_labels"], config["n_pool"], config["n_train"])
    h_tr, m_tr = states["train"]
    labels = torch.as_tensor(data["train_labels"])
    n, bs = len(sub), min(config["batch_size"], len(sub))
    lengths = m_tr[torch.as_tensor(sub)].sum(1).numpy()
    batches: list[np.ndarray] = []
    model.eval()
    checkpoints: dict[int, dict] = {}
    for step in tqdm(range(config["steps"]), desc=f"{config['mode']} r={config['rank']} N={n}", leave=False):
        if step in eval_at:
            checkpoints[step] = {s: _top_scores(model, *states[s], data[f"{s}_labels"], dirs.detach(), T, start)
                                 for s in splits}
        if not batches:
            batches = length_grouped_batches(lengths, bs, rng)
        idx = torch.as_tensor(sub[batches.pop()])
        emb = pooled_from_states(model, h_tr[idx], m_tr[idx], start)
        loss = nn.functional.cross_entropy(zero_shot_logits(emb, dirs, T), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    dirs = dirs.detach()
    if config["steps"] in eval_at:
        checkpoints[config["steps"]] = {s: _top_scores(model, *states[s], data[f"{s}_labels"], dirs, T, start)
                                        for s in splits}
    ev = rng.choice(sub, min(config["n_train_eval"], n), replace=False)
    out = {"train": _top_scores(model, h_tr[ev], m_tr[ev], data["train_labels"][ev], dirs, T, start)}
    for s in splits:
        out[s] = (checkpoints[config["steps"]][s] if config["steps"] in checkpoints
                  else _top_scores(model, *states[s], data[f"{s}_labels"], dirs, T, start))
    if eval_at:
        out["checkpoints"] = checkpoints
    out["params"] = int(sum(p.numel() for p in params))
    out["seconds"] = time.perf_counter() - t0
    return out


# --- pretrained vs random models and the NTK regime ---

def minilm_random(seed: int) -> nn.Module:
    """MiniLM's architecture with random weights: ``transformers``' ``AutoModel.from_config`` on the config of the
    shipped all-MiniLM-L6-v2 (no download), drawn under ``torch.manual_seed(seed)`` inside a forked RNG state (the
    global generator is left as it was). Eval mode, float32, CPU, every parameter frozen. Same shapes as
    :func:`lorabook.data.load_minilm`'s model; BERT's initialisation (normal, std ``initializer_range`` = 0.02,
    LayerNorm at 1 and 0)."""
    from transformers import AutoModel

    from .data import load_minilm

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config = copy.deepcopy(load_minilm()[1].config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = AutoModel.from_config(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def peft_wrap(base: nn.Module, rank: int, targets: Sequence[str] = ("query", "value"), seed: int = 0,
              layers: Sequence[int] | None = None) -> nn.Module:
    """A ``peft`` LoRA wrapper (mode ``"both"``: ``A ~ N(0, 1/d_in)``, ``B = 0``, ``alpha/r = 1``, no dropout)
    around a deep copy of ``base`` — any module, e.g. MiniLM, :func:`minilm_random` or one BERT layer — on the
    linear layers named ``targets`` (of ``layers`` only, when given: ``peft``'s ``layers_to_transform``).

    Returns the ``peft`` model in eval mode with only the factors trainable; ``base`` is untouched."""
    from peft import LoraConfig, get_peft_model

    rank = _check_rank(rank, 384)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not set(targets) <= set(TARGETS):
        raise ValueError(f"targets must be names among {TARGETS}, got {targets!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    extra = {} if layers is None else {"layers_to_transform": [int(i) for i in layers]}
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), lora_dropout=0.0, bias="none",
                        **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(copy.deepcopy(base), config)
    init_factors(model, "both", torch.Generator().manual_seed(int(seed)))
    set_mode(model, "both")
    return model.eval()


def fit_probe(features: torch.Tensor, labels: torch.Tensor | np.ndarray, *, steps: int = 300,
              weight_decay: float = 1e-3) -> nn.Linear:
    """A linear probe on standardised features: full-batch L-BFGS on the cross-entropy plus
    ``weight_decay/2 · ‖W‖²``. ``features (n, d)``, ``labels (n,)`` in ``[0, K)`` → ``nn.Linear(d, K)``
    (deterministic: zero start)."""
    labels = torch.as_tensor(labels, device=features.device)
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"need features (n, d) and labels (n,); got {tuple(features.shape)}, {tuple(labels.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    K = int(labels.max()) + 1
    if K < 2:
        raise ValueError("labels must contain at least two classes")
    head = nn.Linear(features.shape[1], K).to(device=features.device, dtype=features.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=int(steps), line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(features), labels) + weight_decay / 2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


class Standardise(nn.Module):
    """Fixed affine map ``(e − μ) / σ`` of pooled embeddings ``(n, d) → (n, d)`` (statistics of the training set
    under the frozen model), so a linear head sees features of the same scale for every model."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be (n >= 2, d), got {tuple(features.shape)}")
        self.register_buffer("mu", features.mean(0))
        self.register_buffer("sd", features.std(0).clamp_min(1e-6))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return (e - self.mu) / self.sd


def _scores(logits: torch.Tensor, labels: np.ndarray) -> dict:
    from .data import balanced_accuracy

    y = torch.as_tensor(labels)
    return {"bacc": balanced_accuracy(logits, y), "loss": float(nn.functional.cross_entropy(logits, y))}


def embed_on(model: nn.Module, texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64,
             grad: bool = False) -> torch.Tensor:
    """:func:`embed` (which works on the device of ``model``'s parameters): ``n texts -> (n, 384)``."""
    return embed(model, texts, max_length=max_length, batch_size=batch_size, grad=grad)


@lru_cache(maxsize=4)
def _random_cached(seed: int) -> nn.Module:
    return minilm_random(seed)


def _base_model(name: str, seed: int) -> nn.Module:
    """A private copy of the frozen model ``name`` (``"pretrained"`` or ``"random"`` with ``seed``) on the
    device of :func:`lorabook.config.device`."""
    from .config import device
    from .data import load_minilm

    if name not in ("pretrained", "random"):
        raise ValueError(f"model must be 'pretrained' or 'random', got {name!r}")
    base = load_minilm()[1] if name == "pretrained" else _random_cached(int(seed))
    return copy.deepcopy(base).to(device())


@lru_cache(maxsize=8)
def _base_features(name: str, seed: int, classes: tuple, n_train: int, n_dev: int, n_test: int, split_seed: int,
                   max_length: int) -> tuple[dict, dict]:
    """The split and the frozen model's pooled embeddings of it (computed once per process)."""
    from .data import rotten_tomatoes_splits

    data = rotten_tomatoes_splits(classes, n_train_per_class=n_train, n_dev_per_class=n_dev, n_test=n_test,
                                  seed=split_seed)
    base = _base_model(name, seed)
    return data, {s: embed_on(base, data[f"{s}_texts"], max_length=max_length) for s in ("train", "dev", "test")}


#: weight decays of the linear probe, the one with the best dev balanced accuracy is kept (ties: the larger)
PROBE_DECAYS = (1.0, 0.1, 0.01)


def probe_lora_run(config: dict) -> dict:
    """One run of the pretrained-vs-random comparison: a linear probe on the frozen model's standardised pooled
    embeddings, then (``rank ≥ 1``) ``peft`` LoRA on ``targets`` of every layer trained jointly with that head.

    ``config`` keys: ``model`` (``"pretrained"`` or ``"random"``), ``model_seed`` (seed of the random weights),
    ``classes``, ``n_train``, ``n_dev`` (per class), ``n_test``, ``split_seed``, ``rank`` (0 = the probe alone),
    ``targets``, ``lr`` (Adam, LoRA factors and head), ``steps``, ``batch_size``, ``seed`` (factor draw, batch
    order), ``max_length``.

    Returns
    -------
    dict with ``dev``/``test`` ``bacc`` and ``loss``, ``probe`` (the same for the probe before LoRA), ``params``
    (trainable LoRA parameters) and ``seconds``.
    """
    from tqdm import tqdm

    required = ("model", "model_seed", "classes", "n_train", "n_dev", "n_test", "split_seed", "rank", "targets",
                "lr", "steps", "batch_size", "seed", "max_length")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}")
    if config["model"] not in ("pretrained", "random"):
        raise ValueError(f"model must be 'pretrained' or 'random', got {config['model']!r}")
    rank = config["rank"]
    if rank != 0:
        _check_rank(rank, 384)
    if not (isinstance(config["lr"], (int, float)) and math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    t0 = time.perf_counter()
    L = config["max_length"]
    data, feats = _base_features(config["model"], config["model_seed"], tuple(config["classes"]),
                                 config["n_train"], config["n_dev"], config["n_test"], config["split_seed"], L)
    dev = feats["train"].device
    std = Standardise(feats["train"])
    ytr = torch.as_tensor(data["train_labels"], device=dev)
    best = None
    for wd in PROBE_DECAYS:
        h = fit_probe(std(feats["train"]), ytr, weight_decay=wd)
        with torch.no_grad():
            sc = {s: _scores(h(std(feats[s])).cpu(), data[f"{s}_labels"]) for s in ("dev", "test")}
        if best is None or sc["dev"]["bacc"] > best[1]["dev"]["bacc"]:
            best = (h, sc, wd)
    head, probe, wd = best
    out = {"probe": probe, "probe_decay": wd, "params": 0}
    if rank == 0:
        out.update({s: probe[s] for s in ("dev", "test")})
        out["seconds"] = time.perf_counter() - t0
        return out
    model = peft_wrap(_base_model(config["model"], config["model_seed"]), rank, tuple(config["targets"]),
                      config["seed"])
    lora = [p for p in model.parameters() if p.requires_grad]
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(lora + list(head.parameters()), lr=config["lr"])
    rng = np.random.default_rng(config["seed"])
    texts = data["train_texts"]
    n, bs = len(texts), min(config["batch_size"], len(texts))
    order, pos = rng.permutation(n), 0
    for _ in tqdm(range(config["steps"]), desc=f"{config['model']} r={rank}", leave=False):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + bs]
        pos += bs
        e = embed_on(model, [texts[i] for i in idx], max_length=L, batch_size=bs, grad=True)
        loss = nn.functional.cross_entropy(head(std(e)), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for s in ("dev", "test"):
            out[s] = _scores(head(std(embed_on(model, data[f"{s}_texts"], max_length=L))).cpu(),
                             data[f"{s}_labels"])
    out["params"] = int(sum(p.numel() for p in lora))
    out["seconds"] = time.perf_counter() - t0
    return out


def closeness_margin(near: Sequence[float], far: Sequence[float]) -> float:
    """How many pooled standard deviations the mean of ``near`` exceeds the mean of ``far``:
    ``(mean(near) − mean(far)) / sqrt((var(near) + var(far)) / 2)`` (sample variances, each over ≥ 2 seeds; a
    pooled deviation below 1e-3 is taken as 1e-3, the resolution of an accuracy on a few hundred snippets)."""
    a, b = np.asarray(near, dtype=float), np.asarray(far, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two 1-d samples of at least 2 seeds, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("samples contain NaN or inf")
    sd = max(math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2), 1e-3)
    return float((a.mean() - b.mean()) / sd)


def _check_layer_inputs(hidden: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor) -> None:
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"need hidden (n, T, d) and mask (n, T); got {tuple(hidden.shape)}, {tuple(mask.shape)}")
    if directions.dim() != 2 or directions.shape[0] != 2 or directions.shape[1] != hidden.shape[2]:
        raise ValueError(f"directions must be (2, {hidden.shape[2]}), got {tuple(directions.shape)}")
    if not torch.isfinite(hidden).all():
        raise ValueError("hidden states contain NaN or inf")


def layer_logit(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor,
                temperature: float = 0.05) -> torch.Tensor:
    """The binary prompt-head logit of one (top) BERT layer: run ``layer`` on the token states ``hidden`` ``(n, T,
    d)`` entering it (padding ``mask`` ``(n, T)``), mean-pool, and return
    ``(cos(e, d_1) − cos(e, d_0)) / temperature`` ``(n,)`` — positive means label 1, the column difference of
    :func:`lorabook.data.zero_shot_logits`. ``layer`` may be a ``peft`` wrapper of a BERT layer. Gradients flow."""
    from .data import attention_bias, mean_pool, zero_shot_logits

    _check_layer_inputs(hidden, mask, directions)
    out = layer(hidden, attention_mask=attention_bias(mask, hidden.dtype))
    z = zero_shot_logits(mean_pool(out[0] if isinstance(out, tuple) else out, mask), directions, temperature)
    return z[:, 1] - z[:, 0]


def _plain(layer: nn.Module) -> nn.Module:
    """A plain copy of a BERT layer: a ``peft`` wrapper is merged (``W0 + s·B A``) and unwrapped."""
    if _lora_modules(layer):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return copy.deepcopy(layer).merge_and_unload()
    return layer


def layer_jacobian_factors(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor,
                           temperature: float = 0.05, names: Sequence[str] = ("query", "value")) -> dict:
    """The first-order Taylor expansion of :func:`layer_logit` in the weights of the projections ``names``.

    For a projection ``y_t = W x_t + b`` of the layer, the gradient of example ``i``'s logit in ``W`` is
    ``G_i = Σ_t u_{i,t} x_{i,t}ᵀ`` with ``u_{i,t} = ∂f_i/∂y_{i,t}``; examples do not interact, so one backward
    pass of ``Σ_i f_i`` gives every ``u``. A ``peft`` layer is merged first (the expansion point is then
    ``W0 + s·B A``).

    Returns
    -------
    dict with ``f0`` ``(n,)`` (the logits), ``X`` ``(n, T, d_in)`` (the projections' input: ``hidden``) and, per
    name, ``U[name]`` ``(n, T, d_out)``. :func:`linearised_logit` and :func:`weight_kernel` use them.
    """
    plain = _plain(layer)
    mods = {name: plain.get_submodule(f"attention.self.{name}") for name in names}
    outs: dict = {}

    def keep(name):  # the weights are frozen: make each projection's output a leaf that asks for its gradient
        def hook(_m, _i, o):
            outs[name] = o.detach().requires_grad_(True)
            return outs[name]
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in mods.items()]
    try:
        with torch.enable_grad():
            f = layer_logit(plain, hidden, mask, directions, temperature)
            grads = torch.autograd.grad(f.sum(), [outs[n] for n in names])
    finally:
        for h in hooks:
            h.remove()
    return {"f0": f.detach(), "X": hidden, "U": {n: g.detach() for n, g in zip(names, grads)}}


def linearised_logit(fac: dict, factors: dict, idx: Any = slice(None), scaling: float = 1.0) -> torch.Tensor:
    """Jang et al.'s linearised LoRA model: ``f0 + Σ_name ⟨G(x), s·B A⟩`` for the examples ``idx``.

    ``fac`` from :func:`layer_jacobian_factors`; ``factors[name] = (A, B)`` with ``A`` ``(r, d_in)``, ``B``
    ``(d_out, r)`` (``peft``'s shapes). ``⟨G_i, B A⟩ = Σ_t (B ᵀu_{i,t}) · (A x_{i,t})``, so the Jacobian is never
    formed. Returns ``(n,)``, differentiable in the factors."""
    out = fac["f0"][idx]
    X = fac["X"][idx]
    for name, (A, B) in factors.items():
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1] or A.shape[1] != X.shape[2]:
            raise ValueError(f"factors of {name!r}: need A (r, {X.shape[2]}), B (d_out, r); got "
                             f"{tuple(A.shape)}, {tuple(B.shape)}")
        U = fac["U"][name][idx]
        out = out + scaling * ((U @ B) * (X @ A.T)).sum((1, 2))
    return out


def weight_kernel(fac: dict) -> torch.Tensor:
    """Empirical tangent kernel in the adapted weights: ``K_ij = Σ_name ⟨G_i, G_j⟩_F`` ``(n, n)`` (float64), from
    :func:`layer_jacobian_factors` (``G_i = Σ_t u_{i,t} x_{i,t}ᵀ``)."""
    K = 0
    for U in fac["U"].values():
        G = torch.einsum("ntd,nte->nde", U.double(), fac["X"].double()).flatten(1)
        K = K + G @ G.T
    return K


def kernel_drift(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """``‖K1 − K0‖_F / ‖K0‖_F`` of two ``(n, n)`` kernels on the same inputs."""
    if K0.shape != K1.shape or K0.dim() != 2 or K0.shape[0] != K0.shape[1]:
        raise ValueError(f"need two square kernels of one shape, got {tuple(K0.shape)}, {tuple(K1.shape)}")
    n0 = float(K0.norm())
    if not n0 > 0:
        raise ValueError("K0 is zero: the drift is undefined")
    return float((K1 - K0).norm()) / n0


def agreement(f_real: torch.Tensor, f_lin: torch.Tensor, f0: torch.Tensor) -> dict:
    """How well the linearised logits ``f_lin`` describe the real ones ``f_real`` (both ``(n,)``, from the same
    start ``f0``): ``sign`` = fraction of equal predicted labels; ``rel`` = ``‖f_real − f_lin‖ / ‖f_real − f0‖``
    (the part of the fine-tuning change the linearisation misses; 0 is perfect)."""
    if not (f_real.shape == f_lin.shape == f0.shape) or f_real.dim() != 1:
        raise ValueError(f"need three (n,) logit vectors, got {tuple(f_real.shape)}, {tuple(f_lin.shape)}, "
                         f"{tuple(f0.shape)}")
    moved = float((f_real - f0).norm())
    return {"sign": float(((f_real > 0) == (f_lin > 0)).double().mean()),
            "rel": float((f_real - f_lin).norm()) / max(moved, 1e-12)}


@lru_cache(maxsize=4)
def _top_inputs(classes: tuple, n_train: int, n_dev: int, n_test: int, split_seed: int, max_length: int,
                layer: int) -> dict:
    from .config import device
    from .data import class_directions, rotten_tomatoes_splits

    data = rotten_tomatoes_splits(classes, n_train_per_class=n_train, n_dev_per_class=n_dev, n_test=n_test,
                                  seed=split_seed)
    dev = device()
    out = {"directions": class_directions(classes).to(dev)}
    for s in ("train", "dev", "test"):
        h, m = hidden_before(data[f"{s}_texts"], layer, max_length=max_length)
        out[s] = tuple(t.contiguous().to(dev) for t in (h, m, torch.as_tensor(data[f"{s}_labels"])))
    return out


def ntk_pair_run(config: dict) -> dict:
    """Real ``peft`` LoRA on the query/value projections of MiniLM's last layer against its linearisation in the
    weight update (:func:`linearised_logit`), from the same factors, batches and optimiser.

    ``config`` keys: ``classes`` (two names), ``n_train``, ``n_dev`` (per class), ``n_test``, ``split_seed``,
    ``rank``, ``lr`` (Adam), ``steps``, ``checkpoints`` (steps at which both are evaluated; the last must be
    ``steps``), ``batch_size``, ``seed``, ``temperature``, ``max_length``, ``n_probe`` (training snippets of the
    kernel). Layers 0–4 are frozen, so their output is computed once per split (:func:`hidden_before`, cached in
    the process).

    Returns
    -------
    dict with ``zero`` (the untrained head: ``dev``/``test`` ``bacc``, ``loss``), ``checkpoints`` (per checkpoint:
    ``step``, ``real`` and ``lin`` ``test`` (and, at the last, ``dev``) ``bacc``/``loss``, ``agree`` =
    :func:`agreement` on the test split), ``drift`` (:func:`kernel_drift` of the real run's weight kernel on the
    probe snippets; the linearised model's kernel is ``K_0`` by construction), ``update`` (``‖s·B A‖_F / ‖W0‖_F`` per projection), ``f_test``
    (final real, linearised and initial test logits) and ``seconds``.
    """
    from tqdm import tqdm

    from .data import balanced_accuracy, load_minilm

    required = ("classes", "n_train", "n_dev", "n_test", "split_seed", "rank", "lr", "steps", "checkpoints",
                "batch_size", "seed", "temperature", "max_length", "n_probe")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}")
    if not (isinstance(config["lr"], (int, float)) and math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ValueError(f"lr must be a positive finite number, got {config['lr']!r}")
    checks = sorted(set(config["checkpoints"]))
    if not checks or checks[-1] != config["steps"] or checks[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, steps] and end at steps={config['steps']}, got {checks}")
    t0 = time.perf_counter()
    base = load_minilm()[1]
    top = len(base.encoder.layer) - 1
    inp = _top_inputs(tuple(config["classes"]), config["n_train"], config["n_dev"], config["n_test"],
                      config["split_seed"], config["max_length"], top)
    dirs, T = inp["directions"], config["temperature"]
    layer0 = copy.deepcopy(base.encoder.layer[top]).to(inp["directions"].device)
    real = peft_wrap(layer0, config["rank"], ("query", "value"), config["seed"])
    names = ("query", "value")
    mods = {n: real.get_submodule(f"base_model.model.attention.self.{n}") for n in names}
    lin = {n: (mods[n].lora_A["default"].weight.detach().clone().requires_grad_(True),
               mods[n].lora_B["default"].weight.detach().clone().requires_grad_(True)) for n in names}
    fac = {s: layer_jacobian_factors(layer0, inp[s][0], inp[s][1], dirs, T) for s in ("train", "dev", "test")}
    opt_r = torch.optim.Adam([p for p in real.parameters() if p.requires_grad], lr=config["lr"])
    opt_l = torch.optim.Adam([p for ab in lin.values() for p in ab], lr=config["lr"])
    bce = nn.functional.binary_cross_entropy_with_logits

    def scores(f, y):
        f, y = f.detach().cpu(), y.cpu()
        return {"bacc": balanced_accuracy(f, y), "loss": float(bce(f, y.to(f.dtype)))}

    zero = {s: scores(fac[s]["f0"], inp[s][2]) for s in ("dev", "test")}
    h, m, y = inp["train"]
    n, bs = len(y), min(config["batch_size"], len(y))
    rng = np.random.default_rng(config["seed"])
    order, pos = rng.permutation(n), 0
    record = []
    for step in tqdm(range(1, config["steps"] + 1), desc=f"NTK N={config['n_train']} lr={config['lr']:g}",
                     leave=False):
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos:pos + bs])
        pos += bs
        for opt, f in ((opt_r, lambda: layer_logit(real, h[idx], m[idx], dirs, T)),
                       (opt_l, lambda: linearised_logit(fac["train"], lin, idx))):
            loss = bce(f(), y[idx].to(h.dtype))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step in checks:
            row = {"step": step, "real": {}, "lin": {}}
            with torch.no_grad():  # the dev split only where it is used: at the end, to choose the rate
                for s in ("dev", "test") if step == checks[-1] else ("test",):
                    fr = layer_logit(real, inp[s][0], inp[s][1], dirs, T)
                    fl = linearised_logit(fac[s], lin)
                    row["real"][s], row["lin"][s] = scores(fr, inp[s][2]), scores(fl, inp[s][2])
            row["agree"] = agreement(fr, fl, fac["test"]["f0"])
            record.append(row)
    probe = slice(0, config["n_probe"])
    K0 = weight_kernel({"X": fac["train"]["X"][probe], "U": {k: v[probe] for k, v in fac["train"]["U"].items()}})
    facT = layer_jacobian_factors(real, h[probe], m[probe], dirs, T)
    update = {}
    for nme in names:
        W0 = mods[nme].base_layer.weight
        d = mods[nme].lora_B["default"].weight @ mods[nme].lora_A["default"].weight * mods[nme].scaling["default"]
        update[nme] = float(d.detach().norm() / W0.norm())
    return {"zero": zero, "checkpoints": record, "drift": kernel_drift(K0, weight_kernel(facT)),
            "update": update, "f_test": {"real": fr.cpu().numpy(), "lin": fl.detach().cpu().numpy(),
                                         "f0": fac["test"]["f0"].cpu().numpy()},
            "seconds": time.perf_counter() - t0}


def jvp_logit(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor,
              deltas: dict, temperature: float = 0.05) -> torch.Tensor:
    """The directional derivative of :func:`layer_logit` in the weights, by forward-mode AD
    (``torch.func.jvp`` through ``torch.func.functional_call``): ``d/dt f(W + t·Δ)`` at ``t = 0`` for
    ``deltas[name] = Δ`` ``(d_out, d_in)`` on the projections ``attention.self.<name>`` of a plain BERT layer.
    Returns ``(n,)``. An independent computation of ``⟨G(x), Δ⟩`` in :func:`linearised_logit`."""
    from torch.func import functional_call, jvp

    from .data import attention_bias

    params = {k: v.detach() for k, v in layer.named_parameters()}
    keys = {name: f"attention.self.{name}.weight" for name in deltas}
    for name, key in keys.items():
        if key not in params or params[key].shape != deltas[name].shape:
            raise ValueError(f"delta of {name!r} must match the weight {key} of the layer")

    def f(*ws):
        p = dict(params, **{keys[n]: w for n, w in zip(deltas, ws)})
        return functional_call(layer, p, (hidden,), {"attention_mask": attention_bias(mask, hidden.dtype)})

    def logit(*ws):
        from .data import mean_pool, zero_shot_logits

        out = f(*ws)
        z = zero_shot_logits(mean_pool(out[0] if isinstance(out, tuple) else out, mask), directions, temperature)
        return z[:, 1] - z[:, 0]

    _check_layer_inputs(hidden, mask, directions)
    primals = tuple(params[keys[n]] for n in deltas)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernel has no forward-mode derivative
        return jvp(logit, primals, tuple(deltas[n].detach() for n in deltas))[1]


def hidden_before(texts: Sequence[str], layer: int, *, max_length: int = 32, batch_size: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states of the pretrained MiniLM entering encoder layer ``layer`` (0..5), as
    :func:`lorabook.data.hidden_before_layer` computes them, but running only layers ``0..layer-1`` on batches of
    similar length (dynamic padding; :func:`states_before`). Returns ``(hidden, mask)``: ``(n, T, 384)`` and
    ``(n, T)``, ``T`` the longest tokenised text (at most ``max_length``), padding positions zero."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= 5:
        raise ValueError(f"layer must be an integer in [0, 5], got {layer!r}")
    hidden, mask = states_before(texts, layer, max_length=max_length, batch_size=batch_size)
    return hidden * mask[..., None].to(hidden.dtype), mask
