"""The one place that reads the environment: scale, device, seeds and the results cache.

``LORABOOK_SCALE`` selects the sizes every notebook runs at:

========  ===========================================================
quick     CI: every notebook in seconds to a minute on 2 CPU cores
default   a laptop: the figures a reader sees, the book in minutes
paper     the papers' sizes, meant for a GPU
========  ===========================================================

``LORABOOK_CACHE`` (optional) is the folder where finished sweep runs are cached; ``off`` disables the
cache. Unset, the cache lives in ``.cache/lorabook`` at the repository root.
"""
from __future__ import annotations

import hashlib
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

SCALES = ("quick", "default", "paper")
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scale:
    """Sizes for one scale. Chapters read common sizes from the fields and their own with :meth:`pick`.

    Attributes
    ----------
    name : one of ``"quick"``, ``"default"``, ``"paper"``.
    seeds : number of independent seeds (random instances, initialisations) in a sweep.
    steps : optimiser steps of a gradient run.
    tol : relative tolerance of a claim that compares a trained result with theory.
    n_test : fresh test samples for an estimated risk.
    """

    name: str
    seeds: int
    steps: int
    tol: float
    n_test: int

    def pick(self, quick: Any, default: Any, paper: Any) -> Any:
        """Return the argument named after this scale, e.g. ``scale.pick(quick=3, default=20, paper=100)``."""
        return {"quick": quick, "default": default, "paper": paper}[self.name]

    def __str__(self) -> str:
        return self.name


_SCALES = {
    "quick": Scale("quick", seeds=3, steps=300, tol=5e-2, n_test=2_000),
    "default": Scale("default", seeds=10, steps=2_000, tol=2e-2, n_test=5_000),
    "paper": Scale("paper", seeds=50, steps=5_000, tol=1e-2, n_test=20_000),
}


def get_scale(name: str | None = None) -> Scale:
    """Return the frozen :class:`Scale` named by ``name`` or, if ``None``, by ``LORABOOK_SCALE``.

    Unset or empty ``LORABOOK_SCALE`` means ``"default"``. Any other value raises ``ValueError``.
    """
    source = "argument name"
    if name is None:
        name = os.environ.get("LORABOOK_SCALE", "").strip() or "default"
        source = "LORABOOK_SCALE"
    if not isinstance(name, str) or name not in _SCALES:
        raise ValueError(f"{source}={name!r} is not a scale; allowed values are {', '.join(SCALES)}")
    return _SCALES[name]


def device() -> torch.device:
    """CUDA when a GPU is available, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    """Seed Python, NumPy and torch globally and return explicit generators ``(torch_gen, numpy_gen)``.

    The torch generator lives on the CPU: draw on the CPU and move to the device, so that results are
    identical whether or not a GPU is present.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed), np.random.default_rng(seed)


@contextmanager
def few_threads(numel: int = 0, dev: torch.device | str | None = None, limit: int = 1 << 21) -> Iterator[None]:
    """Run a small CPU tensor program on one intra-op thread, then restore the thread count.

    On a busy 2-core machine thread hand-offs cost milliseconds per small matmul (measured: 30 ms vs 0.08 ms for a
    30×256 by 256×20 product), dwarfing the arithmetic of the book's batched sweeps. Nothing changes on a GPU
    (``dev`` of type cuda) or when the program is large (``numel ≥ limit`` tensor entries).
    """
    saved = torch.get_num_threads()
    on = numel < limit and (dev is None or torch.device(dev).type == "cpu")
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def cache_dir() -> Path | None:
    """Folder for cached sweep results (``LORABOOK_CACHE``), or ``None`` when set to ``off``."""
    value = os.environ.get("LORABOOK_CACHE", "").strip()
    if value.lower() == "off":
        return None
    return Path(value) if value else _ROOT / ".cache" / "lorabook"


def source_hash() -> str:
    """A short hash of every ``lorabook`` source file: the code version that cached results are keyed by.

    Editing any module of the package changes it, so :func:`lorabook.train.cached_sweep` recomputes instead of
    serving a result computed by the old code.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def describe() -> str:
    """One line naming the scale, the device and the torch version, printed at the top of each notebook."""
    dev = device()
    n = torch.get_num_threads()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({n} thread{'' if n == 1 else 's'})"
    return f"scale={get_scale().name} · device={name} · torch {torch.__version__}"
