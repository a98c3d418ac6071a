"""Calibrated exits: per-exit temperatures fitted by NLL, ECE and NLL, and early-exit risks."""

from __future__ import annotations

import math
import os

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError

CALIBRATION_JSON = "calibration.json"
RISKS = ("drop", "disagreement")
ECE_BINS = 15
_TINY = 1e-30  # log of a softmax entry that underflowed to 0 (predictors.scaled does the same)


def scale(probs, temperature: float = 1.0) -> np.ndarray:
    """softmax(log(p) / T) of softmax rows, in float64 NumPy (T = 1: the rows as they are)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    z = np.log(np.maximum(p, _TINY)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true labels under softmax rows."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(p, _TINY)).mean())


def fit_temperature(probs, labels) -> float:
    """The temperature T > 0 minimising the NLL of softmax(log(p) / T) on (probs, labels).

    Guo et al. 2017's temperature scaling, one scalar per exit, searched on log T in
    [-4, 4] (bounded Brent), so T stays in [0.018, 55] (FIDELITY.md I21).
    """
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        raise ElasticKerasError("cannot fit a temperature on 0 images")
    found = minimize_scalar(lambda t: nll(scale(probs, math.exp(t)), labels),
                            bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def fit_temperatures(probs_per_exit, labels) -> list[float]:
    """One temperature per output, in output order (final exit last)."""
    return [fit_temperature(p, labels) for p in probs_per_exit]


def reliability(probs, labels, bins: int = ECE_BINS) -> dict:
    """Top-label reliability of softmax rows: per equal-width confidence bin ((i/B, (i+1)/B],
    the first closed at 0) its count, mean confidence and accuracy; and the ECE, the
    count-weighted mean |accuracy - confidence| (Guo et al. 2017)."""
    p = np.asarray(probs, dtype=np.float64)
    conf, right = p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    safe = np.maximum(count, 1)
    mean_conf = np.bincount(which, conf, minlength=bins) / safe
    accuracy = np.bincount(which, right.astype(float), minlength=bins) / safe
    ece = float((count * np.abs(accuracy - mean_conf)).sum() / max(len(conf), 1))
    return {"count": count, "confidence": mean_conf, "accuracy": accuracy, "ece": ece}


def ece(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of softmax rows (`bins` equal-width bins)."""
    return reliability(probs, labels, bins)["ece"]


def calibration_rows(probs_per_exit, labels, temperatures, names) -> list[dict]:
    """Per exit: its temperature, ECE and NLL before and after scaling (calibration.csv)."""
    rows = []
    for name, p, t in zip(names, probs_per_exit, temperatures):
        after = scale(p, t)
        rows.append({"exit": name, "temperature": round(float(t), 6), "n": len(labels),
                     "ece_before": ece(p, labels), "ece_after": ece(after, labels),
                     "nll_before": nll(p, labels), "nll_after": nll(after, labels)})
    return rows


def exit_losses(probs_per_exit, labels, risk: str) -> np.ndarray:
    """(K, N) loss of leaving at each exit, relative to the final exit (which scores 0).

    drop: max(0, early error - final error), the accuracy lost by leaving early;
    disagreement: the early prediction differs from the final one (needs no labels).
    Both are 0 or 1 per image (FIDELITY.md I22).
    """
    if risk not in RISKS:
        raise ElasticKerasError(f"unknown risk {risk!r}; valid: {', '.join(RISKS)}")
    pred = np.stack([np.asarray(p).argmax(axis=1) for p in probs_per_exit])
    if risk == "disagreement":
        return (pred != pred[-1]).astype(np.float64)
    wrong = (pred != np.asarray(labels)[None, :]).astype(np.float64)
    return np.maximum(0.0, wrong - wrong[-1])


def threshold_grid() -> np.ndarray:
    """The thresholds tested (max_prob), safe end first: inf (nobody leaves early), then
    down to 0 (everyone leaves at exit 1), finer near 1 where confidences crowd. Fixed in
    advance, never read off the calibration images (FIDELITY.md I23)."""
    near_one = 1.0 - np.logspace(-5, -1, 41)
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), near_one]))[::-1]
    return np.concatenate([[np.inf], grid])


def exits_taken(probs_per_exit, thresholds, temperatures=None) -> np.ndarray:
    """(N, L) 0-based exit each image takes at each threshold: the cascade's rule
    (predictors.route, float32 confidences, max_prob >= threshold) for many thresholds."""
    from elastic_keras.inference.predictors import confidence, scaled

    from keras import ops

    k_last = len(probs_per_exit) - 1
    temps = temperatures or [1.0] * (k_last + 1)
    thr = np.asarray(thresholds, dtype=np.float32)
    taken = np.full((len(probs_per_exit[0]), len(thr)), k_last)
    for k in reversed(range(k_last)):  # the earliest exit passed wins, so it is set last
        conf = np.asarray(ops.convert_to_numpy(confidence(scaled(probs_per_exit[k], temps[k]),
                                                          "max_prob")), dtype=np.float32)
        taken = np.where(conf[:, None] >= thr[None, :], k, taken)
    return taken


def per_threshold(values_per_exit, taken) -> np.ndarray:
    """(N, L) value of the exit each image takes: `values_per_exit` is (K, N) or (K,)."""
    v = np.asarray(values_per_exit, dtype=np.float64)
    if v.ndim == 1:
        return v[taken]
    return v[taken, np.arange(taken.shape[0])[:, None]]


def read_calibration(path) -> dict | None:
    """calibration.json of a run directory (or that file itself), or None where there is none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CALIBRATION_JSON)
    if not os.path.isfile(path):
        return None
    found = files.read_json(path)
    if not isinstance(found, dict) or not isinstance(found.get("temperatures"), list):
        raise ElasticKerasError(f"{path} holds no temperatures list; run calibrate again")
    return found


def calibrated_threshold(calibration: dict) -> float:
    """The threshold a calibration certifies; inf (nobody leaves early) when it is null."""
    value = calibration.get("threshold")
    return math.inf if value is None else float(value)


def load_calibration(calibration) -> dict | None:
    """A calibration.json's content from its path, its run directory or itself."""
    if calibration is None or isinstance(calibration, dict):
        return calibration
    found = read_calibration(calibration)
    if found is None:
        raise ElasticKerasError(f"no calibration.json at {calibration}; run calibrate first")
    return found


def check_temperatures(temperatures, outputs: int) -> list[float]:
    """One positive temperature per output (1.0 each when none are given)."""
    if temperatures is None:
        return [1.0] * outputs
    temps = [float(t) for t in temperatures]
    if len(temps) != outputs or not all(t > 0 and math.isfinite(t) for t in temps):
        raise ElasticKerasError(f"temperatures must be {outputs} positive numbers (one per "
                                f"output), got {list(temperatures)}")
    return temps


def calibrated(calibration, criterion: str, threshold, temperatures):
    """(calibration.json's content or None, threshold, temperatures) for a Cascade: the
    file's temperatures unless some are given, its certified threshold unless one is."""
    found = load_calibration(calibration)
    if found is None:
        return None, threshold, temperatures
    if threshold is None:
        if found.get("criterion", "max_prob") != criterion:
            raise ElasticKerasError(f"calibration.json certifies a {found['criterion']} "
                                    f"threshold, not {criterion}; pass threshold=")
        threshold = calibrated_threshold(found)
    return found, threshold, temperatures or found["temperatures"]
