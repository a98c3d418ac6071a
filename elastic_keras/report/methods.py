"""The loss weightings compared (reproduce methods): per-exit test error and the area under
accuracy vs MACs of each scheme, mean and 95% interval over seeds; CSV, markdown, PNG."""

from __future__ import annotations

import math
import os
from typing import Any

from elastic_keras import files
from elastic_keras.report.finished import Runs
from elastic_keras.report.intervals import Interval, interval
from elastic_keras.report.numbers import BLANK, fmt
from elastic_keras.report.render import (TITLES, finished_count, md_table, runs_section,
                                         table_header)
from elastic_keras.runs.names import CIFAR_SETS, RunName, method_run, seed_name


def method_backbones(runs: Runs, schemes: dict[str, str]) -> list[str]:
    """The elastic cells (one per dataset the data serves) of every backbone that has a
    finished run of a scheme other than uniform (uniform is Table I's own elastic run), in
    the registry's order: the methods table is every finished run of its setting, whatever
    backbone or schemes a command trained (FIDELITY.md G9)."""
    from elastic_keras.data.datasets import serves
    from elastic_keras.model.registry import REGISTRY

    cells = []
    for backbone in REGISTRY:
        mine = [str(RunName(ds, backbone)) for ds in CIFAR_SETS if serves(runs.setting.data, ds)]
        if any(runs.finished(method_run(c, m)) for c in mine for m in schemes if m != "uniform"):
            cells += mine
    return cells


def method_names(cells: list[str], schemes, seeds: int) -> list[str]:
    """Every run of the methods table: each cell's scheme runs, seeds 0..seeds-1."""
    return [seed_name(method_run(c, m), s) for c in cells for m in schemes for s in range(seeds)]


def _scheme(runs, cell, scheme, seeds, log):
    """{column: Interval} of one scheme on one cell: each exit's test error, and the
    normalised area under the cascade's accuracy vs MACs (its run's budget)."""
    from elastic_keras.report.budget import budget_rows
    from elastic_keras.inference.thresholds import normalised_auc
    from elastic_keras.runs.rundir import RunDir

    dataset = RunName.parse(cell).dataset
    errors, aucs, outputs = [], [], []
    for s in range(seeds):
        name = seed_name(method_run(cell, scheme), s)
        results = runs.get(dataset, name)
        if results is None:
            continue
        outputs = [e["output"] for e in results["exits"]]
        errors.append([e["test_error_pct"] for e in results["exits"]])
        aucs.append(normalised_auc(budget_rows(RunDir(runs.seen[name][1]), log=log)))
    columns = {out: interval(e[k] for e in errors) for k, out in enumerate(outputs)}
    return {**columns, "auc": interval(aucs)}


def methods_rows(runs: Runs, cells: list[str], schemes: dict[str, str], seeds: int,
                 log=print) -> list[dict[str, Any]]:
    """One row per (cell, scheme): n and, per column, mean and 95% half-width; the best mean
    of a column (lowest error, highest area) is marked where its interval overlaps no other
    scheme's (FIDELITY.md G18)."""
    rows = []
    for cell in cells:
        found = {scheme: _scheme(runs, cell, scheme, seeds, log) for scheme in schemes}
        columns = list(dict.fromkeys(c for f in found.values() for c in f if c != "auc"))
        best = {c: _best(found, c) for c in columns + ["auc"]}
        for scheme, cols in found.items():
            row = {"setting": runs.setting.folder, "dataset": runs.setting.run_name(
                RunName.parse(cell)).dataset, "backbone": RunName.parse(cell).backbone,
                   "scheme": scheme, "label": schemes[scheme],
                   "run": str(runs.setting.run_name(RunName.parse(method_run(cell, scheme)))),
                   "n": max((i.n for i in cols.values()), default=0)}
            for c in columns + ["auc"]:
                i = cols.get(c, Interval(math.nan, math.nan, 0))
                row.update({c: i.mean, f"{c}_ci95": i.half,
                            f"{c}_best": "best" if best[c] == scheme else ""})
            rows.append(row)
    return rows


def _best(found, column):
    """The scheme whose mean is best in `column`, if its interval overlaps no other's."""
    have = {s: f[column] for s, f in found.items() if column in f and f[column].n}
    if len(have) < 2:
        return None
    sign = -1.0 if column == "auc" else 1.0
    top = min(have, key=lambda s: sign * have[s].mean)
    apart = all(not have[top].overlaps(i) for s, i in have.items() if s != top)
    return top if apart else None


def _parts(rows):
    """The rows of each (dataset, backbone), in order."""
    keys = dict.fromkeys((r["dataset"], r["backbone"]) for r in rows)
    return [(d, b, [r for r in rows if (r["dataset"], r["backbone"]) == (d, b)]) for d, b in keys]


