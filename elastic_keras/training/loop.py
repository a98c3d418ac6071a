"""The one training loop: phases as data (paper section IV-A), resumable at every epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from elastic_keras.errors import ElasticKerasError
from elastic_keras.training.state import TRAINED, TRAINING, RunState

TRAINABLE = ("heads", "all")  # what a phase trains: the exits' heads only, or everything
# train.backprop: the summed loss, or AuxNet's as written, or the pre-step reading (L4)
BACKPROP = ("joint", "multi_way", "multi_way_prestep")

CLIP_LIMIT = 0.5  # a run whose training images are mostly clipped has diverged (T9)


@dataclass
class Job:
    """What a run trains: its config, data, network, trainer, and where it runs."""

    cfg: dict[str, Any]
    data: Any  # data.splits.Data
    net: Any  # an ElasticModel
    trainer: Any  # ExitTrainer or a multi-way trainer
    env: dict[str, Any]
    weights: list[float]


class Checkpoints(Protocol):
    """What the loop needs of a run's files (runs.rundir.RunDir provides it)."""

    def save_checkpoint(self, net: Any, optimizer: Any, tag: str) -> dict[str, str]: ...
    def load_weights(self, net: Any, checkpoint: dict[str, Any]) -> None: ...
    def load_optimizer(self, optimizer: Any, variables: Any,
                       checkpoint: dict[str, Any]) -> None: ...
    def write_state(self, state: RunState) -> None: ...
    def write_history(self, rows: list[dict[str, Any]], outputs: list[str]) -> None: ...
    def prune_checkpoints(self, state: RunState) -> None: ...
    def fail(self, state: RunState, message: str) -> None: ...


def fit(run: Checkpoints, job: Job, state: RunState, log=print, verbose: bool = True) -> None:
    """Run every phase not yet done, epoch by epoch; the state says where to start."""
    phases = list(job.cfg["phases"].items())
    for index, (name, phase) in enumerate(phases):
        if index < _phases_done(state, phases):
            continue
        start_phase(run, job, state, index, phases, log)
        while not _phase_over(state, phase):
            run_epoch(run, job, state, name, phase, log, verbose)
    state.status = TRAINED
    run.write_state(state)


def _phases_done(state, phases):
    names = [n for n, _ in phases]
    if state.phase is None:
        return 0
    i = names.index(state.phase)
    return i + 1 if _phase_over(state, phases[i][1]) else i


def _phase_over(state, phase):
    return state.phase_epoch >= phase["epochs"] or state.stopped


def start_phase(run, job, state, index, phases, log):
    """Set what trains, compile, and load the weights this phase starts from."""
    import keras

    from elastic_keras.training.schedule import new_state

    name, phase = phases[index]
    set_trainable(job.net, phase["trainable"])
    resuming = state.phase == name
    if not resuming:
        state.phase, state.phase_epoch, state.lr = name, 0, float(phase["lr"])
        state.stopped, state.schedule = False, new_state()
    # Several steps per compiled call: the epoch's numbers are unchanged (FIDELITY.md B7).
    job.trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=state.lr,
                                                       momentum=float(phase["momentum"])),
                        steps_per_execution=job.cfg["train"]["steps_per_execution"])
    before = phases[index - 1][0] if index > 0 else None
    if resuming and state.last:
        run.load_weights(job.net, state.last)
        run.load_optimizer(job.trainer.optimizer, job.trainer.trainable_variables, state.last)
    elif before in state.best and job.cfg["train"]["reload_best_between_phases"]:
        # The authors' scripts reload the best phase-1 checkpoint before phase 2 (T3).
        run.load_weights(job.net, state.best[before])
        log(f"[{job.cfg['name']}] phase '{name}' starts from the best '{before}' checkpoint "
            f"(epoch {state.best[before]['epoch']})")
    elif state.last:  # the previous phase's last weights (a resumed run starts fresh: R11)
        run.load_weights(job.net, state.last)


def set_trainable(net: Any, trainable: str) -> None:
    """What a phase trains: "heads" (the exits' heads only; the backbone frozen, its
    BatchNorm in inference mode: FIDELITY.md T2) or "all"."""
    from elastic_keras.model.exits import head_layers

    heads = head_layers(net)
    for layer in net.layers:
        layer.trainable = trainable == "all" or layer.name in heads


