"""Number formatting for people: percentages, intervals, durations, p-values.

Every function accepts None (a figure that could not be computed) and returns an en dash
for it, so templates never show "None" or "nan".
"""

from __future__ import annotations

import math
from typing import Any

DASH = "\u2013"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def number(value: Any, digits: int = 0) -> str:
    """``1234.5`` → ``1,235`` (or with ``digits`` decimals)."""
    v = _num(value)
    if v is None:
        return DASH
    return f"{v:,.{digits}f}"


def decimal(value: Any, digits: int = 2) -> str:
    """A figure with ``digits`` decimals, thousands separated."""
    return number(value, digits)


def percent(value: Any, digits: int = 1) -> str:
    """A share given as a percentage number: ``73.42`` → ``73.4%``."""
    v = _num(value)
    return DASH if v is None else f"{v:.{digits}f}%"


def fraction(value: Any, digits: int = 1) -> str:
    """A share given as a fraction: ``0.7342`` → ``73.4%``."""
    v = _num(value)
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def signed(value: Any, digits: int = 0) -> str:
    """A score with its sign: ``42`` → ``+42``, ``-3.5`` → ``-4`` (typographic minus)."""
    v = _num(value)
    if v is None:
        return DASH
    text = f"{v:+.{digits}f}"
    if float(text) == 0:  # no "+0" or "-0"
        return f"{0:.{digits}f}"
    return text.replace("-", "\u2212", 1)


def interval(value: Any, digits: int = 1, *, scale: float = 1.0, unit: str = "") -> str:
    """A two-element interval ``[lo, hi]`` as ``lo-hi`` (``scale`` multiplies, e.g. 100)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return DASH
    lo, hi = _num(value[0]), _num(value[1])
    if lo is None or hi is None:
        return DASH
    return f"{_minus(lo * scale, digits)}{unit} to {_minus(hi * scale, digits)}{unit}"


def _minus(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    if float(text) == 0:
        return f"{0:.{digits}f}"
    return text.replace("-", "\u2212", 1)


QUESTION_TYPES = {
    "nps": "NPS (0-10)",
    "rating": "Rating (1-5)",
    "single_choice": "Single choice",
    "multiple_choice": "Multiple choice",
    "number": "Number",
    "free_text": "Free text",
}


def question_type(kind: Any) -> str:
    """A question type for people: ``nps`` → ``NPS (0-10)``."""
    return QUESTION_TYPES.get(str(kind), human(kind))


def duration(seconds: Any) -> str:
    """Seconds as ``4m 12s`` / ``1h 05m`` / ``38s``."""
    v = _num(seconds)
    if v is None:
        return DASH
    s = round(v)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def p_value(value: Any) -> str:
    """``p = 0.031`` / ``p < 0.001``."""
    v = _num(value)
    if v is None:
        return "p " + DASH
    if v < 0.001:
        return "p < 0.001"
    return f"p = {v:.3f}"


def human(name: Any) -> str:
    """``question_stats`` → ``Question stats``; ``single_choice`` → ``Single choice``."""
    text = str(name).replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


FILTERS = {
    "number": number,
    "decimal": decimal,
    "percent": percent,
    "fraction": fraction,
    "signed": signed,
    "interval": interval,
    "duration": duration,
    "p_value": p_value,
    "human": human,
    "question_type": question_type,
}
