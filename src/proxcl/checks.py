"""The checks of given values, written once: every module validates numbers and counts with these
and so says the same thing in the same words (one line, :class:`proxcl.errors.InputError`)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import InputError


def number(name: str, value, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float, checked to be finite and inside the given bounds."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        raise InputError(f"{name} must be a finite number in {lo_s or '(-inf'}, {hi_s or 'inf)'}, got {value!r}")
    return v


def whole(name: str, value, minimum: int = 0, *, integral_floats: bool = False) -> int:
    """``value`` as an int >= ``minimum``: an int (not a bool), or with ``integral_floats`` also a
    float with no fractional part (a count that went through arithmetic)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if integral_floats and not ok:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
              and value == int(value))
    if not ok or int(value) < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)
