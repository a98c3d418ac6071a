"""Means over seeds with 95% Student-t intervals, and differences taken per seed pair."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LEVEL = 0.95  # two-sided confidence level of every interval (FIDELITY.md G16)


@dataclass(frozen=True)
class Interval:
    """The mean of n values and the half-width of its 95% Student-t interval (NaN for n < 2:
    one seed says nothing about spread)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def contains_zero(self) -> bool:
        """True where the interval holds 0 (the difference is not told apart from none)."""
        return self.n >= 2 and self.low <= 0.0 <= self.high

    def overlaps(self, other: Interval) -> bool:
        """True unless both intervals exist and are disjoint."""
        if self.n < 2 or other.n < 2:
            return True
        return self.low <= other.high and other.low <= self.high


def interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t half-width t_{(1+level)/2, n-1} * s / sqrt(n) (s: the sample
    standard deviation) of the values that are not NaN."""
    v = [float(x) for x in values if x is not None and not math.isnan(x)]
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(v) / n
    if n < 2:
        return Interval(mean, math.nan, 1)
    from scipy.stats import t

    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return Interval(mean, float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), n)


def paired(a: dict[int, float], b: dict[int, float],
           difference: Callable[[float, float], float]) -> Interval:
    """The interval of difference(a[s], b[s]) over the seeds s both have (a paired
    comparison: each seed's run with its own seed's counterpart; FIDELITY.md G17)."""
    return interval(difference(a[s], b[s]) for s in sorted(set(a) & set(b)))
