"""Reproduction driver: train every unfinished run of a table, then write the tables once."""

import json
import time

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.runs.names import Setting, run_dir_for
from elastic_keras.runs.rundir import RunDir
from elastic_keras.report.tables import table_runs
from elastic_keras.sweep.cells import run_configs, select
from elastic_keras.sweep.methods import method_cells


def table_configs(table, seeds=1, backbone="mobilenet", schemes=None, **options):
    """Resolved configs of a table's runs, every seed (seed-major: every cell's seed 0
    first, so a sweep cut short leaves whole seeds), and the cells skipped."""
    from elastic_keras.runs.seeds import seed_configs
    from elastic_keras.sweep.methods import method_configs

    configs, skipped = (method_configs(backbone=backbone, schemes=schemes, **options)
                        if table == "methods" else run_configs(table, **options))
    expanded = [seed_configs(cfg, seeds) for cfg in configs]
    return [e[s] for s in range(len(expanded[0]) if expanded else 0) for e in expanded], skipped


def reproduce(table, profile="paper", protocol="paper", data=None, data_dir=None, weights=None,
              runs=None, runs_root="runs", out_dir="results", extra=(), allow_cpu=False,
              dry_run=False, launcher=None, log=print, seeds=1, backbone="mobilenet",
              schemes=None):
    """Train what is not finished (resuming partial runs) with `launcher` (local: one after
    another in this process), then write the tables once. What trains is the selection
    (`runs`, `backbone`, `schemes`, `seeds`); what the tables report is every finished run
    of the setting (FIDELITY.md G9). A failing run fails alone; the summary names the
    failures. Returns (written tables, [(name, message)] failures)."""
    from elastic_keras.sweep.launchers import local_launcher

    configs, skipped = table_configs(
        table, seeds, backbone, schemes, profile=profile, protocol=protocol, data=data,
        data_dir=data_dir, weights=weights, extra=extra,
        **({} if table == "methods" else {"runs": runs}))
    for name in skipped:
        log(f"skip {name}: dataset {data} has 10 classes, this cell needs more")
    if dry_run:
        log(json.dumps(configs, indent=2))
        return {}, []
    if not configs:
        raise ElasticKerasError(f"no run of {table} to do with data {data!r}")
    setting = Setting.of(configs[0])
    # Where results go is checked before any run trains (FIDELITY.md R11).
    files.check_writable_folder(runs_root, "--runs-root")
    files.check_writable_folder(out_dir, "--out")
    start = time.time()
    try:
        failures = (launcher or local_launcher)(configs, runs_root=runs_root,
                                                allow_cpu=allow_cpu, log=log)
    finally:  # the last setting is one that has runs: a refused sweep records nothing (R14)
        if any(RunDir(run_dir_for(c, runs_root)).exists for c in configs):
            setting.record(runs_root)
    log(f"=== {len(configs)} runs ended in {time.time() - start:.0f} s"
        + (f"; {len(failures)} failed: " + ", ".join(n for n, _ in failures) if failures else ""))
    for name, message in failures:
        log(f"    {name}: {message}")
    cells = [n for n in (method_cells(backbone) if table == "methods" else
                         select(table, runs, protocol)) if n not in skipped]
    return _write(table, setting, runs_root, out_dir, cells, protocol, log), failures


def _write(table, setting, runs_root, out_dir, cells, protocol, log):
    """The tables of the sweep, written once after every run has ended: each table one of
    its `cells` (those it trained) belongs to, every one computed from every finished run of
    the setting, as `tables` writes it (FIDELITY.md G9)."""
    from elastic_keras.report.render import write_tables

    which = [t for t in ("table1", "table2")
             if t == table or set(cells) & set(table_runs(t, protocol))]
    written = write_tables(runs_root, setting, out_dir, which=which, log=log)[0]
    if table == "methods":
        from elastic_keras.report.methods import write_methods
        from elastic_keras.sweep.methods import SCHEME_LABELS

        found = write_methods(runs_root, setting, out_dir, SCHEME_LABELS, log=log)
        written.update({"methods": found} if found else {})
    return written


def train_seeds(configs, runs_root="runs", allow_cpu=False, run_dir=None, log=print,
                together=None):
    """`train --seeds N`: the seeds of one config, each its own run, with the local launcher
    (together in one program or one after another: `launchers.make_launcher`; a seed
    another worker holds is waited for). Returns the failures, each also printed."""
    from elastic_keras.sweep.launchers import make_launcher

    if run_dir:
        raise ElasticKerasError("--run-dir names one run; with --seeds each seed has its own "
                                "(leave --run-dir out)")
    failures = make_launcher("local", profile=configs[0]["profile"], together=together)(
        configs, runs_root=runs_root, allow_cpu=allow_cpu, log=log)
    for name, message in failures:
        log(f"failed {name}: {message}")
    return failures
