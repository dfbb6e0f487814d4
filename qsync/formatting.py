"""How figures read to a person: dollars with sensible precision, counts with separators, durations.

One function per kind of figure, used by the CLI's search output, every notebook widget, the DataFrames
the notebooks display and the axes of their plots, so `$0.0082` reads the same everywhere (never
`0.00821025`, `1.815e-05` or `0.013390949999999999`).
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(math.isnan(value))
    except TypeError:
        return False


def usd(value: Any) -> str:
    """Dollars: cents above $1, two significant digits below (at most six decimals), `$0` for nothing."""
    if _missing(value):
        return MISSING
    amount = float(value)
    if amount == 0:
        return "$0"
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    if amount < 5e-7:
        return f"{sign}<$0.000001"
    decimals = min(6, max(2, 1 - math.floor(math.log10(amount))))
    return f"{sign}${amount:.{decimals}f}"


def count(value: Any) -> str:
    """A whole number with thousands separators."""
    return MISSING if _missing(value) else f"{int(value):,}"


def number(value: Any, digits: int = 1) -> str:
    """A measured quantity (rate, minutes, seconds): separators, `digits` decimals, no trailing noise."""
    return MISSING if _missing(value) else f"{float(value):,.{digits}f}"


def percent(value: Any) -> str:
    """A signed relative error, e.g. `+4.2%`."""
    return MISSING if _missing(value) else f"{float(value):+.1f}%"


def duration(seconds: Any) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`."""
    if _missing(seconds):
        return MISSING
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def gigabytes(value: Any) -> str:
    if _missing(value):
        return MISSING
    gb = float(value)
    return f"{gb:,.2f} GB" if gb >= 0.01 else f"{gb * 1024:,.1f} MB"
