"""Claims as checks: a stable verdict line for nbval, a ledger record for the book, an error with the numbers.

Every claim of the book goes through :func:`claim`. Its quantitative form records *what was measured*, the
*limit* it was held to and the **margin**, how far the claim is from failing::

    lb.claim("construction error equals sigma_{RL+1}(E)", deviation, "<=", 1e-9,
             kind="theorem", label="Zeng & Lee, Lemma 1", control="test_controls_expressivity.py::test_lemma1")

Each claim has a **kind**:

``theorem``
    tests a statement of a paper. It must name a ``label`` (the paper's result, e.g. ``"Jang et al., Thm 4.1"``) and
    a negative ``control``: a test in ``tests/`` in which the *same* check fails on an input where the theorem's
    conclusion is false or its hypothesis violated. A claim for which no failing input exists is not a theorem claim.
``departure``
    shows where a paper's statement, proof step or constant fails (it needs a ``label``; the errata page lists it).
``sanity``
    tests the book's own code or a numerical identity.

The margin is measured in decades: ``log10(limit / measured)`` for an upper limit, ``log10(measured / limit)`` for a
lower one (positive: passed with room; negative: failed). It is ``inf`` for a measured 0 under a positive upper limit
and ``None`` where a ratio means nothing (``==``, or a limit or value that is not positive).

Inside a Jupyter kernel the verdict is displayed as a ``text/plain`` output that carries the full record in its
metadata (``metadata["lorabook"]["claim"]``): nbval compares only the text, which has no raw floats, and the claims
ledger of the book reads the records from the executed notebooks. Outside a kernel the line is printed. Every record
is also appended to :data:`LEDGER` for the running process.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("theorem", "departure", "sanity")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
_UPPER, _LOWER = ("<", "<="), (">", ">=")
_TESTS = Path(__file__).resolve().parent.parent / "tests"

#: every claim record of this process, in order (a list of dicts; see :func:`claim`)
LEDGER: list[dict] = []


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check: whether it passed and its margin in decades (``None`` where a ratio means nothing)."""

    passed: bool
    margin: float | None


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


def _as_number(value: Any, name: str) -> float | int:
    """A finite real scalar from a Python/NumPy number or a one-element tensor/array (bools are rejected)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) != 1:
            raise ValueError(f"{name} must be a single number, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        raise ValueError(f"{name} is {float(value)}: a claim needs a finite number")
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def evaluate(measured: Any, op: str, limit: Any) -> Verdict:
    """Evaluate ``measured <op> limit`` and its margin, without printing or recording anything.

    Negative-control tests call this with the measured value of a bad input and expect ``passed`` to be false.

    Parameters
    ----------
    measured, limit : finite real scalars (Python/NumPy numbers or one-element tensors).
    op : one of ``"<"``, ``"<="``, ``">"``, ``">="``, ``"=="``.
    """
    if op not in OPS:
        raise ValueError(f"claim op must be one of {', '.join(OPS)}, got {op!r}")
    m, lim = _as_number(measured, "measured"), _as_number(limit, "limit")
    passed = bool(OPS[op](m, lim))
    margin: float | None = None
    if op in _UPPER and lim > 0:
        margin = math.inf if m <= 0 else math.log10(lim / m)
    elif op in _LOWER and lim > 0 and m > 0:
        margin = math.log10(m / lim)
    return Verdict(passed, margin)


def _fmt(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return repr(value)


def control_exists(control: str) -> bool:
    """Whether ``control`` (``"test_file.py::test_name"``, optionally with ``tests/`` and a ``[param]`` id) names a
    test function defined in the repository's ``tests/`` folder."""
    if not isinstance(control, str) or "::" not in control:
        return False
    file, _, name = control.partition("::")
    file = file.removeprefix("tests/")
    name = name.split("[", 1)[0].split("::")[-1]
    path = _TESTS / file
    if not (path.is_file() and re.fullmatch(r"test_\w+\.py", file) and re.fullmatch(r"test_\w+", name)):
        return False
    return re.search(rf"^\s*def {re.escape(name)}\(", path.read_text(), flags=re.M) is not None