def run_epoch(run, job, state, name, phase, log, verbose):
    """One epoch: train, validate, check for divergence, checkpoint, then the state."""
    from elastic_keras.data.batches import Batches
    from elastic_keras.backend.keras_internals import reseed
    from elastic_keras.training.progress import StepProgress, epoch_line
    from elastic_keras.training.objective import named

    cfg, data, t = job.cfg, job.data, job.cfg["train"]
    epoch = len(state.history) + 1
    label = epoch_label(cfg, state, name, phase, epoch)
    job.trainer.optimizer.learning_rate = state.lr
    reseed(job.net, t["seed"], epoch)
    clock = StepProgress(label, t["batch_size"], every=None if verbose else math.inf)
    start = time.time()
    hist = job.trainer.fit(
        Batches(data.x_train, data.y_train, t["batch_size"], shuffle=True, seed=t["seed"],
                epoch=epoch),
        validation_data=Batches(data.x_val, data.y_val, t["eval_batch_size"]),
        epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    logs = named({k: v[-1] for k, v in hist.history.items()}, job.trainer.exit_names)
    check_divergence(run, job, state, logs, epoch, name)
    row = {"epoch": epoch, "phase": name, "phase_epoch": state.phase_epoch + 1,
           "lr": state.lr, **logs, "time_s": round(time.time() - start, 3),
           "train_s": round(clock.train_s, 3), "val_s": round(clock.val_s, 3)}
    log(epoch_line(label, row, len(data.y_train), len(data.y_val)))
    end_epoch(run, job, state, row, phase)


def epoch_label(cfg, state, name, phase, epoch):
    """'[name] epoch 3/110 (full 2/100, lr 0.001)': the start of an epoch's lines."""
    return (f"[{cfg['name']}] epoch {epoch}/{sum(p['epochs'] for p in cfg['phases'].values())}"
            f" ({name} {state.phase_epoch + 1}/{phase['epochs']}, lr {state.lr:.3g})")


def check_divergence(run, job, state, logs, epoch, name):
    """Stop a diverged run: a non-finite loss or weight, or a loss pinned at the clip
    ceiling (most true-class probabilities clipped to 1e-7). No results are written (T9)."""
    import numpy as np
    from keras import ops

    why = None
    if not all(math.isfinite(v) for v in logs.values()):
        why = f"the loss is not finite (loss={logs.get('loss')}, val_loss={logs.get('val_loss')})"
    elif logs.get("clipped", 0.0) >= CLIP_LIMIT:
        why = (f"the loss is pinned at its clipping ceiling: {logs['clipped']:.0%} of the "
               "training images got a true-class probability clipped to 1e-7")
    elif not all(np.isfinite(ops.convert_to_numpy(w)).all() for w in job.net.weights):
        why = "some weights are not finite"
    if why:
        message = (f"[{job.cfg['name']}] diverged at run epoch {epoch} (phase '{name}'): {why}."
                   f" Lower the learning rate (--set phases.{name}.lr=...). No results written.")
        run.fail(state, message)
        raise ElasticKerasError(message)


def end_epoch(run, job, state, row, phase):
    """Checkpoints first, then the state that points to them (kill -9 safe)."""
    from elastic_keras.training.schedule import early_stop, plateau

    name, epoch = row["phase"], row["epoch"]
    state.history.append(row)
    state.phase_epoch += 1
    state.status = TRAINING
    tag = f"epoch-{epoch:04d}"
    state.last = run.save_checkpoint(job.net, job.trainer.optimizer, tag)
    best = state.best.get(name)
    if best is None or row["val_loss"] < best["val_loss"]:
        saved = run.save_checkpoint(job.net, None, f"best-{tag}")
        state.best[name] = {"epoch": epoch, "phase": name, "val_loss": row["val_loss"], **saved}
    if phase["reduce_lr"]:
        state.lr = plateau(state.schedule, row["val_loss"], state.lr, phase)
    if phase["early_stop"] and early_stop(state.schedule, row["val_loss"], phase):
        state.stopped = True
    run.write_state(state)
    run.write_history(state.history, [e["output"] for e in job.net.exits])
    run.prune_checkpoints(state)


def make_trainer(net, loss_weights, backprop="joint"):
    """The trainer of a run: "joint" backpropagation of the summed loss (the paper), or
    AuxNet's "multi_way" or "multi_way_prestep" (one update per output, in series:
    multiway.py, FIDELITY.md L4)."""
    if backprop in BACKPROP[1:]:
        from elastic_keras.training.multiway import multi_way_trainer

        return multi_way_trainer(net, loss_weights, backprop)
    if backprop != "joint":
        raise ElasticKerasError(f"train.backprop must be one of {', '.join(BACKPROP)}; "
                                f"received {backprop!r}")
    from elastic_keras.training.objective import ExitTrainer

    return ExitTrainer(net, loss_weights)
