"""The budget of trained runs: test accuracy against cost of exit cascades, as CSV and PNG."""

from __future__ import annotations

import os
from typing import Any

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.calibration import read_calibration
from elastic_keras.inference.thresholds import (BUDGET_COLUMNS, BUDGET_CSV, CERTIFIED,
                                                budget_sweep, normalised_auc, operating_point,
                                                read_budget)
from elastic_keras.report.plots import new_figure, save_figure
from elastic_keras.report.intervals import interval
from elastic_keras.runs.names import seed_name, split_seed
from elastic_keras.runs.found import find_runs, open_run
from elastic_keras.runs.rundir import RunDir
from elastic_keras.training.state import EVALUATED

BUDGET_PNG = "budget.png"
SEEDS_CSV, SEEDS_PNG = "budget-seeds.csv", "budget-seeds.png"


def write_budget(csv_path: str, png_path: str, rows: list[dict[str, Any]], title: str,
                 cost: str = "macs") -> None:
    """Write the budget rows as CSV and their accuracy-vs-MACs figure (vs measured ms with
    cost="latency") as PNG, atomically."""
    if not rows:
        raise ElasticKerasError("write_budget got no rows")
    columns = list(BUDGET_COLUMNS) + [c for c in rows[0] if c not in BUDGET_COLUMNS]
    files.write_csv(csv_path, columns, rows)
    save_figure(budget_figure(rows, title, cost), png_path)


