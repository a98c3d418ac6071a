"""Train the seeds of one config together in one program under JAX, one run directory each."""

from __future__ import annotations

import contextlib
from typing import Any

from elastic_keras.errors import ElasticKerasError

# What may differ between the seeds trained together (their run directories do too).
SEED_KEYS = ("name", "train.seed", "data.seed")


def train_seeds_together(configs: list[dict[str, Any]], run_dirs: list[str] | None = None,
                         runs_root: str = "runs", log=print, allow_cpu: bool = False,
                         wait: bool = True) -> list:
    """Train the resolved `configs` (one per seed: only name, train.seed and data.seed
    differ) through one compiled step, each in its own run directory exactly as if trained
    alone (resumed, locked, checkpointed, evaluated once: FIDELITY.md B9).

    run_dirs: one directory per config (default: each config's own under `runs_root`).
    A seed that diverges fails alone; the others go on, and at the end one error names
    the failed ones. Returns the RunDirs. JAX only; joint backpropagation only.
    """
    import keras

    from elastic_keras.runs.names import run_dir_for
    from elastic_keras.runs.rundir import RunDir

    _check_together(configs, keras.backend.backend())
    dirs = run_dirs or [run_dir_for(c, runs_root) for c in configs]
    if len(dirs) != len(configs):
        raise ElasticKerasError(f"{len(configs)} configs but {len(dirs)} run directories")
    runs = [RunDir(d) for d in dirs]
    todo = [i for i, (run, c) in enumerate(zip(runs, configs)) if not run.finished_as(c, log)]
    if not todo:
        return runs
    with contextlib.ExitStack() as locks:
        for i in todo:
            locks.enter_context(runs[i].lock(wait=wait, log=log))
        todo = [i for i in todo if not runs[i].finished_as(configs[i], log)]
        failed = _train(runs, configs, todo, log, allow_cpu) if todo else {}
    if failed:
        raise ElasticKerasError(f"{len(failed)} of {len(configs)} seeds failed: "
                                + " | ".join(failed.values()))
    return runs


def _train(runs, configs, todo, log, allow_cpu):
    """Prepare and claim each run of `todo`, train them together (each run's files written
    by its own RunDir, as for one run), evaluate the survivors."""
    from elastic_keras.runs.evaluate import evaluate_run
    from elastic_keras.training.job import prepare
    from elastic_keras.training.stacked import epochs_together

    sel = [runs[i] for i in todo]
    jobs = [prepare(configs[i], log, allow_cpu) for i in todo]
    states = [run.claim(job, log) for run, job in zip(sel, jobs)]
    failed = {}
    for k, event in epochs_together(jobs, states, log):
        try:
            sel[k].take(jobs[k], states[k], event)
        except ElasticKerasError as e:  # this seed diverged: it fails alone (T9)
            failed[todo[k]] = str(e)
    for k, (run, job, state) in enumerate(zip(sel, jobs, states)):
        if todo[k] not in failed:
            run.write_state(state)
            evaluate_run(run, job.net, job.data, state, log)
    return failed


def _check_together(configs, backend):
    """Seeds trained together share everything but SEED_KEYS; JAX and joint backprop."""
    from elastic_keras.runs.config import flatten

    if backend != "jax":
        raise ElasticKerasError(f"seeds train together under KERAS_BACKEND=jax only, not "
                                f"{backend}; train them one by one")
    if not configs:
        raise ElasticKerasError("no configs to train together")
    first = {k: v for k, v in flatten(configs[0]).items() if k not in SEED_KEYS}
    for cfg in configs[1:]:
        other = {k: v for k, v in flatten(cfg).items() if k not in SEED_KEYS}
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if diff:
            raise ElasticKerasError(f"seeds trained together may differ only in "
                                    f"{', '.join(SEED_KEYS)}; {cfg['name']} differs in "
                                    f"{', '.join(diff)}")
    if configs[0]["train"]["backprop"] != "joint":
        raise ElasticKerasError("train.backprop multi_way cannot train seeds together; "
                                "train them one by one")
