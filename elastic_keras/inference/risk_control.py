"""Certified thresholds: Learn-then-Test, upper confidence bounds, conformal risk control."""

# Thresholds come in a fixed order from the safe end (nobody leaves early, risk 0) to the
# cheap end; `losses` is (N, L): each calibration image's 0/1 loss at each threshold. MAPIE
# supplies the Hoeffding-Bentkus p-values, the fixed-sequence procedure and the CRC bound
# (FIDELITY.md I24); it is imported only inside the functions that use it.

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from elastic_keras.errors import ElasticKerasError

METHODS = ("ltt", "ucb", "crc")
RISK_WORDS = {"drop": "accuracy lost by leaving early (against the final exit)",
              "disagreement": "share of images whose early prediction differs from the final "
                              "exit's"}


def mapie_methods():
    """MAPIE's risk-control methods; one clear line where MAPIE is not installed."""
    try:
        from mapie.risk_control import methods
    except ImportError:
        raise ElasticKerasError("calibrate needs MAPIE: pip install 'elastic-keras[calibration]'"
                                ) from None
    return methods


def hb_p_values(risk_means, n: int, epsilon: float) -> np.ndarray:
    """Hoeffding-Bentkus p-values of H_j: risk_j > epsilon (Learn-then-Test, Angelopoulos et
    al. 2021), from the mean 0/1 losses of n images; MAPIE's, with the Bentkus bound for
    binary losses (LTT section 3.2)."""
    methods = mapie_methods()
    r = np.asarray(risk_means, dtype=np.float64)
    return methods.compute_hoeffding_bentkus_p_value(r, int(n), float(epsilon),
                                                     binary=True)[:, 0]


def fixed_sequence(p_values, delta: float) -> int:
    """How many hypotheses, from the first on, fixed-sequence testing rejects at level delta
    (MAPIE's control_fwer): the family-wise error stays <= delta with no monotonicity."""
    from mapie.risk_control import control_fwer

    rejected = control_fwer(np.asarray(p_values, dtype=np.float64), float(delta),
                            "fixed_sequence")
    prefix = np.arange(len(rejected))
    return int(len(rejected)) if np.array_equal(rejected, prefix) else int(
        np.argmin(np.append(rejected == prefix, False)))


def binomial_ucb(risk_means, n: int, delta: float) -> np.ndarray:
    """Exact (Clopper-Pearson) upper confidence bounds at level 1 - delta of the mean of 0/1
    losses: the largest r with P(Binomial(n, r) <= k) >= delta (FIDELITY.md I24)."""
    from scipy.stats import beta

    k = np.rint(np.asarray(risk_means, dtype=np.float64) * n)
    bound = beta.ppf(1.0 - delta, k + 1, n - k)
    return np.where(k >= n, 1.0, bound)


def monotonized(losses) -> np.ndarray:
    """Each image's loss at a threshold raised to its worst at any safer threshold, so that
    it never rises towards the safe end (conformal risk control needs that; FIDELITY.md I25)."""
    return np.maximum.accumulate(np.asarray(losses, dtype=np.float64), axis=1)


def crc_bounds(losses) -> np.ndarray:
    """Conformal risk control's bound (n R_n + 1) / (n + 1) per threshold, losses in [0, 1],
    on the monotonized losses (MAPIE's get_r_hat_plus, method "crc")."""
    mono = monotonized(losses)
    lambdas = np.arange(mono.shape[1], dtype=np.float64)
    return mapie_methods().get_r_hat_plus(mono, lambdas, "crc", None, None, None)[1]


@dataclass
class Certificate:
    """The cheapest certified threshold (its index among the L tested) and the statistics."""

    method: str
    index: int  # -1: not even the safe end is certified
    statistic: np.ndarray  # per threshold: p-values (ltt) or upper bounds (ucb, crc)


def certify(losses, epsilon: float, delta: float, method: str = "ltt") -> Certificate:
    """The longest run of thresholds from the safe end whose risk is certified <= epsilon;
    its last (cheapest) one. ltt/ucb: P(test risk <= epsilon) >= 1 - delta;
    crc: E[test risk] <= epsilon."""
    check(epsilon, delta, method)
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.shape[0]
    means = losses.mean(axis=0)
    if method == "ltt":
        stat = hb_p_values(means, n, epsilon)
        count = fixed_sequence(stat, delta)
    else:
        stat = binomial_ucb(means, n, delta) if method == "ucb" else crc_bounds(losses)
        passed = np.append(stat <= epsilon, False)
        count = int(np.argmin(passed))
    return Certificate(method, count - 1, stat)


def risk_bound(losses, index: int, delta: float, method: str, n_tested: int) -> float:
    """An upper bound, holding with probability >= 1 - delta, on the risk at threshold
    `index`, valid however that threshold was chosen: a bound at level delta / n_tested
    (Bonferroni over the tested thresholds; FIDELITY.md I26). ltt: the smallest epsilon
    whose Hoeffding-Bentkus p-value passes; ucb: the binomial bound."""
    if method not in ("ltt", "ucb"):
        raise ElasticKerasError(f"a cost budget needs --method ltt or ucb (crc certifies a "
                                f"level fixed in advance), got {method!r}")
    column = np.asarray(losses, dtype=np.float64)[:, index]
    n, level = len(column), delta / n_tested
    if method == "ucb":
        return float(binomial_ucb([column.mean()], n, level)[0])
    lo, hi = float(column.mean()), 1.0
    for _ in range(40):  # the p-value falls as epsilon rises: bisect
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if hb_p_values([column.mean()], n, min(mid, 1 - 1e-12))[0] <= level \
            else (mid, hi)
    return hi


def check(epsilon: float, delta: float, method: str) -> None:
    """epsilon and delta in (0, 1), method one of METHODS; else one clear message."""
    if method not in METHODS:
        raise ElasticKerasError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if not (isinstance(value, (int, float)) and 0 < value < 1) or math.isnan(value):
            raise ElasticKerasError(f"--{name} must be in (0, 1), got {value!r}")


def in_words(method: str, risk: str, epsilon: float, delta: float, n: int) -> str:
    """What a certificate says, in plain words."""
    what = RISK_WORDS[risk]
    if method == "crc":
        return (f"on average over calibration draws, the {what} on new images is at most "
                f"{epsilon:g} (conformal risk control, {n} calibration images)")
    how = "Learn-then-Test, Hoeffding-Bentkus p-values in fixed sequence" if method == "ltt" \
        else "binomial upper confidence bounds in fixed sequence"
    return (f"with probability at least {1 - delta:g}, the {what} on new images is at most "
            f"{epsilon:g} ({how}, {n} calibration images)")
