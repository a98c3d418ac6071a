"""Anytime-valid bounds on the mean of a Bernoulli stream, by test supermartingales (betting)."""

# Each bound holds at every time at once, with probability >= 1 - delta (Ville's inequality),
# for the average of the observations' conditional means: no independence or fixed mean is
# assumed, so it stays valid while the data drift (Waudby-Smith and Ramdas 2023;
# FIDELITY.md W1).

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The bets of the test supermartingales: lambda_j = j log 2, the log-optimal bet against a
# mean 2^j times the one tested; an equal-weight mixture (FIDELITY.md W1).
BETS = np.arange(1, 13) * math.log(2.0)


def _log_mean_exp(v) -> float:
    top = float(np.max(v))
    return top + math.log(float(np.mean(np.exp(v - top))))


def evidence_above(hits: int, n: int, mean: float, bets=BETS) -> float:
    """log of the mixture exp(lambda S_n - (e^lambda - 1) n m): a test supermartingale
    whenever the n Bernoulli observations (S_n of them 1) have conditional means averaging
    at most m (E e^{lambda X} <= exp(p (e^lambda - 1))); large: the mean is above m."""
    return _log_mean_exp(bets * hits - np.expm1(bets) * n * mean)


def bets_above(mean: float) -> np.ndarray:
    """The bets worth making against `mean`: none on a mean above 1 (the alarm's test)."""
    return BETS[: max(1, int(np.sum(np.exp(BETS) * mean <= 1)))]


def evidence_below(hits: int, n: int, mean: float) -> float:
    """log of the mixture exp(-lambda S_n + (1 - e^-lambda) n m): a test supermartingale
    whenever the conditional means average at least m; large: the mean is below m."""
    return _log_mean_exp(-BETS * hits - np.expm1(-BETS) * n * mean)


def upper_bound(hits: int, n: int, delta: float) -> float:
    """Anytime-valid upper bound on the average conditional mean of n Bernoulli observations:
    with probability >= 1 - delta it holds at every n at once (Ville's inequality)."""
    return _invert(lambda m: evidence_below(hits, n, m) < math.log(1 / delta), True)


def lower_bound(hits: int, n: int, delta: float) -> float:
    """Anytime-valid lower bound, the mirror of upper_bound."""
    return _invert(lambda m: evidence_above(hits, n, m) < math.log(1 / delta), False)


def _invert(kept, upper: bool) -> float:
    """The edge of the means in [0, 1] a test keeps (an interval from 0 for the upper bound,
    to 1 for the lower), by bisection, rounded outwards."""
    if kept(1.0 if upper else 0.0):
        return 1.0 if upper else 0.0
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        if kept(mid) == upper:
            low = mid
        else:
            high = mid
    return high if upper else low


@dataclass
class Monitor:
    """Counts over a window of served images, and what they bound: the average disagreement
    risk per served image in the window (inverse-propensity weighted audits)."""

    epsilon: float
    delta: float
    rate: float  # the audit rate F
    served: int = 0
    early: int = 0  # left early
    audits: int = 0  # audits returned
    pending: int = 0  # audits decided, not returned yet (counted as disagreements above)
    hits: int = 0  # audits that disagreed

    def upper(self) -> float:
        """Upper bound on the risk, at level delta: from the audits (pending ones as
        disagreements) and from the share that left early (risk <= it), delta/2 each."""
        audited = upper_bound(self.hits + self.pending, self.served, self.delta / 2) / self.rate
        return min(1.0, audited, upper_bound(self.early, self.served, self.delta / 2))

    def lower(self) -> float:
        """Lower bound on the risk, at level delta (pending audits not counted)."""
        return min(1.0, lower_bound(self.hits, self.served, self.delta) / self.rate)

    @property
    def alarm(self) -> bool:
        """The lower bound has passed epsilon: P(an alarm while the window's average risk is
        <= epsilon) <= delta, for any data sequence (FIDELITY.md W1)."""
        m = self.rate * self.epsilon
        return evidence_above(self.hits, self.served, m, bets_above(m)) >= math.log(
            1 / self.delta)

    def below(self, level: float) -> bool:
        """The upper bound is under `level` (the test, without the bisection)."""
        need = math.log(2 / self.delta)
        return (evidence_below(self.hits + self.pending, self.served, self.rate * level) >= need
                or evidence_below(self.early, self.served, level) >= need)
