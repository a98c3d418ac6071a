"""Budgeted evaluation: accuracy against average MACs of cascades, thresholds from validation."""

import math
import os

import numpy as np

from . import files
from .cascade import path_macs
from .errors import ElasticKerasError
from .predictors import check_criterion, confidence, exit_probabilities, load, route

BUDGET_CSV, BUDGET_PNG = "budget.csv", "budget.png"
BUDGET_COLUMNS = ("kind", "criterion", "threshold", "quantile", "exit", "test_accuracy",
                  "test_macs", "macs_fraction", "val_accuracy", "val_macs", "exit_fractions",
                  "n_test")


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
                 batch_size=256, convention="full"):
    """Test accuracy against average MACs per image of cascades and of each exit alone.

    Budgeted batch classification (elastic inference): thresholds are chosen on the
    validation set only (quantiles of its confidences); each is then applied to the test
    set. Every exit's softmax is computed once per image and the cascade's rule (`route`)
    replayed for each threshold, which gives exactly the exits a Cascade takes; the cost
    of an image is `path_macs` of its exit (backbone to the tap plus every head passed).
    Fixed-exit rows are the truncated predictors: test accuracy of exit k alone and its
    own MACs (ExitInfo.macs). Returns a list of dicts (columns BUDGET_COLUMNS).
    The replay from one pass is FIDELITY.md I5.
    """
    from .models import exit_info

    model = load(model)
    check_criterion(criterion)
    for what, x, y in (("validation", x_val, y_val), ("test", x_test, y_test)):
        if len(x) == 0 or len(x) != len(_labels(y)):
            raise ElasticKerasError(f"{what} set: {len(x)} images and {len(_labels(y))} labels")
    y_val, y_test = _labels(y_val), _labels(y_test)
    val = exit_probabilities(model, x_val, batch_size)
    test = exit_probabilities(model, x_test, batch_size)
    costs = np.asarray(path_macs(model, convention), dtype=np.float64)
    infos = exit_info(model, convention)
    final_macs = infos[-1].macs
    names = list(model.output_names)

    # Each exit's predictions, once; a threshold then only picks one exit per image.
    val_pred = np.stack([p.argmax(axis=1) for p in val])
    test_pred = np.stack([p.argmax(axis=1) for p in test])

    def outcome(pred, y, taken):
        right = pred[taken, np.arange(len(y))] == y
        frac = np.bincount(taken, minlength=len(pred)) / len(y)
        return float(right.mean()), float(costs[taken].mean()), frac

    rows = []
    for thr, q in thresholds_from_validation(val, criterion, n_thresholds):
        val_acc, val_macs, _ = outcome(val_pred, y_val, route(val, criterion, thr))
        acc, macs, frac = outcome(test_pred, y_test, route(test, criterion, thr))
        rows.append(dict(kind="cascade", criterion=criterion, threshold=thr, quantile=q,
                         exit="", test_accuracy=acc, test_macs=macs,
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


def write_budget(out_dir, rows, title):
    """Write `budget.csv` and `budget.png` (accuracy vs MACs) into `out_dir`, atomically."""
    if not rows:
        raise ElasticKerasError("write_budget got no rows")
    out_dir = os.fspath(out_dir)
    columns = list(BUDGET_COLUMNS) + [c for c in rows[0] if c not in BUDGET_COLUMNS]
    csv_path = os.path.join(out_dir, BUDGET_CSV)
    png_path = os.path.join(out_dir, BUDGET_PNG)
    files.write_csv(csv_path, columns, rows)
    from .plots import budget_figure, save_figure

    save_figure(budget_figure(rows, title), png_path)
    return csv_path, png_path


def budget_run(run, criterion="max_prob", n_thresholds=21, batch_size=None,
               convention="full", out_dir=None, log=print):
    """budget.csv and budget.png of a finished run (its best checkpoint, its own splits),
    written into the run directory (or `out_dir`)."""
    from .evaluate import trained_model
    from .rundir import EVALUATED

    run.require(EVALUATED, "budget it (train and evaluate it first)")
    cfg = run.config
    if batch_size is None:
        batch_size = cfg["train"]["eval_batch_size"]
    model, data = trained_model(run)
    rows = budget_sweep(model, data.x_val, data.y_val, data.x_test, data.y_test,
                        criterion=criterion, n_thresholds=n_thresholds, batch_size=batch_size,
                        convention=convention)
    name = cfg.get("name") or os.path.basename(os.path.normpath(run.dir))
    dataset = cfg.get("data", {}).get("dataset", "")
    title = f"{name} ({dataset}): elastic inference, {criterion}"
    csv_path, png_path = write_budget(out_dir or run.dir, rows, title)
    # One operating point for the log, picked on validation: the cheapest threshold whose
    # validation accuracy reaches the final exit's.
    final = next(r for r in rows if r["kind"] == "exit" and r["exit"] == "final")
    ok = [r for r in rows if r["kind"] == "cascade"
          and r["val_accuracy"] >= final["val_accuracy"]]
    pick = min(ok, key=lambda r: r["val_macs"]) if ok else None
    summary = (f"cascade at t={pick['threshold']:.4g} (cheapest reaching the final exit's "
               f"validation accuracy): test {100 * pick['test_accuracy']:.2f}% at "
               f"{pick['macs_fraction']:.2f} x the final exit's MACs" if pick else
               "no cascade reaches the final exit's validation accuracy")
    log(f"[{name}] wrote {csv_path}, {png_path}; final exit: test "
        f"{100 * final['test_accuracy']:.2f}%; {summary}")
    return rows


def budget_path(path, log=print, **options):
    """budget.csv/png of a finished run, or of every finished run under a folder (the
    unfinished ones are named and skipped). Returns the number of runs done."""
    from .rundir import find_runs, open_run

    if not os.path.isdir(path):
        raise ElasticKerasError(f"not a run directory nor a folder of runs: {path}")
    if os.path.isfile(os.path.join(path, "config.json")):
        budget_run(open_run(path), log=log, **options)
        return 1
    runs = find_runs(path)
    if not runs:
        raise ElasticKerasError(f"not a run directory, and no run directories under {path}")
    done = [run for run in runs if run.finished]
    for run in runs:
        if run not in done:
            log(f"skip {run.dir}: not finished ({run.status})")
    for run in done:
        budget_run(run, log=log, **options)
    log(f"budget: {len(done)} finished run(s) under {path}"
        + ("" if done else "; train and evaluate some first"))
    return len(done)