def methods_markdown(rows: list[dict[str, Any]], runs: Runs, names: list[str]) -> str:
    """One table per dataset: schemes by rows, each exit's test error and the area."""
    lines = table_header("Loss weightings compared: test error (%) of every exit and the area "
                    "under accuracy vs MACs", runs)[:4]
    if not runs.setting.is_reproduction:
        lines += [f"> **NOT a reproduction.** The `{runs.setting.folder}` setting on "
                  f"`{runs.setting.data}` data exercises the pipeline; the papers compare "
                  "these schemes on other networks and data.", ""]
    lines += ["Generated by `python -m elastic_keras reproduce methods` from each finished "
              f"run's `results.json` and `budget.csv`; never edited by hand. {BLANK}: no "
              "finished seed.", ""]
    for dataset, backbone, part in _parts(rows):
        columns = [c for c in part[0] if f"{c}_ci95" in part[0]]
        lines += [f"## {TITLES.get(dataset, dataset)}, {backbone}", ""]
        body = [[r["label"], f"`{r['run']}`", str(r["n"])] + [_cell(r, c) for c in columns]
                for r in part]
        lines += md_table(["Scheme", "run (seed 0)", "n"] + [
            "area (×100)" if c == "auc" else f"{c} error" for c in columns], body) + [""]
    lines += [
        "Each cell: mean over the n finished seeds ± the half-width of its 95% Student-t "
        "interval. Area: the normalised area under the cascade's test accuracy against "
        "MACs / final exit's MACs over [0, 1] (×100; higher is better). **Bold**: the best of "
        "its column, marked only where its interval overlaps no other scheme's (never with "
        "n < 2). Uniform is Table I's elastic run itself; heads only trains the first "
        "phase alone (the backbone frozen).", ""]
    return "\n".join(lines + runs_section(runs, names))


def _cell(row, column):
    scale = 100.0 if column == "auc" else 1.0
    mean, half = row[column], row[f"{column}_ci95"]
    if math.isnan(mean):
        return BLANK
    text = fmt(scale * mean, 2) + ("" if math.isnan(half) else f" ± {fmt(scale * half, 2)}")
    return f"**{text}**" if row[f"{column}_best"] else text


def methods_figure(rows):
    """Per dataset and backbone: each exit's mean test error per scheme with its interval,
    and the area."""
    from elastic_keras.report.plots import new_figure

    parts = _parts(rows)
    fig = new_figure(figsize=(11, 3.8 * len(parts)))
    for d, (dataset, backbone, part) in enumerate(parts):
        exits = [c for c in part[0] if f"{c}_ci95" in part[0] and c != "auc"]
        left, right = fig.add_subplot(len(parts), 2, 2 * d + 1), fig.add_subplot(
            len(parts), 2, 2 * d + 2)
        for k, r in enumerate(part):
            left.errorbar(range(1, len(exits) + 1), [r[c] for c in exits],
                          yerr=[0 if math.isnan(r[f"{c}_ci95"]) else r[f"{c}_ci95"]
                                for c in exits], capsize=2, marker="o", ms=3, label=r["label"])
            right.bar(k, 100 * r["auc"], yerr=0 if math.isnan(r["auc_ci95"]) else
                      100 * r["auc_ci95"], capsize=3, color=f"C{k}")
        left.set(xlabel="exit (depth order; last: final)", ylabel="test error (%)",
                 title=f"{dataset}, {backbone}: per-exit test error, mean and 95% interval")
        left.legend(fontsize="x-small")
        right.set_xticks(range(len(part)), [r["scheme"] for r in part], fontsize="x-small")
        right.set(ylabel="area (×100)", title="area under accuracy vs MACs / final MACs")
    return fig


def write_methods(runs_root: str, setting, out_dir: str, schemes: dict[str, str],
                  log=print) -> tuple[str, str] | None:
    """results/<prefix>methods.{csv,md,png}, written atomically, from every finished methods
    run of the setting (every backbone, scheme and seed: FIDELITY.md G9); returns (csv, md),
    or None (said) when no backbone has a finished methods run."""
    from elastic_keras.report.plots import save_figure
    runs = Runs(runs_root, setting)
    cells = method_backbones(runs, schemes)
    if not cells:
        log(f"methods: no finished run of a loss scheme under {runs_root} ({setting.folder}, "
            f"data {setting.data or 'cifar'}); not written")
        return None
    seeds = runs.seed_count([method_run(c, m) for c in cells for m in schemes])
    rows = methods_rows(runs, cells, schemes, seeds, log)
    columns = list(dict.fromkeys(c for r in rows for c in r))  # backbones' exits differ
    stem = os.path.join(out_dir, setting.prefix + "methods")
    names = method_names(cells, schemes, seeds)
    files.write_csv(stem + ".csv", columns, [{c: r.get(c) for c in columns} for r in rows],
                    lambda c, v: fmt(
        v, 4 if c.startswith("auc") else 2) if isinstance(v, float) else v)
    files.write_text(stem + ".md", methods_markdown(rows, runs, names))
    save_figure(methods_figure(rows), stem + ".png")
    log(f"methods: {finished_count(runs, names)} (every finished run of {setting.folder}/"
        f"{setting.data or 'cifar'}" + (f", seeds 0-{seeds - 1}" if seeds > 1 else "") + ")")
    return stem + ".csv", stem + ".md"
