"""Train one run: check everything, claim its directory, run the loop, evaluate once."""

from __future__ import annotations

from typing import Any

from elastic_keras.runs.names import run_dir_for
from elastic_keras.runs.rundir import RunDir


def train(cfg: dict[str, Any], runs_root: str = "runs", run_dir: str | None = None, log=print,
          allow_cpu: bool = False, verbose: bool = True, wait: bool = True) -> RunDir:
    """Train `cfg` in its run directory (resuming a partial run), then evaluate it once.

    Everything is checked (accelerator, data, weights, loss weights) before the run
    directory is written; the run's lock keeps every other worker out while it trains.
    """
    from elastic_keras.runs.evaluate import evaluate_run
    from elastic_keras.training.job import prepare

    run = RunDir(run_dir or run_dir_for(cfg, runs_root))
    if run.finished_as(cfg, log):
        return run
    with run.lock(wait=wait, log=log):
        if run.finished_as(cfg, log):  # another worker finished it while we waited
            return run
        job = prepare(cfg, log, allow_cpu)
        state = run.claim(job, log)
        run.fit(job, state, log, verbose)
        evaluate_run(run, job.net, job.data, state, log)
    return run
