"""One figure style for the whole book: PNG output, readable sizes, labelled axes, a colour per method."""
from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

#: One colour per method, shared by every chapter so a reader learns them once.
COLORS = {
    "construction": "#1b9e77",
    "lora": "#d95f02",
    "full": "#7570b3",
    "theory": "#444444",
    "lora_A": "#e7298a",
    "lora_B": "#66a61e",
    "other": "#e6ab02",
}

_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
}


def use_style() -> None:
    """Apply the book's matplotlib style and ask Jupyter for PNG figures (stable under nbval)."""
    matplotlib.rcParams.update(_STYLE)
    try:  # only inside IPython
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # pragma: no cover - plain python run
        pass


def subplots(ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.4, **kw):
    """``plt.subplots`` with the book's per-panel size; returns ``(fig, axes)`` (axes squeezed)."""
    if ncols < 1 or nrows < 1:
        raise ValueError(f"ncols and nrows must be positive, got {ncols}, {nrows}")
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kw)


def band(ax, x: Sequence[float], runs: np.ndarray, *, label: str, color: str | None = None, q: float = 0.25,
         marker: str = "o", **kw) -> None:
    """Plot the median over runs with a shaded inter-quantile band.

    Parameters
    ----------
    x : length-n positions.
    runs : ``(n_runs, n)`` array; NaNs are ignored.
    q : the band spans quantiles ``q`` to ``1 - q`` (default: the inter-quartile range).
    """
    runs = np.asarray(runs, dtype=float)
    if runs.ndim == 1:
        runs = runs[None]
    if runs.shape[1] != len(x):
        raise ValueError(f"runs must have shape (n_runs, {len(x)}), got {runs.shape}")
    med = np.nanmedian(runs, axis=0)
    line, = ax.plot(x, med, marker=marker, label=label, color=color, **kw)
    if runs.shape[0] > 1:
        lo, hi = np.nanquantile(runs, [q, 1 - q], axis=0)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


def mark_threshold(ax, x: float, label: str, *, color: str = COLORS["theory"]) -> None:
    """A dashed vertical line at a theoretical threshold, labelled in the legend."""
    ax.axvline(x, linestyle="--", color=color, linewidth=1.2, label=label)
