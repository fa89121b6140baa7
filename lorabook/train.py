"""Training plumbing: a batched Adam for sweeps, and a cached sweep runner with a progress bar.

Sweeps over seeds, ranks, learning rates and weight decays are run as *one* tensor program: every
parameter carries a leading batch dimension ``B`` (one slice per configuration) and the loss function
returns one loss per slice. Slices never interact, so the result equals ``B`` independent runs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import types
import warnings
from typing import Any, Callable, Iterable, Sequence

import joblib
import torch
from tqdm import tqdm

from .checks import check_positive_int
from .config import cache_dir, source_hash


def _per_slice(value: float | torch.Tensor, B: int, name: str, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"{name} must be a scalar or a vector of length B={B}, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return t


def batched_adam(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[int], torch.Tensor],
    steps: int,
    lr: float | torch.Tensor,
    *,
    weight_decay: float | torch.Tensor = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    project: Callable[[], None] | None = None,
    record_every: int = 0,
    progress: bool | str = False,  # pragma: no mutate
) -> torch.Tensor:
    """Adam on ``B`` independent problems at once, with a learning rate and weight decay per problem.

    Parameters
    ----------
    params : leaf tensors, each of shape ``(B, ...)``; updated in place (``requires_grad`` is set).
    loss_fn : ``step -> (B,)`` tensor of losses, one per problem; draw fresh data inside it per step.
    steps : number of Adam steps (positive integer).
    lr, weight_decay : scalars or ``(B,)`` tensors. Weight decay is the coupled L2 kind (added to the
        gradient, as ``torch.optim.Adam``), i.e. the loss ``L + wd/2 ‖θ‖²``.
    project : optional in-place projection called after every step (e.g. clamping to a box).
    record_every : if positive, record the losses every ``record_every`` steps (and at the last step).

    Returns
    -------
    ``(n_records, B)`` tensor of recorded losses (empty ``(0, B)`` if ``record_every == 0``).
    """
    check_positive_int(steps, "steps")
    if not params:
        raise ValueError("params must be a non-empty sequence of tensors with a leading batch dimension")
    B = params[0].shape[0]
    for i, p in enumerate(params):
        if p.dim() < 1 or p.shape[0] != B:
            raise ValueError(f"params[{i}] has shape {tuple(p.shape)}; every parameter needs leading batch dimension B={B}")
        p.requires_grad_(True)
    lr_t = _per_slice(lr, B, "lr", params[0])
    wd_t = _per_slice(weight_decay, B, "weight_decay", params[0])
    b1, b2 = betas
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    records = []
    label = progress if isinstance(progress, str) else "adam"  # pragma: no mutate
    bar = tqdm(range(1, steps + 1), desc=label, disable=not progress, leave=False)  # pragma: no mutate
    for t in bar:
        losses = loss_fn(t - 1)
        if losses.shape != (B,):
            raise ValueError(f"loss_fn must return shape (B,) = ({B},), got {tuple(losses.shape)}")
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"non-finite loss at step {t - 1} in slices {torch.nonzero(~torch.isfinite(losses)).flatten().tolist()[:5]}")
        grads = torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            for p, g, mi, vi in zip(params, grads, m, v):
                shape = (B,) + (1,) * (p.dim() - 1)
                g = g + wd_t.view(shape) * p
                mi.mul_(b1).add_(g, alpha=1 - b1)
                vi.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps)
                p.sub_(lr_t.view(shape) * step)
            if project is not None:
                project()
        if record_every and (t % record_every == 0 or t == steps):
            records.append(losses.detach().clone())
    if not records:
        return torch.empty(0, B, dtype=params[0].dtype, device=params[0].device)
    return torch.stack(records)


def config_key(config: Any) -> str:
    """A stable short hash of a JSON-serialisable configuration (dict keys sorted)."""
    try:
        text = json.dumps(config, sort_keys=True, default=str)
    except (TypeError, ValueError) as err:  # non-string keys, circular references
        raise ValueError(f"config is not serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _const_text(const: Any) -> str:
    """A constant as text; frozensets (from ``x in {...}``) print in hash order, so their items are sorted."""
    return repr(sorted(map(repr, const))) if isinstance(const, frozenset) else repr(const)


def code_fingerprint(fn: Callable) -> str:
    """A short hash of what a callable executes: its bytecode, constants and names, recursively through nested
    functions, functions captured in closures, ``functools.partial`` arguments, bound methods and callable objects.
    File names and line numbers are left out, so the same function defined in a new notebook kernel hashes the same;
    captured values other than functions are not included (put them in the sweep's config)."""
    digest = hashlib.sha256()
    seen: set[int] = set()

    def feed(obj: Any) -> None:
        if id(obj) in seen:  # recursive closures
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            feed(obj.func)
            digest.update(repr((obj.args, sorted(obj.keywords.items()))).encode())
        elif isinstance(obj, types.MethodType):
            feed(obj.__func__)
        elif isinstance(obj, types.FunctionType):
            feed(obj.__code__)
            for cell in obj.__closure__ or ():
                contents = cell.cell_contents
                if callable(contents) and not isinstance(contents, type):
                    feed(contents)
        elif isinstance(obj, types.CodeType):
            digest.update(obj.co_code + repr((obj.co_names, obj.co_freevars)).encode())
            for const in obj.co_consts:
                feed(const) if isinstance(const, types.CodeType) else digest.update(_const_text(const).encode())
        else:  # a callable object
            feed(type(obj).__call__)

    if not callable(fn):
        raise ValueError(f"code_fingerprint needs a callable, got {type(fn).__name__}")
    feed(fn)
    return digest.hexdigest()[:16]


def _load(path) -> tuple[bool, Any]:
    """``(True, result)`` from a cache file, or ``(False, None)`` (with a warning, file removed) if it is unreadable."""
    try:
        return True, joblib.load(path)
    except Exception as err:  # a truncated or corrupted file: never a pickle traceback, recompute instead
        warnings.warn(f"cached result {path} is unreadable ({type(err).__name__}: {err}); recomputing it",
                      RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return False, None


def cached_sweep(
    name: str,
    configs: Iterable[dict],
    run: Callable[[dict], Any],
    *,
    progress: bool = True,  # pragma: no mutate
) -> list[Any]:
    """Run ``run(config)`` for each config, caching each finished result on disk.

    Results are stored under ``cache_dir()/name/<code version>/<hash of config and run>.joblib``; a rerun (after an
    interruption, or a book rebuild) loads finished configs and computes only the missing ones. The key holds the
    config, the bytecode of ``run`` (:func:`code_fingerprint`) and the version of the whole ``lorabook`` package
    (:func:`lorabook.config.source_hash`), so editing the package or the run function recomputes; results of older
    code versions are deleted when a new one is written. Put everything else that changes the result — the scale,
    the seed, the sizes, values captured by ``run`` — in the config. An unreadable cache file (truncated, corrupted)
    is recomputed with a warning. ``LORABOOK_CACHE=off`` disables the cache.

    Returns
    -------
    list of results, in the order of ``configs``.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"sweep name must be a non-empty string without '/', got {name!r}")
    if not callable(run):
        raise ValueError(f"run must be callable, got {type(run).__name__}")
    configs = list(configs)
    root = cache_dir()
    version = source_hash()
    folder = None if root is None else root / name / version
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.parent.iterdir():  # results of older code versions can never be served again
            if old != folder:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    run_hash = code_fingerprint(run)
    results = []
    for config in tqdm(configs, desc=name, disable=not progress, leave=False):  # pragma: no mutate
        path = None if folder is None else folder / f"{config_key({'config': config, 'run': run_hash})}.joblib"
        if path is not None and path.exists():
            ok, result = _load(path)
            if ok:
                results.append(result)
                continue
        result = run(config)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            joblib.dump(result, tmp)
            tmp.replace(path)
        results.append(result)
    return results
