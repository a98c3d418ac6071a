"""Calibrate a finished run: temperatures and a certified threshold from its validation split."""

from __future__ import annotations

import math
import os

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference import calibration as cal
from elastic_keras.inference import risk_control as rc
from elastic_keras.inference.latency import find_latency, read_path_costs
from elastic_keras.training.state import EVALUATED

CALIBRATION_CSV, RELIABILITY_PNG = "calibration.csv", "reliability.png"
CSV_COLUMNS = ("exit", "temperature", "n", "ece_before", "ece_after", "nll_before",
               "nll_after")


def split_validation(n: int, fit_fraction: float, seed: int):
    """(fit, calibration): disjoint index arrays into the validation split, by a seeded
    permutation; the first part fits the temperatures, the second certifies (I21, I23)."""
    if not 0 < fit_fraction < 1:
        raise ElasticKerasError(f"--fit-fraction must be in (0, 1), got {fit_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(fit_fraction * n))
    if cut < 1 or n - cut < 1:
        raise ElasticKerasError(f"a validation split of {n} images cannot be cut at "
                                f"--fit-fraction {fit_fraction}")
    return np.sort(order[:cut]), np.sort(order[cut:])


def validation_outputs(run, batch_size=None):
    """(every exit's softmax on the run's validation split, labels, output names, MACs of
    leaving at each exit) from the run's best checkpoint; the test split is never read."""
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.cascade import path_macs
    from elastic_keras.inference.predictors import exit_probabilities

    model, data = run.model(), load_data(run.config["data"])
    probs = exit_probabilities(model, data.x_val,
                               batch_size or run.config["train"]["eval_batch_size"])
    labels = np.asarray(data.y_val).reshape(-1)
    return probs, labels, list(model.output_names), path_macs(model)


def path_ms(run, latency, names, needed):
    """Per-image milliseconds of leaving at each exit: the path costs `budget --cost
    latency` plots (latency.read_path_costs, at the largest batch measured), from `latency`
    or the one RUN/export-*/latency.csv. None when there is none and `needed` is false."""
    try:
        ms = read_path_costs(latency or find_latency(run.dir))["path"]
    except ElasticKerasError:
        if needed:
            raise
        return None
    if len(ms) != len(names):
        raise ElasticKerasError(f"{latency or 'latency.csv'} measured {len(ms)} exits; this run "
                                f"has {len(names)}")
    return ms


def choose(losses, costs, epsilon, delta, method, budget=None):
    """(index of the chosen threshold, its certified bound or None, the certificate):
    the cheapest certified one, or under a budget the safest whose mean cost fits it."""
    if budget is None:
        cert = rc.certify(losses, epsilon, delta, method)
        return cert.index, None, cert
    rc.check(epsilon, delta, method)
    fits = np.flatnonzero(costs <= budget)
    if not len(fits):
        raise ElasticKerasError(f"no threshold meets the budget {budget:g} on the calibration "
                                f"split (leaving at exit 1 costs {costs[-1]:g})")
    index = int(fits[0])
    return index, rc.risk_bound(losses, index, delta, method, losses.shape[1]), None


def check_ask(epsilon, delta, method, max_macs, max_ms) -> dict:
    """What a calibration asks, checked before any model is loaded."""
    if max_macs is not None and max_ms is not None:
        raise ElasticKerasError("give --max-macs or --max-ms, not both")
    rc.check(epsilon, delta, method)
    rc.mapie_methods()  # MAPIE is there, or one line says how to install it
    if method == "crc" and (max_macs is not None or max_ms is not None):
        rc.risk_bound([[0.0]], 0, delta, method, 1)  # refused before the model is loaded
    return dict(epsilon=epsilon, delta=delta, method=method, max_macs=max_macs, max_ms=max_ms)


def calibrate_run(run, epsilon=0.02, delta=0.1, risk="drop", method="ltt", max_macs=None,
                  max_ms=None, seed=0, fit_fraction=0.3, latency=None, log=print):
    """Fit per-exit temperatures, certify a threshold, write calibration.json/csv.

    Returns the calibration dict, plus "reliability" (per exit: before/after bins on the
    calibration part) for the figure.
    """
    run.require(EVALUATED, "calibrate it (train and evaluate it first)")
    ask = {**check_ask(epsilon, delta, method, max_macs, max_ms), "risk": risk}
    probs, labels, names, macs = validation_outputs(run)
    ms = path_ms(run, latency, names, needed=max_ms is not None)
    out, rows, reliability = certify_outputs(probs, labels, names, macs, ms, ask, seed,
                                             fit_fraction)
    out["run"] = os.path.abspath(run.dir)
    files.write_csv(run.output(CALIBRATION_CSV), CSV_COLUMNS, rows)
    files.write_json(run.output(cal.CALIBRATION_JSON), out)
    return {**out, "reliability": reliability}


def certify_outputs(probs, labels, names, macs, ms, ask, seed, fit_fraction, scale=None):
    """(calibration.json's content, calibration.csv's rows, reliability per exit) from every
    exit's softmax on a validation split: temperatures fitted on its first part, a threshold
    certified on the rest. `scale(p, T)`: how the served network applies a temperature
    (default: the in-package Cascade's, through calibration.exits_taken)."""
    fit, part = split_validation(len(labels), fit_fraction, seed)
    temps = cal.fit_temperatures([p[fit] for p in probs], labels[fit])
    probs_cal, labels_cal = [p[part] for p in probs], labels[part]
    grid = cal.threshold_grid()
    taken = cal.exits_taken(probs_cal, grid, temps) if scale is None else cal.exits_taken(
        [scale(p, t) for p, t in zip(probs_cal, temps)], grid)
    losses = cal.per_threshold(cal.exit_losses(probs_cal, labels_cal, ask["risk"]), taken)
    costs = cal.per_threshold(ms if ask["max_ms"] is not None else macs, taken).mean(axis=0)
    index, bound, _ = choose(losses, costs, ask["epsilon"], ask["delta"], ask["method"],
                             ask["max_ms"] if ask["max_ms"] is not None else ask["max_macs"])
    out = _record(grid, index, bound, taken, losses, macs, ms, temps, names, ask,
                  dict(seed=seed, fit_fraction=fit_fraction, n_validation=len(labels),
                       fit=fit.tolist(), calibration=part.tolist()))
    rows = cal.calibration_rows(probs_cal, labels_cal, temps, names)
    return out, rows, [(n, cal.reliability(p, labels_cal),
                        cal.reliability(cal.scale(p, t), labels_cal))
                       for n, p, t in zip(names, probs_cal, temps)]


def _record(grid, index, bound, taken, losses, macs, ms, temps, names, ask, splits):
    """calibration.json's content for the chosen threshold (index into `grid`)."""
    n = losses.shape[0]
    chosen = max(index, 0)
    spent = float(np.asarray(macs, dtype=np.float64)[taken[:, chosen]].mean())
    threshold = None if index <= 0 or math.isinf(grid[chosen]) else float(grid[chosen])
    budget = ask["max_macs"] is not None or ask["max_ms"] is not None
    text = rc.in_words(ask["method"], ask["risk"], ask["epsilon"], ask["delta"], n)
    if budget:
        text = (f"with probability at least {1 - ask['delta']:g}, the {rc.RISK_WORDS[ask['risk']]} "
                f"on new images at this threshold is at most {bound:.4f} (chosen for a mean cost "
                f"budget; {ask['method']} bound at level delta / {losses.shape[1]}, {n} "
                "calibration images)")
    elif threshold is None:
        text = ("no early exit could be certified: every image goes to the final exit ("
                + text + " holds only there)")
    fractions = np.bincount(taken[:, chosen], minlength=len(names)) / n
    return {"temperatures": [float(t) for t in temps], "criterion": "max_prob",
            "threshold": threshold,
            "certificate": {"method": ask["method"], "risk": ask["risk"],
                            "epsilon": ask["epsilon"], "delta": ask["delta"], "text": text,
                            "bound": bound, "max_macs": ask["max_macs"],
                            "max_ms": ask["max_ms"]},
            "splits": splits, "outputs": names,
            "calibration_risk": float(losses[:, chosen].mean()),
            "exit_fractions": [float(f) for f in fractions],
            "macs": {"final": float(macs[-1]), "mean": spent,
                     "saved_fraction": 1.0 - spent / float(macs[-1])},
            "ms": None if ms is None else {
                "final": ms[-1], "mean": float(np.asarray(ms)[taken[:, chosen]].mean())}}


def summary(out) -> list[str]:
    """What `calibrate` prints: temperatures, threshold, certificate, cost saved."""
    temps = ", ".join(f"{t:.2f}" for t in out["temperatures"])
    thr = out["threshold"]
    saved = f"MACs saved on the calibration split: {100 * out['macs']['saved_fraction']:.1f}% " \
            f"({out['macs']['mean']:.4g} per image against {out['macs']['final']:.4g})"
    if out["ms"]:
        saved += f"; {out['ms']['mean']:.3g} ms per image against {out['ms']['final']:.3g}"
    return [f"temperatures (exit_1 .. final): {temps}",
            f"threshold: {'none (final exit only)' if thr is None else f'{thr:.6g}'} "
            "(max softmax after temperature scaling)",
            f"certificate: {out['certificate']['text']}", saved]
