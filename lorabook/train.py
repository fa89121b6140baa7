"""Training plumbing: a batched Adam for sweeps, and a cached sweep runner with a progress bar.

Sweeps over seeds, ranks, learning rates and weight decays are run as *one* tensor program: every
parameter carries a leading batch dimension ``B`` (one slice per configuration) and the loss function
returns one loss per slice. Slices never interact, so the result equals ``B`` independent runs.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Iterable, Sequence

import joblib
import torch
from tqdm import tqdm

from .checks import check_positive_int
from .config import cache_dir


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
    progress: bool | str = False,
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
    bar = tqdm(range(1, steps + 1), desc=progress if isinstance(progress, str) else "adam", disable=not progress, leave=False)
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
    except TypeError as err:  # pragma: no cover - default=str makes almost everything serialisable
        raise ValueError(f"config is not serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_sweep(
    name: str,
    configs: Iterable[dict],
    run: Callable[[dict], Any],
    *,
    progress: bool = True,
) -> list[Any]:
    """Run ``run(config)`` for each config, caching each finished result on disk.

    Results are stored under ``cache_dir()/name/<hash of config>.joblib``; a rerun (after an interruption, or
    a book rebuild) loads finished configs and computes only the missing ones. Put everything that changes
    the result — the scale, the seed, the sizes, a version tag of the experiment — in the config.
    ``LORABOOK_CACHE=off`` disables the cache.

    Returns
    -------
    list of results, in the order of ``configs``.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"sweep name must be a non-empty string without '/', got {name!r}")
    configs = list(configs)
    root = cache_dir()
    folder = None if root is None else root / name
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    results = []
    for config in tqdm(configs, desc=name, disable=not progress, leave=False):
        path = None if folder is None else folder / f"{config_key(config)}.joblib"
        if path is not None and path.exists():
            results.append(joblib.load(path))
            continue
        result = run(config)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            joblib.dump(result, tmp)
            tmp.replace(path)
        results.append(result)
    return results