def _json_safe(record: dict) -> dict:
    """The record with non-finite floats (an infinite margin) written as strings, which JSON can carry."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _emit(line: str, record: dict) -> None:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython ships with the book's environment
        shell = None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display

        display({"text/plain": line}, raw=True, metadata={"lorabook": {"claim": _json_safe(record)}})
    else:
        print(line)


def claim(statement: str, measured: Any, op: str | None = None, limit: Any = None, /, *, kind: str | None = None,
          label: str | None = None, control: str | tuple[str, ...] | None = None, **numbers: Any) -> None:
    """Check a claim of the book, record it in the ledger and show one stable verdict line.

    Two forms::

        claim(statement, measured, op, limit, kind=..., label=..., control=..., **numbers)   # quantitative
        claim(statement, condition, **numbers)                                              # boolean, sanity only

    Parameters
    ----------
    statement : the claim in words; shown verbatim, so keep raw floats out of it. ``statement``, ``measured``,
        ``op`` and ``limit`` are positional-only, so ``numbers`` may use any name.
    measured : the measured value (finite real scalar), or in the boolean form the truth of the claim.
    op, limit : the comparison ``measured <op> limit`` (``"<"``, ``"<="``, ``">"``, ``">="``, ``"=="``).
    kind : ``"theorem"``, ``"departure"`` or ``"sanity"``; required in the quantitative form. The boolean form is
        always a sanity check.
    label : the paper's result the claim tests (``"Zeng & Lee, Lemma 1"``); required for theorem and departure.
    control : for a theorem claim, the negative control(s): ``"test_file.py::test_name"`` of a test in ``tests/``
        where the same check fails. Checked to exist when the repository's ``tests/`` folder is present.
    **numbers : further quantities behind the claim; recorded, and shown when the claim fails.

    Raises
    ------
    AssertionError
        When the claim is false, with the statement, measured, limit and ``numbers``.
    ValueError
        On an empty statement, an unknown kind or op, a non-finite or non-scalar value, a theorem claim without a
        label or an existing negative control, or a departure without a label.
    """
    from .config import get_scale

    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("claim statement must be a non-empty string")
    detail = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
    record: dict[str, Any] = {"statement": statement, "label": label, "scale": get_scale().name,
                              "numbers": {k: _fmt(v) for k, v in numbers.items()}}
    if op is None and limit is None:
        if kind not in (None, "sanity"):
            raise ValueError(f"a {kind} claim needs the quantitative form claim(statement, measured, op, limit, ...)")
        passed, kind = _as_bool(measured), "sanity"
        record.update(kind=kind, op=None, measured=passed, limit=None, margin=None, passed=passed, control=None)
    else:
        if op is None or limit is None:
            raise ValueError("the quantitative form needs both op and limit")
        if kind not in KINDS:
            raise ValueError(f"claim kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind in ("theorem", "departure") and not (isinstance(label, str) and label.strip()):
            raise ValueError(f"a {kind} claim must name the paper's result it tests (label=...)")
        controls = (control,) if isinstance(control, str) else tuple(control or ())
        if kind == "theorem":
            if not controls:
                raise ValueError(f"theorem claim {statement!r} names no negative control (control='test_x.py::test_y')")
            missing = [c for c in controls if not control_exists(c)] if _TESTS.is_dir() else []
            if missing:
                raise ValueError(f"negative control {missing[0]!r} of claim {statement!r} is not a test in tests/")
        verdict = evaluate(measured, op, limit)
        passed = verdict.passed
        record.update(kind=kind, op=op, measured=_as_number(measured, "measured"), limit=_as_number(limit, "limit"),
                      margin=verdict.margin, passed=passed, control=list(controls) or None)
        detail = f"measured={_fmt(record['measured'])} {op} limit={_fmt(record['limit'])}" + (
            f", {detail}" if detail else "")
    LEDGER.append(record)
    head = kind if kind == "sanity" or not label else f"{kind} ({label})"
    if not passed:
        raise AssertionError(f"✗ {head}: {statement}" + (f" ({detail})" if detail else ""))
    _emit(f"✓ {head}: {statement}", record)


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
