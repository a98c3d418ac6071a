"""Thresholds of exit cascades from validation, and the accuracy-vs-MACs sweep they give."""

import math

import numpy as np

from elastic_keras.inference.cascade import path_macs
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.calibration import calibrated_threshold, check_temperatures
from elastic_keras.inference.predictors import (
    check_criterion,
    confidence,
    exit_probabilities,
    load,
    route,
    scaled,
)



BUDGET_COLUMNS = ("kind", "criterion", "threshold", "quantile", "exit", "test_accuracy",
                  "test_macs", "macs_fraction", "val_accuracy", "val_macs", "exit_fractions",
                  "n_test", "certificate")
CERTIFIED = "certified"  # the kind of the row of calibrate's threshold
BUDGET_CSV = "budget.csv"  # what `budget` writes: BUDGET_COLUMNS, one row per point


def read_budget(path) -> list[dict] | None:
    """The rows of a budget.csv (strings, as written), or None where there is none."""
    import csv
    import os

    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _labels(y):
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.reshape(-1)


def _endpoints(criterion):
    """(everyone leaves at exit 1, everyone reaches the final exit) thresholds."""
    return (0.0, math.inf) if criterion == "max_prob" else (math.inf, -math.inf)


def thresholds_from_validation(val_probs, criterion, n_thresholds):
    """Thresholds at evenly spaced quantiles of the validation confidences of the early exits.

    Pooling every early exit's confidences makes the thresholds span the whole range the
    cascade acts on, from everyone leaving at exit 1 to everyone reaching the final exit
    (both endpoints are added). Returns [(threshold, quantile or None)], from cheap to dear.
    Test labels are never used to pick anything (FIDELITY.md I4).
    """
    if n_thresholds < 2:
        raise ElasticKerasError(f"n_thresholds must be >= 2, got {n_thresholds}")
    pooled = np.concatenate([np.asarray(confidence(p, criterion)) for p in val_probs[:-1]])
    levels = np.linspace(0.0, 1.0, n_thresholds)
    if criterion == "entropy":  # low entropy = confident: cheap end is the high quantile
        levels = levels[::-1]
    cheap, dear = _endpoints(criterion)
    picked = [(cheap, None)] + [(float(np.quantile(pooled, q)), float(q)) for q in levels]
    picked.append((dear, None))
    seen, result = set(), []
    for thr, q in picked:
        if thr not in seen:
            seen.add(thr)
            result.append((thr, q))
    return result


def budget_sweep(model, x_val, y_val, x_test, y_test, criterion="max_prob", n_thresholds=21,
                 batch_size=256, convention="full", calibration=None):
    """Test accuracy against average MACs per image of cascades and of each exit alone.

    Budgeted batch classification (elastic inference): thresholds are chosen on the
    validation set only (quantiles of its confidences); each is then applied to the test
    set. Every exit's softmax is computed once per image and the cascade's rule (`route`)
    replayed for each threshold, which gives exactly the exits a Cascade takes; the cost
    of an image is `path_macs` of its exit (backbone to the tap plus every head passed).
    Fixed-exit rows are the truncated predictors: test accuracy of exit k alone and its
    own MACs (ExitInfo.macs). Returns a list of dicts (columns BUDGET_COLUMNS). The replay
    from one pass is FIDELITY.md I5. calibration: calibration.json's content; its temperatures
    scale every exit's softmax (as a Cascade given it does), its threshold is one more row,
    kind "certified" (FIDELITY.md I21)."""
    from elastic_keras.model.exits import exit_info

    model = load(model)
    check_criterion(criterion)
    y_val, y_test = _checked("validation", x_val, y_val), _checked("test", x_test, y_test)
    val = _scaled(exit_probabilities(model, x_val, batch_size), calibration)
    test = _scaled(exit_probabilities(model, x_test, batch_size), calibration)
    costs = np.asarray(path_macs(model, convention), dtype=np.float64)
    infos = exit_info(model, convention)
    final_macs = infos[-1].macs
    names = list(model.output_names)

    # Each exit's predictions, once; a threshold then only picks one exit per image.
    val_pred = np.stack([p.argmax(axis=1) for p in val])
    test_pred = np.stack([p.argmax(axis=1) for p in test])
    rows = []
    for thr, q in _thresholds(val, criterion, n_thresholds, calibration):
        val_acc, val_macs, _ = _outcome(val_pred, y_val, route(val, criterion, thr), costs)
        acc, macs, frac = _outcome(test_pred, y_test, route(test, criterion, thr), costs)
        mark = q == CERTIFIED  # calibrate's threshold, with what it certifies
        rows.append(dict(kind=CERTIFIED if mark else "cascade", criterion=criterion,
                         threshold=thr, quantile=None if mark else q, exit="",
                         certificate=calibration["certificate"]["text"] if mark else None,
                         test_accuracy=acc, test_macs=macs,
                         macs_fraction=macs / final_macs, val_accuracy=val_acc,
                         val_macs=val_macs,
                         exit_fractions=" ".join(f"{f:.4f}" for f in frac),
                         n_test=len(y_test)))
    for k, info in enumerate(infos):
        rows.append(dict(kind="exit", criterion="", threshold=None, quantile=None,
                         exit=names[k],
                         test_accuracy=float((test_pred[k] == y_test).mean()),
                         test_macs=float(info.macs), macs_fraction=info.macs / final_macs,
                         val_accuracy=float((val_pred[k] == y_val).mean()),
                         val_macs=float(info.macs), exit_fractions="", n_test=len(y_test)))
    return rows