def budget_figure(rows, title, cost="macs"):
    """Test accuracy against MACs (or measured ms, cost="latency") per image: the cascade's
    curve and each exit alone."""
    key = "test_ms" if cost == "latency" else "test_macs"
    cascade = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r[key])
    exits = [r for r in rows if r["kind"] == "exit"]
    top = max(r[key] for r in rows)
    scale, unit = next((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
                       if top >= s or s == 1.0) if key == "test_macs" else (1.0, "ms")
    fig = new_figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if cascade:
        crit = cascade[0]["criterion"]
        ax.plot([r[key] / scale for r in cascade],
                [100 * r["test_accuracy"] for r in cascade], "-o", ms=3, lw=1.5,
                label=f"cascade ({crit}; thresholds from validation)")
    if exits:
        ax.plot([r[key] / scale for r in exits],
                [100 * r["test_accuracy"] for r in exits], "s", ms=6, mfc="none", mew=1.5,
                color="C3", label="each exit alone")
        for k, r in enumerate(exits, 1):
            ax.annotate(str(k) if r["exit"] != "final" else "final",
                        (r[key] / scale, 100 * r["test_accuracy"]),
                        xytext=(3, 3), textcoords="offset points", fontsize="x-small",
                        color="C3")
    for r in (r for r in rows if r["kind"] == CERTIFIED):  # calibrate's threshold
        ax.plot(r[key] / scale, 100 * r["test_accuracy"], "*", ms=13, color="C2",
                label=f"certified threshold {r['threshold']:.3g} (calibration.json)")
    ax.set_xlabel("measured ms per image (latency.csv)" if unit == "ms" else
                  f"MACs per image ({unit}MACs)" if unit else "MACs per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def budget_run(run: RunDir, criterion: str = "max_prob", n_thresholds: int = 21,
               batch_size: int | None = None, convention: str = "full",
               out_dir: str | None = None, log=print, cost: str = "macs",
               latency: str | None = None) -> list[dict[str, Any]]:
    """budget.csv and budget.png of a finished run (its best checkpoint, its own splits),
    written into the run directory (or `out_dir`). cost="latency": the x-axis in measured
    ms per image from `latency` (a latency.csv; default: the one in RUN/export-*/)."""
    from elastic_keras.data.datasets import load_data

    run.require(EVALUATED, "budget it (train and evaluate it first)")
    cfg = run.config
    data = load_data(cfg["data"])
    rows = budget_sweep(run.model(), data.x_val, data.y_val, data.x_test, data.y_test,
                        criterion=criterion, n_thresholds=n_thresholds,
                        batch_size=batch_size or cfg["train"]["eval_batch_size"],
                        convention=convention, calibration=read_calibration(run.dir))
    if cost == "latency":
        from elastic_keras.inference.latency import add_latency, find_latency, read_path_costs

        add_latency(rows, read_path_costs(latency or find_latency(run.dir)))
    name = cfg["name"]
    title = (f"{name} ({cfg['profile']} profile, {cfg['data']['dataset']} data): elastic "
             f"inference, {criterion}")
    csv_path, png_path = ((os.path.join(out_dir, BUDGET_CSV), os.path.join(out_dir, BUDGET_PNG))
                          if out_dir else (run.output(BUDGET_CSV), run.output(BUDGET_PNG)))
    write_budget(csv_path, png_path, rows, title, cost)
    final = next(r for r in rows if r["kind"] == "exit" and r["exit"] == "final")
    pick = operating_point(rows)
    summary = (f"cascade at t={pick['threshold']:.4g} (cheapest reaching the final exit's "
               f"validation accuracy): test {100 * pick['test_accuracy']:.2f}% at "
               f"{pick['macs_fraction']:.2f} x the final exit's MACs" if pick else
               "no cascade reaches the final exit's validation accuracy")
    log(f"[{name}] wrote {csv_path}, {png_path}; final exit: test "
        f"{100 * final['test_accuracy']:.2f}%; {summary}")
    for r in (r for r in rows if r["kind"] == CERTIFIED):
        log(f"[{name}] certified threshold {r['threshold']:.4g} (calibration.json): test "
            f"{100 * r['test_accuracy']:.2f}% at {r['macs_fraction']:.2f} x the final exit's "
            f"MACs; {r['certificate']}")
    return rows


def seed_runs(path: str) -> dict[int, RunDir]:
    """{seed: run} of the finished seeds s > 0 of the run at `path` (`<path>-seed<s>`)."""
    parent, name = os.path.split(os.path.normpath(path))
    found = {}
    for entry in os.listdir(parent or "."):
        head, s = split_seed(entry)
        run = RunDir(os.path.join(parent, entry))
        if head == name and s > 0 and run.exists and run.finished:
            found[s] = run
    return dict(sorted(found.items()))


def budget_path(path: str, log=print, **options: Any) -> int:
    """budget.csv/png of a finished run, or of every finished run under a folder (the
    unfinished ones are named and skipped). A run with finished seeds (`<run>-seed<s>`) also
    gets their band: every finished seed, whatever was trained last (budget_seeds;
    FIDELITY.md G9). Returns the number of runs done."""
    if not os.path.isdir(path):
        raise ElasticKerasError(f"not a run directory nor a folder of runs: {path}")
    if RunDir(path).exists:
        budget_run(open_run(path), log=log, **options)
        if seed_runs(path):
            if options.get("cost", "macs") != "macs":
                log("the band over seeds is drawn over MACs: run budget without --cost for it")
                return 1
            options.pop("latency", None)
            return budget_seeds(path, log=log, **options)["auc"].n
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


def budget_rows(run: RunDir, log=print, **options: Any) -> list[dict[str, Any]]:
    """The budget rows of a finished run: its budget.csv when written with the same
    criterion (default options), else computed (and written) now."""
    criterion = options.get("criterion", "max_prob")
    if set(options) <= {"criterion"}:
        rows = read_budget(run.output(BUDGET_CSV))
        if rows and {r["criterion"] for r in rows if r["kind"] == "cascade"} == {criterion}:
            return rows
    return budget_run(run, log=log, **options)


def budget_seeds(path: str, out_dir: str | None = None, log=print, cost: str = "macs",
                 **options: Any) -> dict[str, Any]:
    """A run (seed 0, `path`) and every finished seed of it (`<path>-seed<s>`): each one's
    budget, their mean curve with a 95% band over seeds, and each one's normalised area
    under its curve with the interval over seeds (budget-seeds.csv/png in `out_dir`, default
    the folder of the runs; FIDELITY.md I11). An unfinished seed 0 is named and left out."""
    if cost != "macs":
        raise ElasticKerasError("the band over seeds is drawn over MACs; leave --cost out")
    parent, name = os.path.split(os.path.normpath(path))
    found, first = {}, RunDir(path)
    if first.exists and first.finished:
        found[0] = budget_rows(first, log=log, **options)
    else:
        log(f"skip seed 0 ({first.dir}): not finished ({first.status})")
    for s, run in seed_runs(path).items():
        found[s] = budget_rows(run, log=log, **options)
    if not found:
        raise ElasticKerasError(f"no finished seed of {path}; train them first")
    aucs = {s: normalised_auc(rows) for s, rows in found.items()}
    auc = interval(aucs.values())
    out = out_dir or parent
    rows = [{"run": seed_name(name, s), "seed": s, "auc": a} for s, a in aucs.items()]
    rows.append({"run": name, "seed": "mean", "auc": auc.mean, "auc_ci95": auc.half,
                 "n": auc.n})
    csv_path, png_path = os.path.join(out, SEEDS_CSV), os.path.join(out, SEEDS_PNG)
    files.write_csv(csv_path, ["run", "seed", "auc", "auc_ci95", "n"], rows)
    save_figure(band_figure(found, f"{name}: {auc.n} seed(s), mean and 95% band"), png_path)
    log(f"[{name}] wrote {csv_path}, {png_path}; area under accuracy vs MACs / final MACs: "
        f"{auc.mean:.4f}" + (f" ± {auc.half:.4f}" if auc.n > 1 else "") + f" (n={auc.n})")
    return {"auc": auc, "per_seed": aucs}


def band_figure(found, title):
    """Mean cascade curve over seeds with its 95% band (each seed's curve interpolated on a
    common grid of MACs / final exit's MACs), and each exit's mean point."""
    import numpy as np

    curves = {s: sorted((float(r["macs_fraction"]), float(r["test_accuracy"]))
                        for r in rows if r["kind"] == "cascade") for s, rows in found.items()}
    grid = np.linspace(max(c[0][0] for c in curves.values()),
                       min(c[-1][0] for c in curves.values()), 101)
    ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c])
                   for c in curves.values()])
    bands = [interval(100 * ys[:, j]) for j in range(len(grid))]
    mean = np.array([b.mean for b in bands])
    fig = new_figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(grid, mean, "-", lw=1.5, label=f"cascade, mean of {len(curves)} seed(s)")
    if len(curves) > 1:
        half = np.array([b.half for b in bands])
        ax.fill_between(grid, mean - half, mean + half, alpha=0.25, label="95% interval")
    exits = [[(float(r["macs_fraction"]), 100 * float(r["test_accuracy"])) for r in rows
              if r["kind"] == "exit"] for rows in found.values()]
    ax.plot([p[0] for p in exits[0]], np.mean([[p[1] for p in e] for e in exits], axis=0),
            "s", ms=5, mfc="none", color="C3", label="each exit alone (mean)")
    ax.set_xlabel("MACs per image / the final exit's MACs")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig
