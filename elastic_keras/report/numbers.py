"""How every table writes a number: fixed decimals, signs, MACs, percentages, one blank."""

from __future__ import annotations

import math
from typing import Any

BLANK = "—"  # a markdown cell of a number we do not have (never a paper number instead)


def missing(x: Any) -> bool:
    return x is None or x == "" or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any, decimals: int, blank: str = "") -> str:
    """A number with fixed decimals (no '-0.00'); `blank` for a missing one."""
    if missing(x):
        return blank
    if isinstance(x, str):
        return x
    if decimals == 0:
        return str(int(round(x)))
    s = f"{x:.{decimals}f}"
    return s[1:] if s == "-" + f"{0:.{decimals}f}" else s


def signed(x: Any, decimals: int) -> str:
    """A difference with its sign (+0.12, -0.30); BLANK when missing."""
    s = fmt(x, decimals, BLANK)
    return s if s == BLANK or s.startswith("-") else "+" + s


def macs(x: Any) -> str:
    """A count of multiply-accumulates as the papers print it: 1.53e10."""
    return BLANK if missing(x) else f"{x:.2e}".replace("e+0", "e").replace("e+", "e")


def pct(x: Any) -> str:
    """A fraction as a signed percentage: +0.91%."""
    return BLANK if missing(x) else f"{100 * x:+.2f}%"


def text(x: Any) -> str:
    return BLANK if missing(x) else str(x)


def interval(mean: Any, half: Any, n: int, decimals: int, sign: bool = False) -> str:
    """A mean over seeds with its 95% interval: '2.50 ± 0.31 (n=2)'; 'mean (n=1)' where one
    seed gives no interval; BLANK where none finished."""
    if not n or missing(mean):
        return BLANK
    m = signed(mean, decimals) if sign else fmt(mean, decimals)
    return f"{m} (n={n})" if missing(half) else f"{m} ± {fmt(half, decimals)} (n={n})"