def _checked(what, x, y):
    """The labels of a set as integers, after checking there is one per image."""
    if len(x) == 0 or len(x) != len(_labels(y)):
        raise ElasticKerasError(f"{what} set: {len(x)} images and {len(_labels(y))} labels")
    return _labels(y)


def _thresholds(val, criterion, n_thresholds, calibration):
    """The sweep's thresholds, and calibrate's certified one (quantile CERTIFIED) if any."""
    picked = thresholds_from_validation(val, criterion, n_thresholds)
    if calibration is not None and criterion == calibration.get("criterion", "max_prob"):
        picked.append((calibrated_threshold(calibration), CERTIFIED))
    return picked


def _scaled(probs_per_exit, calibration):
    """Every exit's softmax scaled by calibration.json's temperatures, as the cascade does."""
    from keras import ops

    if calibration is None:
        return probs_per_exit
    temps = check_temperatures(calibration["temperatures"], len(probs_per_exit))
    return [np.asarray(ops.convert_to_numpy(scaled(p, t))) for p, t in zip(probs_per_exit, temps)]


def _outcome(pred, y, taken, costs):
    """Accuracy, mean cost and per-exit fractions of images routed to the exits `taken`."""
    right = pred[taken, np.arange(len(y))] == y
    frac = np.bincount(taken, minlength=len(pred)) / len(y)
    return float(right.mean()), float(costs[taken].mean()), frac


def normalised_auc(rows):
    """Area under a run's cascade curve, test accuracy against x = MACs per image / the final
    exit's MACs, over x in [0, 1]: accuracy 0 below the cheapest cascade point (nothing is
    answered there), linear between points, cut at x = 1. One number per run in [0, 1] that
    says how good its early exits are (FIDELITY.md I11)."""
    pts = sorted((float(r["macs_fraction"]), float(r["test_accuracy"])) for r in rows
                 if r["kind"] == "cascade")
    if not pts:
        raise ElasticKerasError("normalised_auc: no cascade rows")
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if x[0] >= 1.0:
        return 0.0
    keep = x < 1.0
    x, y = np.append(x[keep], 1.0), np.append(y[keep], np.interp(1.0, x, y))
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def operating_point(rows):
    """The one operating point a budget names, picked on validation: the cheapest cascade
    threshold whose validation accuracy reaches the final exit's (rows of `budget_sweep` or
    of budget.csv); None when no threshold reaches it."""
    final = next((r for r in rows if r["kind"] == "exit" and r["exit"] == "final"), None)
    ok = [r for r in rows if final is not None and r["kind"] == "cascade"
          and float(r["val_accuracy"]) >= float(final["val_accuracy"])]
    return min(ok, key=lambda r: float(r["val_macs"])) if ok else None
