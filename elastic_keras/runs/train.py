"""Train one run: check everything, claim its directory, run the loop, evaluate once."""

from __future__ import annotations

from typing import Any

from elastic_keras.runs.checkpoints import CorruptCheckpoint
from elastic_keras.runs.rundir import RESULTS, RunDir, config_diff, run_dir_for
from elastic_keras.training.loop import Job, fit, make_trainer
from elastic_keras.training.state import EVALUATED


def train(cfg: dict[str, Any], runs_root: str = "runs", run_dir: str | None = None, log=print,
          allow_cpu: bool = False, verbose: bool = True, wait: bool = True) -> RunDir:
    """Train `cfg` in its run directory (resuming a partial run), then evaluate it once.

    Everything is checked (accelerator, data, weights, loss weights) before the run
    directory is written; the run's lock keeps every other worker out while it trains.
    """
    from elastic_keras.backend.environment import check_accelerator

    run = RunDir(run_dir or run_dir_for(cfg, runs_root))
    if _finished(run, cfg, log):
        return run
    check_accelerator(cfg["profile"], allow_cpu)
    with run.lock(wait=wait, log=log):
        if _finished(run, cfg, log):  # another worker finished it while we waited
            return run
        job = prepare(cfg, log)
        state = run.claim(_resolved(cfg, job.data), job.data.split, job.env, log)
        if state.history:
            log(f"[{cfg['name']}] resuming after epoch {len(state.history)} "
                f"(phase '{state.phase}', {state.phase_epoch} epochs into it)")
        _fit(run, job, state, log, verbose)
        from elastic_keras.runs.evaluate import evaluate_run

        evaluate_run(run, job.net, job.data, state, log)
    return run


def _fit(run, job, state, log, verbose):
    """The loop; a corrupt last checkpoint sends the run back to the one before, once, and
    says so; without one the run fails with the file's name (FIDELITY.md R11)."""
    try:
        fit(run, job, state, log, verbose)
    except CorruptCheckpoint as e:
        run.fall_back(state, e, log)
        fit(run, job, state, log, verbose)


def _finished(run, cfg, log):
    if run.finished and not config_diff(run.config, cfg):
        log(f"[{cfg['name']}] finished already: {run.dir}")
        return True
    if run.status == EVALUATED and not config_diff(run.config, cfg):
        log(f"[{cfg['name']}] {run.path(RESULTS)} is missing or unreadable: evaluating the "
            "run again")
    return False


def _resolved(cfg, data):
    return {**cfg, "resolved": {
        "num_classes": data.num_classes, "image_shape": list(data.x_train.shape[1:]),
        "train_images": len(data.y_train), "val_images": len(data.y_val),
        "test_images": len(data.y_test)}}


def prepare(cfg: dict[str, Any], log=print) -> Job:
    """Data, network (with its initial weights), loss weights and trainer of a config: all
    built, and so checked, before the run directory is written (FIDELITY.md R4)."""
    from elastic_keras.data.splits import load_data
    from elastic_keras.backend.environment import describe, header
    from elastic_keras.backend.keras_internals import seed_everything
    from elastic_keras.training.loss_weights import loss_weights
    from elastic_keras.model.exits import exit_info
    from elastic_keras.model.factory import model_from_config

    env = describe()
    log(f"[{cfg['name']}] {header(env)}")
    seed_everything(cfg["train"]["seed"])
    data = load_data(cfg["data"])
    net = model_from_config(cfg, data.num_classes, data.x_train.shape[1:])
    depths = [e.conv_layers for e in exit_info(net)]
    weights = loss_weights(cfg["loss"]["weights"], len(net.outputs), depths=depths,
                           nu=cfg["loss"]["nu"])
    trainer = make_trainer(net, weights, cfg["train"]["backprop"])
    log(f"[{cfg['name']}] {len(net.outputs)} outputs, loss weights "
        f"{[round(w, 4) for w in weights]}, {len(data.y_train)} train / {len(data.y_val)} "
        f"val / {len(data.y_test)} test images")
    return Job(cfg, data, net, trainer, env, weights)
