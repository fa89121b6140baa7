"""Claims as checks: one stable verdict line for nbval, an ``AssertionError`` with the numbers on failure."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _as_bool(condition: Any) -> bool:
    if isinstance(condition, torch.Tensor):
        if condition.numel() != 1:
            raise ValueError(f"claim condition must be a single truth value, got a tensor of shape {tuple(condition.shape)}")
        return bool(condition.item())
    if isinstance(condition, np.ndarray):
        if condition.size != 1:
            raise ValueError(f"claim condition must be a single truth value, got an array of shape {condition.shape}")
        return bool(condition.item())
    if isinstance(condition, (bool, np.bool_)):
        return bool(condition)
    raise ValueError(f"claim condition must be a bool (or one-element tensor/array), got {type(condition).__name__}")


def _fmt(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return repr(value)


def claim(statement: str, condition: Any, **numbers: Any) -> None:
    """Check a claim of the book and print one verdict line, ``✓ <statement>``.

    Parameters
    ----------
    statement : the claim in words; printed verbatim, so keep raw floats out of it.
    condition : the truth of the claim (bool, or a one-element tensor/array).
    **numbers : the measured quantities behind the claim; shown only when the claim fails.

    Raises
    ------
    AssertionError
        When ``condition`` is false, with the statement and ``numbers``.
    ValueError
        When ``statement`` is empty or ``condition`` is not a single truth value.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("claim statement must be a non-empty string")
    if not _as_bool(condition):
        detail = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
        raise AssertionError(f"✗ {statement}" + (f" ({detail})" if detail else ""))
    print(f"✓ {statement}")


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer (Python or NumPy), else raise ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def rel_err(a: Any, b: Any, floor: float = 1e-12) -> float:
    """Relative error ``|a - b| / max(|b|, floor)`` of two scalars (or the max over two arrays, elementwise)."""
    a_ = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=float)
    b_ = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"rel_err needs equal shapes, got {a_.shape} and {b_.shape}")
    if not (np.all(np.isfinite(a_)) and np.all(np.isfinite(b_))):
        raise ValueError("rel_err got a NaN or infinite value")
    return float(np.max(np.abs(a_ - b_) / np.maximum(np.abs(b_), floor))) if a_.size else 0.0


def fmt_num(x: float, digits: int = 2) -> str:
    """``x`` rounded to ``digits`` significant digits, for prose and verdict lines."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"
