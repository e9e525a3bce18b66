"""Checking a variant's ``factor`` option, with messages that say what to change.

The factor arrives from a JSON preset, a ``--option factor=...`` on the command line or a
widget, so it may be any JSON value; each check names the allowed values in its message.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator


def _number(value: Any, expected: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be {expected} ({what}), not {value!r}")
    return float(value)


def whole_factor(value: Any, low: int, high: int, what: str) -> int:
    """``value`` as an integer in ``[low, high]``; ``what`` says what the factor means."""
    v = _number(value, f"a whole number from {low} to {high}", what)
    if v != int(v):
        raise ValueError(f"must be a whole number from {low} to {high} ({what}), not {value}")
    if v <= 1:
        hint = "1 would leave the data as it is" if v == 1 else f"{int(v)} is meaningless"
        raise ValueError(f"must be from {low} to {high} ({what}); {hint}")
    if not low <= v <= high:
        raise ValueError(f"{int(v)} is not supported; use a whole number from {low} to {high} ({what})")
    return int(v)


def ratio_factor(value: Any, high: float, what: str) -> float:
    """``value`` as a number larger than 1 and at most ``high`` (fractions allowed)."""
    v = _number(value, f"a number larger than 1 and at most {high:g}", what)
    if v <= 1:
        hint = "1 would leave the data as it is" if v == 1 else f"{value} is meaningless"
        raise ValueError(f"must be larger than 1 and at most {high:g} ({what}); {hint}")
    if v > high:
        raise ValueError(f"{value} is not supported; use a number larger than 1 and at most {high:g} ({what})")
    return v


def WholeFactor(low: int, high: int, what: str) -> Any:
    """An options-model field type: a whole factor in ``[low, high]`` checked by :func:`whole_factor`."""
    return Annotated[int, BeforeValidator(lambda v: whole_factor(v, low, high, what))]


def RatioFactor(high: float, what: str) -> Any:
    """An options-model field type: a factor in ``(1, high]`` checked by :func:`ratio_factor`."""
    return Annotated[float, BeforeValidator(lambda v: ratio_factor(v, high, what))]
